"""KVCache: growth in steps, offset, trim, and the errors for misuse."""

from __future__ import annotations

import mlx.core as mx
import pytest

from qwen_edge.cache import KVCache
from qwen_edge.config import ModelConfig
from qwen_edge.errors import CacheError


def kv(length: int, heads: int = 2, head_dim: int = 8, fill: float = 1.0):
    shape = (1, heads, length, head_dim)
    return mx.full(shape, fill), mx.full(shape, -fill)


def test_grows_in_steps():
    cache = KVCache(n_layers=1, n_kv_heads=2, head_dim=8, max_size=1000, step=16)

    cache.update_and_fetch(0, *kv(5))
    cache.advance(5)
    assert cache.capacity == 16

    cache.update_and_fetch(0, *kv(11))
    cache.advance(11)
    assert cache.capacity == 16

    keys, values = cache.update_and_fetch(0, *kv(1, fill=7.0))
    cache.advance(1)
    assert cache.capacity == 32
    assert keys.shape == (1, 2, 17, 8)
    assert keys[0, 0, 16, 0].item() == 7.0
    assert values[0, 0, 0, 0].item() == -1.0


def test_capacity_never_exceeds_max_size():
    cache = KVCache(n_layers=1, n_kv_heads=2, head_dim=8, max_size=20, step=16)
    cache.update_and_fetch(0, *kv(17))
    cache.advance(17)

    assert cache.capacity == 20


def test_filling_past_max_size_is_an_error():
    cache = KVCache(n_layers=1, n_kv_heads=2, head_dim=8, max_size=10, step=4)
    cache.update_and_fetch(0, *kv(8))
    cache.advance(8)

    with pytest.raises(CacheError, match="full: 8 positions used \\+ 3 new > max size 10"):
        cache.update_and_fetch(0, *kv(3))


def test_trim_rewinds_offset():
    cache = KVCache(n_layers=1, n_kv_heads=2, head_dim=8, max_size=100)
    cache.update_and_fetch(0, *kv(10))
    cache.advance(10)

    assert cache.trim(4) == 4
    assert cache.offset == 6
    keys, _ = cache.update_and_fetch(0, *kv(1, fill=5.0))
    cache.advance(1)
    assert keys.shape[2] == 7
    assert keys[0, 0, 6, 0].item() == 5.0
    assert cache.trim(100) == 7
    assert cache.offset == 0


def test_wrong_head_shape_is_an_error():
    cache = KVCache(n_layers=2, n_kv_heads=2, head_dim=8, max_size=100)

    with pytest.raises(CacheError, match="3 heads of size 8"):
        cache.update_and_fetch(0, *kv(4, heads=3))


def test_cache_of_another_model_is_rejected(tiny_checkpoint):
    from qwen_edge.loader import load_model

    small = tiny_checkpoint()
    other = tiny_checkpoint(hidden_size=512, num_attention_heads=4, num_key_value_heads=2)
    model = load_model(small, ModelConfig.from_file(small))
    other_cache = load_model(other, ModelConfig.from_file(other)).make_cache()

    with pytest.raises(CacheError, match=r"\(2, 2, 128\) but the model has \(2, 2, 64\)"):
        model(mx.array([[1, 2, 3]]), other_cache)


def test_full_model_cache_is_an_error(tiny_checkpoint):
    from qwen_edge.loader import load_model

    directory = tiny_checkpoint()
    model = load_model(directory, ModelConfig.from_file(directory))
    cache = model.make_cache(max_size=8)
    model(mx.array([[1, 2, 3, 4, 5, 6]]), cache)

    with pytest.raises(CacheError, match="full"):
        model(mx.array([[1, 2, 3]]), cache)
    assert cache.offset == 6
