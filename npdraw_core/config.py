"""Run configuration: YAML in, strictly validated dataclasses out, resolved YAML back into the run dir.

A component is chosen by `type:`; its other keys are checked against that component's config dataclass.
Fixed sections (training, evaluation) are dataclasses too. Errors name the key path and say how to fix it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from npdraw_core.registry import Registry, UnknownComponentError, default_registry


class ConfigError(ValueError):
    """A config is invalid; the message says which key and how to fix it."""


@dataclass
class ComponentConfig:
    """A chosen component: its registered `type` and an instance of its config dataclass."""

    type: str
    config: Any

    def to_dict(self) -> dict:
        return {"type": self.type, **dataclasses.asdict(self.config)}


def component(kind: str, default_type: str) -> Any:
    return field(default_factory=lambda: {"type": default_type}, metadata={"component": kind})


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


@dataclass
class PriorTrainingConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    grad_clip: float = 1.0
    early_stopping_patience: int | None = None  # epochs without validation improvement before stopping
    max_train_images: int | None = None  # train on the first N parses only (quick runs)


@dataclass
class TrainingConfig:
    epochs: int = 50
    batch_size: int = 500
    encoder_lr: float = 1e-3
    lr: float = 1e-4  # decoder and output distribution
    reg_weight: float = 50.0  # λ, weight of the parse regulariser
    whether_estimator: Literal["hard", "straight_through"] = "hard"
    min_temperature: float = 0.5  # τ(epoch) = max(min_temperature, exp(-epoch · ln2 / temperature_halflife))
    temperature_halflife: float = 50.0
    parse_forcing_rate: float | None = 0.005  # r of π_e = exp(-r·e(e+1)/2); None disables parse forcing
    max_train_images: int | None = None
    sample_grid_every: int = 1  # epochs between sample-grid PNGs


@dataclass
class EvaluationConfig:
    nll_samples: int = 50
    nll_images: int | None = None  # None: the whole test set; 0: skip the NLL
    fid_samples: int = 10000
    feature_extractors: list[str] = field(default_factory=lambda: ["lenet"])
    fid_floor: bool = True  # also score a random half of the test set against the other half
    batch_size: int = 250


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    output_dir: str = "runs"
    stages: list[str] = field(default_factory=lambda: ["bank", "parse", "prior", "train", "eval"])
    data: ComponentConfig = component("dataset", "mnist")
    model: ModelConfig = field(default_factory=ModelConfig)
    prior_training: PriorTrainingConfig = field(default_factory=PriorTrainingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return to_plain(self)


# ---------------------------------------------------------------------------------------------------------
# Parsing


def load_config(path: str | Path | None = None, overrides: list[str] = (), *, registry: Registry | None = None) -> RunConfig:
    """Read a YAML file (or start from defaults), apply `key.path=value` overrides, validate strictly."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass a YAML file such as configs/mnist.yaml")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    for override in overrides:
        apply_override(data, override)
    return parse_dataclass(RunConfig, data, "", registry or default_registry())


def apply_override(data: dict, override: str) -> None:
    """`model.part_bank.bank_size=200` → data["model"]["part_bank"]["bank_size"] = 200 (value parsed as YAML)."""
    key, sep, raw_value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like key.path=value, e.g. model.part_bank.bank_size=200")
    node = data
    *parents, leaf = key.strip().split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} holds a value, not a section")
        node = child
    node[leaf] = yaml.safe_load(raw_value) if raw_value.strip() else None


def parse_dataclass(cls: type, data: Any, path: str, registry: Registry):
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown key {_join(path, key)!r}.{hint} Valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, fld in fields.items():
        key_path = _join(path, name)
        if "component" in fld.metadata:
            raw = data.get(name, {})
            if isinstance(raw, dict) and "type" not in raw:
                raw = {**fld.default_factory(), **raw}  # keys without a type refine the default component
            values[name] = parse_component(fld.metadata["component"], raw, key_path, registry)
        elif dataclasses.is_dataclass(hints[name]):
            values[name] = parse_dataclass(hints[name], data.get(name, {}), key_path, registry)
        elif name in data:
            values[name] = coerce(data[name], hints[name], key_path, registry)
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key_path!r}")
    return cls(**values)


def parse_component(kind: str, data: Any, path: str, registry: Registry) -> ComponentConfig:
    if isinstance(data, ComponentConfig):
        return data
    if not isinstance(data, dict) or "type" not in data:
        raise ConfigError(f"{path!r} must be a mapping with a 'type' key naming a {kind}, got {data!r}")
    options = dict(data)
    type_name = options.pop("type")
    try:
        registered = registry.get(kind, str(type_name))
    except UnknownComponentError as error:
        raise ConfigError(f"{path}.type: {error}") from None
    return ComponentConfig(str(type_name), parse_dataclass(registered.config_class, options, path, registry))


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
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 (no dot) as a string; it is clearly meant as a number
            return float(value)
        except ValueError:
            pass
    if annotation in (int, str, bool) and type(value) is annotation:
        return value
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
        return {"type": value.type, **to_plain(value.config)}
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

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
