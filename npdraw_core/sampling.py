"""The prior's side of the generative process (spec §4): ancestral sampling of latent sequences, and the
teacher-forced logits that give log p(z) of given latents.

Randomness: every step draws the same uniforms from the caller's generator, in a fixed order (whether,
what, where), whatever the prior or its sampling path, so the cached and the full-recompute samplers turn
one seed into the same latents. Uniforms are drawn on the generator's device and moved to the prior's, so
a CPU generator gives the same samples on every device.

Two ways to seed a batch:
* one `torch.Generator` (bulk): the whole batch's uniforms come from it, so a sample depends on the batch
  it was drawn in. The fastest path.
* a sequence of generators, one per sample (`generators_for(seeds)`): sample i's uniforms come only from its
  own generator (whether, what, where per step), and sample i is bit-identical whether drawn alone or in
  any batch, e.g. requests merged by a server. Generators alone are not enough for that: CPU BLAS and
  oneDNN pick kernels by batch size, and a row of a small-batch matmul or conv differs from the same row
  in a batch of 64 in the last bits (measured: every row of the prior's logits in batches of 1 or 2, of
  the conv decoder's output in batches up to 7), which can flip a Gumbel argmax. So the per-sample path runs the networks on fixed-shape blocks of
  `block_size` rows (the last padded with throwaway rows): every call has the same shape, and a row's
  result does not depend on its neighbours. Exactness needs the same block size, device, dtype and torch
  build on both sides (CPU results were the same with 1 and 2 threads). Cost, measured on a CPU: a lone
  sample costs a whole block (2-4x a bulk batch of one); batches of 64 / 500 cost about 1.2x / 1.7x the
  bulk path (one small uniform draw per sample and step, and 64-row blocks). Looping over the samples one
  at a time instead would cost about 35x for 64 samples.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from npdraw_core.distributions import scale_logits
from npdraw_core.geometry import Grid
from npdraw_core.interfaces import Prior, StepLogits
from npdraw_core.latents import Latents, located, prior_frames, render

if TYPE_CHECKING:  # model.py imports this module
    from npdraw_core.model import NPDraw

BLOCK_SIZE = 64  # rows per network call on the per-sample path; exactness needs the same value on both sides

Generators = torch.Generator | Sequence[torch.Generator]


def generators_for(seeds: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per sample (a CPU generator gives the same samples on every device)."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def seeded(seed: int | Sequence[int], num: int) -> Generators:
    """An int seeds one bulk generator; a sequence of `num` ints seeds one generator per sample."""
    if isinstance(seed, numbers.Integral):
        return torch.Generator().manual_seed(int(seed))
    generators = generators_for(seed)
    check_generators(generators, num)
    return generators


def check_generators(generator: Generators, num_samples: int) -> None:
    """A teaching error unless `generator` is one torch.Generator or exactly one per sample."""
    if isinstance(generator, torch.Generator):
        return
    if isinstance(generator, Sequence) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != num_samples:
            raise ValueError(
                f"got {len(generator)} per-sample generators for {num_samples} samples; pass one per sample"
            )
        return
    raise TypeError(
        "sampling needs an explicit torch.Generator (e.g. torch.Generator().manual_seed(0)) or a list of "
        f"them, one per sample (generators_for(seeds)), got {generator!r}"
    )


def blocks(generators: Sequence[torch.Generator], block_size: int) -> Iterator[tuple[list[torch.Generator], int]]:
    """Per-sample generators in blocks of exactly `block_size`, the last padded with throwaway generators:
    yields (block, number of real samples in it)."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    for start in range(0, len(generators), block_size):
        block = list(generators[start : start + block_size])
        real = len(block)
        block += [torch.Generator().manual_seed(0) for _ in range(block_size - real)]
        yield block, real


@torch.no_grad()
def sample_latents(
    prior: Prior,
    bank: Tensor,
    grid: Grid,
    num_samples: int,
    *,
    generator: Generators,
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
    block_size: int = BLOCK_SIZE,
) -> Latents:
    """Draw `num_samples` hard latent sequences z ~ p(z) step by step, feeding each new frame back.

    `generator`: one torch.Generator for the whole batch, or one per sample (see the module docstring;
    `block_size` only applies then). `temperature` divides all logits (whether too); `top_k` keeps the k
    most likely parts / cells. `use_cache=False` recomputes the prior's whole prefix each step (the
    authors' sampler; for tests).
    """
    check_generators(generator, num_samples)
    options = dict(temperature=temperature, top_k=top_k, use_cache=use_cache)
    if isinstance(generator, torch.Generator):
        return _sample_steps(prior, bank, grid, num_samples, generator, **options)
    return cat_latents(
        [_sample_steps(prior, bank, grid, block_size, block, **options)[:real] for block, real in blocks(generator, block_size)]
    )


