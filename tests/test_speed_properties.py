"""Issue 11: the fast paths compute what the model defines.

* the sampler gives the samples of the sampler before issue 11 (kept here verbatim) for the same seeds;

* frame embeddings from local changes = embeddings of the full frames (random latents, both mask modes,
  grey and colour, canvases that do and do not divide into cells), with the same weight gradients;
* hard latents rendered directly = `render`;
* the batched NLL bound = the one-sample-at-a-time bound for the same seed;
* per-sample sampling with all of a sample's uniforms drawn at once = the per-row draws it replaced;
* VAE training: located frames / final canvas and the prior's frame gradients give the gradients of whole
  maps and frames (float64, random relaxed latents with many ties, both mask modes, grey and colour).
"""

from __future__ import annotations

import copy
import math
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npdraw_core import distributions, posterior
from npdraw_core.contracts import build_prior, contract_bank, stepped_in_python
from npdraw_core.distributions import scale_logits
from npdraw_core.geometry import ModelShape, final_canvas
from npdraw_core.interfaces import StepLogits
from npdraw_core.latents import (
    Latents,
    located,
    located_final_canvas,
    located_prior_frames,
    prior_frames,
    render,
    render_located,
    step_maps,
)
from npdraw_core.sampling import default_block_size, generators_for, prior_logits, sample_latents
from npdraw_plugins.priors.transformer import TransformerPrior, TransformerPriorConfig

SHAPES = [
    ModelShape(1, 28, 28, 5, 7),  # MNIST grid: 6×6 cells, one pixel of padding on each side
    ModelShape(3, 8, 8, 3, 5),  # colour, a canvas that does not divide into cells
    ModelShape(3, 32, 32, 4, 6),  # colour, 8×8 cells, no padding
    ModelShape(1, 12, 12, 4, 4),
    ModelShape(1, 28, 28, 8, 4),  # large patches, 2 pixels of padding
]
SMALL = dict(d_model=16, depth=1, num_heads=2, head_dim=8, mlp_dim=32, head_hidden=16, dropout=0.0)
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def latents_from(shape: ModelShape, batch: int, seed: int, draw_rate: float, few_cells: bool) -> Latents:
    """Random hard latents; `few_cells` makes steps draw again and again into the same cells."""
    generator = torch.Generator().manual_seed(seed)
    size = (batch, shape.num_steps)
    cells = min(3, shape.num_steps) if few_cells else shape.num_steps
    return Latents.from_indices(
        what=torch.randint(shape.bank_size, size, generator=generator),
        where=torch.randint(cells, size, generator=generator),
        whether=(torch.rand(size, generator=generator) < draw_rate).long(),
        bank_size=shape.bank_size,
        num_cells=shape.num_steps,
    )


def prior_for(shape: ModelShape, union_masks: bool) -> TransformerPrior:
    with torch.random.fork_rng():  # the same weights whatever ran before (the global generator initialises them)
        torch.manual_seed(0)
        prior = build_prior(TransformerPrior, TransformerPriorConfig(**SMALL, union_masks=union_masks), shape)
    with torch.no_grad():  # non-zero conv biases and larger weights: more ReLUs switch on and off
        prior.frame_embedding[0].bias.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    return prior.eval()


