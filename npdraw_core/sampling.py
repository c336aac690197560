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
  the conv decoder's output in batches up to 7), which can flip a Gumbel argmax. So the per-sample path
  runs the networks on fixed-shape blocks of `block_size` rows (the last padded with throwaway rows):
  every call has the same shape, and a row's result does not depend on its neighbours. Exactness needs
  the same block size, device, dtype and torch build on both sides (CPU results were the same with 1 and
  2 threads); the default block size depends on the device only (`default_block_size`). Cost, measured on
  a CPU (demo model, 1 thread): a lone sample costs a whole block (~100 ms, 2.5x a bulk batch of one),
  as do 32 samples; 64 cost 2.4x that. Looping over the samples one at a time instead would cost about
  35x for 64 samples.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from npdraw_core.distributions import check_sampling_options, scale_logits
from npdraw_core.geometry import Grid
from npdraw_core.interfaces import Prior, StepLogits
from npdraw_core.latents import Latents, located, located_prior_frames, prior_frames, render
from npdraw_core.torchscript import scripted

if TYPE_CHECKING:  # model.py imports this module
    from npdraw_core.model import NPDraw

Generators = torch.Generator | Sequence[torch.Generator]


def default_block_size(device: torch.device | str) -> int:
    """Rows per network call on the per-sample path. 32 on a CPU, where a 64-row block costs twice a 32-row
    one (the prior's cached keys and values outgrow the cache; measured on the demo model), so requests of
    up to 32 images, the common case of a server, cost half; 64 on a GPU, where rows are almost free."""
    return 64 if torch.device(device).type == "cuda" else 32


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
    block_size: int | None = None,
) -> Latents:
    """Draw `num_samples` hard latent sequences z ~ p(z) step by step, feeding each new frame back.

    `generator`: one torch.Generator for the whole batch, or one per sample (see the module docstring;
    `block_size` only applies then; default: `default_block_size` of the prior's device). `temperature`
    divides all logits (whether too); `top_k` keeps the k most likely parts / cells. `use_cache=False`
    recomputes the prior's whole prefix each step (the authors' sampler; for tests).
    """
    check_generators(generator, num_samples)
    options = dict(temperature=temperature, top_k=top_k, use_cache=use_cache)
    if isinstance(generator, torch.Generator):
        return _sample_steps(prior, bank, grid, num_samples, generator, **options)
    if block_size is None:
        block_size = default_block_size(prior_device(prior, bank))
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

    A prior that `embeds_latents` (the transformer) computes them from the local change of each frame
    when every step draws into one cell: equal within float tolerance, and far cheaper than whole frames.
    When gradients must reach the latents (relaxed latents in VAE training, the prior frozen), the frames
    are built by `located_prior_frames` (the gradients of `prior_frames`, cell by cell) and the prior
    passes its embedding's gradient to them. Otherwise (soft `where`, or a prior being trained through
    relaxed latents) the whole frames are built and embedded. `maps`: the latents' step maps, when the
    caller has rendered them already."""
    if prior.uses_frames and prior.embeds_latents and located(latents):
        if not _needs_latent_gradients(latents):
            return prior.logits_from_latents(latents, bank, grid)
        if not any(parameter.requires_grad for parameter in prior.parameters()):
            frames = located_prior_frames(latents, bank, grid, union_masks=prior.union_masks)
            return prior.logits_from_latents(latents, bank, grid, frames=frames)
    if prior.uses_frames:
        frames = prior_frames(latents, bank, grid, union_masks=prior.union_masks, maps=maps)
    else:  # a context-free prior only reads the batch size and length: a stride-0 view costs nothing
        frames = latents.whether.new_zeros(()).expand(
            latents.batch_size, latents.num_steps, bank.shape[1] + 1, 1, 1
        )
    return prior(frames)


def _needs_latent_gradients(latents: Latents) -> bool:
    return torch.is_grad_enabled() and any(v.requires_grad for v in (latents.whether, latents.what, latents.where))


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
    check_sampling_options(temperature, top_k)  # here: inside TorchScript a ValueError loses its type
    device = prior_device(prior, bank)
    bank = bank.to(device)
    steps, channels, size, side = grid.num_cells, bank.shape[1], grid.patch_size, grid.cells_per_side
    # The frame kept cell by cell on the padded canvas, mask channel last: (B·T, C+1, K, K), row b·T + j
    # for cell j of sample b. A step only rewrites its own cell; the frame (c^t, mask^t) is a new tensor
    # each step, laid out from a fixed view of the cells (what `grid.assemble` does) and cropped.
    cells = torch.zeros(batch * steps, channels + 1, size, size, device=device, dtype=bank.dtype)
    layout = cells.view(batch, side, side, channels + 1, size, size).permute(0, 3, 1, 4, 2, 5)
    sizes = [batch, channels + 1, side * size, side * size, grid.pad_before, grid.canvas_size]
    first_cell = torch.arange(batch, device=device) * steps
    frame = _frame(layout, sizes)
    canvas = StepCanvas(
        cells, layout, first_cell, bank, sizes, temperature, -1 if top_k is None else top_k, prior.uses_frames,
        prior.union_masks,
    )  # fmt: skip
    was_training = prior.training
    if any(module.training for module in prior.modules()):  # eval() walks and sets every module: ~1 ms
        prior.eval()
    noise = _Noise(generator, batch, steps, bank.shape[0], device)
    try:
        state = prior.start(batch, use_cache=use_cache)
        drawn = None
        if noise.precomputed:  # the prior may run every step in one call (the same numbers, less overhead)
            drawn = prior.sample_steps(frame, state, (noise.whether, noise.what, noise.where), canvas)
        if drawn is None:
            step_draw = scripted(draw_step)
            draws, parts, places = [], [], []
            for step in range(steps):
                logits, state = prior.step(frame, state)
                draw, what, where, frame = step_draw(
                    logits.whether, logits.what, logits.where, *noise.step(step), canvas
                )
                draws.append(draw), parts.append(what), places.append(where)
            drawn = torch.stack(draws, dim=1), torch.stack(parts, dim=1), torch.stack(places, dim=1)
    finally:
        if was_training:
            prior.train()
    whether, what, where = drawn
    return Latents.from_indices(
        whether=whether, what=what, where=where, bank_size=bank.shape[0], num_cells=steps
    )


class StepCanvas(NamedTuple):
    """What `draw_step` needs besides a step's logits and noise: the frame kept cell by cell on the padded
    canvas (`cells`, (B·T, C+1, K, K), mask channel last, and `layout`, its fixed view as a canvas; see
    `_sample_steps`), each sample's first cell row, the bank, the frame's `sizes` (see `_frame`) and the
    sampling options (top_k -1: none). A NamedTuple, so that compiled code takes it as one argument."""

    cells: Tensor
    layout: Tensor
    first_cell: Tensor
    bank: Tensor
    sizes: list[int]
    temperature: float
    top_k: int
    uses_frames: bool
    union_masks: bool


def draw_step(
    whether_logits: Tensor,
    what_logits: Tensor,
    where_logits: Tensor,
    u_whether: Tensor,
    gumbel_what: Tensor,
    gumbel_where: Tensor,
    canvas: StepCanvas,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One sampling step after the prior's logits: draw whether / what / where (Gumbel-max with the step's
    noise, after `scale_logits`), paste the part into its cell (c^t = max(c^{t-1}, whether · part)), set the
    mask, and lay out the next frame. A prior's `sample_steps` calls it after each of its steps."""
    temperature, top_k, cells, bank = canvas.temperature, canvas.top_k, canvas.cells, canvas.bank
    whether_logits = _scaled(whether_logits, temperature)
    what_logits = scale_logits(what_logits, temperature=temperature, top_k=None if top_k < 0 else top_k)
    where_logits = scale_logits(where_logits, temperature=temperature, top_k=None if top_k < 0 else top_k)
    draw = u_whether < torch.sigmoid(whether_logits)
    what = (what_logits - gumbel_what).argmax(dim=-1)
    where = (where_logits - gumbel_where).argmax(dim=-1)
    if not canvas.uses_frames:
        return draw, what, where, cells
    channels = bank.shape[1]
    gate = draw.to(bank.dtype).view(-1, 1, 1, 1)
    rows = canvas.first_cell + where
    cell = cells.index_select(0, rows)  # (B, C+1, K, K)
    cell[:, :channels] = torch.maximum(cell[:, :channels], bank.index_select(0, what) * gate)
    if canvas.union_masks:
        cell[:, channels:] = torch.maximum(cell[:, channels:], gate)
    else:  # only step t's mask: clear the previous one
        cells[:, channels:] = 0
        cell[:, channels:] = gate
    cells.index_copy_(0, rows, cell)
    return draw, what, where, _frame(canvas.layout, canvas.sizes)


