"""`npdraw run`: the whole pipeline from one config — bank → parse → prior → train → eval.

Every stage skips work whose artefact already matches the config, so re-running is cheap and a killed run
resumes where it stopped.
"""

from __future__ import annotations

import time

from npdraw_core.bank import ensure_bank
from npdraw_core.parsing import ensure_parses
from npdraw_core.prior_training import ensure_prior
from npdraw_core.run import Run

STAGES = ("bank", "parse", "prior", "train", "eval")


def check_stages(stages: list[str]) -> list[str]:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)} (in that order)")
    # A later stage needs the earlier ones, so run every stage up to the last one asked for.
    return list(STAGES[: max(STAGES.index(s) for s in stages) + 1]) if stages else []


def run_pipeline(run: Run, stages: list[str] | None = None) -> dict:
    """Run the stages (default: the config's) and return the evaluation metrics, if evaluated."""
    stages = check_stages(list(stages if stages is not None else run.config.stages))
    started = time.perf_counter()
    results: dict = {}
    bank = ensure_bank(run)
    if "parse" in stages:
        parses = ensure_parses(run, bank)
    if "prior" in stages:
        prior, prior_hash = ensure_prior(run, bank, parses)
    if "train" in stages:
        from npdraw_core.training import ensure_model

        model = ensure_model(run, bank.exemplars, parses, prior, prior_hash)
    if "eval" in stages:
        from npdraw_core.evaluation import evaluate

        results = evaluate(run, model)
    run.log("run", stages=stages, seconds=time.perf_counter() - started)
    return results
