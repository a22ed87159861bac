import json

import pytest

from jest_ds.config import ConfigError, config_from_dict, deepspeed_config, load_config


def test_defaults_are_valid_and_beta2_is_095():
    cfg = config_from_dict({})
    assert cfg.optim.beta2 == 0.95
    assert cfg.model.init_bias == -10.0


@pytest.mark.parametrize("values, field", [
    ({"selection": {"filter_ratio": 1.2}}, "selection.filter_ratio"),
    ({"selection": {"method": "jset"}}, "selection.method"),
    ({"model": {"patch_size": 5}}, "model.patch_size"),
    ({"train": {"batch_size": "big"}}, "train.batch_size"),
    ({"optim": {"beta2": 1.0}}, "optim.beta2"),
    ({"train": {"zero_stage": 4}}, "train.zero_stage"),
    ({"selection": {"method": "jest", "reference": "x", "n_chunks": 7}}, "selection.n_chunks"),
    ({"selection": {"method": "jest"}}, "selection.reference"),
    ({"trian": {}}, "trian"),
    ({"model": {"widht": 3}}, "model.widht"),
])
def test_bad_values_give_one_line_naming_the_field(values, field):
    with pytest.raises(ConfigError) as err:
        config_from_dict(values)
    msg = str(err.value)
    assert field in msg and "\n" not in msg


def test_super_batch_and_per_rank_split():
    cfg = config_from_dict({"selection": {"method": "jest", "filter_ratio": 0.8, "reference": "r"},
                            "train": {"batch_size": 128}})
    assert cfg.super_batch_size == 640
    assert cfg.per_rank(2) == (320, 64)


def test_deepspeed_batch_keys_are_derived(tmp_path):
    cfg = config_from_dict({"train": {"batch_size": 64, "zero_stage": 3}, "optim": {"grad_clip": 0.5}})
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["train_batch_size"] == 64
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 4 == 64
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["gradient_clipping"] == 0.5
    with pytest.raises(ConfigError, match="world size"):
        deepspeed_config(config_from_dict({"train": {"batch_size": 63}}), world_size=2)


def test_yaml_overrides_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 5\n")
    cfg = load_config(p, ["train.batch_size=32", "selection.gain=10"])
    assert (cfg.train.steps, cfg.train.batch_size, cfg.selection.gain) == (5, 32, 10.0)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parent.parent / "launch" / "configs").glob("*.yaml")):
        load_config(path)
    json.loads((Path(__file__).resolve().parent.parent / "ds_configs" / "tiny.json").read_text())