@PROPERTY
@given(
    shape=st.sampled_from(SHAPES),
    union_masks=st.booleans(),
    batch=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    draw_rate=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    few_cells=st.booleans(),
)
def test_incremental_frame_embeddings_equal_the_full_frames(shape, union_masks, batch, seed, draw_rate, few_cells):
    prior, bank = prior_for(shape, union_masks), contract_bank(shape)
    latents = latents_from(shape, batch, seed, draw_rate, few_cells)
    with torch.no_grad():
        frames = prior_frames(latents, bank, shape.grid, union_masks=union_masks)
        full = prior.frame_embedding(frames.flatten(0, 1)).view(batch, shape.num_steps, -1)
        incremental = prior.embed_latents(latents, bank, shape.grid)
        torch.testing.assert_close(incremental, full, rtol=1e-5, atol=5e-5)
        fast = prior.logits_from_latents(latents, bank, shape.grid)
        slow = prior(frames)
    for name in ("whether", "what", "where"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("union_masks", [False, True])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
def test_incremental_path_gives_the_weight_gradients_of_the_full_frames(shape, union_masks):
    """Prior pre-training differentiates through the local path: the same gradients for every weight."""
    prior, bank = prior_for(shape, union_masks), contract_bank(shape)
    latents = latents_from(shape, 5, seed=3, draw_rate=0.6, few_cells=False)

    def gradients(logits_of) -> dict[str, torch.Tensor]:
        prior.zero_grad()
        (-distributions.log_prob(logits_of(), latents)).mean().backward()
        return {name: p.grad.clone() for name, p in prior.named_parameters()}

    slow = gradients(lambda: prior(prior_frames(latents, bank, shape.grid, union_masks=union_masks)))
    fast = gradients(lambda: prior.logits_from_latents(latents, bank, shape.grid))
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-5, msg=name)


def test_prior_logits_take_the_full_frames_when_gradients_reach_the_latents():
    shape = SHAPES[0]
    prior, bank = prior_for(shape, False), contract_bank(shape)
    latents = latents_from(shape, 2, seed=0, draw_rate=0.5, few_cells=False)
    soft_what = latents.what.clone().requires_grad_(True)
    relaxed = Latents(latents.whether, soft_what, latents.where)
    logits = prior_logits(prior, relaxed, bank, shape.grid)
    distributions.log_prob(logits, latents).sum().backward()
    assert soft_what.grad is not None and soft_what.grad.abs().sum() > 0


@PROPERTY
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 10_000), draw_rate=st.sampled_from([0.0, 0.5, 1.0]))
def test_hard_latents_rendered_directly_equal_render(shape, seed, draw_rate):
    latents = latents_from(shape, 3, seed, draw_rate, few_cells=seed % 2 == 0)
    bank = contract_bank(shape)
    assert torch.equal(render_located(latents, bank, shape.grid), render(latents, bank, shape.grid))


def test_batched_bound_equals_the_bound_one_sample_at_a_time(model_parts):
    model, images = model_parts
    generator = torch.Generator().manual_seed(4)
    batched = model.log_likelihood_bound(images, num_samples=7, generator=generator, chunk_rows=9)
    generator = torch.Generator().manual_seed(4)
    q_logits = model.encode(images)
    weights = []
    with torch.no_grad():
        for _ in range(7):
            latents = posterior.sample_hard(q_logits, generator=generator)
            log_px = model.output.log_prob(model.decode(render(latents, model.bank, model.grid)), images)
            frames = prior_frames(latents, model.bank, model.grid, union_masks=model.prior.union_masks)
            log_pz = distributions.log_prob(model.prior(frames), latents)
            weights.append(log_px + log_pz - distributions.log_prob(q_logits, latents))
    reference = torch.logsumexp(torch.stack(weights), dim=0) - math.log(7)
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-3)


@pytest.fixture(scope="module")
def model_parts():
    from npdraw_core.model import NPDraw
    from npdraw_plugins.decoders import ConvDecoder, ConvDecoderConfig
    from npdraw_plugins.encoders import ConvEncoder, ConvEncoderConfig
    from npdraw_plugins.output_distributions import Bernoulli

    shape = ModelShape(1, 28, 28, 5, 7)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = ConvEncoder(ConvEncoderConfig(channels=8), shape=shape)
        decoder = ConvDecoder(ConvDecoderConfig(channels=8), shape=shape, out_channels=1)
    model = NPDraw(
        bank=contract_bank(shape), grid=shape.grid, prior=prior_for(shape, False), encoder=encoder,
        decoder=decoder, output=Bernoulli(channels=1),
    ).eval()  # fmt: skip
    images = (torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(2)) < 0.2).float()
    return model, images


