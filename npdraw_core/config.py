"""Run configuration: YAML files or dicts in, strictly validated dataclasses out, resolved YAML back into
the run dir.

A component is chosen by `type:`; its other keys are checked against that component's config dataclass.
Fixed sections (training, evaluation) are dataclasses too. Every config dataclass checks its own values in
`__post_init__`, raising ValueError with a message that starts with the field name ("channels must be at
least 1, got 0"); loading turns that into a ConfigError prefixed with the section's key path
("model.encoder.channels must be ..."), so a bad value fails before any stage runs.

Path-valued fields are declared with `path_field()`; loading resolves them once against the current
directory and records the absolute path, so the resolved config means the same from any directory.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import logging
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from npdraw_core import config_yaml
from npdraw_core.registry import Registry, UnknownComponentError, default_registry

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config is invalid; the message says which key and how to fix it."""


# ---------------------------------------------------------------------------------------------------------
# Helpers for config dataclasses (the core's and the plugins')


def path_field(default: Any = dataclasses.MISSING) -> Any:
    """A path-valued config field: resolved to an absolute path when the config is loaded."""
    return field(default=default, metadata={"path": True})


def finite(value: float) -> bool:
    """A finite number (any int is: math.isfinite cannot convert a huge one to a float)."""
    return isinstance(value, int) or math.isfinite(value)


def check_at_least(config: object, minimum: float, *names: str) -> None:
    """Each named field must be a finite number ≥ `minimum` (None passes: it means "not set")."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        if not finite(value):
            raise ValueError(f"{name} must be a finite number (at least {minimum}), got {value!r}")
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value!r}")


def check_positive(config: object, *names: str) -> None:
    """Each named field must be a finite number > 0 (None passes)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not (finite(value) and value > 0):
            raise ValueError(f"{name} must be a number greater than 0, got {value!r}")


def check_finite(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and not finite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")


STAGES = ("bank", "parse", "prior", "train", "eval")  # the pipeline's stages, in order
DEVICE_TYPES = ("cpu", "cuda", "mps")
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both accept it; stages derive their seeds from it


def check_device_name(name: str) -> None:
    """`auto`, `cpu`, `cuda`, `cuda:N` or `mps` (whether this machine has it is checked when a run starts)."""
    kind, sep, index = str(name).partition(":")
    if name == "auto" or (kind in DEVICE_TYPES and (not sep or (index.isdigit() and kind != "cpu"))):
        return
    raise ValueError(f"device {name!r} is not a device: use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")


# ---------------------------------------------------------------------------------------------------------
# The run config


@dataclass
class ComponentConfig:
    """A chosen component: its registered `type` and an instance of its config dataclass."""

    type: str
    config: Any

    def to_dict(self) -> dict:
        return {"type": self.type, **dataclasses.asdict(self.config)}


def component(kind: str, default_type: str) -> Any:
    return field(default_factory=lambda: {"type": default_type}, metadata={"component": kind})


SplitType = Literal["digits", "characters", "alphabets", "samples"]
SPLIT_TYPES: tuple[str, ...] = typing.get_args(SplitType)


@dataclass
class SplitConfig:
    """`data.split`: a low-data regime of the paper's §4.2, applied to the training images of any dataset by
    `npdraw_core.splits` (test stays whole). `digits`: the first round(fraction × classes) labels in label
    order (MNIST: digits 0..d); `characters`: a seeded random fraction of the labels (Omniglot's labels are
    its characters); `alphabets`: a seeded random fraction of the `alphabet` values (Omniglot); `samples`:
    a seeded random fraction of the images."""

    type: SplitType
    fraction: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not (finite(self.fraction) and 0.0 < self.fraction <= 1.0):
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}; remove data.split to use every image")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")


@dataclass
class DataConfig(ComponentConfig):
    """The `data:` section: the dataset component plus an optional low-data `split` (outside the dataset's
    own config, so that every dataset plugin gets it). Without a split it hashes and prints exactly like a
    plain component, so cache keys of runs without one do not change."""

    split: SplitConfig | None = None

    def to_dict(self) -> dict:
        return to_plain(self)


