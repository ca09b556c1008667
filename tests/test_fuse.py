"""Fused q/k/v and gate/up projections give the logits of the separate ones."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from conftest import nmse
from qwen_edge.config import ModelConfig
from qwen_edge.loader import load_model

IDS = mx.array([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26]])


@pytest.mark.parametrize("options", [{}, {"tie_word_embeddings": True}], ids=["untied", "tied"])
def test_fused_float_layers_match(tiny_checkpoint, options):
    directory = tiny_checkpoint(**options)
    config = ModelConfig.from_file(directory)
    plain = load_model(directory, config, dtype="float32")
    fused = load_model(directory, config, dtype="float32", fuse=True)

    attention, mlp = fused.model.layers[0].self_attn, fused.model.layers[0].mlp
    assert "qkv_proj" in attention
    assert "q_proj" not in attention
    assert "gate_up_proj" in mlp
    assert "gate_proj" not in mlp
    assert nmse(np.array(fused(IDS)), np.array(plain(IDS))) < 1e-10


def test_fused_cached_decode_matches(tiny_checkpoint):
    directory = tiny_checkpoint()
    config = ModelConfig.from_file(directory)
    plain = load_model(directory, config, dtype="float32")
    fused = load_model(directory, config, dtype="float32", fuse=True)

    cache = fused.make_cache()
    steps = [np.array(fused(IDS[:, :8], cache))]
    steps += [np.array(fused(IDS[:, i : i + 1], cache)) for i in range(8, 12)]

    assert nmse(np.concatenate(steps, axis=1), np.array(plain(IDS))) < 1e-10


def test_fused_quantized_layers_match(tmp_path, tiny_checkpoint):
    from mlx_lm import convert as mlx_lm_convert

    quantized = tmp_path / "q4"
    mlx_lm_convert(str(tiny_checkpoint()), str(quantized), quantize=True, q_bits=4)
    config = ModelConfig.from_file(quantized)
    plain = load_model(quantized, config, dtype="float32", layout="quantized")
    fused = load_model(quantized, config, dtype="float32", layout="quantized", fuse=True)

    assert isinstance(fused.model.layers[0].self_attn.qkv_proj, nn.QuantizedLinear)
    assert nmse(np.array(fused(IDS)), np.array(plain(IDS))) < 1e-10


def test_layers_of_different_bits_stay_separate(tiny_checkpoint):
    directory = tiny_checkpoint()
    config = ModelConfig.from_file(directory)
    model = load_model(directory, config, dtype="float32")
    attention = model.model.layers[0].self_attn
    attention.v_proj = nn.QuantizedLinear.from_linear(attention.v_proj, group_size=64, bits=8)

    assert attention.fuse() is False
    assert "q_proj" in attention
    assert "qkv_proj" not in attention
    assert model.fuse_projections() == 3  # layer 1 attention, both MLPs


def test_compiled_swiglu_equals_plain():
    from qwen_edge.model import swiglu

    rng = np.random.default_rng(0)
    gate = mx.array(rng.normal(size=(2, 5, 384)).astype(np.float32))
    up = mx.array(rng.normal(size=(2, 5, 384)).astype(np.float32))

    plain = gate * mx.sigmoid(gate) * up

    assert np.allclose(np.array(swiglu(gate, up)), np.array(plain), rtol=1e-6, atol=1e-6)
