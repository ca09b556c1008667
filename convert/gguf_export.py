"""Export a Qwen2 Hugging Face checkpoint to a GGUF file for llama.cpp.

    convert_to_gguf("Qwen/Qwen2.5-0.5B-Instruct", Path("qwen.gguf"), gguf_type="q4_k_m")

The file contains the qwen2 hyperparameters, the tokenizer and every tensor under llama.cpp's
names. Float and 32-wide block types are encoded by the `gguf` package, and Q4_K, Q5_K and
Q6_K by `kquants`. The K-quant mixes (q4_k_m, q5_k_m, q6_k) pick the type of each tensor with
the rules of llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp), so a file exported here
has the same tensor types as one made by `llama-quantize` from an f32 GGUF file.

Tensors are read from the safetensors files one at a time, in row chunks, and written straight
to disk. Peak memory is about one encoded tensor plus a few chunks, not the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGML_QUANT_VERSION,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    RopeScalingType,
)
from gguf.quants import quantize
from gguf.utility import size_label

from qwen_edge.config import ModelConfig
from qwen_edge.convert.atomic import atomic_output_file
from qwen_edge.convert.gguf_import import ARCHITECTURE, expected_shapes, hf_tensor_name
from qwen_edge.convert.gguf_vocab import GGUFVocabulary, add_vocabulary, read_vocabulary
from qwen_edge.convert.kquants import quantize_k
from qwen_edge.convert.source import is_repo_id, open_source
from qwen_edge.errors import QwenEdgeError

logger = logging.getLogger("qwen_edge.convert")

Progress = Callable[[int, int, str], None]
Q = GGMLQuantizationType


@dataclass(frozen=True)
class GGUFType:
    """One `--type` choice: the tensor type most weights get and the GGUF general.file_type."""

    default: GGMLQuantizationType
    file_type: LlamaFileType
    # Q6_K for attn_v and ffn_down on the layers llama.cpp's use_more_bits picks.
    more_bits_layers: bool = False


GGUF_TYPES: dict[str, GGUFType] = {
    "f32": GGUFType(Q.F32, LlamaFileType.ALL_F32),
    "f16": GGUFType(Q.F16, LlamaFileType.MOSTLY_F16),
    "bf16": GGUFType(Q.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": GGUFType(Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q4_0": GGUFType(Q.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    "q4_1": GGUFType(Q.Q4_1, LlamaFileType.MOSTLY_Q4_1),
    "q5_0": GGUFType(Q.Q5_0, LlamaFileType.MOSTLY_Q5_0),
    "q5_1": GGUFType(Q.Q5_1, LlamaFileType.MOSTLY_Q5_1),
    "q4_k_m": GGUFType(Q.Q4_K, LlamaFileType.MOSTLY_Q4_K_M, more_bits_layers=True),
    "q5_k_m": GGUFType(Q.Q5_K, LlamaFileType.MOSTLY_Q5_K_M, more_bits_layers=True),
    "q6_k": GGUFType(Q.Q6_K, LlamaFileType.MOSTLY_Q6_K),
}
FLOAT_TYPES = frozenset({Q.F32, Q.F16, Q.BF16})
# llama.cpp's replacement for a K-quant whose rows are not a multiple of 256 values.
K_QUANT_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}
# Values encoded per step: 1M float32 values (4 MB) plus the encoder's temporaries, small
# enough that even one feed-forward matrix of a 0.5B model splits into chunks for the threads.
CHUNK_VALUES = 1 << 20
# numpy releases the GIL inside its array operations, so chunks encode in parallel threads.
ENCODE_THREADS = min(4, os.cpu_count() or 1)


# Choosing the type of each tensor.


def use_more_bits(layer: int, n_layers: int) -> bool:
    """Tell whether llama.cpp's Q4_K_M and Q5_K_M give this layer's attn_v and ffn_down Q6_K:
    the first and last eighth of the layers, and every third layer in between."""
    eighth = n_layers // 8
    return layer < eighth or layer >= 7 * n_layers // 8 or (layer - eighth) % 3 == 2


def tensor_type(
    name: str, shape: tuple[int, ...], gguf_type: str, n_layers: int, tied: bool
) -> GGMLQuantizationType:
    """Choose the GGML type of tensor `name` (numpy `shape`) for `gguf_type` as llama.cpp's
    quantizer does.

    Norms and biases stay F32. The output head (the embedding when `tied`) and some attn_v and
    ffn_down tensors get more bits. Rows that do not fit a type's blocks fall back to a type
    that they fit.
    """
    preset = _gguf_type(gguf_type)
    if len(shape) < 2:
        return Q.F32
    if preset.default in FLOAT_TYPES:
        return preset.default

    cols = shape[-1]
    chosen = preset.default
    is_output = name == "output.weight" or (tied and name == "token_embd.weight")
    match = re.fullmatch(r"blk\.(\d+)\.(attn_v|ffn_down)\.weight", name)
    if is_output:
        block_size, _ = GGML_QUANT_SIZES[preset.default]
        if cols % block_size:
            chosen = Q.Q8_0
        elif preset.default != Q.Q8_0:
            chosen = Q.Q6_K
    elif match and preset.more_bits_layers and use_more_bits(int(match.group(1)), n_layers):
        chosen = Q.Q6_K
    return _fallback(chosen, cols)


def _fallback(chosen: GGMLQuantizationType, cols: int) -> GGMLQuantizationType:
    block_size, _ = GGML_QUANT_SIZES[chosen]
    if cols % block_size == 0:
        return chosen
    chosen = K_QUANT_FALLBACK.get(chosen, chosen)
    block_size, _ = GGML_QUANT_SIZES[chosen]
    # A row that does not even fit a 32-wide block stays F16, as in llama.cpp.
    return chosen if cols % block_size == 0 else Q.F16


def _gguf_type(gguf_type: str) -> GGUFType:
    if gguf_type not in GGUF_TYPES:
        raise QwenEdgeError(
            f"GGUF type {gguf_type!r} is not supported. Choose one of {', '.join(GGUF_TYPES)}."
        )
    return GGUF_TYPES[gguf_type]


# Reading the checkpoint.


@dataclass(frozen=True)
class _StoredTensor:
    path: Path
    dtype: str  # safetensors dtype: F32, F16, BF16, U32, ...
    shape: tuple[int, ...]
    offset: int  # of the first byte in the file


_NUMPY_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "U32": "<u4"}


class Checkpoint:
    """Lazy access to the tensors of a safetensors checkpoint directory, as float32.

    Reads with plain file reads instead of a memory map, so that only the rows asked for occupy
    memory. An mlx-lm quantized weight (`weight`, `scales`, `biases`) reads as its dequantized
    float32 matrix.
    """

    def __init__(self, directory: Path, config: ModelConfig) -> None:
        self.directory = directory
        self.quantization = config.quantization
        self.stored: dict[str, _StoredTensor] = {}
        files = _safetensors_files(directory)
        if not files:
            raise QwenEdgeError(
                f"{directory} has no .safetensors files. Pickle checkpoints (.bin, .pt) are "
                "not read because loading them can run code; convert them to safetensors first."
            )
        for path in files:
            self.stored.update(_read_safetensors_header(path))
        self._cached: tuple[str, np.ndarray] | None = None
        self._cache_lock = threading.Lock()

    def names(self) -> list[str]:
        """List the logical tensor names: the `scales` and `biases` of a quantized weight are
        folded into it."""
        return [name for name in self.stored if not self._is_quantization_part(name)]

    def shape(self, name: str) -> tuple[int, ...]:
        stored = self.stored[name]
        setting = self._quantization_setting(name)
        if setting is None:
            return stored.shape
        _, bits = setting
        return (*stored.shape[:-1], stored.shape[-1] * 32 // bits)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Read rows [start, stop) of tensor `name` as float32, a 1-D tensor being one row."""
        if self._quantization_setting(name) is not None:
            return self._dequantized(name)[start:stop]
        stored = self.stored[name]
        if stored.dtype not in ("F32", "F16", "BF16"):
            raise QwenEdgeError(
                f"{stored.path}: tensor {name} has dtype {stored.dtype}, but only F32, F16 and "
                "BF16 weights can be exported."
            )
        cols = stored.shape[-1] if stored.shape else 1
        raw_dtype = np.dtype(_NUMPY_DTYPES[stored.dtype])
        with stored.path.open("rb") as file:
            file.seek(stored.offset + start * cols * raw_dtype.itemsize)
            raw = np.fromfile(file, dtype=raw_dtype, count=(stop - start) * cols)
        if raw.size != (stop - start) * cols:
            raise QwenEdgeError(
                f"{stored.path} ends inside tensor {name}. The file is truncated. Download or "
                "convert the checkpoint again."
            )
        return _to_float32(raw, stored.dtype).reshape(stop - start, cols)

    def _dequantized(self, name: str) -> np.ndarray:
        # A quantized weight is dequantized whole, once, and kept until the next one. The
        # lock keeps the encoding threads from dequantizing the same weight twice.
        with self._cache_lock:
            if self._cached is None or self._cached[0] != name:
                self._cached = None
                self._cached = (name, self._dequantize(name))
            return self._cached[1]

    def _dequantize(self, name: str) -> np.ndarray:
        import mlx.core as mx

        module = name.removesuffix(".weight")
        group_size, bits = self._quantization_setting(name)
        parts = {}
        for part in ("weight", "scales", "biases"):
            stored = self.stored[f"{module}.{part}"]
            with stored.path.open("rb") as file:
                file.seek(stored.offset)
                raw = np.fromfile(
                    file, np.dtype(_NUMPY_DTYPES[stored.dtype]), math.prod(stored.shape)
                )
            raw = raw.reshape(stored.shape)
            parts[part] = mx.array(raw if part == "weight" else _to_float32(raw, stored.dtype))
        weights = mx.dequantize(
            parts["weight"], parts["scales"], parts["biases"], group_size=group_size, bits=bits
        )
        return np.array(weights.astype(mx.float32))

    def _quantization_setting(self, name: str) -> tuple[int, int] | None:
        """(group_size, bits) of an mlx-lm quantized weight, None for a float tensor."""
        if self.quantization is None or not name.endswith(".weight"):
            return None
        module = name.removesuffix(".weight")
        if f"{module}.scales" not in self.stored:
            return None
        setting = self.quantization.for_module(module)
        if setting is None:
            return None
        if self.quantization.mode != "affine" or f"{module}.biases" not in self.stored:
            raise QwenEdgeError(
                f"{self.directory}: {module} is quantized in MLX mode "
                f"{self.quantization.mode!r}; only affine quantization can be dequantized for "
                "GGUF export."
            )
        return setting

    def _is_quantization_part(self, name: str) -> bool:
        if not name.endswith((".scales", ".biases")):
            return False
        module = name.rsplit(".", 1)[0]
        return self._quantization_setting(f"{module}.weight") is not None


