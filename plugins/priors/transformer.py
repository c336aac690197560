"""The NP-DRAW prior (spec §4): a causal pre-LayerNorm Transformer over per-step frames (canvas + location
mask), with three MLP heads for what / where / whether.

`forward` runs teacher forcing over all T frames at once. `step` feeds one frame at a time for ancestral
sampling: with `use_cache=True` each layer keeps a key/value cache of past positions, so a step costs one
Transformer position (O(T) positions per sample); with `use_cache=False` it keeps the frames and recomputes
the whole prefix every step (the authors' sampler, O(T²); kept for tests and benchmarks).

The cache is kept in compact form. Keys and values are linear maps of a layer's normalised input x_s, so
q·k_s = (W_kᵀq)·x_s + q·b_k (the last term is the same for every s and cancels in the softmax) and
Σ_s a_s v_s = W_v (Σ_s a_s x_s) + b_v. Caching x_s (d_model numbers per position and layer) instead of k_s
and v_s (2 · num_heads · head_dim numbers: 32× more at the authors' sizes) gives the same attention with
the same arithmetic cost, and a cache small enough to stay in the CPU's caches while sampling.

`logits_from_latents` is teacher forcing without the frames: when every step draws into one cell (hard
latents: parses, posterior samples of the NLL bound, prior samples; also straight-through ones), the frame
embeddings are computed from each step's local change (`npdraw_plugins.priors.frame_changes`), equal to
`forward` on `prior_frames` within float tolerance, with the same gradients for the prior's weights
(tests/test_speed_properties.py); in VAE training (prior frozen, gradients into relaxed latents) the frames
also get the frame embedding's input gradient from the same local changes.

Sampling one image runs ~130 small ops per step, so the eval-mode cached step is one function over
parameter views (`_step`: the modules' ops one for one, hence the same numbers), run under TorchScript
where available; `sample_steps` runs it with the sampler's `draw_step` for all T steps in one compiled loop
(`_sample_loop`), which saves the Python between steps (~20% of one image's sampling time) and holds no
GIL while a server's batch runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from npdraw_core.config import check_at_least
from npdraw_core.geometry import Grid, ModelShape
from npdraw_core.hookspecs import hookimpl
from npdraw_core.interfaces import Prior, StepLogits
from npdraw_core.latents import Latents
from npdraw_core.sampling import StepCanvas, draw_step
from npdraw_core.torchscript import scripted
from npdraw_plugins.priors.frame_changes import (
    FramesEmbedding,
    WindowGeometry,
    frame_activity,
    im2col_weight,
    pasted,
    per_cell_matmul,
    transition_windows,
    window_geometry,
)


@dataclass(kw_only=True)
class TransformerPriorConfig:
    """Defaults are a CPU-sized prior (0.42M parameters): on MNIST parses it reaches a lower validation NLL
    than the authors' sizes for the same number of training images, 9× faster. The authors' sizes (≈4.5M
    parameters, the paper setting in configs/): d_model 64, depth 8, num_heads 16, head_dim 64, mlp_dim 2048."""

    d_model: int = 64
    depth: int = 4
    num_heads: int = 4
    head_dim: int = 16
    mlp_dim: int = 256
    dropout: float = 0.1
    head_hidden: int = 64  # hidden width of the what / where / whether MLP heads
    embed_channels: int = 16  # channels of the 3×3 stride-2 frame convolution (the authors used 16)
    union_masks: bool = False  # location channel: union of all past masks (the authors' code), see prior_frames

    def __post_init__(self) -> None:
        check_at_least(self, 1, "d_model", "num_heads", "head_dim", "mlp_dim", "head_hidden", "embed_channels")
        check_at_least(self, 0, "depth")  # depth 0: the heads read each frame's embedding alone
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


@dataclass
class KeyValueCache:
    """The key/value cache in compact form: each layer's normalised attention input at every position fed
    so far (keys and values are linear maps of it), preallocated for all T steps and filled in place."""

    inputs: list[Tensor]  # per layer (B, T, d_model)
    length: int = 0
    weights: StepWeights | None = None  # the eval-mode step's weights (see `_step_weights`)


@dataclass
class PrefixState:
    """The full-recompute sampler's state: every frame fed so far, (B, t, C+1, S, S)."""

    frames: Tensor