@dataclass
class ModelConfig:
    canvas_size: int = 28
    patch_size: int = 5
    part_bank: ComponentConfig = component("part_bank", "kmedoids")
    parser: ComponentConfig = component("parser", "heuristic")
    prior: ComponentConfig = component("prior", "transformer")
    encoder: ComponentConfig = component("encoder", "conv")
    decoder: ComponentConfig = component("decoder", "conv")
    output: ComponentConfig = component("output_distribution", "bernoulli")

    def __post_init__(self) -> None:
        check_at_least(self, 1, "canvas_size", "patch_size")
        if self.patch_size > self.canvas_size:
            raise ValueError(
                f"patch_size ({self.patch_size}) must be at most canvas_size ({self.canvas_size}): parts are "
                "pasted onto the canvas"
            )


@dataclass
class PriorTrainingConfig:
    # Epochs may be 0 ("no more epochs"): the stages hash their settings with epochs=0 so that raising
    # epochs continues a run instead of restarting it.
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    # the learning rate is multiplied by lr_decay over each epoch (smoothly, step by step); 1: constant.
    # A per-epoch factor, unlike a cosine over the whole schedule, lets more epochs continue a run.
    lr_decay: float = 1.0
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    early_stopping_patience: int | None = None  # epochs without validation improvement before stopping
    max_train_images: int | None = None  # train on the first N parses only (quick runs)

    def __post_init__(self) -> None:
        check_at_least(self, 0, "epochs", "grad_clip")
        check_at_least(self, 1, "batch_size", "early_stopping_patience", "max_train_images")
        check_positive(self, "lr")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay must be in (0, 1] (1: a constant learning rate), got {self.lr_decay!r}")

    def lr_at(self, epoch: float) -> float:
        """The learning rate `epoch` epochs into training (fractions: within an epoch)."""
        return self.lr * self.lr_decay**epoch

    def lineage(self) -> dict[str, Any]:
        """The settings a prior checkpoint depends on: all but the schedule's length (epochs, patience), so a
        longer schedule continues a shorter one. A constant rate is left out, which keeps the keys of the
        runs made before lr_decay existed."""
        settings = to_plain(dataclasses.replace(self, epochs=0, early_stopping_patience=None))
        if self.lr_decay == 1.0:
            del settings["lr_decay"]
        return settings


@dataclass
class TrainingConfig:
    epochs: int = 50  # may be 0, see PriorTrainingConfig
    batch_size: int = 500
    encoder_lr: float = 1e-3
    lr: float = 1e-4  # decoder and output distribution
    reg_weight: float = 50.0  # λ, weight of the parse regulariser
    whether_estimator: Literal["hard", "straight_through"] = "hard"
    min_temperature: float = 0.5  # τ(epoch) = max(min_temperature, exp(-epoch · ln2 / temperature_halflife))
    temperature_halflife: float = 50.0
    parse_forcing_rate: float | None = 0.005  # r of π_e = exp(-r·e(e+1)/2); None disables parse forcing
    # The paper forces what/where only; forcing `whether` too keeps an untrained encoder's draw flags from
    # putting wrong parts on the canvases the decoder learns from (it undid much of a decoder warm-up).
    parse_forcing_whether: bool = False
    max_train_images: int | None = None
    # Before the first epoch the decoder alone learns p(x | the parse's canvas) on this many training images
    # (drawn from the whole training split): about 5x cheaper per image than a VAE step, which also runs the
    # encoder and the frozen prior, and close to what early epochs teach it (parse forcing starts at 1).
    decoder_warmup_images: int = 0
    sample_grid_every: int = 1  # epochs between sample-grid PNGs; 0: none

    def __post_init__(self) -> None:
        check_at_least(self, 0, "epochs", "reg_weight", "parse_forcing_rate", "decoder_warmup_images", "sample_grid_every")
        check_at_least(self, 1, "batch_size", "max_train_images")
        check_positive(self, "encoder_lr", "lr", "temperature_halflife")
        if not 0.0 < self.min_temperature <= 1.0:
            raise ValueError(f"min_temperature must be in (0, 1], got {self.min_temperature!r}")
        if self.parse_forcing_whether and self.parse_forcing_rate is None:
            raise ValueError(
                "parse_forcing_whether is true but parse_forcing_rate is null, so nothing is forced: "
                "set parse_forcing_rate (e.g. 0.005) or parse_forcing_whether: false"
            )

    def lineage(self) -> dict[str, Any]:
        """The settings the trained weights depend on: all but `epochs`, so raising it continues a run. No
        warm-up and no forcing of `whether` are left out, which keeps the keys of the runs made before they existed."""
        settings = to_plain(dataclasses.replace(self, epochs=0))
        if self.decoder_warmup_images == 0:
            del settings["decoder_warmup_images"]
        if not self.parse_forcing_whether:
            del settings["parse_forcing_whether"]
        return settings


