"""`npdraw run`: the whole pipeline from one config."""

from __future__ import annotations

from npdraw_core.commands import add_run_arguments, run_from_args
from npdraw_core.pipeline import STAGES, run_pipeline


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run the whole pipeline: " + " → ".join(STAGES))
    add_run_arguments(parser)
    parser.add_argument("--stages", nargs="+", metavar="STAGE", help=f"run up to these stages ({', '.join(STAGES)})")
    parser.set_defaults(handler=lambda args: run_pipeline(run_from_args(args), args.stages))
