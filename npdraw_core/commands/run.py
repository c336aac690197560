"""`npdraw run`: the whole pipeline from one config, ending with a summary a person can act on."""

from __future__ import annotations

from npdraw_core.commands import add_run_arguments, run_from_args
from npdraw_core.config import STAGES


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run the whole pipeline: " + " → ".join(STAGES))
    add_run_arguments(parser)
    parser.add_argument(
        "--stages", nargs="+", metavar="STAGE", choices=STAGES, help=f"run up to these stages ({', '.join(STAGES)})"
    )
    parser.set_defaults(handler=_run)


def _run(args) -> None:
    from npdraw_core.pipeline import run_pipeline, summary

    run = run_from_args(args)
    run_pipeline(run, args.stages)
    print(summary(run))
