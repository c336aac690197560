"""Sampling throughput of the transformer prior: incremental (key/value cache) vs full recompute (the
authors' sampler), side by side in one process. Prints ONE JSON line.

    python benchmarks/bench_sampling.py                 # authors' sizes, MNIST shape (T=36, M=50), CPU
    python benchmarks/bench_sampling.py --device cuda --batch-sizes 1 64 512

Throughput is canvases per second: sampled latents rendered to their final canvases. Both paths use the
same seed and the benchmark checks that they produce identical latents.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from npdraw_core.contracts import contract_bank
from npdraw_core.geometry import ModelShape
from npdraw_core.latents import render
from npdraw_core.sampling import sample_latents
from npdraw_plugins.priors.transformer import TransformerPrior, TransformerPriorConfig


def sample_canvases(prior, bank, shape, batch_size, *, seed, use_cache):
    generator = torch.Generator().manual_seed(seed)
    latents = sample_latents(prior, bank, shape.grid, batch_size, generator=generator, use_cache=use_cache)
    canvases = render(latents, bank, shape.grid)
    if canvases.is_cuda:
        torch.cuda.synchronize()
    return latents, canvases


def throughput(prior, bank, shape, batch_size, *, use_cache, min_seconds, min_repeats):
    """Canvases per second over at least `min_repeats` runs and `min_seconds` (after one warm-up run)."""
    sample_canvases(prior, bank, shape, batch_size, seed=0, use_cache=use_cache)
    runs, started = 0, time.perf_counter()
    while runs < min_repeats or time.perf_counter() - started < min_seconds:
        sample_canvases(prior, bank, shape, batch_size, seed=runs + 1, use_cache=use_cache)
        runs += 1
    return batch_size * runs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: on a shared 2-core machine, OpenMP barriers make multi-threaded timings "
        "of small kernels erratic; 0 keeps torch's default)",
    )
    parser.add_argument(
        "--min-seconds", type=float, default=5.0, help="time each measurement at least this long"
    )
    parser.add_argument("--min-repeats", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--num-heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--mlp-dim", type=int, default=2048)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    shape = ModelShape(channels=1, image_size=28, canvas_size=28, patch_size=5, bank_size=50)
    config = TransformerPriorConfig(
        d_model=args.d_model,
        depth=args.depth,
        num_heads=args.num_heads,
        head_dim=args.head_dim,
        mlp_dim=args.mlp_dim,
    )
    prior = (
        TransformerPrior(config, shape=shape).to(args.device).eval()
    )  # throughput does not depend on training
    bank = contract_bank(shape, args.device)

    result = {
        "benchmark": "prior_sampling",
        "device": str(args.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "num_steps": shape.num_steps,
        "bank_size": shape.bank_size,
        "prior": {k: getattr(config, k) for k in ("d_model", "depth", "num_heads", "head_dim", "mlp_dim")},
        "parameters": sum(p.numel() for p in prior.parameters()),
    }
    for batch_size in args.batch_sizes:
        cached_latents, _ = sample_canvases(prior, bank, shape, batch_size, seed=123, use_cache=True)
        full_latents, _ = sample_canvases(prior, bank, shape, batch_size, seed=123, use_cache=False)
        identical = all(
            torch.equal(a, full_latents.indices()[k]) for k, a in cached_latents.indices().items()
        )
        timing = dict(min_seconds=args.min_seconds, min_repeats=args.min_repeats)
        cached = throughput(prior, bank, shape, batch_size, use_cache=True, **timing)
        full = throughput(prior, bank, shape, batch_size, use_cache=False, **timing)
        result[f"batch_{batch_size}"] = {
            "incremental_canvases_per_s": round(cached, 2),
            "full_recompute_canvases_per_s": round(full, 2),
            "speedup": round(cached / full, 2),
            "identical_latents": identical,
            "drawn_steps_per_canvas": round(cached_latents.whether.sum(1).mean().item(), 2),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
