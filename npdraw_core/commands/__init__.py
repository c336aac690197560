"""Built-in CLI commands: each module here defines `register(subparsers)` and is picked up by the CLI.

Commands are thin: they parse arguments, build a `Run` and call the Python API that does the work.
"""

from __future__ import annotations

import argparse

from npdraw_core.run import Run


def add_run_arguments(parser: argparse.ArgumentParser, *, config_required: bool = True) -> None:
    parser.add_argument("config", nargs=None if config_required else "?", help="YAML run config, e.g. configs/mnist.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.part_bank.bank_size=200 (repeatable)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: the config's device)")


def run_from_args(args: argparse.Namespace) -> Run:
    return Run.from_file(args.config, args.overrides, device=args.device)
