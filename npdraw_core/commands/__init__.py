"""Built-in CLI commands: each module here defines `register(subparsers)` and is picked up by the CLI.

Commands are thin: they parse arguments, build a `Run` and call the Python API that does the work.
Importing a command module must stay cheap (the CLI imports them all to build its parser, `npdraw --help`
included): import torch, the pipeline and the plugins inside the handler, not at the top of the module.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from npdraw_core.run import Run


def add_run_arguments(parser: argparse.ArgumentParser, *, config_required: bool = True) -> None:
    parser.add_argument("config", nargs=None if config_required else "?", help="YAML run config, e.g. configs/mnist.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.part_bank.bank_size=200 (repeatable)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: the config's device)")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="CPU threads for torch (default: all cores). On a machine shared with other jobs, 1 is often "
        "several times faster than oversubscribing the cores",
    )


def run_from_args(args: argparse.Namespace) -> Run:
    import torch

    from npdraw_core.run import Run

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return Run.from_file(args.config, args.overrides, device=args.device)
