"""`npdraw tune`: the search on Ray Tune, contributed to the CLI through the `npdraw_register_commands` hook.
Imports stay light here (the CLI imports this module for --help); Ray and torch load in the handler."""

from __future__ import annotations

import os

from npdraw_core.hookspecs import hookimpl


@hookimpl
def npdraw_register_commands(subparsers):
    parser = subparsers.add_parser(
        "tune", help="search config keys (patch size K, bank size M, λ, ...) with Ray Tune",
        description="Run a Ray Tune search over the keys of SEARCH.yaml, on a local Ray or a cluster. "
        "Banks, parses and priors are computed once per distinct setting in STORAGE/cache.",
    )  # fmt: skip
    parser.add_argument("config", nargs="?", help="YAML run config the search starts from, e.g. configs/mnist.yaml")
    parser.add_argument("--search", help="search file, e.g. configs/search_mnist.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the run config (repeatable)")
    parser.add_argument("--storage", default=None, help="where experiments and the shared cache live "
                        "(default: OUTPUT_DIR/tune; on a cluster, a path every node sees)")
    parser.add_argument("--name", default=None, help="experiment name (default: CONFIG_NAME-SEARCH-TIME)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=None,
                        help="GPUs per trial, fractions allowed (0.25 packs 4 trials on a GPU); default 0.5 "
                        "when the cluster has GPUs, else 0")
    parser.add_argument("--max-concurrent-trials", type=int, default=None)
    parser.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial (from its last checkpoint)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="a running Ray cluster ('auto' or host:port; default $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--resume", metavar="EXPERIMENT_DIR", default=None,
                        help="continue an interrupted experiment (STORAGE/NAME) without re-running finished trials")
    parser.set_defaults(handler=_tune)


def _tune(args) -> None:
    from pathlib import Path

    from npdraw_core.config import load_config
    from npdraw_tune.experiment import (
        Options,
        default_name,
        resume_search,
        run_search,
        summary_table,
        write_results,
    )  # fmt: skip
    from npdraw_tune.search import load_search

    if args.resume:
        if args.config or args.search:
            raise ValueError("--resume continues an experiment as it was started: give only the experiment directory")
        result_grid, spec, options, config_dict = resume_search(args.resume, address=args.address)
    else:
        if not args.config or not args.search:
            raise ValueError("npdraw tune needs a run config and --search SEARCH.yaml (or --resume EXPERIMENT_DIR)")
        config = load_config(args.config, args.overrides)
        spec = load_search(args.search, config)  # checked before Ray starts
        if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
            raise ValueError(f"--max-concurrent-trials must be at least 1, got {args.max_concurrent_trials}")
        options = Options(
            storage=str(Path(args.storage or Path(config.output_dir) / "tune").resolve()),
            name=args.name or default_name(config, args.search), cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial, max_concurrent_trials=args.max_concurrent_trials,
            max_failures=args.max_failures, address=args.address,
        )  # fmt: skip
        result_grid = run_search(config, spec, options)
        config_dict = config.to_dict()
    paths = write_results(result_grid, spec, options, config_dict)
    print(summary_table(paths, spec))
    print(f"experiment: {options.experiment_dir} (resume with npdraw tune --resume {options.experiment_dir})")
    print(f"results: {paths['csv']}, plot: {paths['plot']}; best config: npdraw run {paths['best']}")
