"""KV cache: keys and values of every layer, grown in steps up to a fixed maximum."""

from __future__ import annotations

import mlx.core as mx

from qwen_edge.config import ModelConfig
from qwen_edge.errors import CacheError


class KVCache:
    """Keys and values of all layers for one sequence (batch size 1 or more).

    Buffers are allocated `step` positions at a time so a decode step writes into existing
    memory instead of concatenating. `offset` is the number of positions already filled; every
    layer writes at the same offset during one forward pass, and the model calls `advance` after
    the last layer.
    """

    # Float entries; QuantizedKVCache sets these to its packing.
    bits: int | None = None
    group_size: int = 64

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        max_size: int,
        step: int = 256,
    ) -> None:
        if max_size <= 0:
            raise CacheError(f"max_size must be positive, got {max_size}")
        self.n_layers = n_layers
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.max_size = max_size
        self.step = step
        self.offset = 0
        self.keys: list[mx.array | None] = [None] * n_layers  # each [B, n_kv_heads, capacity, D]
        self.values: list[mx.array | None] = [None] * n_layers

    @classmethod
    def for_model(cls, config: ModelConfig, max_size: int | None = None) -> KVCache:
        """Make a cache shaped for `config`, holding at most `max_size` positions
        (default: the model's context length)."""
        return cls(
            config.n_layers,
            config.n_kv_heads,
            config.head_dim,
            max_size or config.max_position_embeddings,
        )

    @property
    def capacity(self) -> int:
        first = self.keys[0]
        return 0 if first is None else first.shape[2]

    def check_compatible(self, config: ModelConfig) -> None:
        """Raise CacheError unless this cache was built for a model shaped like `config`."""
        ours = (self.n_layers, self.n_kv_heads, self.head_dim)
        theirs = (config.n_layers, config.n_kv_heads, config.head_dim)
        if ours != theirs:
            raise CacheError(
                f"this KV cache contains (layers, kv heads, head_dim) = {ours} but the model has "
                f"{theirs}; make a new cache with KVCache.for_model(model.config)"
            )

    def has_room(self, n_new: int) -> bool:
        """True if `n_new` more positions fit."""
        return self.offset + n_new <= self.max_size

    def check_room(self, n_new: int) -> None:
        """Raise CacheError if `n_new` more positions would not fit."""
        if not self.has_room(n_new):
            raise CacheError(
                f"the KV cache is full: {self.offset} positions used + {n_new} new > max size "
                f"{self.max_size}; start a new conversation, trim the cache or use a larger "
                "max size"
            )

    def reserve(self, n_new: int) -> None:
        """Grow every layer's buffers, where they exist, to hold `n_new` more positions. The
        compiled decode step calls this because it cannot grow them itself."""
        end = self.offset + n_new
        for layer, stored_keys in enumerate(self.keys):
            if stored_keys is not None and end > stored_keys.shape[2]:
                self.keys[layer], self.values[layer] = self._grow(
                    stored_keys, self.values[layer], stored_keys, end, filled=self.offset
                )

    def mask(self, n_new: int) -> str | None:
        """Return the attention mask for `n_new` queries over the keys `update_and_fetch`
        returns: causal for several, none for one."""
        return "causal" if n_new > 1 else None

    def update_and_fetch(
        self, layer: int, keys: mx.array, values: mx.array
    ) -> tuple[mx.array, mx.array]:
        """Store `keys`/`values` [B, n_kv_heads, L, D] of `layer` at the current offset and return
        all keys/values of that layer so far."""
        self._check_shape(layer, keys)
        self.check_room(keys.shape[2])
        return self._write(layer, keys, values, start=self.offset)

    def _write(
        self, layer: int, keys: mx.array, values: mx.array, start: int
    ) -> tuple[mx.array, mx.array]:
        """Write `keys`/`values` of `layer` at position `start`, growing the buffers if needed,
        and return the layer's keys/values up to the last one written."""
        end = start + keys.shape[2]
        stored_keys, stored_values = self.keys[layer], self.values[layer]
        if stored_keys is None or end > stored_keys.shape[2]:
            stored_keys, stored_values = self._grow(
                stored_keys, stored_values, keys, end, filled=start
            )

        stored_keys[..., start:end, :] = keys
        stored_values[..., start:end, :] = values
        self.keys[layer], self.values[layer] = stored_keys, stored_values
        return stored_keys[..., :end, :], stored_values[..., :end, :]

    def _check_shape(self, layer: int, keys: mx.array) -> None:
        _, n_kv_heads, _, head_dim = keys.shape
        if (n_kv_heads, head_dim) != (self.n_kv_heads, self.head_dim):
            raise CacheError(
                f"layer {layer} gives keys with {n_kv_heads} heads of size {head_dim}, but the "
                f"cache was built for {self.n_kv_heads} heads of size {self.head_dim}"
            )

    def _grow(
        self,
        stored_keys: mx.array | None,
        stored_values: mx.array | None,
        new_keys: mx.array,
        needed: int,
        filled: int,
    ) -> tuple[mx.array, mx.array]:
        """Return buffers of at least `needed` positions (whole steps) holding the first
        `filled` positions of the old ones."""
        B = new_keys.shape[0]
        capacity = min(self.max_size, -(-needed // self.step) * self.step)
        shape = (B, self.n_kv_heads, capacity, self.head_dim)
        grown_keys = mx.zeros(shape, new_keys.dtype)
        grown_values = mx.zeros(shape, new_keys.dtype)
        if stored_keys is not None and filled > 0:
            grown_keys[..., :filled, :] = stored_keys[..., :filled, :]
            grown_values[..., :filled, :] = stored_values[..., :filled, :]
        return grown_keys, grown_values

    def advance(self, n_new: int) -> None:
        """Mark `n_new` positions written by the forward pass that just ran."""
        self.offset += n_new

    def trim(self, n: int) -> int:
        """Forget the last `n` positions (or all, if fewer) and return how many were removed."""
        n = min(max(n, 0), self.offset)
        self.offset -= n
        return n

    @property
    def state(self) -> list[mx.array]:
        """The arrays to evaluate so that the cache contains concrete values."""
        return [a for a in self.keys + self.values if a is not None]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)
