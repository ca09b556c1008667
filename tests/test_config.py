"""ModelConfig from config.json: every Qwen2.5 size, both RoPE spellings, bad input."""

from __future__ import annotations

import json

import pytest

from qwen_edge.config import ModelConfig
from qwen_edge.errors import ConfigError
from qwen_edge.rope import inverse_frequencies

# hidden, layers, heads, kv heads, head_dim, intermediate, vocab rows, tied (published values)
QWEN25_SIZES = {
    "0.5B": (896, 24, 14, 2, 64, 4864, 151936, True),
    "1.5B": (1536, 28, 12, 2, 128, 8960, 151936, True),
    "3B": (2048, 36, 16, 2, 128, 11008, 151936, True),
    "7B": (3584, 28, 28, 4, 128, 18944, 152064, False),
    "14B": (5120, 48, 40, 8, 128, 13824, 152064, False),
    "32B": (5120, 64, 40, 8, 128, 27648, 152064, False),
    "72B": (8192, 80, 64, 8, 128, 29568, 152064, False),
}


def qwen25_config(size: str, **extra: object) -> dict:
    hidden, layers, heads, kv_heads, _, intermediate, vocab, tied = QWEN25_SIZES[size]
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06,
        "max_position_embeddings": 32768,
        "eos_token_id": 151645,
        "bos_token_id": 151643,
        "sliding_window": 131072,
        "use_sliding_window": False,
        "torch_dtype": "bfloat16",
        **extra,
    }


@pytest.mark.parametrize("size", QWEN25_SIZES)
def test_every_qwen25_size(size):
    hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, tied = QWEN25_SIZES[size]

    config = ModelConfig.from_dict(qwen25_config(size))

    assert config.hidden_size == hidden
    assert config.n_layers == layers
    assert config.n_heads == heads
    assert config.n_kv_heads == kv_heads
    assert config.head_dim == head_dim
    assert config.intermediate_size == intermediate
    assert config.vocab_size == vocab
    assert config.tie_word_embeddings is tied
    assert config.rope_theta == 1e6
    assert config.eos_token_ids == (151645,)
    assert config.rope_scaling is None


def test_unknown_keys_are_ignored():
    config = ModelConfig.from_dict(qwen25_config("0.5B", some_future_key={"a": 1}, foo=3))

    assert config.hidden_size == 896


def test_other_model_type_is_rejected():
    with pytest.raises(ConfigError, match="'llama'"):
        ModelConfig.from_dict(qwen25_config("0.5B", model_type="llama"))


def test_missing_keys_are_named():
    raw = qwen25_config("0.5B")
    del raw["hidden_size"], raw["vocab_size"]

    with pytest.raises(ConfigError, match="hidden_size, vocab_size"):
        ModelConfig.from_dict(raw)


def test_inconsistent_heads_are_rejected():
    with pytest.raises(ConfigError, match="num_key_value_heads 3"):
        ModelConfig.from_dict(qwen25_config("0.5B", num_key_value_heads=3))


YARN_OLD = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
YARN_NEW_SCALING = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
YARN_NEW_PARAMETERS = {
    "rope_type": "yarn",
    "rope_theta": 1000000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 32768,
}


@pytest.mark.parametrize(
    "extra",
    [
        {"rope_scaling": YARN_OLD},
        {"rope_scaling": YARN_NEW_SCALING},
        {"rope_parameters": YARN_NEW_PARAMETERS, "rope_theta": None},
    ],
    ids=["rope_scaling.type", "rope_scaling.rope_type", "rope_parameters"],
)
def test_yarn_in_every_spelling(extra):
    config = ModelConfig.from_dict(qwen25_config("7B", **extra))

    assert config.rope_scaling is not None
    assert config.rope_scaling.rope_type == "yarn"
    assert config.rope_scaling.factor == 4.0
    assert config.rope_scaling.original_max_position_embeddings == 32768
    assert config.rope_theta == 1e6


def test_linear_scaling_divides_frequencies():
    config = ModelConfig.from_dict(
        qwen25_config("0.5B", rope_scaling={"type": "linear", "factor": 2.0})
    )
    plain, _ = inverse_frequencies(64, 1e6, None)
    scaled, attention_factor = inverse_frequencies(64, 1e6, config.rope_scaling)

    assert attention_factor == 1.0
    assert abs(float((plain / 2 - scaled).abs().max())) < 1e-12


def test_yarn_frequencies_match_transformers():
    import torch
    from transformers import Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    raw = qwen25_config("7B", rope_scaling=dict(YARN_OLD))
    reference = Qwen2Config(**{k: v for k, v in raw.items() if k != "model_type"})
    ref_inv_freq, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](reference, torch.device("cpu"))

    config = ModelConfig.from_dict(raw)
    inv_freq, attention_factor = inverse_frequencies(
        config.head_dim, config.rope_theta, config.rope_scaling
    )

    assert attention_factor == pytest.approx(ref_factor, rel=1e-7)
    for ours, theirs in zip(inv_freq.tolist(), ref_inv_freq.tolist(), strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5)


def test_unsupported_rope_type_is_named():
    with pytest.raises(ConfigError, match="'dynamic'"):
        ModelConfig.from_dict(qwen25_config("0.5B", rope_scaling={"type": "dynamic", "factor": 2}))


def test_missing_rope_theta_uses_transformers_default():
    raw = qwen25_config("0.5B")
    del raw["rope_theta"]

    assert ModelConfig.from_dict(raw).rope_theta == 10000.0


def test_from_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config.json not found"):
        ModelConfig.from_file(tmp_path)

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_file(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        ModelConfig.from_file(tmp_path)


def test_quantization_block_with_overrides():
    raw = qwen25_config(
        "0.5B",
        quantization={
            "group_size": 64,
            "bits": 4,
            "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8},
            "model.layers.1.mlp.down_proj": False,
        },
    )

    quantization = ModelConfig.from_dict(raw).quantization

    assert quantization is not None
    assert quantization.for_module("model.layers.5.self_attn.q_proj") == (64, 4)
    assert quantization.for_module("model.layers.0.mlp.down_proj") == (32, 8)
    assert quantization.for_module("model.layers.1.mlp.down_proj") is None
