"""Output distributions p(x|z): Bernoulli by hand, the discretised logistic mixture against scipy, its bins
summing to one (hypothesis), and sampling that is seeded, on the grid and distributed like log_prob."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import logsumexp

from npdraw_core.registry import default_registry
from npdraw_plugins.output_distributions import (
    Bernoulli,
    BernoulliConfig,
    DiscretizedLogisticMixture,
    DiscretizedLogisticMixtureConfig,
)


def mixture(channels: int, components: int = 10, bins: int = 256) -> DiscretizedLogisticMixture:
    config = DiscretizedLogisticMixtureConfig(num_components=components, num_bins=bins)
    return DiscretizedLogisticMixture(config, channels=channels)


def random_params(
    model,
    count: int,
    *,
    seed: int,
    mean_centre=0.0,
    mean_spread=1.0,
    log_scale_centre=-2.0,
    log_scale_spread=1.0,
    logit_spread=1.0,
    coeff_spread=1.0,
) -> torch.Tensor:
    """(count, P, 1, 1) parameters, one pixel per batch item, with the given centres and spreads."""
    k, c = model.config.num_components, model.channels
    generator = torch.Generator().manual_seed(seed)

    def draw(size: int, centre: float, spread: float) -> torch.Tensor:
        return centre + spread * torch.randn(count, size, 1, 1, generator=generator)

    return torch.cat(
        [
            draw(k, 0.0, logit_spread),
            draw(c * k, mean_centre, mean_spread),
            draw(c * k, log_scale_centre, log_scale_spread),
            draw(model.num_pairs * k, 0.0, coeff_spread),
        ],
        dim=1,
    )


def keep_channels(params: torch.Tensor, components: int, channels: int, keep: int) -> torch.Tensor:
    """The documented layout restricted to the first `keep` channels: the marginal of those channels."""
    k, c = components, channels
    pairs_kept = keep * (keep - 1) // 2  # pairs are ordered by target channel, so they come first
    return torch.cat(
        [
            params[:, :k],
            params[:, k : k + keep * k],
            params[:, k + c * k : k + c * k + keep * k],
            params[:, k + 2 * c * k : k + 2 * c * k + pairs_kept * k],
        ],
        dim=1,
    )


def all_levels_log_probs(model, params: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """log p(prefix, v) for every level v of the last channel: params (N, P, 1, 1), prefix (N, C−1) bin
    indices → (N, bins). Each level is its own batch item, so log_prob returns per-pixel values."""
    count, bins = params.shape[0], model.config.num_bins
    levels = torch.arange(bins, dtype=torch.float32).repeat(count)
    images = torch.cat([prefix.float().repeat_interleave(bins, 0), levels[:, None]], dim=1) / (bins - 1)
    repeated = params.repeat_interleave(bins, 0)
    return model.log_prob(repeated, images[:, :, None, None]).view(count, bins)


extreme = dict(
    components=st.sampled_from([1, 10]),
    seed=st.integers(0, 2**31 - 1),
    mean_centre=st.floats(-4.0, 4.0),
    mean_spread=st.floats(0.0, 3.0),
    log_scale_centre=st.floats(-12.0, 5.0),  # below −7 exercises the clamp
    log_scale_spread=st.floats(0.0, 3.0),
)


@settings(max_examples=30, deadline=None)
@given(**extreme)
@example(
    components=1, seed=0, mean_centre=-4.0, mean_spread=0.0, log_scale_centre=-12.0, log_scale_spread=0.0
)
@example(components=10, seed=1, mean_centre=4.0, mean_spread=0.0, log_scale_centre=5.0, log_scale_spread=0.0)
@example(components=10, seed=2, mean_centre=0.3, mean_spread=0.0, log_scale_centre=-7.0, log_scale_spread=0.0)
@example(components=1, seed=1532, mean_centre=1.0, mean_spread=2.6875, log_scale_centre=-7.0, log_scale_spread=0.0)
def test_grey_bins_sum_to_one(components, seed, **spreads):
    model = mixture(1, components)
    params = random_params(model, 16, seed=seed, **spreads)
    log_probs = all_levels_log_probs(model, params, torch.empty(16, 0))
    assert torch.isfinite(log_probs).all()
    # float32 sums of 256 bins at extreme scales: within 1e-4 of one (2.7e-5 seen at components=1, seed=1532)
    torch.testing.assert_close(torch.logsumexp(log_probs, 1), torch.zeros(16), atol=1e-4, rtol=0)


@settings(max_examples=30, deadline=None)
@given(**extreme, coeff_spread=st.floats(0.0, 5.0))
@example(
    components=10,
    seed=3,
    mean_centre=-4.0,
    mean_spread=3.0,
    log_scale_centre=-9.0,
    log_scale_spread=0.0,
    coeff_spread=5.0,
)
def test_colour_bins_sum_to_one_channel_by_channel(components, seed, **spreads):
    """Σ_b p(r, g, b) = p(r, g), Σ_g p(r, g) = p(r), Σ_r p(r) = 1 at random (r, g): the 256³ joint sums to 1
    by telescoping (each marginal is the same mixture restricted to the first channels)."""
    count = 8
    colour, two, grey = mixture(3, components), mixture(2, components), mixture(1, components)
    params = random_params(colour, count, seed=seed, **spreads)
    prefix = torch.randint(0, 256, (count, 2), generator=torch.Generator().manual_seed(seed))
    sum_blue = torch.logsumexp(all_levels_log_probs(colour, params, prefix), 1)
    params_two = keep_channels(params, components, 3, 2)
    log_red_green = two.log_prob(params_two, (prefix.float() / 255)[:, :, None, None])
    sum_green = torch.logsumexp(all_levels_log_probs(two, params_two, prefix[:, :1]), 1)
    params_grey = keep_channels(params, components, 3, 1)
    log_red = grey.log_prob(params_grey, (prefix[:, :1].float() / 255)[:, :, None, None])
    sum_red = torch.logsumexp(all_levels_log_probs(grey, params_grey, prefix[:, :0]), 1)
    torch.testing.assert_close(sum_blue, log_red_green, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sum_green, log_red, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sum_red, torch.zeros(count), atol=1e-4, rtol=0)  # float32 sums of 256 bins, as above


@pytest.mark.parametrize("components", [1, 10])
def test_colour_joint_sums_to_one_on_a_coarse_grid(components):
    """The full joint over all 8³ colours of an 8-level grid, coupling and all."""
    model = mixture(3, components, bins=8)
    params = random_params(model, 4, seed=components, log_scale_centre=-1.0, coeff_spread=2.0)
    levels = torch.cartesian_prod(*[torch.arange(8.0)] * 3) / 7  # (512, 3)
    images = levels.repeat(4, 1)[:, :, None, None]
    log_probs = model.log_prob(params.repeat_interleave(512, 0), images).view(4, 512)
    torch.testing.assert_close(torch.logsumexp(log_probs, 1), torch.zeros(4), atol=2e-5, rtol=0)


def reference_bin_probs(mean: float, scale: float, bins: int = 256) -> np.ndarray:
    """float64 discretised logistic on [−1, 1] from scipy, edges open; tails via the survival function."""
    half = 1 / (bins - 1)
    centres = np.linspace(-1, 1, bins)
    dist = stats.logistic(loc=mean, scale=scale)
    right = centres >= mean
    probs = np.where(
        right,
        dist.sf(centres - half) - dist.sf(centres + half),
        dist.cdf(centres + half) - dist.cdf(centres - half),
    )
    probs[0], probs[-1] = dist.cdf(-1 + half), dist.sf(1 - half)
    return probs


@pytest.mark.parametrize(
    ("mean", "log_scale"), [(0.1, -3.0), (-0.9, -5.0), (0.7, 1.5), (-1.6, -2.0), (0.0, -7.0)]
)
def test_single_logistic_matches_scipy(mean, log_scale):
    """Including bins hundreds of scales away, where PixelCNN++ needs its mid-bin fallback."""
    model = mixture(1, 1)
    params = torch.tensor([0.0, mean, log_scale]).view(1, 3, 1, 1).repeat(256, 1, 1, 1)
    images = (torch.arange(256.0) / 255).view(256, 1, 1, 1)
    ours = model.log_prob(params, images).double().numpy()
    with np.errstate(divide="ignore"):
        expected = np.log(reference_bin_probs(mean, math.exp(log_scale)))
    finite = np.isfinite(expected)  # float64 underflows beyond ~700 nats; ours stays finite there
    assert finite.sum() > 100
    np.testing.assert_allclose(ours[finite], expected[finite], rtol=1e-5, atol=1e-4)


def test_coupled_mixture_matches_direct_computation():
    """Two components, RGB, the documented layout read independently of the implementation."""
    k, c = 2, 3
    model = mixture(c, k)
    rng = np.random.default_rng(0)
    params = rng.normal(size=(1, model.num_params(), 1, 1)).astype(np.float32)
    params[0, k + 2 * c * k :] *= 2.0  # strong coupling
    image = np.array([40, 200, 128]) / 255.0
    logits, flat = params[0, :k, 0, 0], params[0, :, 0, 0]
    means = flat[k : k + c * k].reshape(c, k)
    scales = np.exp(np.maximum(flat[k + c * k : k + 2 * c * k].reshape(c, k), -7.0))
    coeffs = np.tanh(flat[k + 2 * c * k :].reshape(3, k))  # pairs (1,0), (2,0), (2,1)
    value = 2 * image - 1
    log_mix = logits - logsumexp(logits)
    total = []
    for comp in range(k):
        shifted = [
            means[0, comp],
            means[1, comp] + coeffs[0, comp] * value[0],
            means[2, comp] + coeffs[1, comp] * value[0] + coeffs[2, comp] * value[1],
        ]
        level = np.rint(image * 255).astype(int)
        channel_logs = [
            np.log(reference_bin_probs(float(shifted[i]), float(scales[i, comp]))[level[i]]) for i in range(c)
        ]
        total.append(log_mix[comp] + sum(channel_logs))
    expected = logsumexp(total)
    ours = model.log_prob(torch.from_numpy(params), torch.tensor(image, dtype=torch.float32).view(1, 3, 1, 1))
    assert ours.item() == pytest.approx(expected, rel=1e-5)


def test_log_prob_sums_pixels_and_has_finite_gradients_at_extremes():
    model = mixture(3, 10)
    params = random_params(
        model, 4, seed=5, mean_spread=20.0, log_scale_centre=0.0, log_scale_spread=15.0, logit_spread=30.0
    )
    params = params.expand(4, -1, 3, 5).contiguous().requires_grad_(True)
    images = torch.randint(0, 256, (4, 3, 3, 5), generator=torch.Generator().manual_seed(1)) / 255
    images[:, :, 0, 0], images[:, :, 0, 1] = 0.0, 1.0  # both open-ended edge bins
    log_probs = model.log_prob(params, images)
    assert log_probs.shape == (4,) and torch.isfinite(log_probs).all()
    log_probs.sum().backward()
    assert torch.isfinite(params.grad).all()
    one_pixel = model.log_prob(params[:, :, :1, :1].detach(), images[:, :, :1, :1])
    assert (log_probs <= one_pixel + 1e-3).all()  # a sum of 15 log-probabilities ≤ one of them


def test_mixture_rejects_images_off_the_bin_grid():
    model = mixture(1, 2)
    params = torch.zeros(1, model.num_params(), 2, 2)
    with pytest.raises(ValueError, match="grid of 256 levels"):
        model.log_prob(params, torch.full((1, 1, 2, 2), 0.5))
    with pytest.raises(ValueError, match=r"\(B, 6, H, W\)"):
        model.log_prob(torch.zeros(1, 5, 2, 2), torch.zeros(1, 1, 2, 2))
    assert (
        mixture(3, 10).num_params() == 100
        and mixture(1, 10).num_params() == 30
        and mixture(3, 1).num_params() == 10
    )


@pytest.mark.parametrize(("channels", "bins"), [(1, 256), (3, 8)])
def test_samples_are_seeded_on_the_grid_and_follow_log_prob(channels, bins):
    model = mixture(channels, 3, bins)
    pixel = random_params(model, 1, seed=11, log_scale_centre=-2.5, log_scale_spread=0.3, coeff_spread=4.0)
    params = pixel.expand(1, -1, 250, 250)

    def draw(seed: int) -> torch.Tensor:
        return model.sample(params, generator=torch.Generator().manual_seed(seed))

    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    levels = first * (bins - 1)
    assert first.shape == (1, channels, 250, 250) and torch.equal(levels, levels.round())
    codes = levels.round().long().flatten(2)[0]  # (C, pixels) → one integer per colour
    codes = sum(codes[i] * bins ** (channels - 1 - i) for i in range(channels))
    empirical = torch.bincount(codes, minlength=bins**channels).double() / codes.numel()
    colours = torch.cartesian_prod(*[torch.arange(float(bins))] * channels).view(-1, channels) / (bins - 1)
    exact = model.log_prob(pixel.expand(len(colours), -1, -1, -1), colours[:, :, None, None]).double().exp()
    # total variation: sampling noise gives ≈ 0.01; coupling to unrounded values instead would give ≈ 0.1
    assert 0.5 * (empirical - exact).abs().sum() < 0.03


def test_mean_is_the_location_of_the_most_probable_component():
    model = mixture(3, 2)
    #                logits      means R   means G    means B   log-scales  coeffs (1,0) (2,0) (2,1)
    flat = torch.tensor([0.0, 2.0, 0.9, -0.5, 0.0, 0.2, 0.0, 3.0, *[-2.0] * 6, 0.0, 0.5, 0.0, 0.0, 0.0, -0.5])
    shown = model.mean(flat.view(1, -1, 1, 1)).flatten()
    red = (-0.5 + 1) / 2  # component 1 wins; its R mean −0.5
    green = (0.2 + math.tanh(0.5) * -0.5 + 1) / 2
    blue = min(1.0, (3.0 + math.tanh(-0.5) * (2 * green - 1) + 1) / 2)  # clamped to 1
    torch.testing.assert_close(shown, torch.tensor([red, green, blue]))


def test_bernoulli_matches_hand_computation():
    model = Bernoulli(BernoulliConfig(), channels=1)
    logits = torch.tensor([[[[2.0, -1.0], [0.0, 30.0]]]])
    images = torch.tensor([[[[1.0, 0.0], [0.3, 0.0]]]])  # the grey target gives its cross-entropy

    def sigmoid(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    expected = (
        math.log(sigmoid(2)) + math.log(1 - sigmoid(-1)) + 0.3 * math.log(0.5) + 0.7 * math.log(0.5) - 30.0
    )
    assert model.log_prob(logits, images).item() == pytest.approx(expected, rel=1e-6)
    assert model.num_params() == 1
    torch.testing.assert_close(model.mean(logits), torch.sigmoid(logits))
    big = torch.zeros(1, 1, 64, 64)
    draws = [model.sample(big, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert set(draws[0].unique().tolist()) == {0.0, 1.0} and abs(draws[0].mean().item() - 0.5) < 0.05
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.log_prob(logits, images * 255)


def test_both_are_registered_under_their_config_names():
    registry = default_registry()
    built = registry.get("output_distribution", "discretized_logistic_mixture").build(
        DiscretizedLogisticMixtureConfig(num_components=1), channels=3
    )
    assert built.num_params() == 10
    assert (
        registry.get("output_distribution", "bernoulli").build(BernoulliConfig(), channels=1).num_params()
        == 1
    )
