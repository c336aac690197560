"""`npdraw train`: encoder + decoder with the prior frozen (runs bank, parse and prior first if needed)."""

from __future__ import annotations

from npdraw_core.commands import add_run_arguments, run_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train the VAE (encoder + decoder) with the prior frozen")
    add_run_arguments(parser)
    parser.set_defaults(handler=_train)


def _train(args) -> None:
    from npdraw_core.pipeline import run_pipeline

    run_pipeline(run_from_args(args), ["train"])
