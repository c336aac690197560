"""Contract checks for prior plugins, importable by plugin authors:

    from npdraw_core.contracts import check_prior
    check_prior(MyPrior, MyPriorConfig(), ModelShape(1, 12, 12, 4, 6))

Each check builds the prior with `factory(config, shape=shape)`, nudges its parameters with seeded noise (so
that a table initialised to zeros is not trivially "deterministic" or "causal"), and raises AssertionError
saying what broke. `PRIOR_CHECKS` lists them for parametrised tests. Small shapes keep them fast.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch

from npdraw_core.distributions import log_prob
from npdraw_core.geometry import ModelShape
from npdraw_core.interfaces import Prior, StepLogits
from npdraw_core.latents import Latents, prior_frames
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
    """One seed gives one sample, whichever sampling path (cached or full recompute); another seed differs."""
    prior, bank = build_prior(factory, config, shape, device), contract_bank(shape, device)

    def draw(seed: int, use_cache: bool) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return sample_latents(prior, bank, shape.grid, 4, generator=generator, use_cache=use_cache).indices()

    first, again, full, other = draw(3, True), draw(3, True), draw(3, False), draw(4, True)
    for name in first:
        if not torch.equal(first[name], again[name]):
            raise AssertionError(f"the same seed gave different {name} samples")
        if not torch.equal(first[name], full[name]):
            raise AssertionError(
                f"cached and full-recompute sampling gave different {name} samples for one seed"
            )
    if all(torch.equal(first[name], other[name]) for name in first):
        raise AssertionError("two different seeds gave identical samples: the generator is not used")


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


PRIOR_CHECKS = {
    "shapes": check_shapes,
    "step_matches_forward": check_step_matches_forward,
    "causality": check_causality,
    "samples": check_samples,
    "seeded_determinism": check_seeded_determinism,
    "state_dict_round_trip": check_state_dict_round_trip,
}


def check_prior(factory: Callable, config, shape: ModelShape, *, device: str | torch.device = "cpu") -> None:
    """Run every contract check on one prior; raises AssertionError at the first broken one."""
    for check in PRIOR_CHECKS.values():
        check(factory, config, shape, device)
