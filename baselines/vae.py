"""A plain convolutional VAE to compare NP-DRAW with: a Gaussian latent z (latent_dim), a conv encoder of
the NP-DRAW run's encoder widths, and a decoder that maps z linearly to a canvas-shaped tensor (C, S, S)
and then runs the very decoder network and output distribution the NP-DRAW run uses (built through the
plugin registry from the same config sections). So the two models differ only in the latent space: a
structured parse rendered into a canvas against an unstructured Gaussian vector.

`log_likelihood_bound` and `sample` have NPDraw's signatures, so `npdraw_core.evaluation` scores both
alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from npdraw_core.config import RunConfig
from npdraw_core.geometry import ModelShape
from npdraw_core.interfaces import Decoder, OutputDistribution
from npdraw_core.registry import Registry
from npdraw_plugins.layers import conv_bn_relu

LOG_TWO_PI = math.log(2 * math.pi)
DEFAULT_LATENT_DIM = 32
MIN_ENCODED_SIDE = 4  # encoders without num_downsamplings halve the image until it is at most this wide


def standard_normal_log_prob(values: Tensor) -> Tensor:
    """log N(values; 0, I), summed over the last dimension."""
    return -0.5 * (values.pow(2) + LOG_TWO_PI).sum(-1)


class ConvVAE(nn.Module):
    def __init__(
        self,
        *,
        shape: ModelShape,
        latent_dim: int,
        encoder_channels: int,
        num_downsamplings: int,
        hidden_size: int,
        decoder: Decoder,
        output: OutputDistribution,
    ):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be at least 1, got {latent_dim}")
        self.shape, self.latent_dim = shape, latent_dim
        layers: list[nn.Module] = []
        in_channels, side = shape.channels, shape.image_size
        for _ in range(num_downsamplings):  # as the conv encoder: 3×3 stride 2, ceil halving
            layers += conv_bn_relu(in_channels, encoder_channels, 3, 2, 1)
            in_channels, side = encoder_channels, (side + 1) // 2
        self.encoder = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(in_channels * side * side, hidden_size), nn.ReLU(),
            nn.Linear(hidden_size, 2 * latent_dim),  # mean and log-variance
        )  # fmt: skip
        canvas = (shape.channels, shape.canvas_size, shape.canvas_size)
        self.canvas_shape = canvas
        self.to_canvas = nn.Linear(latent_dim, math.prod(canvas))
        self.decoder = decoder
        self.output = output

    # -- the pieces ------------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, C, H, W) in [0, 1] → posterior mean and log-variance, each (B, latent_dim)."""
        expected = (self.shape.channels, self.shape.image_size, self.shape.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"the VAE expects images of shape (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")
        mean, log_variance = self.encoder(images).chunk(2, dim=1)
        return mean, log_variance

    def decode(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, latent_dim) → the canvas-shaped tensor (B, C, S, S) and the output distribution's parameters."""
        canvas = self.to_canvas(latents).view(len(latents), *self.canvas_shape)
        return canvas, self.decoder(canvas)

    def noise(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        device = self.to_canvas.weight.device
        return torch.randn(tuple(shape), generator=generator, device=device)

    # -- training objective ----------------------------------------------------------------------------
    def loss_terms(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """−log p(x|z) with one reparameterised z ~ q(z|x), and KL(q(z|x) ‖ N(0, I)) in closed form:
        each (B,), in nats."""
        mean, log_variance = self.encode(images)
        latents = mean + torch.exp(0.5 * log_variance) * self.noise(mean.shape, generator)
        reconstruction = -self.output.log_prob(self.decode(latents)[1], images)
        kl = 0.5 * (mean.pow(2) + log_variance.exp() - 1 - log_variance).sum(1)
        return reconstruction, kl

    def loss(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The negative ELBO per image (B,), in nats (images already binarised for binary data)."""
        reconstruction, kl = self.loss_terms(images, generator)
        return reconstruction + kl

    # -- evaluation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood_bound(
        self, images: Tensor, *, num_samples: int, generator: torch.Generator | None = None, chunk_rows: int = 1000
    ) -> Tensor:
        """Importance-weighted bound log p(x) ≥ log (1/S) Σ_s p(x|z_s) p(z_s) / q(z_s|x), z_s ~ q(z|x)
        (Burda et al. 2016), per image (B,) in nats; valid for every S ≥ 1. All S samples are drawn at once
        and decoded in chunks of `chunk_rows` (sample, image) rows."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        mean, log_variance = self.encode(images)
        batch = len(images)
        noise = self.noise((num_samples, *mean.shape), generator)  # (S, B, D)
        latents = (mean + torch.exp(0.5 * log_variance) * noise).flatten(0, 1)  # row s·B + i: sample s of image i
        # log q(z|x) of z = mean + σ·ε is log N(ε; 0, I) − Σ log σ
        log_q = (standard_normal_log_prob(noise) - 0.5 * log_variance.sum(1)).flatten()
        log_weights = standard_normal_log_prob(latents) - log_q
        log_px = []
        for start in range(0, num_samples * batch, chunk_rows):
            rows = torch.arange(start, min(start + chunk_rows, num_samples * batch), device=images.device)
            log_px.append(self.output.log_prob(self.decode(latents[rows])[1], images[rows % batch]))
        log_weights = (log_weights + torch.cat(log_px)).view(num_samples, batch)
        return torch.logsumexp(log_weights, dim=0) - math.log(num_samples)

    # -- generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, num_samples: int, *, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Ancestral samples, in NPDraw.sample's order: (images shown to users (B, C, H, W) in [0, 1] = the
        output distribution's mean, the canvas-shaped tensors (B, C, S, S) the decoder saw, z (B, D)).
        `temperature` scales the prior's standard deviation."""
        if not isinstance(generator, torch.Generator | None):
            raise TypeError("the VAE baseline samples with one torch.Generator (per-sample generators are NPDraw's)")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number greater than 0, got {temperature}")
        latents = self.noise((num_samples, self.latent_dim), generator) * temperature
        canvas, params = self.decode(latents)
        return self.output.mean(params), canvas, latents


def encoder_widths(config: RunConfig, image_size: int) -> dict[str, int]:
    """The conv widths of the run's encoder section: its `channels`, and its `num_downsamplings` and
    `hidden_size` where it has them (the `conv` encoder does; otherwise the image is halved to at most
    4×4 and the hidden layer is the heads' width, or 128)."""
    options = config.model.encoder.config
    if not isinstance(getattr(options, "channels", None), int):
        raise ValueError(
            f"model.encoder ({config.model.encoder.type!r}) has no integer `channels`: the VAE baseline takes "
            "its conv width from there"
        )
    downsamplings, side = 0, image_size
    while side > MIN_ENCODED_SIDE:
        downsamplings, side = downsamplings + 1, (side + 1) // 2
    return {
        "encoder_channels": options.channels,
        "num_downsamplings": getattr(options, "num_downsamplings", downsamplings),
        "hidden_size": getattr(options, "hidden_size", getattr(options, "head_hidden_size", 128)),
    }


def vae_from_config(
    config: RunConfig, *, channels: int, image_size: int, latent_dim: int, registry: Registry
) -> ConvVAE:
    """The untrained VAE for a run config and its dataset's image format, on the CPU. The decoder and the
    output distribution are built exactly as `npdraw_core.build.model_from_config` builds NP-DRAW's; the
    weights depend only on the config's seed (forked, seeded global RNG, as there)."""
    model = config.model
    # The decoder sizes itself from channels, image and canvas sizes; patch and bank size do not change it
    # (an NP-DRAW-specific decoder plugin that used them would see the run's own values).
    bank_size = getattr(model.part_bank.config, "bank_size", 1)
    shape = ModelShape(channels, image_size, model.canvas_size, model.patch_size, bank_size)
    output = registry.get("output_distribution", model.output.type).build(model.output.config, channels=channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        decoder = registry.get("decoder", model.decoder.type).build(
            model.decoder.config, shape=shape, out_channels=output.num_params()
        )
        return ConvVAE(
            shape=shape, latent_dim=latent_dim, decoder=decoder, output=output, **encoder_widths(config, image_size)
        )
