"""GGUF -> Hugging Face import: tensors, config, tokenizer, bad input and atomic output.

Most tests use tiny random GGUF files from gguf_fixtures. The tests marked real_model import the
demo Qwen2.5-Coder-0.5B-Instruct Q4_K_M file and compare against transformers' own GGUF loader.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, TokenType
from safetensors import safe_open
from tokenizers import Tokenizer

from gguf_fixtures import (
    CHAT_TEMPLATE,
    CONTROL_TOKENS,
    N_PADDING_ROWS,
    USER_DEFINED_TOKENS,
    TinyModel,
    write_tiny_gguf,
)
from qwen_edge.convert import gguf_import
from qwen_edge.convert.atomic import atomic_output_dir, atomic_output_file
from qwen_edge.convert.gguf_import import check_gguf_header, import_gguf
from qwen_edge.convert.gguf_tokenizer import GGUFVocab, kept_token_count
from qwen_edge.errors import GGUFError, QwenEdgeError

# Strings for tokenizer parity: English, Chinese, code, digit and whitespace runs, contractions,
# emoji, CRLF and special-token text. All are NFC already, because transformers' GGUF tokenizer
# has no normalizer while Qwen's tokenizer.json (and ours) applies NFC.
PARITY_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "你好，世界！这是一个测试。",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tprint(i)",
    "1234567890 3.14159 1e-6 2024-01-01",
    "    leading and trailing spaces    ",
    "a\r\nb\n\n\nc",
    "I'm sure we'll see THEY'RE here, isn't it?",
    "Zebra 🦊 café naïve Ελληνικά",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    '<tool_call>{"name": "f"}</tool_call>',
    "<|endoftext|>text<|endoftext|>",
    "",
]


def hf_name(gguf_name: str) -> str:
    """The Hugging Face name of a tensor, written out independently of gguf_import's table."""
    top = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    if gguf_name in top:
        return top[gguf_name]
    _, layer, rest = gguf_name.split(".", 2)
    block = {
        "attn_norm.weight": "input_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight",
        "attn_q.bias": "self_attn.q_proj.bias",
        "attn_k.weight": "self_attn.k_proj.weight",
        "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.weight": "self_attn.v_proj.weight",
        "attn_v.bias": "self_attn.v_proj.bias",
        "attn_output.weight": "self_attn.o_proj.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight",
    }
    return f"model.layers.{layer}.{block[rest]}"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, framework="pt") as file:
            tensors.update({name: file.get_tensor(name) for name in file.keys()})  # noqa: SIM118
    return tensors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untied tiny GGUF, written once per module."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_import(tiny, tmp_path_factory):
    """The tiny GGUF imported in bf16, once per module."""
    return import_gguf(tiny.path, tmp_path_factory.mktemp("hf") / "model")


@pytest.fixture
def out_parent(tmp_path):
    """An empty folder to import into. Failure tests check that it stays empty."""
    parent = tmp_path / "models"
    parent.mkdir()
    return parent


# Tensors and config.


def test_import_writes_hf_files(tiny_import):
    names = sorted(path.name for path in tiny_import.iterdir())

    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_tensors_equal_dequantized_gguf(tiny, tiny_import):
    converted = read_safetensors(tiny_import)

    assert sorted(converted) == sorted(hf_name(name) for name in tiny.tensors)
    for gguf_name, expected in tiny.tensors.items():
        tensor = converted[hf_name(gguf_name)]
        assert tensor.dtype == torch.bfloat16, gguf_name
        assert tuple(tensor.shape) == expected.shape, gguf_name
        assert torch.equal(tensor, torch.from_numpy(expected).to(torch.bfloat16)), gguf_name


def test_tensor_types_cover_quant_formats(tiny):
    types = {tensor.tensor_type for tensor in GGUFReader(tiny.path).tensors}

    assert types >= {
        GGMLQuantizationType.F32,
        GGMLQuantizationType.F16,
        GGMLQuantizationType.BF16,
        GGMLQuantizationType.Q8_0,
        GGMLQuantizationType.Q5_0,
        GGMLQuantizationType.Q5_1,
        GGMLQuantizationType.Q4_0,
        GGMLQuantizationType.Q4_1,
    }


