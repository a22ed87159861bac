"""fvcore's FLOP count, the second measurement the tests hold `jest_ds.flops`'s analytic counts to
(the first, FlopCounterMode, is `jest_ds.flops.measure_forward_flops`, which
`tools/flop_report.py --cross-check` also uses).

fvcore counts MACs (× 2 here) and skips `aten::scaled_dot_product_attention` unless given a handle:
`measure_fvcore_flops` registers one and sets fvcore's default layer-norm/pooling/upsampling handles
to zero, so that both tools count what the analytic convention counts (matmuls only)."""
from __future__ import annotations

import math
from typing import Any


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: q·kᵀ and attn·v, in MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _no_flops(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


# fvcore ops that are not matmuls: ignored so that fvcore follows the same convention
_FVCORE_IGNORED = ("aten::batch_norm", "aten::group_norm", "aten::layer_norm", "aten::instance_norm",
                   "aten::upsample_nearest2d", "aten::upsample_bilinear2d", "aten::upsample_bicubic2d",
                   "aten::adaptive_avg_pool2d", "aten::grid_sampler")


def measure_fvcore_flops(model: Any, inputs: tuple[Any, ...] | Any) -> int:
    """fvcore's count of `model(*inputs)` converted to FLOPs (fvcore counts MACs: × 2).

    fvcore traces the model with torch.jit; inputs must be tensors (wrap non-tensor
    arguments such as a patch size in a small module). SDPA attention gets a handle
    (fvcore skips it otherwise); norms/pooling/upsampling are ignored.

    A DeepSpeed ZeRO-3 engine replaces ``torch.nn.functional.linear`` process-wide with an
    autograd Function, which a jit trace records as an opaque PythonOp (every linear layer
    would count zero); the trace therefore runs with torch's builtin linear restored."""
    import torch
    import torch.nn.functional as F

    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    patched_linear = F.linear
    F.linear = torch._C._nn.linear  # what torch itself defines F.linear as
    try:
        return _fvcore_count(model, inputs)
    finally:
        F.linear = patched_linear


def _fvcore_count(model: Any, inputs: tuple[Any, ...]) -> int:
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        # fvcore uses torch.jit (script at import, trace here), deprecated in recent torch
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
        for name in _FVCORE_IGNORED:  # a None handle does not drop fvcore's default handle: count zero
            analysis.set_op_handle(name, _no_flops)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(2 * analysis.total())
