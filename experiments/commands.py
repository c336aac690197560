"""CLI commands of this package, contributed through the `npdraw_register_commands` hook (filled in by the
package's command module; imports stay light: the CLI imports this module for --help)."""

from __future__ import annotations

from npdraw_core.hookspecs import hookimpl


@hookimpl
def npdraw_register_commands(subparsers):
    del subparsers  # commands are added as they are built
