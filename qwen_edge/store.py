"""The local model store: prepared models kept by name under the user's data directory.

Layout under `home()`:
    models/NAME/    one model directory (config.json, weights, tokenizer files)
    gguf/           GGUF files assembled or downloaded for import
The data directory is platformdirs' user data directory for "qwen-edge" unless the environment
variable QWEN_EDGE_HOME names another.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_data_dir

from qwen_edge.errors import QwenEdgeError

DEMO_MODEL = "qwen2.5-coder-0.5b-instruct"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def home() -> Path:
    override = os.environ.get("QWEN_EDGE_HOME")
    return Path(override).expanduser() if override else Path(user_data_dir("qwen-edge"))


def models_dir() -> Path:
    return home() / "models"


def gguf_dir() -> Path:
    return home() / "gguf"


def default_model() -> str:
    """Return the model used when none is given: $QWEN_EDGE_MODEL, else the demo model."""
    return os.environ.get("QWEN_EDGE_MODEL") or DEMO_MODEL


def is_store_name(name: str) -> bool:
    """True for a plain name such as `qwen2.5-0.5b-q4` (no path separators)."""
    return bool(NAME_PATTERN.match(name))


def path_for(name: str) -> Path:
    """Return where the model `name` lives (or will live) in the store."""
    if not is_store_name(name):
        raise QwenEdgeError(
            f"{name!r} is not a valid model name: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return models_dir() / name


def find(name: str) -> Path | None:
    """Return the directory of the stored model `name`, or None if there is none."""
    if not is_store_name(name):
        return None
    candidate = models_dir() / name
    return candidate if (candidate / "config.json").is_file() else None


@dataclass(frozen=True)
class StoredModel:
    name: str
    path: Path
    size_bytes: int
    quantization: str  # "bf16", "4-bit (group 64)", ...


def list_models() -> list[StoredModel]:
    """Return the models in the store, sorted by name."""
    root = models_dir()
    if not root.is_dir():
        return []
    models = []
    for directory in sorted(root.iterdir()):
        config_file = directory / "config.json"
        if directory.name.startswith(".") or not config_file.is_file():
            continue  # hidden entries are unfinished conversions
        size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
        models.append(StoredModel(directory.name, directory, size, _describe(config_file)))
    return models


def _describe(config_file: Path) -> str:
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "unreadable config.json"
    block = raw.get("quantization")
    if block:
        return f"{block.get('bits')}-bit (group {block.get('group_size')})"
    dtype = raw.get("torch_dtype") or raw.get("dtype") or "unknown dtype"
    return {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}.get(dtype, dtype)
