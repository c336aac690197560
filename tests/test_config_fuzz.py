"""Property-based fuzzing of the config layer and of the sample/edit options (issue 14).

* Any override of any key (every key of the tiny config, components' options included, plus unknown
  ones), with a value of any type and range, given as a `--set` string or in a dict, either loads or
  raises ConfigError, never another exception; what loads survives a round trip through its dict.
* `npdraw sample` / `npdraw edit` with random options exit 0 or 2 (a one-line error), never with a
  traceback.

Sized for 2 CPU cores: a few hundred config examples (milliseconds each), a few dozen command runs.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npdraw_core.config import ConfigError, RunConfig, load_config, read_yaml
from npdraw_core.registry import default_registry

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def leaf_keys(data, prefix: str = "") -> list[str]:
    if not isinstance(data, dict):
        return [prefix]
    keys = [prefix] if prefix else []  # a whole section may be overridden too
    for key, value in data.items():
        keys += leaf_keys(value, f"{prefix}.{key}" if prefix else key)
    return keys


BASE = read_yaml(TINY)
KEYS = sorted(set(leaf_keys(load_config(TINY).to_dict())) | {"model.prior.nope", "nope", "training.lr.x", "data.type"})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([0, 1, 2, -1, 2**31, 2**63, 2**64, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e308, 0.5, 1.0, 1e-4]),
    st.text(max_size=12),
    st.sampled_from(["", "auto", "cpu", "cuda:1", "mnist", "npz", "transformer", "1e-3", ".nan", "-.inf"]),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def as_yaml(value) -> str:
    """The text of a --set value that YAML reads back as `value`."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()


def set_path(data: dict, key: str, value) -> None:
    node = data
    *parents, last = key.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def loads_or_config_error(build) -> RunConfig | None:
    try:
        config = build()
    except ConfigError:
        return None
    assert isinstance(config, RunConfig)
    # what loads can be written and read back unchanged (model files and Ray workers rely on it)
    again = load_config(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again == config
    return config


REGISTRY = default_registry()
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=3))
def test_any_override_of_any_key_loads_or_is_a_config_error(changes):
    overrides = [f"{key}={as_yaml(value)}" for key, value in changes]
    loads_or_config_error(lambda: load_config(BASE, overrides, registry=REGISTRY))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=3))
def test_any_value_of_any_key_in_a_dict_loads_or_is_a_config_error(changes):
    data = copy.deepcopy(BASE)
    for key, value in changes:
        set_path(data, key, value)
    loads_or_config_error(lambda: load_config(data, registry=REGISTRY))


NASTY = [None, True, 0, -1, 10**400, -0.5, math.nan, -math.inf, "", "x", [1, "a"], {"type": "nope"}]


def test_every_key_with_every_kind_of_value_loads_or_is_a_config_error():
    """The exhaustive grid behind the random search: each key alone, each value, both ways of giving it."""
    outcomes = {"loaded": 0, "config error": 0}
    for key in KEYS:
        for value in NASTY:
            data = copy.deepcopy(BASE)
            set_path(data, key, value)
            for source, overrides in ((BASE, [f"{key}={as_yaml(value)}"]), (data, [])):
                try:
                    outcome = loads_or_config_error(partial(load_config, source, overrides, registry=REGISTRY))
                except Exception as error:  # noqa: BLE001 - the property under test: name the failing case
                    raise AssertionError(f"{key}={value!r}: {type(error).__name__}: {error}") from error
                outcomes["loaded" if outcome is not None else "config error"] += 1
    assert outcomes["loaded"] > 100 and outcomes["config error"] > 500, outcomes


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_any_override_text_loads_or_is_a_config_error(overrides):
    loads_or_config_error(lambda: load_config(BASE, overrides, registry=REGISTRY))


@settings(max_examples=50, deadline=None)
@given(values)
def test_any_document_loads_or_is_a_config_error(document):
    loads_or_config_error(lambda: load_config(document, registry=REGISTRY) if isinstance(document, dict) else RunConfig.from_dict(document))


# -- the commands' options -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_run(tmp_path_factory) -> Path:
    """A run directory holding an (untrained) model.pt of the tiny config: the options are under test."""
    from npdraw_core.build import model_from_config, prior_from_config
    from npdraw_core.contracts import contract_bank
    from npdraw_core.model_file import save_model_file
    from npdraw_core.run import Run

    run = Run.from_file(TINY, [f"output_dir={tmp_path_factory.mktemp('fuzz')}", "name=tiny"], device="cpu")
    shape = run.model_shape(20)
    prior = prior_from_config(run.config, shape, run.registry)
    model = model_from_config(run.config, shape, contract_bank(shape), prior, run.registry)
    save_model_file(run.path("model.pt"), model, run.config, shape)
    return run.dir


numbers = st.one_of(
    st.integers(min_value=-3, max_value=6).map(str),
    st.sampled_from(["nan", "inf", "-inf", "0", "0.5", "1e-9", "1e9", "x", "", "1.5", "-0"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
small_counts = st.one_of(st.integers(min_value=-3, max_value=5).map(str), st.sampled_from(["x", "", "1.5", "nan"]))
paths = st.sampled_from(["s.png", "s.npz", "s.jpg", "s", "s.PNG", "d/s.png", "", "."])
devices = st.sampled_from(["cpu", "auto", "cuda", "cuda:7", "foo", "", "cpu:0", "mps", "CPU"])


def exit_code(capsys, argv: list[str]) -> int:
    from npdraw_core.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err and "this is a bug" not in err, err
    if code == 2:
        assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
    return code


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    options=st.dictionaries(
        st.sampled_from(["--temperature", "--top-k", "--num", "--batch-size", "--seed", "--seeds", "--device",
                         "--out", "--format", "--threads"]),
        st.none(),
        max_size=5,
    ),
    data=st.data(),
)
def test_sample_options_run_or_stop_with_one_line(model_run, tmp_path_factory, capsys, options, data):
    choices = {
        "--temperature": numbers, "--top-k": small_counts, "--num": small_counts, "--batch-size": small_counts,
        "--seed": small_counts, "--seeds": st.sampled_from(["0:3", "3,1", "2:1", "a", "-1", "0:2,5"]),
        "--device": devices, "--format": st.sampled_from(["png", "npz", "jpg"]), "--threads": small_counts,
    }  # fmt: skip
    out = tmp_path_factory.mktemp("sample")
    argv = ["sample", "--model", str(model_run)]
    for option in options:
        value = str(out / data.draw(paths)) if option == "--out" else data.draw(choices[option])
        argv += [f"{option}={value}"]
    exit_code(capsys, argv)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    a=st.lists(st.integers(min_value=-2, max_value=12000), min_size=1, max_size=3),
    b=st.lists(st.integers(min_value=-2, max_value=12000), min_size=1, max_size=3),
    region=st.one_of(st.none(), st.sampled_from(["0,14,28,14", "0,0,0,0", "1,2", "a,b,c,d", "20,20,20,20", "-1,0,5,5"])),
    out=st.one_of(st.none(), paths),
    device=st.one_of(st.none(), devices),
)
def test_edit_options_run_or_stop_with_one_line(model_run, tmp_path_factory, capsys, a, b, region, out, device):
    folder = tmp_path_factory.mktemp("edit")
    argv = ["edit", str(TINY), f"--set=output_dir={model_run.parent}", f"--set=name={model_run.name}",
            "--a", *map(str, a), "--b", *map(str, b), "--out", str(folder / (out or "e.png"))]  # fmt: skip
    if region is not None:
        argv.append(f"--region={region}")
    if device is not None:
        argv.append(f"--device={device}")
    exit_code(capsys, argv)
