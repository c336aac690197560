"""One Tune trial: rebuild the run from the config dict in the worker, take bank, parses and prior from the
shared stage cache, train the VAE through the core's loop and report every epoch with a checkpoint.

Workers never receive component objects: the config dict travels, and each worker builds its components
through its own plugin registry (so a plugin missing on a node fails that trial with the registry's
message). A restarted trial continues from `tune.get_checkpoint()`.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from npdraw_tune.search import SearchSpec

CHECKPOINT_FILE = "model_last.pt"


def run_trial(config: dict[str, Any], *, base: dict, spec: SearchSpec, cache_dir: str, threads: int) -> None:
    """The trainable: `config` holds this trial's values of the search space's dotted keys."""
    import ray
    from ray import tune

    from npdraw_core.config import ConfigError, load_config
    from npdraw_core.pipeline import bank_stage, parse_stage, prior_stage
    from npdraw_core.run import Run
    from npdraw_core.threads import configure_threads, nll_workers_within
    from npdraw_core.training import train_model

    configure_threads(max(1, threads))  # the trial's CPUs, with the CLI's other CPU settings
    context = tune.get_context()
    node_id = ray.get_runtime_context().get_node_id()
    try:
        run_config = load_config(nll_workers_within(base, threads), spec.overrides(config))
        # the trial id is the run name as it is, not a YAML value to parse
        run_config = dataclasses.replace(run_config, name=context.get_trial_id())
    except ConfigError as error:
        raise RuntimeError(f"trial {context.get_trial_id()} on node {node_id}: {error} (a component's "
                           "plugin must be installed on every node of the cluster)") from None  # fmt: skip
    run = Run(run_config, cache_dir=cache_dir)
    _restore(tune.get_checkpoint(), run.path(CHECKPOINT_FILE))

    started = time.perf_counter()
    bank = bank_stage(run)
    parses = parse_stage(run, bank)
    prior, key = prior_stage(run, bank, parses)
    fixed = {
        "parse_psnr": parses["metrics"]["test"]["psnr_mean"], "node_id": node_id, "device": str(run.device),
        "stage_seconds": time.perf_counter() - started,  # bank + parses + prior: near 0 when cached
    }  # fmt: skip
    training_started = time.perf_counter()
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any]) -> None:
        last.update(metrics, training_seconds=time.perf_counter() - training_started)
        with tempfile.TemporaryDirectory() as directory:
            shutil.copy(run.path(CHECKPOINT_FILE), directory)
            tune.report({**fixed, **last}, checkpoint=tune.Checkpoint.from_directory(directory))

    model = train_model(run, bank.exemplars, parses, prior, key, on_epoch=report)
    if spec.evaluate:
        from npdraw_core.evaluation import evaluate

        tune.report({**fixed, **last, **evaluate(run, model)})


def _restore(checkpoint, target: Path) -> None:
    """Put the checkpoint's training state in the run directory unless the run directory holds a later one
    (on one machine it usually does; on a cluster the trial may restart on another node)."""
    if checkpoint is None:
        return
    from npdraw_core.checkpoint import CheckpointError, load_checkpoint

    with checkpoint.as_directory() as directory:
        source = Path(directory) / CHECKPOINT_FILE
        try:
            local = load_checkpoint(target)["epoch"] if target.exists() else -1
        except CheckpointError:
            local = -1
        if load_checkpoint(source)["epoch"] > local:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
