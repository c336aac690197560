"""`npdraw parse`: parse the train/valid/test images with the run's parser and report parse PSNR (builds
the part bank first when it is missing or stale)."""

from __future__ import annotations

from npdraw_core.bank import ensure_bank
from npdraw_core.commands import add_run_arguments, run_from_args
from npdraw_core.parsing import ensure_parses


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "parse", help="parse every split with the part bank; PSNR and a PNG of parses"
    )
    add_run_arguments(parser)
    parser.set_defaults(handler=_parse)


def _parse(args) -> None:
    run = run_from_args(args)
    parses = ensure_parses(run, ensure_bank(run))
    for split, metrics in parses["metrics"].items():
        print(
            f"{split}: parse PSNR {metrics['psnr_mean']:.2f} dB (mean of per-image), "
            f"{metrics['psnr_of_mean_mse']:.2f} dB (of the mean MSE), draw fraction {metrics['draw_fraction']:.3f}"
        )
    print(f"parses: {run.path('parses.pt')}, figure: {run.path('parses.png')}")