def _safetensors_files(directory: Path) -> list[Path]:
    # A sharded checkpoint lists its shards in the index. Other files beside them are ignored.
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        return sorted(directory.glob("*.safetensors"))
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise QwenEdgeError(f"{index} is not a valid safetensors index: {error!r}") from error
    return [directory / name for name in sorted(set(weight_map.values()))]


def _read_safetensors_header(path: Path) -> dict[str, _StoredTensor]:
    with path.open("rb") as file:
        prefix = file.read(8)
        header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < header_size <= path.stat().st_size - 8:
            raise QwenEdgeError(f"{path} is not a safetensors file or is truncated")
        try:
            header = json.loads(file.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise QwenEdgeError(f"{path} has a corrupt safetensors header: {error}") from error
    data_start = 8 + header_size
    return {
        name: _StoredTensor(
            path, entry["dtype"], tuple(entry["shape"]), data_start + entry["data_offsets"][0]
        )
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        # bfloat16 is the top half of a float32.
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


# Planning the file.


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor of the output file: its GGUF name, source name, numpy shape and type."""

    name: str
    source_name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType

    @property
    def n_bytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.ggml_type]
        return math.prod(self.shape) // block_size * type_size


# Tensors a Qwen2 checkpoint may carry that a GGUF file does not need.
_IGNORED_TENSORS = re.compile(r".*rotary_emb\.inv_freq")


def plan_tensors(
    checkpoint: Checkpoint, config: ModelConfig, gguf_type: str
) -> list[PlannedTensor]:
    """Match the checkpoint's tensors to the GGUF tensors a Qwen2 model needs and choose each
    one's type. Raises QwenEdgeError for a missing, unexpected or misshapen tensor."""
    expected = expected_shapes(_config_dict(config))
    source_names = {hf_tensor_name(name): name for name in expected}
    available = set(checkpoint.names())

    missing = [name for name in source_names if name not in available]
    if missing:
        raise QwenEdgeError(
            f"{checkpoint.directory} lacks tensors that a {config.num_hidden_layers}-layer "
            f"Qwen2 model needs: {_name_list(missing)}. The checkpoint is incomplete."
        )
    extra = sorted(name for name in available - source_names.keys() if not _ignored(name, config))
    if extra:
        raise QwenEdgeError(
            f"{checkpoint.directory} has tensors that a plain Qwen2 model does not: "
            f"{_name_list(extra)}. Only Qwen2 and Qwen2.5 text models can be exported."
        )

    planned = []
    for source_name, name in source_names.items():
        shape = checkpoint.shape(source_name)
        if shape != expected[name]:
            raise QwenEdgeError(
                f"{checkpoint.directory}: tensor {source_name} has shape {shape}, but config.json "
                f"implies {expected[name]}. The checkpoint and its config.json do not match."
            )
        chosen = tensor_type(
            name, shape, gguf_type, config.num_hidden_layers, config.tie_word_embeddings
        )
        planned.append(PlannedTensor(name, source_name, shape, chosen))
    return planned


def _ignored(name: str, config: ModelConfig) -> bool:
    # A tied checkpoint may still carry a copy of the embedding as lm_head.weight.
    return bool(_IGNORED_TENSORS.fullmatch(name)) or (
        config.tie_word_embeddings and name == "lm_head.weight"
    )


def _config_dict(config: ModelConfig) -> dict[str, object]:
    return {
        "hidden_size": config.hidden_size,
        "head_dim": config.head_dim,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_word_embeddings,
    }


def _name_list(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


# Metadata.


def add_hyperparameters(writer: GGUFWriter, config: ModelConfig) -> None:
    """Add the `qwen2.*` keys llama.cpp reads for the model graph."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    if config.head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)

    scaling = config.rope_scaling
    if scaling is None:
        return
    if scaling.rope_type == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling.factor)
    elif scaling.rope_type == "yarn":
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(scaling.factor)
        original = scaling.original_max_position_embeddings or config.max_position_embeddings
        writer.add_rope_scaling_orig_ctx_len(original)
        if scaling.attention_factor is not None:
            writer.add_rope_scaling_yarn_attn_factor(scaling.attention_factor)
    else:
        raise QwenEdgeError(
            f"rope_scaling type {scaling.rope_type!r} cannot be written to GGUF, because "
            "llama.cpp's qwen2 models support only 'linear' and 'yarn'."
        )


def model_name(src: str) -> str:
    """Name the model after its source: the repo name of a hub id, or the file or directory
    name of a local path."""
    if is_repo_id(src):
        return src.split("/")[-1]
    path = Path(src).expanduser()
    return path.stem if path.suffix.lower() == ".gguf" else path.name


# The summary.


@dataclass
class TensorGroup:
    """Tensors that differ only in their layer number, such as `blk.*.attn_v.weight`."""

    name: str
    types: Counter[str] = field(default_factory=Counter)
    n_params: int = 0
    n_bytes: int = 0


@dataclass
class GGUFExportSummary:
    """The result of convert_to_gguf: the types of every tensor group, bits per weight, size
    and time."""

    path: Path
    gguf_type: str
    file_type: LlamaFileType
    groups: list[TensorGroup]
    n_params: int
    n_bytes: int  # tensor data, without header and padding
    file_size: int
    seconds: float

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.n_bytes / self.n_params

    def format(self) -> str:
        """Render the summary as the table the CLI prints to stderr."""
        lines = [
            f"{self.path}: {self.gguf_type} ({self.file_type.name}), {self.n_params / 1e6:.1f}M "
            f"parameters, {self.bits_per_weight:.2f} bits per weight, "
            f"{self.file_size / 2**20:.1f} MiB, {self.seconds:.1f} s",
        ]
        width = max(len(group.name) for group in self.groups)
        for group in self.groups:
            types = ", ".join(
                f"{name} x{count}" if count > 1 else name
                for name, count in sorted(group.types.items())
            )
            bits = 8 * group.n_bytes / group.n_params
            lines.append(f"  {group.name:<{width}}  {bits:5.2f} bpw  {types}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return str(self.path)


def summarize(
    path: Path, gguf_type: str, planned: list[PlannedTensor], seconds: float
) -> GGUFExportSummary:
    """Group the planned tensors by role and total their parameters and bytes."""
    groups: dict[str, TensorGroup] = {}
    for tensor in planned:
        group_name = re.sub(r"^blk\.\d+\.", "blk.*.", tensor.name)
        group = groups.setdefault(group_name, TensorGroup(group_name))
        group.types[tensor.ggml_type.name] += 1
        group.n_params += math.prod(tensor.shape)
        group.n_bytes += tensor.n_bytes
    return GGUFExportSummary(
        path=path,
        gguf_type=gguf_type,
        file_type=GGUF_TYPES[gguf_type].file_type,
        groups=list(groups.values()),
        n_params=sum(group.n_params for group in groups.values()),
        n_bytes=sum(group.n_bytes for group in groups.values()),
        file_size=path.stat().st_size,
        seconds=seconds,
    )


# Export.


def convert_to_gguf(
    src: str | Path,
    out: Path,
    *,
    gguf_type: str = "q4_k_m",
    allow_requantize: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> GGUFExportSummary:
    """Export the Qwen2 checkpoint `src` to the GGUF file `out` with tensor type `gguf_type`.

    `src` is a Hugging Face directory, a model in the local store, a repo id or a .gguf file.
    An already-quantized source (an mlx-lm quantized model or a quantized GGUF file) is
    rejected for a quantized `gguf_type` unless `allow_requantize`, because its quantization
    error would add up with the new one. `progress(done, total, tensor_name)` is called after
    each tensor. `out` appears only once it is complete; with `force` it replaces an existing
    file. Returns a summary whose `format()` is the table to show the user.
    """
    started = time.perf_counter()
    preset = _gguf_type(gguf_type)
    out = Path(out)
    _check_requantize_early(src, gguf_type, preset, allow_requantize)

    with open_source(src) as source:
        if source.quantized:
            _check_requantize(source.description, gguf_type, preset, allow_requantize)
        config = ModelConfig.from_file(source.path)
        _check_quantization_config(source.path, config)
        checkpoint = Checkpoint(source.path, config)
        planned = plan_tensors(checkpoint, config, gguf_type)
        vocab = read_vocabulary(source.path, config.vocab_size)

        logger.info("exporting %d tensors of %s to %s as %s", len(planned), src, out, gguf_type)
        with atomic_output_file(out, force=force) as partial:
            writer = GGUFWriter(partial, ARCHITECTURE)
            try:
                _add_metadata(writer, config, vocab, src, preset, planned)
                _write_file(writer, partial, checkpoint, planned, progress)
            finally:
                writer.close()

    summary = summarize(out, gguf_type, planned, time.perf_counter() - started)
    logger.info("%s", summary.format())
    return summary


def _add_metadata(
    writer: GGUFWriter,
    config: ModelConfig,
    vocab: GGUFVocabulary,
    src: str | Path,
    preset: GGUFType,
    planned: list[PlannedTensor],
) -> None:
    n_params = sum(math.prod(tensor.shape) for tensor in planned)
    writer.add_type("model")
    writer.add_name(model_name(str(src)))
    writer.add_size_label(size_label(n_params, 0, 0, 0))
    writer.add_file_type(int(preset.file_type))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    add_hyperparameters(writer, config)
    add_vocabulary(writer, vocab)


def _write_file(
    writer: GGUFWriter,
    path: Path,
    checkpoint: Checkpoint,
    planned: list[PlannedTensor],
    progress: Progress | None,
) -> None:
    for tensor in planned:
        writer.add_tensor_info(
            tensor.name, tensor.shape, np.dtype(np.float32), tensor.n_bytes, tensor.ggml_type
        )
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    executor = ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="gguf-encode")
    try:
        for done, tensor in enumerate(planned, start=1):
            writer.write_tensor_data(encode_tensor(checkpoint, tensor, executor))
            logger.debug(
                "wrote %s (%s) from %s", tensor.name, tensor.ggml_type.name, tensor.source_name
            )
            if progress is not None:
                progress(done, len(planned), tensor.name)
    finally:
        # On an error or Ctrl-C, chunks not yet started are dropped.
        executor.shutdown(wait=True, cancel_futures=True)


def encode_tensor(
    checkpoint: Checkpoint, tensor: PlannedTensor, executor: ThreadPoolExecutor | None = None
) -> np.ndarray:
    """Read `tensor` from the checkpoint in row chunks and encode it to its GGML type, the
    chunks in parallel on `executor` if one is given.

    Returns the tensor's bytes, uint8 [rows, bytes per row]. Raises QwenEdgeError for a
    weight that is not finite, which no quantized format can store.
    """
    cols = tensor.shape[-1]
    rows = math.prod(tensor.shape[:-1])
    out = np.empty((rows, tensor.n_bytes // rows), dtype=np.uint8)

    def encode_chunk(bounds: tuple[int, int]) -> None:
        start, stop = bounds
        values = checkpoint.read_rows(tensor.source_name, start, stop)
        if not np.isfinite(values).all():
            raise QwenEdgeError(
                f"{checkpoint.directory}: tensor {tensor.source_name} contains NaN or infinite "
                "values. The checkpoint is damaged. Download or convert it again."
            )
        out[start:stop] = encode_rows(values, tensor.ggml_type)

    chunks = list(_row_chunks(rows, cols))
    if executor is None or len(chunks) == 1:
        for bounds in chunks:
            encode_chunk(bounds)
    else:
        # map() re-raises the first error of any chunk here.
        for _ in executor.map(encode_chunk, chunks):
            pass
    return out


def encode_rows(values: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    """Encode float32 rows [rows, cols] as `ggml_type`, returning uint8 [rows, bytes per row]."""
    if ggml_type == Q.F32:
        encoded = values.astype("<f4")
    elif ggml_type == Q.F16:
        encoded = values.astype("<f2")
    elif ggml_type in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        encoded = quantize_k(values, ggml_type)
    else:
        encoded = quantize(values, ggml_type)
    return encoded.view(np.uint8).reshape(values.shape[0], -1)


def _row_chunks(rows: int, cols: int) -> Iterator[tuple[int, int]]:
    step = max(1, CHUNK_VALUES // cols)
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


# Checks on the source.


def _check_requantize_early(
    src: str | Path, gguf_type: str, preset: GGUFType, allow_requantize: bool
) -> None:
    # A quantized GGUF file is rejected from its header, before the slow import.
    path = Path(str(src)).expanduser()
    if allow_requantize or not (path.is_file() and path.suffix.lower() == ".gguf"):
        return
    from qwen_edge.convert.gguf_import import check_gguf_header

    header = check_gguf_header(path)
    if any(info.ggml_type not in {int(t) for t in FLOAT_TYPES} for info in header.tensors):
        _check_requantize(f"GGUF {path}", gguf_type, preset, allow_requantize)


def _check_requantize(
    description: str, gguf_type: str, preset: GGUFType, allow_requantize: bool
) -> None:
    if preset.default in FLOAT_TYPES:
        logger.warning(
            "%s is quantized; the %s file stores its dequantized weights, which are no more "
            "accurate than the source",
            description,
            gguf_type,
        )
        return
    if not allow_requantize:
        raise QwenEdgeError(
            f"{description} is already quantized, and quantizing it again to {gguf_type} adds a "
            "second quantization error to the first. Export from the original float checkpoint, "
            "or pass --allow-requantize to accept the loss."
        )
    logger.warning(
        "requantizing %s to %s; the two quantization errors add up", description, gguf_type
    )


def _check_quantization_config(path: Path, config: ModelConfig) -> None:
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    method = (raw.get("quantization_config") or {}).get("quant_method")
    if method is not None and config.quantization is None:
        raise QwenEdgeError(
            f"{path} is quantized with {method!r} (quantization_config in config.json), which "
            "cannot be dequantized here. Export from the original float checkpoint instead."
        )
