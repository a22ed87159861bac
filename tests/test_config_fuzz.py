"""Every config field, given a value of the wrong type or out of its range on the command line
(`jest-ds config show --set section.field=VALUE`), ends in ONE line naming the field and exit
code 2, never a traceback; `--debug` adds the traceback (issue 19)."""
import dataclasses
from typing import Literal, get_origin, get_type_hints

import pytest

from jest_ds.cli import main
from jest_ds.config import ExperimentConfig

# Values (YAML, as written after `=`) outside each numeric field's range. Every int and float
# field is listed: a new field without an entry fails test_every_numeric_field_has_a_range_case.
OUT_OF_RANGE = {
    "model.image_size": ["0", "-32", "30"], "model.patch_size": ["0", "-4", "5"],
    "model.coarse_patch_size": ["0", "-8", "7"], "model.vision_width": ["0", "-1", "130"],
    "model.vision_depth": ["0", "-1"], "model.vision_heads": ["0", "-4", "5"], "model.text_width": ["0", "-1", "130"],
    "model.text_depth": ["0", "-1"], "model.text_heads": ["0", "-4", "5"], "model.mlp_ratio": ["0", "-1"],
    "model.context_length": ["0", "1", "-3"], "model.vocab_size": ["-1", "3"], "model.embed_dim": ["0", "-64"],
    "model.init_log_scale": [".inf", ".nan"], "model.init_bias": ["-.inf", ".nan"],
    "data.shuffle_buffer": ["0", "-1"], "data.num_workers": ["-2"], "data.num_samples": ["-1"],
    "data.prefetch_factor": ["0", "-1"],
    "selection.filter_ratio": ["-0.1", "1", "1.2", "0.999999", ".nan"], "selection.n_chunks": ["0", "-1", "7"],
    "selection.gain": ["0", "-1", ".inf"], "selection.flexi_low_res_fraction": ["-0.5", "1", "2"],
    "selection.score_micro_batch": ["-1", "-64"],
    "optim.lr": ["0", "-1e-3", ".inf"], "optim.beta1": ["-0.1", "1", "1.5"], "optim.beta2": ["-0.1", "1"],
    "optim.eps": ["0", "-1"], "optim.weight_decay": ["-1", ".nan"], "optim.warmup_fraction": ["-0.1", "1"],
    "optim.min_lr_ratio": ["-0.5", "5"], "optim.grad_clip": ["-1", ".inf"],
    "train.steps": ["0", "-5"], "train.batch_size": ["0", "-32", "130"], "train.grad_accumulation": ["0", "2"],
    "train.zero_stage": ["-1", "4"], "train.seed": ["-1", "4294967296"], "train.log_every": ["0", "-1"],
    "train.eval_every": ["-1"], "train.checkpoint_every": ["-1"], "train.keep_last": ["0", "-1"],
    "train.max_nonfinite_in_row": ["0", "-1"], "train.collective_timeout_s": ["0", "-1", ".inf"],
    "train.peak_flops": ["-1", ".nan"],
    "eval.few_shot": ["-3"], "eval.batch_size": ["0", "-1"], "eval.patience": ["-1"],
}
# Strings that are wrong in themselves (the others are paths or names checked where they are used).
BAD_STRINGS = {"train.out_dir": ["''"], "train.ds_config": ["no_such_ds_config.json"]}
# Cases that need another field set with them (a jest run needs a reference; n_chunks must divide b).
CONTEXT = {"selection.n_chunks": ["selection.method=jest", "selection.reference=ref", "train.batch_size=128"],
           "selection.filter_ratio": ["selection.method=jest", "selection.reference=ref"],
           "train.batch_size": ["selection.method=jest", "selection.reference=ref", "selection.n_chunks=4"],
           "eval.patience": ["eval.best_metric=eval/x/top1"]}
