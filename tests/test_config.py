"""Configs: named configs load, typos and bad values are errors naming the key."""

import pytest

from fedmrg.config import load_config, named_configs, parse_config
from fedmrg.errors import ConfigError


def test_named_configs_ship_with_the_package():
    assert {"tiny", "demo"} <= set(named_configs())
    tiny = load_config("tiny")
    assert tiny.name == "tiny" and tiny.benchmark.source == "synthetic"
    assert load_config("demo").benchmark.source == "iu-xray"


def test_config_from_a_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("benchmark:\n  sites: 5\n  partition: label\n")
    cfg = load_config(path)
    assert cfg.name == "mine" and cfg.benchmark.sites == 5 and cfg.benchmark.partition == "label"
    assert cfg.data.image_size == 224  # defaults fill the rest


def test_unknown_key_is_an_error_that_suggests_the_right_one(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("benchmark:\n  partiton: style\n")
    with pytest.raises(
        ConfigError, match=r"typo.yaml: benchmark.partiton: unknown key; did you mean 'benchmark.partition'"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"bench": {}})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"benchmark": {"sites": "3"}}, "benchmark.sites: must be an integer"),
        ({"benchmark": {"sites": True}}, "benchmark.sites: must be an integer"),
        ({"benchmark": {"sites": 0}}, "benchmark.sites: must be at least 1"),
        ({"benchmark": {"seed": -1}}, r"benchmark.seed: must be in \[0, 2\*\*32\)"),
        ({"benchmark": {"test_global_fraction": 0.0}}, "test_global_fraction: must be > 0"),
        ({"benchmark": {"partition": "random"}}, "benchmark.partition: 'random' is not one of"),
        ({"benchmark": {"splits": [0.5, 0.5]}}, "splits: must be three"),
        ({"data": {"augment": "yes"}}, "data.augment: must be true or false"),
        ({"data": 3}, "data: must be a mapping"),
        ({"model": {"quantize_embeddings": "fp8"}}, "model.quantize_embeddings: 'fp8' is not one of"),
    ],
)
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_empty_section_keeps_defaults_and_takes_overrides(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("benchmark:\ndata:\n")
    assert load_config(path).benchmark.sites == 3
    assert load_config(path, {"benchmark.sites": 5}).benchmark.sites == 5
    path.write_text("benchmark: 5\n")
    with pytest.raises(ConfigError, match="benchmark: must be a mapping"):
        load_config(path, {"benchmark.sites": 5})


def test_non_utf8_config_is_reported(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml: not UTF-8 text"):
        load_config(path)


def test_a_folder_named_like_a_config_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert load_config("tiny").name == "tiny"


def test_overrides_apply_dotted_keys_and_ignore_unset_flags():
    cfg = load_config("tiny", {"benchmark.sites": 4, "benchmark.seed": None})
    assert cfg.benchmark.sites == 4 and cfg.benchmark.seed == load_config("tiny").benchmark.seed


def test_unknown_named_config_lists_the_known_ones():
    with pytest.raises(ConfigError, match="named configs: .*tiny"):
        load_config("huge")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("missing.yaml")


def test_invalid_yaml_is_reported_with_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("benchmark: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(path)


def test_robust_aggregation_settings_are_checked():
    assert load_config("tiny", {"fl.aggregation": "median", "fl.clip_norm": 2.0}).fl.aggregation == "median"
    with pytest.raises(ConfigError, match="fl.trim: must be at least 1"):
        load_config("tiny", {"fl.trim": 0})
    with pytest.raises(ConfigError, match="fl.aggregation"):
        load_config("tiny", {"fl.aggregation": "krum"})
    with pytest.raises(ConfigError, match="fl.clip_norm: must be > 0"):
        load_config("tiny", {"fl.clip_norm": 0.0})


def test_differential_privacy_settings_are_checked():
    assert load_config("tiny", {"fl.dp_noise_multiplier": 1.1}).fl.dp_noise_multiplier == 1.1
    with pytest.raises(ConfigError, match="fl.dp_noise_multiplier: must be > 0"):
        load_config("tiny", {"fl.dp_noise_multiplier": 0.0})
    with pytest.raises(ConfigError, match=r"fl.dp_delta: must be in \(0, 1\)"):
        load_config("tiny", {"fl.dp_delta": 1.0})