def _dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout: each element kept with probability 1 − p and scaled by 1/(1 − p), with p rounded to a
    multiple of 2^-16 (0.1 → 0.1000061). The mask comes from 16-bit slices of full-range int64 draws of the
    default generator (like F.dropout's), four elements per draw: ~2.5x faster on a CPU than one float
    draw per element, and prior pre-training draws ~5M of them per step."""
    if not training or p == 0:
        return x
    threshold = round(p * 2**16)  # dropped where a uniform 16-bit integer falls below it
    count = x.numel()
    bits = torch.empty((count + 3) // 4, device=x.device, dtype=torch.int64).random_(-(2**63), None)
    keep = bits.view(torch.int16)[:count].view(x.shape) >= threshold - 2**15
    return x * keep.to(x.dtype).mul_(1 / (1 - threshold / 2**16))


def _causal_bias(length: int, like: Tensor) -> Tensor:
    """(L, L) additive attention mask: 0 on and below the diagonal, −inf above (no attending to later steps)."""
    return torch.full((length, length), float("-inf"), dtype=like.dtype, device=like.device).triu(1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerPriorConfig):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = config.num_heads, config.head_dim, config.dropout
        inner = config.num_heads * config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * inner)
        self.out = nn.Sequential(nn.Linear(inner, config.d_model), nn.Dropout(config.dropout))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, d_model), causal over L."""
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # Written out as two batched matmuls: at the prior's short sequences (T=36) this is faster on a CPU
        # than scaled_dot_product_attention (measured, 1 thread, 128 × 4 heads: forward 2.4 vs 3.0 ms,
        # forward + backward 9.4 vs 14.2 ms), with or without dropout.
        q, k, v = (a.reshape(batch * self.num_heads, length, self.head_dim) for a in (q, k, v))
        scores = torch.baddbmm(_causal_bias(length, x), q, k.transpose(1, 2), alpha=self.head_dim**-0.5)
        attended = torch.bmm(_dropout(scores.softmax(dim=-1), self.dropout, self.training), v)
        attended = attended.view(batch, self.num_heads, length, self.head_dim).transpose(1, 2)
        return _dropout(self.out[0](attended.reshape(batch, length, -1)), self.dropout, self.training)

    def step(self, x: Tensor, inputs: Tensor, position: int) -> Tensor:
        """One new position x (B, d_model) attending to itself and the cached inputs (B, T, d_model) of the
        earlier positions; x is written into the cache at `position`. See the module docstring."""
        inputs[:, position] = x
        past = inputs[:, : position + 1]  # (B, t, d_model)
        inner = self.num_heads * self.head_dim
        q = F.linear(x, self.qkv.weight[:inner], self.qkv.bias[:inner]).view(
            -1, self.num_heads, self.head_dim
        )
        key_weight, value_weight = self.qkv.weight[inner:].view(2, self.num_heads, self.head_dim, -1)
        # W_kᵀq, per head: (B, heads, d_model), scaled as `forward` scales q·k
        query = torch.einsum("bhe,hed->bhd", q, key_weight) * self.head_dim**-0.5
        attention = torch.bmm(query, past.transpose(1, 2)).softmax(dim=-1)  # (B, heads, t)
        mixed = torch.bmm(attention, past)  # Σ_s a_s x_s: (B, heads, d_model)
        values = torch.einsum("bhd,hed->bhe", mixed, value_weight).flatten(1) + self.qkv.bias[2 * inner :]
        return _dropout(self.out[0](values), self.dropout, self.training)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: TransformerPriorConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.d_model)
        self.attention = CausalSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, config.mlp_dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.mlp_dim, config.d_model),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self._mlp(self.mlp_norm(x))

    def _mlp(self, x: Tensor) -> Tensor:
        """`self.mlp` with the faster `_dropout` in place of its Dropout modules (the same p)."""
        first, activation, dropout, last, _ = self.mlp
        hidden = _dropout(activation(first(x)), dropout.p, self.training)
        return _dropout(last(hidden), dropout.p, self.training)

    def step(self, x: Tensor, inputs: Tensor, position: int) -> Tensor:
        """x (B, d_model) at `position`, with the layer's compact key/value cache `inputs`."""
        x = x + self.attention.step(self.attention_norm(x), inputs, position)
        return x + self._mlp(self.mlp_norm(x))


