"""The VAE stage on real MNIST: the loss learns, the importance-weighted bound tightens with more samples,
a killed training run resumes exactly, checkpoints never execute code, sampling and editing work."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from npdraw_core.checkpoint import CheckpointError, load_checkpoint, read_metrics
from npdraw_core.data import prepare_images
from npdraw_core.editing import Region, edit, save_edit_figure
from npdraw_core.evaluation import negative_log_likelihood
from npdraw_core.pipeline import bank_stage, parse_stage, prior_stage
from npdraw_core.run import Run
from npdraw_core.training import LAST, build_model, model_hash, parses_of, train_model, warm_up_decoder

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
# A small slice of MNIST keeps every stage to seconds on two cores.
SMALL = ["data.train_fraction=0.05", "evaluation.feature_extractors=[]"]


def tiny_run(output_dir: Path, name: str, *extra: str) -> Run:
    return Run.from_file(TINY, [*SMALL, f"output_dir={output_dir}", f"name={name}", *extra], device="cpu")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Bank, parses and a briefly trained prior, made once in the stage cache that every run of the same
    output directory shares."""
    run = tiny_run(tmp_path_factory.mktemp("runs"), "upstream")
    bank = bank_stage(run)
    parses = parse_stage(run, bank)
    prior, prior_key = prior_stage(run, bank, parses)
    return run, bank, parses, prior, prior_key


