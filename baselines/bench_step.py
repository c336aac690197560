"""Images/s of one training step (forward, backward, Adam step; batch 100) at a config's widths: the VAE
baseline against NP-DRAW's VAE stage (prior frozen). Steps alternate, each figure is the median of
`--repeats`; both wall-clock and process-CPU images/s are printed (CPU time is the fair one on shared cores).
Prints one JSON line.

    OMP_NUM_THREADS=1 .venv/bin/python -m npdraw_baselines.bench_step configs/demo.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("config", nargs="?", default="configs/demo.yaml")
    options.add_argument("--threads", type=int, default=1)
    options.add_argument("--repeats", type=int, default=20)
    options.add_argument("--batch-size", type=int, default=100)
    options.add_argument("--latent-dim", type=int, default=32)
    args = options.parse_args()

    import torch

    from npdraw_baselines.vae import vae_from_config
    from npdraw_core.bank import PartBankConfig, sample_patches
    from npdraw_core.build import model_from_config, prior_from_config
    from npdraw_core.config import load_config
    from npdraw_core.data import canvas_images, dynamic_binarize
    from npdraw_core.latents import Latents
    from npdraw_core.parsing import parse_images
    from npdraw_core.run import Run

    torch.set_num_threads(args.threads)
    config = load_config(args.config, ["device=cpu"])
    run = Run(config)
    model_config = config.model
    images = canvas_images(run.dataset.load("train").subset(torch.arange(2000)), model_config.canvas_size)
    bank_size = model_config.part_bank.config.bank_size
    patches = sample_patches(
        images, run.grid, num_patches=max(1000, bank_size), min_patch_mass=PartBankConfig().min_patch_mass,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    bank = patches[:bank_size].contiguous()  # the speed does not depend on which exemplars
    shape = run.model_shape(bank_size)
    parser = run.build("parser", model_config.parser, shape=shape)
    batch = images[: args.batch_size]
    parse = Latents.from_indices(
        **parse_images(parser, batch, bank, progress=False), bank_size=bank_size, num_cells=run.grid.num_cells
    )
    inputs = dynamic_binarize(batch, torch.Generator().manual_seed(0)) if run.dataset.binary else batch
    npdraw = model_from_config(config, shape, bank, prior_from_config(config, shape, run.registry), run.registry)
    vae = vae_from_config(
        config, channels=shape.channels, image_size=shape.image_size, latent_dim=args.latent_dim, registry=run.registry
    )
    npdraw_optimizer = torch.optim.Adam([p for p in npdraw.parameters() if p.requires_grad], lr=1e-3)
    vae_optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    training = config.training

    def npdraw_step() -> None:
        npdraw_optimizer.zero_grad(set_to_none=True)
        npdraw.loss(inputs, parse, reg_weight=training.reg_weight, temperature=1.0, generator=generator).loss.backward()
        npdraw_optimizer.step()

    def vae_step() -> None:
        vae_optimizer.zero_grad(set_to_none=True)
        vae.loss(inputs, generator).mean().backward()
        vae_optimizer.step()

    def timed(step) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        return time.perf_counter() - wall, time.process_time() - cpu

    npdraw.train(), vae.train()
    for _ in range(3):
        npdraw_step(), vae_step()
    times: dict[str, list[tuple[float, float]]] = {"npdraw": [], "vae_baseline": []}
    for _ in range(args.repeats):
        times["npdraw"].append(timed(npdraw_step))
        times["vae_baseline"].append(timed(vae_step))
    result = {"config": args.config, "threads": torch.get_num_threads(), "batch_size": args.batch_size}
    for name, measured in times.items():
        wall, cpu = (statistics.median(t[i] for t in measured) for i in (0, 1))
        result[name] = {"wall_images_per_s": round(args.batch_size / wall, 1), "cpu_images_per_s": round(args.batch_size / cpu, 1)}
    result["trainable_parameters"] = {
        "npdraw": sum(p.numel() for p in npdraw.parameters() if p.requires_grad),
        "vae_baseline": sum(p.numel() for p in vae.parameters()),
    }
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
