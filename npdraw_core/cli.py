"""The `npdraw` command line. Built-in commands live in `npdraw_core.commands`; plugins (serving, tune,
third parties) add theirs through the `npdraw_register_commands` hook, from modules named under the
`npdraw.commands` entry-point group.

Building the parser must stay cheap (`npdraw --help` answers at once): command modules import torch and
the component plugins inside their handlers, and command plugins are loaded only when the command given
is not a built-in one (or none is given, for --help).

Errors: a user's mistake (a bad option, config value or file; a busy run directory; a missing, damaged or
foreign artefact; the machine's limits: a full disk, no memory) is one line on stderr, with a hint, and
exit code 2. These are the errors npdraw raises on purpose: `ValueError` (ConfigError, DatasetError and the
commands' checks), `CheckpointError`, `PluginError`, `RunBusyError`, and `OSError`s (a file that is not
there or not writable, a full disk). Anything else is a bug: its traceback is shown with a note saying so,
and the exit code is 1. `--debug` (or NPDRAW_DEBUG=1) shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import platform
import re
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version

from npdraw_core import __version__, commands
from npdraw_core.registry import PluginError, command_plugins, strict_plugins

# Library code logs to loggers named after its modules; these are the roots the CLI shows.
LOGGERS = ("npdraw", "npdraw_core", "npdraw_plugins", "npdraw_serving", "npdraw_tune")
HANDLER_NAME = "npdraw-cli"
DEBUG_VARIABLE = "NPDRAW_DEBUG"
BUG_REPORT = (
    "npdraw: internal error: this is a bug in npdraw or in a plugin, not a mistake of yours. The traceback "
    "above says where; please report it with the command line and `npdraw --version`"
)

logger = logging.getLogger(__name__)


def builtin_commands() -> dict[str, str]:
    """Command name → module, for every module in `npdraw_core.commands` (train_prior → train-prior)."""
    return {
        info.name.replace("_", "-"): f"{commands.__name__}.{info.name}"
        for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda info: info.name)
    }


def version_text() -> str:
    try:
        torch_version = version("torch")  # from the package metadata: importing torch takes seconds
    except PackageNotFoundError:
        torch_version = "not installed"
    return f"npdraw {__version__} (torch {torch_version}, Python {platform.python_version()})"


class Parser(argparse.ArgumentParser):
    """argparse, with a bad command line shown as one line and a hint instead of the whole usage text
    (every sub-command's parser is one of these too: argparse makes them with the parent's class)."""

    def error(self, message: str):
        message = re.sub(r"^argument (-[^/:]+)(?:/\S+)?: must ", r"\1 must ", message)  # "--num must be ..."
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(*, plugin_commands: bool = True) -> argparse.ArgumentParser:
    parser = Parser(prog="npdraw", description="NP-DRAW: draw images part by part.")
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="show only warnings and errors (before the command)"
    )
    parser.add_argument(
        "--debug", action="store_true",
        help=f"show the traceback of every error, a user's mistake too (or set {DEBUG_VARIABLE}=1)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in builtin_commands().values():
        importlib.import_module(module).register(subparsers)
    if plugin_commands:
        add_plugin_commands(subparsers)
    return parser


def add_plugin_commands(subparsers) -> None:
    manager, failed = command_plugins()
    for name, error in failed.items():
        logger.warning("command plugin %r failed to load: %s", name, error)
    for impl in manager.hook.npdraw_register_commands.get_hookimpls():
        try:
            impl.function(subparsers=subparsers)
        except Exception as error:  # one broken plugin must not take the other commands down
            if strict_plugins():
                raise PluginError(f"plugin {impl.plugin_name!r} failed to add its commands: {error!r}") from error
            logger.warning("plugin %r failed to add its commands: %s", impl.plugin_name, error)


class ConsoleHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout (or sys.stderr) is when a message comes, like logging.lastResort:
    tests swap the streams between calls (capsys), and a handler bound to an old one would write to a
    closed file."""

    def __init__(self, stream_name: str):
        super().__init__()
        self.stream_name = stream_name
        self.set_name(HANDLER_NAME)

    @property
    def stream(self):
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, value) -> None:
        pass  # StreamHandler.__init__ assigns one; the property always reads the current stream


def configure_logging(*, quiet: bool = False) -> None:
    """Library INFO messages on stdout as plain lines (what the user used to see printed), warnings and
    errors on stderr; with `quiet`, only the latter. Safe to call again: handlers are added once."""
    info = ConsoleHandler("stdout")
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = ConsoleHandler("stderr")
    problems.setLevel(logging.WARNING)
    problems.setFormatter(logging.Formatter("npdraw: %(levelname)s: %(message)s"))
    for name in LOGGERS:
        root = logging.getLogger(name)
        if not any(handler.get_name() == HANDLER_NAME for handler in root.handlers):
            root.addHandler(info)
            root.addHandler(problems)
        root.setLevel(logging.WARNING if quiet else logging.INFO)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The errors npdraw raises for a user's mistake or the machine's limits (see the module docstring)."""
    from npdraw_core.checkpoint import CheckpointError  # imports torch: only once something went wrong
    from npdraw_core.run import RunBusyError

    return ValueError, CheckpointError, PluginError, RunBusyError, OSError, MemoryError


def describe_user_error(error: BaseException) -> str:
    """One line: the error's own message, and a hint where the message cannot know it."""
    import torch

    message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the library wrote
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return f"out of memory ({message.splitlines()[0]}); use a smaller batch size (--batch-size, or the config's batch_size)"
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError | PermissionError):
        return f"{message} (a file could not be read or written: check the disk space and the path)"
    return message


def debugging(argv: list[str]) -> bool:
    """--debug, read before the parser (which may be what fails), or NPDRAW_DEBUG set to anything but 0."""
    return "--debug" in argv or os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    debug = debugging(argv)
    configure_logging()
    try:
        parser = build_parser(plugin_commands=command not in builtin_commands())
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help and --version exit 0 as usual; a bad command line returns 2
            if done.code in (0, None):
                raise
            return done.code
        configure_logging(quiet=args.quiet)
        result = args.handler(args)
    except KeyboardInterrupt:
        print("npdraw: interrupted; artefacts written so far are kept and the next run resumes", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to a pipe that closed (`npdraw plugins | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        return 141
    except Exception as error:
        import torch

        user = isinstance(error, (*user_error_types(), torch.OutOfMemoryError))
        if debug or not user:
            traceback.print_exc(file=sys.stderr)
        if not user:
            print(BUG_REPORT, file=sys.stderr)
            return 1
        print(f"npdraw: error: {describe_user_error(error)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
