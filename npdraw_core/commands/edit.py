"""`npdraw edit`: paste a region of image B's canvas onto image A's and decode (paper Fig. 4)."""

from __future__ import annotations

import argparse
from pathlib import Path

from npdraw_core.commands import add_run_arguments, non_negative_int, trained_model_of


def register(subparsers) -> None:
    parser = subparsers.add_parser("edit", help="compose two test images in canvas space and decode")
    add_run_arguments(parser)
    parser.add_argument(
        "--a", type=non_negative_int, nargs="+", default=[0, 1, 2, 3], help="test-set indices of images A"
    )
    parser.add_argument(
        "--b", type=non_negative_int, nargs="+", default=[4, 5, 6, 7], help="test-set indices of images B"
    )
    parser.add_argument("--region", type=region, default=None,
                        help="top,left,height,width on the canvas (default: the right half)")
    parser.add_argument("--out", type=png_path, default=None, help="PNG path (default: RUN_DIR/edit.png)")
    parser.set_defaults(handler=_edit)


def region(text: str):
    from npdraw_core.editing import Region  # imports torch: only when --region is given

    try:
        return Region.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def png_path(text: str) -> str:
    if Path(text).suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"{text!r}: the figure is a PNG; give a path ending in .png")
    return text


def _edit(args) -> None:
    if len(args.a) != len(args.b):
        raise ValueError(f"--a and --b must list the same number of images, got {len(args.a)} and {len(args.b)}")
    from npdraw_core.data import to_unit
    from npdraw_core.editing import Region, edit, save_edit_figure

    run, model_file = trained_model_of(args, "edit")
    size = run.config.model.canvas_size
    region = args.region or Region(0, size // 2, size, size - size // 2)
    region.check(size)
    test = run.dataset.load("test")
    for index in [*args.a, *args.b]:
        if not 0 <= index < len(test):
            raise ValueError(f"--a/--b: image index {index} is outside the test set (0..{len(test) - 1})")
    model = model_file.build(run.device, registry=run.registry)
    images_a = to_unit(test.images[args.a]).to(run.device)
    images_b = to_unit(test.images[args.b]).to(run.device)
    out = args.out or run.path("edit.png")
    save_edit_figure(images_a, images_b, edit(model, images_a, images_b, region), out)
    print(f"wrote {out}: columns A, B, canvas A, canvas B, composed canvas, decoded edit")
