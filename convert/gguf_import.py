"""Convert a llama.cpp GGUF file of a Qwen2 model into a Hugging Face model directory.

The output contains config.json, generation_config.json, model.safetensors (or numbered shards with
model.safetensors.index.json), tokenizer.json, tokenizer_config.json and special_tokens_map.json.
Every tensor is dequantized with the `gguf` package and stored in the requested float dtype, so
the result loads in transformers, mlx-lm and qwen-edge alike.

    import_gguf("qwen2.5-0.5b-instruct-q4_k_m.gguf", "models/qwen2.5-0.5b")
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, ReaderTensor
from gguf.quants import dequantize

from qwen_edge.convert.atomic import atomic_output_dir
from qwen_edge.convert.gguf_tokenizer import (
    GGUFVocab,
    check_vocab,
    end_of_generation_ids,
    write_tokenizer_files,
)
from qwen_edge.errors import GGUFError, QwenEdgeError

logger = logging.getLogger("qwen_edge.convert")

ARCHITECTURE = "qwen2"
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
# The largest safetensors shard written: 5 GB in powers of ten, as transformers counts "5GB".
MAX_SHARD_BYTES = 5 * 10**9
DEFAULT_ROPE_THETA = 1_000_000.0

Progress = Callable[[int, int, str], None]


def import_gguf(
    src: str | Path,
    out: str | Path,
    *,
    dtype: str = "bfloat16",
    force: bool = False,
    progress: Progress | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Convert the Qwen2 GGUF file `src` into a Hugging Face model directory `out`.

    `progress(done, total, tensor_name)` is called after each tensor is written. Nothing named
    `out` exists unless the whole conversion succeeds. Raises GGUFError for a file that is
    missing, corrupt, truncated or not a Qwen2 model, and QwenEdgeError when `out` exists
    without `force` or `dtype` is not one of DTYPES.
    """
    src, out = Path(src), Path(out)
    if dtype not in DTYPES:
        raise QwenEdgeError(f"dtype {dtype!r} is not supported. Choose one of {', '.join(DTYPES)}.")

    with atomic_output_dir(out, force=force) as partial:
        header = check_gguf_header(src)
        _check_architecture(header.metadata.get("general.architecture"), src)
        reader = _open_reader(src)
        metadata = GGUFMetadata(reader, src)

        tensors = {tensor.name: tensor for tensor in reader.tensors}
        config = build_config(metadata, tensors, dtype)
        vocab = read_vocab(metadata, config)
        _check_tensors(tensors, config, src)

        logger.info("converting %d tensors of %s to %s", len(tensors), src, dtype)
        _write_tensors(
            list(tensors.values()), src, partial, DTYPES[dtype], max_shard_bytes, progress
        )
        _write_json(partial / "config.json", config)
        _write_json(partial / "generation_config.json", build_generation_config(metadata, vocab))
        write_tokenizer_files(vocab, partial)

    logger.info("wrote %s", out)
    return out


# Header validation.
#
# GGUFReader trusts every length and count in the header, so a corrupt or cut-off file makes it
# loop over billions of entries or fail with an IndexError. This walk reads the same layout
# (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) and checks each length against the
# bytes left before GGUFReader parses the file.

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32

_SCALAR_LAYOUTS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SCALAR_SIZES = {
    value_type: struct.calcsize(layout) for value_type, layout in _SCALAR_LAYOUTS.items()
}
# The minimum size in bytes of each kind of entry. A string has at least its 8-byte length and
# an array its 4-byte item type and 8-byte count. A metadata pair has at least a key length, a
# value type and a 1-byte value, and a tensor info a name length, n_dims, one dim, the type and
# the offset.
_MIN_STRING_BYTES = 8
_MIN_ARRAY_BYTES = 12
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor info entry of a GGUF header, with `dims` in GGUF order (fastest-varying first)."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int


@dataclass(frozen=True)
class GGUFHeader:
    """The parts of a GGUF header that the checks need."""

    version: int
    metadata: dict[str, Any]  # array values are skipped and stored as None
    tensors: list[GGUFTensorInfo]
    data_offset: int
    file_size: int