def _frame(layout: Tensor, sizes: list[int]) -> Tensor:
    """The frame (B, C+1, S, S) from the cells' fixed layout view: the padded canvas (sizes[:4]), cropped
    from offset sizes[4] to the canvas size sizes[5] (what `grid.assemble` does)."""
    start, size = sizes[4], sizes[5]
    return layout.reshape(sizes[:4])[:, :, start : start + size, start : start + size]


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """logits / temperature (x / 1 is x exactly, so temperature 1 skips the op)."""
    return logits if temperature == 1 else logits / temperature


class _Noise:
    """The random numbers of every step, drawn in a fixed order (whether, what, where per step): the
    uniform of `whether` (B,) and the Gumbel noise log(−log u) of `what` (B, M) and `where` (B, T), so a
    categorical draw is argmax(logits − noise) (the Gumbel-max trick; works with top-k's −inf logits).

    One CPU generator: all steps' uniforms in ONE call, the same numbers as drawing them step by step
    (a CPU generator's torch.rand(a + b) equals rand(a) followed by rand(b)). Another bulk generator (e.g.
    CUDA, whose offsets do not split that way): step by step. One generator per sample: sample i draws all
    its uniforms for all steps in one call, laid out step by step as (whether, what, where), so a
    per-sample block costs `batch` small calls instead of 3 · batch · T.

    The noise of all steps is computed at once, each step's (B, M) or (B, T) block kept contiguous and
    apart from the next (a padded buffer), so every elementwise op runs over exactly the elements, in the
    same layout, that it ran over one step at a time: the same numbers."""

    def __init__(self, generator: Generators, batch: int, steps: int, bank_size: int, device: torch.device):
        self.generator, self.batch, self.steps, self.device = generator, batch, steps, device
        self.sizes = (1, bank_size, steps)
        width = sum(self.sizes)
        if not isinstance(generator, torch.Generator):  # (B, T, width) → per step (B, width)
            rows = [torch.rand(steps * width, generator=g, device=g.device).to(device) for g in generator]
            table = torch.stack(rows).view(batch, steps, width).transpose(0, 1)
        elif generator.device.type == "cpu":  # (T, B · width): per step whether (B), what (B·M), where (B·T)
            table = torch.rand(steps * batch * width, generator=generator).to(device).view(steps, batch * width)
        else:
            return
        self.whether = self._part(table, 0).view(steps, batch)
        self.what = self._gumbel(self._part(table, 1)).view(steps, batch, bank_size)
        self.where = self._gumbel(self._part(table, 2)).view(steps, batch, steps)

    def _part(self, table: Tensor, kind: int) -> Tensor:
        """Kind 0/1/2 (whether/what/where) of every step: (T, B · size) in a padded buffer (row stride
        B · size + 1), whatever the table's layout."""
        start, size = sum(self.sizes[:kind]), self.sizes[kind]
        if table.dim() == 3:  # per-sample table (T, B, width)
            values = table[..., start : start + size]
        else:
            values = table[:, self.batch * start : self.batch * (start + size)]
        padded = torch.empty(self.steps, self.batch * size + 1, device=table.device, dtype=table.dtype)
        part = padded[:, :-1]
        part.view(self.steps, self.batch, size).copy_(values.reshape(self.steps, self.batch, size))
        return part

    @staticmethod
    def _gumbel(uniform: Tensor) -> Tensor:
        """log(−log u), in place, per step block (u clamped to the smallest normal number: log(0) = −inf)."""
        uniform.clamp_(min=torch.finfo(uniform.dtype).tiny)
        return uniform.log_().neg_().log_()

    def step(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        if self.precomputed:
            return self.whether[step], self.what[step], self.where[step]
        whether, what, where = (
            torch.rand((self.batch, size), generator=self.generator, device=self.generator.device).to(self.device)
            for size in self.sizes
        )
        return whether[:, 0], self._gumbel(what), self._gumbel(where)

    @property
    def precomputed(self) -> bool:
        return hasattr(self, "whether")
