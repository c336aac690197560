"""`npdraw bank`: build the run's part bank (K-medoids on patches of the training images)."""

from __future__ import annotations

from npdraw_core.commands import add_run_arguments, run_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bank", help="build the part bank from the training images (skipped if current)"
    )
    add_run_arguments(parser)
    parser.set_defaults(handler=_bank)


def _bank(args) -> None:
    from npdraw_core.pipeline import bank_key, bank_stage

    run = run_from_args(args)
    with run.lock():  # one process at a time in a run directory
        run.record_config()
        bank = bank_stage(run)
    meta = bank.metadata
    print(
        f"part bank: {run.cache.path('bank', bank_key(run.config))} — {bank.bank_size} exemplars of {bank.patch_size}×{bank.patch_size} "
        f"by {meta.get('engine')} from {meta.get('num_patches')} patches, objective {meta.get('objective', float('nan')):.4f}"
    )