class StepWeights(NamedTuple):
    """The eval-mode step's weights as flat lists of parameter views, and the attention's shape (a NamedTuple:
    compiled code takes it as one argument)."""

    embedding: list[Tensor]  # conv weight, conv bias, linear weight, linear bias, positions
    layers: list[list[Tensor]]  # per block, in the order `_step` reads them
    heads: list[Tensor]  # final norm, then (first weight, bias, last weight, bias) of whether, what, where
    norm_eps: list[float]  # attention norms, MLP norms, final norm
    num_heads: int
    head_dim: int
    query_scale: float  # what W_kᵀq is multiplied by (see `TransformerPrior._query_scale`)


def _step(frame: Tensor, position: int, inputs: list[Tensor], weights: StepWeights) -> tuple[Tensor, Tensor, Tensor]:
    """The eval-mode cached step: `_embed`, `Block.step` and `_heads` op for op (so the same numbers),
    as one function over parameter views. Sampling one image is ~130 small ops per step, and module
    dispatch cost more than the arithmetic; TorchScript (`scripted(_step)`) runs the same ops for less."""
    embedding, layers, heads, norm_eps = weights.embedding, weights.layers, weights.heads, weights.norm_eps
    num_heads, head_dim, query_scale = weights.num_heads, weights.head_dim, weights.query_scale
    hidden = F.linear(F.relu(F.conv2d(frame, embedding[0], embedding[1], [2, 2], [1, 1])).flatten(1),
                      embedding[2], embedding[3]) + embedding[4][position]  # fmt: skip
    shape = [hidden.shape[-1]]
    depth = len(layers)
    for index in range(depth):
        layer, cache = layers[index], inputs[index]
        normed = F.layer_norm(hidden, shape, layer[0], layer[1], norm_eps[index])
        cache[:, position] = normed
        past = cache[:, : position + 1]
        query = F.linear(normed, layer[2], layer[3]).view(-1, num_heads, head_dim)
        # the batched matmuls torch.einsum runs for "bhe,hed->bhd" and "bhd,hed->bhe" in CausalSelfAttention.step
        query = torch.bmm(query.transpose(0, 1), layer[4]).transpose(0, 1)
        if query_scale != 1.0:
            query = query * query_scale
        attention = torch.bmm(query, past.transpose(1, 2)).softmax(dim=-1)
        mixed = torch.bmm(attention, past)
        values = torch.bmm(mixed.transpose(0, 1), layer[5]).transpose(0, 1).flatten(1) + layer[6]
        hidden = hidden + F.linear(values, layer[7], layer[8])
        normed = F.layer_norm(hidden, shape, layer[9], layer[10], norm_eps[depth + index])
        hidden = hidden + F.linear(F.gelu(F.linear(normed, layer[11], layer[12])), layer[13], layer[14])
    hidden = F.layer_norm(hidden, shape, heads[0], heads[1], norm_eps[2 * depth])
    whether = F.linear(F.relu(F.linear(hidden, heads[2], heads[3])), heads[4], heads[5])
    what = F.linear(F.relu(F.linear(hidden, heads[6], heads[7])), heads[8], heads[9])
    where = F.linear(F.relu(F.linear(hidden, heads[10], heads[11])), heads[12], heads[13])
    return whether.squeeze(-1), what, where


def _sample_loop(
    frame: Tensor,
    inputs: list[Tensor],
    weights: StepWeights,
    u_whether: Tensor,
    gumbel_what: Tensor,
    gumbel_where: Tensor,
    canvas: StepCanvas,
) -> tuple[Tensor, Tensor, Tensor]:
    """`_step` then `draw_step` for every step: the sampler's Python loop, op for op, as one function."""
    draws, parts, places = [], [], []
    for position in range(u_whether.shape[0]):
        whether, what, where = _step(frame, position, inputs, weights)
        draw, part, place, frame = draw_step(
            whether, what, where, u_whether[position], gumbel_what[position], gumbel_where[position], canvas
        )
        draws.append(draw)
        parts.append(part)
        places.append(place)
    return torch.stack(draws, dim=1), torch.stack(parts, dim=1), torch.stack(places, dim=1)