def test_config_values(tiny, tiny_import):
    config = read_json(tiny_import / "config.json")

    assert config["model_type"] == "qwen2"
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["hidden_size"] == 64
    assert config["num_hidden_layers"] == 2
    assert config["num_attention_heads"] == 4
    assert config["num_key_value_heads"] == 2
    assert config["intermediate_size"] == 128
    assert config["max_position_embeddings"] == 256
    assert config["vocab_size"] == len(tiny.tokens)
    assert config["rms_norm_eps"] == 1e-6
    assert config["rope_theta"] == 1_000_000.0
    assert config["tie_word_embeddings"] is False
    assert config["hidden_act"] == "silu"
    assert config["use_sliding_window"] is False
    assert config["bos_token_id"] == tiny.tokens.index("<|endoftext|>")
    assert config["eos_token_id"] == tiny.tokens.index("<|im_end|>")
    assert config["dtype"] == "bfloat16"
    assert "rope_scaling" not in config
    assert "head_dim" not in config


def test_tied_model_has_no_lm_head(out_parent):
    tiny = write_tiny_gguf(out_parent.parent / "tied.gguf", TinyModel(tied=True))

    out = import_gguf(tiny.path, out_parent / "tied")

    assert read_json(out / "config.json")["tie_word_embeddings"] is True
    assert "lm_head.weight" not in read_safetensors(out)


def test_untied_model_keeps_lm_head(tiny, tiny_import):
    lm_head = read_safetensors(tiny_import)["lm_head.weight"]
    expected = torch.from_numpy(tiny.tensors["output.weight"]).to(torch.bfloat16)

    assert torch.equal(lm_head, expected)


@pytest.mark.parametrize(
    ("scaling", "expected"),
    [
        (
            {"type": "yarn", "factor": 4.0, "original": 64},
            {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
        ),
        ({"type": "linear", "factor": 2.0}, {"type": "linear", "factor": 2.0}),
        ({"type": "none", "factor": 1.0}, None),
    ],
)
def test_rope_scaling_config(out_parent, scaling, expected):
    path = out_parent.parent / "scaled.gguf"
    tiny = write_tiny_gguf(path, TinyModel(rope_scaling=scaling, context_length=256))

    config = read_json(import_gguf(tiny.path, out_parent / "scaled") / "config.json")

    assert config.get("rope_scaling") == expected
    assert config["max_position_embeddings"] == 256


def test_missing_rope_theta_defaults_to_qwen(out_parent):
    model = TinyModel(drop_keys=("{arch}.rope.freq_base",))
    tiny = write_tiny_gguf(out_parent.parent / "no-theta.gguf", model)

    config = read_json(import_gguf(tiny.path, out_parent / "model") / "config.json")

    assert config["rope_theta"] == 1_000_000.0


def test_generation_config(tiny, tiny_import):
    config = read_json(tiny_import / "generation_config.json")

    assert config["eos_token_id"] == [
        tiny.tokens.index("<|im_end|>"),
        tiny.tokens.index("<|endoftext|>"),
    ]
    assert config["bos_token_id"] == tiny.tokens.index("<|endoftext|>")
    assert config["pad_token_id"] == tiny.tokens.index("<|endoftext|>")


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("float32", torch.float32), ("float16", torch.float16)]
)
def test_other_dtypes(tiny, out_parent, dtype, torch_dtype):
    out = import_gguf(tiny.path, out_parent / dtype, dtype=dtype)

    converted = read_safetensors(out)
    assert read_json(out / "config.json")["dtype"] == dtype
    for gguf_name, expected in tiny.tensors.items():
        tensor = converted[hf_name(gguf_name)]
        assert tensor.dtype == torch_dtype, gguf_name
        assert torch.equal(tensor, torch.from_numpy(expected).to(torch_dtype)), gguf_name


