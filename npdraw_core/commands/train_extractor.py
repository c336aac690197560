"""`npdraw train-extractor`: train a feature extractor that needs training (FID-LeNet) on the run's
dataset and write its checkpoint; evaluation reuses it (and trains it itself when it is missing)."""

from __future__ import annotations

from npdraw_core.commands import add_run_arguments, run_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-extractor",
        help="train the FID-LeNet classifier (or another trainable extractor) on the train split",
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--extractor", default="lenet", help="registered feature extractor to train (default: lenet)"
    )
    parser.add_argument(
        "--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
        help="set an option of the extractor, e.g. --option epochs=3 or --option checkpoint=path.pt (repeatable)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="retrain even if the checkpoint exists")
    parser.set_defaults(handler=_train_extractor)


def _train_extractor(args) -> None:
    from npdraw_core.config import apply_override
    from npdraw_core.fid import build_feature_extractor, prepare_extractor

    run = run_from_args(args)
    options: dict = {}
    for option in args.options:
        apply_override(options, option)
    extractor = build_feature_extractor(run, args.extractor, prepare=False, options=options)
    if not extractor.trainable:
        raise ValueError(f"feature extractor {args.extractor!r} has nothing to train (try --extractor lenet)")
    prepare_extractor(run, extractor, force=args.force)
    shown = f" (validation accuracy {extractor.valid_accuracy:.4f})" if extractor.valid_accuracy is not None else ""
    print(f"{args.extractor} checkpoint: {extractor.path}{shown}")
