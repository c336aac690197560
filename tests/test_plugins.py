"""The plugin system: entry-point loading, broken plugins, duplicates, misspelt hooks, third-party plugins."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
import yaml

from npdraw_core import registry as registry_module
from npdraw_core.commands.plugins import describe
from npdraw_core.hookspecs import hookimpl
from npdraw_core.registry import PluginError, build_registry


@dataclass
class TableConfig:
    temperature: float = 1.0


class TablePlugin:
    """A plugin registered in a fixture, the way pytest/tox test their plugins."""

    @hookimpl
    def npdraw_register_priors(self, register):
        register("table", lambda config, **context: ("table", config), TableConfig)


def write_module(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))


THIRD_PARTY_PRIOR = """
    from dataclasses import dataclass
    from npdraw_core.hookspecs import hookimpl

    @dataclass
    class UniformPriorConfig:
        smoothing: float = 0.5

    def build(config, *, shape=None):
        return {"smoothing": config.smoothing, "shape": shape}

    @hookimpl
    def npdraw_register_priors(register):
        register("uniform", build, UniformPriorConfig)
"""


def test_third_party_plugin_through_an_entry_point(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "npdraw_uniform_prior", THIRD_PARTY_PRIOR)
    entry = EntryPoint(name="uniform_prior", value="npdraw_uniform_prior", group="npdraw")
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [entry] if group == "npdraw" else [])
    registry = build_registry()
    component = registry.get("prior", "uniform")
    assert component.plugin == "uniform_prior"
    built = component.build(component.config_class(smoothing=0.25), shape="S")
    assert built == {"smoothing": 0.25, "shape": "S"}
    assert "prior: uniform" in describe(registry)


def test_broken_plugin_is_reported_and_skipped(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "npdraw_broken_plugin", "raise ImportError('needs libfoo')\n")
    write_module(tmp_path, monkeypatch, "npdraw_uniform_prior", THIRD_PARTY_PRIOR)
    entries = [
        EntryPoint(name="broken", value="npdraw_broken_plugin", group="npdraw"),
        EntryPoint(name="uniform_prior", value="npdraw_uniform_prior", group="npdraw"),
    ]
    monkeypatch.delenv("NPDRAW_STRICT_PLUGINS", raising=False)
    registry = build_registry(entries)
    assert "needs libfoo" in registry.failed["broken"]
    assert registry.names("prior") == ["uniform"]  # the healthy plugin still loads
    assert "broken  FAILED" in describe(registry)
    with pytest.raises(LookupError, match="failed to load.*needs libfoo"):
        registry.get("prior", "transformer")


def test_strict_mode_makes_a_broken_plugin_fatal(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "npdraw_broken_plugin", "raise ImportError('needs libfoo')\n")
    monkeypatch.setenv("NPDRAW_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken.*needs libfoo"):
        build_registry([EntryPoint(name="broken", value="npdraw_broken_plugin", group="npdraw")])


def test_plugin_failing_inside_its_hook_is_reported(monkeypatch):
    class Failing:
        @hookimpl
        def npdraw_register_priors(self, register):
            raise RuntimeError("bad config table")

    monkeypatch.delenv("NPDRAW_STRICT_PLUGINS", raising=False)
    registry = build_registry([], extra_plugins={"failing": Failing(), "table": TablePlugin()})
    assert "bad config table" in registry.failed["failing"]
    assert registry.names("prior") == ["table"]


def test_duplicate_names_name_both_plugins():
    with pytest.raises(PluginError, match="'first'.*'second'"):
        build_registry([], extra_plugins={"first": TablePlugin(), "second": TablePlugin()})


def test_misspelt_hook_is_caught():
    class Misspelt:
        @hookimpl
        def npdraw_register_prior(self, register):  # missing the final "s"
            pass

    with pytest.raises(PluginError, match="npdraw_register_prior"):
        build_registry([], extra_plugins={"misspelt": Misspelt()})


def test_config_class_must_be_a_dataclass():
    class NotDataclass:
        @hookimpl
        def npdraw_register_priors(self, register):
            register("odd", lambda config: None, dict)

    with pytest.raises(PluginError, match="not a dataclass"):
        build_registry([], extra_plugins={"odd": NotDataclass()})


def test_unknown_name_lists_available_and_close_matches():
    registry = build_registry([], extra_plugins={"table": TablePlugin()})
    with pytest.raises(LookupError, match=r"no prior named 'tabel'.*Available: table.*Did you mean 'table'"):
        registry.get("prior", "tabel")


def test_builtin_plugins_load_from_the_installed_entry_points():
    registry = build_registry()
    assert registry.failed == {}, registry.failed
    expected = {
        "dataset": {"mnist", "omniglot", "cifar10", "celeba", "npz"},
        "part_bank": {"kmedoids", "sklearn_extra"},
        "parser": {"heuristic"},
        "prior": {"transformer", "independent"},
    }
    for kind, names in expected.items():
        assert names <= set(registry.names(kind)), kind
    assert all(info.distribution == "npdraw" for info in registry.plugins.values())


README = Path(__file__).resolve().parents[1] / "README.md"
# the run configs in configs/ (they have a data or model section; Tune search spaces and the Serve
# deployment file live there too)
CONFIGS = [
    path
    for path in sorted((README.parent / "configs").glob("*.yaml"))
    if {"data", "model"} & set(yaml.safe_load(path.read_text()) or {})
]


def readme_sparse_prior_entry_point(tmp_path, monkeypatch) -> EntryPoint:
    """The README's third-party prior module, taken verbatim, behind an entry point as its package has it."""
    readme = README.read_text()
    source = readme.split("```python\n# npdraw_sparse_prior.py\n", 1)[1].split("```", 1)[0]
    assert len(source.strip().splitlines()) <= 20
    write_module(tmp_path, monkeypatch, "npdraw_sparse_prior", source)
    return EntryPoint(name="sparse_prior", value="npdraw_sparse_prior", group="npdraw")