def test_unknown_dtype_rejected(tiny, out_parent):
    with pytest.raises(QwenEdgeError, match="int8"):
        import_gguf(tiny.path, out_parent / "model", dtype="int8")

    assert list(out_parent.iterdir()) == []


def test_sharded_output(tiny, tiny_import, out_parent):
    out = import_gguf(tiny.path, out_parent / "sharded", max_shard_bytes=40_000)

    index = read_json(out / "model.safetensors.index.json")
    shards = sorted(path.name for path in out.glob("*.safetensors"))
    assert len(shards) > 1
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"].values()) == set(shards)
    converted = read_safetensors(out)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in converted.values())
    unsharded = read_safetensors(tiny_import)
    assert sorted(index["weight_map"]) == sorted(unsharded)
    for name, tensor in unsharded.items():
        assert torch.equal(converted[name], tensor), name


def test_progress_reports_every_tensor(tiny, out_parent):
    calls = []

    import_gguf(tiny.path, out_parent / "model", progress=lambda *call: calls.append(call))

    total = len(tiny.tensors)
    assert [done for done, _, _ in calls] == list(range(1, total + 1))
    assert {count for _, count, _ in calls} == {total}
    assert sorted(name for _, _, name in calls) == sorted(hf_name(n) for n in tiny.tensors)


def test_loads_in_transformers(tiny_import):
    from transformers import Qwen2ForCausalLM

    model, info = Qwen2ForCausalLM.from_pretrained(tiny_import, output_loading_info=True)

    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size)
    assert torch.isfinite(logits).all()


# Tokenizer.


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_import):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_import)


@pytest.fixture(scope="module")
def tiny_tokenizer_json(tiny_import):
    """tokenizer.json as the `tokenizers` library loads it.

    transformers 5 rebuilds a Qwen2Tokenizer from the vocabulary and merges alone, so only this
    shows what the normalizer and pre-tokenizer in the file do.
    """
    return Tokenizer.from_file(str(tiny_import / "tokenizer.json"))


def test_tokenizer_drops_padding_rows(tiny, tiny_tokenizer):
    assert len(tiny_tokenizer) == len(tiny.tokens) - N_PADDING_ROWS
    assert "[PAD" not in "".join(tiny_tokenizer.get_vocab())


def test_special_tokens_encode_whole(tiny, tiny_tokenizer):
    for text in CONTROL_TOKENS + USER_DEFINED_TOKENS:
        ids = tiny_tokenizer.encode(text, add_special_tokens=False)
        assert ids == [tiny.tokens.index(text)], text


def test_special_flags(tiny_import):
    decoder = read_json(tiny_import / "tokenizer_config.json")["added_tokens_decoder"]
    flags = {entry["content"]: entry["special"] for entry in decoder.values()}

    assert flags == {
        **dict.fromkeys(CONTROL_TOKENS, True),
        **dict.fromkeys(USER_DEFINED_TOKENS, False),
    }


def test_decode_skips_control_tokens(tiny_tokenizer):
    ids = tiny_tokenizer.encode("<|im_start|>hi<tool_call><|im_end|>", add_special_tokens=False)

    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == "hi<tool_call>"
    assert tiny_tokenizer.decode(ids) == "<|im_start|>hi<tool_call><|im_end|>"


def test_tokenizer_config(tiny_import):
    config = read_json(tiny_import / "tokenizer_config.json")

    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert config["chat_template"] == CHAT_TEMPLATE
    assert config["eos_token"] == "<|im_end|>"
    assert config["pad_token"] == "<|endoftext|>"
    assert config["bos_token"] is None
    assert config["add_bos_token"] is False
    assert config["model_max_length"] == 256
    assert config["split_special_tokens"] is False


