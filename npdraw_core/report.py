"""`npdraw report RUN_DIR… --out report.md`: one Markdown page about finished (or running) runs.

The page holds the resolved configs side by side (the keys that differ first), the final metrics, training
curves drawn from each run's metrics.jsonl (VAE losses per epoch, the prior's validation NLL, parse PSNR
per split), the latest sample grid (samples above their canvases), the parse figure, and links to the
artefacts. Figures go into a folder beside the page (`report_files/` for `report.md`), so the page and
its folder can be moved or committed together; links to run files are relative to the page.

Everything is read from the run directory as `npdraw_core.run.Run` and the stages write it:
config.yaml, metrics.jsonl, artefacts.json, samples/epoch_*.png, parses.png, model.pt, model_last.pt, and
a VAE baseline's metrics.json in `baseline-vae/` when `npdraw baseline` trained one there.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npdraw_core import config_yaml
from npdraw_core.checkpoint import atomic_write_text, read_metrics

FILES = {  # the run-directory files a report links to, with what they are
    "config.yaml": "resolved config",
    "metrics.jsonl": "metrics, one JSON record per line",
    "model.pt": "model (best validation weights): npdraw sample --model",
    "model_last.pt": "last training checkpoint (resumes training)",
    "artefacts.json": "the cached bank, parses and prior this run used",
    "parses.png": "test images beside their parses",
}
BASELINE_DIR = "baseline-vae"  # where `npdraw baseline train` puts a run's VAE baseline by default
VAE_TERMS = ("neg_elbo", "reconstruction", "kl", "parse_ce")


class ReportError(ValueError):
    """A folder given to `npdraw report` is not a run directory."""


@dataclass
class RunRecord:
    """What a report shows of one run directory."""

    directory: Path
    name: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    artefacts: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    parses: dict[str, dict[str, float]] = field(default_factory=dict)  # split → parse PSNR, draw fraction

    def stage(self, name: str) -> list[dict[str, Any]]:
        return [record for record in self.records if record.get("stage") == name]

    def last(self, name: str) -> dict[str, Any] | None:
        records = self.stage(name)
        return records[-1] if records else None


def parse_metrics(directory: str | Path) -> dict[str, dict[str, float]]:
    """Parse PSNR and draw fraction per split of a run: its own parse records, else (the parses came from
    the stage cache, computed by another run) the metrics stored with the cached parses it used."""
    directory = Path(directory)
    records = [r for r in read_metrics(directory / "metrics.jsonl") if r.get("stage") == "parse"]
    if records:
        return {r["split"]: {k: v for k, v in r.items() if k not in ("stage", "time", "split")} for r in records}
    try:
        entry = json.loads((directory / "artefacts.json").read_text())["parses"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return {}
    from npdraw_core.checkpoint import CheckpointError, load_checkpoint

    try:
        return dict(load_checkpoint(entry["path"]).get("metrics", {}))
    except (CheckpointError, OSError, KeyError, TypeError):
        return {}


def load_run(directory: str | Path) -> RunRecord:
    directory = Path(directory)
    config_path = directory / "config.yaml"
    if not config_path.is_file():
        raise ReportError(
            f"{directory} is not a run directory: it has no config.yaml (pass folders such as runs/demo that "
            "`npdraw run` wrote)"
        )
    config = config_yaml.load(config_path.read_text()) or {}
    artefacts: dict[str, Any] = {}
    if (directory / "artefacts.json").is_file():
        try:
            artefacts = json.loads((directory / "artefacts.json").read_text())
        except json.JSONDecodeError:
            artefacts = {}
    baseline = None
    baseline_metrics = directory / BASELINE_DIR / "metrics.json"
    if baseline_metrics.is_file():
        baseline = json.loads(baseline_metrics.read_text())
    return RunRecord(
        directory=directory, name=str(config.get("name", directory.name)), config=config,
        records=read_metrics(directory / "metrics.jsonl"), artefacts=artefacts, baseline=baseline,
        parses=parse_metrics(directory),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Tables


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"part_bank": {"bank_size": 50}}} → {"model.part_bank.bank_size": 50}."""
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(cell(item) for item in value) + "]"
    return str(value).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def config_table(runs: list[RunRecord]) -> str:
    """Every config key, one column per run; with several runs the keys that differ come first (bold)."""
    flats = [flatten(run.config) for run in runs]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    differing = [key for key in keys if len({json.dumps(flat.get(key), default=str) for flat in flats}) > 1]
    same = [key for key in keys if key not in differing]
    header = ["key", *[run.name for run in runs]]
    rows = [[f"**{key}**", *[flat.get(key) for flat in flats]] for key in differing]
    rows += [[key, *[flat.get(key) for flat in flats]] for key in same]
    return markdown_table(header, rows)


