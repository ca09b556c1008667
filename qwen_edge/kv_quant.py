"""A KV cache stored at 8 or 4 bits, and attention computed directly on it.

Keys and values are quantized per group of `group_size` channels of each head vector
(`mx.quantize`, affine). Attention multiplies by the packed arrays with `mx.quantized_matmul`, so
the cache is never expanded back to float. At 8 bits a 0.5B model's KV cache takes about half the
memory of bf16, at 4 bits about a quarter, at the cost of a small error in the attention scores.
"""

from __future__ import annotations

import mlx.core as mx

from qwen_edge.cache import KVCache
from qwen_edge.config import ModelConfig
from qwen_edge.errors import CacheError

Packed = tuple[mx.array, mx.array, mx.array]  # (packed uint32 data, scales, biases)


class QuantizedKVCache(KVCache):
    """KVCache whose entries are (data, scales, biases) triples from `mx.quantize`."""

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        max_size: int,
        step: int = 256,
        bits: int = 8,
        group_size: int = 64,
    ) -> None:
        if bits not in (4, 8):
            raise CacheError(f"KV cache bits must be 4 or 8, got {bits}")
        if head_dim % group_size:
            raise CacheError(
                f"head_dim {head_dim} is not divisible by the KV quantization group size "
                f"{group_size}; use group size 32 or 64, or a float KV cache"
            )
        super().__init__(n_layers, n_kv_heads, head_dim, max_size, step)
        self.bits = bits
        self.group_size = group_size

    @classmethod
    def for_model(
        cls, config: ModelConfig, max_size: int | None = None, bits: int = 8, group_size: int = 64
    ) -> QuantizedKVCache:
        return cls(
            config.n_layers,
            config.n_kv_heads,
            config.head_dim,
            max_size or config.max_position_embeddings,
            bits=bits,
            group_size=group_size,
        )

    @property
    def capacity(self) -> int:
        first = self.keys[0]
        return 0 if first is None else first[0].shape[2]

    @property
    def state(self) -> list[mx.array]:
        return [a for entry in self.keys + self.values if entry is not None for a in entry]

    def update_and_fetch(
        self, layer: int, keys: mx.array, values: mx.array
    ) -> tuple[Packed, Packed]:
        """Quantize and store `keys`/`values` [B, n_kv_heads, L, D]; return all of the layer's
        packed keys and values so far."""
        self._check_shape(layer, keys)
        L = keys.shape[2]
        self.check_room(L)
        end = self.offset + L
        if self.keys[layer] is None or end > self.keys[layer][0].shape[2]:
            self.keys[layer] = self._grow_packed(self.keys[layer], keys, end)
            self.values[layer] = self._grow_packed(self.values[layer], values, end)

        for stored, new in ((self.keys[layer], keys), (self.values[layer], values)):
            packed = mx.quantize(new, group_size=self.group_size, bits=self.bits)
            for buffer, part in zip(stored, packed, strict=True):
                buffer[..., self.offset : end, :] = part
        return _prefix(self.keys[layer], end), _prefix(self.values[layer], end)

    def _grow_packed(self, stored: Packed | None, new: mx.array, needed: int) -> Packed:
        capacity = min(self.max_size, -(-needed // self.step) * self.step)
        B = new.shape[0]
        widths = (self.head_dim * self.bits // 32, self.head_dim // self.group_size)
        shapes = [(B, self.n_kv_heads, capacity, w) for w in (widths[0], widths[1], widths[1])]
        grown = (
            mx.zeros(shapes[0], mx.uint32),
            mx.zeros(shapes[1], new.dtype),
            mx.zeros(shapes[2], new.dtype),
        )
        if stored is not None and self.offset > 0:
            for buffer, old in zip(grown, stored, strict=True):
                buffer[..., : self.offset, :] = old[..., : self.offset, :]
        return grown


def _prefix(packed: Packed, end: int) -> Packed:
    return tuple(part[..., :end, :] for part in packed)  # type: ignore[return-value]


def quantized_attention(
    queries: mx.array,
    keys: Packed,
    values: Packed,
    scale: float,
    causal: bool,
    bits: int,
    group_size: int,
) -> mx.array:
    """softmax(Q K^T * scale) V with K and V packed; queries [B, H, L, D] -> [B, H, L, D]."""
    B, n_heads, L, head_dim = queries.shape
    n_kv_heads = keys[0].shape[1]
    S = keys[0].shape[2]

    # group the query heads that share a kv head: (B, n_kv, n_heads / n_kv, L, D)
    queries = (queries * scale).reshape(B, n_kv_heads, n_heads // n_kv_heads, L, head_dim)
    keys = tuple(part[:, :, None] for part in keys)
    values = tuple(part[:, :, None] for part in values)

    scores = mx.quantized_matmul(
        queries, *keys, transpose=True, group_size=group_size, bits=bits
    )  # (B, n_kv, group, L, S)
    if causal:
        # query i (of the last L positions) may attend to keys up to S - L + i
        allowed = mx.arange(S)[None, :] <= (mx.arange(L)[:, None] + S - L)
        scores = mx.where(allowed, scores, mx.finfo(scores.dtype).min)
    weights = mx.softmax(scores, axis=-1, precise=True)
    out = mx.quantized_matmul(weights, *values, transpose=False, group_size=group_size, bits=bits)
    return out.reshape(B, n_heads, L, head_dim)
