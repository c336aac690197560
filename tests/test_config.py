"""Strict YAML configs: component types, unknown keys, wrong types, overrides, the resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from npdraw_core.config import ConfigError, apply_override, config_hash, load_config
from npdraw_core.run import Run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write_yaml(tmp_path, data) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_is_valid(path):
    config = load_config(path)
    assert config.model.patch_size <= config.model.canvas_size


def test_mnist_config_has_the_paper_settings():
    config = load_config(REPO / "configs" / "mnist.yaml")
    assert (config.model.patch_size, config.model.part_bank.config.bank_size) == (5, 50)
    assert config.model.parser.config.parse_threshold == 0.01
    assert config.training.reg_weight == 50


def test_unknown_type_lists_available_names_and_close_matches(tmp_path):
    path = write_yaml(tmp_path, {"model": {"prior": {"type": "transfomer"}}})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "model.prior.type" in message and "'transfomer'" in message
    assert "independent" in message and "Did you mean 'transformer'" in message


def test_unknown_key_lists_valid_keys(tmp_path):
    path = write_yaml(tmp_path, {"model": {"part_bank": {"type": "kmedoids", "banksize": 20}}})
    with pytest.raises(ConfigError, match=r"unknown key 'model.part_bank.banksize'.*Did you mean 'bank_size'.*Valid keys:"):
        load_config(path)


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trainig'.*Did you mean 'training'"):
        load_config(write_yaml(tmp_path, {"trainig": {"epochs": 3}}))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.part_bank.bank_size=many", r"'model.part_bank.bank_size' must be an integer, got 'many'"),
        ("training.reg_weight=[1, 2]", r"'training.reg_weight' must be a number"),
        ("training.whether_estimator=soft", r"must be one of 'hard', 'straight_through'"),
        ("model.patch_size=true", r"'model.patch_size' must be an integer, got True"),
    ],
)
def test_wrong_type_names_the_key_and_expected_type(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(REPO / "configs" / "mnist.yaml", [override])


def test_overrides_parse_values_as_yaml():
    config = load_config(REPO / "configs" / "mnist.yaml", ["model.part_bank.bank_size=200", "training.reg_weight=1e2"])
    assert config.model.part_bank.config.bank_size == 200
    assert config.training.reg_weight == 100.0


def test_override_can_swap_a_component_type():
    config = load_config(REPO / "configs" / "mnist.yaml", ["model.prior={type: independent}"])
    assert config.model.prior.type == "independent"


@pytest.mark.parametrize("override", ["no_equals_sign", "=3"])
def test_malformed_override(override):
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, override)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_is_written_and_reloads_identically(tmp_path):
    run = Run.from_file(REPO / "configs" / "mnist.yaml", [f"output_dir={tmp_path}", "name=check"], device="cpu")
    written = run.dir / "config.yaml"
    assert written.is_file()
    reloaded = load_config(written)
    assert reloaded.to_dict() == run.config.to_dict()
    assert config_hash(reloaded.model) == config_hash(run.config.model)