def final_metrics(run: RunRecord) -> dict[str, Any]:
    """The headline numbers of a run: parse PSNR per split, the prior's best validation NLL, the VAE's last
    epoch, and the evaluation (test NLL bound, FIDs)."""
    metrics: dict[str, Any] = {}
    for split, values in run.parses.items():
        metrics[f"parse PSNR {split} (dB)"] = values.get("psnr_mean")
    prior = run.last("prior")
    if prior:
        metrics["prior epochs"] = prior.get("epoch", -1) + 1
        metrics["prior valid NLL (nats)"] = prior.get("best")
    train = run.last("train")
    if train:
        metrics["VAE epochs"] = train.get("epoch", -1) + 1
        for term in VAE_TERMS:
            if f"valid_{term}" in train:
                metrics[f"valid {term.replace('_', ' ')}"] = train[f"valid_{term}"]
    evaluation = run.last("eval")
    if evaluation:
        for key in ("nll_nats", "bits_per_dim", "nll_images", "nll_samples"):
            if key in evaluation:
                metrics[f"test {key}"] = evaluation[key]
        for key, value in evaluation.items():
            if key.startswith("fid_"):
                metrics[key] = value
    if run.baseline:
        for key in ("nll_nats", *sorted(k for k in run.baseline if k.startswith("fid_")), "cpu_seconds", "epochs"):
            if key in run.baseline:
                metrics[f"VAE baseline {key}"] = run.baseline[key]
    return metrics


def metrics_table(runs: list[RunRecord]) -> str:
    per_run = [final_metrics(run) for run in runs]
    keys = list(dict.fromkeys(key for metrics in per_run for key in metrics))
    return markdown_table(["metric", *[run.name for run in runs]], [[key, *[m.get(key) for m in per_run]] for key in keys])


# ---------------------------------------------------------------------------------------------------------
# Figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run: RunRecord, path: Path) -> bool:
    """VAE losses per epoch (train and valid), the prior's NLL per epoch and parse PSNR per split, in one
    PNG; False (nothing written) when the run has logged none of them yet."""
    train, prior, parse = run.stage("train"), run.stage("prior"), run.parses
    if not (train or prior or parse):
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    vae_axis, terms_axis, prior_axis, parse_axis = axes
    if train:
        epochs = [record["epoch"] + 1 for record in train]
        for split, style in (("train", "-"), ("valid", "--")):
            values = [record.get(f"{split}_neg_elbo") for record in train]
            vae_axis.plot(epochs, values, style, marker="o", label=f"{split} −ELBO")
            for colour, term in enumerate(VAE_TERMS[1:]):  # one colour per term, train solid, valid dashed
                terms_axis.plot(epochs, [record.get(f"{split}_{term}") for record in train], style, marker="o",
                                color=f"C{colour}", label=f"{split} {term.replace('_', ' ')}")  # fmt: skip
    _label(vae_axis, "VAE: −ELBO per epoch", "nats / image", bool(train))
    _label(terms_axis, "VAE: reconstruction, KL, parse CE", "nats / image", bool(train))
    if prior:
        epochs = [record["epoch"] + 1 for record in prior]
        prior_axis.plot(epochs, [r.get("train_nll") for r in prior], "-", marker="o", label="train NLL")
        prior_axis.plot(epochs, [r.get("valid_nll") for r in prior], "--", marker="o", label="valid NLL")
    _label(prior_axis, "prior: NLL of the parses", "nats / image", bool(prior))
    if parse:
        splits = list(parse)
        values = [parse[split].get("psnr_mean") for split in splits]
        bars = parse_axis.bar(splits, values, color="tab:green")
        parse_axis.bar_label(bars, fmt="%.2f")
        parse_axis.set_ylim(0, max(values) * 1.15)
    parse_axis.set_title("parse PSNR per split")
    parse_axis.set_ylabel("dB")
    if not prior:  # a prior from the stage cache (trained by another run) has no records here
        prior_axis.set_title("prior: NLL of the parses (from the cache: no records)")
    figure.suptitle(f"{run.name}: training curves (metrics.jsonl)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _label(axis, title: str, ylabel: str, has_data: bool) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_title(title)
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if has_data:
        axis.legend(fontsize=7)
    else:
        axis.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=axis.transAxes)


