"""Ancestral sampling from priors: exact agreement of the cached and full-recompute paths, frames that
match teacher forcing, temperature / top-k, frequencies, devices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from npdraw_core.contracts import build_prior, contract_bank
from npdraw_core.geometry import ModelShape
from npdraw_core.latents import render
from npdraw_core.prior_training import train_prior
from npdraw_core.run import Run
from npdraw_core.sampling import prior_logits, sample_latents
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


def test_the_cached_sampler_embeds_each_frame_once_and_the_full_one_recomputes_the_prefix():
    prior = build_prior(TransformerPrior, SMALL, MNIST_SHAPE)
    bank, steps = contract_bank(MNIST_SHAPE), MNIST_SHAPE.num_steps
    embedded = []
    prior.frame_embedding.register_forward_hook(lambda module, inputs, output: embedded.append(len(output)))
    draw(prior, bank, MNIST_SHAPE.grid, 2, seed=0)
    assert sum(embedded) == 2 * steps  # one position per step
    embedded.clear()
    draw(prior, bank, MNIST_SHAPE.grid, 2, seed=0, use_cache=False)
    assert sum(embedded) == 2 * steps * (steps + 1) // 2  # the whole prefix at every step
