"""Fuse projections that read the same input into one matmul: q/k/v, and gate/up.

A decode step of a small model is dominated by per-kernel overhead rather than arithmetic, so
one wide matmul beats three narrow ones. Fusion happens after loading; checkpoints on disk keep
the separate `q_proj`, `k_proj`, ... tensors.
"""

from __future__ import annotations

import copy

import mlx.core as mx
import mlx.nn as nn

from qwen_edge.cpu_layout import TransposedLinear


def fuse_linears(layers: list[nn.Module]) -> nn.Module | None:
    """Return one layer whose output is the concatenation of `layers`' outputs, or None when
    they cannot share a matmul (mixed float and quantized layers, or different bits)."""
    first = layers[0]
    if type(first) not in (nn.Linear, nn.QuantizedLinear, TransposedLinear):
        return None
    if any(type(layer) is not type(first) for layer in layers):
        return None
    # a shallow copy keeps the type and quantization settings without allocating weights
    fused = copy.copy(first)
    if isinstance(first, nn.QuantizedLinear):
        if len({(layer.group_size, layer.bits, layer.mode) for layer in layers}) != 1:
            return None
        fused.scales = mx.concatenate([layer.scales for layer in layers])
        if "biases" in first:
            fused.biases = mx.concatenate([layer.biases for layer in layers])

    # Output features are the rows of `weight` and the columns of `weight_t`, so concatenating
    # along that axis stacks the outputs.
    if isinstance(first, TransposedLinear):
        fused.weight_t = mx.concatenate([layer.weight_t for layer in layers], axis=1)
    else:
        fused.weight = mx.concatenate([layer.weight for layer in layers])
    with_bias = ["bias" in layer for layer in layers]
    if any(with_bias):
        if not all(with_bias):
            return None
        fused.bias = mx.concatenate([layer.bias for layer in layers])
    return fused
