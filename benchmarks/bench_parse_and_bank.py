"""Parse throughput and part-bank engines side by side, on MNIST's 60,000 training images.

Prints ONE JSON line: each parser's throughput (images/s; keys prefixed by the parser's name: `heuristic_`,
`greedy_`) over all 60,000 training images (train + valid) with K=5, M=50 at its default ε, its parse PSNR
and drawn parts, and, on the same sampled patches (10,000 by default), each K-medoids engine's build time
(distance matrix + medoid search, seconds) and objective (mean distance to the nearest medoid).

Every timing comes as wall seconds and as this process's CPU seconds (`_cpu_seconds`, or images per CPU
second): on a shared machine the wall time depends on the neighbours, the CPU time much less. The
thread count is `torch_threads` (set it with OMP_NUM_THREADS):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_parse_and_bank.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from npdraw_core.bank import PartBank, PartBankConfig, kmedoids_objective, sample_patches
from npdraw_core.config import parse_component
from npdraw_core.data import canvas_images
from npdraw_core.geometry import Grid, ModelShape
from npdraw_core.parsing import parse_images, parse_psnr, render_parses
from npdraw_core.registry import default_registry
from npdraw_core.run import resolve_device

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--mnist-root", default=str(REPO / "data" / "mnist"))
    options.add_argument("--patch-size", type=int, default=5)
    options.add_argument("--bank-size", type=int, default=50)
    options.add_argument("--num-patches", type=int, default=10000)
    options.add_argument("--seed", type=int, default=0)
    options.add_argument("--device", default="auto")
    options.add_argument("--parsers", nargs="+", default=["heuristic", "greedy"], help="registered parsers")
    args = options.parse_args()

    registry = default_registry()
    chosen = parse_component("dataset", {"type": "mnist", "root": args.mnist_root}, "data", registry)
    dataset = registry.get("dataset", "mnist").build(chosen.config)
    images = torch.cat([canvas_images(dataset.load(split), 28) for split in ("train", "valid")])
    grid = Grid(28, args.patch_size)
    defaults = PartBankConfig(bank_size=args.bank_size, num_patches=args.num_patches, seed=args.seed)

    started, cpu_started = time.perf_counter(), time.process_time()
    patches = sample_patches(
        images,
        grid,
        num_patches=defaults.num_patches,
        min_patch_mass=defaults.min_patch_mass,
        generator=torch.Generator().manual_seed(args.seed),
    )
    result = {
        "benchmark": "parse_and_bank",
        "images": len(images),
        "patch_size": args.patch_size,
        "bank_size": args.bank_size,
        "num_patches": len(patches),
        "min_patch_mass": defaults.min_patch_mass,
        "sample_patches_seconds": round(time.perf_counter() - started, 3),
        "sample_patches_cpu_seconds": round(time.process_time() - cpu_started, 3),
    }
    points = patches.flatten(1).numpy()
    banks = {}
    for name in ("kmedoids", "sklearn_extra"):
        component = registry.get("part_bank", name)
        config = parse_component(
            "part_bank", {"type": name, "bank_size": args.bank_size}, "part_bank", registry
        ).config
        engine = component.build(config)
        started, cpu_started = time.perf_counter(), time.process_time()
        chosen_rows = np.asarray(engine.select(points, args.bank_size, seed=args.seed))
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        objective = kmedoids_objective(points, points[chosen_rows])
        result[f"{name}_build_seconds"] = round(seconds, 3)
        result[f"{name}_build_cpu_seconds"] = round(cpu_seconds, 3)
        result[f"{name}_objective"] = round(objective, 5)
        banks[name] = PartBank(patches[torch.from_numpy(chosen_rows)])
    result["objective_ratio_sklearn_extra_to_kmedoids"] = round(
        result["sklearn_extra_objective"] / result["kmedoids_objective"], 4
    )
    result["build_time_ratio_sklearn_extra_to_kmedoids"] = round(
        result["sklearn_extra_build_seconds"] / result["kmedoids_build_seconds"], 3
    )

    device = resolve_device(args.device)
    bank = banks["kmedoids"]
    shape = ModelShape(1, 28, 28, args.patch_size, args.bank_size)
    result.update(device=str(device), torch_threads=torch.get_num_threads())
    for name in args.parsers:
        parser_config = parse_component("parser", {"type": name}, "parser", registry).config
        parser = registry.get("parser", name).build(parser_config, shape=shape)
        parse_images(
            parser, images[:2048], bank, progress=False, device=device
        )  # warm-up (allocator, threads)
        started, cpu_started = time.perf_counter(), time.process_time()
        indices = parse_images(parser, images, bank, progress=False, device=device)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        quality = parse_psnr(images, render_parses(indices, bank, grid, device=device))
        drawn = indices["whether"].float()
        result.update(
            {
                f"{name}_parse_threshold": parser_config.parse_threshold,
                f"{name}_parse_batch_size": parser.batch_size,
                f"{name}_parse_seconds": round(seconds, 3),
                f"{name}_parse_images_per_second": round(len(images) / seconds, 1),
                # on a shared machine wall time depends on the neighbours; CPU time of this process much less
                f"{name}_parse_images_per_cpu_second": round(len(images) / cpu_seconds, 1),
                f"{name}_parts_per_image": round(float(drawn.sum(1).mean()), 3),
                f"{name}_draw_fraction": round(float(drawn.mean()), 4),
                **{f"{name}_{k}": round(v, 3) for k, v in quality.items()},
            }
        )
    if {"heuristic", "greedy"} <= set(args.parsers):
        result["parse_cpu_time_ratio_greedy_to_heuristic"] = round(
            result["heuristic_parse_images_per_cpu_second"] / result["greedy_parse_images_per_cpu_second"], 2
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
