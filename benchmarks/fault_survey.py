"""Fault survey (issue 14): bad inputs and faults a user meets, tried against the real CLI, with the outcome
of each classified and counted by class.

    OMP_NUM_THREADS=1 python benchmarks/fault_survey.py [--only CLASS ...] [--keep DIR] [--verbose]

It trains one tiny MNIST run (about a minute on one core), then runs every case on a fresh copy of it (or
on an empty output root): `npdraw` in this process for most, child processes for interruptions and
concurrent runs. Outcomes:

  clear error  exit code 2 with one `error:` line naming the problem (and the expected words), no traceback,
               and no artefact changed
  recovered    exit code 0 after a message saying what was set aside or resumed, with the expected result
  traceback    a traceback, exit code 1, or an exception out of `main`
  silent       exit code 0 where an error was due, a recovery without a message, a wrong result, or an
               error that still changed artefacts
  data lost    (counted besides the above) the content of a file that existed before the case is nowhere
               under the output root after it (set-aside copies count as kept; metrics.jsonl may only grow)

Prints one line per case with --verbose, then the table (markdown), then one JSON line of the counts.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
SMALL = [
    "data.train_fraction=0.03", "prior_training.max_train_images=300", "training.max_train_images=200",
    "training.epochs=1", "training.sample_grid_every=0", "evaluation.feature_extractors=[]",
    "evaluation.nll_images=20", "evaluation.nll_samples=5",
]  # fmt: skip
TRAINED_FURTHER = ("tiny/model.pt", "tiny/model_last.pt")  # raising training.epochs continues these, by design
OUTCOMES = ("clear error", "recovered", "traceback", "silent", "data lost")


def sets(root: Path, *extra: str) -> list[str]:
    return [f"--set={o}" for o in [*SMALL, f"output_dir={root}", "name=tiny", *extra]]


@dataclass
class Case:
    cls: str
    name: str
    argv: Callable[[Path], list[str]] | None = None  # the npdraw command line, given the output root
    expect: str = "error"  # "error" (clear error) or "recover"
    words: tuple[str, ...] = ()  # what the message (stdout + stderr) must say
    trained: bool = True  # run on a copy of the trained run (else on an empty root)
    setup: Callable[[Path], None] | None = None  # e.g. damage a file (before the snapshot)
    verify: Callable[[Path], bool] | None = None  # the expected result is there
    run: Callable[[Path], tuple[int, str]] | None = None  # a custom run (child processes): (code, output)
    mutable: tuple[str, ...] = field(default=())  # files the command replaces by design (e.g. training further)
    others_write: bool = False  # another process works in the root meanwhile (its files are not changes)


# -- helpers to build cases -----------------------------------------------------------------------------------
def cached(root: Path, kind: str) -> Path:
    return next((root / "cache" / kind).glob("*.pt"))


def damage(how: str) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        import torch

        from npdraw_core.checkpoint import load_checkpoint

        if how == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif how == "empty":
            path.write_bytes(b"")
        elif how == "garbage":
            path.write_bytes(os.urandom(2000))
        elif how == "list":
            torch.save([1, 2, 3], path)
        elif how == "missing keys":
            torch.save({"config_hash": path.stem}, path)
        elif how == "wrong version":
            torch.save({**load_checkpoint(path), "format_version": 99}, path)
        elif how == "foreign":
            torch.save({**load_checkpoint(path), "config_hash": "0123456789abcdef"}, path)
        elif how == "pickle":
            import pickle

            class Evil:
                def __reduce__(self):
                    return (print, ("pwned",))

            path.write_bytes(pickle.dumps({"format": Evil()}))
        elif how == "deleted":
            path.unlink()

    return apply


def on(kind: str, how: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        target = cached(root, kind) if kind in ("bank", "parses", "prior") else root / "tiny" / kind
        damage(how)(target)

    return setup


def complete(root: Path) -> bool:
    from npdraw_core.checkpoint import load_checkpoint
    from npdraw_core.model_file import read_model_file

    read_model_file(root / "tiny")
    return bool(load_checkpoint(root / "tiny" / "model_last.pt")["complete"])


def cache_ok(kind: str) -> Callable[[Path], bool]:
    def verify(root: Path) -> bool:
        from npdraw_core.checkpoint import load_checkpoint

        path = cached(root, kind)
        return load_checkpoint(path)["config_hash"] == path.stem and complete(root)

    return verify


def image_folder(root: Path, broken: bytes | None = None, sizes=(8, 8, 8)) -> Path:
    from PIL import Image

    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        Image.new("L", (size, size), color=40 * i).save(folder / f"{i}.png")
    if broken is not None:
        (folder / "1.png").write_bytes(broken)
    return folder


def write(path_in_root: str, data: bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / path_in_root
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return setup


# -- child processes: interruptions and concurrent runs ------------------------------------------------------------
def npdraw_process(args: list[str], root: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "npdraw_core.cli", *args]
    return subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(process: subprocess.Popen, text: str, timeout: float = 300) -> str:
    seen, deadline = "", time.time() + timeout
    while time.time() < deadline:
        char = process.stdout.read(1)
        if not char:
            break
        seen += char
        if seen.endswith(text):
            return seen
    raise RuntimeError(f"never saw {text!r}: {seen[-500:]}")


def interrupted(command: str, longer: str, marker: str, sig: int) -> Callable[[Path], tuple[int, str]]:
    """Start `command` with a longer schedule (`longer`), send `sig` when `marker` appears in its output,
    then run it again to the end."""

    def run(root: Path) -> tuple[int, str]:
        args = [command, TINY, "--device", "cpu", *sets(root, longer)]
        first = npdraw_process(args, root)
        try:
            output = wait_for(first, marker)
        finally:
            first.send_signal(sig)
            rest, _ = first.communicate(timeout=120)
        again = npdraw_process(args, root)
        out, _ = again.communicate(timeout=600)
        said = "resuming after epoch" in out or "continuing from" in out
        return again.returncode, f"{output}{rest}\n{out}\n{'(resumed)' if said else ''}"

    return run


def concurrent(second_overrides: list[str]) -> Callable[[Path], tuple[int, str]]:
    """Two `npdraw run` on one run directory at once: one must run, the other stop naming it."""

    def run(root: Path) -> tuple[int, str]:
        base = ["run", TINY, "--device", "cpu", "--stages", "prior"]
        first = npdraw_process([*base, *sets(root, "prior_training.epochs=2")], root)
        wait_for(first, "[bank]")  # the first holds the run directory
        second = npdraw_process([*base, *sets(root, "prior_training.epochs=2", *second_overrides)], root)
        out2, _ = second.communicate(timeout=300)
        out1, _ = first.communicate(timeout=600)
        ok = first.returncode == 0 and f"in use by process {first.pid}" in out2
        return (second.returncode if ok else 1), out2

    return run


# -- the cases ---------------------------------------------------------------------------------------------------
def cases() -> list[Case]:
    out: list[Case] = []
    run = lambda *extra: lambda root: ["run", TINY, "--device", "cpu", *sets(root, *extra)]  # noqa: E731

    # settings (config values, config files), all before any work: nothing may be written
    bad_settings = [
        ("training.lr=-0.1", "training.lr"), ("training.lr=0", "training.lr"), ("training.encoder_lr=.nan", "training.encoder_lr"),
        ("prior_training.lr=-1", "prior_training.lr"), ("prior_training.grad_clip=-1", "prior_training.grad_clip"),
        ("training.reg_weight=.inf", "training.reg_weight"), ("training.min_temperature=2", "training.min_temperature"),
        ("training.temperature_halflife=0", "training.temperature_halflife"), ("training.epochs=-1", "training.epochs"),
        ("training.max_train_images=0", "training.max_train_images"), ("prior_training.max_train_images=-3", "prior_training.max_train_images"),
        ("training.batch_size=0", "training.batch_size"), ("prior_training.batch_size=0", "prior_training.batch_size"),
        ("evaluation.batch_size=0", "evaluation.batch_size"), ("evaluation.nll_samples=0", "evaluation.nll_samples"),
        ("evaluation.nll_images=-5", "evaluation.nll_images"), ("evaluation.feature_extractors=[nope]", "evaluation.feature_extractors[0]"),
        ("model.patch_size=40", "patch_size"), ("model.canvas_size=0", "model.canvas_size"),
        ("model.part_bank.bank_size=0", "model.part_bank.bank_size"), ("model.part_bank.bank_size=lots", "model.part_bank.bank_size"),
        ("model.prior.type=transfomer", "Did you mean 'transformer'"), ("model.prior.num_heads=0", "model.prior.num_heads"),
        ("model.encoder.channels=0", "model.encoder.channels"), ("data.type=nope", "data.type"),
        ("data.train_fraction=2", "data.train_fraction"), ("traning.lr=1", "Did you mean 'training'"),
        ("data=[1]", "'data' must be a mapping"), ("seed=-1", "seed"), ("seed=1e30", "'seed' must be an integer"),
        ("device=gpu", "device 'gpu'"), ("name=../elsewhere", "name must be a folder name"), ("name=''", "name must be"),
        ("stages=[fly]", "stages ['fly']"), ("training.lr=" + "9" * 400, "fits a float"),
        ("data.root=/nonexistent/mnist", "/nonexistent/mnist"),
    ]  # fmt: skip
    for override, words in bad_settings:
        out.append(Case("settings", override[:40], run(override), words=(words,), trained=False))
    for samples in (0, 1):  # an FID needs two samples (checked when an extractor is asked for)
        fid = ("evaluation.feature_extractors=[lenet]", f"evaluation.fid_samples={samples}")
        out.append(Case("settings", f"evaluation.fid_samples={samples}", run(*fid), words=("evaluation.fid_samples",), trained=False))
    out += [
        Case("settings", "config file missing", lambda r: ["run", "configs/nope.yaml"], words=("does not exist",), trained=False),
        Case("settings", "config not YAML", lambda r: ["run", str(r / "bad.yaml")], words=("not valid YAML",), trained=False,
             setup=write("bad.yaml", b"model: [unclosed\n")),
        Case("settings", "config a list", lambda r: ["run", str(r / "list.yaml")], words=("mapping at the top level",),
             trained=False, setup=write("list.yaml", b"- 1\n- 2\n")),
        Case("settings", "override without =", lambda r: ["run", TINY, "--set", "training.lr"], words=("key.path=value",), trained=False),
    ]  # fmt: skip

    # command-line options: checked when read
    model = lambda *a: lambda root: ["sample", "--model", str(root / "tiny"), *a]  # noqa: E731
    for args, words in [
        (["--temperature", "nan"], "--temperature"), (["--temperature", "0"], "--temperature"),
        (["--temperature", "-1"], "--temperature"), (["--temperature", "inf"], "--temperature"),
        (["--temperature", "warm"], "--temperature"), (["--top-k", "0"], "--top-k"), (["--top-k", "-2"], "--top-k"),
        (["--num", "0"], "--num"), (["--num", "-1"], "--num"), (["--batch-size", "0"], "--batch-size"),
        (["--seeds", "5:2"], "--seeds"), (["--seeds", "a"], "--seeds"), (["--out", "x.jpg"], "unknown extension"),
        (["--out", "samples"], "unknown extension"), (["--format", "npz", "--out", "x.png"], "--format npz disagrees"),
        (["--device", "foo"], "device 'foo'"), (["--device", ""], "device ''"), (["--device", "cuda"], "CUDA"),
        (["--device", "cuda:9"], "CUDA"), (["--threads", "0"], "--threads"),
        (["--out", "/proc/x.png"], "/proc/x.png"), (["--out", "/dev/null/x.npz"], "/dev/null"),
    ]:  # fmt: skip
        out.append(Case("options", "sample " + " ".join(args), model(*args), words=(words,)))
    edit = lambda *a: lambda root: ["edit", TINY, "--device", "cpu", *sets(root), *a]  # noqa: E731
    for args, words in [
        (["--out", "x.jpg"], ".png"), (["--region", "1,2"], "four integers"), (["--region", "20,20,20,20"], "does not fit"),
        (["--a", "-1"], "--a must be"), (["--a", "99999", "--b", "1"], "outside the test set"),
        (["--a", "1", "2", "--b", "3"], "same number"),
    ]:  # fmt: skip
        out.append(Case("options", "edit " + " ".join(args), edit(*args), words=(words,)))
    out += [
        Case("options", "sample CONFIG and --model", lambda r: ["sample", TINY, "--model", str(r / "tiny")], words=("either CONFIG",)),
        Case("options", "run --stages fly", lambda r: ["run", TINY, "--stages", "fly"], words=("invalid choice",), trained=False),
        Case("options", "unknown command", lambda r: ["smaple"], words=("invalid choice",), trained=False),
    ]  # fmt: skip

    # damaged artefacts: stage artefacts are set aside and recomputed; a model file says how to recover
    prior_stages = lambda root: ["run", TINY, "--device", "cpu", "--stages", "train", *sets(root)]  # noqa: E731
    for kind, hows in [("bank", ["truncated", "empty", "garbage", "list", "missing keys", "foreign"]),
                       ("parses", ["truncated", "empty", "list", "missing keys"]),
                       ("prior", ["truncated", "empty", "wrong version", "missing keys", "pickle"])]:  # fmt: skip
        for how in hows:
            out.append(Case("damaged artefacts", f"{kind}.pt {how}", prior_stages, expect="recover",
                            words=("could not be read", "computing it again"), setup=on(kind, how), verify=cache_ok(kind)))  # fmt: skip
    sample_run = lambda root: ["sample", TINY, "--device", "cpu", *sets(root), "--num", "2", "--out", str(root / "s.png")]  # noqa: E731
    for how in ["truncated", "empty", "garbage", "list", "missing keys", "wrong version", "pickle"]:
        out.append(Case("damaged artefacts", f"model.pt {how} → sample", sample_run, setup=on("model.pt", how),
                        words=("model.pt", "To recover" if how not in ("pickle",) else "refusing to load")))  # fmt: skip
    train = lambda root: ["train", TINY, "--device", "cpu", *sets(root)]  # noqa: E731
    for how in ["truncated", "list", "wrong version", "deleted"]:
        out.append(Case("damaged artefacts", f"model.pt {how} → train", train, expect="recover", setup=on("model.pt", how),
                        words=("wrote", "again from the best weights"), verify=complete))  # fmt: skip
    for how in ["truncated", "empty", "wrong version", "missing keys"]:
        out.append(Case("damaged artefacts", f"model_last.pt {how} → train", train, expect="recover",
                        setup=on("model_last.pt", how), words=("could not be used",), verify=complete))  # fmt: skip
    out += [
        Case("damaged artefacts", "metrics.jsonl cut short → run", prior_stages, expect="recover",
             setup=lambda r: open(r / "tiny" / "metrics.jsonl", "a").write('{"stage": "tr'), words=("not a metrics record",)),
        Case("damaged artefacts", "artefacts.json garbage → run", prior_stages, expect="recover",
             setup=write("tiny/artefacts.json", b"{nope"), words=("not a JSON record",),
             verify=lambda r: sorted(json.loads((r / "tiny" / "artefacts.json").read_text())) == ["bank", "parses", "prior"]),
    ]  # fmt: skip

    # commands that use a trained model: never train, never change the run
    for command in ("sample", "eval", "edit"):
        base = lambda root, c=command: [c, TINY, "--device", "cpu", *sets(root), *(["--out", str(root / "x.png")] if c != "eval" else [])]  # noqa: E731
        out.append(Case("no surprise training", f"{command} without a model", base, trained=False,
                        words=("has no trained model", "never trains", "npdraw run")))  # fmt: skip
        for override in ("model.part_bank.bank_size=30", "training.reg_weight=3", "model.prior.depth=1", "seed=5"):
            out.append(Case("no surprise training", f"{command} --set {override}",
                            lambda root, b=base, o=override: [*b(root), f"--set={o}"], words=("trained with", "never retrains")))  # fmt: skip
        out.append(Case("no surprise training", f"{command} with another config file",
                        lambda root, c=command: [c, str(REPO / "configs" / "mnist.yaml"), "--device", "cpu",
                                                 f"--set=output_dir={root}", "--set=name=tiny",
                                                 *(["--out", str(root / "x.png")] if c != "eval" else [])],
                        words=("trained with",)))  # fmt: skip
    out.append(Case("no surprise training", "sample --model dir without model.pt",
                    lambda r: ["sample", "--model", str(r)], words=("no model file",), trained=False))  # fmt: skip

    # one process at a time in a run directory
    holder = "import sys,time\nfrom npdraw_core.run import Run\nrun=Run.from_file(sys.argv[1],[f'output_dir={sys.argv[2]}','name=tiny'],device='cpu')\nwith run.lock():\n    print('locked',flush=True)\n    time.sleep(600)\n"
    for command in ("run", "bank", "parse", "train-prior", "train"):
        def locked(root: Path, command=command) -> tuple[int, str]:
            process = subprocess.Popen([sys.executable, "-c", holder, TINY, str(root)], stdout=subprocess.PIPE, text=True)
            try:
                process.stdout.readline()
                code, text = in_process([command, TINY, "--device", "cpu", *sets(root)])
                return code, text if f"process {process.pid}" in text else text + "\n(holder not named)"
            finally:
                process.kill()
                process.wait()

        out.append(Case("concurrency", f"{command} while another process holds the run", run=locked, words=("is in use by process",)))
    out += [
        Case("concurrency", "two runs, same config", run=concurrent([]), words=("is in use by process",), trained=False,
             others_write=True),
        Case("concurrency", "two runs, different configs", run=concurrent(["model.part_bank.bank_size=15"]),
             words=("is in use by process",), trained=False, others_write=True),
    ]  # fmt: skip

    # datasets and imports
    imp = lambda *a: lambda root: ["data", "import", str(root / "images"), "--to", str(root / "out.npz"), *a]  # noqa: E731
    for broken, label in [(b"\x89PNG not really", "garbage PNG"), (b"", "empty PNG"), (None, "truncated PNG")]:
        def setup(root: Path, broken=broken) -> None:
            folder = image_folder(root)
            good = (folder / "1.png").read_bytes()
            (folder / "1.png").write_bytes(broken if broken is not None else good[: len(good) // 2])

        out.append(Case("datasets", f"import: {label}", imp(), trained=False, setup=setup, words=("1.png", "cannot read this image")))
    out += [
        Case("datasets", "import: mixed sizes", imp(), trained=False, setup=lambda r: image_folder(r, sizes=(8, 9, 8)), words=("9×9", "--size")),
        Case("datasets", "import: missing folder", imp(), trained=False, words=("is not a folder",)),
        Case("datasets", "import: empty folder", imp(), trained=False, setup=lambda r: (r / "images").mkdir(parents=True), words=("holds no images",)),
        Case("datasets", "import: --to x.txt", lambda r: ["data", "import", str(r / "images"), "--to", str(r / "x.txt")],
             trained=False, setup=lambda r: image_folder(r), words=(".npz",)),
        Case("datasets", "npz dataset: garbage file", lambda r: ["data", "inspect", "--set", "data.type=npz", "--set", f"data.path={r / 'd.npz'}"],
             trained=False, setup=write("d.npz", os.urandom(3000)), words=("d.npz",)),
        Case("datasets", "npz dataset: no images key", lambda r: ["data", "inspect", "--set", "data.type=npz", "--set", f"data.path={r / 'd.npz'}"],
             trained=False, setup=lambda r: __import__("numpy").savez(r / "d.npz", labels=[1, 2]), words=("images",)),
        Case("datasets", "mnist root missing", lambda r: ["data", "inspect", "--set", "data.root=/nonexistent/mnist"],
             trained=False, words=("/nonexistent/mnist",)),
    ]  # fmt: skip

    # interruptions: the next run resumes
    out += [
        Case("interruptions", "kill -9 during VAE training", run=interrupted("train", "training.epochs=3", "train epoch 1", signal.SIGKILL),
             expect="recover", words=("(resumed)",), verify=complete, mutable=TRAINED_FURTHER),
        Case("interruptions", "Ctrl-C during VAE training", run=interrupted("train", "training.epochs=3", "train epoch 1", signal.SIGINT),
             expect="recover", words=("(resumed)",), verify=complete, mutable=TRAINED_FURTHER),
        Case("interruptions", "kill -9 during prior training",
             run=interrupted("train-prior", "prior_training.epochs=3", "prior epoch 1", signal.SIGKILL),
             expect="recover", words=("(resumed)",)),
    ]  # fmt: skip
    return out


# -- running and classifying ----------------------------------------------------------------------------------------
def in_process(argv: list[str]) -> tuple[int, str]:
    from npdraw_core.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as done:
            code = done.code
        except BaseException:  # noqa: BLE001 - an exception out of main is a finding, not a crash of the survey
            import traceback

            traceback.print_exc()
            code = 1
    return code, stdout.getvalue() + stderr.getvalue()


def contents(root: Path) -> dict[str, str]:
    """Each file (lock files aside) → the digest of its content."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != ".lock" and path.suffix != ".lock"
    }


