"""Ancestral sampling from priors: exact agreement of the cached and full-recompute paths, frames that
match teacher forcing, temperature / top-k, frequencies, devices; per-sample seeds that give the same
sample alone or in any batch; the sampling helpers (image_samples, save_sample_grid, prior_canvases)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch

from npdraw_core.contracts import build_prior, contract_bank
from npdraw_core.geometry import ModelShape
from npdraw_core.latents import render
from npdraw_core.model import NPDraw
from npdraw_core.prior_training import train_prior
from npdraw_core.run import Run
from npdraw_core.sampling import (
    generators_for,
    image_samples,
    prior_canvases,
    prior_logits,
    sample_latents,
    save_sample_grid,
)
from npdraw_plugins.priors.independent import IndependentPrior, IndependentPriorConfig
from npdraw_plugins.priors.transformer import TransformerPrior, TransformerPriorConfig

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
MNIST_SHAPE = ModelShape(channels=1, image_size=28, canvas_size=28, patch_size=5, bank_size=50)  # T = 36
SMALL = TransformerPriorConfig(d_model=16, depth=2, num_heads=2, head_dim=8, mlp_dim=32, head_hidden=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, parsed_mnist):
    """A small transformer trained on parses of 200 real MNIST images; its bank and the parses."""
    overrides = [
        f"output_dir={tmp_path_factory.mktemp('sampling')}",
        "model.prior.dropout=0.1",
        "prior_training.epochs=3",
        "prior_training.lr=0.01",
        "prior_training.batch_size=50",
    ]
    run = Run.from_file(TINY, overrides)
    bank, parses = parsed_mnist(run, 200, 150)
    return train_prior(run, bank, parses), bank.exemplars, run.grid, parses


def draw(prior, bank, grid, num, seed, **options):
    return sample_latents(prior, bank, grid, num, generator=torch.Generator().manual_seed(seed), **options)


def assert_same_latents(a, b):
    for name, values in a.indices().items():
        assert torch.equal(values, b.indices()[name]), name


def test_cached_and_full_recompute_agree_for_an_untrained_prior_at_the_authors_size():
    authors = TransformerPriorConfig(
        d_model=64, depth=8, num_heads=16, head_dim=64, mlp_dim=2048, dropout=0.1
    )
    prior = TransformerPrior(authors, shape=MNIST_SHAPE)
    bank = contract_bank(MNIST_SHAPE)
    cached = draw(prior, bank, MNIST_SHAPE.grid, 3, seed=11)
    assert_same_latents(cached, draw(prior, bank, MNIST_SHAPE.grid, 3, seed=11, use_cache=False))
    assert cached.whether.sum() > 0


@pytest.mark.parametrize("options", [{}, {"temperature": 0.7, "top_k": 5}])
def test_cached_and_full_recompute_agree_for_a_trained_prior(trained, options):
    prior, bank, grid, _ = trained
    cached = draw(prior, bank, grid, 16, seed=5, **options)
    assert_same_latents(cached, draw(prior, bank, grid, 16, seed=5, use_cache=False, **options))


def test_sampler_frames_are_the_teacher_forcing_frames(trained):
    """With top_k=1 each what/where is the argmax of the logits the sampler saw; the teacher-forced logits
    of the samples (frames from prior_frames) must have the same argmax at every drawn step."""
    prior, bank, grid, _ = trained
    latents = draw(prior, bank, grid, 8, seed=2, top_k=1)
    logits = prior_logits(prior, latents, bank, grid)
    drawn = latents.whether.bool()
    assert drawn.sum() > 20
    assert torch.equal(logits.what.argmax(-1)[drawn], latents.what.argmax(-1)[drawn])
    assert torch.equal(logits.where.argmax(-1)[drawn], latents.where.argmax(-1)[drawn])


def test_sampler_frames_use_union_masks_when_the_prior_asks_for_them():
    config = dataclasses.replace(SMALL, union_masks=True)
    prior = build_prior(TransformerPrior, config, MNIST_SHAPE)
    bank = contract_bank(MNIST_SHAPE)
    latents = draw(prior, bank, MNIST_SHAPE.grid, 6, seed=3, top_k=1)
    logits = prior_logits(prior, latents, bank, MNIST_SHAPE.grid)
    drawn = latents.whether.bool()
    assert torch.equal(logits.what.argmax(-1)[drawn], latents.what.argmax(-1)[drawn])


def test_sampled_draw_frequency_matches_the_priors_own_probabilities(trained):
    """E[whether^t] = E[σ(logit^t | sampled history)]: the sampler draws from the distribution it is given."""
    prior, bank, grid, _ = trained
    latents = draw(prior, bank, grid, 200, seed=0)
    expected = torch.sigmoid(prior_logits(prior, latents, bank, grid).whether).mean().item()
    assert latents.whether.mean().item() == pytest.approx(expected, abs=0.03)  # ≈ 6 standard errors
    canvases = render(latents, bank, grid)
    assert canvases.shape == (200, 1, 28, 28) and 0.0 <= canvases.min() and canvases.max() <= 1.0


def test_top_k_only_picks_among_the_k_most_likely(trained):
    prior, bank, grid, _ = trained
    latents = draw(prior, bank, grid, 16, seed=4, top_k=3)
    logits = prior_logits(prior, latents, bank, grid)
    top = logits.what.topk(3, dim=-1).indices
    chosen = latents.what.argmax(-1, keepdim=True)
    assert (top == chosen).any(-1).all()


def test_low_temperature_makes_samples_nearly_deterministic(trained):
    prior, bank, grid, _ = trained
    a = draw(prior, bank, grid, 8, seed=1, temperature=1e-4)
    b = draw(prior, bank, grid, 8, seed=2, temperature=1e-4)
    assert_same_latents(a, b)
    hot = [draw(prior, bank, grid, 8, seed=s, temperature=2.0).indices()["what"] for s in (1, 2)]
    assert not torch.equal(*hot)


def test_temperature_must_be_positive(trained):
    prior, bank, grid, _ = trained
    with pytest.raises(ValueError, match="temperature must be positive"):
        draw(prior, bank, grid, 2, seed=0, temperature=0.0)


def test_sampling_needs_an_explicit_generator(trained):
    prior, bank, grid, _ = trained
    with pytest.raises(TypeError, match="explicit torch.Generator"):
        sample_latents(prior, bank, grid, 2, generator=None)


def test_independent_samples_follow_its_tables():
    shape = ModelShape(1, 12, 12, 4, 6)
    prior = IndependentPrior(IndependentPriorConfig(), shape=shape)
    with torch.no_grad():
        prior.whether_logits.copy_(torch.linspace(-2, 2, 9))
        prior.what_logits[:, 0] = 3.0
    latents = draw(prior, contract_bank(shape), shape.grid, 4000, seed=0)
    expected = torch.sigmoid(torch.linspace(-2, 2, 9))
    tolerance = 4 * (expected * (1 - expected) / 4000).sqrt()  # four standard errors
    assert ((latents.whether.mean(0) - expected).abs() < tolerance).all()
    part_zero = torch.softmax(prior.what_logits[0].detach(), -1)[0]
    assert latents.what[:, :, 0].mean().item() == pytest.approx(part_zero.item(), abs=0.02)


def test_sampling_keeps_training_mode_and_needs_no_gradients(trained):
    prior, bank, grid, _ = trained
    prior.train()
    latents = draw(prior, bank, grid, 2, seed=0)
    assert prior.training and not latents.what.requires_grad
    prior.eval()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cpu_generator_gives_the_same_samples_on_cuda(trained):
    prior, bank, grid, _ = trained
    on_cpu = draw(prior, bank, grid, 8, seed=9)
    on_cuda = draw(prior.to("cuda"), bank.to("cuda"), grid, 8, seed=9)
    assert on_cuda.what.device.type == "cuda"
    assert_same_latents(on_cpu, on_cuda.to("cpu"))
    prior.to("cpu")


def test_the_cached_sampler_embeds_each_frame_once_and_the_full_one_recomputes_the_prefix(monkeypatch):
    import npdraw_plugins.priors.transformer as transformer

    prior = build_prior(TransformerPrior, SMALL, MNIST_SHAPE)
    bank, steps = contract_bank(MNIST_SHAPE), MNIST_SHAPE.num_steps
    embedded = []
    step = transformer._step  # the cached step (eval mode) embeds its frame inside one function

    def counting(frame, *args):
        embedded.append(len(frame))
        return step(frame, *args)

    monkeypatch.setattr(transformer, "scripted", lambda function: function)  # eager: the loop looks _step up
    monkeypatch.setattr(transformer, "_step", counting)
    draw(prior, bank, MNIST_SHAPE.grid, 2, seed=0)
    assert sum(embedded) == 2 * steps  # one position per step
    embedded.clear()
    prior.frame_embedding.register_forward_hook(lambda module, inputs, output: embedded.append(len(output)))
    draw(prior, bank, MNIST_SHAPE.grid, 2, seed=0, use_cache=False)
    assert sum(embedded) == 2 * steps * (steps + 1) // 2  # the whole prefix at every step


# -- per-sample seeds ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory):
    """An NPDraw around the trained prior and its real MNIST bank; the encoder and decoder are freshly
    initialised (exactness is about arithmetic, not about what the weights learnt)."""
    prior, bank, _, _ = trained
    run = Run.from_file(TINY, [f"output_dir={tmp_path_factory.mktemp('model')}"], device="cpu")
    shape, chosen = run.model_shape(len(bank)), run.config.model
    output = run.build("output_distribution", chosen.output, channels=shape.channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = run.build("encoder", chosen.encoder, shape=shape)
        decoder = run.build("decoder", chosen.decoder, shape=shape, out_channels=output.num_params())
    return NPDraw(bank=bank, grid=run.grid, prior=prior, encoder=encoder, decoder=decoder, output=output).eval()


TARGETS = [7, 123456, 42, 2**40 + 3]  # the seeds whose samples are compared alone and inside batches


def mixed_batch(size: int, shuffle_seed: int) -> list[int]:
    """TARGETS shuffled among other seeds."""
    seeds = TARGETS + [1000 + i for i in range(size - len(TARGETS))]
    random.Random(shuffle_seed).shuffle(seeds)
    return seeds


@pytest.mark.parametrize("size, options", [(64, {}), (100, {"temperature": 0.8, "top_k": 5})])
def test_per_sample_seeds_give_the_same_sample_alone_and_inside_a_mixed_batch(model, size, options):
    """64: one block; 100: two blocks, the second padded. Images, canvases and latents are bit-identical."""
    seeds = mixed_batch(size, shuffle_seed=size)
    images, canvases, latents = model.sample(size, generator=generators_for(seeds), **options)
    assert latents.whether.sum() > 0
    for seed in TARGETS:
        row = seeds.index(seed)
        alone_images, alone_canvases, alone_latents = model.sample(1, generator=generators_for([seed]), **options)
        assert torch.equal(images[row : row + 1], alone_images), seed
        assert torch.equal(canvases[row : row + 1], alone_canvases), seed
        assert_same_latents(latents[row : row + 1], alone_latents)


def test_per_sample_seeds_give_the_same_latents_from_the_prior_sampler_alone(trained):
    prior, bank, grid, _ = trained
    seeds = mixed_batch(64, shuffle_seed=1)
    batch = sample_latents(prior, bank, grid, 64, generator=generators_for(seeds), top_k=10)
    for seed in TARGETS:
        row = seeds.index(seed)
        alone = sample_latents(prior, bank, grid, 1, generator=generators_for([seed]), top_k=10)
        assert_same_latents(batch[row : row + 1], alone)


def test_a_per_sample_generator_is_drawn_in_the_bulk_order():
    """Per step: whether, then what, then where, from the sample's own generator only. A context-free prior
    has batch-independent logits, so a sample with its own generator equals a bulk batch of one drawn from
    the same seed, and its generator ends in the same state (it drew exactly as many uniforms)."""
    shape = ModelShape(1, 12, 12, 4, 6)
    prior = IndependentPrior(IndependentPriorConfig(), shape=shape)
    bank = contract_bank(shape)
    bulk_generator = torch.Generator().manual_seed(5)
    bulk = sample_latents(prior, bank, shape.grid, 1, generator=bulk_generator)
    generators = generators_for([9, 5, 11])
    per_sample = sample_latents(prior, bank, shape.grid, 3, generator=generators)
    assert_same_latents(per_sample[1:2], bulk)
    assert torch.equal(generators[1].get_state(), bulk_generator.get_state())


def test_per_sample_generators_must_be_one_per_sample(trained):
    prior, bank, grid, _ = trained
    with pytest.raises(ValueError, match="3 per-sample generators for 4 samples"):
        sample_latents(prior, bank, grid, 4, generator=generators_for([1, 2, 3]))
    with pytest.raises(TypeError, match="one per sample"):
        sample_latents(prior, bank, grid, 2, generator=[1, 2])


# -- sampling helpers ------------------------------------------------------------------------------------


def test_image_samples_take_a_bulk_seed_or_one_seed_per_sample(model):
    images, canvases = image_samples(model, 5, seed=3)
    expected, _, _ = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(images, expected)
    assert canvases.shape == images.shape  # canvases upsampled to the image size
    per_sample, _ = image_samples(model, 3, seed=[4, 5, 6])
    assert torch.equal(per_sample[1:2], image_samples(model, 1, seed=[5])[0])


def test_save_sample_grid_writes_a_png(model, tmp_path):
    path = tmp_path / "grid" / "epoch_000.png"
    save_sample_grid(model, path, seed=0, num=8)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prior_canvases_render_the_sampled_latents(trained):
    prior, bank, grid, _ = trained
    canvases, latents = prior_canvases(prior, bank, grid, 6, generator=torch.Generator().manual_seed(8))
    assert_same_latents(latents, draw(prior, bank, grid, 6, seed=8))
    assert torch.equal(canvases, render(latents, bank, grid))