def test_chat_template_applies(tiny, tiny_tokenizer):
    messages = [{"role": "user", "content": "Hello world"}]

    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    encoded = tiny_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True
    )

    assert text == "<|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n"
    ids = encoded["input_ids"]
    assert ids == tiny_tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == tiny.tokens.index("<|im_start|>")


def test_tokenizer_applies_nfc(tiny_tokenizer, tiny_tokenizer_json):
    decomposed, composed = "cafe\u0301", "caf\u00e9"

    assert tiny_tokenizer.encode(decomposed) == tiny_tokenizer.encode(composed)
    assert tiny_tokenizer_json.encode(decomposed).ids == tiny_tokenizer_json.encode(composed).ids


def test_tokenizer_matches_transformers_gguf_loader(tiny, tiny_tokenizer):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tiny.path.parent, gguf_file=tiny.path.name)

    for text in PARITY_TEXTS:
        expected = reference.encode(text, add_special_tokens=False)
        assert tiny_tokenizer.encode(text, add_special_tokens=False) == expected, text


def test_tokenizer_json_matches_transformers_gguf_loader(tiny, tiny_tokenizer_json):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tiny.path.parent, gguf_file=tiny.path.name)

    n_kept = len(tiny.tokens) - N_PADDING_ROWS
    assert tiny_tokenizer_json.get_vocab_size(with_added_tokens=True) == n_kept
    for text in PARITY_TEXTS:
        expected = reference.encode(text, add_special_tokens=False)
        assert tiny_tokenizer_json.encode(text, add_special_tokens=False).ids == expected, text


def test_unused_token_inside_vocab_kept():
    vocab = GGUFVocab(
        tokens=["a", "[PAD1]", "b", "[PAD3]", "[PAD4]"],
        token_type=[1, TokenType.UNUSED, 1, TokenType.UNUSED, TokenType.UNUSED],
        merges=[],
        eos_token_id=2,
    )

    assert kept_token_count(vocab) == 3


# Bad input. Each case raises, names the problem and leaves the output folder empty.


def cut(source: Path, size: int, target: Path) -> Path:
    target.write_bytes(source.read_bytes()[:size])
    return target


def patch(source: Path, offset: int, data: bytes, target: Path) -> Path:
    raw = bytearray(source.read_bytes())
    raw[offset : offset + len(data)] = data
    target.write_bytes(bytes(raw))
    return target


def array_length_offset(path: Path, key: str) -> int:
    """Byte offset of the u64 item count of metadata array `key`."""
    field = GGUFReader(path).fields[key]
    return field.offset + 8 + len(key.encode()) + 4 + 4


def assert_import_fails(src: Path, out_parent: Path, *fragments: str) -> GGUFError:
    with pytest.raises(GGUFError) as caught:
        import_gguf(src, out_parent / "model")
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message
    assert list(out_parent.iterdir()) == []
    return caught.value


def truncation_points(path: Path) -> dict[str, int]:
    reader = GGUFReader(path)
    return {
        "empty": 0,
        "inside magic": 2,
        "inside counts": 10,
        "inside metadata": reader.fields["tokenizer.ggml.tokens"].offset + 100,
        "inside tensor infos": reader.tensors[3].field.offset + 5,
        "at data start": reader.data_offset + 8,
        "inside tensor data": path.stat().st_size - 100,
    }


@pytest.mark.parametrize(
    "point",
    [
        "empty",
        "inside magic",
        "inside counts",
        "inside metadata",
        "inside tensor infos",
        "at data start",
        "inside tensor data",
    ],
)
def test_truncated_file(tiny, out_parent, tmp_path, point):
    size = truncation_points(tiny.path)[point]
    src = cut(tiny.path, size, tmp_path / "cut.gguf")

    error = assert_import_fails(src, out_parent, str(src), "Download it again")

    assert "truncated" in str(error)


def test_tensor_data_past_end_names_tensor(tiny, out_parent, tmp_path):
    src = cut(tiny.path, tiny.path.stat().st_size - 100, tmp_path / "cut.gguf")
    last = GGUFReader(tiny.path).tensors[-1].name

    assert_import_fails(src, out_parent, last, "past the end of the file")


