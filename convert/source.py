"""Where a conversion reads its checkpoint from: a directory, a store name, a GGUF file, or a
Hugging Face repo id (downloaded into huggingface_hub's standard cache)."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qwen_edge import store
from qwen_edge.errors import QwenEdgeError

log = logging.getLogger("qwen_edge.convert")

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Everything a safetensors checkpoint needs; pickle weights (*.bin, *.pt) are never downloaded.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class Source:
    """A checkpoint directory ready to read, and what it was made from."""

    path: Path
    origin: str  # "directory", "store", "gguf" or "hub"
    quantized: bool  # already quantized (an mlx-lm quantized model or a quantized GGUF)
    description: str


def is_repo_id(text: str) -> bool:
    return bool(REPO_ID.match(text)) and not Path(text).exists()


@contextmanager
def open_source(
    src: str | Path, progress: Callable[[int, int, str], None] | None = None
) -> Iterator[Source]:
    """Yield the checkpoint named by `src`; a GGUF file is imported into a temporary directory
    that is removed afterwards."""
    text = str(src)
    path = Path(text).expanduser()

    if path.is_dir():
        yield _directory_source(path, "directory")
    elif path.is_file() and path.suffix.lower() == ".gguf":
        with _imported_gguf(path, progress) as source:
            yield source
    elif path.is_file():
        raise QwenEdgeError(
            f"{path} is a file but not a .gguf; give a checkpoint directory, a .gguf file or a "
            "Hugging Face repo id"
        )
    elif store.find(text) is not None:
        yield _directory_source(store.find(text), "store")
    elif is_repo_id(text):
        yield _directory_source(download(text), "hub")
    else:
        raise QwenEdgeError(
            f"source {text!r} not found: it is not a directory, a .gguf file, a model in the "
            f"store ({store.models_dir()}) or a Hugging Face repo id such as "
            "Qwen/Qwen2.5-0.5B-Instruct"
        )


def _directory_source(path: Path, origin: str) -> Source:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise QwenEdgeError(f"{path} has no config.json; is it a Hugging Face checkpoint?")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise QwenEdgeError(f"{config_file} is not valid JSON: {error}") from error
    quantized = bool(config.get("quantization") or config.get("quantization_config"))
    return Source(path, origin, quantized, f"{origin} {path}")


@contextmanager
def _imported_gguf(
    path: Path, progress: Callable[[int, int, str], None] | None
) -> Iterator[Source]:
    from gguf import GGMLQuantizationType

    from qwen_edge.convert.gguf_import import check_gguf_header, import_gguf

    float_types = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
    header = check_gguf_header(path)
    quantized = any(info.ggml_type not in float_types for info in header.tensors)
    with tempfile.TemporaryDirectory(prefix="qwen-edge-gguf-") as tmp:
        directory = import_gguf(path, Path(tmp) / "hf", dtype="float32", progress=progress)
        yield Source(directory, "gguf", quantized, f"GGUF {path}")


def download(repo_id: str, revision: str | None = None) -> Path:
    """Download the safetensors checkpoint `repo_id` into huggingface_hub's cache (files already
    there are reused) and return its snapshot directory."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot = snapshot_download(repo_id, revision=revision, allow_patterns=DOWNLOAD_PATTERNS)
    except LocalEntryNotFoundError as error:
        raise QwenEdgeError(
            f"cannot download {repo_id}: the Hugging Face hub is unreachable and the repo is not "
            "in the local cache; connect to the network, or give a local directory"
        ) from error
    except HfHubHTTPError as error:
        raise QwenEdgeError(f"downloading {repo_id} failed: {error}") from error
    path = Path(snapshot)
    if not any(path.glob("*.safetensors")):
        raise QwenEdgeError(
            f"{repo_id} has no safetensors weights; pickle checkpoints (.bin, .pt) are not "
            "loaded because they can run code"
        )
    return path
