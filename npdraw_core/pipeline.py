"""`npdraw run`: the whole pipeline from one config — bank → parse → prior → train → eval.

Every stage skips work whose artefact already matches the config, so re-running is cheap and a killed run
resumes where it stopped.
"""

from __future__ import annotations

import time

from npdraw_core.bank import ensure_bank
from npdraw_core.evaluation import evaluate
from npdraw_core.model import NPDraw
from npdraw_core.parsing import ensure_parses
from npdraw_core.prior_training import ensure_prior
from npdraw_core.run import Run
from npdraw_core.training import ensure_model

STAGES = ("bank", "parse", "prior", "train", "eval")


def stages_up_to(stages: list[str]) -> list[str]:
    """A later stage needs the earlier ones: every stage up to the last one asked for, in order."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)} (in that order)")
    return list(STAGES[: max(STAGES.index(s) for s in stages) + 1]) if stages else []


def run_pipeline(run: Run, stages: list[str] | None = None) -> dict:
    """Run the stages (default: the config's) and return the evaluation metrics, if evaluated."""
    stages = stages_up_to(list(stages if stages is not None else run.config.stages))
    started = time.perf_counter()
    results: dict = {}
    bank = ensure_bank(run) if stages else None
    if "parse" in stages:
        parses = ensure_parses(run, bank)
    if "prior" in stages:
        prior, prior_hash = ensure_prior(run, bank, parses)
    if "train" in stages:
        model = ensure_model(run, bank.exemplars, parses, prior, prior_hash)
    if "eval" in stages:
        results = evaluate(run, model)
    run.log("run", stages=stages, seconds=time.perf_counter() - started)
    return results


def load_model(run: Run) -> NPDraw:
    """The trained model of a run, training whatever is missing first (a finished run only loads)."""
    bank = ensure_bank(run)
    parses = ensure_parses(run, bank)
    prior, prior_hash = ensure_prior(run, bank, parses)
    return ensure_model(run, bank.exemplars, parses, prior, prior_hash)
