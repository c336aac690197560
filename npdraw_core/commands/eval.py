"""`npdraw eval`: importance-weighted NLL and Fréchet distances of a trained run."""

from __future__ import annotations

from npdraw_core.commands import add_run_arguments, run_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="test NLL (importance-weighted bound) and FID of samples")
    add_run_arguments(parser)
    parser.set_defaults(handler=_eval)


def _eval(args) -> None:
    from npdraw_core.pipeline import run_pipeline

    run_pipeline(run_from_args(args), ["eval"])