def test_missing_file(out_parent, tmp_path):
    assert_import_fails(tmp_path / "absent.gguf", out_parent, "absent.gguf", "not found")


def test_bad_magic(tiny, out_parent, tmp_path):
    src = patch(tiny.path, 0, b"GGUX", tmp_path / "magic.gguf")

    assert_import_fails(src, out_parent, "b'GGUX'", "not the GGUF magic")


@pytest.mark.parametrize("version", [1, 4])
def test_unsupported_version(tiny, out_parent, tmp_path, version):
    src = patch(tiny.path, 4, struct.pack("<I", version), tmp_path / "version.gguf")

    assert_import_fails(src, out_parent, f"GGUF version {version}")


def test_big_endian_rejected(tiny, out_parent, tmp_path):
    src = patch(tiny.path, 4, struct.pack(">I", 3), tmp_path / "big.gguf")

    assert_import_fails(src, out_parent, "big-endian")


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(8, "tensor count"), (16, "metadata key-value count")],
)
def test_huge_count(tiny, out_parent, tmp_path, offset, expected):
    src = patch(tiny.path, offset, struct.pack("<Q", 2**62), tmp_path / "count.gguf")

    assert_import_fails(src, out_parent, f"{2**62} {expected}", "corrupt")


def test_huge_string_length(tiny, out_parent, tmp_path):
    # The first metadata key's length sits right after the 24-byte fixed header.
    src = patch(tiny.path, 24, struct.pack("<Q", 2**40), tmp_path / "string.gguf")

    assert_import_fails(src, out_parent, f"length of {2**40} bytes", "corrupt")


def test_huge_array_length(tiny, out_parent, tmp_path):
    offset = array_length_offset(tiny.path, "tokenizer.ggml.tokens")
    src = patch(tiny.path, offset, struct.pack("<Q", 2**50), tmp_path / "array.gguf")

    assert_import_fails(src, out_parent, "items of tokenizer.ggml.tokens", "corrupt")


def test_other_architecture(out_parent, tmp_path):
    tiny = write_tiny_gguf(tmp_path / "llama.gguf", TinyModel(architecture="llama"))

    assert_import_fails(tiny.path, out_parent, "'llama'", "only 'qwen2'")


def test_missing_tensor(out_parent, tmp_path):
    model = TinyModel(drop_tensors=("blk.1.ffn_up.weight",))
    tiny = write_tiny_gguf(tmp_path / "missing.gguf", model)

    assert_import_fails(tiny.path, out_parent, "lacks tensors", "blk.1.ffn_up.weight")


def test_unknown_tensor(out_parent, tmp_path):
    model = TinyModel(extra_tensors=("blk.0.attn_sinks.weight",))
    tiny = write_tiny_gguf(tmp_path / "extra.gguf", model)

    assert_import_fails(tiny.path, out_parent, "blk.0.attn_sinks.weight", "not part of")


def test_tensor_type_without_dequantize(out_parent, tmp_path):
    model = TinyModel(tensor_types={"blk.0.attn_norm.weight": GGMLQuantizationType.I8})
    tiny = write_tiny_gguf(tmp_path / "int8.gguf", model)

    assert_import_fails(tiny.path, out_parent, "blk.0.attn_norm.weight", "I8", "dequantize")


def test_unknown_tensor_type_id(tiny, out_parent, tmp_path):
    tensor = GGUFReader(tiny.path).tensors[0]
    name_bytes = len(tensor.name.encode())
    type_offset = tensor.field.offset + 8 + name_bytes + 4 + 8 * len(tensor.shape)
    src = patch(tiny.path, type_offset, struct.pack("<I", 999), tmp_path / "type.gguf")

    assert_import_fails(src, out_parent, tensor.name, "ggml type 999")


