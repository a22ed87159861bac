"""The wheel users install: it carries the configs and the licence, and trains from any directory.

Builds a wheel from this checkout, installs it (not editable) into a private target directory and
runs its `jest-ds` console script from a directory outside the repository, with PYTHONPATH set so
that the wheel's jest_ds shadows the editable install of the test environment.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from synthetic_data import TINY_MODEL

REPO = Path(__file__).resolve().parent.parent
BUILD_INPUTS = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE", "jest_ds", "ds_configs")


def _run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"  # the build inputs only: building in the checkout would write build/ there
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(src)])
    (wheel,) = (tmp / "dist").glob("jest_ds-*.whl")
    target = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)])
    return wheel, target


@pytest.mark.slow
def test_wheel_carries_configs_ds_configs_and_licence(installed_wheel):
    wheel, _ = installed_wheel
    names = zipfile.ZipFile(wheel).namelist()
    yamls = {n.removeprefix("jest_ds/configs/") for n in names if n.startswith("jest_ds/configs/")}
    assert yamls == {p.relative_to(REPO / "jest_ds" / "configs").as_posix()
                     for p in (REPO / "jest_ds" / "configs").rglob("*.yaml")}
    assert {"tiny.yaml", "tiny_jest.yaml", "gpu.yaml", "models/base.yaml"} <= yamls
    jsons = {n.removeprefix("jest_ds/ds_configs/") for n in names
             if n.startswith("jest_ds/ds_configs/") and n.endswith(".json")}
    assert jsons == {p.name for p in (REPO / "ds_configs").glob("*.json")} >= {"tiny.json", "base.json"}
    (licence,) = [n for n in names if ".dist-info/" in n and n.endswith("/LICENSE")]
    text = zipfile.ZipFile(wheel).read(licence).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = {r.name: r.specifier for r in (Requirement(line.split(":", 1)[1]) for line in metadata.splitlines()
                                              if line.startswith("Requires-Dist:"))}
    # bounded to the majors tested: jest_ds uses private parts of both
    assert "2.15.0" in requires["torch"] and "3.0" not in requires["torch"]
    assert "0.19.8" in requires["deepspeed"] and "0.20.0" not in requires["deepspeed"]


@pytest.mark.slow
def test_installed_wheel_trains_a_packaged_config_from_another_directory(installed_wheel, synthetic_root,
                                                                          tmp_path):
    _, target = installed_wheel
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    where = _run([sys.executable, "-c", "import jest_ds, jest_ds.config as c; "
                  "print(jest_ds.__file__); print(c.ds_config_path('tiny.json')); print(c.PACKAGED_CONFIGS)"],
                 cwd=work, env=env).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in where), where

    sets = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + [
        f"data.root={synthetic_root}", "data.shuffle_buffer=64", "data.num_workers=0", "train.steps=3", "train.batch_size=32",
        "train.out_dir=runs/from_wheel", "train.log_every=1", "train.eval_every=0", "train.tensorboard=false",
        "train.collective_timeout_s=60", "eval.few_shot=2"]
    _run([str(target / "bin" / "jest-ds"), "train", "--config", "tiny_iid", "--quiet", "--no-export",
          *[x for s in sets for x in ("--set", s)]], cwd=work, env=env)
    run = work / "runs" / "from_wheel"  # relative paths in a config are relative to the working directory
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 3
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["name"], saved["train"]["ds_config"], saved["model"]["vision_width"]) == \
        ("tiny_iid", "ds_configs/tiny.json", TINY_MODEL["vision_width"])