@dataclass
class EvaluationConfig:
    nll_samples: int = 50
    nll_images: int | None = None  # None: the whole test set; 0: skip the NLL
    nll_workers: int | None = None  # processes scoring the NLL on a CPU; None: one per core this process may use
    fid_samples: int = 10000
    feature_extractors: list[str] = field(default_factory=lambda: ["lenet"])
    fid_floor: bool = True  # also score a random half of the test set against the other half
    batch_size: int = 250
    # of the FID samples: NP-DRAW divides its prior's logits by it, the VAE baseline scales its prior's std
    temperature: float = 1.0

    def __post_init__(self) -> None:
        check_at_least(self, 1, "nll_samples", "batch_size", "nll_workers")
        check_at_least(self, 0, "nll_images")
        check_positive(self, "temperature")
        if self.feature_extractors and self.fid_samples < 2:  # a covariance needs two samples
            raise ValueError(
                f"fid_samples must be at least 2 to compute an FID, got {self.fid_samples}; "
                "set feature_extractors to [] to skip the FID"
            )


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    output_dir: str = path_field("runs")
    stages: list[str] = field(default_factory=lambda: ["bank", "parse", "prior", "train", "eval"])
    data: DataConfig = component("dataset", "mnist")
    model: ModelConfig = field(default_factory=ModelConfig)
    prior_training: PriorTrainingConfig = field(default_factory=PriorTrainingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            raise ValueError(f"name must be a folder name (no '/', not '.' or '..'), got {self.name!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        check_device_name(self.device)
        unknown = [stage for stage in self.stages if stage not in STAGES]
        if unknown:
            raise ValueError(f"stages {unknown} are not stages; stages are {', '.join(STAGES)} (in that order)")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return to_plain(self)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], overrides: Sequence[str] = (), registry: Registry | None = None
    ) -> RunConfig:
        """A config from plain data (a parsed YAML file, `to_dict()` of another config as a model file or a
        Ray worker holds it), with `key.path=value` overrides applied on top, validated whole."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(data).__name__}")
        registry = registry or default_registry()
        data = copy.deepcopy(dict(data))  # the caller's dict is never changed
        apply_overrides(data, overrides, registry)
        config = parse_dataclass(cls, data, "", registry)
        for i, name in enumerate(config.evaluation.feature_extractors):  # known now, not after the NLL
            try:
                registry.get("feature_extractor", name)
            except UnknownComponentError as error:
                raise ConfigError(f"evaluation.feature_extractors[{i}]: {error}") from None
        return config


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_config(
    source: str | Path | Mapping[str, Any] | RunConfig | None = None,
    overrides: Sequence[str] = (),
    *,
    registry: Registry | None = None,
) -> RunConfig:
    """A validated RunConfig from a YAML file, a dict (or a RunConfig) or the defaults (None), with
    `key.path=value` overrides applied on top."""
    if source is None:
        data: Any = {}
    elif isinstance(source, RunConfig):
        data = source.to_dict()
    elif isinstance(source, Mapping):
        data = source
    else:
        data = read_yaml(source)
    return RunConfig.from_dict(data, overrides, registry)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a YAML file such as configs/mnist.yaml")
    try:
        data = config_yaml.load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(override: str) -> tuple[list[str], Any]:
    """`model.part_bank.bank_size=200` → (["model", "part_bank", "bank_size"], 200); the value is YAML
    (`config_yaml`: 0200 is 200, 06222_00000 a string)."""
    key, sep, raw_value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like key.path=value, e.g. model.part_bank.bank_size=200")
    try:
        value = config_yaml.load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({error})") from error
    return key.strip().split("."), value


def apply_override(data: dict, override: str) -> None:
    """`model.part_bank.bank_size=200` → data["model"]["part_bank"]["bank_size"] = 200 (value parsed as YAML)."""
    parts, value = parse_override(override)
    _section(data, parts[:-1], override)[parts[-1]] = value


def apply_overrides(data: dict, overrides: Sequence[str], registry: Registry) -> None:
    """Apply overrides in order. One that changes a component's type (`model.prior.type=sparse`) drops the
    keys the file gave for the old type, which the new type would reject; keys given by overrides stay,
    so a wrong key for the new type is still an error."""
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of key.path=value strings, got the string {overrides!r}")
    from_overrides: set[str] = set()
    for override in overrides:
        parts, value = parse_override(override)
        if parts[-1] == "type":
            _drop_keys_of_old_type(data, parts[:-1], str(value), from_overrides, registry)
        _section(data, parts[:-1], override)[parts[-1]] = value
        key_path = ".".join(parts)
        from_overrides.add(key_path)
        if isinstance(value, dict):  # `model.prior={...}`: its keys come from an override too
            from_overrides.update(f"{key_path}.{key}" for key in value)


def _section(data: dict, parts: list[str], override: str) -> dict:
    node = data
    for part in parts:
        child = node.setdefault(part, {})
        if child is None:  # `key:` with no value in YAML is an empty section
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} holds a value, not a section")
        node = child
    return node


def _drop_keys_of_old_type(
    data: dict, parts: list[str], new_type: str, from_overrides: set[str], registry: Registry
) -> None:
    found = _component_section(parts, data, registry)
    if found is None:
        return  # not a component section: the override is checked like any other key
    kind, default_type = found
    section = _lookup(data, parts)
    if not isinstance(section, dict):
        return
    old_type = str(section.get("type", default_type))
    if old_type == new_type or new_type not in registry.components.get(kind, {}):
        return  # an unknown new type keeps the keys: parsing reports the type with the available names
    path = ".".join(parts)
    kept = ("type", "split") if kind == "dataset" else ("type",)  # data.split belongs to every dataset
    dropped = [key for key in section if key not in kept and f"{path}.{key}" not in from_overrides]
    for key in dropped:
        del section[key]
    if dropped:
        logger.warning(
            "%s.type=%s replaces %r: dropped the keys the config gave for %r (%s); give keys for %r as "
            "%s.KEY=VALUE overrides",
            path, new_type, old_type, old_type, ", ".join(dropped), new_type, path,
        )


def _lookup(data: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _component_section(parts: list[str], data: dict, registry: Registry) -> tuple[str, str] | None:
    """(kind, default type) of the component section at `parts` (e.g. ["model", "prior"]), or None when
    that path is not a component section. Walks the config classes, through the chosen type of any
    component on the way (a component's config may hold components of its own)."""
    cls: type = RunConfig
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        if part not in fields:
            return None
        fld = fields[part]
        if "component" in fld.metadata:
            kind, default_type = fld.metadata["component"], fld.default_factory()["type"]
            if depth == len(parts) - 1:
                return kind, default_type
            section = _lookup(data, parts[: depth + 1])
            chosen = section.get("type", default_type) if isinstance(section, dict) else default_type
            try:
                cls = registry.get(kind, str(chosen)).config_class
            except UnknownComponentError:
                return None
        else:
            annotation = typing.get_type_hints(cls).get(part)
            if not dataclasses.is_dataclass(annotation):
                return None
            cls = annotation
    return None


def parse_dataclass(cls: type, data: Any, path: str, registry: Registry):
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        data = to_plain(data)  # an already-built section is re-validated like its dict
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'} must be a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown key {_join(path, str(key))!r}.{hint} Valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, fld in fields.items():
        key_path = _join(path, name)
        if "component" in fld.metadata:
            raw = data.get(name, {})
            if raw is None:
                raw = {}
            if isinstance(raw, Mapping) and "type" not in raw:
                raw = {**fld.default_factory(), **raw}  # keys without a type refine the default component
            if fld.metadata["component"] == "dataset":
                values[name] = parse_data(raw, key_path, registry)
            else:
                values[name] = parse_component(fld.metadata["component"], raw, key_path, registry)
        elif dataclasses.is_dataclass(hints[name]):
            raw = data.get(name, {})
            values[name] = parse_dataclass(hints[name], {} if raw is None else raw, key_path, registry)
        elif name in data:
            values[name] = coerce(data[name], hints[name], key_path, registry)
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key_path!r}")
        if fld.metadata.get("path"):
            value = values.get(name, fld.default)
            if isinstance(value, str):
                values[name] = resolve_path(value)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as error:  # a config class's own check: prefix the section's key path
        raise ConfigError(_prefixed(path, str(error), fields)) from None


