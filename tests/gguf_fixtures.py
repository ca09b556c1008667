"""Tiny random Qwen2 GGUF files, written with gguf.GGUFWriter the way llama.cpp lays them out.

The vocabulary is a byte-level BPE trained with `tokenizers` on a few lines of text, followed by
Qwen's special tokens (CONTROL), two tool-call tags (USER_DEFINED) and, as in Qwen2.5's GGUF
files, padding rows (UNUSED) at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType, TokenType
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from qwen_edge.convert.gguf_tokenizer import QWEN2_SPLIT_REGEX

CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
USER_DEFINED_TOKENS = ("<tool_call>", "</tool_call>")
N_PADDING_ROWS = 3
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps.",
    "Hello world! Hello there, how are you doing today? I'm fine, thanks.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tcontinue\n",
    "你好，世界！这是一个测试。我们正在测试分词器。",
    "Numbers: 12345 67890 3.14159 2024-01-01",
    "    indented    with    many    spaces   \n\n\n",
]

# F16, BF16 and the legacy block formats Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0. gguf cannot quantize
# to the K-quants, so the real-model tests cover those.
DEFAULT_TENSOR_TYPES = {
    "token_embd.weight": GGMLQuantizationType.Q8_0,
    "output.weight": GGMLQuantizationType.Q5_0,
    "attn_q.weight": GGMLQuantizationType.Q4_0,
    "attn_k.weight": GGMLQuantizationType.Q5_0,
    "attn_v.weight": GGMLQuantizationType.Q8_0,
    "attn_output.weight": GGMLQuantizationType.Q4_1,
    "ffn_gate.weight": GGMLQuantizationType.Q5_1,
    "ffn_up.weight": GGMLQuantizationType.F16,
    "ffn_down.weight": GGMLQuantizationType.BF16,
}


@dataclass
class TinyModel:
    """The shape and options of a tiny GGUF, whose defaults give a Qwen2-like model."""

    architecture: str = "qwen2"
    hidden_size: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    intermediate_size: int = 128
    context_length: int = 256
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tied: bool = False
    rope_scaling: dict | None = None  # {"type": "yarn", "factor": 4.0, "original": 64}
    tensor_types: dict[str, GGMLQuantizationType] = field(default_factory=dict)
    drop_tensors: tuple[str, ...] = ()
    extra_tensors: tuple[str, ...] = ()
    drop_keys: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class TinyGGUF:
    """A written tiny GGUF file and the float32 value of each tensor as gguf dequantizes it."""

    path: Path
    model: TinyModel
    tokens: list[str]
    token_types: list[int]
    tensors: dict[str, np.ndarray]  # GGUF name -> dequantized float32, numpy shape


@cache
def tiny_vocab() -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """Return (tokens, token types, merges) in llama.cpp's layout for a gpt2-type vocabulary."""
    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)

    model = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [TokenType.NORMAL] * len(tokens)

    tokens += CONTROL_TOKENS
    types += [TokenType.CONTROL] * len(CONTROL_TOKENS)
    tokens += USER_DEFINED_TOKENS
    types += [TokenType.USER_DEFINED] * len(USER_DEFINED_TOKENS)
    first_pad = len(tokens)
    tokens += [f"[PAD{first_pad + i}]" for i in range(N_PADDING_ROWS)]
    types += [TokenType.UNUSED] * N_PADDING_ROWS
    return tuple(tokens), tuple(int(t) for t in types), tuple(merges)