WRONG_TYPES = {int: ["abc", "1.5", "true", "[1]", "{a: 1}", "null"],
               float: ["abc", "true", "[1]", "{a: 1}", "null"],
               bool: ["abc", "1", "[true]", "null"],
               str: ["1", "[a]", "{a: b}", "null", "true"],
               list: ["1", "{a: b}", "[1]", "[null]", "[[a]]"],
               Literal: ["nope", "1", "[a]", "null"]}


def _fields():
    """(path, type hint) of every leaf field: `name`, then `section.field` for each section."""
    out = [("name", str)]
    for section in dataclasses.fields(ExperimentConfig):
        cls = get_type_hints(ExperimentConfig)[section.name]
        if not dataclasses.is_dataclass(cls):
            continue
        hints = get_type_hints(cls)
        out += [(f"{section.name}.{f.name}", hints[f.name]) for f in dataclasses.fields(cls)]
    return out


def _kind(hint):
    origin = get_origin(hint)
    return Literal if origin is Literal else list if origin is list else hint


def _cases():
    cases = []
    for path, hint in _fields():
        for value in WRONG_TYPES[_kind(hint)]:
            cases.append((path, value))
        for value in OUT_OF_RANGE.get(path, []) + BAD_STRINGS.get(path, []):
            cases.append((path, value))
    return cases


def test_every_numeric_field_has_a_range_case():
    numeric = {p for p, h in _fields() if h in (int, float)}
    assert numeric == set(OUT_OF_RANGE)
    assert len(_fields()) > 60  # every section was walked


def _run(capsys, path, value, debug=False):
    sets = [x for s in CONTEXT.get(path, []) + [f"{path}={value}"] for x in ("--set", s)]
    code = main(["config", "show", "--config", "tiny"] + sets + (["--debug"] if debug else []))
    return code, capsys.readouterr()


@pytest.mark.parametrize("path, value", _cases())
def test_bad_value_is_one_line_naming_the_field_exit_2(capsys, path, value):
    code, out = _run(capsys, path, value)
    err = out.err.strip()
    assert code == 2, (path, value, out.out[-300:], err)
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("jest-ds: error: config error:") and path.split(".")[-1] in err, err
    assert path in err.replace(f"{path}[", f"{path} ["), err  # list items are named path[i]


def test_debug_shows_the_traceback(capsys):
    code, out = _run(capsys, "train.log_every", "0", debug=True)
    assert code == 2 and "Traceback" in out.err
    assert out.err.strip().splitlines()[-1].startswith("jest-ds: error: config error: train.log_every = 0")


@pytest.mark.parametrize("argv, what", [
    (["--set", "train.steps=["], "override 'train.steps=['"),
    (["--set", "train.steps"], "override 'train.steps'"),
    (["--world-size", "0"], "--world-size 0"),
    (["--world-size", "-2"], "--world-size -2"),
])
def test_bad_command_line_is_one_line(capsys, argv, what):
    code = main(["config", "show", "--config", "tiny"] + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and what in err, err


@pytest.mark.parametrize("text, what", [
    ("[1, 2]", "must hold a JSON object, not a list"),
    ("{train_batch_size: 1", "is not valid JSON"),
    ('{"zero_optimization": [1]}', "'zero_optimization' must be a JSON object"),
])
def test_bad_ds_config_names_the_file(tmp_path, capsys, text, what):
    ds = tmp_path / "mine.json"
    ds.write_text(text)
    code = main(["config", "show", "--config", "tiny", "--set", f"train.ds_config={ds}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and what in err and str(ds) in err and "train.ds_config" in err, err


def test_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    p = tmp_path / "dup.yaml"
    p.write_text("train:\n  steps: 5\n  batch_size: 8\n  steps: 50\n")
    code = main(["config", "show", "--config", str(p)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and str(p) in err and "duplicate key 'steps'" in err and "line 2" in err
    p.write_text("train: {steps: 5}\ntrain: {batch_size: 8}\n")
    assert main(["config", "show", "--config", str(p)]) == 2
    assert "duplicate key 'train'" in capsys.readouterr().err
