"""Choices that depend on the MLX backend in use.

The Linux `mlx-cpu` wheel bundles the reference BLAS, which multiplies float32 matrices about
25 times slower than OpenBLAS (a 2048 x 2048 matmul: 4.8 s vs 0.19 s, measured with mlx 0.32 on
a 2-core x86 machine). If the system has OpenBLAS (Debian and Ubuntu: libopenblas0-pthread),
loading it with RTLD_GLOBAL before MLX puts its cblas functions ahead of the bundled ones. This
happens when qwen_edge is imported, so it only takes effect if mlx was not imported earlier.
Set QWEN_EDGE_BLAS=off to keep the bundled BLAS, or to a library path to choose another.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys
from pathlib import Path

log = logging.getLogger("qwen_edge")

OPENBLAS_PATHS = [
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
]

# The BLAS library loaded ahead of MLX's bundled one, or None.
fast_blas: str | None = None


def load_fast_blas() -> str | None:
    """Load the system OpenBLAS for MLX's CPU backend on Linux; return its path, or None."""
    global fast_blas
    setting = os.environ.get("QWEN_EDGE_BLAS", "")
    if platform.system() != "Linux" or setting == "off" or fast_blas is not None:
        return fast_blas
    if "mlx.core" in sys.modules:
        log.debug("mlx was imported before qwen_edge; keeping its bundled BLAS")
        return None

    arch = platform.machine()
    candidates = [setting] if setting else [p.format(arch=arch) for p in OPENBLAS_PATHS]
    found = ctypes.util.find_library("openblas")
    if found and not setting:
        candidates.append(found)
    for candidate in candidates:
        if candidate.startswith("/") and not Path(candidate).exists():
            continue
        try:
            ctypes.CDLL(candidate, mode=os.RTLD_GLOBAL)
        except OSError as error:
            log.debug("cannot load %s: %s", candidate, error)
            continue
        fast_blas = candidate
        return candidate
    return None


load_fast_blas()
