"""The decode step (one new token) compiled into one MLX graph with `mx.compile`.

A plain decode step slices the KV cache to its filled length, so its shapes change with every
token and a compiled graph would be traced again each time. The compiled step instead attends
over the cache's whole buffer with the unwritten positions masked, and takes the write position
and RoPE offset as an array. Its shapes then stay the same until the buffer grows (every
`KVCache.step` positions), and only then is it traced again.
"""

from __future__ import annotations

import mlx.core as mx

from qwen_edge.cache import KVCache
from qwen_edge.config import ModelConfig
from qwen_edge.model import Qwen2Model


class BufferView:
    """The cache interface the model uses, over fixed-size buffers and an array offset.

    It exists only while the compiled step is traced: the model writes the new keys and values
    into it, and the step returns the buffers so that the real cache can take them over.
    """

    bits = None  # float entries

    def __init__(self, keys: list[mx.array], values: list[mx.array], offset: mx.array) -> None:
        self.keys = list(keys)  # each [B, n_kv_heads, capacity, head_dim]
        self.values = list(values)
        self.offset = offset  # int32 array of shape [1]: the position being written

    def check_compatible(self, config: ModelConfig) -> None:
        """Do nothing: the real cache was checked before the step."""

    def check_room(self, n_new: int) -> None:
        """Do nothing: the real cache made room before the step."""

    def advance(self, n_new: int) -> None:
        """Do nothing: the real cache advances after the step."""

    def update_and_fetch(
        self, layer: int, keys: mx.array, values: mx.array
    ) -> tuple[mx.array, mx.array]:
        """Write `keys`/`values` [B, n_kv_heads, 1, head_dim] at the offset and return the whole
        buffers of `layer`."""
        self.keys[layer] = mx.slice_update(self.keys[layer], keys, self.offset, axes=(2,))
        self.values[layer] = mx.slice_update(self.values[layer], values, self.offset, axes=(2,))
        return self.keys[layer], self.values[layer]

    def mask(self, n_new: int) -> mx.array:
        """Return the mask [1, 1, 1, capacity] that keeps the positions written so far, the new one
        included."""
        capacity = self.keys[0].shape[2]
        return (mx.arange(capacity) <= self.offset).reshape(1, 1, 1, capacity)


class CompiledDecode:
    """`model(token, cache, last_only=True)` for one new token, as a compiled graph."""

    def __init__(self, model: Qwen2Model) -> None:
        self.model = model
        self._step = mx.compile(self._forward)

    @staticmethod
    def supports(cache: KVCache) -> bool:
        """Return True for a plain float cache that already has buffers (after a prefill).
        Quantized and rotating caches keep the plain step."""
        return type(cache) is KVCache and cache.keys[0] is not None

    def __call__(self, token: mx.array, cache: KVCache) -> mx.array:
        """Return the logits [1, 1, vocab_size] of `token` [1, 1] and append it to `cache`."""
        cache.check_compatible(self.model.config)
        cache.check_room(1)
        cache.reserve(1)
        offset = mx.array([cache.offset], dtype=mx.int32)
        logits, keys, values = self._step(token, offset, cache.keys, cache.values)
        cache.keys, cache.values = list(keys), list(values)
        cache.advance(1)
        return logits

    def _forward(
        self, token: mx.array, offset: mx.array, keys: list[mx.array], values: list[mx.array]
    ) -> tuple[mx.array, list[mx.array], list[mx.array]]:
        view = BufferView(keys, values, offset)
        logits = self.model(token, view, last_only=True)
        return logits, view.keys, view.values


def compiled_decode(model: Qwen2Model) -> CompiledDecode:
    """Return the model's compiled decode step, made on first use and kept on the model so that
    later generations reuse its traced graphs."""
    step = getattr(model, "_compiled_decode", None)
    if step is None:
        step = CompiledDecode(model)
        model._compiled_decode = step
    return step
