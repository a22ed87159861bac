"""Metrics sink (one JSON line per record, mirrored to TensorBoard, rank 0 only) and the
measurements the trainer logs besides the loss: phase times, throughput, data wait, MFU, peak memory."""
from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from jest_ds.flops import mfu
from jest_ds.train.failures import writing
from jest_ds.errors import DataError

log = logging.getLogger("jest_ds.train")


class MetricsWriter:
    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True, resume: bool = False):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not resume and self.path.exists():
                self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """On resume: drop records written after the checkpoint's step (they will be rewritten)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [json.dumps(r, default=float) for r in read_metrics(self.path) if r.get("step", 0) <= step]
        with writing(self.path):
            self.path.write_text("".join(k + "\n" for k in kept))

    def write(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": time.time(), **record}
        with writing(self.path), self.path.open("a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def write_histograms(self, step: int, values: dict[str, Any]) -> None:
        """Distributions (tag -> array of numbers) to TensorBoard only; non-finite entries dropped."""
        if self._tb is None:
            return
        for tag, arr in values.items():
            arr = np.asarray(arr, dtype=np.float64)
            arr = arr[np.isfinite(arr)]
            if arr.size:
                self._tb.add_histogram(tag, arr, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"no metrics file at {p}")
    lines = p.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if not any(rest.strip() for rest in lines[i + 1:]):
                # what a full disk or a kill in mid-write leaves: the last record cut short
                log.warning("%s: dropped its last line, cut short (%s): %r", p, exc, line[:80])
                break
            raise DataError(f"{p}, line {i + 1}: not a JSON record ({exc}); delete or repair that line") from None
    return rows


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Seconds per phase of the current step: ``with timer.phase("score"): ...``.

    The device is synchronised at both ends of a phase, so a phase holds its own GPU work and
    not the work queued before it. Phases may nest (``forward`` inside ``train``); a phase
    entered twice in one step adds up. ``reset()`` starts a step (`Trainer.train_step` does)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def get(self, name: str) -> float:
        return self.seconds.get(name, 0.0)


class ThroughputMeter:
    """Training-step throughput over the steps since the last `as_metrics()` call.

    Each `add(step_s, data_s)` is one step's wall time (data wait + the step itself; evaluation,
    checkpoints and logging are outside it) and the part spent in `next(batches)`. Per interval:
    `perf/samples_per_s` (trained samples, the global b), `perf/candidates_per_s` (the global
    super-batch B), `perf/data_wait_pct` (share of the wall time spent waiting for data, 0-100)
    and, when the peak is known, `perf/mfu` = achieved FLOP/s / (peak per device × world size).
    `flops_per_step` is the ledger's global total per step."""

    def __init__(self, trained_per_step: int, candidates_per_step: int, flops_per_step: float,
                 peak_flops_per_device: float | None, world_size: int):
        self.trained_per_step = trained_per_step
        self.candidates_per_step = candidates_per_step
        self.flops_per_step = flops_per_step
        self.peak_total = peak_flops_per_device * world_size if peak_flops_per_device else None
        self._reset()

    def _reset(self) -> None:
        self.steps, self.wall_s, self.data_s = 0, 0.0, 0.0

    def add(self, step_s: float, data_s: float) -> None:
        self.steps += 1
        self.wall_s += step_s
        self.data_s += data_s

    def as_metrics(self) -> dict[str, float]:
        """The interval's rates (empty if no step was timed); starts a new interval."""
        if not self.steps or self.wall_s <= 0:
            return {}
        out = {"perf/samples_per_s": self.steps * self.trained_per_step / self.wall_s,
               "perf/candidates_per_s": self.steps * self.candidates_per_step / self.wall_s,
               "perf/data_wait_pct": 100.0 * min(1.0, self.data_s / self.wall_s),
               "perf/step_s": self.wall_s / self.steps}
        if self.peak_total:
            out["perf/mfu"] = mfu(self.flops_per_step, self.wall_s / self.steps, self.peak_total)
        self._reset()
        return out


def peak_memory_metrics(device: torch.device) -> dict[str, float]:
    """Peak memory so far, labelled by what it measures: `mem/peak_gpu_allocated_mib`
    (torch.cuda.max_memory_allocated: tensors allocated by this process on its GPU) or, on CPU,
    `mem/peak_rss_mib` (the process's peak resident set size from getrusage: everything it
    holds in RAM, tensors, Python objects and libraries alike)."""
    if device.type == "cuda":
        return {"mem/peak_gpu_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"mem/peak_rss_mib": rss / (2**20 if sys.platform == "darwin" else 2**10)}
