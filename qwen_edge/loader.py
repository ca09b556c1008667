"""Load a Qwen2.5 checkpoint (Hugging Face or mlx-lm layout) into the native decoder."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from qwen_edge import backend
from qwen_edge.config import ModelConfig
from qwen_edge.cpu_layout import transpose_wide_linears
from qwen_edge.errors import CheckpointError
from qwen_edge.model import Qwen2Model
from qwen_edge.tokenizer import Tokenizer

log = logging.getLogger("qwen_edge")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def load(
    path: str | Path,
    dtype: str | None = None,
    lazy: bool = False,
    layout: str = "auto",
    fuse: bool = True,
) -> tuple[Qwen2Model, Tokenizer]:
    """Load the model and tokenizer in `path`: a directory or the name of a model in the store.

    `dtype` ("float32", "bfloat16", "float16") casts floating-point weights; None keeps the stored
    dtype. `layout` decides what happens to quantized layers (see `choose_layout`). `fuse` merges
    q/k/v and gate/up into single matmuls (see `Qwen2Model.fuse_projections`).
    """
    directory = resolve_model_path(path)
    config = ModelConfig.from_file(directory)
    if dtype is None and layout == "auto":
        dtype = backend_dtype(config)
    model = load_model(directory, config, dtype=dtype, lazy=lazy, layout=layout, fuse=fuse)
    tokenizer = Tokenizer.from_pretrained(directory, config.eos_token_ids)
    return model, tokenizer


def resolve_model_path(path: str | Path) -> Path:
    """Return the directory for `path`, looking it up in the local model store when it is not an
    existing path."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        return candidate
    from qwen_edge import store

    stored = store.find(str(path))
    if stored is not None:
        return stored
    if candidate.exists():
        raise CheckpointError(
            f"{candidate} is a file, not a model directory; for a GGUF file run "
            f"`qwen-edge convert {candidate} OUT --to hf` first"
        )
    raise CheckpointError(
        f"model {str(path)!r} not found: it is neither a directory nor a model in the store "
        f"({store.models_dir()}); `qwen-edge models` lists the stored models"
    )


def load_model(
    directory: Path,
    config: ModelConfig,
    dtype: str | None = None,
    lazy: bool = False,
    layout: str = "auto",
    fuse: bool = False,
) -> Qwen2Model:
    """Build the decoder for `config` and fill it with the weights in `directory`."""
    weights = read_weights(directory)
    weights = _drop_redundant(weights, config)

    model = Qwen2Model(config)
    if config.quantization is not None:
        _quantize_like_checkpoint(model, config, weights)

    _check_tensors(model, weights, directory)
    if dtype is not None:
        # An untied embedding table is only indexed, so widening it buys nothing: it keeps a
        # narrower stored dtype and the model casts the rows it looks up.
        keep = () if config.tie_word_embeddings else ("model.embed_tokens.weight",)
        weights = _cast(weights, dtype, keep_narrower=keep)
    model.load_weights(list(weights.items()), strict=True)
    del weights
    model.weight_layout = "float"
    if config.quantization is not None:
        model.weight_layout = choose_layout(layout, model)
        if model.weight_layout == "float":
            dequantize_model(
                model,
                DTYPES[dtype] if dtype else None,
                keep_embedding=not config.tie_word_embeddings,
            )
    if not lazy:
        _eval_one_by_one(model)
    if fuse:
        model.fuse_projections(evaluate=not lazy)
    if wants_transposed_layout(model):
        transpose_wide_linears(model, evaluate=not lazy)
    if not lazy:
        mx.clear_cache()
    model.eval()
    return model


def _eval_one_by_one(model: Qwen2Model) -> None:
    """Evaluate the parameters one tensor at a time. A cast or dequantized weight then frees its
    source before the next is read, so the peak stays near the final size instead of the sum of
    both forms."""
    for _, parameter in tree_flatten(model.parameters()):
        mx.eval(parameter)


def wants_transposed_layout(model: Qwen2Model) -> bool:
    """Return True on the CPU backend when native/gemv.c is loaded and the layers compute in
    float32, where the wide projections run faster stored as [in, out] (see cpu_layout.py)."""
    if mx.default_device() != mx.cpu or backend.gemv_shim is None:
        return False
    return model.dtype == mx.float32


def backend_dtype(config: ModelConfig) -> str | None:
    """Return the dtype to compute in when the caller names none, or None for the stored one.

    That is float32 on the CPU backend when a fast BLAS is loaded, because MLX's CPU matmuls go
    through BLAS only in float32, and when the float32 weights take at most half of the
    physical memory.
    """
    if mx.default_device() != mx.cpu or backend.fast_blas is None:
        return None
    n_params = config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)
    per_layer = config.hidden_size * (config.n_heads + 2 * config.n_kv_heads) * config.head_dim
    per_layer += config.n_heads * config.head_dim * config.hidden_size
    per_layer += 3 * config.hidden_size * config.intermediate_size
    n_params += config.n_layers * per_layer
    if 4 * n_params > _physical_memory() // 2:
        return None
    return "float32"


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_layout(layout: str, model: Qwen2Model) -> str:
    """Return "quantized" or "float" for a quantized checkpoint.

    "auto" keeps quantized layers on Metal and CUDA, whose quantized matmuls are fast. MLX's CPU
    backend runs quantized matmuls far slower than float ones (measured with mlx 0.32 on x86:
    0.27 vs 2.5 tokens/s for Qwen2.5-0.5B at 4 bits vs bf16), so on the CPU the layers are
    dequantized to float at load, unless the float weights would take more than half of the
    physical memory.
    """
    if layout not in ("auto", "quantized", "float"):
        raise CheckpointError(f"layout {layout!r} is not one of auto, quantized, float")
    if layout != "auto":
        return layout
    if mx.default_device() != mx.cpu:
        return "quantized"
    float_bytes = 2 * sum(
        module.weight.size * 32 // module.bits
        for _, module in model.named_modules()
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))
    )
    if float_bytes > _physical_memory() // 2:
        log.warning(
            "keeping quantized layers on the CPU backend (slow): their float form needs %.1f GB",
            float_bytes / 1e9,
        )
        return "quantized"
    return "float"