def reference_per_row_sampler(prior, bank, grid, generators, *, temperature=1.0, top_k=None) -> dict:
    """The per-sample sampler before issue 11: one torch.rand per row, step and draw (full recompute)."""
    batch, steps = len(generators), grid.num_cells
    canvas = torch.zeros(batch, bank.shape[1], grid.canvas_size, grid.canvas_size)
    mask = torch.zeros(batch, 1, grid.canvas_size, grid.canvas_size)
    chosen = {"whether": [], "what": [], "where": []}
    state = prior.start(batch, use_cache=True)
    frame = torch.cat([canvas, mask], dim=1)

    def rows(size):
        return torch.stack([torch.rand(size, generator=g) for g in generators])

    def gumbel(logits):
        uniform = rows(logits.shape[1:]).clamp_(min=torch.finfo(logits.dtype).tiny)
        return (logits - torch.log(-torch.log(uniform))).argmax(-1)

    with torch.no_grad():
        for _ in range(steps):
            logits, state = prior.step(frame, state)
            draw = rows(()) < torch.sigmoid(logits.whether / temperature)
            what = gumbel(scale_logits(logits.what, temperature=temperature, top_k=top_k))
            where = gumbel(scale_logits(logits.where, temperature=temperature, top_k=top_k))
            for name, value in (("whether", draw), ("what", what), ("where", where)):
                chosen[name].append(value)
            gate = draw.float()[:, None, None, None]
            cell = torch.nn.functional.one_hot(where, steps).float()[:, None]
            canvas = torch.maximum(canvas, grid.draw(bank[what][:, None], cell)[:, 0] * gate)
            mask = grid.location_masks(cell)[:, 0] * gate
            frame = torch.cat([canvas, mask], dim=1)
    return {name: torch.stack(values, dim=1) for name, values in chosen.items()}


@settings(max_examples=8, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**40), min_size=1, max_size=5), top_k=st.sampled_from([None, 3]))
def test_per_sample_uniforms_drawn_at_once_give_the_samples_of_per_row_draws(seeds, top_k):
    shape = SHAPES[3]
    prior, bank = prior_for(shape, False), contract_bank(shape)
    options = dict(temperature=0.9, top_k=top_k)
    new = sample_latents(prior, bank, shape.grid, len(seeds), generator=generators_for(seeds), block_size=len(seeds), **options)
    old = reference_per_row_sampler(prior, bank, shape.grid, generators_for(seeds), **options)
    for name, values in new.indices().items():
        assert torch.equal(values.long(), old[name].long()), name


def test_incremental_weight_gradients_are_deterministic():
    """A resumed prior training must reproduce the uninterrupted one bit for bit."""
    shape = SHAPES[0]
    prior, bank = prior_for(shape, False), contract_bank(shape)
    latents = latents_from(shape, 20, seed=5, draw_rate=0.6, few_cells=False)

    def gradients() -> dict[str, torch.Tensor]:
        prior.zero_grad()
        (-distributions.log_prob(prior.logits_from_latents(latents, bank, shape.grid), latents)).mean().backward()
        return {name: p.grad.clone() for name, p in prior.named_parameters()}

    first = gradients()
    _ = [torch.rand(1000 + i) for i in range(9)]  # another allocator state
    second = gradients()
    for name in first:
        assert torch.equal(first[name], second[name]), name


# -- the sampler before issue 11, kept verbatim as the reference ------------------------------------------


def reference_step(prior, frame, inputs, position):
    """The cached step before issue 11: the prior's modules (`_embed`, `Block.step`, `_heads`), eval mode."""
    hidden = prior._embed(frame[:, None], position)[:, 0]
    for block, cache in zip(prior.blocks, inputs, strict=True):
        hidden = block.step(hidden, cache, position)
    return prior._heads(hidden)


