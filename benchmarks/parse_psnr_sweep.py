"""Parse PSNR (spec §3) on the MNIST test set and the Omniglot test split for several (K, M).

For each dataset and (patch_size K, bank_size M): build a bank with the default engine (FasterPAM) from
10,000 patches of the training split, parse the test split with Algorithm 1, render the parses and print
one JSON line: mean of per-image PSNR, PSNR of the mean MSE, draw fraction, bank objective and timings.
Expected: PSNR rises with M and falls with K.

    nice -n 10 .venv/bin/python benchmarks/parse_psnr_sweep.py
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


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    options.add_argument("--settings", nargs="+", default=[f"{k},{m}" for k, m in SETTINGS], help="K,M pairs")
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
            parser_config = parse_component("parser", {"type": "heuristic"}, "parser", registry).config
            parser = registry.get("parser", "heuristic").build(parser_config, shape=shape)
            started = time.perf_counter()
            indices = parse_images(parser, test, bank, progress=False, device=device)
            parse_seconds = time.perf_counter() - started
            quality = parse_psnr(test, render_parses(indices, bank, grid, device=device))
            record = {
                "dataset": name,
                "split": "test",
                "images": len(test),
                "patch_size": patch_size,
                "bank_size": bank_size,
                "num_steps": grid.num_cells,
                **{k: round(v, 3) for k, v in quality.items()},
                "draw_fraction": round(float(indices["whether"].float().mean()), 4),
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