def plot_comparison(runs: list[RunRecord], path: Path) -> bool:
    """Several runs on shared axes: validation −ELBO of the VAE and validation NLL of the prior per epoch."""
    if len(runs) < 2:
        return False
    plt = _pyplot()
    figure, (vae_axis, prior_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in runs:
        train, prior = run.stage("train"), run.stage("prior")
        if train:
            vae_axis.plot([r["epoch"] + 1 for r in train], [r.get("valid_neg_elbo") for r in train], marker="o", label=run.name)
        if prior:
            prior_axis.plot([r["epoch"] + 1 for r in prior], [r.get("valid_nll") for r in prior], marker="o", label=run.name)
    _label(vae_axis, "VAE: valid −ELBO", "nats / image", any(run.stage("train") for run in runs))
    _label(prior_axis, "prior: valid NLL", "nats / image", any(run.stage("prior") for run in runs))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


# ---------------------------------------------------------------------------------------------------------
# The page


def relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write the Markdown page `out` (and its figures in `<out stem>_files/`) about `run_dirs`."""
    if not run_dirs:
        raise ReportError("give at least one run directory, e.g. npdraw report runs/demo --out report.md")
    out = Path(out)
    if out.suffix.lower() != ".md":
        raise ReportError(f"--out {out}: the report is Markdown; give a path ending in .md")
    runs = [load_run(directory) for directory in run_dirs]
    names = [run.name for run in runs]
    for i, run in enumerate(runs):  # two runs of one name (different output_dirs) get distinct files
        if names.count(run.name) > 1:
            run.name = f"{run.name} ({i + 1})"
    page_dir = out.parent
    files_dir = page_dir / f"{out.stem}_files"
    files_dir.mkdir(parents=True, exist_ok=True)

    lines = [f"# Report: {', '.join(run.name for run in runs)}", ""]
    lines += ["Written by `npdraw report " + " ".join(str(d) for d in run_dirs) + f" --out {out}`.", ""]
    lines += [markdown_table(["run", "directory", "records"], [
        [run.name, f"[{run.directory}]({relative(run.directory, page_dir)})", len(run.records)] for run in runs
    ]), ""]  # fmt: skip
    lines += ["## Final metrics", "", metrics_table(runs), ""]
    lines += ["## Training curves", ""]
    comparison = files_dir / "comparison.png"
    if plot_comparison(runs, comparison):
        lines += [f"![validation curves of every run]({relative(comparison, page_dir)})", ""]
    for run in runs:
        figure = files_dir / f"curves_{safe_name(run.name)}.png"
        if plot_curves(run, figure):
            lines += [f"**{run.name}**", "", f"![training curves of {run.name}]({relative(figure, page_dir)})", ""]
        else:
            lines += [f"**{run.name}**: no training records in metrics.jsonl yet.", ""]
    lines += ["## Samples and parses", ""]
    for run in runs:
        lines += [f"### {run.name}", ""]
        grids = sorted((run.directory / "samples").glob("epoch_*.png"))
        if grids:
            copied = files_dir / f"samples_{safe_name(run.name)}_{grids[-1].name}"
            shutil.copyfile(grids[-1], copied)
            lines += [f"Samples (top four rows) above their canvases (bottom four rows), after epoch "
                      f"{int(grids[-1].stem.split('_')[-1]) + 1}:", "",
                      f"![samples of {run.name}]({relative(copied, page_dir)})", ""]  # fmt: skip
        if (run.directory / "parses.png").is_file():
            copied = files_dir / f"parses_{safe_name(run.name)}.png"
            shutil.copyfile(run.directory / "parses.png", copied)
            lines += ["Test images beside their parses (pairs: image, parse):", "",
                      f"![parses of {run.name}]({relative(copied, page_dir)})", ""]  # fmt: skip
    lines += ["## Configs", "", config_table(runs), ""]
    lines += ["## Artefacts", "", "Links lead into the run directories and the shared stage cache, relative to this page: "
              "they open where those folders exist (the figures above are copies beside the page).", ""]
    for run in runs:
        lines += [f"### {run.name}", ""]
        rows = [[f"[{name}]({relative(run.directory / name, page_dir)})", what]
                for name, what in FILES.items() if (run.directory / name).is_file()]  # fmt: skip
        grids = sorted((run.directory / "samples").glob("epoch_*.png"))
        if grids:
            rows.append([f"[samples/]({relative(run.directory / 'samples', page_dir)})", f"{len(grids)} sample grids, one per epoch"])
        if run.baseline is not None:
            rows.append([f"[{BASELINE_DIR}/]({relative(run.directory / BASELINE_DIR, page_dir)})", "the VAE baseline"])
        for kind, entry in run.artefacts.items():
            if isinstance(entry, dict) and "path" in entry:
                rows.append([f"[{kind} {entry.get('key')}]({relative(Path(entry['path']), page_dir)})", f"cached {kind} (shared stage cache)"])
        lines += [markdown_table(["file", "what"], rows), ""]
    atomic_write_text(out, "\n".join(lines))
    return out
