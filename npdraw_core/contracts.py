"""Contract checks for prior and parser plugins, importable by plugin authors:

    from npdraw_core.contracts import check_parser, check_prior
    check_prior(MyPrior, MyPriorConfig(), ModelShape(1, 12, 12, 4, 6))
    check_parser(MyParser, MyParserConfig(), ModelShape(1, 10, 10, 4, 6))

Each check builds the component with `factory(config, shape=shape)` and raises AssertionError saying what
broke. Prior checks nudge the parameters with seeded noise (so that a table initialised to zeros is not
trivially "deterministic" or "causal"); parser checks parse seeded images made of the bank's exemplars.
`PRIOR_CHECKS` and `PARSER_CHECKS` list them for parametrised tests. Small shapes keep them fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable, Iterator

import torch

from npdraw_core.distributions import log_prob
from npdraw_core.geometry import ModelShape
from npdraw_core.interfaces import Parser, Prior, StepLogits
from npdraw_core.latents import Latents, prior_frames, render
from npdraw_core.parsing import parse_images, parse_psnr, render_parses
from npdraw_core.sampling import prior_logits, sample_latents

TOLERANCE = 1e-4


def build_prior(factory: Callable, config, shape: ModelShape, device: str | torch.device = "cpu") -> Prior:
    """The prior in eval mode, its parameters nudged by seeded noise, on `device`."""
    prior = factory(config, shape=shape)
    if not isinstance(prior, Prior):
        raise AssertionError(
            f"the factory returned {type(prior).__name__}, not an npdraw_core.interfaces.Prior"
        )
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for parameter in prior.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))
    return prior.to(device).eval()


def contract_bank(shape: ModelShape, device: str | torch.device = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(99)
    exemplars = torch.rand(
        shape.bank_size, shape.channels, shape.patch_size, shape.patch_size, generator=generator
    )
    return exemplars.to(device)


def random_latents(
    shape: ModelShape, batch_size: int, seed: int, device: str | torch.device = "cpu"
) -> Latents:
    generator = torch.Generator().manual_seed(seed)
    size = (batch_size, shape.num_steps)
    return Latents.from_indices(
        what=torch.randint(shape.bank_size, size, generator=generator),
        where=torch.randint(shape.num_steps, size, generator=generator),
        whether=torch.randint(2, size, generator=generator),
        bank_size=shape.bank_size,
        num_cells=shape.num_steps,
    ).to(device)


def _check_logits(
    logits: StepLogits, expected: dict[str, tuple[int, ...]], device: torch.device, where: str
) -> None:
    for name, size in expected.items():
        value = getattr(logits, name)
        if tuple(value.shape) != size:
            raise AssertionError(f"{where}: {name} logits have shape {tuple(value.shape)}, expected {size}")
        if not value.is_floating_point() or value.device.type != device.type:
            raise AssertionError(
                f"{where}: {name} logits are {value.dtype} on {value.device}, expected float on {device}"
            )
        if not torch.isfinite(value).all():
            raise AssertionError(f"{where}: {name} logits hold NaN or ±inf")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=TOLERANCE, rtol=TOLERANCE)


def check_shapes(factory, config, shape: ModelShape, device="cpu") -> None:
    """forward: (B, T), (B, T, M), (B, T, T); step: (B,), (B, M), (B, T); floats on the prior's device."""
    prior, bank, batch = build_prior(factory, config, shape, device), contract_bank(shape, device), 3
    steps, size = shape.num_steps, shape.bank_size
    latents = random_latents(shape, batch, seed=0, device=device)
    logits = prior(prior_frames(latents, bank, shape.grid))
    _check_logits(
        logits,
        {"whether": (batch, steps), "what": (batch, steps, size), "where": (batch, steps, steps)},
        torch.device(device),
        "forward",
    )
    for use_cache in (True, False):
        state = prior.start(batch, use_cache=use_cache)
        frame = torch.zeros(batch, shape.channels + 1, shape.canvas_size, shape.canvas_size, device=device)
        step_logits, _ = prior.step(frame, state)
        _check_logits(
            step_logits,
            {"whether": (batch,), "what": (batch, size), "where": (batch, steps)},
            torch.device(device),
            f"step(use_cache={use_cache})",
        )