def test_the_readme_plugin_example_works_and_passes_the_prior_contract(tmp_path, monkeypatch):
    """The README's third-party prior, taken verbatim, loads through an entry point and is a valid prior."""
    from npdraw_core.contracts import check_prior
    from npdraw_core.geometry import ModelShape

    registry = build_registry([readme_sparse_prior_entry_point(tmp_path, monkeypatch)])
    component = registry.get("prior", "sparse")
    config = component.config_class(draw_rate=0.2)
    shape = ModelShape(channels=1, image_size=28, canvas_size=28, patch_size=5, bank_size=12)
    check_prior(component.factory, config, shape)
    prior = component.build(config, shape=shape)
    assert abs(prior.whether_logits.sigmoid().mean().item() - 0.2) < 1e-6


def test_the_readme_plugin_command_works_on_every_shipped_config(tmp_path, monkeypatch):
    """`--set model.prior.type=sparse`, as the README says, on each configs/*.yaml: the file's transformer
    keys give way to the sparse prior's defaults."""
    from npdraw_core.config import load_config

    command = README.read_text().split("Then `--set ", 1)[1].split("`", 1)[0]
    assert command == "model.prior.type=sparse"
    sparse = readme_sparse_prior_entry_point(tmp_path, monkeypatch)
    registry = build_registry([*entry_points(group="npdraw"), sparse])
    assert registry.failed == {}, registry.failed
    assert CONFIGS
    for path in CONFIGS:
        config = load_config(path, [command], registry=registry)
        assert config.model.prior.type == "sparse", path
        assert type(config.model.prior.config).__name__ == "SparsePriorConfig", path
        assert config.model.prior.config.draw_rate == 0.3, path
        rate = load_config(path, ["model.prior.type=sparse", "model.prior.draw_rate=0.1"], registry=registry)
        assert rate.model.prior.config.draw_rate == 0.1, path
