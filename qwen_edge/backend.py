"""Choices that depend on the MLX backend in use.

The Linux `mlx-cpu` wheel bundles the reference BLAS, which multiplies float32 matrices about
25 times slower than OpenBLAS (a 2048 x 2048 matmul: 4.8 s vs 0.19 s, measured with mlx 0.32 on
a 2-core x86 machine). If the system has OpenBLAS (Debian and Ubuntu: libopenblas0-pthread),
loading it with RTLD_GLOBAL before MLX puts its cblas functions ahead of the bundled ones. This
happens when qwen_edge is imported, so it only takes effect if mlx was not imported earlier.
Set QWEN_EDGE_BLAS=off to keep the bundled BLAS, or to a library path to choose another.

MLX does every float32 matmul with cblas_sgemm, and OpenBLAS 0.3.21 runs a one-row product (each
decode step's x @ W.T) about half as fast as cblas_sgemv. When it was built (a C compiler at
install time), the small library from qwen_edge/native/gemv.c is loaded ahead of OpenBLAS and
sends those products to sgemv. QWEN_EDGE_GEMV=off leaves them to sgemm.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.machinery
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

# The library that sends MLX's one-row float32 products to sgemv (native/gemv.c), or None.
gemv_shim: ctypes.CDLL | None = None


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
            # Locally first: the sgemv library must come before OpenBLAS in the global scope.
            ctypes.CDLL(candidate, mode=os.RTLD_LOCAL)
        except OSError as error:
            log.debug("cannot load %s: %s", candidate, error)
            continue
        load_gemv_shim(candidate)
        ctypes.CDLL(candidate, mode=os.RTLD_GLOBAL)
        fast_blas = candidate
        return candidate
    return None


def gemv_shim_path() -> Path | None:
    """Return the built native/gemv.c library next to this file, or None if it was not built."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = Path(__file__).with_name("_gemv" + suffix)
        if path.exists():
            return path
    return None


def load_gemv_shim(blas: str) -> None:
    """Put native/gemv.c's cblas_sgemm ahead of `blas`, bound to that library's sgemm/sgemv."""
    global gemv_shim
    path = gemv_shim_path()
    if os.environ.get("QWEN_EDGE_GEMV", "") == "off" or path is None:
        return
    try:
        shim = ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL)
    except OSError as error:
        log.debug("cannot load %s: %s", path, error)
        return
    shim.qwen_edge_gemv_bind.argtypes = [ctypes.c_char_p]
    shim.qwen_edge_gemv_calls.restype = ctypes.c_ulonglong
    if shim.qwen_edge_gemv_bind(os.fsencode(blas)) != 0:
        # NOTE: the library stays loaded. Unbound, it passes every call to the next cblas_sgemm.
        log.debug("%s has no cblas_sgemm/cblas_sgemv; products stay with sgemm", blas)
        return
    gemv_shim = shim


def gemv_calls() -> int:
    """Return how many float32 products went to sgemv so far (0 without the sgemv library)."""
    return int(gemv_shim.qwen_edge_gemv_calls()) if gemv_shim is not None else 0


def blas_summary() -> str:
    """Describe the BLAS that serves MLX's CPU matmuls, for reports."""
    if fast_blas is None:
        return "bundled with mlx"
    return fast_blas + (" + sgemv for one-row products" if gemv_shim is not None else "")


load_fast_blas()
