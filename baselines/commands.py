"""`npdraw baseline train|eval|sample`: the VAE baseline from the command line, contributed through the
`npdraw_register_commands` hook. Imports stay light here (the CLI imports this module for --help); torch
and the baseline load in the handlers."""

from __future__ import annotations

from pathlib import Path

from npdraw_core.commands import (
    add_machine_arguments,
    finite_positive_float,
    non_negative_int,
    positive_int,
)  # fmt: skip
from npdraw_core.hookspecs import hookimpl


@hookimpl
def npdraw_register_commands(subparsers):
    parser = subparsers.add_parser(
        "baseline", help="a plain convolutional VAE to compare NP-DRAW with (train, eval, sample)",
        description="A Gaussian-latent VAE with the run config's encoder widths, decoder network and output "
        "distribution, trained on the same data for a CPU-time or epoch budget and scored like `npdraw eval`.",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="baseline_command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train", help="train the baseline of a run config for a budget",
        description="Train the VAE baseline of CONFIG into --out (default OUTPUT_DIR/NAME/baseline-vae, beside "
        "the NP-DRAW run) until --cpu-minutes of process CPU time or --epochs are spent (default: the "
        "config's training.epochs). Again with the same settings, it continues from baseline_last.pt.",
    )  # fmt: skip
    train.add_argument("config", help="YAML run config, e.g. configs/demo.yaml")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value (repeatable)")
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--cpu-minutes", type=finite_positive_float, default=None,
                        help="budget of process CPU time, checked after every batch")
    budget.add_argument("--epochs", type=positive_int, default=None, help="budget of epochs")
    train.add_argument("--latent-dim", type=positive_int, default=32, help="size of the Gaussian latent (default 32)")
    train.add_argument("--out", default=None, metavar="DIR", help="folder of baseline.pt and its metrics")
    add_machine_arguments(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "eval", help="NLL bound and FID of a trained baseline, as `npdraw eval` scores NP-DRAW",
        description="Score the baseline in DIR with its run config's evaluation settings; writes DIR/metrics.json.",
    )  # fmt: skip
    evaluate.add_argument("dir", metavar="DIR", help="the folder `npdraw baseline train` wrote")
    evaluate.add_argument("--nll-images", type=non_negative_int, default=None,
                          help="test images of the NLL bound (0 skips it; default: evaluation.nll_images)")
    evaluate.add_argument("--fid-samples", type=positive_int, default=None,
                          help="samples per FID (default: evaluation.fid_samples)")
    add_machine_arguments(evaluate)
    evaluate.set_defaults(handler=_eval)

    sample = commands.add_parser("sample", help="a PNG grid of samples of a trained baseline")
    sample.add_argument("dir", metavar="DIR", help="the folder `npdraw baseline train` wrote (or its baseline.pt)")
    sample.add_argument("--num", type=positive_int, default=64, help="number of samples (default 64)")
    sample.add_argument("--out", required=True, help="the .png grid to write")
    sample.add_argument("--seed", type=non_negative_int, default=0, help="seed of the samples (default 0)")
    sample.add_argument("--temperature", type=finite_positive_float, default=1.0,
                        help="scales the prior's standard deviation (default 1)")
    add_machine_arguments(sample)
    sample.set_defaults(handler=_sample)


def _train(args) -> None:
    from npdraw_core.config import load_config
    from npdraw_core.threads import configure_threads

    configure_threads(args.threads)
    overrides = [*args.overrides, *([f"device={args.device}"] if args.device else [])]
    config = load_config(args.config, overrides)
    from npdraw_baselines.training import default_output_dir, train_baseline

    out = Path(args.out) if args.out else default_output_dir(config)

    def show(record: dict) -> None:
        print(f"epoch {record['epoch']}: valid −ELBO {record['valid_loss']:.2f} nats, "
              f"{record['images_seen']} images, {record['cpu_seconds'] / 60:.2f} CPU-minutes", flush=True)  # fmt: skip

    train_baseline(config, out, cpu_minutes=args.cpu_minutes, epochs=args.epochs, latent_dim=args.latent_dim, log=show)
    print(f"wrote {out / 'baseline.pt'}; score it with: npdraw baseline eval {out}")


def _eval(args) -> None:
    from npdraw_core.threads import configure_threads

    configure_threads(args.threads)
    from npdraw_baselines.evaluation import METRICS_FILE, evaluate_baseline

    results = evaluate_baseline(args.dir, nll_images=args.nll_images, fid_samples=args.fid_samples, device=args.device)
    shown = ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in results.items())
    print(f"eval of the baseline in {args.dir}: {shown}; wrote {Path(args.dir) / METRICS_FILE}")


def _sample(args) -> None:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out!r}: the baseline writes a PNG grid; give a .png path")
    from npdraw_core.threads import configure_threads

    configure_threads(args.threads)
    from npdraw_baselines.training import load_baseline
    from npdraw_core.evaluation import generate
    from npdraw_core.sample_output import write_grid

    loaded = load_baseline(args.dir, device=args.device or "cpu")
    images = generate(loaded.model, args.num, batch_size=500, seed=args.seed, temperature=args.temperature)
    write_grid(images, out)
    print(f"wrote {out}: {args.num} samples of the baseline in {loaded.path} (seed {args.seed})")
