"""A search file (`npdraw tune CONFIG --search SEARCH.yaml`): which config keys to vary and how to score.

```yaml
metric: valid_neg_elbo        # any metric a trial reports (default), minimised unless mode: max
mode: min
num_samples: 1                # repeats of the grid, or draws of the sampling spaces
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # optional
evaluate: false               # also run the eval stage (NLL, FID) at the end of each trial
space:
  model.patch_size: [4, 5, 7]                 # a list: every value (grid search)
  training.lr: {loguniform: [1.0e-4, 1.0e-2]} # or one of Tune's sampling spaces
```

Every key is a dotted config key, checked with every grid value (and each sampling space's bounds)
against the run config before any trial starts, so a typo fails at once with the config's own message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npdraw_core import config_yaml
from npdraw_core.config import ConfigError, RunConfig, load_config

SAMPLERS = {"choice": 1, "uniform": 2, "loguniform": 2, "randint": 2, "grid": 1}  # name → number of arguments
SCHEDULERS = ("asha",)


class SearchError(ValueError):
    """A search file is invalid; the message names the key and how to fix it."""


@dataclass
class SearchSpec:
    space: dict[str, Any]
    metric: str = "valid_neg_elbo"
    mode: str = "min"
    num_samples: int = 1
    scheduler: dict[str, Any] | None = None
    evaluate: bool = False
    fixed: dict[str, Any] = field(default_factory=dict)  # config keys set the same in every trial

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """`key=value` overrides for a trial's sampled values (JSON is YAML, so types survive)."""
        return [f"{key}={json.dumps(value)}" for key, value in {**self.fixed, **values}.items()]

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def load_search(source: str | Path | dict, base: RunConfig | dict) -> SearchSpec:
    """Read and check a search file against the run config it searches over."""
    data = source if isinstance(source, dict) else _read_yaml(Path(source))
    known = set(SearchSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SearchError(f"unknown key(s) {unknown} in the search file; valid keys: {', '.join(sorted(known))}")
    if not isinstance(data.get("space"), dict) or not data["space"]:
        raise SearchError("the search file needs a 'space' mapping of dotted config keys to values, "
                          "e.g. space: {model.patch_size: [4, 5, 7]}")  # fmt: skip
    spec = SearchSpec(**data)
    if spec.mode not in ("min", "max"):
        raise SearchError(f"mode must be 'min' or 'max', got {spec.mode!r}")
    if not isinstance(spec.num_samples, int) or spec.num_samples < 1:
        raise SearchError(f"num_samples must be an integer ≥ 1, got {spec.num_samples!r}")
    if spec.scheduler is not None:
        if not isinstance(spec.scheduler, dict) or spec.scheduler.get("type") not in SCHEDULERS:
            raise SearchError(f"scheduler must be a mapping with type one of {SCHEDULERS}, got {spec.scheduler!r}")
    base_dict = base.to_dict() if isinstance(base, RunConfig) else base
    for key, values in spec.space.items():
        for value in _values_to_check(key, values):
            _check_value(base_dict, key, value)
    for key, value in spec.fixed.items():
        _check_value(base_dict, key, value)
    return spec


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SearchError(f"search file {str(path)!r} does not exist; see configs/search_mnist.yaml for an example")
    data = config_yaml.load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SearchError(f"search file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def _values_to_check(key: str, values: Any) -> list[Any]:
    if isinstance(values, list):
        if not values:
            raise SearchError(f"space.{key}: an empty list has nothing to search")
        return values
    if isinstance(values, dict) and len(values) == 1:
        (sampler, arguments), = values.items()
        if sampler in SAMPLERS:
            arguments = arguments if isinstance(arguments, list) else [arguments]
            if sampler in ("choice", "grid"):
                return _values_to_check(key, arguments)
            if len(arguments) != SAMPLERS[sampler] or not all(isinstance(a, int | float) for a in arguments):
                raise SearchError(f"space.{key}: {sampler} takes [low, high], got {arguments!r}")
            low, high = arguments
            if sampler == "randint":
                return [int(low), int(high) - 1]
            return [low, high]
    raise SearchError(
        f"space.{key}: give a list of values (grid search) or one of "
        f"{', '.join(f'{{{name}: ...}}' for name in SAMPLERS)}, got {values!r}"
    )


def _check_value(base: dict, key: str, value: Any) -> None:
    try:
        load_config(base, [f"{key}={json.dumps(value)}"])
    except ConfigError as error:
        raise SearchError(f"space.{key} = {value!r} is not a valid config value: {error}") from None


def param_space(spec: SearchSpec) -> dict[str, Any]:
    """The spec's space as Tune's search space (dotted keys kept flat: they read well in the results)."""
    from ray import tune

    space = {}
    for key, values in spec.space.items():
        if isinstance(values, list):
            space[key] = tune.grid_search(values)
            continue
        (sampler, arguments), = values.items()
        arguments = arguments if isinstance(arguments, list) else [arguments]
        if sampler == "grid":
            space[key] = tune.grid_search(arguments)
        elif sampler == "choice":
            space[key] = tune.choice(arguments)
        else:
            space[key] = getattr(tune, sampler)(*arguments)
    return space
