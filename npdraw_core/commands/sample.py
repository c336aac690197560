"""`npdraw sample`: samples of a trained model, as a PNG grid (each image beside its canvas, the paper's
Fig. 5) or as arrays in an .npz. It only loads a model file (`model.pt`, from CONFIG's run directory or
`--model`) and never trains. `--prior-only` draws latents from the model's prior and shows their canvases
(no decoder).

Seeding: `--seed S` seeds one generator for all samples (a sample then depends on its batch, so on
`--batch-size`); `--seeds 0:1000` gives every sample its own seed, and sample i is then the same whatever
the batch it is drawn in (`npdraw_core.sampling`), and the seeds are saved in the .npz.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from npdraw_core.commands import add_run_arguments, finite_positive_float, positive_int, trained_model_of

if TYPE_CHECKING:
    from npdraw_core.model import NPDraw

FORMATS = ("png", "npz")
DEFAULT_NUM = 64


def register(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="write samples of a trained model (PNG grid or .npz arrays)")
    add_run_arguments(parser, config_required=False)
    parser.add_argument(
        "--model", default=None, metavar="PATH",
        help="a model.pt or a run directory to sample from, instead of CONFIG's run directory",
    )
    parser.add_argument(
        "--prior-only", action="store_true", help="sample canvases from the model's prior (no decoder)"
    )
    parser.add_argument(
        "--num", type=int, default=None, help=f"number of samples (default {DEFAULT_NUM}, or one per --seeds)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of one generator for all samples (default 0)")
    parser.add_argument(
        "--seeds", default=None, metavar="SPEC",
        help="one seed per sample, e.g. 0:1000 (0..999) or 3,17,40:50; each sample is then reproducible alone",
    )
    parser.add_argument(
        "--temperature", type=finite_positive_float, default=1.0, help="divides the prior's logits (default 1)"
    )
    parser.add_argument("--top-k", type=positive_int, default=None, help="keep only the k most likely parts and cells")
    parser.add_argument(
        "--format", choices=FORMATS, default=None,
        help="png: a grid of samples beside their canvases; npz: arrays images, canvases, whether, what, "
        "where (default: from --out's extension, else png)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=500, help="samples per batch; bounds memory (default 500)"
    )
    parser.add_argument(
        "--out", default=None,
        help="output path, .png or .npz (default: RUN_DIR/samples.FORMAT, or prior_samples.FORMAT with --prior-only)",
    )
    parser.set_defaults(handler=_sample)


def _sample(args) -> None:
    # Every argument is checked before the model is loaded, so a typo costs no time.
    fmt = output_format(args.format, args.out)
    args.seeds = None if args.seeds is None else parse_seeds(args.seeds)
    num = sample_count(args.num, args.seeds)
    if (args.config is None) == (args.model is None):
        raise ValueError(
            "give either CONFIG (sample from its run directory) or --model PATH (a model.pt or a run directory)"
        )
    if args.model is not None and args.overrides:
        raise ValueError("--set changes CONFIG, but --model was given: a model file carries its own config")

    from npdraw_core.sample_output import sample_batches, write_npz, write_png

    model, model_path = load_model(args)
    stem = "prior_samples" if args.prior_only else "samples"
    out = Path(args.out) if args.out else model_path.parent / f"{stem}.{fmt}"
    options = dict(seed=args.seed, seeds=args.seeds, temperature=args.temperature, top_k=args.top_k)
    batches = sample_batches(model, num, batch_size=args.batch_size, prior_only=args.prior_only, **options)
    if fmt == "npz":
        metadata = dict(
            model=str(model_path), temperature=args.temperature, top_k=args.top_k, prior_only=args.prior_only,
            seed=None if args.seeds else args.seed, batch_size=args.batch_size,
        )
        write_npz(out, num, batches, seeds=args.seeds, metadata=metadata)
        what = f"{'canvases' if args.prior_only else 'images, canvases'} and latents of {num} samples"
    else:
        write_png(out, batches, prior_only=args.prior_only)
        what = f"{num} canvases sampled from the prior" if args.prior_only else f"{num} samples beside their canvases"
    seeding = f"{len(args.seeds)} per-sample seeds" if args.seeds else f"seed {args.seed}"
    print(f"wrote {out}: {what} ({seeding}, temperature {args.temperature})")


def load_model(args) -> tuple[NPDraw, Path]:
    """The trained model of `--model` or of CONFIG's run directory, and the model file's path."""
    import torch

    from npdraw_core.model_file import MODEL_FILE, load_trained

    if args.model is None:  # CONFIG's run directory: its model, if CONFIG and --set agree with it
        run, model_file = trained_model_of(args, "sample")
        return model_file.build(run.device, registry=run.registry), model_file.path
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    source = Path(args.model)
    path = source / MODEL_FILE if source.is_dir() else source
    return load_trained(path, device=args.device or "auto"), path


def output_format(requested: str | None, out: str | None) -> str:
    """The output format: --format, else --out's extension, else png; they must agree when both are given."""
    if out is None:
        return requested or "png"
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(
            f"--out {out!r}: unknown extension {('.' + suffix) if suffix else '(none)'}; "
            "use .png for a grid of samples or .npz for arrays"
        )
    if requested is not None and requested != suffix:
        raise ValueError(f"--format {requested} disagrees with --out {out!r}; use a .{requested} path or drop --format")
    return suffix


def sample_count(num: int | None, seeds: list[int] | None) -> int:
    if seeds is not None and num is not None and num != len(seeds):
        raise ValueError(f"--num {num} disagrees with the {len(seeds)} seeds of --seeds; drop --num")
    num = len(seeds) if seeds is not None else (DEFAULT_NUM if num is None else num)
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    return num


def parse_seeds(spec: str) -> list[int]:
    """'0:1000' → 0..999; '3,17,40:50' → 3, 17, 40..49."""
    seeds = []
    try:
        for part in spec.split(","):
            if ":" in part:
                start, stop = (int(x) for x in part.split(":"))
                if stop <= start:
                    raise ValueError
                seeds.extend(range(start, stop))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ValueError(
            f"--seeds {spec!r}: expected seeds and ranges separated by commas, e.g. 0:1000 or 3,17,40:50"
        ) from None
    if any(seed < 0 for seed in seeds):
        raise ValueError(f"--seeds {spec!r}: seeds must be non-negative")
    return seeds
