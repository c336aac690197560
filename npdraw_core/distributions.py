"""Probabilities of latent sequences under per-step logits (prior or posterior), and the KL between them.

The latent definition is kept consistent everywhere: `whether` is a Bernoulli at every step; `what` and
`where` are part of the latent only on drawn steps, so a skipped step contributes only log p(whether=0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from npdraw_core.interfaces import StepLogits
from npdraw_core.latents import Latents


def step_log_prob(logits: StepLogits, latents: Latents) -> Tensor:
    """log p(z^t | ...) per step, (B, T). Soft `what`/`where` weights give the cross-entropy with them."""
    whether = latents.whether
    log_whether = -F.binary_cross_entropy_with_logits(logits.whether, whether, reduction="none")
    log_what = (latents.what * F.log_softmax(logits.what, dim=-1)).sum(-1)
    log_where = (latents.where * F.log_softmax(logits.where, dim=-1)).sum(-1)
    return log_whether + whether * (log_what + log_where)


def log_prob(logits: StepLogits, latents: Latents) -> Tensor:
    """log p(z) of whole sequences, (B,) in nats."""
    return step_log_prob(logits, latents).sum(-1)


def kl_divergence(posterior: StepLogits, prior: StepLogits, whether: Tensor) -> Tensor:
    """Σ_t KL_Bern(q_is ‖ p_is) + z_is^t · (KL_cat(q_id ‖ p_id) + KL_cat(q_loc ‖ p_loc)), (B,).

    `whether` is the sampled draw flag z_is (B, T): what/where are only latent on drawn steps.
    """
    return (
        _bernoulli_kl(posterior.whether, prior.whether)
        + whether * (_categorical_kl(posterior.what, prior.what) + _categorical_kl(posterior.where, prior.where))
    ).sum(-1)


def _categorical_kl(q_logits: Tensor, p_logits: Tensor) -> Tensor:
    q_log = F.log_softmax(q_logits, dim=-1)
    return (q_log.exp() * (q_log - F.log_softmax(p_logits, dim=-1))).sum(-1)


def _bernoulli_kl(q_logit: Tensor, p_logit: Tensor) -> Tensor:
    q = torch.sigmoid(q_logit)
    return q * (F.logsigmoid(q_logit) - F.logsigmoid(p_logit)) + (1 - q) * (
        F.logsigmoid(-q_logit) - F.logsigmoid(-p_logit)
    )


def check_sampling_options(temperature: float, top_k: int | None) -> None:
    """A teaching error unless temperature > 0 and top_k (when given) ≥ 1."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")


def scale_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
    """Sampling knobs on categorical logits: divide by `temperature`, keep only the `top_k` largest.
    (No keyword-only arguments: the sampler's step compiles it under TorchScript, which has none.)"""
    check_sampling_options(temperature, top_k)
    if temperature != 1:  # x / 1 is x exactly: skip the op
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        threshold = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return logits
