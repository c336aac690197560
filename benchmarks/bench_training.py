"""Issue 11: training step, evaluation, latency, parsing and bank figures, old and new side by side in one
process with a fixed thread count. Prints ONE JSON line.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py            # demo sizes, 1 thread
    .venv/bin/python benchmarks/bench_training.py --threads 2 --nll-images 50  # quicker, 2 threads
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py --sections latency --parse-images 0 \
        --num-patches 0 --latency-runs 200                                     # sampling latency only

Demo sizes (configs/demo.yaml): K=5, M=50, T=36, prior d_model 64 / depth 4, conv encoder/decoder with 32
channels, batch 100 (prior pre-training: 64). The bank is FasterPAM on 10,000 patches of the MNIST training
images and the parses are the heuristic parser's; the networks are freshly initialised (speed does not depend
on what they learnt). "old" is the computation before issue 11, kept verbatim in benchmarks/before_issue11.py.
Old and new runs alternate, and each figure is the
median of `--repeats` runs, so a neighbour's load hits both alike. Ratios are of CPU time (the process's own
time, which a neighbour on a shared machine disturbs far less than wall time); `*_wall` keys give the wall
time figures too, and `*_ratio_ceiling` the most any rewrite could reach here (see `products_alone`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from before_issue11 import old_bound, old_loss, old_prior_logits, old_sample, old_transformer

REPO = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------------------------------
def timed(fn) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def median_seconds(fn, repeats: int) -> tuple[float, float]:
    runs = [timed(fn) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def side_by_side(old, new, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (CPU, wall) seconds of `old` and `new`, alternating (after one warm-up run of each)."""
    old(), new()
    runs = {"old": [], "new": []}
    for _ in range(repeats):
        runs["old"].append(timed(old))
        runs["new"].append(timed(new))
    return {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in runs.items()}


def figures(name: str, count: int, times: dict[str, tuple[float, float]]) -> dict:
    """{name}_old/new_images_per_s (CPU time), the ratio, and the same from wall time."""
    (old_cpu, old_wall), (new_cpu, new_wall) = times["old"], times["new"]
    return {
        f"{name}_old_images_per_s": round(count / old_cpu, 2),
        f"{name}_new_images_per_s": round(count / new_cpu, 2),
        f"{name}_ratio": round(old_cpu / new_cpu, 2),
        f"{name}_ratio_wall": round(old_wall / new_wall, 2),
    }


# the products a step cannot do without: name → index of the first tensor operand
_PRODUCTS = {"aten::mm": 0, "aten::bmm": 0, "aten::addmm": 1, "aten::baddbmm": 1, "aten::convolution": 0,
             "aten::convolution_backward": 0}  # fmt: skip


def products_alone(fn):
    """A function that runs `fn`'s matrix products and convolutions (forward and backward) alone, on random
    tensors of the shapes `fn` used them with (recorded once by the profiler), and nothing else (operands are
    contiguous where `fn` may have passed transposed ones). Its time is what no rewrite of the rest of `fn` can
    go below; old time / its time bounds the ratio any such rewrite can reach on this machine."""
    from torch.profiler import profile

    with profile(record_shapes=True) as recorded:
        fn()
    calls = []
    for event in recorded.events():
        parent = event.cpu_parent
        while parent is not None and parent.name not in _PRODUCTS:
            parent = parent.cpu_parent
        if event.name not in _PRODUCTS or parent is not None:  # counted once, at the outermost product
            continue
        shapes, arguments = event.input_shapes, event.concrete_inputs
        if event.name == "aten::convolution":
            x, weight, bias = (torch.randn(shape) if shape else None for shape in shapes[:3])
            calls.append((torch.convolution, (x, weight, bias, *arguments[3:])))
        elif event.name == "aten::convolution_backward":
            tensors = [torch.randn(shape) for shape in shapes[:3]]
            calls.append((torch.ops.aten.convolution_backward, (*tensors, *arguments[3:])))
        else:
            first = _PRODUCTS[event.name]
            calls.append((torch.matmul, (torch.randn(shapes[first]), torch.randn(shapes[first + 1]))))

    def run() -> None:
        for op, arguments in calls:
            op(*arguments)

    return run


