"""`npdraw experiment low-data|ablation`: the paper's experiments from the command line, contributed through
the `npdraw_register_commands` hook. Imports stay light here (the CLI imports this module for --help);
torch, Ray and the pipeline load in the handlers."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from npdraw_core.commands import finite_positive_float, positive_int
from npdraw_core.hookspecs import hookimpl

SPLITS = ("digits", "characters", "alphabets", "samples")  # npdraw_core.config.SPLIT_TYPES (not imported: --help)


@hookimpl
def npdraw_register_commands(subparsers):
    parser = subparsers.add_parser(
        "experiment", help="the paper's experiments: low-data sweeps (Fig. 3) and the K/M/λ ablation (Table 2)",
    )
    commands = parser.add_subparsers(dest="experiment_command", metavar="EXPERIMENT", required=True)

    low = commands.add_parser(
        "low-data", help="NP-DRAW and the VAE baseline at fractions of the training data (Fig. 3)",
        description="For each fraction × seed: data.split={type: SPLIT, fraction, seed}, the whole NP-DRAW "
        "pipeline, then the VAE baseline of the same config; scored on the whole test set. Writes a CSV, a "
        "Markdown table and a plot of fid_lenet and test NLL against the fraction. digits: fraction f keeps "
        "the first round(10·f) digits.",
    )  # fmt: skip
    add_common(low)
    low.add_argument("--split", required=True, choices=SPLITS, help="what a fraction keeps")
    low.add_argument("--fractions", required=True, type=number_list(float), help="e.g. 0.1,0.2,0.4,0.8")
    low.add_argument("--seeds", default=[0], type=number_list(int), help="e.g. 0,1 (default 0)")
    budget = low.add_mutually_exclusive_group()
    budget.add_argument("--baseline-cpu-minutes", type=finite_positive_float, default=None,
                        help="the VAE baseline's budget of process CPU minutes per point")
    budget.add_argument("--baseline-epochs", type=positive_int, default=None,
                        help="the baseline's budget in epochs (default: the config's training.epochs)")
    low.add_argument("--no-baseline", action="store_true", help="NP-DRAW only")
    low.set_defaults(handler=_low_data)

    ablation = commands.add_parser(
        "ablation", help="the Table 2 axes: K ∈ {5,6,8}, M ∈ {10,50,200}, λ ∈ {0,1,50,100}",
        description="Each axis varied alone around CONFIG's own K, M and λ (the paper: K at M=50; M at K=5; "
        "λ at K=5, M=50, so give a config with K=5, M=50), with CONFIG's schedule as the budget of every "
        "point; a table of parse PSNR, FID, test NLL, reconstruction and KL, and whether the paper's trends hold.",
    )  # fmt: skip
    add_common(ablation)
    ablation.add_argument("--patch-sizes", type=number_list(int), default=None, help="K axis (default 5,6,8)")
    ablation.add_argument("--bank-sizes", type=number_list(int), default=None, help="M axis (default 10,50,200)")
    ablation.add_argument("--reg-weights", type=number_list(float), default=None, help="λ axis (default 0,1,50,100)")
    ablation.set_defaults(handler=_ablation)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config whose schedule is the budget of every point")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value of every point (repeatable)")
    parser.add_argument("--name", default=None, help="experiment folder name (default: from the config and time)")
    parser.add_argument("--dir", default=None, help="parent folder of the experiment (default: OUTPUT_DIR/experiments)")
    parser.add_argument("--results", default=None, metavar="STEM",
                        help="write STEM.csv, STEM.md (and STEM.png) here, e.g. docs/low_data_mnist "
                        "(default: EXPERIMENT_DIR/results)")
    parser.add_argument("--no-ray", action="store_true", help="run the points one after another in this process")
    parser.add_argument("--cpus-per-trial", type=finite_positive_float, default=1.0, help="Ray: CPUs per point")
    parser.add_argument("--max-concurrent-trials", type=positive_int, default=None, help="Ray: points at once")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="a running Ray cluster")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: $NPDRAW_THREADS, else a contention-safe default)")


def number_list(kind):
    def parse(text: str) -> list:
        try:
            values = [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one value, got {text!r}")
        return values

    return parse


def prepare(args, kind: str):
    """(base config dict, experiment dir, sweep options), checked before anything runs."""
    from npdraw_core.config import load_config
    from npdraw_core.threads import configure_threads
    from npdraw_experiments.sweep import SweepOptions

    threads = configure_threads(args.threads)
    config = load_config(args.config, args.overrides)
    name = args.name or f"{kind}-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_dir = (Path(args.dir) if args.dir else Path(config.output_dir) / "experiments") / name
    options = SweepOptions(
        use_ray=not args.no_ray, cpus_per_trial=args.cpus_per_trial, max_concurrent_trials=args.max_concurrent_trials,
        address=args.address, threads=threads,
    )  # fmt: skip
    return config, experiment_dir.resolve(), options


def _low_data(args) -> None:
    from npdraw_experiments.low_data import check_splits, low_data_points, write_low_data_results
    from npdraw_experiments.sweep import BaselineBudget, run_points

    config, experiment_dir, options = prepare(args, f"low-data-{args.split}")
    points = low_data_points(args.split, args.fractions, args.seeds)
    base = config.to_dict()
    check_splits(base, points)
    baseline = None
    if not args.no_baseline:
        epochs = None if args.baseline_cpu_minutes else (args.baseline_epochs or config.training.epochs)
        baseline = BaselineBudget(cpu_minutes=args.baseline_cpu_minutes, epochs=epochs)
    rows = run_points(base, points, experiment_dir, baseline=baseline, options=options)
    title = f"{config.data.type} by {args.split}: NP-DRAW{' and the VAE baseline' if baseline else ''}"
    notes = [command_text(), budget_text(config)]
    if baseline:
        budget = f"{baseline.cpu_minutes} CPU-minutes" if baseline.cpu_minutes else f"{baseline.epochs} epoch(s)"
        notes.append(f"VAE baseline (npdraw_baselines): latent {baseline.latent_dim}, trained for {budget} per point.")
    paths = write_low_data_results(rows, args.results or experiment_dir / "results", title=title, notes=notes)
    print(paths["md"].read_text())
    print(f"experiment: {experiment_dir}\nwrote {paths['csv']}, {paths['md']}, {paths['plot']}")


def _ablation(args) -> None:
    from npdraw_experiments.ablation import Axes, ablation_points, write_ablation_results
    from npdraw_experiments.sweep import run_points

    config, experiment_dir, options = prepare(args, "ablation")
    given = {"patch_sizes": args.patch_sizes, "bank_sizes": args.bank_sizes, "reg_weights": args.reg_weights}
    axes = Axes(
        patch_size=config.model.patch_size, bank_size=config.model.part_bank.config.bank_size,
        reg_weight=config.training.reg_weight, **{key: tuple(values) for key, values in given.items() if values},
    )  # fmt: skip
    points = ablation_points(axes)
    rows = run_points(config.to_dict(), points, experiment_dir, baseline=None, options=options)
    paths = write_ablation_results(rows, args.results or experiment_dir / "results", axes=axes,
                                   budget=command_text() + "\n\n" + budget_text(config),
                                   title=f"Table 2 ablation on {config.data.type} (reduced scale)")  # fmt: skip
    print(paths["md"].read_text())
    print(f"experiment: {experiment_dir}\nwrote {paths['csv']}, {paths['md']}")


def command_text() -> str:
    """The command line that made the results, for their Markdown page."""
    import shlex
    import sys

    return "Command: `" + shlex.join(["npdraw", *sys.argv[1:]]) + "`"


def budget_text(config) -> str:
    """The budget every point ran at, in words, from the config."""
    prior, training, evaluation, bank = config.prior_training, config.training, config.evaluation, config.model.part_bank
    return (
        f"Budget of every point: bank from {bank.config.num_patches:,} patches; prior {prior.epochs} epoch(s) on "
        f"at most {prior.max_train_images or 'all'} parses; VAE {training.epochs} epoch(s) on at most "
        f"{training.max_train_images or 'all'} images (batch {training.batch_size}); test NLL bound with "
        f"{evaluation.nll_samples} samples on {evaluation.nll_images or 'all'} test images; FID of "
        f"{evaluation.fid_samples:,} samples against the test set (networks: {config.model.prior.type} prior, "
        f"{config.model.encoder.type}/{config.model.decoder.type} encoder/decoder; config {config.name})."
    )
