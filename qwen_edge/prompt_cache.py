"""Save a conversation's KV cache to disk and load it back, to resume without a new prefill.

A prompt cache file is safetensors: the filled part of each layer's keys and values, plus
metadata naming the cache kind, its settings, the token ids it contains and the shape of the model
that made it. Loading checks that shape against the model and raises CacheError on a mismatch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import mlx.core as mx

from qwen_edge.cache import KVCache
from qwen_edge.errors import CacheError
from qwen_edge.kv_quant import QuantizedKVCache
from qwen_edge.kv_rotating import RotatingKVCache
from qwen_edge.model import Qwen2Model

FORMAT_VERSION = "1"


def _model_shape(model: Qwen2Model) -> dict[str, int]:
    config = model.config
    return {
        "n_layers": config.n_layers,
        "n_kv_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
    }


def save_prompt_cache(
    path: str | Path, cache: KVCache, tokens: list[int], model: Qwen2Model
) -> Path:
    """Write `cache` (holding `tokens`) to `path` atomically: a temporary file beside it is
    renamed into place once complete."""
    path = Path(path)
    if path.is_dir():
        raise CacheError(f"prompt cache path {path} is a directory; give a file path")
    if cache.offset != len(tokens):
        raise CacheError(
            f"the cache contains {cache.offset} positions but {len(tokens)} token ids were given"
        )
    length = getattr(cache, "length", cache.offset)
    arrays: dict[str, mx.array] = {}
    for layer in range(cache.n_layers):
        for name, entry in (("keys", cache.keys[layer]), ("values", cache.values[layer])):
            if entry is None:
                continue
            parts = entry if isinstance(entry, tuple) else (entry,)
            for i, part in enumerate(parts):
                arrays[f"{layer}.{name}.{i}"] = part[..., :length, :]

    metadata = {
        "format": FORMAT_VERSION,
        "kind": type(cache).__name__,
        "offset": str(cache.offset),
        "length": str(length),
        "max_size": str(cache.max_size),
        "bits": str(cache.bits or 0),
        "group_size": str(cache.group_size),
        "keep": str(getattr(cache, "keep", 0)),
        "write_index": str(getattr(cache, "write_index", 0)),
        "tokens": json.dumps(tokens),
        "model": json.dumps(_model_shape(model)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        mx.save_safetensors(tmp, arrays, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_prompt_cache(path: str | Path, model: Qwen2Model) -> tuple[KVCache, list[int]]:
    """Return the cache stored in `path` and the token ids it holds."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"prompt cache {path} not found")
    try:
        arrays, metadata = mx.load(str(path), format="safetensors", return_metadata=True)
    except (RuntimeError, ValueError) as error:
        raise CacheError(f"{path} is not a readable prompt cache: {error}") from error
    if metadata.get("format") != FORMAT_VERSION:
        raise CacheError(
            f"{path} is not a qwen-edge prompt cache of format {FORMAT_VERSION} "
            f"(found {metadata.get('format')!r})"
        )
    shape = json.loads(metadata["model"])
    if shape != _model_shape(model):
        raise CacheError(
            f"prompt cache {path} was made by a model of shape {shape}, but this model has "
            f"{_model_shape(model)}; it cannot be reused"
        )

    cache = _empty_cache(metadata, model)
    length = int(metadata["length"])
    for layer in range(cache.n_layers):
        for name, target in (("keys", cache.keys), ("values", cache.values)):
            parts = [arrays[key] for key in sorted(arrays) if key.startswith(f"{layer}.{name}.")]
            if not parts:
                continue
            target[layer] = tuple(parts) if cache.bits else parts[0]
    cache.offset = int(metadata["offset"])
    if isinstance(cache, RotatingKVCache):
        cache.length = length
        cache.write_index = int(metadata["write_index"])
    return cache, json.loads(metadata["tokens"])


def _empty_cache(metadata: dict[str, str], model: Qwen2Model) -> KVCache:
    kind = metadata["kind"]
    max_size = int(metadata["max_size"])
    if kind == "KVCache":
        return KVCache.for_model(model.config, max_size)
    if kind == "QuantizedKVCache":
        return QuantizedKVCache.for_model(
            model.config,
            max_size,
            bits=int(metadata["bits"]),
            group_size=int(metadata["group_size"]),
        )
    if kind == "RotatingKVCache":
        return RotatingKVCache.for_model(model.config, max_size, keep=int(metadata["keep"]))
    raise CacheError(f"unknown prompt cache kind {kind!r}")