@torch.no_grad()
def check_step_matches_forward(factory, config, shape: ModelShape, device="cpu") -> None:
    """Feeding the teacher-forcing frames one by one through `step` gives `forward`'s logits, on both paths."""
    prior, bank = build_prior(factory, config, shape, device), contract_bank(shape, device)
    latents = random_latents(shape, 2, seed=1, device=device)
    frames = prior_frames(latents, bank, shape.grid, union_masks=prior.union_masks)
    expected = prior(frames)
    for use_cache in (True, False):
        state = prior.start(2, use_cache=use_cache)
        for t in range(shape.num_steps):
            logits, state = prior.step(frames[:, t], state)
            for name in ("whether", "what", "where"):
                if not _close(getattr(logits, name), getattr(expected, name)[:, t]):
                    raise AssertionError(
                        f"step(use_cache={use_cache}) at position {t} gives other {name} logits than forward(); "
                        "step must compute exactly what teacher forcing computes at that position"
                    )


@torch.no_grad()
def check_causality(factory, config, shape: ModelShape, device="cpu") -> None:
    """Changing frame t leaves the logits of positions < t unchanged (position t sees frames 0..t only)."""
    prior = build_prior(factory, config, shape, device)
    generator = torch.Generator().manual_seed(5)
    size = (2, shape.num_steps, shape.channels + 1, shape.canvas_size, shape.canvas_size)
    frames = torch.rand(size, generator=generator).to(device)
    before = prior(frames)
    for t in sorted({1, shape.num_steps // 2, shape.num_steps - 1}):
        changed = frames.clone()
        changed[:, t] = torch.rand(size[2:], generator=generator).to(device)
        after = prior(changed)
        for name in ("whether", "what", "where"):
            if not _close(getattr(before, name)[:, :t], getattr(after, name)[:, :t]):
                raise AssertionError(
                    f"changing frame {t} changed the {name} logits of earlier positions: not causal"
                )


def check_samples(factory, config, shape: ModelShape, device="cpu") -> None:
    """Samples are hard latents whose log-probability under the prior is finite, on both sampling paths."""
    prior, bank = build_prior(factory, config, shape, device), contract_bank(shape, device)
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(7)
        latents = sample_latents(prior, bank, shape.grid, 4, generator=generator, use_cache=use_cache)
        if (
            latents.what.shape != (4, shape.num_steps, shape.bank_size)
            or latents.where.shape[-1] != shape.num_steps
        ):
            raise AssertionError(f"samples have shapes {latents.what.shape}, {latents.where.shape}")
        with torch.no_grad():
            values = log_prob(prior_logits(prior, latents, bank, shape.grid), latents)
        if not torch.isfinite(values).all() or (values > 0).any():
            raise AssertionError(
                f"log p(z) of the prior's own samples must be finite and ≤ 0, got {values.tolist()}"
            )


def check_seeded_determinism(factory, config, shape: ModelShape, device="cpu") -> None:
    """One seed gives one sample, whichever sampling path (the prior's one-call `sample_steps`, cached
    steps, or full recompute); another seed differs."""
    prior, bank = build_prior(factory, config, shape, device), contract_bank(shape, device)

    def draw(seed: int, use_cache: bool, one_call: bool = True) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        with contextlib.nullcontext() if one_call else stepped_in_python(prior):
            return sample_latents(prior, bank, shape.grid, 4, generator=generator, use_cache=use_cache).indices()

    first, again, stepped, full = draw(3, True), draw(3, True), draw(3, True, one_call=False), draw(3, False)
    other = draw(4, True)
    for name in first:
        if not torch.equal(first[name], again[name]):
            raise AssertionError(f"the same seed gave different {name} samples")
        if not torch.equal(first[name], stepped[name]):
            raise AssertionError(
                f"sample_steps gave other {name} samples than stepping the prior for one seed; it must run "
                "`step` and `draw_step` op for op (or return None)"
            )
        if not torch.equal(first[name], full[name]):
            raise AssertionError(
                f"cached and full-recompute sampling gave different {name} samples for one seed"
            )
    if all(torch.equal(first[name], other[name]) for name in first):
        raise AssertionError("two different seeds gave identical samples: the generator is not used")


@contextlib.contextmanager
def stepped_in_python(prior: Prior) -> Iterator[Prior]:
    """Inside, the sampler steps `prior` in Python (its one-call `sample_steps` hidden): to compare the two."""
    prior.sample_steps = lambda *args: None  # an instance attribute shadows the method
    try:
        yield prior
    finally:
        del prior.sample_steps


@torch.no_grad()
def check_state_dict_round_trip(factory, config, shape: ModelShape, device="cpu") -> None:
    """state_dict → bytes → torch.load(weights_only=True) → a fresh prior gives identical logits."""
    prior, bank = build_prior(factory, config, shape, device), contract_bank(shape, device)
    buffer = io.BytesIO()
    torch.save(prior.state_dict(), buffer)
    buffer.seek(0)
    restored = factory(config, shape=shape)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored = restored.to(device).eval()
    frames = prior_frames(random_latents(shape, 2, seed=2, device=device), bank, shape.grid)
    expected, actual = prior(frames), restored(frames)
    for name in ("whether", "what", "where"):
        if not torch.equal(getattr(expected, name), getattr(actual, name)):
            raise AssertionError(f"a prior restored from its state_dict gives other {name} logits")


@torch.no_grad()
def check_latents_embedding(factory, config, shape: ModelShape, device="cpu") -> None:
    """A prior that `embeds_latents` gives `forward`'s logits from `logits_from_latents` (for hard latents,
    whatever their whether); a prior without the shortcut has nothing to check."""
    prior, bank = build_prior(factory, config, shape, device), contract_bank(shape, device)
    if not prior.embeds_latents:
        return
    latents = random_latents(shape, 3, seed=2, device=device)
    expected = prior(prior_frames(latents, bank, shape.grid, union_masks=prior.union_masks))
    actual = prior.logits_from_latents(latents, bank, shape.grid)
    for name in ("whether", "what", "where"):
        if not _close(getattr(actual, name), getattr(expected, name)):
            raise AssertionError(
                f"logits_from_latents gives other {name} logits than forward(prior_frames(latents)); it must be "
                "the same computation (or set embeds_latents = False)"
            )


PRIOR_CHECKS = {
    "shapes": check_shapes,
    "step_matches_forward": check_step_matches_forward,
    "latents_embedding": check_latents_embedding,
    "causality": check_causality,
    "samples": check_samples,
    "seeded_determinism": check_seeded_determinism,
    "state_dict_round_trip": check_state_dict_round_trip,
}


def check_prior(factory: Callable, config, shape: ModelShape, *, device: str | torch.device = "cpu") -> None:
    """Run every contract check on one prior; raises AssertionError at the first broken one."""
    for check in PRIOR_CHECKS.values():
        check(factory, config, shape, device)


# -- parsers ---------------------------------------------------------------------------------------------
THRESHOLD_FIELD = "parse_threshold"  # the config field `check_threshold` varies; parsers without it skip it
INDEX_NAMES = ("what", "where", "whether")


def build_parser(factory: Callable, config, shape: ModelShape) -> Parser:
    parser = factory(config, shape=shape)
    if not isinstance(parser, Parser):
        raise AssertionError(
            f"the factory returned {type(parser).__name__}, not an npdraw_core.interfaces.Parser"
        )
    return parser


def contract_images(shape: ModelShape, bank: torch.Tensor, num: int = 6, seed: int = 11) -> torch.Tensor:
    """(num, C, S, S) images in [0, 1] a parser can explain: random exemplars at random brightness in about
    half the cells (cropped at the canvas edge), plus faint noise, so that no two candidates tie."""
    generator = torch.Generator().manual_seed(seed)
    grid, cells = shape.grid, shape.num_steps
    ids = torch.randint(shape.bank_size, (num, cells), generator=generator)
    shown = (torch.rand(num, cells, generator=generator) < 0.5).float()
    brightness = 0.5 + 0.5 * torch.rand(num, cells, generator=generator)
    parts = bank.cpu()[ids] * (shown * brightness)[:, :, None, None, None]
    noise = 0.05 * torch.rand(num, shape.channels, shape.canvas_size, shape.canvas_size, generator=generator)
    return (grid.assemble(parts) + noise).clamp(0, 1).to(bank.device)


def _parsed(parser: Parser, images: torch.Tensor, bank: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return parser.parse_indices(images, bank)


def _drawn_counts(indices: dict[str, torch.Tensor]) -> torch.Tensor:
    return indices["whether"].long().sum(1)


def check_parse_shapes(factory, config, shape: ModelShape, device="cpu") -> None:
    """parse_indices: {"what", "where", "whether"} integer (B, T) on the images' device, whether 0/1;
    parse: hard one-hot Latents (B, T), (B, T, M), (B, T, T) that say the same as parse_indices."""
    parser, bank = build_parser(factory, config, shape), contract_bank(shape, device)
    images = contract_images(shape, bank)
    batch, steps, size = len(images), shape.num_steps, shape.bank_size
    indices = _parsed(parser, images, bank)
    if set(indices) != set(INDEX_NAMES):
        raise AssertionError(f"parse_indices returned keys {sorted(indices)}, expected {list(INDEX_NAMES)}")
    for name, value in indices.items():
        if tuple(value.shape) != (batch, steps):
            raise AssertionError(
                f"parse_indices: {name} has shape {tuple(value.shape)}, expected {(batch, steps)}"
            )
        if value.is_floating_point() or value.dtype == torch.bool or value.device.type != images.device.type:
            raise AssertionError(
                f"parse_indices: {name} is {value.dtype} on {value.device}; expected an integer tensor on "
                f"{images.device} (the stored parse is int16/uint8)"
            )
    if not ((indices["whether"] == 0) | (indices["whether"] == 1)).all():
        raise AssertionError("parse_indices: whether must be 0 or 1 (a draw flag)")
    with torch.no_grad():
        latents = parser.parse(images, bank)
    expected = {"whether": (batch, steps), "what": (batch, steps, size), "where": (batch, steps, steps)}
    for name, value_shape in expected.items():
        value = getattr(latents, name)
        if tuple(value.shape) != value_shape:
            raise AssertionError(f"parse: {name} has shape {tuple(value.shape)}, expected {value_shape}")
        hard = ((value == 0) | (value == 1)).all() and (name == "whether" or (value.sum(-1) == 1).all())
        if not hard:
            raise AssertionError(f"parse: {name} is not hard (one-hot, or 0/1 for whether)")
    via_latents, drawn = latents.indices(), indices["whether"].bool()
    if not torch.equal(via_latents["whether"].long(), indices["whether"].long()) or any(
        not torch.equal(via_latents[name][drawn].long(), indices[name][drawn].long())
        for name in ("what", "where")
    ):
        raise AssertionError("parse and parse_indices disagree on the drawn steps: they must be one parse")


def check_render_psnr(factory, config, shape: ModelShape, device="cpu") -> None:
    """Rendering the stored parse (parse_images → render_parses, what the parse stage reports) gives the
    canvas and PSNR of rendering parse()'s latents, and beats a blank canvas on images made of exemplars."""
    parser, bank = build_parser(factory, config, shape), contract_bank(shape, device)
    images = contract_images(shape, bank)
    stored = parse_images(parser, images, bank, progress=False)
    reported = render_parses(stored, bank, shape.grid)
    with torch.no_grad():
        rendered = render(parser.parse(images, bank), bank, shape.grid).cpu()
    if not torch.allclose(reported, rendered, atol=1e-6):
        raise AssertionError("rendering the stored parse differs from rendering parse()'s latents")
    psnr, again = (
        parse_psnr(images.cpu(), reported)["psnr_mean"],
        parse_psnr(images.cpu(), rendered)["psnr_mean"],
    )
    if abs(psnr - again) > 1e-6:
        raise AssertionError(
            f"the reported parse PSNR {psnr:.6f} dB is not reproduced by rendering ({again:.6f})"
        )
    blank = parse_psnr(images.cpu(), torch.zeros_like(reported))["psnr_mean"]
    if not psnr > blank:
        raise AssertionError(
            f"the parse PSNR {psnr:.2f} dB is no better than a blank canvas ({blank:.2f} dB) on images made "
            "of the bank's own exemplars"
        )


def check_parse_determinism(factory, config, shape: ModelShape, device="cpu") -> None:
    """The same images parse the same twice, and an image's parse does not depend on the other images of
    its batch (parse_images chunks a dataset by the parser's batch_size)."""
    parser, bank = build_parser(factory, config, shape), contract_bank(shape, device)
    images = contract_images(shape, bank)
    first, again = _parsed(parser, images, bank), _parsed(parser, images, bank)
    order = torch.arange(len(images) - 1, -1, -1)
    alone = [_parsed(parser, images[i : i + 1], bank) for i in range(len(images))]
    reversed_batch = _parsed(parser, images[order.to(images.device)], bank)
    for name in INDEX_NAMES:
        if not torch.equal(first[name], again[name]):
            raise AssertionError(f"parsing the same images twice gave different {name}: not deterministic")
        if not torch.equal(first[name], torch.cat([one[name] for one in alone])):
            raise AssertionError(
                f"an image parsed alone gets other {name} than in a batch: a parse must depend on its image only"
            )
        if not torch.equal(first[name], reversed_batch[name][order.to(images.device)]):
            raise AssertionError(
                f"reordering the batch changed the {name} of its images: a parse must depend on its image only"
            )


def check_within_canvas(factory, config, shape: ModelShape, device="cpu") -> None:
    """A parse never draws outside the canvas: every what is a bank index, every where a cell of the grid."""
    parser, bank = build_parser(factory, config, shape), contract_bank(shape, device)
    images = contract_images(shape, bank)
    images = torch.cat([images, torch.ones_like(images[:1])])  # a white image: every cell wants parts
    indices = _parsed(parser, images, bank)
    for name, limit in (("what", shape.bank_size), ("where", shape.num_steps)):
        value = indices[name]
        if (value < 0).any() or (value >= limit).any():
            raise AssertionError(
                f"{name} indices outside [0, {limit}): {value.min().item()}..{value.max().item()} "
                f"({'bank size' if name == 'what' else 'number of cells'} {limit})"
            )


def check_blank_image(factory, config, shape: ModelShape, device="cpu") -> None:
    """An all-zero image parses to no drawn steps (drawing anything on it only adds error)."""
    parser, bank = build_parser(factory, config, shape), contract_bank(shape, device)
    blank = torch.zeros(2, shape.channels, shape.canvas_size, shape.canvas_size, device=device)
    drawn = _drawn_counts(_parsed(parser, blank, bank))
    if drawn.any():
        raise AssertionError(f"an all-zero image parsed to {drawn.tolist()} drawn steps, expected none")


def check_threshold(factory, config, shape: ModelShape, device="cpu") -> None:
    """ε = `parse_threshold` moves the number of drawn parts one way only: per image, ε = 0 draws at least
    as many parts as ε > 0 for every ε tried, or at most as many for every one. (A required gain, like the
    greedy parser's, draws fewer parts as ε grows; Algorithm 1's ε is a tolerance, cost ≤ ε, and draws
    more.) ε = 0 must draw something on images made of the bank's exemplars. Configs without the field
    skip this check."""
    if not dataclasses.is_dataclass(config) or THRESHOLD_FIELD not in {
        f.name for f in dataclasses.fields(config)
    }:
        return
    bank = contract_bank(shape, device)
    images = contract_images(shape, bank)

    def counts(threshold: float) -> torch.Tensor:
        chosen = dataclasses.replace(config, **{THRESHOLD_FIELD: threshold})
        return _drawn_counts(_parsed(build_parser(factory, chosen, shape), images, bank)).cpu()

    at_zero = counts(0.0)
    if not at_zero.any():
        raise AssertionError(
            "with parse_threshold = 0 nothing was drawn on images made of the bank's exemplars"
        )
    differences = torch.stack([at_zero - counts(threshold) for threshold in (0.05, 0.5, 2.0)])
    if (differences > 0).any() and (differences < 0).any():
        raise AssertionError(
            "parse_threshold moves the number of drawn parts both ways (drawn parts at ε = 0 minus at ε = "
            f"0.05, 0.5, 2 per image: {differences.tolist()}); a threshold must only ever add or only remove parts"
        )


PARSER_CHECKS = {
    "shapes": check_parse_shapes,
    "render_psnr": check_render_psnr,
    "determinism": check_parse_determinism,
    "within_canvas": check_within_canvas,
    "blank_image": check_blank_image,
    "threshold": check_threshold,
}


def check_parser(factory: Callable, config, shape: ModelShape, *, device: str | torch.device = "cpu") -> None:
    """Run every contract check on one parser; raises AssertionError at the first broken one."""
    for check in PARSER_CHECKS.values():
        check(factory, config, shape, device)