def reference_sampler(prior, bank, grid, generator, batch, *, temperature=1.0, top_k=None) -> dict:
    """`sampling._sample_steps` before issue 11's latency work: uniforms drawn step by step (bulk) or per
    sample's table, Gumbel noise per step, whole canvases and masks rebuilt every step."""
    steps, side, channels = grid.num_cells, grid.canvas_size, bank.shape[1]
    canvas = torch.zeros(batch, channels, side, side)
    mask = torch.zeros(batch, 1, side, side)
    frame = torch.cat([canvas, mask], dim=1)
    chosen = {"whether": [], "what": [], "where": []}
    sizes = (1, bank.shape[0], steps)
    if not isinstance(generator, torch.Generator):
        rows = [torch.rand(steps * sum(sizes), generator=g) for g in generator]
        table = torch.stack(rows).view(batch, steps, sum(sizes))

    def uniforms(step):
        if isinstance(generator, torch.Generator):
            whether, what, where = (torch.rand((batch, size), generator=generator) for size in sizes)
            return whether.view(batch), what, where
        whether, what, where = table[:, step].split(sizes, dim=-1)
        return whether[:, 0], what, where

    def gumbel_argmax(logits, uniform):
        uniform = uniform.clamp(min=torch.finfo(logits.dtype).tiny)
        return (logits - torch.log(-torch.log(uniform))).argmax(dim=-1)

    inputs = [torch.empty(batch, steps, prior.config.d_model) for _ in prior.blocks]
    prior.eval()
    with torch.no_grad():
        for step in range(steps):
            logits = reference_step(prior, frame, inputs, step)
            u_whether, u_what, u_where = uniforms(step)
            draw = u_whether < torch.sigmoid(logits.whether / temperature)
            what = gumbel_argmax(scale_logits(logits.what, temperature=temperature, top_k=top_k), u_what)
            where = gumbel_argmax(scale_logits(logits.where, temperature=temperature, top_k=top_k), u_where)
            for name, value in (("whether", draw), ("what", what), ("where", where)):
                chosen[name].append(value)
            gate = draw.float()[:, None, None, None]
            cell = torch.nn.functional.one_hot(where, steps).float()[:, None]
            canvas = torch.maximum(canvas, grid.draw(bank[what][:, None], cell)[:, 0] * gate)
            new_mask = grid.location_masks(cell)[:, 0] * gate
            mask = torch.maximum(mask, new_mask) if prior.union_masks else new_mask
            frame = torch.cat([canvas, mask], dim=1)
    return {name: torch.stack(values, dim=1) for name, values in chosen.items()}


def varied_prior(shape: ModelShape, union_masks: bool, config: dict = SMALL) -> TransformerPrior:
    """An untrained prior with larger weights: peaked, varied logits, so samples use many parts and cells."""
    prior = prior_for(shape, union_masks) if config is SMALL else build_prior(
        TransformerPrior, TransformerPriorConfig(**config, union_masks=union_masks), shape
    )
    with torch.no_grad():
        for parameter in prior.parameters():
            parameter.mul_(3.0)
    return prior.eval()


def assert_same_samples(latents: Latents, reference: dict) -> None:
    for name, values in latents.indices().items():
        assert torch.equal(values.long(), reference[name].long()), name


@settings(max_examples=20, deadline=None)
@given(
    shape=st.sampled_from(SHAPES[:4]),
    union_masks=st.booleans(),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**40),
    per_sample=st.booleans(),
    options=st.sampled_from([{}, {"temperature": 0.8}, {"temperature": 1.3, "top_k": 3}]),
    one_call=st.booleans(),
)
def test_the_sampler_gives_the_samples_of_the_sampler_before_issue_11(
    shape, union_masks, batch, seed, per_sample, options, one_call
):
    """The same seeds give the same latents, drawn from the same logits bit for bit, whether the prior runs
    every step in one compiled call (`sample_steps`) or the sampler steps it in Python."""
    prior, bank = varied_prior(shape, union_masks), contract_bank(shape)
    seeds = [seed + i for i in range(batch)]

    def generator():
        return generators_for(seeds) if per_sample else torch.Generator().manual_seed(seed)

    # one call: the step-by-step path must not run
    path = mock.patch.object(prior, "step", side_effect=AssertionError("stepped")) if one_call else stepped_in_python(prior)
    with path:
        latents = sample_latents(prior, bank, shape.grid, batch, generator=generator(), block_size=batch, **options)
    assert_same_samples(latents, reference_sampler(prior, bank, shape.grid, generator(), batch, **options))


