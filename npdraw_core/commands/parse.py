"""`npdraw parse`: parse the train/valid/test images with the run's parser and report parse PSNR (builds
the part bank first when it is missing or stale)."""

from __future__ import annotations

from npdraw_core.commands import add_run_arguments, run_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "parse", help="parse every split with the part bank; PSNR and a PNG of parses"
    )
    add_run_arguments(parser)
    parser.set_defaults(handler=_parse)


def _parse(args) -> None:
    from npdraw_core.pipeline import bank_stage, parse_stage, parses_key

    run = run_from_args(args)
    with run.lock():  # one process at a time in a run directory
        run.record_config()
        parses = parse_stage(run, bank_stage(run))
    for split, metrics in parses["metrics"].items():
        print(
            f"{split}: parse PSNR {metrics['psnr_mean']:.2f} dB (mean of per-image), "
            f"{metrics['psnr_of_mean_mse']:.2f} dB (of the mean MSE), draw fraction {metrics['draw_fraction']:.3f}"
        )
    print(f"parses: {run.cache.path('parses', parses_key(run.config))}, figure: {run.path('parses.png')}")