def dequantize_model(
    model: Qwen2Model, dtype: mx.Dtype | None = None, keep_embedding: bool = False
) -> None:
    """Replace every quantized layer with a float layer holding its dequantized weights (in
    `dtype`, default the dtype of its scales).

    `keep_embedding`: leave a quantized embedding table as it is. An untied table is only
    indexed, and looking up a few quantized rows is cheap on every backend.
    """
    replacements = []
    for path, module in model.named_modules():
        if keep_embedding and isinstance(module, nn.QuantizedEmbedding):
            continue
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            replacements.append((path, _dequantized(module, dtype)))
    model.update_modules(tree_unflatten(replacements))


def _dequantized(module: nn.Module, dtype: mx.Dtype | None) -> nn.Module:
    weight = mx.dequantize(
        module.weight,
        module.scales,
        module.biases,
        group_size=module.group_size,
        bits=module.bits,
        mode=module.mode,
    ).astype(dtype or module.scales.dtype)
    if isinstance(module, nn.QuantizedEmbedding):
        layer = nn.Embedding(*weight.shape)
    else:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in module)
        if "bias" in module:
            layer.bias = module.bias
    layer.weight = weight
    return layer


def weight_files(directory: Path) -> list[Path]:
    """Return the safetensors files of a checkpoint, in the order its index names them."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index} is not a valid safetensors index: {error}") from error
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{index} names shards that are not in {directory}: {', '.join(missing)}; "
                "download the checkpoint again"
            )
        return files

    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise CheckpointError(
            f"{directory} contains only pickle checkpoints ({', '.join(pickled)}), which can run "
            "arbitrary code when loaded and are refused; use the checkpoint's safetensors "
            "version, or convert it with safetensors' own tools in a sandbox you trust"
        )
    raise CheckpointError(f"no *.safetensors weights found in {directory}")


def read_weights(directory: Path) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for file in weight_files(directory):
        try:
            weights.update(mx.load(str(file)))
        except (RuntimeError, ValueError) as error:
            raise CheckpointError(
                f"{file} is not a readable safetensors file ({error}); download it again"
            ) from error
    return weights


def _drop_redundant(weights: dict[str, mx.array], config: ModelConfig) -> dict[str, mx.array]:
    """Drop tensors that carry nothing new: RoPE frequency buffers (recomputed from the config)
    and an `lm_head` that some tied checkpoints store anyway."""
    kept = {}
    for name, value in weights.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if config.tie_word_embeddings and name.startswith("lm_head."):
            continue
        kept[name] = value
    return kept


def _quantize_like_checkpoint(
    model: Qwen2Model, config: ModelConfig, weights: dict[str, mx.array]
) -> None:
    """Swap in quantized layers wherever the checkpoint stores `scales` (mlx-lm's format)."""
    quantization = config.quantization
    assert quantization is not None

    def predicate(path: str, module: nn.Module) -> bool | dict[str, int | str]:
        if f"{path}.scales" not in weights:
            return False
        settings = quantization.for_module(path)
        if settings is None:
            return False
        group_size, bits = settings
        return {"group_size": group_size, "bits": bits, "mode": quantization.mode}

    nn.quantize(model, class_predicate=predicate)


def _check_tensors(model: Qwen2Model, weights: dict[str, mx.array], directory: Path) -> None:
    expected = {name: tuple(p.shape) for name, p in tree_flatten(model.parameters())}
    check_tensor_shapes(weights, expected, directory)


def check_tensor_shapes(
    weights: dict[str, mx.array], expected: dict[str, tuple[int, ...]], directory: Path
) -> None:
    """Raise CheckpointError naming the first tensor of `expected` that `weights` lacks or has
    in another shape, or the tensors `weights` has beyond `expected`."""
    for name, shape in expected.items():
        if name not in weights:
            raise CheckpointError(
                f"tensor {name} (shape {shape}) is missing from {directory}; the "
                "checkpoint is incomplete or its config.json describes another model"
            )
        found = tuple(weights[name].shape)
        if found != shape:
            raise CheckpointError(
                f"tensor {name} in {directory} has shape {found}, but config.json "
                f"implies {shape}; the weights and config.json do not match"
            )
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise CheckpointError(
            f"{directory} contains {len(unexpected)} tensors this Qwen2 decoder does not use: "
            f"{shown}; is it another architecture?"
        )


def _cast(
    weights: dict[str, mx.array], dtype: str, keep_narrower: tuple[str, ...] = ()
) -> dict[str, mx.array]:
    """Cast the floating-point tensors to `dtype`, except those named in `keep_narrower` whose
    stored dtype is already narrower than `dtype`."""
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    target = DTYPES[dtype]
    cast = {}
    for name, value in weights.items():
        floating = mx.issubdtype(value.dtype, mx.floating)
        already_narrower = name in keep_narrower and value.dtype.size < target.size
        cast[name] = value.astype(target) if floating and not already_narrower else value
    return cast
