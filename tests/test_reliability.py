"""The whole surface holds (issue 14): damaged artefacts are set aside and recomputed, or named with how to
recover; commands that do not train never train or change a run; every setting and option is checked
before any work, with a message naming it; one process at a time in a run directory; files follow the
umask; a corrupt image in an imported folder is named. Every case asserts the message and that no
artefact was lost or changed.

One tiny run is trained once for the module (`finished`); tests that damage artefacts work on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from npdraw_core.checkpoint import atomic_write_bytes, load_checkpoint, read_metrics
from npdraw_core.cli import main
from npdraw_core.run import Run

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
SMALL = [
    "data.train_fraction=0.03", "prior_training.max_train_images=300", "training.max_train_images=200",
    "training.epochs=1", "training.sample_grid_every=0", "evaluation.feature_extractors=[]",
    "evaluation.nll_images=20",
]  # fmt: skip


def settings(output_dir: Path, *extra: str) -> list[str]:
    return [f"--set={o}" for o in [*SMALL, f"output_dir={output_dir}", "name=tiny", *extra]]


def npdraw(command: str, output_dir: Path, *args: str, config: str = TINY) -> int:
    return main([command, config, "--device", "cpu", *settings(output_dir), *args])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (lock files aside: they are rewritten by whoever takes the lock)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".lock" and p.name != ".lock"}


def one_error_line(err: str) -> bool:
    """A user's mistake: one `error:` line (progress bars aside) and no traceback."""
    return "Traceback" not in err and len([line for line in err.splitlines() if "error:" in line]) == 1