def test_missing_metadata_key(out_parent, tmp_path):
    model = TinyModel(drop_keys=("{arch}.block_count",))
    tiny = write_tiny_gguf(tmp_path / "nokey.gguf", model)

    assert_import_fails(tiny.path, out_parent, "qwen2.block_count")


def test_shape_disagrees_with_metadata(out_parent, tmp_path):
    # Without head_count_kv the metadata implies 4 kv heads, but the tensors have 2.
    model = TinyModel(drop_keys=("{arch}.attention.head_count_kv",))
    tiny = write_tiny_gguf(tmp_path / "shape.gguf", model)

    assert_import_fails(tiny.path, out_parent, "blk.0.attn_k.weight", "(32, 64)", "(64, 64)")


def test_other_tokenizer_model(tiny, out_parent, tmp_path):
    raw = tiny.path.read_bytes()
    offset = raw.index(b"tokenizer.ggml.model") + len("tokenizer.ggml.model") + 4 + 8
    src = patch(tiny.path, offset, b"bert", tmp_path / "bert.gguf")

    assert_import_fails(src, out_parent, "tokenizer.ggml.model", "'bert'")


def test_reader_error_wrapped(tiny, out_parent, monkeypatch):
    def broken_reader(path):
        raise IndexError("index 7 is out of bounds")

    monkeypatch.setattr(gguf_import, "GGUFReader", broken_reader)

    assert_import_fails(tiny.path, out_parent, "IndexError", "corrupt or truncated")


def test_header_check_accepts_good_file(tiny):
    header = check_gguf_header(tiny.path)

    assert header.version == 3
    assert header.metadata["general.architecture"] == "qwen2"
    assert [info.name for info in header.tensors] == list(tiny.tensors)
    assert header.data_offset % 32 == 0


# Interrupted and refused writes.


def test_existing_output_rejected(tiny, out_parent):
    out = out_parent / "model"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    with pytest.raises(QwenEdgeError, match="--force") as caught:
        import_gguf(tiny.path, out)

    assert str(out) in str(caught.value)
    assert sorted(p.name for p in out_parent.iterdir()) == ["model"]
    assert (out / "keep.txt").read_text() == "old"


def test_force_replaces_output(tiny, out_parent):
    out = out_parent / "model"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    import_gguf(tiny.path, out, force=True)

    assert not (out / "keep.txt").exists()
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in out_parent.iterdir()) == ["model"]


def test_interrupt_mid_write_leaves_nothing(tiny, out_parent):
    def interrupt(done, total, name):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_gguf(tiny.path, out_parent / "model", progress=interrupt)

    assert list(out_parent.iterdir()) == []


def test_failure_after_weights_leaves_nothing(tiny, out_parent, monkeypatch):
    def fail(vocab, out_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_import, "write_tokenizer_files", fail)

    with pytest.raises(OSError, match="No space left"):
        import_gguf(tiny.path, out_parent / "model")

    assert list(out_parent.iterdir()) == []


def test_failed_force_keeps_old_output(tiny, out_parent, tmp_path):
    out = out_parent / "model"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    src = cut(tiny.path, 100, tmp_path / "cut.gguf")

    with pytest.raises(GGUFError):
        import_gguf(src, out, force=True)

    assert (out / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in out_parent.iterdir()) == ["model"]


def test_atomic_dir_publishes_on_success(tmp_path):
    out = tmp_path / "result"

    with atomic_output_dir(out) as partial:
        assert partial.parent == tmp_path
        assert partial.name.startswith(".result.partial-")
        (partial / "a.txt").write_text("a")
        assert not out.exists()

    assert (out / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_atomic_dir_permissions_follow_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "result"):
            pass
    finally:
        os.umask(umask)

    assert (tmp_path / "result").stat().st_mode & 0o777 == 0o755


