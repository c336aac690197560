"""The computation before issue 11, kept verbatim so that benchmarks/bench_training.py can run it side by
side with today's: whole prior frames built from the latents (rendered a second time for the canvas) and
embedded frame by frame, the transformer with nn.Dropout and SDPA's dropout, the NLL bound one importance
sample at a time, and the sampler that rebuilt whole canvases and ran the prior's modules step by step."""

from __future__ import annotations

import math

import torch


def old_transformer(prior, frames):
    """TransformerPrior.forward before issue 11: F.dropout on the tokens, SDPA with its own dropout, the
    MLP's nn.Dropout modules."""
    import torch.nn.functional as F

    from npdraw_core.interfaces import StepLogits

    batch, length = frames.shape[:2]
    p, training = prior.config.dropout, prior.training
    tokens = prior.frame_embedding(frames.flatten(0, 1)).view(batch, length, -1)
    hidden = F.dropout(tokens + prior.positions[:length], p, training)
    for block in prior.blocks:
        attention = block.attention
        x = block.attention_norm(hidden)
        q, k, v = attention.qkv(x).view(batch, length, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p if training else 0.0)
        hidden = hidden + F.dropout(attention.out[0](attended.transpose(1, 2).reshape(batch, length, -1)), p, training)
        hidden = hidden + block.mlp(block.mlp_norm(hidden))  # Linear, GELU, nn.Dropout, Linear, nn.Dropout
    hidden = prior.final_norm(hidden)
    return StepLogits(prior.whether_head(hidden).squeeze(-1), prior.what_head(hidden), prior.where_head(hidden))


def old_prior_logits(model, latents):
    from npdraw_core.latents import prior_frames

    return old_transformer(model.prior, prior_frames(latents, model.bank, model.grid, union_masks=model.prior.union_masks))


def old_loss(model, images, parse, *, reg_weight, temperature, generator):
    from npdraw_core import distributions, posterior

    q_logits = model.encode(images)
    latents = posterior.sample_relaxed(q_logits, temperature=temperature, whether_estimator="hard", generator=generator)
    reconstruction = -model.output.log_prob(model.decode(model.render(latents)), images)
    kl = distributions.kl_divergence(q_logits, old_prior_logits(model, latents), latents.whether)
    parse_ce = -distributions.log_prob(q_logits, parse)
    return (reconstruction + kl + reg_weight * parse_ce).mean()


@torch.no_grad()
def old_bound(model, images, *, num_samples, generator):
    from npdraw_core import distributions, posterior

    q_logits = model.encode(images)
    log_weights = []
    for _ in range(num_samples):
        latents = posterior.sample_hard(q_logits, generator=generator)
        log_px = model.output.log_prob(model.decode(model.render(latents)), images)
        log_pz = distributions.log_prob(old_prior_logits(model, latents), latents)
        log_weights.append(log_px + log_pz - distributions.log_prob(q_logits, latents))
    return torch.logsumexp(torch.stack(log_weights), dim=0) - math.log(num_samples)


@torch.no_grad()
def old_sample(model, seed: int, *, seeded: bool):
    """NPDraw.sample of one image before issue 11: the prior's modules step by step (`_embed`,
    `Block.step`, `_heads`), the uniforms and the Gumbel noise of every step drawn and computed per step,
    whole canvases and masks rebuilt every step. `seeded`: the per-sample path (`generators_for([seed])`),
    a block (`default_block_size`) whose other rows are throwaway generators; else a bulk generator and one
    row."""
    import torch.nn.functional as F

    from npdraw_core.distributions import scale_logits
    from npdraw_core.latents import Latents
    from npdraw_core.sampling import default_block_size

    prior, bank, grid = model.prior, model.bank, model.grid
    steps, side, channels = grid.num_cells, grid.canvas_size, bank.shape[1]
    batch, sizes = (default_block_size(bank.device) if seeded else 1), (1, len(bank), steps)
    if seeded:  # each row's uniforms for all steps in one call, (whether, what, where) per step
        generators = [torch.Generator().manual_seed(seed)] + [torch.Generator().manual_seed(0)] * (batch - 1)
        rows = [torch.rand(steps * sum(sizes), generator=g) for g in generators]
        table = torch.stack(rows).view(batch, steps, sum(sizes))
    else:
        generator = torch.Generator().manual_seed(seed)
    canvas = torch.zeros(batch, channels, side, side)
    mask = torch.zeros(batch, 1, side, side)
    frame = torch.cat([canvas, mask], dim=1)
    inputs = [torch.empty(batch, steps, prior.config.d_model) for _ in prior.blocks]
    chosen = {"whether": [], "what": [], "where": []}

    def gumbel_argmax(logits, uniform):
        uniform = uniform.clamp(min=torch.finfo(logits.dtype).tiny)
        return (logits - torch.log(-torch.log(uniform))).argmax(dim=-1)

    for step in range(steps):
        hidden = prior._embed(frame[:, None], step)[:, 0]
        for block, cache in zip(prior.blocks, inputs, strict=True):
            hidden = block.step(hidden, cache, step)
        logits = prior._heads(hidden)
        if seeded:
            u_whether, u_what, u_where = table[:, step].split(sizes, dim=-1)
        else:
            u_whether, u_what, u_where = (torch.rand((batch, n), generator=generator) for n in sizes)
        draw = u_whether[:, 0] < torch.sigmoid(logits.whether / 1.0)
        what = gumbel_argmax(scale_logits(logits.what), u_what)
        where = gumbel_argmax(scale_logits(logits.where), u_where)
        for name, value in (("whether", draw), ("what", what), ("where", where)):
            chosen[name].append(value)
        gate = draw.float()[:, None, None, None]
        cell = F.one_hot(where, steps).float()[:, None]
        canvas = torch.maximum(canvas, grid.draw(bank[what][:, None], cell)[:, 0] * gate)
        mask = grid.location_masks(cell)[:, 0] * gate
        frame = torch.cat([canvas, mask], dim=1)
    stacked = {name: torch.stack(values, dim=1) for name, values in chosen.items()}
    latents = Latents.from_indices(**stacked, bank_size=len(bank), num_cells=steps)
    canvas = model.render(latents)
    return model.output.mean(model.decode(canvas))[:1], canvas[:1], latents[:1]
