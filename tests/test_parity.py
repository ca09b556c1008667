"""The native decoder against transformers' Qwen2ForCausalLM on tiny random checkpoints (fp32)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conftest import TINY_VOCAB, nmse, reference_logits
from qwen_edge.config import ModelConfig
from qwen_edge.loader import load_model

TOLERANCE = 1e-6  # NMSE, float32 on both sides

VARIANTS = {
    "untied-gqa2": dict(),
    "tied": dict(tie_word_embeddings=True),
    # 7 query heads per kv head, as in Qwen2.5-0.5B (14:2)
    "gqa7-head64": dict(hidden_size=448, num_attention_heads=7, num_key_value_heads=1),
    "mha-head64": dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=4),
    "gqa2-head128": dict(hidden_size=512, num_attention_heads=4, num_key_value_heads=2),
    "yarn": dict(
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        max_position_embeddings=128,
    ),
    "linear-rope": dict(rope_scaling={"type": "linear", "factor": 2.0}),
    "sharded": dict(max_shard_size="300KB"),
}


def prompt_ids(length: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, TINY_VOCAB, size=(1, length))


def load_ours(directory):
    return load_model(directory, ModelConfig.from_file(directory), dtype="float32")


@pytest.mark.parametrize("variant", VARIANTS)
def test_whole_prompt_matches_transformers(tiny_checkpoint, variant):
    directory = tiny_checkpoint(**VARIANTS[variant])
    ids = prompt_ids(48)
    reference = reference_logits(directory, ids)

    logits = np.array(load_ours(directory)(mx.array(ids)))

    assert logits.shape == reference.shape
    assert nmse(logits, reference) < TOLERANCE


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decode_matches_transformers(tiny_checkpoint, variant):
    directory = tiny_checkpoint(**VARIANTS[variant])
    ids = prompt_ids(48)
    reference = reference_logits(directory, ids)
    model = load_ours(directory)

    cache = model.make_cache()
    steps = [np.array(model(mx.array(ids[:, :40]), cache))]
    for i in range(40, 48):
        steps.append(np.array(model(mx.array(ids[:, i : i + 1]), cache)))
    logits = np.concatenate(steps, axis=1)

    assert cache.offset == 48
    assert nmse(logits, reference) < TOLERANCE


def test_sharded_checkpoint_has_index(tiny_checkpoint):
    directory = tiny_checkpoint(max_shard_size="300KB")

    assert (directory / "model.safetensors.index.json").is_file()
    assert len(list(directory.glob("*.safetensors"))) > 1


def test_wrong_rope_scaling_is_detected(tiny_checkpoint):
    # Guards the tolerance itself: dropping YaRN must push the NMSE far above it.
    from dataclasses import replace

    directory = tiny_checkpoint(**VARIANTS["yarn"])
    ids = prompt_ids(48)
    reference = reference_logits(directory, ids)
    config = replace(ModelConfig.from_file(directory), rope_scaling=None)

    logits = np.array(load_model(directory, config, dtype="float32")(mx.array(ids)))

    assert nmse(logits, reference) > 1e-3


@pytest.mark.parametrize("variant", ["untied-gqa2", "yarn", "tied"])
def test_cached_equals_uncached(tiny_checkpoint, variant):
    directory = tiny_checkpoint(**VARIANTS[variant])
    model = load_ours(directory)
    ids = mx.array(prompt_ids(64, seed=3))
    full = np.array(model(ids))

    # uneven chunks, then single tokens, exercise the cache's growth past its step
    cache = model.make_cache()
    cache.step = 16
    pieces = [np.array(model(ids[:, :7], cache)), np.array(model(ids[:, 7:30], cache))]
    pieces += [np.array(model(ids[:, i : i + 1], cache)) for i in range(30, 64)]
    cached = np.concatenate(pieces, axis=1)

    assert np.abs(cached - full).max() < 1e-4
    assert nmse(cached, full) < 1e-10


def test_batch_rows_match_single_rows(tiny_checkpoint):
    model = load_ours(tiny_checkpoint())
    ids = np.concatenate([prompt_ids(20, seed=5), prompt_ids(20, seed=6)])

    batched = np.array(model(mx.array(ids)))
    single = np.concatenate([np.array(model(mx.array(ids[i : i + 1]))) for i in range(2)])

    assert nmse(batched, single) < 1e-10
