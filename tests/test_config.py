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
    with pytest.raises(ConfigError, match=r"typo.yaml: benchmark.partiton: unknown key; did you mean 'benchmark.partition'"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"bench": {}})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"benchmark": {"sites": "3"}}, "benchmark.sites: must be an integer"),
        ({"benchmark": {"sites": True}}, "benchmark.sites: must be an integer"),
        ({"benchmark": {"sites": 0}}, "sites: must be at least 1"),
        ({"benchmark": {"partition": "random"}}, "benchmark.partition: 'random' is not one of"),
        ({"benchmark": {"splits": [0.5, 0.5]}}, "splits: must be three"),
        ({"data": {"augment": "yes"}}, "data.augment: must be true or false"),
        ({"data": 3}, "data: must be a mapping"),
    ],
)
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


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
