"""The prior trained on each parser's parses: held-out NLL and samples (MNIST, K=5, M=50, demo prior).

For each variant (parser and ε) the pipeline's own stages run on configs/demo.yaml with that parser: bank
(shared), parses of every split, then the demo prior on the first `--train-images` training parses for
`--epochs` epochs (one small budget for all). Prints one JSON line per variant: parse PSNR and parts per
test image, validation NLL (the pipeline's held-out split) and test NLL (the first `--test-images` test
parses), both in nats per image, and the prior's own samples' parts. Writes to `--docs`:
prior_samples_by_parser.png (64 prior samples per variant) and prior_drawing_order.png (the canvas of six
samples per variant after every few steps).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/prior_by_parser.py --output-dir /tmp/prior_runs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from npdraw_core.latents import Latents, canvases
from npdraw_core.pipeline import bank_stage, parse_stage, prior_stage
from npdraw_core.prior_training import evaluate_nll
from npdraw_core.run import Run
from npdraw_core.sampling import prior_canvases, prior_logits

REPO = Path(__file__).resolve().parents[1]
# (label, parser type, ε): Algorithm 1 at the paper's ε, greedy at the same ε and at the ε where it draws
# about as many parts per MNIST image as Algorithm 1 (see benchmarks/parse_psnr_sweep.py --sweep)
VARIANTS = (
    ("heuristic ε=0.01", "heuristic", 0.01),
    ("greedy ε=0.01", "greedy", 0.01),
    ("greedy ε=1", "greedy", 1.0),
)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    options.add_argument("--output-dir", required=True, help="runs and the shared stage cache go here")
    options.add_argument("--train-images", type=int, default=5000)
    options.add_argument("--epochs", type=int, default=2)
    options.add_argument("--test-images", type=int, default=2000)
    options.add_argument("--samples", type=int, default=64)
    options.add_argument("--docs", default=str(REPO / "docs"))
    options.add_argument("--device", default="cpu")
    options.add_argument("--set", action="append", default=[], help="extra config overrides, key.path=value")
    args = options.parse_args()

    results = []
    for label, parser, threshold in VARIANTS:
        overrides = [
            f"output_dir={args.output_dir}",
            f"name=prior_{parser}_{threshold}",
            f"model.parser.type={parser}",
            f"model.parser.parse_threshold={threshold}",
            f"prior_training.max_train_images={args.train_images}",
            f"prior_training.epochs={args.epochs}",
            *args.set,
        ]
        run = Run.from_file(args.config, overrides, device=args.device)
        started = time.perf_counter()
        bank = bank_stage(run)
        parses = parse_stage(run, bank)
        prior, _ = prior_stage(run, bank, parses)
        seconds = time.perf_counter() - started
        exemplars, grid = bank.exemplars.to(run.device), run.grid
        test = {name: values[: args.test_images] for name, values in parses["test"].items()}
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            valid_nll = evaluate_nll(prior, exemplars, grid, parses["valid"])
            test_nll = evaluate_nll(prior, exemplars, grid, test)
            sampled, latents = prior_canvases(prior, exemplars, grid, args.samples, generator=generator)
            steps = canvases(latents, exemplars.cpu(), grid)  # (N, T, C, S, S): the canvas after each step
        sampled_where = latents.indices()["where"]
        drawn = latents.whether.bool()
        record = {
            "variant": label,
            "parser": parser,
            "parse_threshold": threshold,
            "train_parses": args.train_images,
            "epochs": args.epochs,
            "test_parse_psnr": round(parses["metrics"]["test"]["psnr_mean"], 3),
            "test_parts_per_image": round(float(parses["test"]["whether"].float().sum(1).mean()), 3),
            "valid_nll": round(valid_nll, 3),
            "test_nll": round(test_nll, 3),
            "test_nll_per_part": round(test_nll / float(test["whether"].float().sum(1).mean()), 3),
            **nll_by_head(prior, exemplars, grid, test),
            "sample_parts_per_image": round(float(drawn.float().sum(1).mean()), 3),
            # a cell drawn twice in one sample: only a parser that composes parts in a cell teaches this
            "samples_with_a_repeated_cell": round(
                sum(len(set(w[d].tolist())) < int(d.sum()) for w, d in zip(sampled_where, drawn, strict=True))
                / len(drawn),
                3,
            ),
            "seconds": round(seconds, 1),
        }
        print(json.dumps(record), flush=True)
        results.append((label, record, sampled, steps))
    figures(results, Path(args.docs))


@torch.no_grad()
def nll_by_head(prior, exemplars, grid, split: dict, batch_size: int = 500) -> dict[str, float]:
    """−log p(z) split into its whether / what / where terms (nats per image; what and where count on drawn
    steps only), which shows where each parse's information sits."""
    totals = dict.fromkeys(("whether", "what", "where"), 0.0)
    count = len(split["what"])
    for start in range(0, count, batch_size):
        chunk = {name: values[start : start + batch_size] for name, values in split.items()}
        latents = Latents.from_indices(**chunk, bank_size=len(exemplars), num_cells=grid.num_cells)
        logits = prior_logits(prior, latents.to(exemplars.device), exemplars, grid)
        drawn = latents.whether.to(exemplars.device)
        totals["whether"] += F.binary_cross_entropy_with_logits(logits.whether, drawn, reduction="sum").item()
        for name in ("what", "where"):
            target = chunk[name].long().to(exemplars.device)
            picked = F.log_softmax(getattr(logits, name), -1).gather(-1, target[..., None])[..., 0]
            totals[name] -= (picked * drawn).sum().item()
    return {f"test_nll_{name}": round(total / count, 3) for name, total in totals.items()}


def figures(results: list, docs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    docs.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.6))
    for axis, (label, record, sampled, _) in zip(axes, results, strict=True):
        grid = make_grid(sampled[:64], nrow=8, padding=2, pad_value=0.5)
        axis.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
        axis.set_title(
            f"{label}\ntest NLL {record['test_nll']:.1f} nats, {record['sample_parts_per_image']:.1f} parts"
        )
        axis.axis("off")
    figure.suptitle("Prior samples (canvases) by parser: MNIST, K=5, M=50, same prior budget")
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    figure.savefig(docs / "prior_samples_by_parser.png", dpi=110)
    plt.close(figure)

    shown = [3, 6, 9, 12, 18, 24, 36]  # canvas after these many steps
    rows = 6
    figure, axes = plt.subplots(len(results), 1, figsize=(1.0 * len(shown) + 1.5, 1.15 * rows * len(results)))
    for axis, (label, _, _, steps) in zip(axes, results, strict=True):
        picked = steps[:rows, [t - 1 for t in shown]].flatten(0, 1)  # (rows·len(shown), C, S, S)
        grid = make_grid(picked, nrow=len(shown), padding=2, pad_value=0.5)
        axis.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
        axis.set_title(f"{label}: canvas after {', '.join(map(str, shown))} steps")
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(docs / "prior_drawing_order.png", dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