def test_atomic_dir_force_keeps_old_until_done(tmp_path):
    out = tmp_path / "result"
    out.mkdir()
    (out / "old.txt").write_text("old")

    with atomic_output_dir(out, force=True) as partial:
        assert (out / "old.txt").exists()
        (partial / "new.txt").write_text("new")

    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_atomic_dir_rejects_existing_before_work(tmp_path):
    out = tmp_path / "result"
    out.mkdir()
    entered = False

    with pytest.raises(QwenEdgeError, match="already exists"), atomic_output_dir(out):
        entered = True

    assert not entered
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_atomic_file_publishes_and_cleans_up(tmp_path):
    out = tmp_path / "file.bin"

    with atomic_output_file(out) as partial:
        partial.write_bytes(b"data")
    with pytest.raises(RuntimeError), atomic_output_file(out, force=True) as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("stop")

    assert out.read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


# The real demo model: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M.


@pytest.fixture(scope="module")
def demo_import(demo_model_dir):
    """The demo GGUF imported in bf16: `make demo-model` wrote it into the store with
    import_gguf, so it is not imported a second time here."""
    return demo_model_dir


@pytest.fixture(scope="module")
def demo_import_tokenizer(demo_import):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_import)


@pytest.mark.real_model
def test_demo_config(demo_import):
    config = read_json(demo_import / "config.json")

    assert config["hidden_size"] == 896
    assert config["num_hidden_layers"] == 24
    assert config["num_attention_heads"] == 14
    assert config["num_key_value_heads"] == 2
    assert config["intermediate_size"] == 4864
    assert config["vocab_size"] == 151936
    assert config["max_position_embeddings"] == 32768
    assert config["rope_theta"] == 1_000_000.0
    assert config["rms_norm_eps"] == 1e-6
    assert config["tie_word_embeddings"] is False
    assert config["eos_token_id"] == 151645


@pytest.mark.real_model
def test_demo_tokenizer(demo_import_tokenizer):
    assert len(demo_import_tokenizer) == 151665
    assert demo_import_tokenizer.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert demo_import_tokenizer.convert_tokens_to_ids("<|im_start|>") == 151644
    assert demo_import_tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645
    assert demo_import_tokenizer.eos_token == "<|im_end|>"
    assert demo_import_tokenizer.pad_token == "<|endoftext|>"


@pytest.mark.real_model
def test_demo_generation_config(demo_import):
    config = read_json(demo_import / "generation_config.json")

    assert config["eos_token_id"] == [151645, 151643]
    assert config["pad_token_id"] == 151643


@pytest.mark.real_model
def test_demo_tensors_match_transformers_gguf_loader(demo_gguf, demo_import):
    # Qwen2ForCausalLM.from_pretrained(gguf_file=...) needs accelerate, which qwen-edge does not
    # install. load_gguf_checkpoint is the function it calls to read the tensors.
    from transformers import Qwen2ForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    model = Qwen2ForCausalLM.from_pretrained(demo_import)
    ours = model.state_dict()
    reference = load_gguf_checkpoint(
        str(demo_gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.bfloat16
    )["tensors"]

    assert sorted(ours) == sorted(reference)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, reference[name]), name


@pytest.mark.real_model
def test_demo_tokenizer_matches_transformers_gguf_loader(
    demo_gguf, demo_import, demo_import_tokenizer
):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(demo_gguf.parent, gguf_file=demo_gguf.name)

    tokenizer_json = Tokenizer.from_file(str(demo_import / "tokenizer.json"))

    for text in PARITY_TEXTS:
        expected = reference.encode(text, add_special_tokens=False)
        assert demo_import_tokenizer.encode(text, add_special_tokens=False) == expected, text
        assert tokenizer_json.encode(text, add_special_tokens=False).ids == expected, text


@pytest.mark.real_model
def test_demo_greedy_answer(demo_import, demo_import_tokenizer):
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(demo_import).eval()
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    prompt = demo_import_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )

    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=4, do_sample=False)

    answer = demo_import_tokenizer.decode(output[0, prompt["input_ids"].shape[1] :])
    assert answer.startswith("Paris"), answer
