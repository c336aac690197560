"""Pre-training the prior on real MNIST parses: learning, checkpoints, resume after a kill, skipping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from npdraw_core import loop, prior_training
from npdraw_core.checkpoint import load_checkpoint, read_metrics
from npdraw_core.pipeline import prior_key, prior_stage
from npdraw_core.prior_training import evaluate_nll, prior_content_hash, train_prior
from npdraw_core.run import Run

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
SMALL_PRIOR = [
    "model.prior.d_model=16",
    "model.prior.depth=2",
    "model.prior.num_heads=2",
    "model.prior.head_dim=8",
    "model.prior.mlp_dim=32",
    "model.prior.head_hidden=16",
    "model.prior.dropout=0.1",
]


@pytest.fixture(scope="module")
def mnist(tmp_path_factory, parsed_mnist):
    """A 20-part bank and parses of 300 real MNIST training images (200 train / 100 valid)."""
    run = Run.from_file(TINY, [f"output_dir={tmp_path_factory.mktemp('setup')}"])
    return parsed_mnist(run, 300, 200)


def make_run(path, *overrides: str, prior: list[str] = SMALL_PRIOR) -> Run:
    settings = [
        "prior_training.epochs=2",
        "prior_training.batch_size=50",
        "prior_training.lr=0.003",
        "prior_training.max_train_images=null",
    ]
    return Run.from_file(TINY, [f"output_dir={path}", *prior, *settings, *overrides])


# The stage's bookkeeping does not depend on the prior: the context-free one keeps those tests fast.
INDEPENDENT = ["model.prior={type: independent}"]


def test_training_lowers_the_validation_nll_and_records_every_epoch(tmp_path, mnist):
    bank, parses = mnist
    run = make_run(tmp_path)
    untrained = prior_training.build_prior(run, bank).eval()  # the seeded weights training starts from
    before = evaluate_nll(untrained, bank, run.grid, parses["valid"])
    prior = train_prior(run, bank, parses)
    after = evaluate_nll(prior, bank, run.grid, parses["valid"])
    records = [r for r in read_metrics(run.path("metrics.jsonl")) if r["stage"] == "prior"]
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[-1]["valid_nll"] < records[0]["valid_nll"] < before
    assert after == pytest.approx(min(r["valid_nll"] for r in records), rel=1e-5)  # best weights are returned
    assert after < before - 5  # nats per image, after only 8 small steps
    checkpoint = load_checkpoint(run.path("prior.pt"))
    assert checkpoint["complete"] and checkpoint["epoch"] == 1
    assert checkpoint["config_hash"] == prior_content_hash(run, bank, parses)
    assert not prior.training


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, mnist, monkeypatch):
    bank, parses = mnist
    few = "prior_training.max_train_images=100"  # two batches per epoch
    uninterrupted = train_prior(make_run(tmp_path / "a", few), bank, parses).state_dict()

    class Killed(Exception):
        pass

    real_save = loop.save_checkpoint

    def save_then_die(payload, path):
        real_save(payload, path)
        raise Killed  # as if the process died right after the first epoch's checkpoint

    run = make_run(tmp_path / "b", few)
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_prior(run, bank, parses)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert load_checkpoint(run.path("prior.pt"))["epoch"] == 0
    global_state = torch.get_rng_state()
    resumed = train_prior(run, bank, parses).state_dict()
    assert torch.equal(torch.get_rng_state(), global_state)  # training never disturbs the caller's RNG
    assert [r["epoch"] for r in read_metrics(run.path("metrics.jsonl")) if r["stage"] == "prior"] == [0, 1]
    for name, value in uninterrupted.items():
        assert torch.equal(value, resumed[name]), name


def test_raising_the_epoch_count_continues_training_where_it_stopped(tmp_path, mnist):
    bank, parses = mnist
    few = "prior_training.max_train_images=100"
    uninterrupted = train_prior(make_run(tmp_path / "a", few), bank, parses).state_dict()
    first = make_run(tmp_path / "b", few, "prior_training.epochs=1")
    train_prior(first, bank, parses)
    assert load_checkpoint(first.path("prior.pt"))["complete"]
    continued_run = make_run(tmp_path / "b", few)  # epochs=2
    continued = train_prior(continued_run, bank, parses).state_dict()
    assert not continued_run.path("stale").exists()
    for name, value in uninterrupted.items():
        assert torch.equal(value, continued[name]), name


def test_a_complete_matching_checkpoint_is_reused_without_training(tmp_path, mnist, monkeypatch):
    bank, parses = mnist
    run = make_run(tmp_path, "prior_training.lr=0.1", prior=INDEPENDENT)
    first, first_hash = prior_stage(run, bank, parses)
    monkeypatch.setattr(prior_training, "_train_epoch", lambda *a, **k: pytest.fail("trained again"))
    second, second_hash = prior_stage(
        make_run(tmp_path, "prior_training.lr=0.1", prior=INDEPENDENT), bank, parses
    )
    assert first_hash == second_hash
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name])


def test_a_changed_config_retrains_and_keeps_the_old_checkpoint(tmp_path, mnist):
    bank, parses = mnist
    train_prior(make_run(tmp_path, prior=INDEPENDENT), bank, parses)
    run = make_run(tmp_path, "prior_training.lr=0.001", prior=INDEPENDENT)
    train_prior(run, bank, parses)
    assert len(list(run.path("stale").glob("prior-*.pt"))) == 1
    assert load_checkpoint(run.path("prior.pt"))["config_hash"] == prior_content_hash(run, bank, parses)


def test_early_stopping_ends_training_when_validation_stalls(tmp_path, mnist, monkeypatch):
    bank, parses = mnist
    run = make_run(tmp_path, "prior_training.epochs=6", "prior_training.early_stopping_patience=1", prior=INDEPENDENT)
    monkeypatch.setattr(prior_training, "evaluate_nll", lambda *a, **k: 100.0)  # validation never improves
    train_prior(run, bank, parses)
    epochs = [r["epoch"] for r in read_metrics(run.path("metrics.jsonl")) if r["stage"] == "prior"]
    assert epochs == [0, 1]
    assert load_checkpoint(run.path("prior.pt"))["complete"]


def test_the_independent_prior_trains_through_the_same_stage(tmp_path, mnist):
    bank, parses = mnist
    run = make_run(
        tmp_path,
        "prior_training.epochs=5",
        "prior_training.lr=0.3",
        "prior_training.batch_size=25",
        prior=INDEPENDENT,
    )
    prior, _ = prior_stage(run, bank, parses)
    assert type(prior).__name__ == "IndependentPrior"
    nll = evaluate_nll(prior, bank, run.grid, parses["valid"])
    untrained = run.build("prior", run.config.model.prior, shape=run.model_shape(bank.bank_size))
    assert nll < 0.8 * evaluate_nll(untrained, bank, run.grid, parses["valid"])


@pytest.mark.parametrize("lr_decay", [1.0, 0.5])
def test_the_cached_prior_of_a_longer_schedule_continues_the_shorter_one(tmp_path, mnist, lr_decay):
    bank, parses = mnist
    few = ["prior_training.max_train_images=100", f"prior_training.lr_decay={lr_decay}"]
    uninterrupted = train_prior(make_run(tmp_path / "a", *few), bank, parses).state_dict()
    short = make_run(tmp_path / "b", *few, "prior_training.epochs=1")
    prior_stage(short, bank, parses)
    longer = make_run(tmp_path / "b", *few)  # epochs=2: a new cache entry, started from the 1-epoch one
    continued, key = prior_stage(longer, bank, parses)
    assert key == prior_key(longer.config) != prior_key(short.config)
    assert load_checkpoint(short.cache.path("prior", prior_key(short.config)))["epoch"] == 0  # kept as it was
    assert [r["epoch"] for r in read_metrics(longer.path("metrics.jsonl")) if r["stage"] == "prior"] == [0, 1]
    for name, value in uninterrupted.items():
        assert torch.equal(value, continued.state_dict()[name]), name


def test_lr_decay_lowers_the_rate_step_by_step_and_keys_a_new_lineage(tmp_path, mnist):
    bank, parses = mnist
    run = make_run(tmp_path, "prior_training.lr_decay=0.25", *INDEPENDENT)  # 200 parses: 4 steps per epoch
    train_prior(run, bank, parses)
    rates = [group["lr"] for group in load_checkpoint(run.path("prior.pt"))["optimizer"]["param_groups"]]
    assert rates == [pytest.approx(0.003 * 0.25 ** (1 + 3 / 4))]  # the last step: 1¾ epochs in
    constant = make_run(tmp_path, *INDEPENDENT).config
    assert "lr_decay" not in constant.prior_training.lineage()  # runs made before lr_decay keep their keys
    assert prior_key(run.config) != prior_key(constant)
    with pytest.raises(ValueError, match="lr_decay must be in"):
        make_run(tmp_path, "prior_training.lr_decay=1.5")
