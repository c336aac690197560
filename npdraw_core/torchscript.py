"""TorchScript where it helps, eager where it is missing or fails: the same ops and kernels, so the same
numbers, for less Python overhead per op (a sampling step is many small ops)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch


@functools.cache
def scripted(function: Callable) -> Callable:
    """`function` compiled by TorchScript, once per process; `function` itself where that fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script is deprecated in favour of torch.compile
            return torch.jit.script(function)
    except Exception:  # noqa: BLE001 - any failure of an optional compiler falls back to eager
        return function
