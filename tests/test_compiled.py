"""The compiled decode step: same logits as the plain step, and the caches it leaves alone."""

import mlx.core as mx
import numpy as np
import pytest

from conftest import nmse
from qwen_edge import generate, load
from qwen_edge.cache import KVCache
from qwen_edge.compiled import CompiledDecode, compiled_decode
from qwen_edge.config import ModelConfig
from qwen_edge.loader import load_model


@pytest.fixture
def tiny_model(tiny_checkpoint):
    directory = tiny_checkpoint()
    return load_model(directory, ModelConfig.from_file(directory), dtype="float32", fuse=True)


def small_step_cache(model):
    """A cache that grows every 4 positions, so a few steps cross several regrowths."""
    cache = KVCache.for_model(model.config, max_size=64)
    cache.step = 4
    return cache


def test_compiled_step_equals_plain_step(tiny_model):
    prompt = mx.array([[5, 17, 42, 99, 3]])
    plain_cache, compiled_cache = small_step_cache(tiny_model), small_step_cache(tiny_model)
    tiny_model(prompt, plain_cache)
    tiny_model(prompt, compiled_cache)
    step = CompiledDecode(tiny_model)

    for token in [7, 8, 250, 1, 33, 64, 2, 9, 11, 100, 5, 6]:
        ids = mx.array([[token]])
        plain = np.array(tiny_model(ids, plain_cache, last_only=True))
        compiled = np.array(step(ids, compiled_cache))
        assert compiled.shape == plain.shape
        assert nmse(compiled, plain) < 1e-10
        assert compiled_cache.offset == plain_cache.offset

    assert compiled_cache.capacity == plain_cache.capacity == 20


def test_compiled_step_writes_the_cache(tiny_model):
    prompt = mx.array([[5, 17, 42, 99, 3]])
    plain_cache, compiled_cache = small_step_cache(tiny_model), small_step_cache(tiny_model)
    tiny_model(prompt, plain_cache)
    tiny_model(prompt, compiled_cache)

    tiny_model(mx.array([[7]]), plain_cache)
    CompiledDecode(tiny_model)(mx.array([[7]]), compiled_cache)
    # The next prefill through the plain path reads what the compiled step wrote.
    plain = np.array(tiny_model(mx.array([[8, 9]]), plain_cache))
    compiled = np.array(tiny_model(mx.array([[8, 9]]), compiled_cache))
    assert nmse(compiled, plain) < 1e-10


def test_other_caches_keep_plain_step(tiny_model):
    assert not CompiledDecode.supports(tiny_model.make_cache())  # no buffers before a prefill
    quantized = tiny_model.make_cache(kv_bits=8)
    rotating = tiny_model.make_cache(max_size=16, keep=4)
    for cache in (quantized, rotating):
        tiny_model(mx.array([[1, 2, 3]]), cache)
        assert not CompiledDecode.supports(cache)


def test_compiled_step_kept_on_model(tiny_model):
    assert compiled_decode(tiny_model) is compiled_decode(tiny_model)


@pytest.mark.real_model
def test_compiled_greedy_tokens_match(demo_model_dir):
    model, tokenizer = load(demo_model_dir)
    messages = [{"role": "user", "content": "用一句话解释 KV 缓存。"}]

    plain = generate(model, tokenizer, messages, max_tokens=24, compile_step=False)
    compiled = generate(model, tokenizer, messages, max_tokens=24, compile_step=True)
    assert compiled == plain
    assert len(plain) > 0
