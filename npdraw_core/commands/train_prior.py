"""`npdraw train-prior`: pre-train the prior on the parses (runs the bank and parse stages first if needed)."""

from __future__ import annotations

from npdraw_core.commands import add_run_arguments, run_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("train-prior", help="pre-train the prior on parsed training images")
    add_run_arguments(parser)
    parser.set_defaults(handler=_train_prior)


def _train_prior(args) -> None:
    from npdraw_core.pipeline import prior_key, run_pipeline

    run = run_from_args(args)
    run_pipeline(run, ["prior"])
    print(f"prior checkpoint: {run.cache.path('prior', prior_key(run.config))} (metrics in {run.path('metrics.jsonl')})")
