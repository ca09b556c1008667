"""Loading checkpoints: Hugging Face and mlx-lm layouts, and every kind of bad input."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from conftest import nmse
from qwen_edge.config import ModelConfig
from qwen_edge.cpu_layout import TransposedLinear
from qwen_edge.errors import CheckpointError, ConfigError
from qwen_edge.loader import load_model, read_weights, resolve_model_path


def load_dir(directory, dtype="float32"):
    return load_model(directory, ModelConfig.from_file(directory), dtype=dtype)


def rewrite_weights(directory, change):
    """Apply `change(dict)` to the weights of a single-file checkpoint and save them back."""
    weights = dict(read_weights(directory))
    change(weights)
    for file in directory.glob("model*.safetensors*"):
        file.unlink()
    mx.save_safetensors(str(directory / "model.safetensors"), weights, metadata={"format": "pt"})


def test_pickle_checkpoint_is_refused(tiny_checkpoint):
    directory = tiny_checkpoint()
    for file in directory.glob("*.safetensors"):
        file.unlink()
    (directory / "pytorch_model.bin").write_bytes(b"not loaded")

    with pytest.raises(CheckpointError, match="pytorch_model.bin.*safetensors"):
        load_dir(directory)


def test_missing_tensor_is_named(tiny_checkpoint):
    directory = tiny_checkpoint()
    rewrite_weights(directory, lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))

    with pytest.raises(CheckpointError, match=r"model.layers.1.mlp.up_proj.weight \(shape"):
        load_dir(directory)


def test_misshaped_tensor_names_both_shapes(tiny_checkpoint):
    directory = tiny_checkpoint()

    def shrink(weights):
        weights["model.layers.0.self_attn.k_proj.bias"] = mx.zeros((64,))

    rewrite_weights(directory, shrink)

    with pytest.raises(CheckpointError, match=r"k_proj.bias .* shape \(64,\).*implies \(128,\)"):
        load_dir(directory)


def test_unexpected_tensor_is_named(tiny_checkpoint):
    directory = tiny_checkpoint()
    rewrite_weights(directory, lambda w: w.update({"model.extra.weight": mx.zeros((2,))}))

    with pytest.raises(CheckpointError, match="model.extra.weight"):
        load_dir(directory)


def test_redundant_buffers_are_ignored(tiny_checkpoint):
    directory = tiny_checkpoint(tie_word_embeddings=True)
    reference = np.array(load_dir(directory)(mx.array([[1, 2, 3, 4]])))

    def add_redundant(weights):
        weights["lm_head.weight"] = mx.random.normal(weights["model.embed_tokens.weight"].shape)
        weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = mx.ones((32,))

    rewrite_weights(directory, add_redundant)
    logits = np.array(load_dir(directory)(mx.array([[1, 2, 3, 4]])))

    # the tied head still uses the embedding, not the stray lm_head
    assert np.array_equal(logits, reference)


def test_sharded_index_with_missing_shard(tiny_checkpoint):
    directory = tiny_checkpoint(max_shard_size="300KB")
    shard = sorted(directory.glob("model-*.safetensors"))[-1]
    shard.unlink()

    with pytest.raises(CheckpointError, match=shard.name):
        load_dir(directory)


def test_corrupt_safetensors_is_reported(tiny_checkpoint):
    directory = tiny_checkpoint()
    (directory / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")

    with pytest.raises(CheckpointError, match="model.safetensors is not a readable"):
        load_dir(directory)


def test_no_weights_at_all(tmp_path, tiny_checkpoint):
    directory = tiny_checkpoint()
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(directory / "config.json", empty / "config.json")

    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_dir(empty)


def test_other_architecture_config_is_rejected(tiny_checkpoint):
    directory = tiny_checkpoint()
    config_file = directory / "config.json"
    raw = json.loads(config_file.read_text())
    raw["model_type"] = "mistral"
    config_file.write_text(json.dumps(raw))

    with pytest.raises(ConfigError, match="'mistral'"):
        ModelConfig.from_file(directory)


def test_unknown_model_name_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_EDGE_HOME", str(tmp_path))

    with pytest.raises(CheckpointError, match="'no-such-model' not found.*qwen-edge models"):
        resolve_model_path("no-such-model")


def test_gguf_file_given_as_model_says_to_convert(tmp_path):
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF")

    with pytest.raises(CheckpointError, match="convert"):
        resolve_model_path(file)


@pytest.fixture(params=[(4, 64), (8, 32)], ids=["4bit-g64", "8bit-g32"])
def mlx_lm_quantized(request, tmp_path, tiny_checkpoint):
    """A tiny tied checkpoint quantized by mlx_lm.convert; returns (directory, bits)."""
    from mlx_lm import convert as mlx_lm_convert

    bits, group_size = request.param
    quantized = tmp_path / "mlx-q"
    mlx_lm_convert(
        str(tiny_checkpoint(tie_word_embeddings=True)),
        str(quantized),
        quantize=True,
        q_bits=bits,
        q_group_size=group_size,
    )
    return quantized, bits


def test_mlx_lm_quantized_directory_loads_as_quantized(mlx_lm_quantized):
    from mlx_lm import load as mlx_lm_load

    directory, bits = mlx_lm_quantized
    model = load_model(directory, ModelConfig.from_file(directory), layout="quantized")
    their_model, _ = mlx_lm_load(str(directory))
    ids = mx.array([[5, 17, 42, 99, 3, 250, 7, 8]])

    assert model.weight_layout == "quantized"
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert model.model.layers[0].mlp.down_proj.bits == bits
    logits = np.array(model(ids).astype(mx.float32))
    their_logits = np.array(their_model(ids).astype(mx.float32))
    assert nmse(logits, their_logits) < 1e-6


def test_float_layout_matches_quantized(mlx_lm_quantized):
    directory, _ = mlx_lm_quantized
    config = ModelConfig.from_file(directory)
    quantized = load_model(directory, config, dtype="float32", layout="quantized")
    dequantized = load_model(directory, config, dtype="float32", layout="float")
    ids = mx.array([[5, 17, 42, 99, 3, 250, 7, 8]])

    assert dequantized.weight_layout == "float"
    assert type(dequantized.model.layers[0].self_attn.q_proj) is nn.Linear
    assert type(dequantized.model.embed_tokens) is nn.Embedding
    assert nmse(np.array(dequantized(ids)), np.array(quantized(ids))) < 1e-8


def test_auto_layout_follows_backend(mlx_lm_quantized):
    directory, _ = mlx_lm_quantized
    model = load_model(directory, ModelConfig.from_file(directory))

    expected = "float" if mx.default_device() == mx.cpu else "quantized"
    assert model.weight_layout == expected


def test_unknown_layout_is_rejected(mlx_lm_quantized):
    directory, _ = mlx_lm_quantized

    with pytest.raises(CheckpointError, match="layout 'int3'"):
        load_model(directory, ModelConfig.from_file(directory), layout="int3")


def bf16_checkpoint(tiny_checkpoint, **options):
    """A tiny checkpoint stored in bfloat16, as Qwen's own checkpoints are."""
    directory = tiny_checkpoint(**options)
    rewrite_weights(directory, lambda w: w.update({k: v.astype(mx.bfloat16) for k, v in w.items()}))
    return directory


