"""`npdraw run`: the whole pipeline from one config — bank → parse → prior → train → eval.

Bank, parses and prior come from the shared stage cache (`npdraw_core.stage_cache`), keyed by exactly the
settings that determine them, so runs and Tune trials that share those settings compute them once; the
VAE stage trains in the run directory. Every stage skips work that is done, so re-running is cheap and a
killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

import torch

from npdraw_core.bank import PartBank, build_bank
from npdraw_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from npdraw_core.config import STAGES, RunConfig, config_hash
from npdraw_core.interfaces import Prior
from npdraw_core.loop import EpochCallback, check_training_checkpoint
from npdraw_core.run import Run

log = logging.getLogger(__name__)


# -- cache keys: exactly what determines each artefact ---------------------------------------------------
def bank_key(config: RunConfig) -> str:
    model = config.model
    return config_hash("bank", config.data, model.canvas_size, model.patch_size, model.part_bank)


def parses_key(config: RunConfig) -> str:
    return config_hash("parses", bank_key(config), config.model.parser)


def prior_key(config: RunConfig) -> str:
    """`<lineage>-e<epochs>-p<patience>`: the lineage hashes everything but the schedule's length, so a
    longer schedule of the same lineage continues from a shorter one's checkpoint instead of restarting."""
    settings = config.prior_training
    lineage = config_hash("prior", parses_key(config), config.model.prior, config.seed, settings.lineage())
    return f"{lineage}-e{settings.epochs}-p{settings.early_stopping_patience}"


# -- stages ------------------------------------------------------------------------------------------------
def bank_stage(run: Run) -> PartBank:
    """Stage 1: the part bank, built from the training split (once per bank key)."""
    from npdraw_core.data import canvas_images

    key = bank_key(run.config)

    def compute(path: Path, _partial) -> dict:
        chosen = run.config.model.part_bank
        images = canvas_images(run.dataset.load("train"), run.config.model.canvas_size)
        bank = build_bank(images, run.grid, run.build("part_bank", chosen), chosen.config)
        bank.metadata["engine"] = chosen.type
        bank.save(path, key)
        shown = ("engine", "bank_size", "patch_size", "num_patches", "objective", "build_seconds")
        run.log("bank", **{k: bank.metadata[k] for k in shown})
        return bank.to_dict(key)

    payload = _cached(run, "bank", key, compute, required=("exemplars",), check=_check_bank)
    return PartBank.from_dict(payload)


def parse_stage(run: Run, bank: PartBank) -> dict:
    """Stage 2: the parse of every image (once per parses key); images beside their parses in parses.png."""
    from npdraw_core.parsing import parse_splits

    key = parses_key(run.config)
    figure = run.cache.path("parses", key).with_suffix(".png")

    def compute(path: Path, _partial) -> dict:
        parser = run.build("parser", run.config.model.parser, shape=run.model_shape(bank.bank_size))
        payload = parse_splits(
            parser, run.dataset, bank, run.grid, canvas_size=run.config.model.canvas_size, device=run.device,
            figure_path=figure, record=run.log,
        )  # fmt: skip
        payload["config_hash"] = key
        save_checkpoint(payload, path)
        return payload

    payload = _cached(run, "parses", key, compute, required=("train", "valid", "test", "metrics"))
    if figure.is_file():
        shutil.copyfile(figure, run.path("parses.png"))
    return payload


def prior_stage(run: Run, bank: PartBank, parses: dict) -> tuple[Prior, str]:
    """Stage 3: the trained prior (best validation weights, eval mode) and its cache key, which the VAE
    stage folds into its own. Trained once per prior key; an interrupted training resumes."""
    from npdraw_core.prior_training import build_prior, train_prior

    key = prior_key(run.config)

    def compute(path: Path, partial: dict | None) -> dict:
        start = partial or _shorter_schedule(run, key)
        train_prior(run, bank, parses, checkpoint=path, stage_hash=key, resume_from=start)
        return load_checkpoint(path)

    payload = _cached(
        run, "prior", key, compute, required=("complete", "best_state_dict"), check=check_training_checkpoint,
        done=lambda payload: payload["complete"],
    )
    prior = build_prior(run, bank)
    prior.load_state_dict(payload["best_state_dict"])
    return prior.eval(), key


def _shorter_schedule(run: Run, key: str) -> dict | None:
    """The most-trained finished checkpoint of the same lineage with fewer epochs, to continue from."""
    lineage, epochs, patience = re.fullmatch(r"(.+)-e(\d+)-p(.+)", key).groups()
    candidates = []
    for path in run.cache.path("prior", key).parent.glob(f"{lineage}-e*-p{patience}.pt"):
        shorter = int(re.fullmatch(r".+-e(\d+)-p.+", path.stem).group(1))
        if shorter < int(epochs):
            candidates.append((shorter, path))
    for _, path in sorted(candidates, reverse=True):
        check = _entry_check("prior", path.stem, "complete", "best_state_dict", check=check_training_checkpoint)
        payload = run.cache.load("prior", path.stem, check)
        if payload is not None and payload.get("complete"):
            log.info("[prior] continuing from %s (a shorter schedule of the same settings)", path)
            return payload
    return None


