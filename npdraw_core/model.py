"""NPDraw: the generative process that composes bank, prior, encoder, decoder and output distribution.

The networks only map tensors to logits or parameters; this module owns rendering, the ELBO with the parse
regulariser (spec §6), the importance-weighted bound (spec §7), sampling and encoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from npdraw_core import distributions, posterior
from npdraw_core.geometry import Grid, final_canvas
from npdraw_core.interfaces import Decoder, Encoder, OutputDistribution, Prior, StepLogits
from npdraw_core.latents import Latents, located, located_final_canvas, render, render_located, step_maps
from npdraw_core.sampling import (
    blocks,
    cat_latents,
    check_generators,
    default_block_size,
    prior_logits,
    sample_latents,
)


@dataclass
class LossTerms:
    loss: Tensor  # scalar to minimise: mean over the batch of −ELBO + reg_weight · parse CE
    reconstruction: Tensor  # (B,) −log p(x|z), nats
    kl: Tensor  # (B,) KL(q ‖ p), nats
    parse_ce: Tensor  # (B,) cross-entropy of q against the parse

    def summary(self) -> dict[str, float]:
        return {
            "loss": self.loss.item(),
            "neg_elbo": (self.reconstruction + self.kl).mean().item(),
            "reconstruction": self.reconstruction.mean().item(),
            "kl": self.kl.mean().item(),
            "parse_ce": self.parse_ce.mean().item(),
        }


class NPDraw(nn.Module):
    def __init__(
        self,
        *,
        bank: Tensor,
        grid: Grid,
        prior: Prior,
        encoder: Encoder,
        decoder: Decoder,
        output: OutputDistribution,
    ):
        super().__init__()
        self.register_buffer("bank", bank.float())
        self.grid = grid
        self.prior = prior.requires_grad_(False).eval()  # pre-trained, frozen, no dropout
        self.encoder = encoder
        self.decoder = decoder
        self.output = output

    def train(self, mode: bool = True) -> NPDraw:
        super().train(mode)
        self.prior.eval()
        return self

    # -- the pieces ------------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> StepLogits:
        return self.encoder(images)

    def render(self, latents: Latents) -> Tensor:
        return render(latents, self.bank, self.grid)

    def decode(self, canvas: Tensor) -> Tensor:
        """Canvas → output-distribution parameters."""
        return self.decoder(canvas)

    def prior_logits(self, latents: Latents, *, maps: Tensor | None = None) -> StepLogits:
        return prior_logits(self.prior, latents, self.bank, self.grid, maps=maps)

    # -- training objective ----------------------------------------------------------------------------
    def loss(
        self,
        images: Tensor,
        parse: Latents,
        *,
        reg_weight: float,
        temperature: float,
        whether_estimator: str = "hard",
        parse_forcing: float = 0.0,
        force_whether: bool = False,
        generator: torch.Generator | None = None,
    ) -> LossTerms:
        """images in [0, 1] (already binarised for binary data), parse: the parser's hard latents. With
        probability `parse_forcing` an image's sampled what/where (and `whether` if `force_whether`) are its
        parse's."""
        q_logits = self.encode(images)
        latents = posterior.sample_relaxed(
            q_logits, temperature=temperature, whether_estimator=whether_estimator, generator=generator
        )
        if parse_forcing > 0:
            latents = _force_parse(latents, parse, parse_forcing, generator, force_whether=force_whether)
        if located(latents):  # straight-through `where`: canvas and prior frames built cell by cell
            canvas, prior = located_final_canvas(latents, self.bank, self.grid), self.prior_logits(latents)
        else:
            maps = step_maps(latents, self.bank, self.grid)  # every step rendered once: canvas and frames
            canvas, prior = final_canvas(maps, latents.whether), self.prior_logits(latents, maps=maps)
        reconstruction = -self.output.log_prob(self.decode(canvas), images)
        kl = distributions.kl_divergence(q_logits, prior, latents.whether)
        # −KL(p_h ‖ q) up to a constant: the cross-entropy of q against the parser's delta.
        parse_ce = -distributions.log_prob(q_logits, parse)
        loss = (reconstruction + kl + reg_weight * parse_ce).mean()
        return LossTerms(loss, reconstruction.detach(), kl.detach(), parse_ce.detach())

    def reconstruction(self, images: Tensor, latents: Latents) -> Tensor:
        """−log p(x|z) per image (B,) for given latents (a parse in the decoder's warm-up, hard samples of q in
        the bound); `located` latents are rendered without per-cell maps."""
        canvas = render_located(latents, self.bank, self.grid) if located(latents) else self.render(latents)
        return -self.output.log_prob(self.decode(canvas), images)

    # -- evaluation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood_bound(
        self,
        images: Tensor,
        *,
        num_samples: int,
        generator: torch.Generator | None = None,
        chunk_rows: int | None = None,
    ) -> Tensor:
        """Importance-weighted bound log p(x) ≥ log (1/S) Σ_s p(x|z_s) p(z_s) / q(z_s|x), hard z_s ~ q
        (Burda et al. 2016), per image (B,) in nats. Valid for every S ≥ 1 and tighter as S grows.

        Batched over samples and images: the S samples are drawn first (in the order of drawing them one
        at a time, so a seed gives the same z_s), then rendered directly (hard latents), scored by the
        prior from local frame changes and decoded in chunks of `chunk_rows` (sample, image) rows. The
        default on a CPU is 128: a chunk's activations then stay in the CPU's caches (measured at demo sizes,
        1 thread: 1.7x the throughput of 1,000-row chunks); 2,048 elsewhere."""
        if chunk_rows is None:
            chunk_rows = 128 if images.device.type == "cpu" else 2048
        q_logits = self.encode(images)
        batch = images.shape[0]
        drawn = [posterior.sample_hard(q_logits, generator=generator) for _ in range(num_samples)]
        latents = cat_latents(drawn)  # row s·B + i: sample s of image i
        log_weights = []
        for start in range(0, num_samples * batch, chunk_rows):
            rows = torch.arange(start, min(start + chunk_rows, num_samples * batch), device=images.device)
            chunk, image_rows = latents[rows], rows % batch
            log_px = -self.reconstruction(images[image_rows], chunk)
            log_pz = distributions.log_prob(self.prior_logits(chunk), chunk)
            q_chunk = StepLogits(*(getattr(q_logits, name)[image_rows] for name in ("whether", "what", "where")))
            log_weights.append(log_px + log_pz - distributions.log_prob(q_chunk, chunk))
        log_weights = torch.cat(log_weights).view(num_samples, batch)
        return torch.logsumexp(log_weights, dim=0) - math.log(num_samples)

    # -- generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        *,
        generator: torch.Generator | Sequence[torch.Generator],
        temperature: float = 1.0,
        top_k: int | None = None,
        block_size: int | None = None,
    ) -> tuple[Tensor, Tensor, Latents]:
        """Ancestral samples: (images shown to users (B, C, H, W), canvases (B, C, S, S), latents).

        `generator`: one torch.Generator for the batch, or one per sample (`generators_for(seeds)`), which
        makes sample i bit-identical alone or in any batch: the prior, rendering and decoder then run on
        fixed-shape blocks of `block_size` rows (default: `default_block_size` of the model's device; see
        `npdraw_core.sampling`).
        """
        check_generators(generator, num_samples)
        options = dict(temperature=temperature, top_k=top_k)
        if isinstance(generator, torch.Generator):
            return self._sample_batch(num_samples, generator, **options)
        if block_size is None:
            block_size = default_block_size(self.bank.device)
        parts = [
            [part[:real] for part in self._sample_batch(block_size, block, **options)]
            for block, real in blocks(generator, block_size)
        ]
        images, canvases, latents = zip(*parts, strict=True)
        return torch.cat(images), torch.cat(canvases), cat_latents(latents)

    def _sample_batch(self, num_samples: int, generator, **options) -> tuple[Tensor, Tensor, Latents]:
        latents = sample_latents(
            self.prior, self.bank, self.grid, num_samples, generator=generator, block_size=num_samples, **options
        )
        canvas = self.render(latents)
        return self.output.mean(self.decode(canvas)), canvas, latents

    @torch.no_grad()
    def encode_canvas(self, images: Tensor) -> Tensor:
        """Images → the canvas of their most likely latents (for editing in canvas space)."""
        return self.render(posterior.posterior_mode(self.encode(images)))


def _force_parse(
    latents: Latents, parse: Latents, probability: float, generator: torch.Generator | None, *, force_whether: bool
) -> Latents:
    """Per image, with `probability`, replace the sampled what/where (and whether) by the parse (authors' warm-up)."""
    batch = latents.batch_size
    chosen = torch.rand(batch, generator=generator, device=latents.what.device) < probability
    pick = chosen[:, None, None].to(latents.what.dtype)
    return Latents(
        whether=torch.where(chosen[:, None], parse.whether, latents.whether) if force_whether else latents.whether,
        what=pick * parse.what + (1 - pick) * latents.what,
        where=pick * parse.where + (1 - pick) * latents.where,
    )