def resolve_path(value: str) -> str:
    """`~` expanded and made absolute against the current directory (normalised; the path need not exist)."""
    return os.path.abspath(os.path.expanduser(value))


def _prefixed(path: str, message: str, fields: Mapping[str, Any]) -> str:
    """"channels must be ..." in section "model.encoder" → "model.encoder.channels must be ..."."""
    if not path:
        return message
    first_word = message.split(" ", 1)[0].strip("'\"`:,")
    return f"{path}.{message}" if first_word in fields else f"{path}: {message}"


def parse_component(kind: str, data: Any, path: str, registry: Registry) -> ComponentConfig:
    if isinstance(data, ComponentConfig):
        data = to_plain(data)  # re-validated (and its paths resolved) like the dict it stands for
    if not isinstance(data, Mapping) or "type" not in data:
        raise ConfigError(f"{path!r} must be a mapping with a 'type' key naming a {kind}, got {data!r}")
    options = dict(data)
    type_name = options.pop("type")
    try:
        registered = registry.get(kind, str(type_name))
    except UnknownComponentError as error:
        raise ConfigError(f"{path}.type: {error}") from None
    return ComponentConfig(str(type_name), parse_dataclass(registered.config_class, options, path, registry))


def parse_data(data: Any, path: str, registry: Registry) -> DataConfig:
    """The `data:` section: its `split` key (if any) is a SplitConfig, the other keys the dataset's."""
    if isinstance(data, ComponentConfig):
        data = to_plain(data)
    split = None
    if isinstance(data, Mapping) and "split" in data:
        data = dict(data)
        raw_split = data.pop("split")
        if raw_split is not None:
            split = parse_dataclass(SplitConfig, raw_split, f"{path}.split", registry)
    chosen = parse_component("dataset", data, path, registry)
    return DataConfig(chosen.type, chosen.config, split)


