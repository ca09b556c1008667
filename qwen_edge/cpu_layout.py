"""A weight layout that only MLX's CPU backend wants: wide projections stored transposed.

With native/gemv.c, a decode step's x @ W.T runs as OpenBLAS's sgemv. For the widest outputs,
the fused gate/up projection and the output head, sgemv streams a weight stored as [in, out]
faster than one stored as [out, in]: 31-32 against 27 GB/s, measured with OpenBLAS 0.3.21 on a
2-core x86 machine. On the narrow projections the [out, in] layout was as fast or faster, so
they keep it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.nn as nn

if TYPE_CHECKING:
    from qwen_edge.model import Qwen2Model


class TransposedLinear(nn.Module):
    """A float linear layer whose weight is stored as [in, out] (`weight_t`)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight_t = mx.contiguous(linear.weight.T)  # [in, out]
        if "bias" in linear:
            self.bias = linear.bias

    def __call__(self, x: mx.array) -> mx.array:
        if "bias" in self:
            return mx.addmm(self.bias, x, self.weight_t)
        return x @ self.weight_t


def transpose_wide_linears(model: Qwen2Model, evaluate: bool = False) -> int:
    """Store the gate/up projections (fused or not) and an untied output head as [in, out];
    return how many layers changed. Quantized layers are left alone.

    `evaluate`: compute each new weight before the next, so that at most one layer has both
    layouts in memory at the same time.
    """
    changed = 0

    def swap(parent: nn.Module, name: str) -> None:
        nonlocal changed
        layer = getattr(parent, name, None)
        if type(layer) is not nn.Linear:
            return
        setattr(parent, name, TransposedLinear(layer))
        changed += 1
        if evaluate:
            mx.eval(getattr(parent, name).parameters())

    for decoder_layer in model.model.layers:
        for name in ("gate_up_proj", "gate_proj", "up_proj"):
            if name in decoder_layer.mlp:
                swap(decoder_layer.mlp, name)
    if "lm_head" in model:
        swap(model, "lm_head")
    return changed
