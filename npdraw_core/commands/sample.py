"""`npdraw sample`: a PNG grid of samples, each image beside its canvas (the paper's Fig. 5). `--prior-only`
draws latents from the pre-trained prior and shows their canvases (no decoder), which needs only the bank,
parse and prior stages."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import save_image

from npdraw_core.bank import ensure_bank
from npdraw_core.commands import add_run_arguments, run_from_args
from npdraw_core.latents import render
from npdraw_core.parsing import ensure_parses
from npdraw_core.pipeline import load_model
from npdraw_core.prior_training import ensure_prior
from npdraw_core.run import Run
from npdraw_core.sampling import sample_latents
from npdraw_core.training import image_samples


def register(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="write a PNG grid of samples")
    add_run_arguments(parser)
    parser.add_argument(
        "--prior-only", action="store_true", help="sample canvases from the prior (no decoder)"
    )
    parser.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default 0)")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="divides the prior's logits (default 1)"
    )
    parser.add_argument("--top-k", type=int, default=None, help="keep only the k most likely parts and cells")
    parser.add_argument(
        "--out",
        default=None,
        help="PNG path (default: RUN_DIR/samples.png, or prior_samples.png with --prior-only)",
    )
    parser.set_defaults(handler=_sample)


def _sample(args) -> None:
    if args.num < 1:
        raise ValueError(f"--num must be at least 1, got {args.num}")
    run = run_from_args(args)
    options = dict(seed=args.seed, temperature=args.temperature, top_k=args.top_k)
    if args.prior_only:
        out = Path(args.out or run.path("prior_samples.png"))
        write_grid(prior_canvases(run, args.num, **options), out)
        print(
            f"wrote {out}: {args.num} canvases sampled from the prior (seed {args.seed}, temperature {args.temperature})"
        )
        return
    out = Path(args.out or run.path("samples.png"))
    images, canvases = image_samples(load_model(run), args.num, **options)
    write_pairs(images, canvases, out)
    print(
        f"wrote {out}: {args.num} samples, each beside its canvas (seed {args.seed}, temperature {args.temperature})"
    )


def write_pairs(images: torch.Tensor, canvases: torch.Tensor, path: Path, *, pairs_per_row: int = 8) -> None:
    """Each sample beside its canvas, like the paper's Fig. 5: rows of (canvas, image) pairs."""
    interleaved = torch.stack([canvases, images], dim=1).flatten(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(interleaved, path, nrow=2 * pairs_per_row, padding=2, pad_value=0.5)


def prior_canvases(
    run: Run, num: int, *, seed: int, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """Final canvases (num, C, S, S) of latents sampled from the run's trained prior, on the CPU."""
    bank = ensure_bank(run)
    prior, _ = ensure_prior(run, bank, ensure_parses(run, bank))
    exemplars = bank.exemplars.to(run.device)
    generator = torch.Generator().manual_seed(seed)  # a CPU generator gives the same samples on every device
    latents = sample_latents(
        prior, exemplars, run.grid, num, generator=generator, temperature=temperature, top_k=top_k
    )
    return render(latents, exemplars, run.grid).cpu()


def write_grid(images: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=math.ceil(math.sqrt(len(images))), padding=2, pad_value=0.5)
