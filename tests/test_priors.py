"""Prior plugins: the contract checks over every registered prior, and what the built-in ones must do."""

from __future__ import annotations

import pytest
import torch

from npdraw_core.contracts import PRIOR_CHECKS, build_prior, check_prior, contract_bank, random_latents
from npdraw_core.distributions import log_prob
from npdraw_core.geometry import ModelShape
from npdraw_core.interfaces import StepLogits
from npdraw_core.latents import prior_frames
from npdraw_core.registry import default_registry
from npdraw_plugins.priors.independent import IndependentPrior, IndependentPriorConfig
from npdraw_plugins.priors.transformer import TransformerPrior, TransformerPriorConfig, _dropout

SHAPE = ModelShape(channels=1, image_size=12, canvas_size=12, patch_size=4, bank_size=6)  # 9 steps
SMALL = TransformerPriorConfig(
    d_model=16, depth=2, num_heads=2, head_dim=8, mlp_dim=32, dropout=0.1, head_hidden=16
)
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def registered_priors():
    registry = default_registry()
    return [registry.get("prior", name) for name in registry.names("prior")]


def test_both_builtin_priors_are_registered():
    assert {"transformer", "independent"} <= set(default_registry().names("prior"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check", list(PRIOR_CHECKS), ids=str)
@pytest.mark.parametrize("component", registered_priors(), ids=lambda c: c.name)
def test_registered_prior_meets_the_contract(component, check, device):
    """Every registered prior, with its default config."""
    PRIOR_CHECKS[check](component.factory, component.config_class(), SHAPE, device)


@pytest.mark.parametrize("union_masks", [False, True])
def test_small_transformer_meets_the_contract_in_colour(union_masks):
    config = TransformerPriorConfig(**{**SMALL.__dict__, "union_masks": union_masks})
    check_prior(TransformerPrior, config, ModelShape(3, 8, 8, 3, 5))  # 9 steps, canvas 8 not divisible by 3


def test_a_broken_prior_fails_the_causality_check():
    class Leaky(TransformerPrior):  # sees the future: every position also gets the mean of all frames
        def forward(self, frames):
            return super().forward(frames + frames.mean(dim=1, keepdim=True))

    with pytest.raises(AssertionError, match="not causal"):
        PRIOR_CHECKS["causality"](Leaky, SMALL, SHAPE)


def test_a_prior_whose_latents_shortcut_differs_from_forward_fails_the_contract():
    class Shifted(TransformerPrior):  # the shortcut computes something else than teacher forcing
        def logits_from_latents(self, latents, bank, grid, *, frames=None):
            logits = super().logits_from_latents(latents, bank, grid, frames=frames)
            return StepLogits(logits.whether + 0.1, logits.what, logits.where)

    PRIOR_CHECKS["latents_embedding"](TransformerPrior, SMALL, SHAPE)
    with pytest.raises(AssertionError, match="logits_from_latents gives other whether logits"):
        PRIOR_CHECKS["latents_embedding"](Shifted, SMALL, SHAPE)


def test_a_prior_whose_one_call_sampler_differs_from_its_steps_fails_the_contract():
    class Reversed(TransformerPrior):  # a one-call sampler that draws something else than stepping would
        def sample_steps(self, frame, state, noise, canvas):
            drawn = super().sample_steps(frame, state, noise, canvas)
            return None if drawn is None else tuple(values.flip(0) for values in drawn)

    with pytest.raises(AssertionError, match="sample_steps gave other"):
        PRIOR_CHECKS["seeded_determinism"](Reversed, SMALL, SHAPE)


def test_transformer_uses_the_frame_at_its_own_position():
    prior = build_prior(TransformerPrior, SMALL, SHAPE)
    bank = contract_bank(SHAPE)
    frames = prior_frames(random_latents(SHAPE, 2, seed=0), bank, SHAPE.grid)
    changed = frames.clone()
    changed[:, 4] = 1.0 - changed[:, 4]
    before, after = prior(frames), prior(changed)
    assert not torch.allclose(before.what[:, 4], after.what[:, 4])
    assert torch.allclose(before.what[:, :4], after.what[:, :4], atol=1e-6)


def count_parameters(config: TransformerPriorConfig) -> int:
    return sum(p.numel() for p in TransformerPrior(config, shape=ModelShape(1, 28, 28, 5, 50)).parameters())


def test_transformer_sizes_of_the_cpu_default_and_of_the_authors():
    assert 0.4e6 < count_parameters(TransformerPriorConfig()) < 0.45e6
    authors = TransformerPriorConfig(
        d_model=64, depth=8, num_heads=16, head_dim=64, mlp_dim=2048, dropout=0.1
    )
    assert 4.3e6 < count_parameters(authors) < 4.7e6  # spec §4: ≈4.5M parameters


def test_transformer_rejects_more_frames_than_steps():
    prior = TransformerPrior(SMALL, shape=SHAPE)
    with pytest.raises(ValueError, match="built for 9 steps"):
        prior(torch.zeros(1, 10, 2, 12, 12))
    noise = (torch.zeros(10, 1), torch.zeros(10, 1, SHAPE.bank_size), torch.zeros(10, 1, 10))  # 10 steps' noise
    with pytest.raises(ValueError, match="built for 9 steps"):
        prior.eval().sample_steps(torch.zeros(1, 2, 12, 12), prior.start(1), noise, canvas=None)


def test_dropout_is_active_in_training_mode_only():
    prior = TransformerPrior(SMALL, shape=SHAPE)
    frames = prior_frames(random_latents(SHAPE, 2, seed=0), contract_bank(SHAPE), SHAPE.grid)
    prior.train()
    assert not torch.equal(prior(frames).what, prior(frames).what)
    prior.eval()
    assert torch.equal(prior(frames).what, prior(frames).what)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_drops_at_its_rate_in_every_slice_of_a_draw_and_keeps_the_mean(p):
    """Four elements share one 64-bit draw: each of the four 16-bit slices must drop at rate p (a draw
    without its top bit would never drop the fourth); the kept ones are scaled to keep the mean."""
    torch.manual_seed(0)
    out = _dropout(torch.ones(4 * 50_000), p, True)
    dropped = (out == 0).float().view(-1, 4).mean(0)  # per slice
    assert torch.allclose(dropped, torch.full((4,), p), atol=0.008), dropped
    assert torch.allclose(out[out != 0], torch.tensor(1 / (1 - round(p * 2**16) / 2**16)))
    assert abs(float(out.mean()) - 1) < 0.01
    odd = torch.ones(3, 7)  # sizes that are not a multiple of four
    assert _dropout(odd, p, True).shape == (3, 7) and torch.equal(_dropout(odd, p, False), odd)


def test_independent_prior_reaches_the_empirical_frequencies():
    """Its maximum-likelihood tables are the per-step frequencies; gradient descent must find them."""
    prior = IndependentPrior(IndependentPriorConfig(), shape=SHAPE)
    generator = torch.Generator().manual_seed(0)
    whether = (torch.rand(400, 9, generator=generator) < torch.linspace(0.1, 0.9, 9)).long()
    what = torch.randint(2, (400, 9), generator=generator)  # only parts 0 and 1
    from npdraw_core.latents import Latents

    latents = Latents.from_indices(
        what=what, where=torch.arange(9).expand(400, 9), whether=whether, bank_size=6, num_cells=9
    )
    frames = torch.zeros(400, 9, 2, 1, 1)
    optimizer = torch.optim.Adam(prior.parameters(), lr=0.2)
    for _ in range(150):
        optimizer.zero_grad()
        (-log_prob(prior(frames), latents).mean()).backward()
        optimizer.step()
    assert torch.allclose(torch.sigmoid(prior.whether_logits), whether.float().mean(0), atol=0.02)
    assert torch.softmax(prior.where_logits, -1).diagonal().min() > 0.95
    assert torch.softmax(prior.what_logits, -1)[:, 2:].max() < 0.05
