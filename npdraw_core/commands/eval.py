"""`npdraw eval`: importance-weighted NLL and Fréchet distances of a trained run."""

from __future__ import annotations

from npdraw_core.commands import add_run_arguments, run_from_args
from npdraw_core.pipeline import run_pipeline


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="test NLL (importance-weighted bound) and FID of samples")
    add_run_arguments(parser)
    parser.set_defaults(handler=lambda args: run_pipeline(run_from_args(args), ["eval"]))