DEMO_PRIOR = dict(d_model=64, depth=4, num_heads=4, head_dim=16, mlp_dim=256, head_hidden=64, dropout=0.1)


@pytest.mark.parametrize("union_masks", [False, True])
def test_one_image_at_demo_sizes_is_the_sample_of_the_sampler_before_issue_11(union_masks):
    """The single-image path the latency target is about: batch 1, a bulk seed, demo sizes (and per-sample
    blocks of `default_block_size` rows, the path that serves seeds)."""
    shape = ModelShape(1, 28, 28, 5, 50)
    prior, bank = varied_prior(shape, union_masks, DEMO_PRIOR), contract_bank(shape)
    for seed in range(12):
        latents = sample_latents(prior, bank, shape.grid, 1, generator=torch.Generator().manual_seed(seed))
        assert_same_samples(latents, reference_sampler(prior, bank, shape.grid, torch.Generator().manual_seed(seed), 1))
    seeds = list(range(100, 103))
    latents = sample_latents(prior, bank, shape.grid, 3, generator=generators_for(seeds))
    block = default_block_size(bank.device)
    reference = reference_sampler(prior, bank, shape.grid, generators_for(seeds + [0] * (block - 3)), block)
    assert_same_samples(latents, {name: values[:3] for name, values in reference.items()})


