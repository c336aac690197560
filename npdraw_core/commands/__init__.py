"""Built-in CLI commands: each module here defines `register(subparsers)` and is picked up by the CLI.

Commands are thin: they parse arguments, build a `Run` and call the Python API that does the work.
Importing a command module must stay cheap (the CLI imports them all to build its parser, `npdraw --help`
included): import torch, the pipeline and the plugins inside the handler, not at the top of the module.
"""

from __future__ import annotations

import argparse
import math
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from npdraw_core.config import RunConfig
    from npdraw_core.model_file import ModelFile
    from npdraw_core.run import Run

# Settings a command that uses a trained model may change: they pick the run (output_dir, name), the
# device, the pipeline's stages or how it is evaluated, never what the trained artefacts mean.
FREE_FOR_TRAINED = ("output_dir", "name", "device", "stages", "evaluation")


# -- argument types: options are checked when the command line is read, before any work ------------------
def finite_positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, got {text!r}")
    return value


def whole_number_at_least(minimum: int, wording: str):
    """An argparse type: an integer ≥ `minimum`, with `wording` saying so in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {wording}, got {value}")
        return value

    return parse


positive_int = whole_number_at_least(1, "at least 1")
non_negative_int = whole_number_at_least(0, "0 or more")


def device_name(text: str) -> str:
    from npdraw_core.config import check_device_name

    try:
        check_device_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_run_arguments(parser: argparse.ArgumentParser, *, config_required: bool = True) -> None:
    parser.add_argument("config", nargs=None if config_required else "?", help="YAML run config, e.g. configs/mnist.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.part_bank.bank_size=200 (repeatable)",
    )
    add_machine_arguments(parser)


def add_machine_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --threads, for every command that runs a model."""
    parser.add_argument(
        "--device", type=device_name, default=None, help="cpu, cuda, cuda:1 or auto (default: the config's device)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None,
        help="CPU threads for torch (default: $NPDRAW_THREADS, else 1 on up to 4 cores and half the cores "
        "above: more threads collapse as soon as another process shares the cores)",
    )


def run_from_args(args: argparse.Namespace) -> Run:
    from npdraw_core.run import Run
    from npdraw_core.threads import configure_threads

    configure_threads(args.threads)  # --threads, else NPDRAW_THREADS, else a contention-safe default
    return Run.from_file(args.config, args.overrides, device=args.device)


def command_line(command: str, args: argparse.Namespace, *extra: str) -> str:
    """The npdraw command line that runs `command` on the same config and overrides (for messages)."""
    words = ["npdraw", command, str(args.config)]
    for override in [*args.overrides, *extra]:
        words += ["--set", override]
    return shlex.join(words)


def trained_model_of(args: argparse.Namespace, command: str) -> tuple[Run, ModelFile]:
    """The run of CONFIG and the model file in its run directory, for a command that uses a trained model
    and never trains (`sample`, `eval`, `edit`). Stops with the command to run when there is no model, and
    refuses a config or overrides that differ from the model's own where that changes what it means."""
    from npdraw_core.checkpoint import CheckpointError
    from npdraw_core.model_file import MODEL_FILE, read_model_file

    run = run_from_args(args)
    path = run.path(MODEL_FILE)
    if not path.exists():
        raise CheckpointError(
            f"{str(run.dir)!r} has no trained model ({MODEL_FILE}); `npdraw {command}` uses a trained model and "
            f"never trains. Train it first: {command_line('run', args)}"
        )
    model_file = read_model_file(path, registry=run.registry)
    check_same_meaning(model_file.config, run.config, command, args)
    return run, model_file


def check_same_meaning(trained: RunConfig, requested: RunConfig, command: str, args: argparse.Namespace) -> None:
    """ConfigError listing the settings (outside FREE_FOR_TRAINED) in which `requested` differs from the
    config the model was trained with."""
    from npdraw_core.config import ConfigError

    old, new = flatten(trained.to_dict()), flatten(requested.to_dict())
    changed = [
        key for key in sorted(old.keys() | new.keys())
        if key.split(".")[0] not in FREE_FOR_TRAINED and old.get(key, "(unset)") != new.get(key, "(unset)")
    ]  # fmt: skip
    if not changed:
        return
    shown = "; ".join(f"{key}: trained with {old.get(key, '(unset)')!r}, asked for {new.get(key, '(unset)')!r}" for key in changed[:5])
    more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
    raise ConfigError(
        f"the trained model in {str(requested.run_dir)!r} was made with other settings than CONFIG and --set give: "
        f"{shown}{more}. `npdraw {command}` uses the trained model as it is and never retrains: drop those "
        f"overrides, or train a run with them under its own name: {command_line('run', args, 'name=NEW_NAME')}"
    )


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists and values are leaves."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
