"""A KV cache of bounded size that keeps the first tokens and a window of the latest ones.

Once `max_size` positions are stored, each new position overwrites the oldest one after the
first `keep` (which hold the system prompt, and act as an attention sink: models put much of
their attention on the first tokens, so dropping them degrades output far more than dropping
the middle). Keys are stored after RoPE, so an entry keeps its position wherever it sits in the
buffer, and a single query needs no ordering at all.
"""

from __future__ import annotations

import mlx.core as mx

from qwen_edge.cache import KVCache
from qwen_edge.config import ModelConfig
from qwen_edge.errors import CacheError


class RotatingKVCache(KVCache):
    """KVCache that never fills: `offset` counts every position seen, while at most `max_size`
    are stored."""

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        max_size: int,
        keep: int = 4,
        step: int = 256,
    ) -> None:
        if not 0 <= keep < max_size:
            raise CacheError(f"keep must be in [0, max_size {max_size}), got {keep}")
        super().__init__(n_layers, n_kv_heads, head_dim, max_size, step)
        self.keep = keep
        self.length = 0  # positions stored, at most max_size
        self.write_index = 0  # where the next single position goes once the buffer is full
        self._pending: tuple[int, int] | None = None  # (length, write_index) after this pass

    @classmethod
    def for_model(
        cls, config: ModelConfig, max_size: int | None = None, keep: int = 4
    ) -> RotatingKVCache:
        return cls(
            config.n_layers,
            config.n_kv_heads,
            config.head_dim,
            max_size or config.max_position_embeddings,
            keep=keep,
        )

    def has_room(self, n_new: int) -> bool:
        """Return True: a rotating cache drops old positions instead of filling up."""
        return True

    def update_and_fetch(
        self, layer: int, keys: mx.array, values: mx.array
    ) -> tuple[mx.array, mx.array]:
        self._check_shape(layer, keys)
        L = keys.shape[2]
        if self.length + L <= self.max_size:
            return self._append(layer, keys, values)
        if L == 1 and self.length == self.max_size:
            return self._overwrite(layer, keys, values)
        return self._reorder_and_trim(layer, keys, values)

    def _append(self, layer: int, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        end = self.length + keys.shape[2]
        self._pending = (end, end if end < self.max_size else self.keep)
        return self._write(layer, keys, values, start=self.length)

    def _overwrite(self, layer: int, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        # One query attends to every stored key with no mask, so their order does not matter.
        i = self.write_index
        self.keys[layer][..., i : i + 1, :] = keys
        self.values[layer][..., i : i + 1, :] = values
        following = i + 1 if i + 1 < self.max_size else self.keep
        self._pending = (self.max_size, following)
        return self.keys[layer], self.values[layer]

    def _reorder_and_trim(
        self, layer: int, keys: mx.array, values: mx.array
    ) -> tuple[mx.array, mx.array]:
        """Several new positions that do not fit: put the stored ones back in time order, append
        the new ones (the causal mask needs that order), and keep the first `keep` plus the
        latest positions for later steps. For this pass the queries see up to L - 1 more
        positions than the window."""
        all_keys = mx.concatenate([self._in_order(self.keys[layer], keys), keys], axis=2)
        all_values = mx.concatenate([self._in_order(self.values[layer], values), values], axis=2)
        recent = self.max_size - self.keep
        self.keys[layer] = _keep_ends(all_keys, self.keep, recent)
        self.values[layer] = _keep_ends(all_values, self.keep, recent)
        self._pending = (self.max_size, self.keep)
        return all_keys, all_values

    def _in_order(self, stored: mx.array | None, like: mx.array) -> mx.array:
        """Return the stored positions oldest first (the ring starts at write_index once full)."""
        if stored is None:
            return like[..., :0, :]
        stored = stored[..., : self.length, :]
        if self.length < self.max_size or self.write_index == self.keep:
            return stored
        i, k = self.write_index, self.keep
        return mx.concatenate([stored[..., :k, :], stored[..., i:, :], stored[..., k:i, :]], axis=2)

    def advance(self, n_new: int) -> None:
        super().advance(n_new)
        if self._pending is not None:
            self.length, self.write_index = self._pending
            self._pending = None

    def trim(self, n: int) -> int:
        """Forget the last `n` positions; only possible before the window has started to
        rotate, because rotated-out positions cannot come back."""
        if self.offset > self.length:
            raise CacheError(
                "cannot trim a rotating KV cache that has dropped positions; start a new cache"
            )
        removed = super().trim(n)
        self.length = self.offset
        self.write_index = self.length
        return removed

    @property
    def capacity(self) -> int:
        first = self.keys[0]
        return 0 if first is None else first.shape[2]


def _keep_ends(x: mx.array, keep: int, recent: int) -> mx.array:
    """Return the first `keep` and the last `recent` positions of x [B, H, S, D]."""
    return mx.concatenate([x[..., :keep, :], x[..., -recent:, :]], axis=2)
