"""The CPU backend's BLAS set-up: OpenBLAS ahead of MLX's bundled BLAS, and native/gemv.c sending
one-row and one-column float32 products to sgemv."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from qwen_edge import backend

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux", reason="the BLAS set-up applies to MLX's Linux CPU wheel only"
)


def test_gemv_library_built_and_bound():
    if backend.fast_blas is None:
        pytest.fail("no OpenBLAS was loaded; install libopenblas0-pthread (see README.md)")
    assert backend.gemv_shim_path() is not None, (
        "qwen_edge/_gemv*.so was not built; install a C compiler and run `pip install -e .` again"
    )
    assert backend.gemv_shim is not None
    assert "sgemv" in backend.blas_summary()


# (name, a's shape, b's shape, transpose a, transpose b): every way MLX can hand sgemm a product
# with one row or one column.
PRODUCTS = [
    ("row @ W.T", (1, 96), (40, 96), False, True),
    ("row @ W", (1, 96), (96, 40), False, False),
    ("column.T @ W.T", (96, 1), (40, 96), True, True),
    ("W @ column", (40, 96), (96, 1), False, False),
    ("W @ row.T", (40, 96), (1, 96), False, True),
    ("W.T @ column", (96, 40), (96, 1), True, False),
    ("row @ column (1 x 1)", (1, 96), (96, 1), False, False),
]


@pytest.mark.parametrize("name, a_shape, b_shape, transpose_a, transpose_b", PRODUCTS)
def test_vector_products_match_numpy(name, a_shape, b_shape, transpose_a, transpose_b):
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal(a_shape).astype(np.float32)
    b_np = rng.standard_normal(b_shape).astype(np.float32)
    a, b = mx.array(a_np), mx.array(b_np)
    if transpose_a:
        a, a_np = a.T, a_np.T
    if transpose_b:
        b, b_np = b.T, b_np.T

    calls = backend.gemv_calls()
    ours = np.array(a @ b)
    expected = a_np.astype(np.float64) @ b_np.astype(np.float64)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5, err_msg=name)
    assert backend.gemv_calls() > calls, f"{name} did not go to sgemv"


def test_addmm_alpha_beta_on_sgemv():
    rng = np.random.default_rng(1)
    c, a, b = (rng.standard_normal(s).astype(np.float32) for s in [(1, 40), (1, 96), (40, 96)])
    calls = backend.gemv_calls()
    ours = np.array(mx.addmm(mx.array(c), mx.array(a), mx.array(b).T, alpha=0.5, beta=2.0))
    np.testing.assert_allclose(ours, 0.5 * a @ b.T + 2.0 * c, rtol=1e-5, atol=1e-5)
    assert backend.gemv_calls() > calls


def test_uninitialised_output_ignored():
    # Fill MLX's allocator with NaN buffers of the output's size, free them, then multiply: an
    # sgemv that read its output before writing it would return NaN.
    for _ in range(4):
        mx.eval(mx.full((1, 4096), float("nan")))
    x, w = mx.ones((1, 64)), mx.ones((4096, 64))
    assert np.array(x @ w.T).tolist() == [[64.0] * 4096]


def test_wider_products_use_sgemm():
    calls = backend.gemv_calls()
    a, b = mx.ones((3, 32)), mx.ones((32, 5))
    assert np.array(a @ b).tolist() == [[32.0] * 5] * 3
    assert backend.gemv_calls() == calls


def test_logits_equal_without_gemv(tiny_checkpoint):
    # Two processes, because the library can only be chosen before mlx is first imported.
    directory = tiny_checkpoint()
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from qwen_edge import ModelConfig, backend\n"
        "from qwen_edge.loader import load_model\n"
        "import mlx.core as mx\n"
        "directory = Path(sys.argv[1])\n"
        "model = load_model(directory, ModelConfig.from_file(directory), dtype='float32')\n"
        "cache = model.make_cache()\n"
        "model(mx.array([[3, 1, 4, 1, 5]]), cache)\n"
        "logits = model(mx.array([[9]]), cache).tolist()\n"
        "print(json.dumps({'calls': backend.gemv_calls(), 'logits': logits}))\n"
    )

    def run(gemv: str) -> dict:
        env = {**os.environ, "QWEN_EDGE_GEMV": gemv}
        out = subprocess.run(
            [sys.executable, "-c", script, str(directory)],
            env=env,
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    with_gemv, without = run("on"), run("off")
    assert with_gemv["calls"] > 0
    assert without["calls"] == 0
    np.testing.assert_allclose(with_gemv["logits"], without["logits"], rtol=1e-5, atol=1e-5)
