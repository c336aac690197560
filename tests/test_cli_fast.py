"""The CLI without running a pipeline: it starts without importing torch, answers --help and --version,
finds plugin commands through the `npdraw.commands` entry-point group, and shows library log messages as
plain lines (hidden by --quiet)."""

from __future__ import annotations

import logging
import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

import npdraw_core
from npdraw_core import cli, registry
from npdraw_core.cli import main


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_python_m_npdraw_core_shows_the_commands():
    result = subprocess.run(
        [sys.executable, "-m", "npdraw_core", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage: npdraw" in result.stdout
    assert "train-prior" in result.stdout and "plugins" in result.stdout


def test_importing_the_cli_and_the_package_does_not_import_torch():
    result = run_python(
        "import sys, npdraw_core, npdraw_core.cli\n"
        "assert npdraw_core.__version__\n"
        "print(sorted(name for name in ('torch', 'npdraw_core.model_file') if name in sys.modules))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_load_trained_is_imported_on_first_use():
    from npdraw_core.model_file import load_trained

    assert npdraw_core.load_trained is load_trained
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        npdraw_core.nope  # noqa: B018


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"npdraw {npdraw_core.__version__} (torch ")


def test_run_help_lists_the_pipeline_stages(capsys):
    from npdraw_core.pipeline import STAGES

    with pytest.raises(SystemExit):
        main(["--help"])
    # commands/run.py repeats the stages to avoid importing the pipeline (and torch) for --help
    assert " → ".join(STAGES) in capsys.readouterr().out.replace("\n", " ")


HELLO_PLUGIN = """
from npdraw_core.hookspecs import hookimpl

@hookimpl
def npdraw_register_commands(subparsers):
    parser = subparsers.add_parser("hello", help="say hello from a plugin")
    parser.add_argument("name")
    parser.set_defaults(handler=lambda args: print(f"hello {args.name}"))
"""

LOGGING_PLUGIN = """
import logging
from npdraw_core.hookspecs import hookimpl

def talk(args):
    logging.getLogger("npdraw_core.bank").info("[bank] bank.pt matches the config; skipping")
    logging.getLogger("npdraw_plugins.priors").warning("prior is tiny")

@hookimpl
def npdraw_register_commands(subparsers):
    subparsers.add_parser("talk").set_defaults(handler=talk)
"""


def install(tmp_path, monkeypatch, module: str, source: str, group: str = registry.COMMANDS_GROUP) -> EntryPoint:
    """`module` written to tmp_path and the only entry point of `group` (module names differ per test:
    Python caches imported modules)."""
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = EntryPoint(name=module, value=module, group=group)
    monkeypatch.setattr(registry, "entry_points", lambda group: [entry] if group == entry.group else [])
    return entry


def test_plugin_commands_run_and_appear_in_help(tmp_path, monkeypatch, capsys):
    install(tmp_path, monkeypatch, "npdraw_hello_command", HELLO_PLUGIN)
    assert main(["hello", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "say hello from a plugin" in capsys.readouterr().out


def test_builtin_commands_do_not_load_command_plugins(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("command plugins were loaded for a built-in command")

    monkeypatch.setattr(cli, "command_plugins", fail)
    with pytest.raises(SystemExit):
        main(["plugins", "--help"])


def test_a_broken_command_plugin_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    install(tmp_path, monkeypatch, "npdraw_broken_command", "raise ImportError('needs libfoo')\n")
    with pytest.raises(SystemExit):
        main(["--help"])
    captured = capsys.readouterr()
    assert "train-prior" in captured.out
    assert "'npdraw_broken_command' failed to load: ImportError: needs libfoo" in captured.err


def test_a_command_hook_in_the_components_group_gets_a_teaching_warning(tmp_path, monkeypatch, caplog):
    install(tmp_path, monkeypatch, "npdraw_misplaced_command", HELLO_PLUGIN, group=registry.ENTRY_POINT_GROUP)
    with caplog.at_level(logging.WARNING, logger="npdraw_core.registry"):
        registry.build_registry()
    assert "'npdraw.commands' entry-point group" in caplog.text


def test_library_messages_are_plain_lines_on_stdout_and_quiet_hides_them(tmp_path, monkeypatch, capsys):
    install(tmp_path, monkeypatch, "npdraw_talking_command", LOGGING_PLUGIN)
    for _ in range(2):  # a second main() must not add a second handler
        assert main(["talk"]) == 0
        captured = capsys.readouterr()
        assert captured.out == "[bank] bank.pt matches the config; skipping\n"
        assert captured.err == "npdraw: WARNING: prior is tiny\n"
    assert main(["-q", "talk"]) == 0
    assert capsys.readouterr() == ("", "npdraw: WARNING: prior is tiny\n")


FAILING_PLUGIN = """
from npdraw_core.config import ConfigError
from npdraw_core.hookspecs import hookimpl

def fail(args):
    if args.kind == "mistake":
        raise ConfigError("training.lr must be a number greater than 0, got -1.0")
    if args.kind == "disk":
        raise OSError(28, "No space left on device")
    return {}["missing"]  # a bug: KeyError

@hookimpl
def npdraw_register_commands(subparsers):
    parser = subparsers.add_parser("fail")
    parser.add_argument("kind")
    parser.set_defaults(handler=fail)
"""


@pytest.mark.parametrize("kind", ["mistake", "disk"])
def test_a_users_mistake_is_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, kind):
    install(tmp_path, monkeypatch, f"npdraw_fail_{kind}", FAILING_PLUGIN)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    assert main(["fail", kind]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npdraw: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert ("training.lr must be" in err) if kind == "mistake" else ("check the disk space" in err)


def test_a_bug_shows_its_traceback_and_says_it_is_a_bug(tmp_path, monkeypatch, capsys):
    install(tmp_path, monkeypatch, "npdraw_fail_bug", FAILING_PLUGIN)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    assert main(["fail", "bug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'missing'" in err
    assert "this is a bug in npdraw or in a plugin" in err


@pytest.mark.parametrize("how", ["--debug", "NPDRAW_DEBUG=1"])
def test_debug_shows_the_traceback_of_a_users_mistake_too(tmp_path, monkeypatch, capsys, how):
    install(tmp_path, monkeypatch, f"npdraw_fail_debug_{how[-1]}", FAILING_PLUGIN)
    if how == "--debug":
        argv = ["--debug", "fail", "mistake"]
    else:
        monkeypatch.setenv(cli.DEBUG_VARIABLE, "1")
        argv = ["fail", "mistake"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err and err.rstrip().endswith("got -1.0")
    assert "this is a bug" not in err


def test_a_bad_command_line_is_one_line_with_a_hint(capsys):
    assert main(["sample", "--model", "m.pt", "--num", "many"]) == 2
    err = capsys.readouterr().err
    assert err == "npdraw sample: error: argument --num: invalid int value: 'many' (see `npdraw sample --help`)\n"
