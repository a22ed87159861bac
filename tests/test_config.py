import json

import pytest
import yaml

from jest_ds.config import (PACKAGED_CONFIGS, ConfigError, ModelConfig, config_from_dict, deepspeed_config,
                            ds_config_path, load_config, packaged_config_names, packaged_ds_configs,
                            read_config_values)


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


def test_packaged_configs_load_and_every_packaged_ds_config_derives(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # packaged names resolve from any directory
    names = packaged_config_names()
    assert {"tiny", "tiny_iid", "tiny_reference", "tiny_jest", "tiny_flexi", "tiny_independent", "gpu",
            "models/tiny", "models/base"} <= set(names)
    for name in names:
        load_config(name)
    assert set(packaged_ds_configs()) == {"tiny.json", "base.json", "large_zero3.json"}
    for name in packaged_ds_configs():
        ds = deepspeed_config(config_from_dict({"train": {"ds_config": name, "batch_size": 8}}), world_size=2)
        assert ds["train_micro_batch_size_per_gpu"] == 4


# What launch/configs/tiny_*.yaml said (full files) before they became deltas of jest_ds/configs/tiny.yaml.
_OLD_MODEL = {"image_size": 32, "patch_size": 4, "coarse_patch_size": 8, "vision_width": 96, "vision_depth": 2,
              "vision_heads": 3, "text_width": 96, "text_depth": 2, "text_heads": 3, "context_length": 16,
              "embed_dim": 64, "init_bias": -5.0}
_OLD_OPTIM = {"lr": 0.001, "beta2": 0.95, "weight_decay": 0.0001, "warmup_fraction": 0.02}
_OLD_JEST = {"method": "jest", "score": "learnability", "filter_ratio": 0.8, "n_chunks": 16, "gain": 10.0,
             "reference": "runs/tiny_reference/export", "reference_mode": "cached"}


def _old_file(name, part, selection):
    return {"name": name, "model": _OLD_MODEL, "data": {"root": "data/embedded", "train_part": part},
            "selection": selection, "optim": _OLD_OPTIM,
            "train": {"steps": 600, "batch_size": 128, "precision": "fp32", "zero_stage": 2,
                      "ds_config": "ds_configs/tiny.json", "out_dir": f"runs/{name}", "log_every": 10,
                      "eval_every": 100},
            "eval": {"few_shot": 10}}


OLD_TINY_FILES = {
    "tiny_iid": _old_file("tiny_iid", "pool", {"method": "iid"}),
    # since the benchmark redesign: trained until the target validation loss plateaus, best eval exported
    "tiny_reference": {**_old_file("tiny_reference", "curated", {"method": "iid"}),
                       "train": {**_old_file("x", "", {})["train"], "steps": 1500, "eval_every": 100,
                                 "out_dir": "runs/tiny_reference"},
                       "eval": {"few_shot": 10, "best_metric": "eval/icon_val/headline", "best_mode": "max",
                                "patience": 6}},
    "tiny_curated": _old_file("tiny_curated", "curated", {"method": "iid"}),
    "tiny_pool_curated": _old_file("tiny_pool_curated", "pool+curated", {"method": "iid"}),
    "tiny_jest": _old_file("tiny_jest", "pool", _OLD_JEST),
    "tiny_flexi": _old_file("tiny_flexi", "pool", {**_OLD_JEST, "flexi": True, "flexi_low_res_fraction": 0.5}),
    "tiny_independent": _old_file("tiny_independent", "pool",
                                  {**_OLD_JEST, "method": "independent", "independent_mode": "topk"}),
}


@pytest.mark.parametrize("name", sorted(OLD_TINY_FILES))
def test_tiny_deltas_resolve_to_exactly_the_old_full_files(name):
    assert read_config_values(name) == OLD_TINY_FILES[name]
    assert load_config(name) == config_from_dict(OLD_TINY_FILES[name])
    assert load_config(f"{name}.yaml") == load_config(name)
    assert "base" in yaml.safe_load((PACKAGED_CONFIGS / f"{name}.yaml").read_text())  # a delta, not a copy


def test_gpu_overlay_and_flop_presets_hold_what_the_code_used_to():
    old_gpu = ["model.image_size=64", "model.patch_size=8", "model.coarse_patch_size=16", "model.vision_width=384",
               "model.vision_depth=6", "model.vision_heads=6", "model.text_width=384", "model.text_depth=4",
               "model.text_heads=6", "model.embed_dim=256", "model.context_length=24", "train.batch_size=1024",
               "train.precision=auto"]
    for name in OLD_TINY_FILES:
        assert load_config([name, "gpu"]) == load_config(name, old_gpu)
    from jest_ds.flops import model_preset, model_preset_names, preset_config

    assert model_preset_names() == ["base", "tiny"]
    assert model_preset("tiny") == ModelConfig(vocab_size=1000)
    assert model_preset("base") == ModelConfig(
        image_size=256, patch_size=16, coarse_patch_size=32, vision_width=768, vision_depth=12, vision_heads=12,
        text_width=768, text_depth=12, text_heads=12, context_length=64, vocab_size=32000, embed_dim=768)
    assert (preset_config("tiny").train.batch_size, preset_config("base").train.batch_size) == (128, 32768)
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        model_preset("huge")


def test_base_merges_mappings_replaces_lists_and_resolves_beside_the_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "common.yaml").write_text(
        "name: common\nmodel: {vision_width: 64, vision_heads: 4, embed_dim: 32}\n"
        "eval: {sets: [a, b], few_shot: 3}\ntrain: {steps: 7}\n")
    (tmp_path / "sub" / "run.yaml").write_text(
        "base: common.yaml\nname: run\nmodel: {vision_width: 128}\neval: {sets: [c]}\n")
    (tmp_path / "top.yaml").write_text("base: sub/run.yaml\ntrain: {batch_size: 16}\n")
    monkeypatch.chdir(tmp_path / "sub")  # the base paths are relative to the including file, not here
    values = read_config_values(tmp_path / "top.yaml")
    assert values == {"name": "run", "model": {"vision_width": 128, "vision_heads": 4, "embed_dim": 32},
                      "eval": {"sets": ["c"], "few_shot": 3}, "train": {"steps": 7, "batch_size": 16}}
    cfg = load_config(tmp_path / "top.yaml", ["train.steps=9"])
    assert (cfg.model.vision_width, cfg.model.embed_dim, cfg.eval.sets, cfg.train.steps) == (128, 32, ["c"], 9)