def tensor_shapes(model: TinyModel, n_vocab: int) -> dict[str, tuple[int, ...]]:
    """Map each tensor name to its numpy shape."""
    head_dim = model.hidden_size // model.n_heads
    q, kv = model.n_heads * head_dim, model.n_kv_heads * head_dim
    hidden, inter = model.hidden_size, model.intermediate_size

    shapes = {"token_embd.weight": (n_vocab, hidden), "output_norm.weight": (hidden,)}
    if not model.tied:
        shapes["output.weight"] = (n_vocab, hidden)
    for layer in range(model.n_layers):
        block = {
            "attn_norm.weight": (hidden,),
            "attn_q.weight": (q, hidden),
            "attn_q.bias": (q,),
            "attn_k.weight": (kv, hidden),
            "attn_k.bias": (kv,),
            "attn_v.weight": (kv, hidden),
            "attn_v.bias": (kv,),
            "attn_output.weight": (hidden, q),
            "ffn_norm.weight": (hidden,),
            "ffn_gate.weight": (inter, hidden),
            "ffn_up.weight": (inter, hidden),
            "ffn_down.weight": (hidden, inter),
        }
        shapes.update({f"blk.{layer}.{name}": shape for name, shape in block.items()})
    for name in model.extra_tensors:
        shapes[name] = (hidden,)
    for name in model.drop_tensors:
        shapes.pop(name)
    return shapes


def write_tiny_gguf(path: Path, model: TinyModel | None = None) -> TinyGGUF:
    """Write a random tiny GGUF for `model` to `path`."""
    model = model or TinyModel()
    tokens, token_types, merges = tiny_vocab()
    rng = np.random.default_rng(model.seed)

    writer = gguf.GGUFWriter(path, model.architecture)
    _add_metadata(writer, model, tokens, token_types, merges)
    tensors = {}
    for name, shape in tensor_shapes(model, len(tokens)).items():
        tensors[name] = _add_tensor(writer, name, shape, _tensor_type(model, name), rng)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return TinyGGUF(path, model, list(tokens), list(token_types), tensors)


def _add_metadata(
    writer: gguf.GGUFWriter,
    model: TinyModel,
    tokens: tuple[str, ...],
    token_types: tuple[int, ...],
    merges: tuple[str, ...],
) -> None:
    writer.add_name("tiny-qwen2")
    writer.add_block_count(model.n_layers)
    writer.add_context_length(model.context_length)
    writer.add_embedding_length(model.hidden_size)
    writer.add_feed_forward_length(model.intermediate_size)
    writer.add_head_count(model.n_heads)
    writer.add_head_count_kv(model.n_kv_heads)
    writer.add_rope_freq_base(model.rope_theta)
    writer.add_layer_norm_rms_eps(model.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    if model.rope_scaling is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType(model.rope_scaling["type"]))
        writer.add_rope_scaling_factor(model.rope_scaling["factor"])
        if "original" in model.rope_scaling:
            writer.add_rope_scaling_orig_ctx_len(model.rope_scaling["original"])

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(list(tokens))
    writer.add_token_types(list(token_types))
    writer.add_token_merges(list(merges))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    # GGUFWriter keeps its pending key-values in a dict per shard. Removing one leaves a file
    # without that key, like one from an older or broken converter.
    for key in model.drop_keys:
        for shard in writer.kv_data:
            shard.pop(key.format(arch=model.architecture), None)


def _tensor_type(model: TinyModel, name: str) -> GGMLQuantizationType:
    short = name.split(".", 2)[-1] if name.startswith("blk.") else name
    types = {**DEFAULT_TENSOR_TYPES, **model.tensor_types}
    return types.get(name, types.get(short, GGMLQuantizationType.F32))


def _add_tensor(
    writer: gguf.GGUFWriter,
    name: str,
    shape: tuple[int, ...],
    ggml_type: GGMLQuantizationType,
    rng: np.random.Generator,
) -> np.ndarray:
    """Add a random tensor and return its value after the round trip through `ggml_type`."""
    if name.endswith("norm.weight"):
        values = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    else:
        values = rng.normal(0.0, 0.1, size=shape).astype(np.float32)

    if ggml_type == GGMLQuantizationType.F32:
        writer.add_tensor(name, values)
        return values
    if ggml_type == GGMLQuantizationType.F16:
        writer.add_tensor(name, values.astype(np.float16))
        return values.astype(np.float16).astype(np.float32)
    if ggml_type == GGMLQuantizationType.I8:
        # A type gguf can store but not dequantize.
        writer.add_tensor(name, (values * 100).astype(np.int8))
        return values
    data = gguf.quants.quantize(values, ggml_type)
    writer.add_tensor(name, data, raw_dtype=ggml_type)
    return gguf.quants.dequantize(data, ggml_type).reshape(shape)
