"""Wide projections stored as [in, out] on the CPU backend: same logits, only wide layers."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from conftest import nmse
from qwen_edge import backend
from qwen_edge.config import ModelConfig
from qwen_edge.cpu_layout import TransposedLinear, transpose_wide_linears
from qwen_edge.loader import load_model, wants_transposed_layout


def load_plain(directory, fuse):
    return load_model(directory, ModelConfig.from_file(directory), dtype="float32", fuse=fuse)


@pytest.mark.parametrize("fuse", [True, False])
def test_transposed_logits_match(tiny_checkpoint, monkeypatch, fuse):
    directory = tiny_checkpoint()
    monkeypatch.setattr("qwen_edge.loader.wants_transposed_layout", lambda model: False)
    plain = load_plain(directory, fuse)
    changed = load_plain(directory, fuse)
    count = transpose_wide_linears(changed, evaluate=True)
    ids = mx.array([[5, 17, 42, 99, 3, 250, 7, 8]])

    n_layers = changed.config.n_layers
    assert count == n_layers * (1 if fuse else 2) + 1  # gate/up of every layer, and the head
    assert isinstance(changed.lm_head, TransposedLinear)
    assert type(changed.model.layers[0].mlp.down_proj) is nn.Linear
    assert nmse(np.array(changed(ids)), np.array(plain(ids))) < 1e-10
    cache = changed.make_cache()
    changed(ids, cache)
    step = np.array(changed(mx.array([[9]]), cache))[:, -1]
    whole = np.array(plain(mx.array([[5, 17, 42, 99, 3, 250, 7, 8, 9]])))[:, -1]
    assert nmse(step, whole) < 1e-10


def test_tied_head_and_bias_layers(tiny_checkpoint):
    directory = tiny_checkpoint(tie_word_embeddings=True)
    model = load_plain(directory, fuse=True)
    transpose_wide_linears(model)

    assert "lm_head" not in model
    assert type(model.model.embed_tokens) is nn.Embedding
    linear = nn.Linear(8, 4)
    transposed = TransposedLinear(linear)
    x = mx.random.normal((2, 8))
    assert np.allclose(np.array(transposed(x)), np.array(linear(x)), atol=1e-6)


def test_loader_choice_follows_backend(tiny_checkpoint):
    directory = tiny_checkpoint()
    model = load_plain(directory, fuse=True)
    on_cpu_with_gemv = mx.default_device() == mx.cpu and backend.gemv_shim is not None

    assert wants_transposed_layout(model) == on_cpu_with_gemv
    assert isinstance(model.lm_head, TransposedLinear) == on_cpu_with_gemv


def test_transposed_layers_still_fuse(tiny_checkpoint, monkeypatch):
    directory = tiny_checkpoint()
    monkeypatch.setattr("qwen_edge.loader.wants_transposed_layout", lambda model: False)
    plain = load_plain(directory, fuse=False)
    changed = load_plain(directory, fuse=False)
    transpose_wide_linears(changed)
    fused = changed.fuse_projections()
    ids = mx.array([[5, 17, 42, 99, 3, 250, 7, 8]])

    assert fused == 2 * changed.config.n_layers
    assert isinstance(changed.model.layers[0].mlp.gate_up_proj, TransposedLinear)
    assert nmse(np.array(changed(ids)), np.array(plain(ids))) < 1e-10