def ceiling(name: str, times: dict[str, tuple[float, float]]) -> dict:
    """{name}_ratio_ceiling: the old computation's CPU time over that of the new one's products alone
    (`products_alone`): the most any implementation doing the same products could reach here."""
    return {f"{name}_ratio_ceiling": round(times["old"][0] / times["new"][0], 2)}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


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
    options.add_argument("--default-malloc", action="store_true",
                         help="keep glibc's malloc defaults (the CLI retains freed memory: npdraw_core.threads)")
    options.add_argument("--sections", nargs="+", choices=["training", "nll", "latency"],
                         default=["training", "nll", "latency"], help="which model measurements to run")
    args = options.parse_args()
    torch.set_num_threads(args.threads)
    from npdraw_core.threads import retain_freed_memory

    retained = False if args.default_malloc else retain_freed_memory()

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
        "freed_memory_retained": retained,
    }

    # bank: FasterPAM on sampled patches (or random patches when skipped); CPU seconds, fair on a busy machine
    started = time.process_time()
    patches = sample_patches(train, grid, num_patches=max(args.num_patches, bank_size),
                             min_patch_mass=PartBankConfig(bank_size=bank_size).min_patch_mass,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    result["sample_patches_cpu_seconds"] = round(time.process_time() - started, 3)
    if args.num_patches:
        engine = registry.get("part_bank", "kmedoids")
        points = patches.flatten(1).numpy()
        # the kmedoids package imports scikit-learn when it is installed (~1-2 s, once per process): reported
        # apart from the computation
        started = time.process_time()
        import kmedoids  # noqa: F401

        result["bank_import_cpu_seconds"] = round(time.process_time() - started, 3)
        started = time.process_time()
        rows = np.asarray(engine.build(engine.config_class(bank_size=bank_size)).select(points, bank_size, seed=0))
        result["bank_cpu_seconds"] = round(time.process_time() - started, 3)
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
        started = time.process_time()
        parse_images(parser, images, bank, progress=False)
        result["parse_images_per_cpu_second"] = round(len(images) / (time.process_time() - started), 1)
        result["parse_images"] = len(images)

    prior = prior_from_config(config, shape, registry)
    model = model_from_config(config, shape, bank, prior, registry)
    batch = train[: args.batch_size]
    indices = parse_images(parser, batch, bank, progress=False)
    parse = Latents.from_indices(**indices, bank_size=bank_size, num_cells=grid.num_cells)
    binary = (batch > torch.rand(batch.shape, generator=torch.Generator().manual_seed(0))).float()
    settings = dict(reg_weight=50.0, temperature=1.0)
    repeats = args.repeats

    if "training" in args.sections:
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

        n = args.batch_size
        result.update(figures("vae_step", n, side_by_side(vae_old, vae_new, repeats)))
        result.update(ceiling("vae_step", side_by_side(vae_old, products_alone(vae_new), repeats)))
        result["encoder_decoder_images_per_s"] = round(n / median_seconds(bare, repeats)[0], 1)

        # prior pass alone (no gradients), batch 100
        with torch.no_grad():
            times = side_by_side(lambda: old_prior_logits(model, parse), lambda: model.prior_logits(parse), repeats)
        result.update(figures("prior_pass", n, times))

        # prior pre-training step (forward + backward into the prior's weights, dropout on), batch 64
        trainable = prior_from_config(config, shape, registry).train()
        small = parse[: args.prior_batch_size]

        def prior_step(logits_of):
            trainable.zero_grad(set_to_none=True)
            (-distributions.log_prob(logits_of(), small)).mean().backward()

        from npdraw_core.latents import prior_frames

        def old_step():
            prior_step(lambda: old_transformer(trainable, prior_frames(small, bank, grid)))

        def new_step():
            prior_step(lambda: trainable.logits_from_latents(small, bank, grid))

        times = side_by_side(old_step, new_step, repeats)
        result.update(figures("prior_step", small.batch_size, times))
        # The same step with the frame embeddings given (no embedding work at all): the transformer's share,
        # common to old and new. The old step's time over this one bounds what any embedding could reach.
        from npdraw_plugins.priors.transformer import _dropout

        tokens = trainable.embed_latents(small, bank, grid).detach()

        def transformer_only():
            hidden = _dropout(tokens + trainable.positions[: small.num_steps], trainable.config.dropout, True)
            return trainable._transform(hidden)

        times = side_by_side(old_step, lambda: prior_step(transformer_only), repeats)
        result["prior_step_transformer_only_images_per_s"] = round(small.batch_size / times["new"][0], 2)
        result["prior_step_ratio_bound"] = round(times["old"][0] / times["new"][0], 2)
        result.update(ceiling("prior_step", side_by_side(old_step, products_alone(new_step), repeats)))

    model.eval()
    if "nll" in args.sections:
        # NLL bound, 50 importance samples
        test = canvas_images(dataset.load("test"), 28)[: args.nll_images]
        test = (test > torch.rand(test.shape, generator=torch.Generator().manual_seed(2))).float()
        samples = args.nll_samples

        def old_nll():
            return old_bound(model, test, num_samples=samples, generator=torch.Generator().manual_seed(3))

        def new_nll():
            return model.log_likelihood_bound(test, num_samples=samples, generator=torch.Generator().manual_seed(3))

        with torch.no_grad():
            times = side_by_side(old_nll, new_nll, max(1, repeats // 2))
            same = torch.allclose(old_nll(), new_nll(), rtol=1e-5, atol=1e-3)
            result.update(ceiling("nll", side_by_side(old_nll, products_alone(new_nll), max(1, repeats // 2))))
        k = len(test)
        result.update(figures("nll", k, times))
        full_minutes = 10000 / (k / times["new"][0]) / 60
        result.update(nll_same_bound=bool(same), nll_samples=samples, nll_full_test_set_cpu_minutes_new=round(full_minutes, 1),
                      nll_full_test_set_minutes_two_cores=round(full_minutes / 2, 1))  # fmt: skip

    if "latency" in args.sections:
        # single-image latency, old and new, same images: a bulk seed (one row), and a per-sample seed (the
        # serving path: one block of `default_block_size` rows). "stepped" is the new sampler with the prior's
        # one-call loop hidden (each step called from Python). Each sampler runs in its own block of runs after
        # a warm-up (alternating them made the faster one pay the other's cache misses).
        from npdraw_core.contracts import stepped_in_python
        from npdraw_core.sampling import generators_for

        def new_sample(seed: int, seeded: bool):
            return model.sample(1, generator=generators_for([seed]) if seeded else torch.Generator().manual_seed(seed))

        def stepped_sample(seed: int, seeded: bool):
            with stepped_in_python(model.prior):
                return new_sample(seed, seeded)

        identical = True
        for path, runs in (("", args.latency_runs), ("seeded_", max(3, args.latency_runs // 5))):
            seeded = bool(path)
            samplers = {
                "old": lambda seed, seeded=seeded: old_sample(model, seed, seeded=seeded),
                "stepped": lambda seed, seeded=seeded: stepped_sample(seed, seeded),
                "new": lambda seed, seeded=seeded: new_sample(seed, seeded),
            }
            outputs: dict[str, list] = {}
            for name, sampler in samplers.items():
                for warm_up in range(3):  # TorchScript optimises a function after its first calls
                    sampler(10_000 + warm_up)
                times, outputs[name] = [], []
                for seed in range(runs):
                    cpu, wall = time.process_time(), time.perf_counter()
                    outputs[name].append(sampler(seed)[:2])
                    times.append((time.process_time() - cpu, time.perf_counter() - wall))
                cpu, wall = [t[0] for t in times], [t[1] for t in times]
                result.update({
                    f"latency_{path}{name}_ms_p50": round(1000 * percentile(wall, 0.5), 2),
                    f"latency_{path}{name}_ms_p99": round(1000 * percentile(wall, 0.99), 2),
                    f"latency_{path}{name}_cpu_ms_p50": round(1000 * percentile(cpu, 0.5), 2),
                    f"latency_{path}{name}_cpu_ms_p99": round(1000 * percentile(cpu, 0.99), 2),
                })  # fmt: skip
            identical &= all(
                torch.equal(a, b) for other in ("stepped", "new")
                for old, new in zip(outputs["old"], outputs[other], strict=True) for a, b in zip(old, new, strict=True)
            )  # fmt: skip
            # The one-call loop against stepping, paired: each seed sampled both ways back to back (the same
            # model and memory, so no cache penalty), which cancels this machine's drift; median of the ratios.
            pairs = []
            for seed in range(runs):
                seconds = {}
                for name in ("stepped", "new") if seed % 2 else ("new", "stepped"):
                    started = time.perf_counter()
                    samplers[name](seed)
                    seconds[name] = time.perf_counter() - started
                pairs.append(seconds["new"] / seconds["stepped"])
            result[f"latency_{path}new_over_stepped_paired"] = round(statistics.median(pairs), 3)
        result["latency_same_images"] = bool(identical)

    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
