"""`inception`: pytorch-fid's InceptionV3 pool3 features (2048-d), its own resizing to 299×299 and
[-1, 1] scaling, so `fid_inception` compares with published FIDs.

pytorch-fid downloads its weights on first use; npdraw never does. The weights come from the config's
`weights_path` or pytorch-fid's hub cache file (`npdraw fid-weights` creates it offline) and are handed
to pytorch-fid's own constructor, which loads them strictly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from npdraw_core.checkpoint import load_checkpoint
from npdraw_core.digests import file_digest
from npdraw_core.inception_weights import resolve_inception_weights
from npdraw_core.interfaces import ExtractorContext, FeatureExtractor
from npdraw_core.run import resolve_device


@dataclass(kw_only=True)
class InceptionConfig:
    weights_path: str | None = None  # pytorch-fid's pt_inception-2015-12-05 state dict; None: hub cache file
    device: str | None = None  # None: the run's device (CUDA when available)
    max_batch: int = 50  # images per forward pass: a 299×299 batch of 250 needs several GiB of activations


@contextmanager
def _weights_instead_of_download(state_dict: dict[str, Tensor]):
    """pytorch-fid's `fid_inception_v3` builds the network and then calls its module-level
    `load_state_dict_from_url`; hand it the local state dict instead, so that the network, its
    preprocessing and the strict load stay pytorch-fid's own and nothing is downloaded."""
    import pytorch_fid.inception as pytorch_fid_inception

    original = pytorch_fid_inception.load_state_dict_from_url
    pytorch_fid_inception.load_state_dict_from_url = lambda url, *args, **kwargs: state_dict
    try:
        yield
    finally:
        pytorch_fid_inception.load_state_dict_from_url = original


def load_fid_inception(weights_path: str | Path | None = None, device: torch.device | str = "cpu"):
    """pytorch-fid's `InceptionV3` returning pool3 features, in eval mode, channels_last on `device`."""
    from pytorch_fid.inception import InceptionV3

    state_dict = load_checkpoint(resolve_inception_weights(weights_path))
    with _weights_instead_of_download(state_dict):
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True)
    # channels_last roughly doubles convolution throughput on CPUs
    return model.eval().to(device, memory_format=torch.channels_last)


class InceptionExtractor(FeatureExtractor):
    name = "inception"

    def __init__(self, config: InceptionConfig, *, context: ExtractorContext | None = None):
        self.device = resolve_device(config.device or (str(context.device) if context is not None else "auto"))
        self.max_batch = config.max_batch
        self.path = resolve_inception_weights(config.weights_path)
        self.model = load_fid_inception(self.path, self.device)
        # cached reference statistics are only valid for the same weights
        self.fingerprint = file_digest(self.path)

    @torch.inference_mode()
    def features(self, images: Tensor) -> Tensor:
        """images (B, 1 or 3, H, W) in [0, 1] → pool3 features (B, 2048) on the CPU."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"inception features need (B, 1 or 3, H, W) images, got shape {tuple(images.shape)}"
            )
        return torch.cat([self._pool3(chunk) for chunk in images.split(self.max_batch)])

    def _pool3(self, images: Tensor) -> Tensor:
        images = images.to(self.device, torch.float32)
        if images.shape[1] == 1:  # grey images are shown to Inception as three equal channels
            images = images.expand(-1, 3, -1, -1)
        images = images.contiguous(memory_format=torch.channels_last)
        (pool3,) = self.model(images)
        return pool3.flatten(1).cpu()