def coerce(value: Any, annotation: Any, path: str, registry: Registry) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, path, registry)
            except ConfigError as error:
                errors.append(error)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{path!r} must be {_type_name(annotation)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path!r} must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path!r} must be a list ({_type_name(annotation)}), got {value!r}")
        item_type = args[0] if args else Any
        items = [coerce(item, item_type, f"{path}[{i}]", registry) for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if dataclasses.is_dataclass(annotation):
        return parse_dataclass(annotation, value, path, registry)
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{path!r} must be a number that fits a float, got an integer of {len(str(value))} digits") from None
    if annotation is float and isinstance(value, str):
        try:  # "1e-4" from a Python caller (or JSON) is clearly meant as a number
            return float(value)
        except ValueError:
            pass
    if annotation in (int, str, bool) and type(value) is annotation:
        return value
    if annotation is str and isinstance(value, int | float | bool):
        raise ConfigError(f"{path!r} must be a string, got {value!r}: YAML reads the value as a "
                          f"{type(value).__name__}; quote it to keep it as typed, e.g. {path}='...'")  # fmt: skip
    raise ConfigError(f"{path!r} must be {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation).replace("typing.", "")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------------------------------------------------
# Output


def to_plain(value: Any) -> Any:
    """Dataclasses and component configs → plain dicts/lists, ready for YAML, JSON and Ray workers."""
    if isinstance(value, ComponentConfig):
        plain = {"type": value.type, **to_plain(value.config)}
        if getattr(value, "split", None) is not None:  # DataConfig: only a set split (keys stay as before)
            plain["split"] = to_plain(value.split)
        return plain
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def config_hash(*parts: Any) -> str:
    """A stable short hash of config fragments: a stage's artefact is reused only when it matches."""
    text = json.dumps([to_plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_config(config: RunConfig, path: str | Path) -> None:
    from npdraw_core.checkpoint import atomic_write_text

    atomic_write_text(path, config_yaml.dump(config.to_dict()))