def check_gguf_header(path: str | Path) -> GGUFHeader:
    """Walk the header of the GGUF file at `path`, raising GGUFError for anything that does not fit.

    Checks the magic, the version, every count and length against the bytes left, each tensor's
    type, and that each tensor's data lies inside the file.
    """
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"GGUF file {path} not found. Check the path.")
    file_size = path.stat().st_size
    if file_size < len(GGUF_MAGIC):
        raise GGUFError(
            f"{path} is {file_size} bytes, shorter than a GGUF header. The file is empty or "
            "truncated. Download it again."
        )

    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        header = _HeaderWalker(path, data).walk()
    _check_tensor_data(header, path)
    return header


class _HeaderWalker:
    def __init__(self, path: Path, data: mmap.mmap) -> None:
        self.path = path
        self.data = data
        self.size = len(data)
        self.offset = 0

    def walk(self) -> GGUFHeader:
        magic = bytes(self.data[:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(
                f"{self.path} starts with {magic!r}, not the GGUF magic {GGUF_MAGIC!r}, so it is "
                "not a GGUF file. Pass a .gguf file made by llama.cpp."
            )
        self.offset = 4
        version = self._read_version()
        tensor_count = self._read_count("tensor count", _MIN_TENSOR_INFO_BYTES)
        kv_count = self._read_count("metadata key-value count", _MIN_KV_BYTES)

        metadata = {}
        for _ in range(kv_count):
            key, value = self._read_kv()
            metadata[key] = value
        tensors = [self._read_tensor_info() for _ in range(tensor_count)]

        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(
                f"{self.path}: general.alignment is {alignment!r}, not a power of two. The file "
                "is corrupt. Download it again."
            )
        data_offset = -(-self.offset // alignment) * alignment
        return GGUFHeader(version, metadata, tensors, data_offset, self.size)

    def _read_version(self) -> int:
        version = self._unpack("<I", "the GGUF version")
        if version & 0xFFFF == 0:
            raise GGUFError(
                f"{self.path} is a big-endian GGUF file, which is not supported. Use a "
                "little-endian GGUF file (the kind llama.cpp writes by default)."
            )
        if version not in SUPPORTED_VERSIONS:
            raise GGUFError(
                f"{self.path} is GGUF version {version}, but only versions "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))} are supported. Convert the model "
                "again with a current llama.cpp."
            )
        return version

    def _read_count(self, what: str, min_entry_bytes: int) -> int:
        count = self._unpack("<Q", f"the {what}")
        self._check_fits(count, min_entry_bytes, what)
        return count

    def _read_kv(self) -> tuple[str, Any]:
        key = self._read_string("a metadata key").decode("utf-8", errors="replace")
        value_type = self._unpack("<I", f"the value type of {key}")
        value = self._read_value(value_type, key)
        return key, value

    def _read_value(self, value_type: int, key: str) -> Any:
        if value_type == GGUFValueType.STRING:
            raw = self._read_string(f"the value of {key}")
            return raw.decode("utf-8", errors="replace")
        if value_type in _SCALAR_LAYOUTS:
            return self._unpack(_SCALAR_LAYOUTS[GGUFValueType(value_type)], f"the value of {key}")
        if value_type == GGUFValueType.ARRAY:
            self._skip_array(key)
            return None
        raise GGUFError(
            f"{self.path}: metadata key {key} has value type {value_type}, which GGUF does not "
            "define. The file is corrupt. Download it again."
        )

    def _skip_array(self, key: str) -> None:
        item_type = self._unpack("<I", f"the item type of {key}")
        count = self._unpack("<Q", f"the length of {key}")
        if item_type in _SCALAR_SIZES:
            self._check_fits(count, _SCALAR_SIZES[GGUFValueType(item_type)], f"items of {key}")
            self.offset += count * _SCALAR_SIZES[GGUFValueType(item_type)]
        elif item_type == GGUFValueType.STRING:
            self._check_fits(count, _MIN_STRING_BYTES, f"items of {key}")
            for index in range(count):
                self._skip_string(key, index)
        elif item_type == GGUFValueType.ARRAY:
            self._check_fits(count, _MIN_ARRAY_BYTES, f"items of {key}")
            for _ in range(count):
                self._skip_array(key)
        else:
            raise GGUFError(
                f"{self.path}: metadata array {key} has item type {item_type}, which GGUF does "
                "not define. The file is corrupt. Download it again."
            )

    def _skip_string(self, key: str, index: int) -> None:
        # _read_string without copying the bytes, because a vocabulary has ~10**5 strings.
        if self.size - self.offset < 8:
            self._take(8, f"{key}[{index}]")
        (length,) = struct.unpack_from("<Q", self.data, self.offset)
        if length > self.size - self.offset - 8:
            self._raise_length(length, f"{key}[{index}]")
        self.offset += 8 + length

    def _read_tensor_info(self) -> GGUFTensorInfo:
        name = self._read_string("a tensor name").decode("utf-8", errors="replace")
        n_dims = self._unpack("<I", f"the number of dimensions of tensor {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(
                f"{self.path}: tensor {name} has {n_dims} dimensions, but GGUF allows 1 to "
                f"{MAX_DIMS}. The file is corrupt. Download it again."
            )
        dims = tuple(self._unpack("<Q", f"the shape of tensor {name}") for _ in range(n_dims))
        ggml_type = self._unpack("<I", f"the type of tensor {name}")
        offset = self._unpack("<Q", f"the data offset of tensor {name}")
        return GGUFTensorInfo(name, dims, ggml_type, offset)

    def _read_string(self, what: str) -> bytes:
        length = self._unpack("<Q", f"the length of {what}")
        if length > self.size - self.offset:
            self._raise_length(length, what)
        start = self._take(length, what)
        return bytes(self.data[start : start + length])

    def _unpack(self, layout: str, what: str) -> Any:
        start = self._take(struct.calcsize(layout), what)
        return struct.unpack_from(layout, self.data, start)[0]

    def _take(self, size: int, what: str) -> int:
        if size > self.size - self.offset:
            raise GGUFError(
                f"{self.path} ends at byte {self.size}, inside the GGUF header while reading "
                f"{what} at byte {self.offset}. The file is truncated. Download it again."
            )
        start = self.offset
        self.offset += size
        return start

    def _check_fits(self, count: int, min_entry_bytes: int, what: str) -> None:
        left = self.size - self.offset
        if count * min_entry_bytes > left:
            raise GGUFError(
                f"{self.path}: the header gives {count} {what} at byte {self.offset}, more than "
                f"the {left} bytes left in the file can hold. The file is corrupt or truncated. "
                "Download it again."
            )

    def _raise_length(self, length: int, what: str) -> None:
        left = self.size - self.offset
        raise GGUFError(
            f"{self.path}: {what} at byte {self.offset - 8} has a length of {length} bytes, but "
            f"only {left} bytes follow. The file is corrupt or truncated. Download it again."
        )


