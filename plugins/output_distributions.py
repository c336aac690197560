"""Output distributions p(x|z) (spec §5): the decoder's parameters (B, P, H, W) → log-likelihoods (nats per
image), samples and the image shown to users.

- `bernoulli`: P = C logits. For binary datasets (MNIST, Omniglot) the training loop feeds *dynamically
  binarised* images (`npdraw_core.data.dynamic_binarize`); grey targets are accepted and give the
  cross-entropy against the grey levels.
- `discretized_logistic_mixture`: PixelCNN++ (Salimans et al. 2017). `num_components=1` is the single
  discretised logistic the authors used for CelebA.

Both are parameter-free `nn.Module`s, so they move with `.to(device)` and checkpoint like the networks.
Sampling takes an explicit `torch.Generator` on the parameters' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from npdraw_core.config import check_at_least, check_finite
from npdraw_core.hookspecs import hookimpl


def check_pair(params: Tensor, images: Tensor, num_params: int, channels: int) -> None:
    if params.dim() != 4 or params.shape[1] != num_params:
        raise ValueError(f"expected parameters of shape (B, {num_params}, H, W), got {tuple(params.shape)}")
    expected = (params.shape[0], channels, *params.shape[2:])
    if tuple(images.shape) != expected:
        raise ValueError(
            f"expected images of shape {expected} to match the parameters, got {tuple(images.shape)}"
        )


@dataclass(kw_only=True)
class BernoulliConfig:
    pass


class Bernoulli(nn.Module):
    """Independent Bernoulli pixels with logits. −log p(x|z) is the summed binary cross-entropy."""

    def __init__(self, config: BernoulliConfig | None = None, *, channels: int):
        super().__init__()
        self.channels = channels

    def num_params(self) -> int:
        return self.channels

    def log_prob(self, params: Tensor, images: Tensor) -> Tensor:
        check_pair(params, images, self.channels, self.channels)
        if bool(((images < 0) | (images > 1)).any()):
            raise ValueError(
                "Bernoulli targets must lie in [0, 1]; convert uint8 images with npdraw_core.data.to_unit"
            )
        cross_entropy = F.binary_cross_entropy_with_logits(params, images, reduction="none")
        return -cross_entropy.flatten(1).sum(1)

    def sample(self, params: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params), generator=generator)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)


@dataclass(kw_only=True)
class DiscretizedLogisticMixtureConfig:
    num_components: int = 10
    num_bins: int = 256  # grey levels on [0, 1]: x · (num_bins − 1) is an integer
    min_log_scale: float = -7.0  # log-scales are clamped from below, as in PixelCNN++

    def __post_init__(self) -> None:
        check_at_least(self, 1, "num_components")
        check_at_least(self, 2, "num_bins")
        check_finite(self, "min_log_scale")


def log1mexp(value: Tensor) -> Tensor:
    """log(1 − exp(−value)) for value > 0, accurate for tiny and large values (Mächler 2012). Each branch
    sees only inputs from its own range, so the unused branch never produces an inf gradient."""
    small = value < math.log(2)
    return torch.where(
        small,
        torch.log(-torch.expm1(-value.clamp(max=math.log(2)))),
        torch.log1p(-torch.exp(-value.clamp(min=math.log(2)))),
    )


class DiscretizedLogisticMixture(nn.Module):
    """A mixture of discretised logistics per pixel, with the channels coupled inside each component.

    Parameter layout along dim 1 (K = num_components, C = channels, P = C(C−1)/2 coupling pairs), each
    block ordered component-fastest, P_total = K · (1 + 2C + P) (K · 10 for RGB, as in PixelCNN++;
    3K for grey):
        [0, K)                 mixture logits
        [K, K + CK)            means, channel-major: channel c, component k at K + cK + k
        [K + CK, K + 2CK)      log-scales (clamped ≥ min_log_scale)
        [K + 2CK, end)         coupling coefficients (tanh-squashed), pairs (1,0), (2,0), (2,1), …:
                               channel c's mean moves by tanh(coef) · x_j for each earlier channel j.
    Means, scales and values live on PixelCNN++'s [−1, 1] scale, so a zero output is mid-grey; images are
    given and returned on [0, 1]. The two edge bins are open-ended (they take the tails).

    Bin probabilities σ(b) − σ(a) are computed in log space as log σ(b) + log σ(−a) + log(1 − e^{a−b}),
    an exact identity that neither cancels nor underflows, so PixelCNN++'s mid-bin density fallback for tiny
    probabilities is not needed: the 256 bins sum to 1 to float precision at any mean and scale.
    """

    def __init__(self, config: DiscretizedLogisticMixtureConfig, *, channels: int):
        super().__init__()
        if channels < 1:  # the config checks its own values; channels come from the dataset
            raise ValueError(f"channels must be at least 1, got {channels}")
        self.config, self.channels = config, channels
        self.pairs = [(target, source) for target in range(channels) for source in range(target)]
        self.num_pairs = len(self.pairs)
        # index tensors for the batched coupling in log_prob; buffers so they follow .to(device)
        self.register_buffer(
            "pair_targets", torch.tensor([t for t, _ in self.pairs], dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "pair_sources", torch.tensor([s for _, s in self.pairs], dtype=torch.long), persistent=False
        )

    def num_params(self) -> int:
        return self.config.num_components * (1 + 2 * self.channels + self.num_pairs)

    def split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B, P_total, H, W) → logits (B, K, H, W), means and clamped log-scales (B, C, K, H, W),
        tanh'd coupling coefficients (B, pairs, K, H, W)."""
        if params.dim() != 4 or params.shape[1] != self.num_params():
            raise ValueError(
                f"expected parameters of shape (B, {self.num_params()}, H, W) for {self.config.num_components} "
                f"components and {self.channels} channels, got {tuple(params.shape)}; size the decoder's "
                "out_channels with num_params()"
            )
        batch, _, height, width = params.shape
        k, c = self.config.num_components, self.channels
        logits, means, log_scales, coeffs = params.split([k, c * k, c * k, self.num_pairs * k], dim=1)
        log_scales = log_scales.view(batch, c, k, height, width).clamp(min=self.config.min_log_scale)
        coeffs = torch.tanh(coeffs.view(batch, self.num_pairs, k, height, width))
        return logits, means.view(batch, c, k, height, width), log_scales, coeffs

    def coupled_means(self, means: Tensor, coeffs: Tensor, values: Tensor) -> Tensor:
        """means (B, C, K, H, W) shifted by the coupling with the earlier channels' values (B, C, 1|K, H, W)."""
        if self.num_pairs == 0:
            return means
        shifts = coeffs * values[:, self.pair_sources]
        return means.index_add(1, self.pair_targets, shifts)

    def bin_indices(self, images: Tensor) -> Tensor:
        """[0, 1] images on the bin grid → integer-valued float bin indices; anything off the grid is an error."""
        scaled = images * (self.config.num_bins - 1)
        indices = scaled.round()
        off_grid = ((scaled - indices).abs() > 1e-3) | (images < 0) | (images > 1)
        if bool(off_grid.any()):
            bins = self.config.num_bins
            raise ValueError(
                f"the discretised logistic mixture scores images on a grid of {bins} levels in [0, 1] "
                f"(x · {bins - 1} an integer), but {int(off_grid.sum())} values are off it; pass uint8 images "
                "through npdraw_core.data.to_unit and do not binarise, blur or resize them"
            )
        return indices

    def log_prob(self, params: Tensor, images: Tensor) -> Tensor:
        check_pair(params, images, self.num_params(), self.channels)
        last_bin = self.config.num_bins - 1
        indices = self.bin_indices(images).unsqueeze(2)  # (B, C, 1, H, W)
        values = indices * (2 / last_bin) - 1  # bin centres on [−1, 1]
        logits, means, log_scales, coeffs = self.split(params)
        means = self.coupled_means(means, coeffs, values)
        inv_scales = torch.exp(-log_scales)
        half_bin = 1 / last_bin
        upper = inv_scales * (values - means + half_bin)  # standardised bin edges
        lower = inv_scales * (values - means - half_bin)
        log_cdf_upper = -F.softplus(-upper)  # log σ(upper): the bottom bin takes (−∞, upper]
        log_sf_lower = -F.softplus(lower)  # log(1 − σ(lower)): the top bin takes [lower, ∞)
        log_interior = log_cdf_upper + log_sf_lower + log1mexp(2 * half_bin * inv_scales)
        log_bins = torch.where(
            indices == 0, log_cdf_upper, torch.where(indices == last_bin, log_sf_lower, log_interior)
        )
        per_component = log_bins.sum(1) + F.log_softmax(
            logits, dim=1
        )  # channels are joint within a component
        return torch.logsumexp(per_component, dim=1).flatten(1).sum(1)

    def sample(self, params: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Gumbel-max picks each pixel's component, inverse-CDF logistic noise its values, channel by
        channel (each conditioned on the earlier channels' rounded values), rounded to the bin grid."""
        logits, means, log_scales, coeffs = self.split(params)
        tiny = torch.finfo(params.dtype).tiny
        uniform = torch.rand(logits.shape, generator=generator, device=params.device, dtype=params.dtype)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=tiny)))
        component = (logits + gumbel).argmax(1)
        uniform = torch.rand(
            means[:, :, 0].shape, generator=generator, device=params.device, dtype=params.dtype
        )
        uniform = uniform.clamp(tiny, 1 - torch.finfo(params.dtype).eps)
        noise = torch.log(uniform) - torch.log1p(-uniform)  # standard logistic
        return self._channel_by_channel(component, means, log_scales, coeffs, noise)

    def mean(self, params: Tensor) -> Tensor:
        """The image shown to users: per pixel the location of the most probable component (the mode of
        its continuous logistic, each channel coupled to the earlier channels' shown values), clamped to
        [0, 1] and not rounded, so reconstructions are not posterised."""
        logits, means, log_scales, coeffs = self.split(params)
        return self._channel_by_channel(logits.argmax(1), means, log_scales, coeffs, None)

    def _channel_by_channel(
        self, component: Tensor, means, log_scales, coeffs, noise: Tensor | None
    ) -> Tensor:
        """Values (B, C, H, W) on [0, 1] of the chosen component (B, H, W): a loop over the (at most a few)
        channels because each one's mean depends on the values of the earlier ones."""
        index = component.unsqueeze(1).unsqueeze(2)  # (B, 1, 1, H, W)

        def pick(tensor: Tensor) -> Tensor:
            return tensor.gather(2, index.expand(-1, tensor.shape[1], -1, -1, -1)).squeeze(2)

        means, log_scales, coeffs = pick(means), pick(log_scales), pick(coeffs)
        last_bin = self.config.num_bins - 1
        values: list[Tensor] = []  # on [−1, 1], what the later channels are coupled to
        images: list[Tensor] = []  # on [0, 1]
        for channel in range(self.channels):
            location = means[:, channel]
            for pair, (target, source) in enumerate(self.pairs):
                if target == channel:
                    location = location + coeffs[:, pair] * values[source]
            if noise is None:
                values.append(location.clamp(-1, 1))
                images.append((values[-1] + 1) / 2)
            else:
                drawn = (location + torch.exp(log_scales[:, channel]) * noise[:, channel]).clamp(-1, 1)
                indices = ((drawn + 1) * (last_bin / 2)).round()
                values.append(indices * (2 / last_bin) - 1)
                images.append(indices / last_bin)  # exactly on the grid that log_prob accepts
        return torch.stack(images, 1)


@hookimpl
def npdraw_register_output_distributions(register):
    register("bernoulli", Bernoulli, BernoulliConfig)
    register("discretized_logistic_mixture", DiscretizedLogisticMixture, DiscretizedLogisticMixtureConfig)
