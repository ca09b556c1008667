"""Quantize a Qwen2 checkpoint into mlx-lm's on-disk format.

    convert_to_mlx("Qwen/Qwen2.5-0.5B-Instruct", Path("qwen2.5-0.5b-4bit"), bits=4)

The output directory contains config.json with mlx-lm's `quantization` block (and its copy
`quantization_config`), the weights as `model.safetensors` or as shards of at most 5 GB with
`model.safetensors.index.json`, the source's tokenizer files and generation_config.json. A
quantized layer is stored as `weight` (packed uint32), `scales` and `biases` from
`mx.quantize` in affine mode. The q/k/v projections keep their `bias` exactly as the source
stores it.

The weights stream through tensor by tensor: each source tensor is read, quantized, written
and freed before the next, so peak memory is about that of the largest tensor, not of the
whole model.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from qwen_edge.config import ModelConfig
from qwen_edge.convert.atomic import atomic_output_dir
from qwen_edge.convert.recipes import QuantizationPlan, check_options, plan_quantization
from qwen_edge.convert.source import Source, open_source
from qwen_edge.errors import QwenEdgeError
from qwen_edge.loader import check_tensor_shapes, read_weights
from qwen_edge.model import Qwen2Model

if TYPE_CHECKING:
    from qwen_edge.convert.compare import CompareReport

log = logging.getLogger("qwen_edge.convert")

Progress = Callable[[int, int, str], None]

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
# The largest shard written: 5 GB in powers of ten, within mlx-lm's own limit of 5 GiB.
MAX_SHARD_BYTES = 5 * 10**9
SAFETENSORS_DTYPES = {
    mx.bfloat16: "BF16",
    mx.float16: "F16",
    mx.float32: "F32",
    mx.uint32: "U32",
    mx.int32: "I32",
    mx.uint8: "U8",
    mx.int8: "I8",
    mx.int64: "I64",
    mx.bool_: "BOOL",
}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Copied unchanged when the source has them; tokenizer.json or vocab.json is required.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass(frozen=True)
class MlxExport:
    """Summary of a finished conversion: the figures the command line prints at the end."""

    path: Path
    bits_per_weight: float  # bytes of all weights * 8 / parameters, as mlx-lm computes it
    parameters: int
    weight_bytes: int
    size_bytes: int  # the whole output directory
    seconds: float
    plan: QuantizationPlan
    dtype: str
    report: CompareReport | None = None

    def format(self) -> str:
        """Return a few lines summing up the conversion (and the quality report, if any)."""
        lines = [
            f"{self.path}: {self.bits_per_weight:.2f} bits per weight, "
            f"{self.size_bytes / 1e9:.2f} GB, {self.seconds:.1f} s"
        ]
        histogram = ", ".join(
            f"{count} at {bits} bits" for bits, count in self.plan.bits_histogram().items()
        )
        lines.append(f"quantized layers: {histogram} (group size {self.plan.group_size})")
        float_layers = [path for path, settings in self.plan.layers.items() if settings is None]
        for path in float_layers:
            reason = self.plan.unquantizable.get(path, "requested with --embedding-bits 16")
            lines.append(f"kept in {self.dtype}: {path} ({reason})")
        if self.report is not None:
            lines.append(self.report.format())
        return "\n".join(lines)


@dataclass(frozen=True)
class WrittenModel:
    """Figures of a written model: its source parameters, weight bytes and the plan used."""

    parameters: int
    weight_bytes: int
    plan: QuantizationPlan


def convert_to_mlx(
    src: str,
    out: Path,
    *,
    bits: int = 4,
    group_size: int = 64,
    dtype: str = "bfloat16",
    recipe: str = "uniform",
    embedding_bits: int | None = None,
    force: bool = False,
    report: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Quantize the checkpoint `src` into an mlx-lm model directory `out` and return `out`.

    `src` is a Hugging Face directory, a model in the store, a .gguf file or a Hugging Face repo
    id. The summary (bits per weight, size, time, layers kept in float) is logged at INFO on the
    "qwen_edge.convert" logger, followed by the quality report against the source when `report`
    is set. `export_mlx` returns both instead.
    """
    return export_mlx(
        src,
        out,
        bits=bits,
        group_size=group_size,
        dtype=dtype,
        recipe=recipe,
        embedding_bits=embedding_bits,
        force=force,
        report=report,
        progress=progress,
    ).path


