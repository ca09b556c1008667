"""Our GGUF files in llama.cpp itself (llama-cpp-python): loading, generation, tokenization,
logits against transformers, and our K-quant blocks against llama_model_quantize.

The demo-model tests share their exports through module-scoped fixtures, because exporting
the 0.5B model takes 7 to 35 s per type on a 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, LlamaFileType

from conftest import nmse, reference_logits
from llama_helpers import (
    ENDOFTEXT,
    IM_END,
    greedy_tokens,
    is_end_of_generation,
    llama_logits,
    load_llama,
    model_quantize,
    read_gguf,
    small_vocab_model,
)
from qwen_edge.convert.compare import default_text
from qwen_edge.convert.gguf_export import GGUF_TYPES, convert_to_gguf

QUANTIZED_TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m", "q5_k_m", "q6_k"]
# Tokenizer parity: English, Chinese, code, digit runs, whitespace runs and special tokens.
TOKENIZER_TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine, won't they?",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { sum += a[i]; }",
    "1234567890 00042 3.14159265 1e-6 2024-12-31 99999999999",
    "a  b   c    d\t\te\n\n\nf \n \n g",
    "        indented by eight spaces",
    "trailing spaces     ",
    "line one\r\nline two\r\n",
    "emoji 🦊🚀 and accents: café naïve Ελληνικά",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "<|endoftext|><|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>",
    '<tool_call>{"name": "search", "arguments": {}}</tool_call>',
]
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
# A finished conversation: the next token of the document is <|endoftext|>.
FINISHED_DOCUMENT = (
    "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
)


# Tiny random models: every type, and bit-identity with llama.cpp's quantizer.


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    return small_vocab_model(
        tmp_path_factory.mktemp("small"), hidden_size=256, intermediate_size=512
    )


@pytest.mark.parametrize("gguf_type", list(GGUF_TYPES))
def test_small_model_generates(gguf_type, small_dir, tmp_path):
    out = convert_to_gguf(str(small_dir), tmp_path / "out.gguf", gguf_type=gguf_type).path
    llm = load_llama(out, logits_all=True)
    logits = llama_logits(llm, [5, 17, 42, 99, 7])
    tokens = greedy_tokens(llm, [5, 17, 42], 8)
    assert np.isfinite(logits).all()
    assert len(tokens) >= 1
    assert all(0 <= token < llm.n_vocab() for token in tokens)


def test_small_model_f32_logits_match_transformers(small_dir, tmp_path):
    ids = [3, 141, 59, 26, 53, 58, 97, 93, 238, 46, 26, 43, 38, 32, 79, 50]
    out = convert_to_gguf(str(small_dir), tmp_path / "f32.gguf", gguf_type="f32").path
    ours = llama_logits(load_llama(out, logits_all=True), ids)
    reference = reference_logits(small_dir, np.array([ids]))[0]
    assert nmse(ours, reference) < 1e-5
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


def compare_with_llama_quantize(source: Path, tmp_path: Path, gguf_type: str) -> dict[str, float]:
    """Quantize our f32 file with llama_model_quantize and compare it with our own export of
    `gguf_type`, tensor by tensor. Returns the max dequantized difference of each tensor."""
    f32 = convert_to_gguf(str(source), tmp_path / "f32.gguf", gguf_type="f32").path
    ours = read_gguf(convert_to_gguf(str(source), tmp_path / "ours.gguf", gguf_type=gguf_type).path)
    model_quantize(f32, tmp_path / "llama.gguf", int(GGUF_TYPES[gguf_type].file_type))
    theirs = read_gguf(tmp_path / "llama.gguf")

    assert ours.tensors.keys() == theirs.tensors.keys()
    max_diffs = {}
    for name, tensor in ours.tensors.items():
        assert tensor.ggml_type == theirs.tensors[name].ggml_type, name
        max_diffs[name] = float(np.abs(ours.values(name) - theirs.values(name)).max())
        assert (ours.raw(name) == theirs.raw(name)).all(), (
            f"{name} ({tensor.ggml_type.name}) differs from llama.cpp's blocks by up to "
            f"{max_diffs[name]:.3g} after dequantization"
        )
    return max_diffs


@pytest.mark.parametrize("gguf_type", QUANTIZED_TYPES)
@pytest.mark.parametrize("hidden_size", [256, 320], ids=["k-quant rows", "fallback rows"])
def test_small_model_blocks_match_llama_quantize(gguf_type, hidden_size, tmp_path):
    source = small_vocab_model(
        tmp_path / "source", hidden_size=hidden_size, intermediate_size=512, num_hidden_layers=3
    )
    max_diffs = compare_with_llama_quantize(source, tmp_path, gguf_type)
    assert max(max_diffs.values()) == 0.0


# The demo model.


class DemoExports:
    """Exports of the demo model by type, made on first use and deleted on request."""

    def __init__(self, source: Path, directory: Path) -> None:
        self.source = source
        self.directory = directory
        self.paths: dict[str, Path] = {}

    def path(self, gguf_type: str) -> Path:
        if gguf_type not in self.paths:
            out = self.directory / f"demo-{gguf_type}.gguf"
            self.paths[gguf_type] = convert_to_gguf(str(self.source), out, gguf_type=gguf_type).path
        return self.paths[gguf_type]

    def discard(self, gguf_type: str) -> None:
        self.paths.pop(gguf_type).unlink()


# Exports that later tests read again; the others are deleted once checked.
KEPT_EXPORTS = {"f32", "f16", "q8_0", "q4_k_m"}


@pytest.fixture(scope="module")
def demo_exports(demo_model_dir, tmp_path_factory) -> Iterator[DemoExports]:
    exports = DemoExports(demo_model_dir, tmp_path_factory.mktemp("demo-gguf"))
    yield exports
    # pytest keeps the temporary directories of recent runs, and these files take 4.7 GB.
    for gguf_type in list(exports.paths):
        exports.discard(gguf_type)


@pytest.fixture(scope="module")
def hf_tokenizer(demo_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


@pytest.fixture(scope="module")
def compare_ids(hf_tokenizer) -> list[int]:
    # The default text of `qwen-edge compare`: English, Chinese and code.
    ids = hf_tokenizer.encode(default_text(), add_special_tokens=False)
    assert 480 <= len(ids) <= 560
    return ids


@pytest.fixture(scope="module")
def demo_reference(demo_model_dir, compare_ids) -> dict[str, np.ndarray]:
    """transformers' float32 logits of the first 32 compare tokens, and its argmax at every
    position of the compare text."""
    logits = reference_logits(demo_model_dir, np.array([compare_ids]))[0]
    return {"first_32": logits[:32].copy(), "argmax": logits.argmax(-1)}


@pytest.mark.real_model
@pytest.mark.parametrize("gguf_type", list(GGUF_TYPES))
def test_demo_every_type_generates(gguf_type, demo_exports, hf_tokenizer):
    path = demo_exports.path(gguf_type)
    metadata = read_gguf(path).metadata
    assert metadata["general.file_type"] == GGUF_TYPES[gguf_type].file_type

    llm = load_llama(path, n_ctx=256)
    ids = hf_tokenizer.encode(
        hf_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )
    reply = hf_tokenizer.decode(greedy_tokens(llm, ids, 8), skip_special_tokens=True)
    del llm
    if gguf_type not in KEPT_EXPORTS:
        demo_exports.discard(gguf_type)
    assert "Paris" in reply


@pytest.mark.real_model
def test_demo_tokenization_matches_transformers(demo_exports, hf_tokenizer):
    llm = load_llama(demo_exports.path("q8_0"), vocab_only=True)
    for text in TOKENIZER_TEXTS:
        expected = hf_tokenizer.encode(text, add_special_tokens=False)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, text


@pytest.mark.real_model
def test_demo_special_tokens(demo_exports):
    llm = load_llama(demo_exports.path("q8_0"), vocab_only=True)
    assert llm.token_eos() == IM_END
    assert llm.token_bos() == ENDOFTEXT
    assert is_end_of_generation(llm, IM_END)
    assert is_end_of_generation(llm, ENDOFTEXT)
    assert not is_end_of_generation(llm, 151644)  # <|im_start|>
    assert llm.detokenize([IM_END], special=True) == b"<|im_end|>"


@pytest.mark.real_model
@pytest.mark.parametrize("gguf_type", ["f32", "f16"])
def test_demo_logits_match_transformers(gguf_type, demo_exports, compare_ids, demo_reference):
    llm = load_llama(demo_exports.path(gguf_type), n_ctx=64, logits_all=True)
    ours = llama_logits(llm, compare_ids[:32])
    reference = demo_reference["first_32"]
    assert nmse(ours, reference) < 1e-3
    mismatches = np.flatnonzero(ours.argmax(-1) != reference.argmax(-1))
    assert mismatches.size == 0, f"argmax differs at positions {mismatches.tolist()}"


@pytest.mark.real_model
@pytest.mark.parametrize(("gguf_type", "min_agreement"), [("q8_0", 0.97), ("q4_k_m", 0.90)])
def test_demo_top1_agreement(gguf_type, min_agreement, demo_exports, compare_ids, demo_reference):
    llm = load_llama(demo_exports.path(gguf_type), n_ctx=len(compare_ids) + 8, logits_all=True)
    ours = llama_logits(llm, compare_ids).argmax(-1)
    agreement = float((ours == demo_reference["argmax"]).mean())
    assert agreement >= min_agreement


@pytest.mark.real_model
def test_demo_blocks_match_llama_quantize(demo_exports, tmp_path):
    llama_file = tmp_path / "llama-q4_k_m.gguf"
    model_quantize(demo_exports.path("f32"), llama_file, int(LlamaFileType.MOSTLY_Q4_K_M))
    ours = read_gguf(demo_exports.path("q4_k_m"))
    theirs = read_gguf(llama_file)

    assert ours.tensors.keys() == theirs.tensors.keys()
    types = {name: tensor.ggml_type for name, tensor in ours.tensors.items()}
    assert types == {name: tensor.ggml_type for name, tensor in theirs.tensors.items()}
    assert GGMLQuantizationType.Q4_K in types.values()
    assert GGMLQuantizationType.Q6_K in types.values()
    differing = [name for name in ours.tensors if (ours.raw(name) != theirs.raw(name)).any()]
    llama_file.unlink()
    assert differing == []


@pytest.mark.real_model
def test_demo_greedy_chat_matches_our_decoder(demo_exports, demo_model_dir):
    import qwen_edge
    from qwen_edge.generate import prompt_to_tokens

    model, tokenizer = qwen_edge.load(demo_model_dir, dtype="float32")
    messages = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    ours = [
        event.token
        for event in qwen_edge.stream_generate(model, tokenizer, messages, max_tokens=16)
    ]
    del model

    llm = load_llama(demo_exports.path("f32"), n_ctx=256)
    theirs = greedy_tokens(llm, prompt_to_tokens(tokenizer, messages), 16)
    assert theirs == ours


@pytest.mark.real_model
@pytest.mark.parametrize("gguf_type", ["q8_0", "q4_k_m"])
def test_demo_chat_stops_at_end_of_turn(gguf_type, demo_exports):
    # create_chat_completion formats the chat with the template stored in our GGUF file.
    llm = load_llama(demo_exports.path(gguf_type), n_ctx=256)
    reply = llm.create_chat_completion(CHAT, max_tokens=32, temperature=0.0)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "Paris" in choice["message"]["content"]
    assert "<|im_end|>" not in choice["message"]["content"]


@pytest.mark.real_model
@pytest.mark.parametrize("gguf_type", ["q8_0", "q4_k_m"])
def test_demo_raw_completion_stops_at_end_of_text(gguf_type, demo_exports):
    llm = load_llama(demo_exports.path(gguf_type), n_ctx=256)
    ids = llm.tokenize(FINISHED_DOCUMENT.encode(), add_bos=False, special=True)
    tokens = greedy_tokens(llm, ids, 16)
    completion = llm.create_completion(FINISHED_DOCUMENT, max_tokens=16, temperature=0.0)
    assert tokens[-1] == ENDOFTEXT
    assert completion["choices"][0]["finish_reason"] == "stop"