def _entry_check(kind: str, key: str, *required: str, check=None):
    """A check of a stored stage artefact: its keys, its own check, and that it was made for `key` (a
    file copied or renamed into the cache is not trusted). A failing entry is set aside and recomputed."""

    def check_entry(payload: dict, path: Path) -> None:
        missing = [name for name in (*required, "config_hash") if name not in payload]
        if missing:
            raise CheckpointError(f"{str(path)!r} is not a complete {kind} artefact: it lacks {', '.join(missing)}")
        if check is not None:
            check(payload, path)
        if payload["config_hash"] != key:
            raise CheckpointError(f"{str(path)!r} was made for key {payload['config_hash']!r}, not {key!r}")

    return check_entry


def _check_bank(payload: dict, path: Path) -> None:
    exemplars = payload["exemplars"]
    if not isinstance(exemplars, torch.Tensor) or exemplars.dim() != 4 or not len(exemplars):
        raise CheckpointError(f"{str(path)!r}: 'exemplars' is not a (bank_size, C, K, K) tensor")


def _cached(run: Run, kind: str, key: str, compute, *, required: tuple[str, ...] = (), check=None, **options) -> dict:
    options["check"] = _entry_check(kind, key, *required, check=check)
    payload, computed = run.cache.get_or_compute(kind, key, compute, **options)
    if not computed:
        log.info("[%s] %s matches the config; skipping", kind, run.cache.path(kind, key))
    run.record_artefact(kind, key)
    return payload


def stages_up_to(stages: list[str]) -> list[str]:
    """A later stage needs the earlier ones: every stage up to the last one asked for, in order."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)} (in that order)")
    return list(STAGES[: max(STAGES.index(s) for s in stages) + 1]) if stages else []


def run_pipeline(run: Run, stages: list[str] | None = None, *, on_epoch: EpochCallback | None = None) -> dict:
    """Run the stages (default: the config's) and return the evaluation metrics, if evaluated.
    `on_epoch(metrics)` is called after every epoch of the VAE stage (Ray Tune reports from it)."""
    from npdraw_core.training import train_model

    stages = stages_up_to(list(stages if stages is not None else run.config.stages))
    started = time.perf_counter()
    # process CPU seconds of each stage (a cached stage costs ~0): the budget a comparison should grant, and
    # fair when other processes share the cores, unlike wall time
    cpu_seconds: dict[str, float] = {}

    def timed(stage: str, compute, *args, **kwargs):
        cpu_started = time.process_time()
        result = compute(*args, **kwargs)
        cpu_seconds[stage] = round(time.process_time() - cpu_started, 2)
        return result

    if stages:
        run.dataset  # noqa: B018 - a dataset that cannot be opened stops the run before it writes anything
    with run.lock():  # one process at a time in a run directory (RunBusyError names the other one)
        run.record_config()
        results: dict = {}
        bank = timed("bank", bank_stage, run) if stages else None
        if "parse" in stages:
            parses = timed("parse", parse_stage, run, bank)
        if "prior" in stages:
            prior, key = timed("prior", prior_stage, run, bank, parses)
        if "train" in stages:
            model = timed("train", train_model, run, bank.exemplars, parses, prior, key, on_epoch=on_epoch)
        if "eval" in stages:
            from npdraw_core.evaluation import evaluate

            results = timed("eval", evaluate, run, model)
        run.log("run", stages=stages, seconds=time.perf_counter() - started, cpu_seconds=cpu_seconds)
    return results


def summary(run: Run) -> str:
    """What a person can act on after `npdraw run`: the headline metrics and the files to open."""
    from npdraw_core.checkpoint import read_metrics

    records = read_metrics(run.path("metrics.jsonl"))
    last = {r["stage"]: r for r in records}  # the latest record of each stage
    lines = [f"run {run.config.name}: {run.dir}"]
    if "parse" in last:
        test = [r for r in records if r["stage"] == "parse" and r.get("split") == "test"]
        if test:
            lines.append(f"  parse PSNR (test) {test[-1]['psnr_mean']:.2f} dB, draws {test[-1]['draw_fraction']:.0%} of steps")
    if "prior" in last:
        lines.append(f"  prior: validation NLL {last['prior']['best']:.2f} nats/image")
    if "train" in last:
        train = last["train"]
        lines.append(f"  VAE: epoch {train['epoch']}, validation −ELBO {train['valid_neg_elbo']:.2f} nats")
    if "eval" in last:
        evaluation = last["eval"]
        scores = [f"{k} {v:.2f}" for k, v in evaluation.items() if k.startswith("fid_") and k != "fid_samples"]
        if "nll_nats" in evaluation:
            scores.insert(0, f"test NLL {evaluation['nll_nats']:.2f} nats ({evaluation['nll_images']} images)")
        lines.append("  eval: " + ", ".join(scores))
    files = [("model", "model.pt"), ("parses", "parses.png"), ("metrics", "metrics.jsonl")]
    grids = sorted(run.path("samples").glob("epoch_*.png"))
    if grids:
        files.insert(0, ("samples", str(grids[-1].relative_to(run.dir))))
    lines.append("  open: " + ", ".join(f"{run.path(name)} ({what})" for what, name in files if run.path(name).exists()))
    if run.path("model.pt").exists():
        lines.append(f"  more samples: npdraw sample --model {run.path('model.pt')} --num 64")
    return "\n".join(lines)

