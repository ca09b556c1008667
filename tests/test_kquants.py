"""The numpy K-quants against ggml's own quantizer, block for block."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

import qwen_edge.convert.kquants as kquants
from llama_helpers import ggml_quantize
from qwen_edge.convert.kquants import quantize_k, quantize_q4_k, quantize_q5_k, quantize_q6_k

K_TYPES = [GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K]


def weight_cases() -> dict[str, np.ndarray]:
    """Rows of 512 values shaped like the hard cases of real weights."""
    rng = np.random.default_rng(1234)
    gaussian = rng.standard_normal((64, 512)).astype(np.float32) * 0.05
    with_zero_blocks = gaussian.copy()
    with_zero_blocks[:, 32:64] = 0  # one zero block of 32 inside a super-block
    with_zero_blocks[:, 256:272] = 0  # one zero block of 16
    outliers = gaussian.copy()
    outliers[rng.random(outliers.shape) < 0.002] = 3.0
    return {
        "gaussian": gaussian,
        "heavy tails": (rng.standard_t(2, (64, 512)) * 0.02).astype(np.float32),
        "all positive": np.abs(gaussian),
        "all negative": -np.abs(gaussian),
        "sparse": gaussian * (rng.random(gaussian.shape) < 0.05),
        "zero blocks": with_zero_blocks,
        "outliers": outliers,
        "constant": np.full((4, 512), 0.25, dtype=np.float32),
        "negative constant": np.full((4, 512), -0.5, dtype=np.float32),
        "zeros": np.zeros((4, 512), dtype=np.float32),
        "tiny": gaussian * 1e-6,
        "bfloat16 grid": (np.round(gaussian * 4096) / 4096).astype(np.float32),
    }


@pytest.mark.parametrize("ggml_type", K_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", list(weight_cases()))
def test_blocks_match_ggml(case, ggml_type):
    values = weight_cases()[case]
    ours = quantize_k(values, ggml_type)
    reference = ggml_quantize(values, ggml_type)
    _, block_bytes = GGML_QUANT_SIZES[ggml_type]
    differing = (ours.reshape(-1, block_bytes) != reference.reshape(-1, block_bytes)).any(axis=1)
    assert ours.shape == reference.shape
    assert not differing.any(), (
        f"{differing.sum()} of {differing.size} {ggml_type.name} blocks differ from ggml's; "
        f"first at block {np.flatnonzero(differing)[0]}"
    )


@pytest.mark.parametrize(
    ("ggml_type", "max_nmse"),
    [
        (GGMLQuantizationType.Q4_K, 8e-3),
        (GGMLQuantizationType.Q5_K, 2e-3),
        (GGMLQuantizationType.Q6_K, 5e-4),
    ],
    ids=lambda value: getattr(value, "name", str(value)),
)
def test_round_trip_error(ggml_type, max_nmse):
    values = weight_cases()["gaussian"]
    restored = dequantize(quantize_k(values, ggml_type), ggml_type)
    nmse = float(((restored - values) ** 2).mean() / (values**2).mean())
    assert restored.shape == values.shape
    assert nmse < max_nmse


@pytest.mark.parametrize("ggml_type", K_TYPES, ids=lambda t: t.name)
def test_zeros_and_constants_restore_exactly(ggml_type):
    zeros = np.zeros((2, 256), dtype=np.float32)
    constant = np.full((2, 256), -0.5, dtype=np.float32)
    assert (dequantize(quantize_k(zeros, ggml_type), ggml_type) == 0).all()
    restored = dequantize(quantize_k(constant, ggml_type), ggml_type)
    np.testing.assert_allclose(restored, constant, rtol=1e-3)


@pytest.mark.parametrize("ggml_type", K_TYPES, ids=lambda t: t.name)
def test_chunking_does_not_change_blocks(monkeypatch, ggml_type):
    values = weight_cases()["heavy tails"]
    whole = quantize_k(values, ggml_type)
    monkeypatch.setattr(kquants, "CHUNK_SUPER_BLOCKS", 3)
    assert (quantize_k(values, ggml_type) == whole).all()


def test_output_layout():
    values = weight_cases()["gaussian"][:3]  # 3 rows of 2 super-blocks
    assert quantize_q4_k(values).shape == (3, 2 * 144)
    assert quantize_q5_k(values).shape == (3, 2 * 176)
    assert quantize_q6_k(values).shape == (3, 2 * 210)
    assert quantize_q4_k(values).dtype == np.uint8
    assert quantize_q4_k(values[0]).shape == (2 * 144,)


def test_rejects_rows_not_multiple_of_256():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_q4_k(np.zeros((2, 896), dtype=np.float32))


def test_rejects_other_types():
    with pytest.raises(ValueError, match="Q8_0"):
        quantize_k(np.zeros((1, 256), dtype=np.float32), GGMLQuantizationType.Q8_0)


def test_float16_and_float64_input():
    values = weight_cases()["gaussian"][:4]
    expected = quantize_q4_k(values)
    assert (quantize_q4_k(values.astype(np.float64)) == expected).all()
    halves = values.astype(np.float16)
    assert (quantize_q4_k(halves) == quantize_q4_k(halves.astype(np.float32))).all()
