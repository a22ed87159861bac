"""(1) A 2-rank JEST run (learnability from the reference cache) trains under ZeRO-1/2/3.

Real launchers (subprocesses; 38-55 s each on the loaded 2-core machine, 2026-11-21): `deepspeed --hostfile <localhost slots=2>
--no_ssh_check --master_addr 127.0.0.1` (through launch/multi_node.sh) at ZeRO-2, and
`torchrun --nproc_per_node 2` (through launch/torchrun.sh) at ZeRO-3.
ZeRO-3 also runs with forked in-process workers (~7-10 s); ZeRO-1 is what the selection and
resume tests (test_selection_resume.py) train with.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import itest_harness as H

BIN = Path(sys.executable).parent


def _check_run(out_dir: Path, steps: int) -> None:
    losses = H.read_losses(out_dir)
    assert sorted(losses) == list(range(1, steps + 1)), losses
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert (out_dir / "checkpoints" / f"step_{steps:08d}" / "COMPLETE").exists()


def _launch(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    p = subprocess.Popen(cmd, cwd=H.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"{cmd[0]} still running after {timeout} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, "")


def _env(port: int) -> dict[str, str]:
    env = dict(os.environ, MASTER_PORT=str(port), PYTHON=sys.executable, DEEPSPEED=str(BIN / "deepspeed"),
               TORCHRUN=str(BIN / "torchrun"), PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    env.pop("OMP_NUM_THREADS", None)  # the scripts choose it
    return env


def test_deepspeed_launcher_hostfile_zero2(jest_config, tmp_path):
    cfg = H.dump_yaml(jest_config(str(tmp_path / "run")), tmp_path / "jest.yaml")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    port = H.free_port()
    env = dict(_env(port), NO_SSH_CHECK="1")
    t0 = time.monotonic()
    r = _launch(["bash", "launch/multi_node.sh", str(hostfile), str(cfg), "--set", "train.zero_stage=2",
                 "--quiet", "--no-export"], env, timeout=150)
    print(f"[itest] deepspeed launcher, 2 ranks, ZeRO-2: {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, r.stdout[-4000:]
    assert "--local_rank=" in r.stdout  # the launcher appended it and the CLI accepted it
    assert H.remove_shm_for_port(port) == [], "DeepSpeed's shm buffers were not unlinked at init"
    _check_run(tmp_path / "run", 4)


def test_torchrun_zero3(jest_config, tmp_path):
    cfg = H.dump_yaml(jest_config(str(tmp_path / "run")), tmp_path / "jest.yaml")
    port = H.free_port()
    t0 = time.monotonic()
    r = _launch(["bash", "launch/torchrun.sh", "2", str(cfg), "--set", "train.zero_stage=3", "--quiet",
                 "--no-export"], _env(port), timeout=150)
    print(f"[itest] torchrun, 2 ranks, ZeRO-3: {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, r.stdout[-4000:]
    _check_run(tmp_path / "run", 4)


@pytest.mark.parametrize("stage", [3])
def test_forked_workers_zero_stage(jest_config, tmp_path, stage):
    t = H.run_workers(jest_config(tmp_path / "run", zero_stage=stage), world=2, timeout=120)
    print(f"[itest] forked workers, 2 ranks, ZeRO-{stage}: {t:.1f} s")
    _check_run(tmp_path / "run", 4)