def prior_canvases(
    prior: Prior,
    bank: Tensor,
    grid: Grid,
    num: int,
    *,
    generator: Generators,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> tuple[Tensor, Latents]:
    """Final canvases (num, C, S, S) of latents sampled from a prior alone (no decoder), and the latents,
    both on the CPU."""
    device = prior_device(prior, bank)
    bank = bank.to(device)
    latents = sample_latents(prior, bank, grid, num, generator=generator, temperature=temperature, top_k=top_k)
    return render(latents, bank, grid).cpu(), latents.to("cpu")


def cat_latents(parts: Sequence[Latents]) -> Latents:
    """Latents of several batches as one batch, in order."""
    return Latents(*(torch.cat([getattr(p, name) for p in parts]) for name in ("whether", "what", "where")))


def image_samples(
    model: NPDraw, num: int, *, seed: int | Sequence[int], temperature: float = 1.0, top_k: int | None = None
) -> tuple[Tensor, Tensor]:
    """Images (the output distribution's mean) and their canvases, upsampled to image size, on the CPU.
    `seed`: an int for one bulk generator, or one seed per sample."""
    model.eval()
    images, canvases, _ = model.sample(num, generator=seeded(seed, num), temperature=temperature, top_k=top_k)
    canvases = F.interpolate(canvases, size=images.shape[-2:], mode="nearest")
    return images.cpu(), canvases.cpu()


def save_sample_grid(model: NPDraw, path: str | Path, *, seed: int, num: int = 32) -> None:
    """Samples (top) above their canvases (bottom), like the paper's Fig. 5."""
    from torchvision.utils import save_image  # slow to import; only grids need it

    images, canvases = image_samples(model, num, seed=seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([images, canvases]), path, nrow=8, pad_value=0.5)


def prior_logits(
    prior: Prior, latents: Latents, bank: Tensor, grid: Grid, *, maps: Tensor | None = None
) -> StepLogits:
    """Teacher-forced logits of p(z^t | z^{<t}) for given latents, in one batched pass over all T frames.

    A prior with `logits_from_latents` (the transformer) computes them from the local change of each frame
    when every step draws into one cell and no gradient has to reach the latents (parses in pre-training,
    hard samples in the NLL bound): equal within float tolerance, and far cheaper than whole frames. With
    gradients into relaxed latents (VAE training) the frames are built in full, so the gradients the model
    defines (straight-through `where` reaches every cell) stay the same. `maps`: the latents' step maps,
    when the caller has rendered them already."""
    from_latents = getattr(prior, "logits_from_latents", None)
    if prior.uses_frames and from_latents is not None and _located(latents):
        return from_latents(latents, bank, grid)
    if prior.uses_frames:
        frames = prior_frames(latents, bank, grid, union_masks=prior.union_masks, maps=maps)
    else:  # a context-free prior only reads the batch size and length: a stride-0 view costs nothing
        frames = latents.whether.new_zeros(()).expand(
            latents.batch_size, latents.num_steps, bank.shape[1] + 1, 1, 1
        )
    return prior(frames)


def _located(latents: Latents) -> bool:
    """True when no gradient must reach the latents and every step's `where` has one nonzero weight."""
    if torch.is_grad_enabled() and any(v.requires_grad for v in (latents.whether, latents.what, latents.where)):
        return False
    return located(latents)


def prior_device(prior: Prior, bank: Tensor) -> torch.device:
    parameter = next(prior.parameters(), None)
    return bank.device if parameter is None else parameter.device


def _sample_steps(
    prior: Prior,
    bank: Tensor,
    grid: Grid,
    batch: int,
    generator: Generators,
    *,
    temperature: float,
    top_k: int | None,
    use_cache: bool,
) -> Latents:
    """The ancestral sampler for one batch; every network call here sees `batch` rows."""
    device = prior_device(prior, bank)
    bank = bank.to(device)
    steps, side, channels = grid.num_cells, grid.canvas_size, bank.shape[1]
    canvas = torch.zeros(batch, channels, side, side, device=device)
    mask = torch.zeros(batch, 1, side, side, device=device)
    frame = torch.cat([canvas, mask], dim=1)
    chosen = {"whether": [], "what": [], "where": []}
    was_training = prior.training
    prior.eval()
    uniforms = _Uniforms(generator, batch, steps, bank.shape[0], device)
    try:
        state = prior.start(batch, use_cache=use_cache)
        for step in range(steps):
            logits, state = prior.step(frame, state)
            u_whether, u_what, u_where = uniforms.step(step)
            draw = u_whether < torch.sigmoid(logits.whether / temperature)
            what = _gumbel_argmax(scale_logits(logits.what, temperature=temperature, top_k=top_k), u_what)
            where = _gumbel_argmax(scale_logits(logits.where, temperature=temperature, top_k=top_k), u_where)
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


class _Uniforms:
    """The uniforms of every step, (whether (B,), what (B, M), where (B, T)), in that order.

    One generator: drawn step by step from it (the bulk order). One generator per sample: sample i draws
    all its uniforms for all steps in ONE call, laid out step by step as (whether, what, where) — the same
    numbers as drawing them step by step, since a CPU generator's torch.rand(a + b) equals rand(a) followed
    by rand(b) — so a per-sample block costs `batch` small calls instead of 3 · batch · T."""

    def __init__(self, generator: Generators, batch: int, steps: int, bank_size: int, device: torch.device):
        self.generator, self.batch, self.sizes, self.device = generator, batch, (1, bank_size, steps), device
        self.table = None
        if not isinstance(generator, torch.Generator):
            width = sum(self.sizes)
            rows = [torch.rand(steps * width, generator=g, device=g.device).to(device) for g in generator]
            self.table = torch.stack(rows).view(batch, steps, width)

    def step(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        if self.table is None:
            return tuple(
                torch.rand((self.batch, size), generator=self.generator, device=self.generator.device)
                .to(self.device)
                .view((self.batch,) if size == 1 and n == 0 else (self.batch, size))
                for n, size in enumerate(self.sizes)
            )
        whether, what, where = self.table[:, step].split(self.sizes, dim=-1)
        return whether[:, 0], what, where


def _gumbel_argmax(logits: Tensor, uniform: Tensor) -> Tensor:
    """A categorical draw by the Gumbel-max trick (works with top-k's -inf logits): argmax(logits + G)."""
    uniform = uniform.clamp(min=torch.finfo(logits.dtype).tiny)
    return (logits - torch.log(-torch.log(uniform))).argmax(dim=-1)