def test_loss_falls_over_a_few_steps_on_real_mnist(upstream):
    run, bank, parses, prior, _ = upstream
    torch.manual_seed(0)  # network initialisation only; all sampling below takes explicit generators
    model = build_model(run, bank.exemplars, prior)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = torch.Generator().manual_seed(0)
    train = run.dataset.load("train")
    index = torch.arange(64)
    losses = []
    for _ in range(12):
        images = prepare_images(train.images[index], binary=True, generator=data)
        terms = model.loss(images, parses_of(parses["train"], index, model), reg_weight=1.0, temperature=1.0, generator=data)
        optimizer.zero_grad()
        terms.loss.backward()
        optimizer.step()
        losses.append(terms.loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_fifty_sample_bound_is_tighter_than_one_sample(upstream):
    run, bank, _, prior, _ = upstream
    torch.manual_seed(0)
    model = build_model(run, bank.exemplars, prior).eval()
    images = prepare_images(run.dataset.load("test").images[:48], binary=True, generator=torch.Generator().manual_seed(1))
    one = model.log_likelihood_bound(images, num_samples=1, generator=torch.Generator().manual_seed(2))
    fifty = model.log_likelihood_bound(images, num_samples=50, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(fifty).all() and (fifty < 0).all()  # log-probabilities of binary images
    assert fifty.mean() > one.mean() + 1.0, (fifty.mean(), one.mean())


def test_nll_is_the_same_number_in_one_process_or_spread_over_workers(upstream):
    """Each batch draws from its own generator, so two worker processes give the one-process bound
    exactly, and a fixed seed gives a fixed binarisation and bound; a different seed moves it a little."""
    run, bank, _, prior, _ = upstream
    torch.manual_seed(0)
    model = build_model(run, bank.exemplars, prior)
    test = run.dataset.load("test").subset(torch.arange(40))
    score = functools.partial(negative_log_likelihood, model, test, binary=True, num_samples=3, batch_size=8)
    alone, spread = score(seed=4), score(seed=4, workers=2)
    assert alone["nll_workers"] == 1 and spread["nll_workers"] == 2
    assert spread["nll_nats"] == alone["nll_nats"], (alone, spread)
    other = score(seed=5)["nll_nats"]
    assert other != alone["nll_nats"] and abs(other - alone["nll_nats"]) < 0.05 * alone["nll_nats"]


def test_nll_workers_that_cannot_start_get_an_error_that_says_why(tmp_path):
    """A script without a `__main__` guard cannot start spawned workers (each imports it again): the NLL
    says so and how to fix it, instead of a bare BrokenProcessPool."""
    script = tmp_path / "unguarded.py"
    script.write_text("""
import torch
from npdraw_core.evaluation import negative_log_likelihood
from npdraw_core.interfaces import ImageSet

class Constant(torch.nn.Module):  # a model whose bound is -1 nat per image
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def log_likelihood_bound(self, images, *, num_samples, generator):
        return -torch.ones(len(images))

test = ImageSet(torch.zeros(8, 1, 4, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.long))
print(negative_log_likelihood(Constant(), test, binary=True, num_samples=1, batch_size=2, workers=2))
""")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert 'if __name__ == "__main__":' in result.stderr and "evaluation.nll_workers=1" in result.stderr


def test_an_interrupted_nll_stops_its_workers_at_once(tmp_path):
    """Ctrl-C during the NLL stops the worker processes instead of letting them finish the queue
    (40 batches of a second each, two workers: ~20 s if they did)."""
    script = tmp_path / "slow_nll.py"
    script.write_text("""
import os, time, torch
from npdraw_core.evaluation import negative_log_likelihood
from npdraw_core.interfaces import ImageSet

class Slow(torch.nn.Module):  # a model whose bound takes a second per batch
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def log_likelihood_bound(self, images, *, num_samples, generator):
        with open(os.environ["PIDS"], "a") as pids:
            pids.write(f"{os.getpid()}\\n")
        time.sleep(1)
        return -torch.ones(len(images))

if __name__ == "__main__":
    test = ImageSet(torch.zeros(40, 1, 4, 4, dtype=torch.uint8), torch.zeros(40, dtype=torch.long))
    negative_log_likelihood(Slow(), test, binary=True, num_samples=1, batch_size=1, workers=2)
""")
    pids = tmp_path / "pids"
    process = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PIDS": str(pids)},
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (pids.exists() and len(set(pids.read_text().split())) == 2) and time.monotonic() < deadline:
        time.sleep(0.2)  # both workers are scoring
    workers = {int(pid) for pid in pids.read_text().split()}
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - started < 8 and "KeyboardInterrupt" in stderr
    time.sleep(0.5)
    for pid in workers:  # gone (reaped by the parent before it exited)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_parse_forcing_of_whether_gives_the_decoder_exactly_the_parse_canvas(upstream):
    run, bank, parses, prior, _ = upstream
    torch.manual_seed(0)
    model = build_model(run, bank.exemplars, prior)
    train = run.dataset.load("train")
    # a decoder that reads its canvas, beside an untrained encoder: the first VAE epoch after a warm-up
    settings = dataclasses.replace(run.config.training, decoder_warmup_images=600, batch_size=100, lr=3e-3)
    warm_up_decoder(model, train, parses["train"], settings, binary=True, generator=torch.Generator().manual_seed(0))
    model.eval()
    index = torch.arange(32)
    images = prepare_images(train.images[index], binary=True, generator=torch.Generator().manual_seed(1))
    parse = parses_of(parses["train"], index, model)

    def forced(force_whether: bool) -> torch.Tensor:
        with torch.no_grad():
            return model.loss(images, parse, reg_weight=1.0, temperature=1.0, parse_forcing=1.0,
                              force_whether=force_whether, generator=torch.Generator().manual_seed(2)).reconstruction  # fmt: skip

    given_parse = model.reconstruction(images, parse).detach()
    torch.testing.assert_close(forced(True), given_parse)
    # the paper's forcing keeps the encoder's draw flags: other parts reach the canvas
    assert (forced(False) - given_parse).abs().mean() > 1.0


def test_decoder_warmup_fits_parse_canvases_and_leaves_the_encoder_alone(upstream):
    run, bank, parses, prior, _ = upstream
    torch.manual_seed(0)
    model = build_model(run, bank.exemplars, prior)
    encoder = {name: value.clone() for name, value in model.encoder.state_dict().items()}
    train = run.dataset.load("train")
    index = torch.arange(2000, 2200)  # held out: the warm-up below sees the first 700 images only
    held_out = prepare_images(train.images[index], binary=True, generator=torch.Generator().manual_seed(1))

    def reconstruction() -> float:
        with torch.no_grad():
            return model.eval().reconstruction(held_out, parses_of(parses["train"], index, model)).mean().item()

    before = reconstruction()
    settings = dataclasses.replace(run.config.training, decoder_warmup_images=1530, batch_size=100, lr=3e-3)
    first = train.subset(torch.arange(700))  # several passes, the last batch cut short
    result = warm_up_decoder(model, first, parses["train"], settings, binary=True, generator=torch.Generator().manual_seed(0))
    after = reconstruction()
    assert result["images"] == 1530 and result["seconds"] > 0
    assert after < 0.6 * before, (before, after)  # nats per image on held-out images given their parses
    for name, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, encoder[name], msg=f"the warm-up changed the encoder's {name}")


def test_a_run_with_decoder_warmup_records_it_once_and_keys_its_weights_apart(upstream):
    upstream_run, bank, parses, prior, prior_key = upstream
    output_dir = upstream_run.config.output_dir
    warm = tiny_run(output_dir, "warm", "training.decoder_warmup_images=250", "training.epochs=1",
                    "training.sample_grid_every=0")  # fmt: skip
    cold = tiny_run(output_dir, "cold", "training.epochs=1")
    assert model_hash(warm, prior_key) != model_hash(cold, prior_key)
    # runs made before these settings existed keep their keys
    assert {"decoder_warmup_images", "parse_forcing_whether"}.isdisjoint(cold.config.training.lineage())
    forcing = tiny_run(output_dir, "forcing", "training.epochs=1", "training.parse_forcing_whether=true")
    assert model_hash(forcing, prior_key) != model_hash(cold, prior_key)
    train_model(warm, bank.exemplars, parses, prior, prior_key)
    train_model(warm, bank.exemplars, parses, prior, prior_key)  # done: neither trained nor warmed up again
    records = [r for r in read_metrics(warm.path("metrics.jsonl")) if r["stage"] == "decoder_warmup"]
    assert [r["images"] for r in records] == [250]


def final_weights(run: Run) -> dict[str, torch.Tensor]:
    return load_checkpoint(run.path(LAST))["state_dict"]


@pytest.mark.slow
def test_resume_after_kill_reproduces_the_uninterrupted_run(upstream, tmp_path):
    upstream_run, bank, parses, prior, prior_key = upstream
    output_dir = upstream_run.config.output_dir  # the shared cache already holds bank, parses and prior
    straight = tiny_run(output_dir, f"straight-{tmp_path.name}")
    train_model(straight, bank.exemplars, parses, prior, prior_key)

    killed = tiny_run(output_dir, f"killed-{tmp_path.name}")
    # the same thread count as the run above: float sums differ between thread counts, and the CLI's
    # default (1 on a small machine) is not this process's unless an earlier test has set it
    command = [sys.executable, "-m", "npdraw_core.cli", "train", str(TINY), "--device", "cpu",
               "--threads", str(torch.get_num_threads()),
               *[f"--set={o}" for o in [*SMALL, f"output_dir={output_dir}", f"name={killed.config.name}"]]]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not killed.path(LAST).exists():
            assert process.poll() is None, "training exited before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)  # kill -9 right after epoch 0's checkpoint
    finally:
        process.wait()
    assert load_checkpoint(killed.path(LAST))["epoch"] == 0

    train_model(killed, bank.exemplars, parses, prior, prior_key)
    expected, resumed = final_weights(straight), final_weights(killed)
    assert load_checkpoint(killed.path(LAST))["epoch"] == 1
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, msg=f"{name} differs after resuming")


def test_checkpoint_carrying_a_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(CheckpointError, match="could execute code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_samples_and_edit(upstream, tmp_path):
    run, bank, _, prior, _ = upstream
    torch.manual_seed(0)
    model = build_model(run, bank.exemplars, prior).eval()
    images, canvas, latents = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert images.shape == (6, 1, 28, 28) and canvas.shape == (6, 1, 28, 28)
    assert 0 <= images.min() and images.max() <= 1
    again, _, _ = model.sample(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, again)

    test = run.dataset.load("test").images[:4].float() / 255
    region = Region(0, 14, 28, 14)
    result = edit(model, test[:2], test[2:], region)
    torch.testing.assert_close(result.composed[..., :14], result.canvas_a[..., :14])
    torch.testing.assert_close(result.composed[..., 14:], result.canvas_b[..., 14:])
    save_edit_figure(test[:2], test[2:], result, tmp_path / "edit.png")
    assert (tmp_path / "edit.png").stat().st_size > 0
    with pytest.raises(ValueError, match="does not fit"):
        edit(model, test[:2], test[2:], Region(20, 20, 10, 10))
