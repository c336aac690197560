"""Issue 11: training step, evaluation, latency, parsing and bank figures, old and new side by side in one
process with a fixed thread count. Prints ONE JSON line.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py            # demo sizes, 1 thread
    .venv/bin/python benchmarks/bench_training.py --threads 2 --nll-images 50  # quicker, 2 threads

Demo sizes (configs/demo.yaml): K=5, M=50, T=36, prior d_model 64 / depth 4, conv encoder/decoder with 32
channels, batch 100 (prior pre-training: 64). The bank is FasterPAM on 10,000 patches of the MNIST training
images and the parses are the heuristic parser's; the networks are freshly initialised (speed does not depend
on what they learnt). "old" is the computation before issue 11, kept here verbatim: whole prior frames built
from the latents (rendered a second time for the canvas) and embedded frame by frame, and the NLL bound one
importance sample at a time. Old and new runs alternate, and each figure is the median of `--repeats` runs,
so a neighbour's load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


# -- the computation before issue 11 ----------------------------------------------------------------------
def old_prior_logits(model, latents):
    from npdraw_core.latents import prior_frames

    return model.prior(prior_frames(latents, model.bank, model.grid, union_masks=model.prior.union_masks))


def old_loss(model, images, parse, *, reg_weight, temperature, generator):
    from npdraw_core import distributions, posterior

    q_logits = model.encode(images)
    latents = posterior.sample_relaxed(q_logits, temperature=temperature, whether_estimator="hard", generator=generator)
    reconstruction = -model.output.log_prob(model.decode(model.render(latents)), images)
    kl = distributions.kl_divergence(q_logits, old_prior_logits(model, latents), latents.whether)
    parse_ce = -distributions.log_prob(q_logits, parse)
    return (reconstruction + kl + reg_weight * parse_ce).mean()


@torch.no_grad()
def old_bound(model, images, *, num_samples, generator):
    from npdraw_core import distributions, posterior

    q_logits = model.encode(images)
    log_weights = []
    for _ in range(num_samples):
        latents = posterior.sample_hard(q_logits, generator=generator)
        log_px = model.output.log_prob(model.decode(model.render(latents)), images)
        log_pz = distributions.log_prob(old_prior_logits(model, latents), latents)
        log_weights.append(log_px + log_pz - distributions.log_prob(q_logits, latents))
    return torch.logsumexp(torch.stack(log_weights), dim=0) - math.log(num_samples)


# -- helpers ----------------------------------------------------------------------------------------------
def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def side_by_side(old, new, repeats: int) -> tuple[float, float]:
    """Median seconds of `old` and `new`, alternating (after one warm-up run of each)."""
    old(), new()
    old_times, new_times = [], []
    for _ in range(repeats):
        old_times.append(median_seconds(old, 1))
        new_times.append(median_seconds(new, 1))
    return statistics.median(old_times), statistics.median(new_times)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--threads", type=int, default=1)
    options.add_argument("--repeats", type=int, default=5)
    options.add_argument("--batch-size", type=int, default=100)
    options.add_argument("--prior-batch-size", type=int, default=64)
    options.add_argument("--nll-images", type=int, default=20, help="test images per NLL measurement")
    options.add_argument("--nll-samples", type=int, default=50)
    options.add_argument("--latency-runs", type=int, default=50)
    options.add_argument("--parse-images", type=int, default=60000, help="0 skips the parse measurement")
    options.add_argument("--num-patches", type=int, default=10000, help="0 skips the bank measurement")
    args = options.parse_args()
    torch.set_num_threads(args.threads)

    from npdraw_core import distributions
    from npdraw_core.bank import PartBankConfig, kmedoids_objective, sample_patches
    from npdraw_core.build import model_from_config, prior_from_config
    from npdraw_core.config import load_config
    from npdraw_core.data import canvas_images
    from npdraw_core.geometry import Grid, ModelShape
    from npdraw_core.latents import Latents
    from npdraw_core.parsing import parse_images
    from npdraw_core.registry import default_registry

    config = load_config(REPO / "configs" / "demo.yaml")
    registry = default_registry()
    dataset = registry.get("dataset", "mnist").build(config.data.config)
    train = canvas_images(dataset.load("train"), 28)
    grid = Grid(28, 5)
    bank_size = config.model.part_bank.config.bank_size
    result: dict = {
        "benchmark": "training_speed",
        "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "gpu": torch.cuda.is_available(),
    }

    # bank: FasterPAM on sampled patches (or random patches when skipped)
    patches = sample_patches(train, grid, num_patches=max(args.num_patches, bank_size),
                             min_patch_mass=PartBankConfig(bank_size=bank_size).min_patch_mass,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    if args.num_patches:
        engine = registry.get("part_bank", "kmedoids")
        points = patches.flatten(1).numpy()
        started = time.perf_counter()
        rows = np.asarray(engine.build(engine.config_class(bank_size=bank_size)).select(points, bank_size, seed=0))
        result["bank_seconds"] = round(time.perf_counter() - started, 3)
        result["bank_objective"] = round(kmedoids_objective(points, points[rows]), 5)
        result["bank_patches"] = len(points)
        bank = patches[torch.from_numpy(rows)].contiguous()
    else:
        bank = patches[:bank_size].contiguous()

    shape = ModelShape(1, 28, 28, 5, bank_size)
    parser = registry.get("parser", "heuristic").build(config.model.parser.config, shape=shape)
    if args.parse_images:
        images = train[: args.parse_images]
        parse_images(parser, images[:2048], bank, progress=False)
        started = time.perf_counter()
        parse_images(parser, images, bank, progress=False)
        result["parse_images_per_second"] = round(len(images) / (time.perf_counter() - started), 1)
        result["parse_images"] = len(images)

    prior = prior_from_config(config, shape, registry)
    model = model_from_config(config, shape, bank, prior, registry)
    batch = train[: args.batch_size]
    indices = parse_images(parser, batch, bank, progress=False)
    parse = Latents.from_indices(**indices, bank_size=bank_size, num_cells=grid.num_cells)
    binary = (batch > torch.rand(batch.shape, generator=torch.Generator().manual_seed(0))).float()
    settings = dict(reg_weight=50.0, temperature=1.0)
    repeats = args.repeats

    # VAE training step (forward + backward), prior frozen
    model.train()
    step_generator = torch.Generator().manual_seed(1)

    def vae_old():
        old_loss(model, binary, parse, generator=step_generator, **settings).backward()

    def vae_new():
        model.loss(binary, parse, generator=step_generator, **settings).loss.backward()

    def bare():
        q = model.encode(binary)
        out = model.decode(model.render(parse))
        (q.what.sum() + q.where.sum() + q.whether.sum() + model.output.log_prob(out, binary).sum()).backward()

    old_s, new_s = side_by_side(vae_old, vae_new, repeats)
    bare_s = median_seconds(bare, repeats)
    n = args.batch_size
    result.update(vae_step_old_images_per_s=round(n / old_s, 1), vae_step_new_images_per_s=round(n / new_s, 1),
                  vae_step_ratio=round(old_s / new_s, 2), encoder_decoder_images_per_s=round(n / bare_s, 1))  # fmt: skip

    # prior pass alone (no gradients), batch 100
    with torch.no_grad():
        old_s, new_s = side_by_side(lambda: old_prior_logits(model, parse), lambda: model.prior_logits(parse), repeats)
    result.update(prior_pass_old_images_per_s=round(n / old_s, 1), prior_pass_new_images_per_s=round(n / new_s, 1),
                  prior_pass_ratio=round(old_s / new_s, 2))  # fmt: skip

    # prior pre-training step (forward + backward into the prior's weights, dropout on), batch 64
    trainable = prior_from_config(config, shape, registry).train()
    small = parse[: args.prior_batch_size]

    def prior_step(logits_of):
        trainable.zero_grad(set_to_none=True)
        (-distributions.log_prob(logits_of(), small)).mean().backward()

    from npdraw_core.latents import prior_frames

    old_s, new_s = side_by_side(
        lambda: prior_step(lambda: trainable(prior_frames(small, bank, grid))),
        lambda: prior_step(lambda: trainable.logits_from_latents(small, bank, grid)),
        repeats,
    )
    m = small.batch_size
    result.update(prior_step_old_images_per_s=round(m / old_s, 1), prior_step_new_images_per_s=round(m / new_s, 1),
                  prior_step_ratio=round(old_s / new_s, 2))  # fmt: skip

    # NLL bound, 50 importance samples
    model.eval()
    test = canvas_images(dataset.load("test"), 28)[: args.nll_images]
    test = (test > torch.rand(test.shape, generator=torch.Generator().manual_seed(2))).float()
    samples = args.nll_samples
    with torch.no_grad():
        old_s, new_s = side_by_side(
            lambda: old_bound(model, test, num_samples=samples, generator=torch.Generator().manual_seed(3)),
            lambda: model.log_likelihood_bound(test, num_samples=samples, generator=torch.Generator().manual_seed(3)),
            max(1, repeats // 2),
        )
        same = torch.allclose(
            old_bound(model, test, num_samples=samples, generator=torch.Generator().manual_seed(3)),
            model.log_likelihood_bound(test, num_samples=samples, generator=torch.Generator().manual_seed(3)),
            rtol=1e-5, atol=1e-3,
        )  # fmt: skip
    k = len(test)
    result.update(nll_old_images_per_s=round(k / old_s, 2), nll_new_images_per_s=round(k / new_s, 2),
                  nll_ratio=round(old_s / new_s, 2), nll_same_bound=bool(same), nll_samples=samples,
                  nll_full_test_set_minutes_new=round(10000 / (k / new_s) / 60, 1))  # fmt: skip

    # single-image latency (bulk generator, batch 1)
    latencies = []
    model.sample(1, generator=torch.Generator().manual_seed(0))
    for seed in range(args.latency_runs):
        started = time.perf_counter()
        model.sample(1, generator=torch.Generator().manual_seed(seed))
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    result.update(latency_ms_p50=round(1000 * latencies[len(latencies) // 2], 2),
                  latency_ms_p99=round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2))  # fmt: skip
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
