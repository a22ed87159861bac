"""The global gradient norm of a DeepSpeed engine's model, and who computes it.

DeepSpeed's ZeRO optimizers (stages 1-3) and its bf16/fp16 optimizers compute the global L2 norm
of the gradients inside `engine.step()` (before clipping), report it through
`engine.get_global_grad_norm()`, and skip a step whose norm is not finite (`was_step_applied()` is
then False). At ZeRO stage 0 in fp32 the engine hands the gradients to the plain torch optimizer:
no norm is reported and an inf/NaN gradient is applied. There the trainer computes the norm
itself after `engine.backward` (which has already averaged the gradients over ranks, so every rank
gets the same number) and skips the step.
"""
from __future__ import annotations

from typing import Iterable

import torch


def engine_reports_grad_norm(engine) -> bool:
    """Whether `engine.step()` computes the global gradient norm and skips a non-finite step."""
    return engine.zero_optimization_stage() > 0 or engine.bfloat16_enabled() or engine.fp16_enabled()


def dense_grad_norm(parameters: Iterable[torch.Tensor]) -> float:
    """sqrt(sum over parameters of ||p.grad||²), accumulated in float64; a parameter without a
    gradient counts as zero. inf or nan if any gradient entry is."""
    total = torch.zeros((), dtype=torch.float64)
    for p in parameters:
        if p.grad is not None:
            total += p.grad.detach().to(torch.float64).pow(2).sum().cpu()
    return float(total.sqrt())
