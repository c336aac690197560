"""Issue 11: does training keep its speed when another CPU-bound process shares the cores? Prints ONE JSON line.

    .venv/bin/python benchmarks/bench_threads.py                 # ~3 minutes
    .venv/bin/python benchmarks/bench_threads.py --seconds 10    # quicker

For each thread policy — torch's default (one thread per core, OpenMP's default wait policy) and npdraw's
(`npdraw_core.threads`: 1 thread up to 4 cores, OMP_WAIT_POLICY=PASSIVE) — a fresh worker process trains
the prior at demo sizes (configs/demo.yaml, batch 64, real MNIST parses) for `--seconds`, first alone and
then beside one competing CPU-bound process (a pure-Python busy loop, like any other job on a laptop), and
reports the steps per second of both and their ratio. Run it on an otherwise idle machine: "alone" means
alone with the benchmark.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def busy_loop() -> None:
    while True:
        pass


def prior_steps_per_second(seconds: float) -> float:
    """Prior pre-training steps per second at demo sizes (run in a worker, after the policy is applied)."""
    import torch

    from npdraw_core import distributions
    from npdraw_core.bank import sample_patches
    from npdraw_core.build import prior_from_config
    from npdraw_core.config import load_config
    from npdraw_core.data import canvas_images
    from npdraw_core.geometry import Grid, ModelShape
    from npdraw_core.latents import Latents
    from npdraw_core.parsing import parse_images
    from npdraw_core.registry import default_registry

    config = load_config(REPO / "configs" / "demo.yaml")
    registry = default_registry()
    images = canvas_images(registry.get("dataset", "mnist").build(config.data.config).load("train"), 28)[:640]
    grid, bank_size = Grid(28, 5), config.model.part_bank.config.bank_size
    shape = ModelShape(1, 28, 28, 5, bank_size)
    # any real patches serve as the bank: its exemplars do not change the speed
    bank = sample_patches(images, grid, num_patches=bank_size, min_patch_mass=0.05, generator=torch.Generator().manual_seed(0))
    parser = registry.get("parser", "heuristic").build(config.model.parser.config, shape=shape)
    parses = Latents.from_indices(**parse_images(parser, images, bank, progress=False), bank_size=bank_size,
                                  num_cells=grid.num_cells)  # fmt: skip
    prior = prior_from_config(config, shape, registry).train()
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-3)
    batch = config.prior_training.batch_size

    def step(index: int) -> None:
        latents = parses[(index * batch) % len(images) :][:batch]
        optimizer.zero_grad(set_to_none=True)
        (-distributions.log_prob(prior.logits_from_latents(latents, bank, grid), latents)).mean().backward()
        optimizer.step()

    for index in range(3):  # warm-up
        step(index)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step(steps)
        steps += 1
    return steps / (time.perf_counter() - started)


def worker(policy: str, seconds: float) -> None:
    import torch

    if policy == "npdraw":
        from npdraw_core.threads import configure_threads

        configure_threads()
    print(json.dumps({"threads": torch.get_num_threads(), "steps_per_second": prior_steps_per_second(seconds)}))


def measure(policy: str, seconds: float) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "NPDRAW_THREADS"):
        env.pop(name, None)  # each policy decides for itself
    command = [sys.executable, __file__, "--worker", policy, "--seconds", str(seconds)]
    result = {}
    for competing in (False, True):
        competitor = multiprocessing.Process(target=busy_loop, daemon=True) if competing else None
        if competitor:
            competitor.start()
        try:
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        finally:
            if competitor:
                competitor.terminate()
                competitor.join()
        figures = json.loads(out.strip().splitlines()[-1])
        result["threads"] = figures["threads"]
        result["competing" if competing else "alone"] = round(figures["steps_per_second"], 3)
    result["ratio"] = round(result["competing"] / result["alone"], 3)
    return result


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--seconds", type=float, default=30.0, help="measuring time of each of the 4 runs")
    options.add_argument("--worker", choices=["torch", "npdraw"], help=argparse.SUPPRESS)
    args = options.parse_args()
    if args.worker:
        worker(args.worker, args.seconds)
        return
    result = {
        "benchmark": "threads_under_contention",
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "workload": "prior pre-training steps/s, demo sizes, batch 64",
    }
    for policy in ("torch", "npdraw"):
        result[policy] = measure(policy, args.seconds)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