def train_records(run_dir: Path) -> int:
    return sum(r["stage"] in ("train", "prior", "bank", "parse") for r in read_metrics(run_dir / "metrics.jsonl"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The output root of a tiny run trained through every stage (cache/ and tiny/)."""
    root = tmp_path_factory.mktemp("reliability") / "out"
    assert npdraw("run", root) == 0
    return root


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    """A copy of the finished output root, to damage; its records name the copy, as a run there would."""
    root = tmp_path / "out"
    shutil.copytree(finished, root)
    for record in (root / "tiny" / "config.yaml", root / "tiny" / "artefacts.json"):
        record.write_text(record.read_text().replace(str(finished), str(root)))
    return root


def cached(root: Path, kind: str) -> Path:
    (path,) = (root / "cache" / kind).glob("*.pt")
    return path


# -- damaged artefacts -------------------------------------------------------------------------------------
def damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(os.urandom(3000))
    elif how == "list":
        torch.save([1, 2, 3], path)
    elif how == "missing keys":
        torch.save({"config_hash": "x"}, path)
    elif how == "wrong version":
        torch.save({**load_checkpoint(path), "format_version": 99}, path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "how"),
    [("bank", "truncated"), ("parses", "empty"), ("parses", "list"), ("prior", "missing keys"), ("prior", "wrong version")],
)
def test_a_damaged_stage_artefact_is_set_aside_and_recomputed(copy, capsys, kind, how):
    path = cached(copy, kind)
    damage(path, how)
    damaged_bytes = path.read_bytes()
    assert npdraw("run", copy, "--stages", "prior") == 0
    out, err = capsys.readouterr()
    assert f"{path} could not be read" in err and "computing it again" in err
    (aside,) = path.parent.glob(f"{path.name}.damaged-*")
    assert aside.read_bytes() == damaged_bytes  # set aside, not deleted
    assert load_checkpoint(path)["config_hash"] == path.stem  # recomputed
    assert (copy / "tiny" / "model.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "list", "wrong version"])
def test_a_damaged_model_file_says_how_to_recover_and_train_recovers_it(copy, capsys, tmp_path, how):
    model = copy / "tiny" / "model.pt"
    damage(model, how)
    damaged_bytes, last = model.read_bytes(), (copy / "tiny" / "model_last.pt").read_bytes()
    assert npdraw("sample", copy, "--num", "2", "--out", str(tmp_path / "s.png")) == 2
    err = capsys.readouterr().err
    assert str(model) in err and "To recover" in err and "npdraw train CONFIG" in err
    assert one_error_line(err)
    records = train_records(copy / "tiny")
    assert npdraw("train", copy) == 0  # the advised command: the model file again from model_last.pt
    assert "could not be used" in capsys.readouterr().err
    assert train_records(copy / "tiny") == records  # nothing trained again
    assert (copy / "tiny" / "model_last.pt").read_bytes() == last
    (aside,) = (copy / "tiny" / "stale").glob("model-damaged-*.pt")
    assert aside.read_bytes() == damaged_bytes
    assert npdraw("sample", copy, "--num", "2", "--out", str(tmp_path / "s.png")) == 0


@pytest.mark.slow
def test_a_deleted_model_file_is_written_again_by_train_without_training(copy, capsys):
    (copy / "tiny" / "model.pt").unlink()
    assert npdraw("eval", copy) == 2
    assert "has no trained model" in capsys.readouterr().err
    records = train_records(copy / "tiny")
    assert npdraw("train", copy) == 0
    assert train_records(copy / "tiny") == records
    assert npdraw("eval", copy) == 0


@pytest.mark.slow
def test_a_damaged_training_checkpoint_is_set_aside_and_training_redone(copy, capsys):
    last = copy / "tiny" / "model_last.pt"
    damage(last, "truncated")
    damaged_bytes, model = last.read_bytes(), (copy / "tiny" / "model.pt").read_bytes()
    assert npdraw("train", copy) == 0
    captured = capsys.readouterr()
    assert "could not be used" in captured.err and "training starts over; moved the previous model.pt" in captured.out
    assert load_checkpoint(last)["complete"]
    stale = copy / "tiny" / "stale"
    assert [p.read_bytes() for p in stale.glob("model_last-damaged-*.pt")] == [damaged_bytes]
    assert [p.read_bytes() for p in stale.glob("model-*.pt")] == [model]  # the trained model is kept


@pytest.mark.slow
def test_a_broken_metrics_line_and_artefacts_record_are_not_fatal(copy, capsys):
    with open(copy / "tiny" / "metrics.jsonl", "a") as f:
        f.write('{"stage": "tr')  # a write cut short
    (copy / "tiny" / "artefacts.json").write_text("{nope")
    assert npdraw("run", copy, "--stages", "train") == 0
    captured = capsys.readouterr()
    assert "is not a metrics record" in captured.err and "VAE: epoch 0" in captured.out
    assert "artefacts.json is not a JSON record of artefacts" in captured.err
    assert [p.read_text() for p in (copy / "tiny" / "stale").glob("artefacts-damaged-*.json")] == ["{nope"]
    assert sorted(json.loads((copy / "tiny" / "artefacts.json").read_text())) == ["bank", "parses", "prior"]


def test_a_changed_config_moves_the_recorded_one_to_stale(tmp_path):
    first = Run.from_file(TINY, [f"output_dir={tmp_path}", "name=tiny"], device="cpu")
    first.record_config()
    first.record_artefact("bank", "0123")
    recorded, used = first.path("config.yaml").read_text(), first.path("artefacts.json").read_text()
    first.record_config()  # the same config: nothing to keep
    assert not first.path("stale").exists()
    Run.from_file(TINY, [f"output_dir={tmp_path}", "name=tiny", "training.reg_weight=3"], device="cpu").record_config()
    assert [p.read_text() for p in first.path("stale").glob("config-*.yaml")] == [recorded]
    assert [p.read_text() for p in first.path("stale").glob("artefacts-*.json")] == [used]
    assert "reg_weight: 3.0" in first.path("config.yaml").read_text()


# -- commands that must not train, nor change a run ---------------------------------------------------------
@pytest.mark.parametrize("command", ["sample", "eval", "edit"])
def test_commands_that_use_a_model_never_train_one(command, tmp_path, capsys):
    assert npdraw(command, tmp_path) == 2
    err = capsys.readouterr().err
    assert "has no trained model (model.pt)" in err and f"`npdraw {command}` uses a trained model and never trains" in err
    assert f"npdraw run {TINY}" in err  # the command that trains it
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sample", "eval", "edit"])
@pytest.mark.parametrize("override", ["model.part_bank.bank_size=30", "training.reg_weight=3", "seed=4"])
def test_overrides_that_change_what_the_model_means_are_refused(finished, command, override, tmp_path, capsys):
    before = snapshot(finished)
    out = ["--out", str(tmp_path / "x.png")] if command != "eval" else []
    assert npdraw(command, finished, f"--set={override}", *out) == 2
    err = capsys.readouterr().err
    key, value = override.split("=")
    assert f"{key}: trained with" in err and f"asked for {value}" in err and "never retrains" in err
    assert "--set name=NEW_NAME" in err
    assert snapshot(finished) == before and not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_eval_loads_the_trained_model_and_may_change_only_evaluation_settings(finished, capsys):
    before = {name: (finished / "tiny" / name).read_bytes() for name in ("model.pt", "model_last.pt", "config.yaml")}
    records = train_records(finished / "tiny")
    assert npdraw("eval", finished, "--set=evaluation.nll_images=5", "--set=evaluation.nll_samples=2") == 0
    assert "nll_nats" in capsys.readouterr().out
    evaluation = [r for r in read_metrics(finished / "tiny" / "metrics.jsonl") if r["stage"] == "eval"][-1]
    assert (evaluation["nll_images"], evaluation["nll_samples"]) == (5, 2)
    assert train_records(finished / "tiny") == records
    assert {name: (finished / "tiny" / name).read_bytes() for name in before} == before


# -- settings and options, checked before any work ---------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.lr=-0.1", "training.lr must be a number greater than 0, got -0.1"),
        ("prior_training.lr=-1", "prior_training.lr must be a number greater than 0, got -1.0"),
        ("training.encoder_lr=.nan", "training.encoder_lr must be a number greater than 0, got nan"),
        ("training.reg_weight=.inf", "training.reg_weight must be a finite number (at least 0), got inf"),
        ("evaluation.nll_samples=0", "evaluation.nll_samples must be at least 1, got 0"),
        ("evaluation.nll_images=-5", "evaluation.nll_images must be at least 0, got -5"),
        ("evaluation.fid_samples=1", "evaluation.fid_samples must be at least 2 to compute an FID, got 1"),
        ("training.batch_size=0", "training.batch_size must be at least 1, got 0"),
        ("prior_training.batch_size=0", "prior_training.batch_size must be at least 1, got 0"),
        ("evaluation.batch_size=0", "evaluation.batch_size must be at least 1, got 0"),
        ("training.epochs=-1", "training.epochs must be at least 0, got -1"),
        ("seed=-1", "seed must be between 0 and 4294967295, got -1"),
        ("device=gpu", "device 'gpu' is not a device"),
        ("name=../elsewhere", "name must be a folder name"),
        ("stages=[bank, fly]", "stages ['fly'] are not stages"),
    ],
)
def test_a_bad_setting_stops_before_any_work_naming_the_key(override, message, tmp_path, capsys):
    assert main(["run", TINY, "--device", "cpu", f"--set=output_dir={tmp_path / 'out'}", f"--set={override}"]) == 2
    err = capsys.readouterr().err
    assert message in err and one_error_line(err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "--temperature", "nan"], "--temperature must be a finite number greater than 0, got 'nan'"),
        (["sample", "--temperature", "0"], "--temperature must be a finite number greater than 0"),
        (["sample", "--temperature", "-1"], "--temperature must be a finite number greater than 0"),
        (["sample", "--temperature", "inf"], "--temperature must be a finite number greater than 0"),
        (["sample", "--top-k", "0"], "--top-k must be at least 1, got 0"),
        (["sample", "--num", "0"], "--num must be at least 1, got 0"),
        (["sample", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["sample", "--out", "x.jpg"], "unknown extension .jpg"),
        (["sample", "--device", "foo"], "device 'foo' is not a device: use auto, cpu, cuda"),
        (["sample", "--threads", "0"], "--threads must be at least 1, got 0"),
        (["edit", "--out", "x.jpg"], "give a path ending in .png"),
        (["edit", "--region", "1,2"], "must be four integers"),
        (["edit", "--a", "-1"], "--a must be 0 or more, got -1"),
        (["edit", "--a", "1", "2", "--b", "3"], "--a and --b must list the same number of images"),
        (["run", "--stages", "fly"], "invalid choice: 'fly'"),
    ],
)
def test_a_bad_option_is_one_line_before_any_work(args, message, tmp_path, capsys):
    command, *rest = args
    config = [TINY] if command != "sample" else ["--model", str(tmp_path / "nothing")]
    code = main([command, *config, f"--set=output_dir={tmp_path}", *rest]) if command != "sample" else main(
        [command, *config, *rest]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and one_error_line(err), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_on_a_machine_without_cuda_is_a_clear_error(tmp_path, capsys):
    assert main(["bank", TINY, "--device", "cuda", f"--set=output_dir={tmp_path}"]) == 2
    assert "device 'cuda': CUDA is not available on this machine; use auto or cpu" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- one process at a time in a run directory -----------------------------------------------------------------
HOLDER = """
import sys, time
from npdraw_core.run import Run
run = Run.from_file(sys.argv[1], [f"output_dir={sys.argv[2]}", "name=tiny"], device="cpu")
with run.lock():
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_process_on_a_run_directory_stops_naming_the_first(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, TINY, str(tmp_path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        for command in ("run", "bank", "parse", "train-prior", "train"):
            assert main([command, TINY, "--device", "cpu", f"--set=output_dir={tmp_path}", "--set=name=tiny"]) == 2
            err = capsys.readouterr().err
            assert f"is in use by process {holder.pid} (" in err and "--set name=" in err, err
        assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [".lock"]  # nothing written meanwhile
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the lock of the killed holder: the next process gets it
    run = Run.from_file(TINY, [f"output_dir={tmp_path}", "name=tiny"], device="cpu")
    with run.lock(), run.lock():  # re-entrant within a process
        assert f"process {os.getpid()}" in (tmp_path / "tiny" / ".lock").read_text()


# -- files: umask, data import ---------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o666 & ~umask


@pytest.mark.slow
def test_the_run_artefacts_follow_the_umask(finished):
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [finished / "tiny" / "model.pt", finished / "tiny" / "config.yaml", cached(finished, "prior")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "empty"])
def test_importing_a_folder_with_a_corrupt_image_names_it(tmp_path, capsys, corruption):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (8, 8), color=i * 40).save(folder / f"{i}.png")
    good = (folder / "1.png").read_bytes()
    broken = {"garbage": b"\x89PNG not really", "truncated": good[: len(good) // 2], "empty": b""}[corruption]
    (folder / "1.png").write_bytes(broken)
    out = tmp_path / "images.npz"
    assert main(["data", "import", str(folder), "--to", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{folder / '1.png'}: cannot read this image" in err and one_error_line(err), err
    assert not out.exists() and (folder / "1.png").read_bytes() == broken
