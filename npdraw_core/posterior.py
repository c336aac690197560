"""Sampling the factorised posterior q(z|x) = Π_t q(what^t|x) q(where^t|x) q(whether^t|x) (spec §6).

Training uses relaxed Gumbel-softmax for `what`, straight-through Gumbel-softmax for `where`, and a hard
Bernoulli `whether` whose gradient is either none (the authors' choice) or straight-through. Evaluation uses
hard samples throughout. Every draw takes an explicit generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from npdraw_core.interfaces import StepLogits
from npdraw_core.latents import Latents


def gumbel_noise(shape: torch.Size, *, like: Tensor, generator: torch.Generator | None) -> Tensor:
    uniform = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    tiny = torch.finfo(like.dtype).tiny
    return -torch.log((-torch.log(uniform.clamp_min(tiny))).clamp_min(tiny))


def gumbel_softmax(logits: Tensor, *, temperature: float, hard: bool, generator: torch.Generator | None) -> Tensor:
    """Relaxed one-hot sample; `hard=True` is straight-through (one-hot forward, soft gradient)."""
    soft = F.softmax((logits + gumbel_noise(logits.shape, like=logits, generator=generator)) / temperature, dim=-1)
    if not hard:
        return soft
    one_hot = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return one_hot + soft - soft.detach()


def bernoulli(logits: Tensor, *, straight_through: bool, generator: torch.Generator | None) -> Tensor:
    probs = torch.sigmoid(logits)
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    sample = (uniform < probs).to(logits.dtype)
    return sample + probs - probs.detach() if straight_through else sample


def sample_relaxed(
    logits: StepLogits, *, temperature: float, whether_estimator: str, generator: torch.Generator | None
) -> Latents:
    """The training-time posterior sample."""
    if whether_estimator not in ("hard", "straight_through"):
        raise ValueError(f"whether_estimator must be 'hard' or 'straight_through', got {whether_estimator!r}")
    return Latents(
        whether=bernoulli(logits.whether, straight_through=whether_estimator == "straight_through", generator=generator),
        what=gumbel_softmax(logits.what, temperature=temperature, hard=False, generator=generator),
        where=gumbel_softmax(logits.where, temperature=temperature, hard=True, generator=generator),
    )


def sample_hard(logits: StepLogits, *, generator: torch.Generator | None) -> Latents:
    """Exact samples z ~ q(z|x) (one-hot), as the importance-weighted bound needs."""
    what = logits.what + gumbel_noise(logits.what.shape, like=logits.what, generator=generator)
    where = logits.where + gumbel_noise(logits.where.shape, like=logits.where, generator=generator)
    return Latents(
        whether=bernoulli(logits.whether, straight_through=False, generator=generator),
        what=F.one_hot(what.argmax(-1), logits.what.shape[-1]).to(what.dtype),
        where=F.one_hot(where.argmax(-1), logits.where.shape[-1]).to(where.dtype),
    )


def posterior_mode(logits: StepLogits) -> Latents:
    """The most likely latents of each factor (used to encode images to canvases for editing)."""
    return Latents(
        whether=(logits.whether > 0).to(logits.whether.dtype),
        what=F.one_hot(logits.what.argmax(-1), logits.what.shape[-1]).to(logits.what.dtype),
        where=F.one_hot(logits.where.argmax(-1), logits.where.shape[-1]).to(logits.where.dtype),
    )


def temperature_at(epoch: int, *, min_temperature: float = 0.5, halflife: float = 50.0) -> float:
    """τ(epoch) = max(min_temperature, exp(−epoch · ln2 / halflife))."""
    return max(min_temperature, math.exp(-epoch * math.log(2) / halflife))


def parse_forcing_probability(epoch: int, rate: float | None) -> float:
    """π_e = exp(−r·e(e+1)/2): the chance that an image's what/where samples are replaced by its parse."""
    return 0.0 if rate is None else math.exp(-rate * epoch * (epoch + 1) / 2)
