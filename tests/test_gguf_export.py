"""GGUF export: tensor type rules, metadata, tensors, rejected sources and atomic output.

These tests read the files back with the `gguf` package. test_llama_cpp.py loads them in
llama.cpp itself.
"""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, TokenType
from safetensors.numpy import load_file, save_file

from llama_helpers import (
    ENDOFTEXT,
    IM_END,
    QWEN_VOCAB_ROWS,
    read_gguf,
    small_vocab_model,
    tiny_model_with_tokenizer,
)
from qwen_edge.convert.gguf_export import (
    GGUF_TYPES,
    convert_to_gguf,
    tensor_type,
    use_more_bits,
)
from qwen_edge.convert.gguf_vocab import read_vocabulary
from qwen_edge.errors import QwenEdgeError

Q = GGMLQuantizationType
DEMO_MORE_BITS_LAYERS = {0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23}  # 24 layers
HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.1.attn_q.weight": "model.layers.1.self_attn.q_proj.weight",
    "blk.1.attn_q.bias": "model.layers.1.self_attn.q_proj.bias",
    "blk.0.attn_v.bias": "model.layers.0.self_attn.v_proj.bias",
    "blk.0.attn_output.weight": "model.layers.0.self_attn.o_proj.weight",
    "blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
    "blk.0.ffn_norm.weight": "model.layers.0.post_attention_layernorm.weight",
    "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
}


@pytest.fixture(scope="module")
def qwen_tiny_dir(tmp_path_factory, demo_model_dir) -> Path:
    """An untied random Qwen2 (hidden 256) with the Qwen tokenizer and its 151936 rows."""
    return tiny_model_with_tokenizer(
        tmp_path_factory.mktemp("qwen-tiny"),
        demo_model_dir,
        hidden_size=256,
        intermediate_size=512,
    )


@pytest.fixture(scope="module")
def qwen_tiny_f32(qwen_tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "qwen-tiny-f32.gguf"
    convert_to_gguf(str(qwen_tiny_dir), out, gguf_type="f32")
    yield read_gguf(out)
    out.unlink()  # 320 MB, in a directory that pytest keeps after the run


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """An untied random Qwen2 with K-quant-sized rows (256 and 512) and a 408-token vocabulary."""
    return small_vocab_model(
        tmp_path_factory.mktemp("small"), hidden_size=256, intermediate_size=512
    )


# Tensor types.


def test_more_bits_layers_of_24():
    assert {layer for layer in range(24) if use_more_bits(layer, 24)} == DEMO_MORE_BITS_LAYERS


def test_more_bits_layers_of_36():
    expected = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31, 32, 33, 34, 35}
    assert {layer for layer in range(36) if use_more_bits(layer, 36)} == expected


@pytest.mark.parametrize(
    ("name", "shape", "gguf_type", "tied", "expected"),
    [
        # Norms and biases stay F32 at every type.
        ("blk.0.attn_norm.weight", (896,), "q4_k_m", False, Q.F32),
        ("blk.0.attn_q.bias", (896,), "f16", False, Q.F32),
        # Float types apply to every matrix.
        ("token_embd.weight", (151936, 896), "bf16", False, Q.BF16),
        ("blk.3.ffn_down.weight", (896, 4864), "f16", False, Q.F16),
        # The output head: Q6_K when it fits 256-wide blocks, otherwise Q8_0.
        ("output.weight", (151936, 1024), "q4_k_m", False, Q.Q6_K),
        ("output.weight", (151936, 896), "q4_k_m", False, Q.Q8_0),
        ("output.weight", (151936, 1024), "q4_0", False, Q.Q6_K),
        ("output.weight", (151936, 1024), "q8_0", False, Q.Q8_0),
        # A tied embedding is the output head. An untied one keeps the default type.
        ("token_embd.weight", (151936, 1024), "q5_k_m", True, Q.Q6_K),
        ("token_embd.weight", (151936, 1024), "q5_k_m", False, Q.Q5_K),
        ("token_embd.weight", (151936, 896), "q4_k_m", False, Q.Q5_0),
        # attn_v and ffn_down get Q6_K on the more-bits layers of q4_k_m and q5_k_m.
        ("blk.2.attn_v.weight", (128, 1024), "q4_k_m", False, Q.Q6_K),
        ("blk.3.attn_v.weight", (128, 1024), "q4_k_m", False, Q.Q4_K),
        ("blk.5.ffn_down.weight", (896, 4864), "q5_k_m", False, Q.Q6_K),
        ("blk.6.ffn_down.weight", (896, 4864), "q5_k_m", False, Q.Q5_K),
        ("blk.5.ffn_down.weight", (896, 4864), "q4_0", False, Q.Q4_0),
        # Rows that are not a multiple of 256 fall back as in llama.cpp.
        ("blk.3.attn_q.weight", (896, 896), "q4_k_m", False, Q.Q5_0),
        ("blk.3.attn_q.weight", (896, 896), "q5_k_m", False, Q.Q5_1),
        ("blk.3.attn_q.weight", (896, 896), "q6_k", False, Q.Q8_0),
        ("blk.2.attn_v.weight", (128, 896), "q4_k_m", False, Q.Q8_0),
        # Rows that do not even fit 32-wide blocks stay F16.
        ("blk.3.attn_q.weight", (100, 100), "q4_k_m", False, Q.F16),
        ("blk.3.attn_q.weight", (100, 100), "q8_0", False, Q.F16),
    ],
)
def test_tensor_type(name, shape, gguf_type, tied, expected):
    assert tensor_type(name, shape, gguf_type, 24, tied) == expected