def export_mlx(
    src: str | Path,
    out: Path,
    *,
    bits: int = 4,
    group_size: int = 64,
    dtype: str = "bfloat16",
    recipe: str = "uniform",
    embedding_bits: int | None = None,
    force: bool = False,
    report: bool = False,
    progress: Progress | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> MlxExport:
    """Quantize `src` into `out` like `convert_to_mlx`, and return the summary.

    `out` appears only once complete: the work happens in a temporary directory beside it, which
    any exception or Ctrl-C removes. An existing `out` raises QwenEdgeError unless `force`, and
    with `force` it is replaced only after the new directory is complete.
    """
    check_options(bits=bits, group_size=group_size, recipe=recipe, embedding_bits=embedding_bits)
    _check_dtype(dtype)
    out = Path(out)
    # Checked again by atomic_output_dir; checking now avoids a download or import first.
    if (out.exists() or out.is_symlink()) and not force:
        raise QwenEdgeError(
            f"Output path {out} already exists. Pass --force to replace it, or choose another path."
        )

    start = time.perf_counter()
    with open_source(src, progress) as source:
        _check_source(source)
        log.info(
            "converting %s to MLX: %d bits, group size %d, %s recipe, %s",
            source.description,
            bits,
            group_size,
            recipe,
            dtype,
        )
        with atomic_output_dir(out, force=force) as partial:
            written = write_mlx_model(
                source.path,
                partial,
                bits=bits,
                group_size=group_size,
                dtype=dtype,
                recipe=recipe,
                embedding_bits=embedding_bits,
                progress=progress,
                max_shard_bytes=max_shard_bytes,
            )
        result = MlxExport(
            path=out,
            bits_per_weight=8 * written.weight_bytes / written.parameters,
            parameters=written.parameters,
            weight_bytes=written.weight_bytes,
            size_bytes=_directory_size(out),
            seconds=time.perf_counter() - start,
            plan=written.plan,
            dtype=dtype,
        )
        if report:
            from qwen_edge.convert.compare import compare_models

            result = replace(result, report=compare_models(source.path, out))

    log.info("%s", result.format())
    return result


def write_mlx_model(
    source_dir: Path,
    out_dir: Path,
    *,
    bits: int = 4,
    group_size: int = 64,
    dtype: str = "bfloat16",
    recipe: str = "uniform",
    embedding_bits: int | None = None,
    progress: Progress | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> WrittenModel:
    """Write the quantized model of the Hugging Face directory `source_dir` into the existing
    directory `out_dir` (no atomicity: `export_mlx` adds that)."""
    _check_dtype(dtype)
    raw_config = _read_config(source_dir)
    config = ModelConfig.from_dict(raw_config)
    if config.quantization is not None:
        raise QwenEdgeError(
            f"{source_dir} is already quantized (its config.json has a quantization block); "
            "convert from the float checkpoint it was made from"
        )

    weights = _source_weights(source_dir, config)
    expected = _expected_parameters(config)
    check_tensor_shapes(weights, expected, source_dir)
    plan = plan_quantization(
        _quantizable_modules(config),
        n_layers=config.num_hidden_layers,
        tie_word_embeddings=config.tie_word_embeddings,
        bits=bits,
        group_size=group_size,
        recipe=recipe,
        embedding_bits=embedding_bits,
    )
    _warn_unquantizable(plan)

    parameters = sum(value.size for value in weights.values())
    groups = _output_tensors(weights, expected, plan, DTYPES[dtype])
    # The lazy outputs now hold the only references to the source tensors, so each source
    # tensor is freed as soon as its outputs are evaluated.
    del weights
    weight_bytes = _write_shards(groups, out_dir, max_shard_bytes, progress)

    _write_config(raw_config, plan, dtype, out_dir)
    _copy_tokenizer(source_dir, out_dir)
    _write_generation_config(source_dir, raw_config, out_dir)
    return WrittenModel(parameters, weight_bytes, plan)


def _warn_unquantizable(plan: QuantizationPlan) -> None:
    by_reason: dict[str, list[str]] = {}
    for path, reason in plan.unquantizable.items():
        by_reason.setdefault(reason, []).append(path)
    for reason, paths in by_reason.items():
        log.warning("%d layers stay unquantized (%s): %s", len(paths), reason, ", ".join(paths))


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise QwenEdgeError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")


def _check_source(source: Source) -> None:
    if not source.quantized:
        return
    if source.origin != "gguf":
        raise QwenEdgeError(
            f"{source.description} is already quantized (its config.json has a quantization "
            "block); convert from the float checkpoint it was made from"
        )
    log.warning(
        "%s contains quantized tensors; they were dequantized on import, and quantizing them again "
        "adds a second rounding error (a float GGUF or the original checkpoint gives better "
        "quality)",
        source.description,
    )


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise QwenEdgeError(f"{path} not found; is {directory} a checkpoint?") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise QwenEdgeError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise QwenEdgeError(f"{path} must contain a JSON object, not {type(raw).__name__}")
    return raw


def _source_weights(directory: Path, config: ModelConfig) -> dict[str, mx.array]:
    """Return the source tensors (lazy: mx.load reads each one when it is evaluated), without
    RoPE frequency buffers and without the redundant `lm_head` some tied checkpoints carry."""
    weights = {}
    for name, value in read_weights(directory).items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if config.tie_word_embeddings and name.startswith("lm_head."):
            continue
        weights[name] = value
    return weights


def _unevaluated_model(config: ModelConfig) -> Qwen2Model:
    # MLX arrays are lazy: the random initial weights are never computed, only their shapes
    # are read.
    return Qwen2Model(config)


def _expected_parameters(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Return name -> shape of every parameter of the float model, in module order."""
    model = _unevaluated_model(config)
    return {name: tuple(value.shape) for name, value in tree_flatten(model.parameters())}


def _quantizable_modules(config: ModelConfig) -> list[tuple[str, int]]:
    """Return (path, input width) of every linear and embedding layer, in parameter order."""
    model = _unevaluated_model(config)
    modules = {
        path: module.weight.shape[-1]
        for path, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Embedding))
    }
    order = [name.removesuffix(".weight") for name, _ in tree_flatten(model.parameters())]
    return [(path, modules[path]) for path in order if path in modules]


def _output_tensors(
    weights: dict[str, mx.array],
    expected: dict[str, tuple[int, ...]],
    plan: QuantizationPlan,
    dtype: mx.Dtype,
) -> list[tuple[str, dict[str, mx.array]]]:
    """Return, per source tensor, its unevaluated output tensors by name.

    A quantized layer's weight becomes `weight`, `scales` and `biases`, with scales and biases in
    `dtype` as mlx-lm writes them. A `bias` stays exactly as the source stores it. Every other
    floating-point tensor is cast to `dtype`.
    """
    groups = []
    for name in expected:
        value = weights[name]
        module, _, kind = name.rpartition(".")
        settings = plan.layers.get(module) if kind == "weight" else None
        if settings is not None:
            group_size, bits = settings
            packed, scales, biases = mx.quantize(
                value.astype(dtype), group_size=group_size, bits=bits, mode="affine"
            )
            tensors = {
                f"{module}.weight": packed,
                f"{module}.scales": scales,
                f"{module}.biases": biases,
            }
        elif kind == "bias" or not mx.issubdtype(value.dtype, mx.floating):
            # NOTE: a float32 source (every GGUF import) keeps float32 biases. In MLX they promote
            # the activations from the q/k/v projections on, KV cache included, to float32.
            tensors = {name: value}
        else:
            tensors = {name: value.astype(dtype)}
        groups.append((name, tensors))
    return groups


def _write_shards(
    groups: list[tuple[str, dict[str, mx.array]]],
    out_dir: Path,
    max_shard_bytes: int,
    progress: Progress | None,
) -> int:
    """Evaluate and write the tensors shard by shard; return the bytes of all tensors."""
    shards = _assign_shards(groups, max_shard_bytes)
    names = _shard_names(len(shards))
    weight_map: dict[str, str] = {}
    total_bytes = 0
    done = 0

    def written(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(groups), label)

    for shard, file_name in zip(shards, names, strict=True):
        for _, outputs in shard:
            weight_map.update(dict.fromkeys(outputs, file_name))
            total_bytes += sum(value.nbytes for value in outputs.values())
        _write_safetensors(out_dir / file_name, shard, written)

    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=4) + "\n", encoding="utf-8")
    return total_bytes


def _assign_shards(
    groups: list[tuple[str, dict[str, mx.array]]], max_shard_bytes: int
) -> list[list[tuple[str, dict[str, mx.array]]]]:
    """Fill shards in order, starting a new one when the next source tensor's outputs would take
    a shard past `max_shard_bytes` (outputs larger than that get a shard of their own)."""
    shards: list[list[tuple[str, dict[str, mx.array]]]] = []
    shard_bytes = 0
    for group in groups:
        group_bytes = sum(value.nbytes for value in group[1].values())
        if not shards or shard_bytes + group_bytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(group)
        shard_bytes += group_bytes
    return shards


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _write_safetensors(
    path: Path, groups: list[tuple[str, dict[str, mx.array]]], written: Callable[[str], None]
) -> None:
    """Write one safetensors file, evaluating one group of tensors at a time, and call
    `written(label)` once each group is on disk.

    The header is written first, from the shapes and dtypes of the unevaluated tensors, so no
    tensor needs to stay in memory after it is written. Each group's dict is emptied once
    written, which frees its arrays. The layout is the safetensors format: an 8-byte
    little-endian header length, the JSON header (padded with spaces to a multiple of 8 bytes),
    then the tensors' bytes back to back in header order.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for _, outputs in groups:
        for name, value in outputs.items():
            header[name] = {
                "dtype": _safetensors_dtype(name, value.dtype),
                "shape": list(value.shape),
                "data_offsets": [offset, offset + value.nbytes],
            }
            offset += value.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)

    try:
        with path.open("wb") as file:
            file.write(struct.pack("<Q", len(encoded)))
            file.write(encoded)
            for label, outputs in groups:
                arrays = list(outputs.values())
                mx.eval(arrays)
                for value in arrays:
                    _write_tensor(file, value)
                del arrays
                outputs.clear()
                mx.clear_cache()
                written(label)
    except OSError as error:
        raise QwenEdgeError(
            f"writing {path.name} failed ({error}); check the free space in {path.parent.parent}"
        ) from error


def _safetensors_dtype(name: str, dtype: mx.Dtype) -> str:
    try:
        return SAFETENSORS_DTYPES[dtype]
    except KeyError:
        message = f"tensor {name} has dtype {dtype}, which safetensors cannot store"
        raise QwenEdgeError(message) from None


def _write_tensor(file: BinaryIO, value: mx.array) -> None:
    # Row-major bytes in the machine's byte order. safetensors requires little-endian, which is
    # the order of every platform MLX supports (Apple silicon, x86-64 and arm64 Linux).
    if not memoryview(value).c_contiguous:
        value = mx.contiguous(value)
    file.write(memoryview(value))


def _write_config(
    raw_config: dict[str, Any], plan: QuantizationPlan, dtype: str, out_dir: Path
) -> None:
    config = {key: value for key, value in raw_config.items() if key != "_name_or_path"}
    config["quantization"] = plan.config_block()
    # mlx-lm writes the same block under both names (the second for the Hugging Face Hub).
    config["quantization_config"] = plan.config_block()
    dtype_keys = [key for key in ("torch_dtype", "dtype") if key in config] or ["torch_dtype"]
    for key in dtype_keys:
        config[key] = dtype
    text = json.dumps(dict(sorted(config.items())), indent=4, ensure_ascii=False)
    (out_dir / "config.json").write_text(text + "\n", encoding="utf-8")


def _copy_tokenizer(source_dir: Path, out_dir: Path) -> None:
    if not (source_dir / "tokenizer.json").is_file() and not (source_dir / "vocab.json").is_file():
        raise QwenEdgeError(
            f"{source_dir} has no tokenizer (tokenizer.json, or vocab.json and merges.txt); copy "
            "the tokenizer files of the same model into it and convert again"
        )
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, out_dir / name)
    if not _has_chat_template(out_dir):
        log.warning(
            "%s has no chat template (in tokenizer_config.json or chat_template.jinja); the "
            "converted model can only be prompted with raw text",
            source_dir,
        )


def _has_chat_template(directory: Path) -> bool:
    if any((directory / name).is_file() for name in ("chat_template.jinja", "chat_template.json")):
        return True
    tokenizer_config = directory / "tokenizer_config.json"
    if not tokenizer_config.is_file():
        return False
    try:
        return bool(json.loads(tokenizer_config.read_text(encoding="utf-8")).get("chat_template"))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _write_generation_config(source_dir: Path, raw_config: dict[str, Any], out_dir: Path) -> None:
    source = source_dir / "generation_config.json"
    if source.is_file():
        shutil.copyfile(source, out_dir / source.name)
        return
    # mlx-lm's layout includes generation_config.json. Without one in the source, it gets
    # config.json's bos and eos ids.
    generation = {
        key: raw_config[key] for key in ("bos_token_id", "eos_token_id") if key in raw_config
    }
    text = json.dumps(generation, indent=2)
    (out_dir / "generation_config.json").write_text(text + "\n", encoding="utf-8")


def _directory_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir() if path.is_file())