def _check_tensor_data(header: GGUFHeader, path: Path) -> None:
    for tensor in header.tensors:
        try:
            ggml_type = GGMLQuantizationType(tensor.ggml_type)
        except ValueError:
            raise GGUFError(
                f"{path}: tensor {tensor.name} has ggml type {tensor.ggml_type}, which the "
                "installed gguf package does not know. Upgrade gguf, or use a GGUF file "
                "quantized with a common type such as Q4_K_M or Q8_0."
            ) from None

        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        if tensor.dims[0] % block_size:
            raise GGUFError(
                f"{path}: tensor {tensor.name} has rows of {tensor.dims[0]} values, not a "
                f"multiple of the {ggml_type.name} block size {block_size}. The file is "
                "corrupt. Download it again."
            )
        n_bytes = math.prod(tensor.dims) // block_size * type_size
        end = header.data_offset + tensor.offset + n_bytes
        if end > header.file_size:
            raise GGUFError(
                f"{path}: the data of tensor {tensor.name} ends at byte {end}, past the end of "
                f"the file at byte {header.file_size}. The file is truncated. Download it again."
            )


# Metadata.


def _open_reader(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as error:
        raise GGUFError(
            f"{path} could not be read as GGUF ({type(error).__name__}: {error}). The file is "
            "corrupt or truncated. Download it again."
        ) from error


_REQUIRED = object()


class GGUFMetadata:
    """Typed access to the metadata of a GGUF file, raising GGUFError that names a bad key."""

    def __init__(self, reader: GGUFReader, path: Path) -> None:
        self.fields = reader.fields
        self.path = path

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        field = self.fields.get(key)
        if field is None:
            if default is _REQUIRED:
                raise GGUFError(
                    f"{self.path} has no metadata key {key}. Either llama.cpp's Qwen2 "
                    "converter did not write it or the file is damaged. Download it again."
                )
            return default
        try:
            return field.contents()
        except (ValueError, IndexError) as error:
            raise GGUFError(
                f"{self.path}: the value of metadata key {key} could not be decoded ({error}). "
                "The file is corrupt. Download it again."
            ) from error

    def get_int(self, key: str, default: Any = _REQUIRED) -> int:
        value = self.get(key, default)
        if value is not default and (isinstance(value, bool) or not isinstance(value, int)):
            raise GGUFError(
                f"{self.path}: metadata key {key} is {value!r}, not an integer. The file is "
                "corrupt. Download it again."
            )
        return value

    def get_float(self, key: str, default: Any = _REQUIRED) -> float:
        value = self.get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GGUFError(
                f"{self.path}: metadata key {key} is {value!r}, not a number. The file is "
                "corrupt. Download it again."
            )
        if self.fields[key].types == [GGUFValueType.FLOAT32]:
            return _shortest_float32(value)
        return float(value)


def _check_architecture(architecture: str, path: Path) -> None:
    if architecture != ARCHITECTURE:
        raise GGUFError(
            f"{path} contains a model of architecture {architecture!r}, but only {ARCHITECTURE!r} "
            "(Qwen2 and Qwen2.5) is supported. Pick a Qwen2.5 GGUF file."
        )


def _shortest_float32(value: float) -> float:
    # A float32 1e-6 reads back as 9.99999997e-07. numpy prints the shortest decimal that rounds
    # to the same float32, which turns it back into 1e-06.
    return float(str(np.float32(value)))


# config.json and generation_config.json.


def build_config(
    metadata: GGUFMetadata, tensors: dict[str, ReaderTensor], dtype: str
) -> dict[str, Any]:
    """Build a transformers Qwen2Config dictionary from the GGUF metadata and tensor shapes."""
    arch = ARCHITECTURE
    hidden_size = metadata.get_int(f"{arch}.embedding_length")
    n_layers = metadata.get_int(f"{arch}.block_count")
    n_heads = metadata.get_int(f"{arch}.attention.head_count")
    n_kv_heads = metadata.get_int(f"{arch}.attention.head_count_kv", n_heads)
    _check_heads(metadata.path, n_heads, n_kv_heads)
    embedding = tensors.get("token_embd.weight")
    if embedding is None:
        raise GGUFError(
            f"{metadata.path} has no tensor token_embd.weight. The file is incomplete. "
            "Download it again."
        )

    config: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden_size,
        "intermediate_size": metadata.get_int(f"{arch}.feed_forward_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": metadata.get_int(f"{arch}.context_length"),
        "rms_norm_eps": metadata.get_float(f"{arch}.attention.layer_norm_rms_epsilon"),
        "rope_theta": _rope_theta(metadata),
        "vocab_size": int(embedding.shape[1]),  # GGUF order: (hidden_size, vocab rows)
        "tie_word_embeddings": "output.weight" not in tensors,
        "use_sliding_window": False,
        "max_window_layers": n_layers,
        "attention_dropout": 0.0,
        "bos_token_id": metadata.get_int("tokenizer.ggml.bos_token_id", None),
        "eos_token_id": metadata.get_int("tokenizer.ggml.eos_token_id"),
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    head_dim = _head_dim(metadata, hidden_size, n_heads)
    if head_dim != hidden_size // n_heads:
        config["head_dim"] = head_dim
    rope_scaling = _rope_scaling(metadata)
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    return config


def build_generation_config(metadata: GGUFMetadata, vocab: GGUFVocab) -> dict[str, Any]:
    """Build generation_config.json: the special token ids, and sampling defaults if present."""
    config: dict[str, Any] = {
        "bos_token_id": vocab.bos_token_id,
        "eos_token_id": end_of_generation_ids(vocab),
        "pad_token_id": vocab.padding_token_id,
    }
    sampling = {
        "temperature": metadata.get_float("general.sampling.temp", None),
        "top_k": metadata.get_int("general.sampling.top_k", None),
        "top_p": metadata.get_float("general.sampling.top_p", None),
        "min_p": metadata.get_float("general.sampling.min_p", None),
        "repetition_penalty": metadata.get_float("general.sampling.penalty_repeat", None),
    }
    sampling = {key: value for key, value in sampling.items() if value is not None}
    if sampling:
        config["do_sample"] = True
        config.update(sampling)
    return {key: value for key, value in config.items() if value is not None}


def read_vocab(metadata: GGUFMetadata, config: dict[str, Any]) -> GGUFVocab:
    """Read the tokenizer metadata and check that it fits the embedding matrix."""
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFError(
            f"{metadata.path}: tokenizer.ggml.model is {model!r}, but a Qwen2 GGUF file has the "
            "byte-level BPE tokenizer 'gpt2'. Download a Qwen2.5 GGUF file made by llama.cpp."
        )
    vocab = GGUFVocab(
        tokens=metadata.get("tokenizer.ggml.tokens"),
        token_type=metadata.get("tokenizer.ggml.token_type"),
        merges=metadata.get("tokenizer.ggml.merges"),
        eos_token_id=metadata.get_int("tokenizer.ggml.eos_token_id"),
        bos_token_id=metadata.get_int("tokenizer.ggml.bos_token_id", None),
        padding_token_id=metadata.get_int("tokenizer.ggml.padding_token_id", None),
        add_bos_token=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=metadata.get("tokenizer.chat_template", None),
        model_max_length=config["max_position_embeddings"],
        pre=metadata.get("tokenizer.ggml.pre", None),
    )
    check_vocab(vocab)
    if len(vocab.tokens) > config["vocab_size"]:
        raise GGUFError(
            f"{metadata.path}: tokenizer.ggml.tokens has {len(vocab.tokens)} tokens but "
            f"token_embd.weight has only {config['vocab_size']} rows. The file is corrupt. "
            "Download it again."
        )
    return vocab


def _check_heads(path: Path, n_heads: int, n_kv_heads: int) -> None:
    if n_heads <= 0 or n_kv_heads <= 0 or n_heads % n_kv_heads:
        raise GGUFError(
            f"{path}: {ARCHITECTURE}.attention.head_count is {n_heads} and "
            f"{ARCHITECTURE}.attention.head_count_kv is {n_kv_heads}, but the first must be a "
            "positive multiple of the second. The file is corrupt. Download it again."
        )


def _head_dim(metadata: GGUFMetadata, hidden_size: int, n_heads: int) -> int:
    key_length = metadata.get_int(f"{ARCHITECTURE}.attention.key_length", None)
    value_length = metadata.get_int(f"{ARCHITECTURE}.attention.value_length", key_length)
    if key_length is None:
        if hidden_size % n_heads:
            raise GGUFError(
                f"{metadata.path}: {ARCHITECTURE}.embedding_length {hidden_size} is not a "
                f"multiple of {ARCHITECTURE}.attention.head_count {n_heads}, and the file has "
                f"no {ARCHITECTURE}.attention.key_length. The file is corrupt."
            )
        return hidden_size // n_heads
    if value_length != key_length:
        raise GGUFError(
            f"{metadata.path}: {ARCHITECTURE}.attention.key_length {key_length} differs from "
            f"{ARCHITECTURE}.attention.value_length {value_length}, but Qwen2 needs them equal."
        )
    return key_length


def _rope_theta(metadata: GGUFMetadata) -> float:
    theta = metadata.get_float(f"{ARCHITECTURE}.rope.freq_base", None)
    if theta is None:
        # NOTE: llama.cpp would fall back to 10000 here, but every Qwen2 and Qwen2.5 model
        # was trained with 1e6, so a file without the key gets Qwen's value instead.
        logger.warning(
            "%s.rope.freq_base is missing, so Qwen2's %g is used", ARCHITECTURE, DEFAULT_ROPE_THETA
        )
        return DEFAULT_ROPE_THETA
    return theta


def _rope_scaling(metadata: GGUFMetadata) -> dict[str, Any] | None:
    arch = ARCHITECTURE
    scaling_type = metadata.get(f"{arch}.rope.scaling.type", None)
    if scaling_type is None:
        # Files from before the rope.scaling keys store linear scaling as rope.scale_linear.
        scale_linear = metadata.get_float(f"{arch}.rope.scale_linear", 1.0)
        return None if scale_linear == 1.0 else {"type": "linear", "factor": scale_linear}
    if scaling_type == "none":
        return None

    factor = metadata.get_float(f"{arch}.rope.scaling.factor")
    if scaling_type == "linear":
        return {"type": "linear", "factor": factor}
    if scaling_type == "yarn":
        original = metadata.get_int(f"{arch}.rope.scaling.original_context_length")
        return {"type": "yarn", "factor": factor, "original_max_position_embeddings": original}
    raise GGUFError(
        f"{metadata.path}: {arch}.rope.scaling.type is {scaling_type!r}, but only 'none', 'linear' "
        "and 'yarn' are supported for Qwen2."
    )


# Tensors.

_GLOBAL_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# llama.cpp writes Qwen2's q and k projections without the row permutation it applies to LLaMA
# (Qwen2 uses the NEOX rotary layout), so these map to the Hugging Face tensors unchanged.
_BLOCK_TENSOR_NAMES = {
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
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(.+)")


def hf_tensor_name(gguf_name: str) -> str | None:
    """Return the Hugging Face name of a llama.cpp Qwen2 tensor, or None for an unknown name."""
    if gguf_name in _GLOBAL_TENSOR_NAMES:
        return _GLOBAL_TENSOR_NAMES[gguf_name]
    match = _BLOCK_TENSOR.fullmatch(gguf_name)
    if match is None or match.group(2) not in _BLOCK_TENSOR_NAMES:
        return None
    return f"model.layers.{int(match.group(1))}.{_BLOCK_TENSOR_NAMES[match.group(2)]}"


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Map each GGUF tensor name a Qwen2 model needs to its numpy (row-major) shape."""
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim", hidden // config["num_attention_heads"])
    q_size = config["num_attention_heads"] * head_dim
    kv_size = config["num_key_value_heads"] * head_dim
    intermediate = config["intermediate_size"]

    shapes = {
        "token_embd.weight": (config["vocab_size"], hidden),
        "output_norm.weight": (hidden,),
    }
    if not config["tie_word_embeddings"]:
        shapes["output.weight"] = (config["vocab_size"], hidden)
    block = {
        "attn_norm.weight": (hidden,),
        "attn_q.weight": (q_size, hidden),
        "attn_q.bias": (q_size,),
        "attn_k.weight": (kv_size, hidden),
        "attn_k.bias": (kv_size,),
        "attn_v.weight": (kv_size, hidden),
        "attn_v.bias": (kv_size,),
        "attn_output.weight": (hidden, q_size),
        "ffn_norm.weight": (hidden,),
        "ffn_gate.weight": (intermediate, hidden),
        "ffn_up.weight": (intermediate, hidden),
        "ffn_down.weight": (hidden, intermediate),
    }
    for layer in range(config["num_hidden_layers"]):
        for name, shape in block.items():
            shapes[f"blk.{layer}.{name}"] = shape
    return shapes


def _check_tensors(tensors: dict[str, ReaderTensor], config: dict[str, Any], path: Path) -> None:
    expected = expected_shapes(config)
    unknown = [name for name in tensors if name not in expected]
    if unknown:
        raise GGUFError(
            f"{path} has tensors that are not part of a {config['num_hidden_layers']}-layer "
            f"Qwen2 model: {_name_list(unknown)}. Only plain Qwen2/Qwen2.5 GGUF files are "
            "supported."
        )
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise GGUFError(
            f"{path} lacks tensors that a Qwen2 model needs: {_name_list(missing)}. "
            "The file is incomplete. Download it again."
        )

    for name, shape in expected.items():
        actual = _numpy_shape(tensors[name])
        if actual != shape:
            raise GGUFError(
                f"{path}: tensor {name} has shape {actual}, but the model's metadata implies "
                f"{shape}. The file is corrupt. Download it again."
            )
    for ggml_type in sorted({tensor.tensor_type for tensor in tensors.values()}):
        _check_dequantizable(ggml_type, tensors, path)


def _check_dequantizable(
    ggml_type: GGMLQuantizationType, tensors: dict[str, ReaderTensor], path: Path
) -> None:
    # gguf has no public list of the types it can dequantize, so try one zero block.
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    try:
        dequantize(np.zeros((1, type_size), dtype=np.uint8), ggml_type)
    except NotImplementedError:
        name = next(name for name, tensor in tensors.items() if tensor.tensor_type == ggml_type)
        raise GGUFError(
            f"{path}: tensor {name} has type {ggml_type.name}, which the installed gguf package "
            "cannot dequantize. Use a GGUF file with types such as Q4_K_M, Q5_K_M, Q8_0 or F16."
        ) from None


def _numpy_shape(tensor: ReaderTensor) -> tuple[int, ...]:
    return tuple(int(dim) for dim in reversed(tensor.shape))


def _name_list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _write_tensors(
    tensors: list[ReaderTensor],
    src: Path,
    out_dir: Path,
    dtype: mx.Dtype,
    max_shard_bytes: int,
    progress: Progress | None,
) -> None:
    writer = _ShardWriter(out_dir, max_shard_bytes)
    for done, tensor in enumerate(tensors, start=1):
        name = hf_tensor_name(tensor.name)
        writer.add(name, _convert_tensor(tensor, dtype, src))
        logger.debug("converted %s (%s) to %s", tensor.name, tensor.tensor_type.name, name)
        if progress is not None:
            progress(done, len(tensors), name)
    writer.close()


def _convert_tensor(tensor: ReaderTensor, dtype: mx.Dtype, src: Path) -> mx.array:
    try:
        weights = dequantize(tensor.data, tensor.tensor_type)
    except (ValueError, IndexError) as error:
        raise GGUFError(
            f"{src}: tensor {tensor.name} of type {tensor.tensor_type.name} could not be "
            f"dequantized ({error}). The file is corrupt. Download it again."
        ) from error

    # Cast and evaluate now, so this tensor's float32 copies are freed before the next one.
    array = mx.array(weights.reshape(_numpy_shape(tensor))).astype(dtype)
    mx.eval(array)
    return array


class _ShardWriter:
    """Writes tensors to safetensors files of at most `max_shard_bytes` each, as they arrive.

    A tensor larger than the limit gets a shard of its own. A single shard is named
    model.safetensors, and several are named model-00001-of-0000N.safetensors with an index.
    """

    def __init__(self, out_dir: Path, max_shard_bytes: int) -> None:
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict[str, mx.array] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, array: mx.array) -> None:
        if self.pending and self.pending_bytes + array.nbytes > self.max_shard_bytes:
            self._flush()
        self.pending[name] = array
        self.pending_bytes += array.nbytes
        self.total_bytes += array.nbytes

    def close(self) -> None:
        if self.pending:
            self._flush()
        if len(self.shards) == 1:
            self.shards[0][0].rename(self.out_dir / "model.safetensors")
            return

        weight_map = {}
        for number, (path, names) in enumerate(self.shards, start=1):
            shard_name = f"model-{number:05d}-of-{len(self.shards):05d}.safetensors"
            path.rename(self.out_dir / shard_name)
            weight_map.update(dict.fromkeys(names, shard_name))
        index = {
            "metadata": {"total_size": self.total_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        _write_json(self.out_dir / "model.safetensors.index.json", index)

    def _flush(self) -> None:
        path = self.out_dir / f"shard-{len(self.shards)}.partial.safetensors"
        mx.save_safetensors(str(path), self.pending, metadata={"format": "pt"})
        logger.info(
            "wrote shard %d: %d tensors, %d bytes",
            len(self.shards) + 1,
            len(self.pending),
            self.pending_bytes,
        )
        self.shards.append((path, sorted(self.pending)))
        self.pending = {}
        self.pending_bytes = 0


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