def _head(d_model: int, hidden: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class TransformerPrior(Prior):
    embeds_latents = True

    def __init__(self, config: TransformerPriorConfig, *, shape: ModelShape):
        super().__init__()
        self.config, self.shape = config, shape
        self.union_masks = config.union_masks
        self.num_steps = shape.num_steps
        frame_channels = shape.channels + 1
        embedded_side = (shape.canvas_size + 1) // 2  # 3×3 conv, stride 2, padding 1
        self.frame_embedding = nn.Sequential(
            nn.Conv2d(frame_channels, config.embed_channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(config.embed_channels * embedded_side**2, config.d_model),
        )
        self.positions = nn.Parameter(torch.randn(self.num_steps, config.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(config.d_model)
        self.what_head = _head(config.d_model, config.head_hidden, shape.bank_size)
        self.where_head = _head(config.d_model, config.head_hidden, self.num_steps)
        self.whether_head = _head(config.d_model, config.head_hidden, 1)
        self._geometries: dict = {}

    def _embed(self, frames: Tensor, first_position: int) -> Tensor:
        """frames (B, L, C+1, S, S) → token embeddings (B, L, d_model) for positions first..first+L-1."""
        batch, length = frames.shape[:2]
        self._check_steps(first_position + length)
        tokens = self.frame_embedding(frames.flatten(0, 1)).view(batch, length, -1)
        return _dropout(tokens + self.positions[first_position : first_position + length], self.config.dropout, self.training)

    def _check_steps(self, needed: int) -> None:
        """A teaching error when more steps are asked of the prior than it has positions for."""
        if needed > self.num_steps:
            raise ValueError(
                f"the prior was built for {self.num_steps} steps but got {needed}; check that model.patch_size "
                "and model.canvas_size match the ones it was trained with"
            )

    def _heads(self, hidden: Tensor) -> StepLogits:
        hidden = self.final_norm(hidden)
        return StepLogits(
            whether=self.whether_head(hidden).squeeze(-1),
            what=self.what_head(hidden),
            where=self.where_head(hidden),
        )

    def forward(self, frames: Tensor) -> StepLogits:
        return self._transform(self._embed(frames, 0))

    def _transform(self, hidden: Tensor) -> StepLogits:
        for block in self.blocks:
            hidden = block(hidden)
        return self._heads(hidden)

    # -- teacher forcing from the latents (see the module docstring) -----------------------------------
    def logits_from_latents(
        self, latents: Latents, bank: Tensor, grid: Grid, *, frames: Tensor | None = None
    ) -> StepLogits:
        """`forward(prior_frames(latents, bank, grid, union_masks=...))` from local frame changes. Each
        step's `where` must have at most one nonzero weight (hard or straight-through latents).

        Gradients reach the prior's weights, not the latents. `frames`: these latents' frames, when the
        gradient must reach them (relaxed latents in VAE training, the prior frozen): the embeddings are
        still computed locally, and the frames get the gradient the frame embedding gives its input."""
        length = latents.num_steps
        if frames is None:
            tokens = self.embed_latents(latents, bank, grid)
        else:
            if any(parameter.requires_grad for parameter in self.frame_embedding.parameters()):
                raise ValueError("gradients into the frames need a frozen frame embedding (requires_grad False)")
            with torch.no_grad():
                tokens, active = self._embed_located(latents, bank, grid, activity=True)
            conv, linear = self.frame_embedding[0], self.frame_embedding[3]
            tokens = FramesEmbedding.apply(frames, tokens, active, linear.weight, conv.weight, grid.canvas_size)
        return self._transform(_dropout(tokens + self.positions[:length], self.config.dropout, self.training))

    def embed_latents(self, latents: Latents, bank: Tensor, grid: Grid) -> Tensor:
        """Frame embeddings (B, T, d_model) of the teacher-forcing frames of `latents` (no positions).
        Gradients reach the prior's weights only (the latents are treated as constants)."""
        return self._embed_located(latents, bank, grid, activity=False)[0]

    def _embed_located(
        self, latents: Latents, bank: Tensor, grid: Grid, *, activity: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The embeddings and, with `activity`, the ReLU's derivative at every frame's conv outputs (1 where
        positive, else 0), (T, E·O², B) in the Linear's column order (see `frame_activity`)."""
        batch, steps = latents.batch_size, latents.num_steps
        self._check_steps(steps)
        conv, linear = self.frame_embedding[0], self.frame_embedding[3]
        side, channels = grid.canvas_size, bank.shape[1]
        first = self.frame_embedding(bank.new_zeros(1, channels + 1, side, side))  # frame 0: all zeros
        if steps == 1 or batch == 0:
            active = (conv.bias > 0).to(conv.bias.dtype).repeat_interleave(linear.in_features // conv.out_channels)
            return first.expand(batch, steps, -1), active[None, :, None].expand(steps, -1, batch) if activity else None
        geometry = self._geometry(grid, bank.device)
        # transition i (i = 0..T-2) turns frame i into frame i+1: step i draws into cell drawn[:, i] (and,
        # without union masks, the mask of step i-1 goes away)
        with torch.no_grad():
            cells = latents.where.argmax(-1)  # (B, T)
            # mask value of each step: location_masks(where) · whether, as in prior_frames
            marks = latents.where.gather(-1, cells[..., None])[..., 0] * latents.whether
            values = pasted(latents, bank, geometry, cells, marks, union_masks=self.union_masks)
            patches = transition_windows(values, cells[:, :-1], geometry)  # (2, T-1, B, size² · 9 · C')
            # transitions step-major (row i·B + b), sorted by cell: each cell's matmul reads a contiguous slice
            drawn = cells[:, :-1].T.flatten()
            order = torch.argsort(drawn, stable=True)
            counts = torch.bincount(drawn, minlength=steps).tolist()
            drawn, marks = drawn[order], marks[:, :-1].T.flatten()[order]
            patches = patches.view(2, len(order), -1).index_select(1, order).view(-1, 9 * values.shape[-1])
        weight = conv.weight if self.union_masks else conv.weight[:, :channels]
        before, after = torch.addmm(conv.bias, patches, im2col_weight(weight)).view(2, len(order), -1)
        columns = (  # the Linear's columns of each cell's output window, in (output, channel) order
            geometry.feature_index[..., None]
            + torch.arange(conv.out_channels, device=bank.device) * (linear.in_features // conv.out_channels)
        ).flatten(1)
        # index_select, not indexing: its backward adds the overlapping windows' gradients in a fixed order
        local_weights = linear.weight.index_select(1, columns.flatten()).view(linear.out_features, steps, -1)
        local_weights = local_weights.permute(1, 2, 0).unbind(0)  # per cell (E · size², d_model)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        active = None
        if activity:
            mask_pre = None if self.union_masks else torch.addcmul(after, marks[:, None], self._own_mask_features(
                conv, geometry).index_select(0, drawn))  # fmt: skip
            active = frame_activity(
                conv.bias, linear.in_features // conv.out_channels, columns, cells, *(
                    None if pre is None else pre.index_select(0, inverse).view(steps - 1, batch, -1)
                    for pre in (after, mask_pre)
                ),
            )  # fmt: skip
        before = F.relu(before)
        if self.union_masks:  # the union mask is in the windows: delta = frame i+1 − frame i around cell j_i
            moved = per_cell_matmul((F.relu(after) - before)[:, None], counts, local_weights)
            moved = moved.index_select(0, inverse).view(steps - 1, batch, -1).transpose(0, 1).cumsum(dim=1)
        else:
            # The conv is linear, so a window's pre-activation = canvas part + (step's mark) · the conv of
            # the cell's own mask. With Q_i / P_i the features around cell j_i in frame i+1 without / with
            # its mask and R_i those of frame i (whose mask, elsewhere, is gone): the embedding of frame p is
            # first + Σ_{i<p-1} L_{j_i}(Q_i − R_i) + L_{j_{p-1}}(P_{p-1} − R_{p-1}) (telescoped).
            own = self._own_mask_features(conv, geometry).index_select(0, drawn)  # (N, E · size²)
            with_mask = F.relu(torch.addcmul(after, marks[:, None], own))
            changes = torch.stack([F.relu(after) - before, with_mask - before], dim=1)
            out = per_cell_matmul(changes, counts, local_weights).index_select(0, inverse)
            settled, current = out.view(steps - 1, batch, 2, -1).transpose(0, 1).unbind(2)
            moved = current + torch.cat([torch.zeros_like(settled[:, :1]), settled[:, :-1].cumsum(dim=1)], dim=1)
        return torch.cat([first.expand(batch, 1, -1), first + moved], dim=1), active

    @staticmethod
    def _own_mask_features(conv: nn.Conv2d, geometry: WindowGeometry) -> Tensor:
        """(T, E · size²) in (output, channel) order: the mask channel's conv (no bias) of each cell's own
        mask in its window."""
        patches = geometry.own_mask[:, geometry.patch_index].view(-1, 9).to(conv.weight.dtype)
        return (patches @ im2col_weight(conv.weight[:, -1:])).view(len(geometry.own_mask), -1)

    def start(self, batch_size: int, *, use_cache: bool = True) -> KeyValueCache | PrefixState:
        reference = self.positions
        if not use_cache:
            side = self.shape.canvas_size
            return PrefixState(reference.new_zeros(batch_size, 0, self.shape.channels + 1, side, side))
        size = (batch_size, self.num_steps, self.config.d_model)
        return KeyValueCache(inputs=[reference.new_empty(size) for _ in self.blocks], weights=self._step_weights())

    def step(
        self, frame: Tensor, state: KeyValueCache | PrefixState
    ) -> tuple[StepLogits, KeyValueCache | PrefixState]:
        if isinstance(state, PrefixState):  # the authors' way: recompute every position seen so far
            frames = torch.cat([state.frames, frame[:, None]], dim=1)
            logits = self(frames)
            return StepLogits(logits.whether[:, -1], logits.what[:, -1], logits.where[:, -1]), PrefixState(
                frames
            )
        position = state.length
        following = KeyValueCache(state.inputs, position + 1, state.weights)
        if self.training or state.weights is None:  # dropout on: the modules' own step
            hidden = self._embed(frame[:, None], position)[:, 0]
            for block, inputs in zip(self.blocks, state.inputs, strict=True):
                hidden = block.step(hidden, inputs, position)
            return self._heads(hidden), following
        self._check_steps(position + 1)
        whether, what, where = scripted(_step)(frame, position, state.inputs, state.weights)
        return StepLogits(whether, what, where), following

    def sample_steps(
        self,
        frame: Tensor,
        state: KeyValueCache | PrefixState,
        noise: tuple[Tensor, Tensor, Tensor],
        canvas: StepCanvas,
    ) -> tuple[Tensor, Tensor, Tensor] | None:
        """All steps in one call of `_sample_loop` (the eval-mode cached step); None otherwise."""
        if not isinstance(state, KeyValueCache) or self.training or state.weights is None or state.length:
            return None
        self._check_steps(noise[0].shape[0])
        return scripted(_sample_loop)(frame, state.inputs, state.weights, *noise, canvas)

    def _query_scale(self) -> float:
        """What the cached step multiplies W_kᵀq by: head_dim^-½, or 1 where that is a power of two (then
        W_k carries it: scaling by 2^k is exact, so the products are the same bits)."""
        scale = self.config.head_dim**-0.5
        return 1.0 if math.frexp(scale)[0] == 0.5 else scale

    def _step_weights(self) -> StepWeights:
        """The eval-mode step's weights as flat lists of parameter views, taken once per sampling run."""
        conv, linear = self.frame_embedding[0], self.frame_embedding[3]
        layers = []
        for block in self.blocks:
            attention = block.attention
            inner = attention.num_heads * attention.head_dim
            weight, bias = attention.qkv.weight, attention.qkv.bias
            key_weight, value_weight = weight[inner:].view(2, attention.num_heads, attention.head_dim, -1)
            if self._query_scale() == 1:  # the scale is a power of two: applied to W_k, it changes no bit
                key_weight = key_weight * attention.head_dim**-0.5
            mlp_in, mlp_out = block.mlp[0], block.mlp[3]
            layers.append([
                block.attention_norm.weight, block.attention_norm.bias, weight[:inner], bias[:inner], key_weight,
                value_weight.transpose(1, 2), bias[2 * inner :], attention.out[0].weight, attention.out[0].bias,
                block.mlp_norm.weight, block.mlp_norm.bias, mlp_in.weight, mlp_in.bias, mlp_out.weight, mlp_out.bias,
            ])  # fmt: skip
        heads = [self.final_norm.weight, self.final_norm.bias]
        for head in (self.whether_head, self.what_head, self.where_head):
            heads += [head[0].weight, head[0].bias, head[2].weight, head[2].bias]
        norms = [block.attention_norm.eps for block in self.blocks] + [block.mlp_norm.eps for block in self.blocks]
        return StepWeights(
            embedding=[conv.weight, conv.bias, linear.weight, linear.bias, self.positions],
            layers=layers,
            heads=heads,
            norm_eps=norms + [self.final_norm.eps],
            num_heads=self.config.num_heads,
            head_dim=self.config.head_dim,
            query_scale=self._query_scale(),
        )

    def _geometry(self, grid: Grid, device: torch.device) -> WindowGeometry:
        key = (grid.canvas_size, grid.patch_size, str(device))
        if key not in self._geometries:
            self._geometries[key] = window_geometry(grid).to(device)
        return self._geometries[key]


@hookimpl
def npdraw_register_priors(register):
    register("transformer", TransformerPrior, TransformerPriorConfig)