def test_unknown_type_rejected(small_dir, tmp_path):
    with pytest.raises(QwenEdgeError, match="q3_k_s.*Choose one of"):
        convert_to_gguf(str(small_dir), tmp_path / "out.gguf", gguf_type="q3_k_s")


# Metadata.


def test_hyperparameters(qwen_tiny_f32):
    values = qwen_tiny_f32.metadata
    assert values["general.architecture"] == "qwen2"
    assert values["qwen2.block_count"] == 2
    assert values["qwen2.context_length"] == 32768
    assert values["qwen2.embedding_length"] == 256
    assert values["qwen2.feed_forward_length"] == 512
    assert values["qwen2.attention.head_count"] == 4
    assert values["qwen2.attention.head_count_kv"] == 2
    assert values["qwen2.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert values["qwen2.rope.freq_base"] == 1_000_000.0
    assert not any(key.startswith("qwen2.rope.scaling") for key in values)


def test_general_keys(qwen_tiny_f32, qwen_tiny_dir):
    values = qwen_tiny_f32.metadata
    assert values["general.name"] == qwen_tiny_dir.name
    assert values["general.file_type"] == 0  # ALL_F32
    assert values["general.quantization_version"] == 2
    assert values["general.size_label"] == "79M"  # 2 x 151936 x 256 + 2 small layers


def test_tokenizer_keys(qwen_tiny_f32, demo_model_dir):
    values = qwen_tiny_f32.metadata
    tokenizer_json = json.loads((demo_model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    merges = [" ".join(merge) for merge in tokenizer_json["model"]["merges"]]
    tokenizer_config = json.loads((demo_model_dir / "tokenizer_config.json").read_text())

    assert values["tokenizer.ggml.model"] == "gpt2"
    assert values["tokenizer.ggml.pre"] == "qwen2"
    assert values["tokenizer.ggml.merges"] == merges
    assert values["tokenizer.ggml.bos_token_id"] == ENDOFTEXT
    assert values["tokenizer.ggml.eos_token_id"] == IM_END
    assert values["tokenizer.ggml.padding_token_id"] == ENDOFTEXT
    assert values["tokenizer.ggml.add_bos_token"] is False
    assert values["tokenizer.chat_template"] == tokenizer_config["chat_template"]


def test_tokens_padded_to_embedding_rows(qwen_tiny_f32):
    tokens = qwen_tiny_f32.metadata["tokenizer.ggml.tokens"]
    types = qwen_tiny_f32.metadata["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == QWEN_VOCAB_ROWS
    assert tokens[:3] == ["!", '"', "#"]
    assert tokens[IM_END] == "<|im_end|>"
    assert tokens[151665] == "[PAD151665]"
    assert tokens[-1] == f"[PAD{QWEN_VOCAB_ROWS - 1}]"


def test_token_types(qwen_tiny_f32):
    values = qwen_tiny_f32.metadata
    types = dict(
        zip(values["tokenizer.ggml.tokens"], values["tokenizer.ggml.token_type"], strict=True)
    )
    assert types["Ġthe"] == TokenType.NORMAL
    assert types["<|endoftext|>"] == TokenType.CONTROL
    assert types["<|im_start|>"] == TokenType.CONTROL
    assert types["<|fim_prefix|>"] == TokenType.CONTROL
    assert types["<tool_call>"] == TokenType.USER_DEFINED
    assert types["[PAD151665]"] == TokenType.UNUSED
    counts = np.bincount(values["tokenizer.ggml.token_type"], minlength=6)
    assert counts[TokenType.NORMAL] == 151643
    assert counts[TokenType.UNUSED] == QWEN_VOCAB_ROWS - 151665


@pytest.fixture
def tokenizer_dir(tmp_path, demo_model_dir) -> Path:
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(demo_model_dir / name, tmp_path / name)
    return tmp_path


def edit_json(path: Path, edit) -> None:
    value = json.loads(path.read_text(encoding="utf-8"))
    edit(value)
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")


def test_vocabulary_control_looking_tokens(tokenizer_dir):
    # Qwen2.5's tokenizer.json on the hub calls <|fim_prefix|> and <tool_call> not special.
    def mark_not_special(tokenizer):
        for token in tokenizer["added_tokens"]:
            if token["content"] in ("<|fim_prefix|>", "<tool_call>"):
                token["special"] = False

    edit_json(tokenizer_dir / "tokenizer.json", mark_not_special)
    vocab = read_vocabulary(tokenizer_dir, QWEN_VOCAB_ROWS)
    assert vocab.token_types[151659] == TokenType.CONTROL  # <|fim_prefix|>
    assert vocab.token_types[151657] == TokenType.USER_DEFINED  # <tool_call>


def test_vocabulary_string_merges(tokenizer_dir):
    def join_merges(tokenizer):
        tokenizer["model"]["merges"] = [" ".join(pair) for pair in tokenizer["model"]["merges"]]

    edit_json(tokenizer_dir / "tokenizer.json", join_merges)
    assert read_vocabulary(tokenizer_dir, QWEN_VOCAB_ROWS).merges[:2] == ["Ġ Ġ", "ĠĠ ĠĠ"]


def test_vocabulary_template_file(tokenizer_dir):
    edit_json(tokenizer_dir / "tokenizer_config.json", lambda config: config.pop("chat_template"))
    (tokenizer_dir / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
    assert read_vocabulary(tokenizer_dir, QWEN_VOCAB_ROWS).chat_template == "{{ messages }}"


def test_vocabulary_larger_than_embedding(tokenizer_dir):
    with pytest.raises(QwenEdgeError, match="token id 151664, but the embedding has only 1000"):
        read_vocabulary(tokenizer_dir, 1000)


def test_yarn_keys_with_rope_scaling(tmp_path):
    source = small_vocab_model(
        tmp_path / "yarn",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 32768,
        },
    )
    out = convert_to_gguf(str(source), tmp_path / "yarn.gguf", gguf_type="f16").path
    values = read_gguf(out).metadata
    assert values["qwen2.rope.scaling.type"] == "yarn"
    assert values["qwen2.rope.scaling.factor"] == 4.0
    assert values["qwen2.rope.scaling.original_context_length"] == 32768


# Tensors.


def test_f32_tensors_equal_source(qwen_tiny_f32, qwen_tiny_dir):
    source = load_file(qwen_tiny_dir / "model.safetensors")
    assert len(qwen_tiny_f32.tensors) == 3 + 2 * 12
    for gguf_name, hf_name in HF_NAMES.items():
        assert qwen_tiny_f32.tensors[gguf_name].ggml_type == Q.F32, gguf_name
        np.testing.assert_array_equal(qwen_tiny_f32.values(gguf_name), source[hf_name])


def test_sharded_checkpoint(small_dir, tmp_path):
    sharded = small_vocab_model(
        tmp_path / "sharded", hidden_size=256, intermediate_size=512, max_shard_size="1MB"
    )
    assert len(list(sharded.glob("*.safetensors"))) > 1
    whole = convert_to_gguf(str(small_dir), tmp_path / "whole.gguf", gguf_type="q8_0").path
    split = convert_to_gguf(str(sharded), tmp_path / "split.gguf", gguf_type="q8_0").path
    whole_file, split_file = read_gguf(whole), read_gguf(split)
    assert whole_file.tensors.keys() == split_file.tensors.keys()
    for name in whole_file.tensors:
        assert (whole_file.raw(name) == split_file.raw(name)).all(), name


def test_tied_model_has_no_output(tmp_path):
    source = small_vocab_model(tmp_path / "tied", hidden_size=256, tie_word_embeddings=True)
    out = convert_to_gguf(str(source), tmp_path / "tied.gguf", gguf_type="q4_k_m").path
    tensors = read_gguf(out).tensors
    assert "output.weight" not in tensors
    assert tensors["token_embd.weight"].ggml_type == Q.Q6_K


@pytest.mark.parametrize(
    ("gguf_type", "max_nmse"),
    [
        ("f16", 1e-6),
        ("bf16", 1e-4),
        ("q8_0", 1e-4),
        ("q6_k", 1e-3),
        ("q5_k_m", 2e-3),
        ("q5_1", 3e-3),
        ("q5_0", 3e-3),
        ("q4_k_m", 8e-3),
        ("q4_1", 1e-2),
        ("q4_0", 1e-2),
    ],
)
def test_quantized_tensors_close_to_source(gguf_type, max_nmse, small_dir, tmp_path):
    out = convert_to_gguf(str(small_dir), tmp_path / "out.gguf", gguf_type=gguf_type).path
    source = load_file(small_dir / "model.safetensors")
    gguf_file = read_gguf(out)
    for gguf_name, hf_name in HF_NAMES.items():
        tensor = gguf_file.tensors[gguf_name]
        expected_type = tensor_type(gguf_name, source[hf_name].shape, gguf_type, 2, False)
        assert tensor.ggml_type == expected_type, gguf_name
        restored = gguf_file.values(gguf_name)
        nmse = ((restored - source[hf_name]) ** 2).mean() / (source[hf_name] ** 2).mean()
        assert nmse < max_nmse, f"{gguf_name} ({tensor.ggml_type.name}): NMSE {nmse:.2e}"


def test_fallback_types_in_file(tmp_path):
    # Rows of 320 values fit no K-quant block, so Q4_K falls back to Q5_0 and Q6_K to Q8_0.
    # The rows of 512 values of ffn_down keep the K-quants.
    source = small_vocab_model(tmp_path / "odd", hidden_size=320, intermediate_size=512)
    out = convert_to_gguf(str(source), tmp_path / "odd.gguf", gguf_type="q4_k_m").path
    types = {name: tensor.ggml_type for name, tensor in read_gguf(out).tensors.items()}
    assert types["blk.0.attn_q.weight"] == Q.Q5_0
    assert types["blk.0.attn_v.weight"] == Q.Q5_0
    assert types["blk.1.attn_v.weight"] == Q.Q8_0
    assert types["blk.0.ffn_down.weight"] == Q.Q4_K
    assert types["blk.1.ffn_down.weight"] == Q.Q6_K
    assert types["output.weight"] == Q.Q8_0
    assert types["token_embd.weight"] == Q.Q5_0


def test_summary(small_dir, tmp_path):
    summary = convert_to_gguf(str(small_dir), tmp_path / "s.gguf", gguf_type="q4_k_m")
    groups = {group.name: group for group in summary.groups}
    text = summary.format()
    assert summary.path == tmp_path / "s.gguf"
    assert summary.file_size == (tmp_path / "s.gguf").stat().st_size
    # Of 2 layers, only the last is in llama.cpp's last eighth.
    assert groups["blk.*.ffn_down.weight"].types == {"Q4_K": 1, "Q6_K": 1}
    assert groups["blk.*.attn_q.weight"].types == {"Q4_K": 2}
    assert groups["output.weight"].types == {"Q6_K": 1}
    assert 4.5 < summary.bits_per_weight < 6.6
    assert "bits per weight" in text
    assert "blk.*.ffn_down.weight" in text
    assert "Q4_K x1, Q6_K x1" not in text
    assert "Q4_K, Q6_K" in text
    assert str(summary) == str(tmp_path / "s.gguf")


# Rejected sources.


def test_quantized_gguf_rejected(demo_gguf, tmp_path):
    with pytest.raises(QwenEdgeError, match="already quantized.*--allow-requantize"):
        convert_to_gguf(str(demo_gguf), tmp_path / "out.gguf", gguf_type="q8_0")
    assert not (tmp_path / "out.gguf").exists()


def mlx_quantize(source: Path, out: Path) -> Path:
    """Quantize every matrix of a checkpoint to 4 bits the way mlx-lm stores it."""
    import mlx.core as mx

    shutil.copytree(source, out)
    (out / "model.safetensors").unlink()
    quantized = {}
    for name, array in mx.load(str(source / "model.safetensors")).items():
        if array.ndim == 2:
            weight, scales, biases = mx.quantize(array, group_size=64, bits=4)
            module = name.removesuffix(".weight")
            quantized.update(
                {f"{module}.weight": weight, f"{module}.scales": scales, f"{module}.biases": biases}
            )
        else:
            quantized[name] = array
    mx.save_safetensors(str(out / "model.safetensors"), quantized)
    config = json.loads((out / "config.json").read_text())
    config["quantization"] = {"group_size": 64, "bits": 4}
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_mlx_quantized_source(small_dir, tmp_path):
    import mlx.core as mx

    source = mlx_quantize(small_dir, tmp_path / "mlx")
    with pytest.raises(QwenEdgeError, match="already quantized.*--allow-requantize"):
        convert_to_gguf(str(source), tmp_path / "refused.gguf", gguf_type="q4_k_m")
    assert not (tmp_path / "refused.gguf").exists()

    out = convert_to_gguf(
        str(source), tmp_path / "mlx.gguf", gguf_type="f32", allow_requantize=True
    ).path
    parts = mx.load(str(source / "model.safetensors"))
    prefix = "model.layers.1.mlp.down_proj"
    expected = mx.dequantize(
        parts[f"{prefix}.weight"], parts[f"{prefix}.scales"], parts[f"{prefix}.biases"], 64, 4
    )
    restored = read_gguf(out).values("blk.1.ffn_down.weight")
    np.testing.assert_array_equal(restored, np.array(expected.astype(mx.float32)))


def test_missing_tokenizer_rejected(tmp_path, tiny_checkpoint):
    source = tiny_checkpoint(hidden_size=64, intermediate_size=128)
    with pytest.raises(QwenEdgeError, match="tokenizer.json not found"):
        convert_to_gguf(str(source), tmp_path / "out.gguf", gguf_type="f16")


def test_shape_mismatch_rejected(small_dir, tmp_path):
    source = tmp_path / "wrong"
    shutil.copytree(small_dir, source)
    config = json.loads((source / "config.json").read_text())
    config["intermediate_size"] = 768
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(QwenEdgeError, match=r"mlp\.\w+_proj\.weight has shape .* implies"):
        convert_to_gguf(str(source), tmp_path / "out.gguf", gguf_type="f16")


def test_extra_tensor_rejected(small_dir, tmp_path):
    source = tmp_path / "extra"
    shutil.copytree(small_dir, source)
    save_file({"visual.proj.weight": np.zeros((4, 4), np.float32)}, source / "extra.safetensors")
    with pytest.raises(QwenEdgeError, match="visual.proj.weight"):
        convert_to_gguf(str(source), tmp_path / "out.gguf", gguf_type="f16")


def test_non_finite_weight_rejected(small_dir, tmp_path):
    source = tmp_path / "nan"
    shutil.copytree(small_dir, source)
    weights = load_file(source / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"][3, 5] = np.nan
    save_file(weights, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(QwenEdgeError, match="up_proj.weight contains NaN"):
        convert_to_gguf(str(source), tmp_path / "out.gguf", gguf_type="q8_0")
    assert list(tmp_path.glob("*.gguf*")) == []


# Atomic output and memory.


def test_interrupt_leaves_no_output(small_dir, tmp_path):
    def interrupt(done: int, total: int, name: str) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_to_gguf(str(small_dir), tmp_path / "out.gguf", gguf_type="q8_0", progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(small_dir, tmp_path):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"old")
    with pytest.raises(QwenEdgeError, match="already exists.*--force"):
        convert_to_gguf(str(small_dir), out, gguf_type="q8_0")
    assert out.read_bytes() == b"old"

    convert_to_gguf(str(small_dir), out, gguf_type="q8_0", force=True)
    assert read_gguf(out).metadata["general.file_type"] == GGUF_TYPES["q8_0"].file_type


def test_progress_reports_every_tensor(small_dir, tmp_path):
    calls = []
    convert_to_gguf(
        str(small_dir),
        tmp_path / "out.gguf",
        gguf_type="f16",
        progress=lambda done, total, name: calls.append((done, total, name)),
    )
    assert [done for done, _, _ in calls] == list(range(1, 28))
    assert {total for _, total, _ in calls} == {27}
    assert calls[0][2] == "token_embd.weight"


def test_peak_memory_near_one_tensor(qwen_tiny_dir, tmp_path):
    # The untied model contains two 151936 x 256 float32 matrices (155 MB each) and small layers,
    # so keeping the model in memory would need over 310 MB. Streaming needs one encoded
    # matrix plus a chunk, and the vocabulary.
    largest = QWEN_VOCAB_ROWS * 256 * 4
    tracemalloc.start()
    try:
        convert_to_gguf(str(qwen_tiny_dir), tmp_path / "out.gguf", gguf_type="f32")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (tmp_path / "out.gguf").unlink()
    assert peak < 1.5 * largest, f"peak {peak / 2**20:.0f} MiB"
