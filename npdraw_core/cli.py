"""The `npdraw` command line. Built-in commands live in `npdraw_core.commands`; plugins (serving, tune,
third parties) add theirs through the `npdraw_register_commands` hook."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from npdraw_core import commands
from npdraw_core.checkpoint import CheckpointError
from npdraw_core.config import ConfigError
from npdraw_core.registry import PluginError, default_registry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npdraw", description="NP-DRAW: draw images part by part.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{module_info.name}").register(subparsers)
    default_registry().plugin_manager.hook.npdraw_register_commands(subparsers=subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        result = args.handler(args)
    except (ConfigError, PluginError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"npdraw: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npdraw: interrupted; artefacts written so far are kept and the next run resumes", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
