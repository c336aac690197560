"""Strict YAML configs: component types, unknown keys, wrong types, overrides, the resolved config."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import yaml

from npdraw_core.config import (
    ConfigError,
    RunConfig,
    apply_override,
    config_hash,
    load_config,
    write_config,
)

REPO = Path(__file__).resolve().parents[1]
# the run configs in configs/ (they have a data or model section; Tune search spaces and the Serve
# deployment file live there too)
CONFIGS = [
    path
    for path in sorted((REPO / "configs").glob("*.yaml"))
    if {"data", "model"} & set(yaml.safe_load(path.read_text()) or {})
]


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


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("model.part_bank.bank_size=0200", "bank_size", 200),  # YAML 1.1: octal 128, silently
        ("name=06222_00000", "name", "06222_00000"),  # a Tune trial id (YAML 1.1: 622200000)
        ("name=no", "name", "no"),  # YAML 1.1: False
        ("name=2026-11-30", "name", "2026-11-30"),  # YAML 1.1: a date
        ("name='0123'", "name", "0123"),
        ("training.lr=1e-3", "lr", 0.001),  # YAML 1.1: the string '1e-3'
        ("model.part_bank.bank_size=0x20", "bank_size", 32),
    ],
)
def test_override_values_read_as_yaml_1_2_core(override, key, expected):
    config = load_config(REPO / "configs" / "mnist.yaml", [override])
    value = {"bank_size": config.model.part_bank.config.bank_size, "name": config.name, "lr": config.training.lr}[key]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("name=0123", r"'name' must be a string, got 123: YAML reads the value as a int; quote it to keep it as typed, e.g. name='...'"),
        ("training.epochs=1:30", r"'training.epochs' must be an integer, got '1:30'"),  # YAML 1.1: 90
    ],
)
def test_override_values_that_are_not_what_the_key_takes_teach(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(REPO / "configs" / "mnist.yaml", [override])


def test_strings_that_look_like_numbers_are_written_quoted_and_read_back(tmp_path):
    for name in ("0123", "1e-3", "06222_00000", "true", "no", "2026-11-30"):
        config = load_config(REPO / "configs" / "mnist.yaml", [f"output_dir={tmp_path}", f"name='{name}'"])
        write_config(config, tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml").name == name


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
    config = load_config(REPO / "configs" / "mnist.yaml", [f"output_dir={tmp_path}", "name=check"])
    write_config(config, tmp_path / "config.yaml")
    reloaded = load_config(tmp_path / "config.yaml")
    assert reloaded == config and reloaded.to_dict() == config.to_dict()
    assert config_hash(reloaded.model) == config_hash(config.model)


# ---------------------------------------------------------------------------------------------------------
# Dicts, idempotence, paths


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_a_dict_loads_like_its_yaml_file_and_a_resolved_config_loads_back(path):
    data = yaml.safe_load(path.read_text())
    before = copy.deepcopy(data)
    from_yaml = load_config(path, ["training.epochs=3"])
    from_dict = load_config(data, ["training.epochs=3"])
    assert from_dict == from_yaml and from_dict.training.epochs == 3
    assert data == before  # overrides never write into the caller's dict
    resolved = from_yaml.to_dict()
    assert load_config(resolved) == from_yaml  # as a model file or a Ray worker holds it
    assert RunConfig.from_dict(resolved) == from_yaml
    assert load_config(load_config(resolved).to_dict()).to_dict() == resolved


def test_defaults_load_from_none_and_from_an_empty_dict():
    assert load_config() == load_config({}) == load_config(None, [])
    assert load_config().model.prior.type == "transformer"


def test_mnist_root_is_the_bundled_copy_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(REPO / "configs" / "tiny.yaml")
    root = Path(config.data.config.root)
    assert root.is_absolute() and root.resolve() == (REPO / "data" / "mnist").resolve()
    assert (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").is_file()
    assert load_config().data.config.root == config.data.config.root  # the dataset's own default


def test_relative_paths_become_absolute_once_at_load_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(
        None, ["output_dir=out/runs", "data={type: npz, path: ../elsewhere/digits.npz, test_path: null}"]
    )
    assert config.output_dir == str(tmp_path / "out" / "runs")
    assert config.run_dir == tmp_path / "out" / "runs" / "run"
    # resolved without requiring the file: a model file's config loads where the data is absent
    assert config.data.config.path == str(tmp_path.parent / "elsewhere" / "digits.npz")
    assert config.data.config.test_path is None
    home = load_config(None, ["data.type=celeba", "data.cache_dir=~/npdraw-cache"]).data.config
    assert home.cache_dir == str(Path("~/npdraw-cache").expanduser()) and Path(home.root).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # absolute paths mean the same from another directory
    assert load_config(config.to_dict()) == config


# ---------------------------------------------------------------------------------------------------------
# Component values are validated at load time


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.encoder.channels=0", "model.encoder.channels must be at least 1, got 0"),
        ("model.encoder={type: conv_spatial, final_blocks: -1}", "model.encoder.final_blocks must be at least 0, got -1"),
        ("model.decoder.num_residual_blocks=-2", "model.decoder.num_residual_blocks must be at least 0, got -2"),
        ("model.prior.dropout=-0.1", r"model.prior.dropout must be in \[0, 1\), got -0.1"),
        ("model.prior.num_heads=0", "model.prior.num_heads must be at least 1, got 0"),
        ("model.prior={type: independent, initial_whether_logit: .inf}", "model.prior.initial_whether_logit must be a finite number"),
        ("model.output={type: discretized_logistic_mixture, num_components: 0}", "model.output.num_components must be at least 1, got 0"),
        ("model.part_bank.num_patches=10", r"model.part_bank.num_patches \(10\) must be at least bank_size \(50\)"),
        ("model.part_bank.threads=0", "model.part_bank.threads must be at least 1, got 0"),
        ("model.parser.batch_size=0", "model.parser.batch_size must be at least 1, got 0"),
        ("model.patch_size=29", r"model.patch_size \(29\) must be at most canvas_size \(28\)"),
        ("data.train_fraction=1.5", r"data.train_fraction must be in \(0, 1\], got 1.5"),
        ("data.valid_size=0", "data.valid_size must be at least 1, got 0"),
        ("data={type: celeba, crop_size: 32}", r"data.crop_size \(32\) must be at least image_size \(64\)"),
        ("training.batch_size=0", "training.batch_size must be at least 1, got 0"),
        ("training.lr=0", "training.lr must be a number greater than 0, got 0.0"),
        ("training.reg_weight=-1", "training.reg_weight must be at least 0, got -1.0"),
        ("training.min_temperature=0", r"training.min_temperature must be in \(0, 1\], got 0.0"),
        ("training.min_temperature=1.5", r"training.min_temperature must be in \(0, 1\], got 1.5"),
        ("training={parse_forcing_rate: null, parse_forcing_whether: true}",
         "training.parse_forcing_whether is true but parse_forcing_rate is null, so nothing is forced"),
        ("prior_training.batch_size=0", "prior_training.batch_size must be at least 1, got 0"),
        ("prior_training.lr=-1e-4", "prior_training.lr must be a number greater than 0"),
        ("evaluation.nll_samples=0", "evaluation.nll_samples must be at least 1, got 0"),
        ("evaluation.nll_images=-1", "evaluation.nll_images must be at least 0, got -1"),
        ("evaluation.fid_samples=1", "evaluation.fid_samples must be at least 2 to compute an FID, got 1"),
        ("evaluation.temperature=0", "evaluation.temperature must be a number greater than 0, got 0"),
    ],
)
def test_a_bad_component_or_section_value_fails_at_load_time_naming_the_key(override, expected):
    with pytest.raises(ConfigError, match=f"^{expected}"):
        load_config(REPO / "configs" / "mnist.yaml", [override])


def test_values_at_the_limits_are_accepted():
    config = load_config(
        REPO / "configs" / "mnist.yaml",
        ["evaluation.fid_samples=0", "evaluation.feature_extractors=[]", "evaluation.nll_images=0",
         "training.reg_weight=0", "training.min_temperature=1", "model.prior.depth=0", "model.prior.dropout=0"],
    )
    assert (config.evaluation.fid_samples, config.training.reg_weight, config.model.prior.config.depth) == (0, 0.0, 0)


def test_cli_rejects_a_bad_value_before_any_stage_runs(tmp_path, capsys):
    from npdraw_core.cli import main

    out = tmp_path / "out"
    code = main(["bank", str(REPO / "configs" / "tiny.yaml"), "--set", "model.encoder.channels=0",
                 "--set", f"output_dir={out}", "--device", "cpu"])
    assert code == 2
    assert "model.encoder.channels must be at least 1, got 0" in capsys.readouterr().err
    assert not list(tmp_path.rglob("bank.pt"))


# ---------------------------------------------------------------------------------------------------------
# Swapping a component type with an override


def test_swapping_a_type_drops_the_files_keys_for_the_old_type_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="npdraw_core.config"):
        config = load_config(REPO / "configs" / "mnist.yaml", ["model.prior.type=independent"])
    assert config.model.prior.type == "independent"
    assert config.model.prior.config == load_config(None, ["model.prior.type=independent"]).model.prior.config
    message = caplog.text
    assert "model.prior" in message and "'transformer'" in message and "d_model" in message and "mlp_dim" in message


def test_keys_given_by_overrides_for_the_new_type_stay_strictly_checked():
    for overrides in (
        ["model.prior.type=independent", "model.prior.d_model=32"],
        ["model.prior.d_model=32", "model.prior.type=independent"],
    ):
        with pytest.raises(ConfigError, match=r"unknown key 'model.prior.d_model'.*initial_whether_logit"):
            load_config(REPO / "configs" / "mnist.yaml", overrides)
    for overrides in (
        ["model.prior.initial_whether_logit=2", "model.prior.type=independent"],
        ["model.prior.type=independent", "model.prior.initial_whether_logit=2"],
        ["model.prior={initial_whether_logit: 2}", "model.prior.type=independent"],
    ):
        config = load_config(REPO / "configs" / "mnist.yaml", overrides)
        assert config.model.prior.config.initial_whether_logit == 2.0


def test_swapping_types_in_other_sections_and_from_a_resolved_dict(tmp_path, caplog):
    resolved = load_config(REPO / "configs" / "tiny.yaml").to_dict()
    with caplog.at_level(logging.WARNING, logger="npdraw_core.config"):
        config = load_config(resolved, ["model.encoder.type=conv_spatial", "data.type=npz", f"data.path={tmp_path}/d.npz"])
    assert config.model.encoder.type == "conv_spatial" and config.model.encoder.config.channels == 128
    assert config.data.type == "npz" and config.data.config.path == str(tmp_path / "d.npz")
    assert "num_downsamplings" in caplog.text and "root" in caplog.text
    # the same type keeps the file's keys, and a section without a type swaps from its default type
    assert load_config(resolved, ["model.prior.type=transformer"]).model.prior.config.d_model == 32
    swapped = load_config({"model": {"prior": {"d_model": 16}}}, ["model.prior.type=independent"])
    assert swapped.model.prior.type == "independent"
    # an unknown new type is reported as such (with the available names), not as the old type's keys
    with pytest.raises(ConfigError, match=r"model.prior.type: no prior named 'sprase'. Available: independent"):
        load_config(resolved, ["model.prior.type=sprase"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_the_independent_prior_swaps_in_on_every_shipped_config(path):
    config = load_config(path, ["model.prior.type=independent"])
    assert type(config.model.prior.config).__name__ == "IndependentPriorConfig"