def test_a_user_file_can_extend_a_packaged_config_and_a_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("base: tiny_jest\nselection: {filter_ratio: 0.5}\n")
    cfg = load_config("mine.yaml")
    assert (cfg.name, cfg.selection.method, cfg.selection.filter_ratio, cfg.super_batch_size) == \
        ("tiny_jest", "jest", 0.5, 256)
    (tmp_path / "tiny_iid.yaml").write_text("name: local\n")
    assert load_config("tiny_iid.yaml").name == "local"  # an existing path is a path
    assert load_config("tiny_iid").name == "tiny_iid"  # the packaged name (no such file here)


@pytest.mark.parametrize("files, where, what", [
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "b.yaml", "base cycle"),
    ({"a.yaml": "base: a.yaml\n"}, "a.yaml", "base cycle"),
    ({"a.yaml": "base: nowhere.yaml\n"}, "a.yaml", "base 'nowhere.yaml' not found"),
    ({"a.yaml": "base: [x, y]\n"}, "a.yaml", "must be a config name or a path"),
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "train: [1, 2\n"}, "b.yaml", "not valid YAML"),
])
def test_base_errors_are_one_line_naming_the_file(tmp_path, files, where, what):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "a.yaml")
    msg = str(err.value)
    assert str(tmp_path / where) in msg and what in msg and "\n" not in msg


def test_unknown_config_and_ds_config_errors_list_what_is_packaged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"no such config file or packaged config 'tiny_jset' \(packaged: .*tiny_j"):
        load_config("tiny_jset")
    with pytest.raises(ConfigError, match=r"train.ds_config = 'tiny.jsn'.*packaged: base.json, large_zero3.json"):
        deepspeed_config(config_from_dict({"train": {"ds_config": "tiny.jsn"}}), 1)
    tiny = json.loads(ds_config_path("tiny.json").read_text())
    assert ds_config_path("ds_configs/tiny.json") == ds_config_path("tiny") == ds_config_path("tiny.json")
    own = tmp_path / "own.json"
    own.write_text(json.dumps({**tiny, "zero_optimization": {"stage": 1, "overlap_comm": True}}))
    ds = deepspeed_config(config_from_dict({"train": {"ds_config": str(own), "zero_stage": 1}}), 1)
    assert ds["zero_optimization"] == {"stage": 1, "overlap_comm": True}


def test_config_show_prints_the_resolved_yaml_and_its_deepspeed_json(capsys):
    from jest_ds.cli import build_parser, main

    assert main(["config", "show", "--config", "tiny_jest", "--config", "gpu", "--set", "train.batch_size=64",
                 "--world-size", "4"]) == 0
    experiment, ds = yaml.safe_load_all(capsys.readouterr().out)
    cfg = load_config(["tiny_jest", "gpu"], ["train.batch_size=64"])
    assert config_from_dict(experiment) == cfg and experiment == cfg.to_dict()
    assert ds == deepspeed_config(cfg, 4)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == \
        (64, 16, 1)
    assert main(["config", "show", "--config", "tiny_jest", "--world-size", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.batch_size = 128" in err and "\n" not in err
    assert build_parser().parse_args(["train", "--config", "tiny_jest", "--config", "gpu"]).config == \
        ["tiny_jest", "gpu"]
    assert main(["config", "list"]) == 0
    listing = capsys.readouterr().out
    assert str(PACKAGED_CONFIGS) in listing and "tiny_independent" in listing and "large_zero3.json" in listing
