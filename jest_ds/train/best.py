"""Model selection on a held-out metric: keep the best evaluation, stop when it has plateaued.

With ``eval.best_metric`` set (e.g. ``eval/icon_val/val_loss_batch``), every evaluation is
compared with the best so far (``eval.best_mode``: lower or higher is better); the trainer
exports the model each time it improves, so the run's export is its best evaluation, and with
``eval.patience`` > 0 training stops after that many evaluations in a row without improvement.
The reference model is trained this way: until its held-out validation loss stops falling.
"""
from __future__ import annotations

import math
from typing import Any

from jest_ds.errors import ConfigError, UnknownMetricError


class BestTracker:
    def __init__(self, metric: str = "", mode: str = "min", patience: int = 0):
        if mode not in ("min", "max"):
            raise ConfigError(f"eval.best_mode = {mode!r}: must be min or max")
        self.metric, self.mode, self.patience = metric, mode, patience
        self.value = math.inf if mode == "min" else -math.inf
        self.step = -1
        self.evals_since = 0

    @property
    def enabled(self) -> bool:
        return bool(self.metric)

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Record one evaluation; True when it is the best so far (ties keep the earlier one)."""
        if self.metric not in metrics:
            have = ", ".join(sorted(k for k in metrics if k.startswith("eval/")))
            raise UnknownMetricError(f"eval.best_metric = {self.metric!r}: not among the evaluation metrics ({have})")
        v = float(metrics[self.metric])
        if math.isfinite(v) and (v < self.value if self.mode == "min" else v > self.value):
            self.value, self.step, self.evals_since = v, step, 0
            return True
        self.evals_since += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evals_since >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "value": self.value, "step": self.step,
                "evals_since": self.evals_since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and state.get("metric") == self.metric and state.get("mode") == self.mode:
            self.value, self.step, self.evals_since = state["value"], state["step"], state["evals_since"]
