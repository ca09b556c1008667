"""Quantized and rotating KV caches, and prompt caches saved to disk."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conftest import nmse
from qwen_edge.config import ModelConfig
from qwen_edge.errors import CacheError
from qwen_edge.kv_rotating import RotatingKVCache
from qwen_edge.loader import load_model
from qwen_edge.prompt_cache import load_prompt_cache, save_prompt_cache

# Quantizing keys and values perturbs the attention scores. Stated tolerances on the NMSE of the
# logits against a float cache, for the tiny random model below, whose random q/k biases make
# attention unusually peaked: measured 3.4e-4 at 8 bits and 0.079 at 4 bits.
KV_TOLERANCE = {8: 1e-3, 4: 0.15}


@pytest.fixture
def model(tiny_checkpoint):
    directory = tiny_checkpoint()
    return load_model(directory, ModelConfig.from_file(directory), dtype="float32")


def ids(length: int, seed: int = 0) -> mx.array:
    return mx.array(np.random.default_rng(seed).integers(0, 320, size=(1, length)))


def decode(model, tokens: mx.array, cache, prefill: int) -> np.ndarray:
    """Logits of a prefill of `prefill` tokens then one step per remaining token."""
    steps = [np.array(model(tokens[:, :prefill], cache))]
    for i in range(prefill, tokens.shape[1]):
        steps.append(np.array(model(tokens[:, i : i + 1], cache)))
    return np.concatenate(steps, axis=1)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_cache_within_tolerance(model, bits):
    tokens = ids(40)
    reference = np.array(model(tokens))

    logits = decode(model, tokens, model.make_cache(kv_bits=bits), prefill=24)

    assert nmse(logits, reference) < KV_TOLERANCE[bits]
    # and the quantization really happened: not bit-equal to the float path
    assert nmse(logits, reference) > 0


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_attention_equals_float_on_dequantized(bits):
    from qwen_edge.kv_quant import quantized_attention

    rng = np.random.default_rng(bits)
    queries = mx.array(rng.normal(size=(1, 4, 3, 64)).astype(np.float32))
    keys = mx.array(rng.normal(size=(1, 2, 10, 64)).astype(np.float32))
    values = mx.array(rng.normal(size=(1, 2, 10, 64)).astype(np.float32))
    packed_keys = mx.quantize(keys, group_size=64, bits=bits)
    packed_values = mx.quantize(values, group_size=64, bits=bits)

    ours = quantized_attention(queries, packed_keys, packed_values, 0.125, True, bits, 64)
    reference = mx.fast.scaled_dot_product_attention(
        queries,
        mx.dequantize(*packed_keys, group_size=64, bits=bits),
        mx.dequantize(*packed_values, group_size=64, bits=bits),
        scale=0.125,
        mask="causal",
    )

    assert nmse(np.array(ours), np.array(reference)) < 1e-10


def test_quantized_cache_uses_less_memory(model):
    float_cache, packed_cache = model.make_cache(), model.make_cache(kv_bits=4)
    model(ids(20), float_cache)
    model(ids(20), packed_cache)

    assert packed_cache.nbytes < float_cache.nbytes / 3


def test_quantized_cache_rejects_bad_bits(model):
    with pytest.raises(CacheError, match="bits must be 4 or 8, got 3"):
        model.make_cache(kv_bits=3)


def test_rotating_equals_plain_until_full(model):
    tokens = ids(30)
    plain = decode(model, tokens, model.make_cache(), prefill=10)
    rotating = decode(model, tokens, model.make_cache(max_size=64, keep=4), prefill=10)

    assert nmse(rotating, plain) < 1e-10


def test_rotating_window_stays_bounded_and_keeps_first_tokens(model):
    tokens = ids(60, seed=1)
    cache = model.make_cache(max_size=16, keep=4)
    plain = model.make_cache()
    model(tokens[:, :10], plain)  # the same prefill, so the same rounding
    first_keys = np.array(plain.keys[0][..., :4, :])

    model(tokens[:, :10], cache)
    for i in range(10, 60):
        model(tokens[:, i : i + 1], cache)
        assert cache.length <= 16
        assert cache.capacity <= 16
        assert np.array_equal(np.array(cache.keys[0][..., :4, :]), first_keys)
    assert cache.offset == 60


def test_rotating_window_multi_token_overflow(model):
    tokens = ids(50, seed=2)
    cache = model.make_cache(max_size=16, keep=4)

    model(tokens[:, :12], cache)
    logits = np.array(model(tokens[:, 12:30], cache))  # 12 + 18 > 16

    assert cache.length == 16
    assert cache.offset == 30
    assert np.isfinite(logits).all()
    step = np.array(model(tokens[:, 30:31], cache))
    assert np.isfinite(step).all()
    assert cache.length == 16


def test_rotating_keep_must_fit():
    with pytest.raises(CacheError, match="keep must be in"):
        RotatingKVCache(n_layers=1, n_kv_heads=1, head_dim=8, max_size=4, keep=4)


@pytest.mark.parametrize(
    "options", [{}, {"kv_bits": 8}, {"max_size": 16, "keep": 4}], ids=["float", "q8", "rotating"]
)
def test_prompt_cache_round_trip(model, tmp_path, options):
    tokens = ids(24, seed=3)
    cache = model.make_cache(**options)
    model(tokens[:, :20], cache)
    folder = tmp_path / "caches"
    path = save_prompt_cache(folder / "chat.safetensors", cache, tokens[0, :20].tolist(), model)

    loaded, held = load_prompt_cache(path, model)
    expected = np.array(model(tokens[:, 20:24], cache))
    resumed = np.array(model(tokens[:, 20:24], loaded))

    assert held == tokens[0, :20].tolist()
    assert type(loaded) is type(cache)
    assert np.array_equal(resumed, expected)
    assert [p.name for p in folder.iterdir()] == ["chat.safetensors"]


def test_prompt_cache_of_another_model_is_rejected(model, tmp_path, tiny_checkpoint):
    cache = model.make_cache()
    model(ids(5), cache)
    path = save_prompt_cache(tmp_path / "c.safetensors", cache, ids(5)[0].tolist(), model)
    other_dir = tiny_checkpoint(hidden_size=512)
    other = load_model(other_dir, ModelConfig.from_file(other_dir))

    with pytest.raises(CacheError, match="cannot be reused"):
        load_prompt_cache(path, other)


def test_prompt_cache_token_count_must_match(model, tmp_path):
    cache = model.make_cache()
    model(ids(5), cache)

    with pytest.raises(CacheError, match="contains 5 positions but 3"):
        save_prompt_cache(tmp_path / "c.safetensors", cache, [1, 2, 3], model)


def test_prompt_cache_file_name_is_free(model, tmp_path):
    cache = model.make_cache()
    model(ids(5), cache)
    path = save_prompt_cache(tmp_path / "session.cache", cache, ids(5)[0].tolist(), model)

    loaded, held = load_prompt_cache(path, model)

    assert loaded.offset == 5
    assert held == ids(5)[0].tolist()


def test_prompt_cache_directory_is_rejected(model, tmp_path):
    cache = model.make_cache()
    model(ids(5), cache)

    with pytest.raises(CacheError, match="is a directory"):
        save_prompt_cache(tmp_path, cache, ids(5)[0].tolist(), model)
