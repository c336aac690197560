"""The prior's side of the generative process (spec §4): ancestral sampling of latent sequences, and the
teacher-forced logits that give log p(z) of given latents.

Randomness: every step draws the same uniforms from the caller's generator, in a fixed order (whether,
what, where), whatever the prior or its sampling path, so the cached and the full-recompute samplers turn
one seed into the same latents. Uniforms are drawn on the generator's device and moved to the prior's, so
a CPU generator gives the same samples on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from npdraw_core.distributions import scale_logits
from npdraw_core.geometry import Grid
from npdraw_core.interfaces import Prior, StepLogits
from npdraw_core.latents import Latents, prior_frames


@torch.no_grad()
def sample_latents(
    prior: Prior,
    bank: Tensor,
    grid: Grid,
    num_samples: int,
    *,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
) -> Latents:
    """Draw `num_samples` hard latent sequences z ~ p(z) step by step, feeding each new frame back.

    `temperature` divides all logits (whether too); `top_k` keeps the k most likely parts / cells.
    `use_cache=False` recomputes the prior's whole prefix each step (the authors' sampler; for tests).
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"sample_latents needs an explicit torch.Generator (e.g. torch.Generator().manual_seed(0)), got {generator!r}"
        )
    device = prior_device(prior, bank)
    bank = bank.to(device)
    batch, steps, side, channels = num_samples, grid.num_cells, grid.canvas_size, bank.shape[1]
    canvas = torch.zeros(batch, channels, side, side, device=device)
    mask = torch.zeros(batch, 1, side, side, device=device)
    frame = torch.cat([canvas, mask], dim=1)
    chosen = {"whether": [], "what": [], "where": []}
    was_training = prior.training
    prior.eval()
    try:
        state = prior.start(batch, use_cache=use_cache)
        for _ in range(steps):
            logits, state = prior.step(frame, state)
            draw = _uniform((batch,), generator, device) < torch.sigmoid(logits.whether / temperature)
            what = _gumbel_argmax(scale_logits(logits.what, temperature=temperature, top_k=top_k), generator)
            where = _gumbel_argmax(
                scale_logits(logits.where, temperature=temperature, top_k=top_k), generator
            )
            for name, value in (("whether", draw), ("what", what), ("where", where)):
                chosen[name].append(value)
            if prior.uses_frames:  # c^t = max(c^{t-1}, whether · Draw(part, cell)); frame t = (c^t, mask^t)
                gate = draw.float()[:, None, None, None]
                cell = F.one_hot(where, steps).float()[:, None]
                canvas = torch.maximum(canvas, grid.draw(bank[what][:, None], cell)[:, 0] * gate)
                new_mask = grid.location_masks(cell)[:, 0] * gate
                mask = torch.maximum(mask, new_mask) if prior.union_masks else new_mask
                frame = torch.cat([canvas, mask], dim=1)
    finally:
        prior.train(was_training)
    stacked = {name: torch.stack(values, dim=1) for name, values in chosen.items()}
    return Latents.from_indices(**stacked, bank_size=bank.shape[0], num_cells=steps)


def prior_logits(prior: Prior, latents: Latents, bank: Tensor, grid: Grid) -> StepLogits:
    """Teacher-forced logits of p(z^t | z^{<t}) for given latents, in one batched pass over all T frames."""
    if prior.uses_frames:
        frames = prior_frames(latents, bank, grid, union_masks=prior.union_masks)
    else:  # a context-free prior only reads the batch size and length: a stride-0 view costs nothing
        frames = latents.whether.new_zeros(()).expand(
            latents.batch_size, latents.num_steps, bank.shape[1] + 1, 1, 1
        )
    return prior(frames)


def prior_device(prior: Prior, bank: Tensor) -> torch.device:
    parameter = next(prior.parameters(), None)
    return bank.device if parameter is None else parameter.device


def _uniform(size: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(size, generator=generator, device=generator.device).to(device)


def _gumbel_argmax(logits: Tensor, generator: torch.Generator) -> Tensor:
    """A categorical draw by the Gumbel-max trick (works with top-k's -inf logits): argmax(logits + G)."""
    uniform = _uniform(tuple(logits.shape), generator, logits.device).clamp_(
        min=torch.finfo(logits.dtype).tiny
    )
    return (logits - torch.log(-torch.log(uniform))).argmax(dim=-1)
