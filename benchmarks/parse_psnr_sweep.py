"""Parse PSNR (spec §3) on the MNIST test set and the Omniglot test split, for several (K, M) and parsers.

For each dataset and (patch_size K, bank_size M): build a bank with the default engine (FasterPAM) from
10,000 patches of the training split, parse the test split with each parser at each threshold ε, render
the parses and print one JSON line: mean of per-image PSNR, PSNR of the mean MSE, drawn parts per image,
draw fraction, bank objective and timings. Expected: PSNR rises with M and falls with K.

The default is Algorithm 1 at its ε = 0.01 over five (K, M). PSNR against the number of drawn parts for
both parsers (K=5, M=50, an ε sweep each; `benchmarks/plot_parse_psnr.py` draws it):

    nice -n 10 .venv/bin/python benchmarks/parse_psnr_sweep.py --settings 5,50 --parsers heuristic greedy \\
        --sweep > /tmp/parse_sweep.jsonl

ε means different things to the two parsers, hence their own sweeps: Algorithm 1 draws a cell iff
‖x − p‖ − ‖x‖ ≤ ε (a tolerance: negative ε keeps only cells the part explains well), the greedy parser
draws while the best part lowers the squared error by more than ε (a required gain).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from npdraw_core.bank import build_bank
from npdraw_core.config import parse_component
from npdraw_core.data import canvas_images
from npdraw_core.geometry import Grid, ModelShape
from npdraw_core.parsing import parse_images, parse_psnr, render_parses
from npdraw_core.registry import default_registry
from npdraw_core.run import resolve_device

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SETTINGS = ((5, 10), (5, 50), (5, 200), (6, 50), (8, 50))
DATASETS = {
    "mnist": {"type": "mnist", "root": str(REPO / "data" / "mnist")},
    "omniglot": {"type": "omniglot", "root": str(SHARED / "omniglot" / "omniglot_28x28.npz")},
}
# --sweep: from a few parts per image to every useful one (the heuristic's ε ≥ ~1 also draws blank cells)
SWEEPS = {
    "heuristic": (-4.0, -3.0, -2.0, -1.5, -1.0, -0.6, -0.3, 0.0, 0.01),
    "greedy": (12.0, 8.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.05, 0.01, 0.0),
}


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    options.add_argument("--settings", nargs="+", default=[f"{k},{m}" for k, m in SETTINGS], help="K,M pairs")
    options.add_argument("--parsers", nargs="+", default=["heuristic"], help="registered parser names")
    options.add_argument(
        "--thresholds", nargs="+", type=float, help="ε values for every parser (default: its own)"
    )
    options.add_argument(
        "--sweep", action="store_true", help="each parser's ε sweep (SWEEPS) instead of its default"
    )
    options.add_argument("--engine", default="kmedoids")
    options.add_argument("--num-patches", type=int, default=10000)
    options.add_argument("--seed", type=int, default=0)
    options.add_argument("--device", default="auto")
    args = options.parse_args()
    registry, device = default_registry(), resolve_device(args.device)

    for name in args.datasets:
        spec = DATASETS[name]
        if not Path(spec["root"]).exists():
            print(json.dumps({"dataset": name, "skipped": f"{spec['root']} is absent"}), flush=True)
            continue
        dataset = registry.get("dataset", spec["type"]).build(
            parse_component("dataset", spec, "data", registry).config
        )
        train = canvas_images(dataset.load("train"), 28)
        test = canvas_images(dataset.load("test"), 28)
        for setting in args.settings:
            patch_size, bank_size = (int(v) for v in setting.split(","))
            grid = Grid(28, patch_size)
            chosen = {
                "type": args.engine,
                "bank_size": bank_size,
                "num_patches": args.num_patches,
                "seed": args.seed,
            }
            config = parse_component("part_bank", chosen, "part_bank", registry).config
            bank = build_bank(train, grid, registry.get("part_bank", args.engine).build(config), config)
            shape = ModelShape(1, 28, 28, patch_size, bank_size)
            for parser_name in args.parsers:
                default = parse_component("parser", {"type": parser_name}, "parser", registry).config
                thresholds = args.thresholds or (
                    SWEEPS[parser_name] if args.sweep else (default.parse_threshold,)
                )
                for threshold in thresholds:
                    settings = {"type": parser_name, "parse_threshold": threshold}
                    parser_config = parse_component("parser", settings, "parser", registry).config
                    parser = registry.get("parser", parser_name).build(parser_config, shape=shape)
                    started = time.perf_counter()
                    indices = parse_images(parser, test, bank, progress=False, device=device)
                    parse_seconds = time.perf_counter() - started
                    quality = parse_psnr(test, render_parses(indices, bank, grid, device=device))
                    drawn = indices["whether"].float()
                    record = {
                        "dataset": name,
                        "split": "test",
                        "images": len(test),
                        "patch_size": patch_size,
                        "bank_size": bank_size,
                        "num_steps": grid.num_cells,
                        "parser": parser_name,
                        "parse_threshold": threshold,
                        **{k: round(v, 3) for k, v in quality.items()},
                        "parts_per_image": round(float(drawn.sum(1).mean()), 3),
                        "draw_fraction": round(float(drawn.mean()), 4),
                        "engine": args.engine,
                        "num_patches": args.num_patches,
                        "min_patch_mass": config.min_patch_mass,
                        "bank_objective": round(bank.metadata["objective"], 4),
                        "bank_seconds": round(bank.metadata["build_seconds"], 2),
                        "parse_seconds": round(parse_seconds, 2),
                    }
                    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
