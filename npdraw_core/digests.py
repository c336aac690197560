"""Content digests: the one home for hashing tensors, state dicts and files into short stable keys.

A cached artefact is keyed by what determines it; these helpers turn tensors and files into the short hex
strings used in those keys and in fingerprints (16 hex digits: collisions are negligible at this scale).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

DIGEST_LENGTH = 16


def tensor_digest(*tensors: Tensor) -> str:
    """Digest of the tensors' shapes, dtypes and values (on any device), in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}|{tensor.dtype};".encode())
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the same bytes as int16
            tensor = tensor.view(torch.int16)
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:DIGEST_LENGTH]


def state_dict_digest(state: Mapping[str, Tensor]) -> str:
    """Digest of a state dict: its keys and tensors, in key order."""
    return text_digest(f"{key}={tensor_digest(state[key])}" for key in sorted(state))


def file_digest(path: str | Path, *, block_size: int = 1 << 22) -> str:
    """Digest of a file's bytes, read in blocks (bounded memory for large weight files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()[:DIGEST_LENGTH]


def text_digest(parts: Iterable[str]) -> str:
    """Digest of strings joined unambiguously (e.g. file names with their sizes and times)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:DIGEST_LENGTH]