@pytest.mark.parametrize("head_dim", [8, 16])  # 16: the query scale 1/4 is folded into W_k
@pytest.mark.parametrize("batch", [1, 5])
def test_the_compiled_step_computes_the_numbers_of_the_module_step(batch, head_dim):
    """Bit for bit, at every position: TorchScript and plain `_step` against the modules' step."""
    import npdraw_plugins.priors.transformer as transformer

    shape = ModelShape(3, 8, 8, 3, 5)
    prior = varied_prior(shape, False, {**SMALL, "head_dim": head_dim})
    frames = torch.rand(batch, shape.num_steps, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    state = prior.start(batch)
    inputs = [torch.empty_like(cache) for cache in state.inputs]
    plain = [torch.empty_like(cache) for cache in state.inputs]
    weights = state.weights
    with torch.no_grad():
        for position in range(shape.num_steps):
            logits, state = prior.step(frames[:, position], state)
            expected = reference_step(prior, frames[:, position], inputs, position)
            eager = transformer._step(frames[:, position], position, plain, weights)
            for name, value in zip(("whether", "what", "where"), eager, strict=True):
                assert torch.equal(getattr(logits, name), getattr(expected, name)), (position, name)
                assert torch.equal(value, getattr(expected, name)), (position, name)


def test_the_sampling_functions_compile():
    """`scripted` falls back to Python silently (correct, but the speed is gone): these must compile here."""
    import npdraw_core.sampling as sampling
    import npdraw_plugins.priors.transformer as transformer
    from npdraw_core.torchscript import scripted

    for function in (transformer._step, transformer._sample_loop, sampling.draw_step):
        assert isinstance(scripted(function), torch.jit.ScriptFunction), function.__name__


def test_sampling_falls_back_to_the_plain_step_without_torchscript(monkeypatch):
    import npdraw_core.sampling as sampling
    import npdraw_plugins.priors.transformer as transformer
    from npdraw_core.torchscript import scripted

    def unavailable(function):
        raise RuntimeError("no TorchScript here")

    scripted.cache_clear()
    monkeypatch.setattr(torch.jit, "script", unavailable)
    try:
        assert scripted(transformer._step) is transformer._step
        assert scripted(sampling.draw_step) is sampling.draw_step
        assert scripted(transformer._sample_loop) is transformer._sample_loop
        shape = SHAPES[3]
        prior, bank = varied_prior(shape, True), contract_bank(shape)
        latents = sample_latents(prior, bank, shape.grid, 2, generator=torch.Generator().manual_seed(3))
        assert_same_samples(latents, reference_sampler(prior, bank, shape.grid, torch.Generator().manual_seed(3), 2))
    finally:
        scripted.cache_clear()  # compiled again, for real, by the tests after this one


# -- VAE training: gradients through relaxed latents, computed cell by cell ------------------------------


def relaxed_latents(shape: ModelShape, batch: int, seed: int, estimator: str, few_cells: bool):
    """Posterior logits (float64, requiring gradients) and a relaxed sample of them: soft `what`,
    straight-through `where` (one-hot values), hard or straight-through `whether`."""
    generator = torch.Generator().manual_seed(seed)
    steps, size = shape.num_steps, shape.bank_size
    where = torch.randn(batch, steps, steps, generator=generator)
    if few_cells:  # steps draw again and again into the same cells: ties and take-overs in the running max
        where[..., :3] += 6
    logits = StepLogits(
        torch.randn(batch, steps, generator=generator), torch.randn(batch, steps, size, generator=generator) * 2, where
    )
    logits = StepLogits(*(value.double().requires_grad_(True) for value in (logits.whether, logits.what, logits.where)))
    latents = posterior.sample_relaxed(
        logits, temperature=0.7, whether_estimator=estimator, generator=torch.Generator().manual_seed(seed + 1)
    )
    return logits, latents


def tie_bank(shape: ModelShape, seed: int) -> torch.Tensor:
    """Parts with values in {0, 0.5, 1}: many exact ties between steps in the running max."""
    generator = torch.Generator().manual_seed(seed)
    size = (shape.bank_size, shape.channels, shape.patch_size, shape.patch_size)
    return (torch.randint(0, 3, size, generator=generator) / 2).double()


def gradients_of(value: torch.Tensor, logits: StepLogits, seed: int = 7) -> tuple[torch.Tensor, ...]:
    weights = torch.randn(value.shape, generator=torch.Generator().manual_seed(seed), dtype=value.dtype)
    return torch.autograd.grad(
        (value * weights).sum(), (logits.whether, logits.what, logits.where), allow_unused=True, materialize_grads=True,
        retain_graph=True,
    )


VAE_CASE = dict(
    shape=st.sampled_from(SHAPES[:4]),
    union_masks=st.booleans(),
    seed=st.integers(0, 10_000),
    estimator=st.sampled_from(["hard", "straight_through"]),
    few_cells=st.booleans(),
)


@PROPERTY
@given(**VAE_CASE)
def test_located_frames_have_the_values_and_gradients_of_prior_frames(shape, union_masks, seed, estimator, few_cells):
    logits, latents = relaxed_latents(shape, 3, seed, estimator, few_cells)
    bank = tie_bank(shape, seed)
    assert located(latents)
    full = prior_frames(latents, bank, shape.grid, union_masks=union_masks)
    fast = located_prior_frames(latents, bank, shape.grid, union_masks=union_masks)
    assert torch.equal(fast, full)
    for expected, actual in zip(gradients_of(full, logits), gradients_of(fast, logits), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("union_masks", [False, True])
def test_located_frames_when_every_cell_is_drawn_once(union_masks):
    """No later step ever pastes into an earlier step's cell (an edge the random cases almost never reach)."""
    shape = SHAPES[3]
    logits, latents = relaxed_latents(shape, 3, 0, "straight_through", few_cells=False)
    order = torch.stack([torch.randperm(shape.num_steps, generator=torch.Generator().manual_seed(row)) for row in range(3)])
    hard = torch.nn.functional.one_hot(order, shape.num_steps).to(latents.where.dtype)
    where = latents.where + (hard - latents.where).detach()  # straight-through, each cell drawn once
    latents = Latents(what=latents.what, where=where, whether=latents.whether)
    bank = tie_bank(shape, 0)
    full = prior_frames(latents, bank, shape.grid, union_masks=union_masks)
    fast = located_prior_frames(latents, bank, shape.grid, union_masks=union_masks)
    assert torch.equal(fast, full)
    for expected, actual in zip(gradients_of(full, logits), gradients_of(fast, logits), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


@PROPERTY
@given(**{name: value for name, value in VAE_CASE.items() if name != "union_masks"})
def test_located_final_canvas_has_the_values_and_gradients_of_render(shape, seed, estimator, few_cells):
    logits, latents = relaxed_latents(shape, 3, seed, estimator, few_cells)
    bank = tie_bank(shape, seed)
    full, fast = render(latents, bank, shape.grid), located_final_canvas(latents, bank, shape.grid)
    assert torch.equal(fast, full)
    for expected, actual in zip(gradients_of(full, logits), gradients_of(fast, logits), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


@PROPERTY
@given(**VAE_CASE)
def test_prior_logits_of_relaxed_latents_give_the_gradients_of_the_full_frames(
    shape, union_masks, seed, estimator, few_cells
):
    """The frozen prior's KL term in VAE training: embeddings from local changes, the frames' gradient
    from the embedding's backward, the latents' from the located frames. Float64, so that no conv output
    sits close enough to 0 for summation order to flip its ReLU."""
    prior = prior_for(shape, union_masks).double().requires_grad_(False)
    logits, latents = relaxed_latents(shape, 3, seed, estimator, few_cells)
    bank = tie_bank(shape, seed)

    def kl(prior_logits: StepLogits) -> torch.Tensor:
        return distributions.kl_divergence(logits, prior_logits, latents.whether)

    full = kl(prior(prior_frames(latents, bank, shape.grid, union_masks=union_masks)))
    fast = kl(prior_logits(prior, latents, bank, shape.grid))
    torch.testing.assert_close(fast, full, rtol=1e-9, atol=1e-9)
    for expected, actual in zip(gradients_of(full, logits), gradients_of(fast, logits), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-7, atol=1e-9)


def test_the_vae_loss_gives_the_gradients_of_whole_maps_and_frames(model_parts):
    """NPDraw.loss (located canvas and frames) against the same loss through step_maps/prior_frames."""
    model, images = model_parts
    model = copy.deepcopy(model).double().train()
    images, parse = images.double(), latents_from(SHAPES[0], len(images), seed=1, draw_rate=0.5, few_cells=False)
    parse = Latents(*(value.double() for value in (parse.whether, parse.what, parse.where)))

    def weight_gradients(loss_of) -> dict[str, torch.Tensor]:
        model.zero_grad()
        loss_of().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    def generic() -> torch.Tensor:
        q_logits = model.encode(images)
        latents = posterior.sample_relaxed(q_logits, temperature=0.8, whether_estimator="hard",
                                           generator=torch.Generator().manual_seed(5))  # fmt: skip
        maps = step_maps(latents, model.bank, model.grid)
        canvas = final_canvas(maps, latents.whether)
        frames = prior_frames(latents, model.bank, model.grid, union_masks=model.prior.union_masks, maps=maps)
        reconstruction = -model.output.log_prob(model.decode(canvas), images)
        kl = distributions.kl_divergence(q_logits, model.prior(frames), latents.whether)
        return (reconstruction + kl + 50.0 * -distributions.log_prob(q_logits, parse)).mean()

    def fast() -> torch.Tensor:
        return model.loss(images, parse, reg_weight=50.0, temperature=0.8, generator=torch.Generator().manual_seed(5)).loss

    expected, actual = weight_gradients(generic), weight_gradients(fast)
    assert expected.keys() == actual.keys() and any(name.startswith("encoder") for name in expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-7, atol=1e-9, msg=name)
