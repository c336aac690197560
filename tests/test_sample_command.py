"""`npdraw sample` from a model file: .npz arrays with the right shapes and dtypes that equal
`NPDraw.sample` for the same seeds, streamed in batches, written atomically; PNG grids; teaching errors for
bad arguments before any model is loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from npdraw_core.build import model_from_config, prior_from_config
from npdraw_core.cli import main
from npdraw_core.contracts import contract_bank
from npdraw_core.latents import Latents
from npdraw_core.model_file import load_trained, save_model_file
from npdraw_core.run import Run
from npdraw_core.sample_output import read_metadata, write_npz
from npdraw_core.sampling import generators_for, prior_canvases

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
BANK_SIZE = 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory holding only a model.pt of the tiny config (untrained networks: these tests are
    about the command and the file, not about sample quality)."""
    run = Run.from_file(TINY, [f"output_dir={tmp_path_factory.mktemp('runs')}", "name=tiny"], device="cpu")
    shape = run.model_shape(BANK_SIZE)
    prior = prior_from_config(run.config, shape, run.registry)
    model = model_from_config(run.config, shape, contract_bank(shape), prior, run.registry)
    save_model_file(run.path("model.pt"), model, run.config, shape)
    return run.dir


@pytest.fixture(scope="module")
def model(run_dir):
    return load_trained(run_dir, device="cpu")


def sample(*args) -> int:
    return main(["sample", *map(str, args), "--device", "cpu"])


def assert_npz_equals_samples(arrays, images, canvases, latents: Latents) -> None:
    indices = latents.indices()
    assert np.array_equal(arrays["images"], images.numpy())
    assert np.array_equal(arrays["canvases"], canvases.numpy())
    assert np.array_equal(arrays["whether"], indices["whether"].bool().numpy())
    assert np.array_equal(arrays["what"], indices["what"].numpy())
    assert np.array_equal(arrays["where"], indices["where"].numpy())


def test_npz_holds_the_samples_of_model_sample_with_the_same_seed(run_dir, model, tmp_path):
    out = tmp_path / "samples.npz"
    assert sample("--model", run_dir, "--num", 10, "--seed", 3, "--temperature", 0.9, "--format", "npz", "--out", out) == 0
    with np.load(out) as arrays:
        steps = model.grid.num_cells
        expected = {
            "images": ((10, 1, 28, 28), np.float32),
            "canvases": ((10, 1, 28, 28), np.float32),
            "whether": ((10, steps), np.bool_),
            "what": ((10, steps), np.int64),
            "where": ((10, steps), np.int64),
        }
        assert set(arrays.files) == {*expected, "metadata"}  # no seeds: one generator for all samples
        for name, (shape, dtype) in expected.items():
            assert arrays[name].shape == shape and arrays[name].dtype == dtype, name
        assert 0.0 <= arrays["images"].min() and arrays["images"].max() <= 1.0
        images, canvases, latents = model.sample(10, generator=torch.Generator().manual_seed(3), temperature=0.9)
        assert_npz_equals_samples(arrays, images, canvases, latents)
        metadata = read_metadata(arrays)
    assert metadata["model"] == str(run_dir / "model.pt")
    assert (metadata["temperature"], metadata["top_k"], metadata["seed"]) == (0.9, None, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]  # no temporary files left behind


def test_per_sample_seeds_stream_in_batches_like_one_big_batch(run_dir, model, tmp_path):
    out = tmp_path / "streamed.npz"
    assert sample("--model", run_dir / "model.pt", "--seeds", "0:90,500", "--batch-size", 40, "--top-k", 5, "--out", out) == 0
    seeds = [*range(90), 500]
    with np.load(out) as arrays:
        assert arrays["seeds"].tolist() == seeds and arrays["seeds"].dtype == np.int64
        assert read_metadata(arrays)["seed"] is None
        assert_npz_equals_samples(arrays, *model.sample(len(seeds), generator=generators_for(seeds), top_k=5))


def test_prior_only_npz_holds_canvases_and_latents(run_dir, model, tmp_path):
    out = tmp_path / "prior.npz"
    assert sample("--model", run_dir, "--prior-only", "--num", 6, "--seed", 1, "--out", out) == 0
    canvases, latents = prior_canvases(model.prior, model.bank, model.grid, 6, generator=torch.Generator().manual_seed(1))
    with np.load(out) as arrays:
        assert "images" not in arrays.files
        assert np.array_equal(arrays["canvases"], canvases.numpy())
        assert np.array_equal(arrays["what"], latents.indices()["what"].numpy())


def test_config_samples_from_its_run_directory_as_png_by_default(run_dir, tmp_path):
    overrides = [f"--set=output_dir={run_dir.parent}", f"--set=name={run_dir.name}"]
    assert sample(TINY, *overrides, "--num", 4) == 0
    assert (run_dir / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert sample(TINY, *overrides, "--num", 4, "--prior-only", "--out", tmp_path / "p.png") == 0
    assert (tmp_path / "p.png").stat().st_size > 100


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "x.jpg"], "unknown extension .jpg"),
        (["--out", "samples"], "unknown extension (none)"),
        (["--format", "npz", "--out", "x.png"], "--format npz disagrees"),
        (["--seeds", "5:2"], "expected seeds and ranges"),
        (["--seeds", "0:3", "--num", "4"], "--num 4 disagrees with the 3 seeds"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--set", "seed=1"], "--set changes CONFIG"),
    ],
)
def test_bad_arguments_fail_before_any_model_is_loaded(tmp_path, capsys, args, message):
    missing = tmp_path / "no_such_run"  # loading it would fail with another message
    assert sample("--model", missing, *args) == 2
    assert message in capsys.readouterr().err


def test_config_and_model_are_alternatives(run_dir, capsys):
    assert sample(TINY, "--model", run_dir) == 2
    assert sample() == 2
    assert "either CONFIG" in capsys.readouterr().err


def test_a_missing_model_file_is_a_teaching_error(tmp_path, capsys):
    assert sample("--model", tmp_path / "nothing") == 2
    assert "no model file" in capsys.readouterr().err


def test_an_interrupted_npz_leaves_no_file(tmp_path):
    def batches():
        yield None, torch.zeros(2, 1, 4, 4), Latents.from_indices(
            what=torch.zeros(2, 3), where=torch.zeros(2, 3), whether=torch.ones(2, 3), bank_size=2, num_cells=3
        )
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_npz(tmp_path / "a.npz", 4, batches(), seeds=None, metadata={})
    assert list(tmp_path.iterdir()) == []