def test_untied_embedding_stays_narrow(tiny_checkpoint):
    directory = bf16_checkpoint(tiny_checkpoint)
    model = load_dir(directory, dtype="float32")
    ids = mx.array([[5, 17, 42, 99, 3]])

    assert model.model.embed_tokens.weight.dtype == mx.bfloat16
    head = model.lm_head
    assert (
        head.weight_t if isinstance(head, TransposedLinear) else head.weight
    ).dtype == mx.float32
    assert model.model.layers[0].mlp.down_proj.weight.dtype == mx.float32
    # Widening is exact, so a float32 table gives the same logits bit for bit.
    logits = np.array(model(ids))
    model.model.embed_tokens.weight = model.model.embed_tokens.weight.astype(mx.float32)
    assert logits.dtype == np.float32
    assert np.array_equal(logits, np.array(model(ids)))


def test_tied_embedding_is_widened(tiny_checkpoint):
    directory = bf16_checkpoint(tiny_checkpoint, tie_word_embeddings=True)
    model = load_dir(directory, dtype="float32")

    assert model.model.embed_tokens.weight.dtype == mx.float32


def test_untied_quantized_embedding_kept(tmp_path, tiny_checkpoint):
    from mlx_lm import convert as mlx_lm_convert

    quantized = tmp_path / "mlx-q-untied"
    mlx_lm_convert(str(tiny_checkpoint()), str(quantized), quantize=True, q_bits=8)
    config = ModelConfig.from_file(quantized)
    floats = load_model(quantized, config, dtype="float32", layout="float")
    reference = load_model(quantized, config, dtype="float32", layout="quantized")
    ids = mx.array([[5, 17, 42, 99, 3, 250, 7, 8]])

    assert isinstance(floats.model.embed_tokens, nn.QuantizedEmbedding)
    assert type(floats.lm_head) in (nn.Linear, TransposedLinear)
    assert nmse(np.array(floats(ids)), np.array(reference(ids))) < 1e-8


def test_load_peak_near_final_size(tiny_checkpoint):
    # A float32 load of bf16 weights used to hold both forms of every tensor at once. Now the
    # extra memory is at most the largest source tensor plus one layer's unfused projections.
    directory = bf16_checkpoint(tiny_checkpoint, num_hidden_layers=6, tie_word_embeddings=True)
    largest = max(v.nbytes for v in read_weights(directory).values())
    mx.eval(mx.zeros(1))
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    model = load_model(directory, ModelConfig.from_file(directory), dtype="float32", fuse=True)
    final = mx.get_active_memory() - before
    one_layer = sum(v.nbytes for _, v in tree_flatten(model.model.layers[0].parameters()))

    assert mx.get_peak_memory() - before - final <= largest + one_layer