def metrics_text(root: Path) -> str:
    path = root / "tiny" / "metrics.jsonl"
    return path.read_text(errors="replace") if path.is_file() else ""


def classify(case: Case, code: int, text: str, before: dict, after: dict, metrics: tuple[str, str], ok: bool) -> tuple[str, bool]:
    """(outcome, data lost) of one case; see the module docstring."""
    kept = set(after.values())
    lost = not metrics[1].startswith(metrics[0]) or any(
        digest not in kept for path, digest in before.items() if not path.endswith("metrics.jsonl") and path not in case.mutable
    )
    changed = not case.others_write and {path: digest for path, digest in after.items() if path not in case.mutable} != {
        path: digest for path, digest in before.items() if path not in case.mutable
    }
    if code not in (0, 2) or "Traceback (most recent call last)" in text:
        return "traceback", lost
    said = all(word in text for word in case.words)
    if case.expect == "error":
        error_lines = [line for line in text.splitlines() if "error:" in line]
        return ("clear error" if code == 2 and said and len(error_lines) == 1 and not changed else "silent"), lost
    if code == 0 and said and ok:
        return "recovered", lost
    return ("clear error" if code == 2 and said else "silent"), lost


def train_base(root: Path) -> None:
    code, text = in_process(["run", TINY, "--device", "cpu", *sets(root)])
    if code != 0:
        raise SystemExit(f"training the base run failed:\n{text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="run only these classes (e.g. settings options)")
    parser.add_argument("--keep", help="keep the work folders here (default: a temporary folder, removed)")
    parser.add_argument("--verbose", action="store_true", help="one line per case, with the message")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("NPDRAW_DEBUG", "0")
    work = Path(args.keep or tempfile.mkdtemp(prefix="npdraw-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    chosen = [case for case in cases() if not args.only or case.cls in args.only]
    started = time.perf_counter()
    base = work / "base"
    if any(case.trained for case in chosen) and not (base / "tiny" / "model.pt").exists():
        train_base(base)
    counts: dict[str, Counter] = defaultdict(Counter)
    findings = []
    for number, case in enumerate(chosen):
        root = work / f"case{number:03d}"
        shutil.rmtree(root, ignore_errors=True)
        if case.trained:  # a copy whose records name the copy, as a run there would have written them
            shutil.copytree(base, root)
            for record in (root / "tiny" / "config.yaml", root / "tiny" / "artefacts.json"):
                record.write_text(record.read_text().replace(str(base), str(root)))
        else:
            root.mkdir(parents=True)
        if case.setup is not None:
            case.setup(root)
        before, metrics_before = contents(root), metrics_text(root)
        if case.run is not None:
            code, text = case.run(root)
        else:
            code, text = in_process(case.argv(root))
        ok = True
        if case.verify is not None:
            try:
                ok = bool(case.verify(root))
            except Exception as error:  # noqa: BLE001
                ok, text = False, f"{text}\n(verify: {error})"
        outcome, lost = classify(case, code, text, before, contents(root), (metrics_before, metrics_text(root)), ok)
        counts[case.cls]["tried"] += 1
        counts[case.cls][outcome] += 1
        counts[case.cls]["data lost"] += lost
        if outcome in ("traceback", "silent") or lost:
            findings.append((case, outcome, code, text))
        if args.verbose:
            message = next((line for line in text.splitlines() if "error:" in line or "moved it" in line), "")
            print(f"[{case.cls}] {case.name}: {outcome}{' + DATA LOST' if lost else ''} (exit {code}) {message[:160]}", flush=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    classes = list(dict.fromkeys(case.cls for case in chosen))
    print("\n| class | tried | " + " | ".join(OUTCOMES) + " |")
    print("|---|---|" + "---|" * len(OUTCOMES))
    total = Counter()
    for cls in classes:
        total.update(counts[cls])
        print(f"| {cls} | {counts[cls]['tried']} | " + " | ".join(str(counts[cls][o]) for o in OUTCOMES) + " |")
    print(f"| **all** | {total['tried']} | " + " | ".join(str(total[o]) for o in OUTCOMES) + " |")
    for case, outcome, code, text in findings:
        print(f"\n{outcome}: [{case.cls}] {case.name} (exit {code})\n{text[-1500:]}")
    print(json.dumps({"cases": total["tried"], **{o: total[o] for o in OUTCOMES},
                      "seconds": round(time.perf_counter() - started, 1)}))  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
