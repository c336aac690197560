"""YAML as configs and `--set` overrides read it: the YAML 1.2 core schema's scalars.

PyYAML resolves plain scalars by YAML 1.1, where `bank_size: 0200` is octal (128), `name=06222_00000` and
`1:30` are numbers (6222_00000 = 622200000, 1:30 = 90 in base 60), `yes`/`no`/`on`/`off` are booleans and
`1e-3` is a string. Silently so: a misread value is still a valid config. Here, as in YAML 1.2 (and JSON):
integers are decimal (`0o17`, `0x1f` for other bases), floats may omit the dot, booleans are
true/false, and dates stay strings. The dumper quotes a string exactly when this loader would read it
as something else, so configs written by npdraw read back as they were.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_CORE = [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
]


_REPLACED = {tag for tag, _, _ in _CORE} | {"tag:yaml.org,2002:timestamp"}  # YAML 1.2 core has no dates


def _core_resolvers(cls: type) -> None:
    cls.yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag not in _REPLACED]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for tag, pattern, first in _CORE:
        cls.add_implicit_resolver(tag, re.compile(pattern), list(first))


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text)  # int("0200") is 200


_core_resolvers(_Loader)
_core_resolvers(_Dumper)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
