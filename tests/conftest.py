"""Shared fixtures: tiny random Qwen2 checkpoints written by transformers, and the demo model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qwen_edge import store
from qwen_edge.convert.demo import GGUF_NAME

TINY_VOCAB = 320


def nmse(ours: np.ndarray, reference: np.ndarray) -> float:
    """Mean squared error normalised by the reference's variance."""
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return float(((ours - reference) ** 2).mean() / reference.var())


def write_tiny_checkpoint(
    directory: Path,
    *,
    hidden_size: int = 256,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    num_hidden_layers: int = 2,
    intermediate_size: int = 384,
    vocab_size: int = TINY_VOCAB,
    tie_word_embeddings: bool = False,
    max_shard_size: str | None = None,
    seed: int = 0,
    **config_options: object,
) -> Path:
    """Save a randomly initialised transformers Qwen2ForCausalLM (safetensors) to `directory`.

    initializer_range 0.1 (instead of 0.02) gives logits with enough spread that a wrong RoPE
    or attention scale shows up as a large NMSE.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        num_hidden_layers=num_hidden_layers,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        tie_word_embeddings=tie_word_embeddings,
        rope_theta=1_000_000.0,
        initializer_range=0.1,
        **config_options,
    )
    model = Qwen2ForCausalLM(config).eval()
    # Biases start at zero in transformers; random ones make the q/k/v bias path testable.
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    return directory


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Factory: tiny_checkpoint(**config) -> directory of a new random checkpoint."""
    counter = iter(range(1000))

    def make(**options: object) -> Path:
        return write_tiny_checkpoint(tmp_path / f"tiny{next(counter)}", **options)

    return make


def reference_logits(directory: Path, ids: np.ndarray) -> np.ndarray:
    """Logits of transformers' Qwen2ForCausalLM in float32 for `ids` [B, L]."""
    import torch
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64))).logits.float().numpy()


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The demo model in the local store; `make test` prepares it first."""
    path = store.find(store.DEMO_MODEL)
    if path is None:
        pytest.fail(
            f"the demo model is not in the store ({store.models_dir()}); run `make demo-model` "
            "(make test does this first)"
        )
    return path


@pytest.fixture(scope="session")
def demo_gguf() -> Path:
    """The verified demo GGUF that `make demo-model` assembled."""
    path = store.gguf_dir() / GGUF_NAME
    if not path.is_file():
        pytest.fail(f"{path} not found; run `make demo-model` (make test does this first)")
    return path


@pytest.fixture(scope="session")
def demo_tokenizer(demo_model_dir: Path):
    from qwen_edge.config import ModelConfig
    from qwen_edge.tokenizer import Tokenizer

    config = ModelConfig.from_file(demo_model_dir)
    return Tokenizer.from_pretrained(demo_model_dir, config.eos_token_ids)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
