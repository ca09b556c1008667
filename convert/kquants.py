"""Q4_K, Q5_K and Q6_K quantizers in numpy, bit-compatible with llama.cpp's reference path.

llama.cpp (ggml/src/ggml-quants.c) quantizes a K-quant tensor without an importance matrix with
`quantize_row_q4_K_ref`, `quantize_row_q5_K_ref` and `quantize_row_q6_K_ref`. This module follows
the same algorithms, vectorised over all blocks of a tensor: a Python loop runs only over the
values inside one block and over the candidate scales, never over blocks.

Bit-identity with llama.cpp needs float32 arithmetic in the same order as the C code:

- sums over the values of a block run in index order (`_sequential_sum`), never pairwise;
- `nearest_int` adds 1.5 * 2**23 to a float32, which rounds half to even, as `np.rint` does;
- fp16 scales round to nearest even, as numpy's float16 conversion does.

numpy rounds `a * b + c` twice. So does ggml-base as llama-cpp-python 0.3.36 builds it on
x86-64 (gcc -O3 with no -march flag, so no FMA instructions), and tests/test_kquants.py checks
every block against that library.

NOTE: a ggml built for a target with FMA (arm64, or x86-64 with -march=native) may fuse
`a * b + c` in these loops, and then a few blocks can differ from ours in their last bits.

A super-block contains 256 values (QK_K). Q4_K and Q5_K split it into 8 blocks of 32 values with a
6-bit scale and a 6-bit min each. Q6_K splits it into 16 blocks of 16 values with an 8-bit scale.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QK_K = 256
# Super-blocks quantized per step: bounds the working memory (~12 MB of float32 temporaries)
# independently of the tensor size.
CHUNK_SUPER_BLOCKS = 1024
# All-zero threshold of llama.cpp's make_qx_quants and quantize_row_q6_K_ref (GROUP_MAX_EPS).
GROUP_MAX_EPS = np.float32(1e-15)

F32 = np.float32


def quantize_k(values: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    """Quantize float `values` of shape (..., n) to Q4_K, Q5_K or Q6_K blocks.

    Returns uint8 bytes of shape (..., n // 256 * block_bytes), the layout GGUF stores. Raises
    ValueError when n is not a multiple of 256 or `ggml_type` is not one of the three.
    """
    if ggml_type not in _QUANTIZERS:
        names = ", ".join(t.name for t in _QUANTIZERS)
        raise ValueError(f"quantize_k supports {names}, not {ggml_type.name}")
    values = np.asarray(values)
    n = values.shape[-1]
    if n % QK_K:
        raise ValueError(
            f"rows of {n} values cannot be quantized to {ggml_type.name}: K-quants need a "
            f"multiple of {QK_K}; use a 32-wide fallback type such as Q5_0 or Q8_0"
        )

    _, block_bytes = GGML_QUANT_SIZES[ggml_type]
    blocks = values.reshape(-1, QK_K)
    out = np.empty((blocks.shape[0], block_bytes), dtype=np.uint8)
    quantize_blocks = _QUANTIZERS[ggml_type]
    for start in range(0, blocks.shape[0], CHUNK_SUPER_BLOCKS):
        chunk = blocks[start : start + CHUNK_SUPER_BLOCKS].astype(F32)
        out[start : start + CHUNK_SUPER_BLOCKS] = quantize_blocks(chunk)
    return out.reshape(*values.shape[:-1], n // QK_K * block_bytes)


def quantize_q4_k(values: np.ndarray) -> np.ndarray:
    """Quantize float `values` (..., n), n a multiple of 256, to Q4_K blocks of 144 bytes."""
    return quantize_k(values, GGMLQuantizationType.Q4_K)


def quantize_q5_k(values: np.ndarray) -> np.ndarray:
    """Quantize float `values` (..., n), n a multiple of 256, to Q5_K blocks of 176 bytes."""
    return quantize_k(values, GGMLQuantizationType.Q5_K)


def quantize_q6_k(values: np.ndarray) -> np.ndarray:
    """Quantize float `values` (..., n), n a multiple of 256, to Q6_K blocks of 210 bytes."""
    return quantize_k(values, GGMLQuantizationType.Q6_K)


# Helpers shared by the three types. Arrays of per-value data are laid out [value, block] so that
# the value loops of the C code become loops over contiguous rows.


def _sequential_sum(terms: np.ndarray) -> np.ndarray:
    """Sum `terms` [n, blocks] over n in index order, rounding to float32 after every addition
    like a C `for` loop (numpy's own sum adds pairwise, which rounds differently)."""
    total = terms[0].copy()
    for row in terms[1:]:
        total += row
    return total


def _nearest_int(values: np.ndarray) -> np.ndarray:
    """Round float32 `values` half to even, as llama.cpp's nearest_int does."""
    return np.rint(values)


def _to_fp16(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16)


def _first_argmax(values: np.ndarray, axis: int) -> np.ndarray:
    """Index of the first maximum, as a C loop with a strict `>` finds it."""
    return np.expand_dims(np.argmax(values, axis=axis), axis)


# Q4_K and Q5_K: affine blocks of 32 (scale and min), llama.cpp's make_qkx2_quants.


def _make_qkx2_quants(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit scale and min of each block in x [32, blocks] to levels 0..nmax.

    Tries nstep + 1 candidate scales around nmax / (max - min) and keeps the one with the least
    weighted squared error, refitting scale and min by weighted least squares for each. Returns
    (scale [blocks], the negated min [blocks], levels [32, blocks] as float32).
    """
    x_min = np.minimum(x.min(axis=0), F32(0))
    x_max = x.max(axis=0)
    flat = x_max == x_min
    sum_w = _sequential_sum(weights)
    sum_x = _sequential_sum(weights * x)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / (x_max - x_min)
        scale = F32(1) / iscale
        levels = np.clip(_nearest_int(iscale * (x - x_min)), 0, nmax)
        best_error = _weighted_squared_error(scale, levels, x_min, x, weights)
        minimum = x_min

        for step in range(nstep + 1):
            # The candidates are spread over the range from the best min found so far, as in
            # llama.cpp, so each step depends on the previous ones.
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (x_max - minimum)
            candidate = np.clip(_nearest_int(iscale * (x - minimum)), 0, nmax)
            weighted = weights * candidate
            sum_l = _sequential_sum(weighted)
            sum_l2 = _sequential_sum(weighted * candidate)
            sum_xl = _sequential_sum(weighted * x)

            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            # A positive min cannot be stored because the min is subtracted, so refit the scale
            # alone.
            positive = this_min > 0
            this_min = np.where(positive, F32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)

            error = _weighted_squared_error(this_scale, candidate, this_min, x, weights)
            better = (det > 0) & (error < best_error)
            levels = np.where(better, candidate, levels)
            best_error = np.where(better, error, best_error)
            scale = np.where(better, this_scale, scale)
            minimum = np.where(better, this_min, minimum)

    # A block whose values are all equal (after clamping the min to 0) gets level 0 everywhere.
    scale = np.where(flat, F32(0), scale)
    minimum = np.where(flat, x_min, minimum)
    levels = np.where(flat, F32(0), levels)
    return scale, -minimum, levels


def _weighted_squared_error(
    scale: np.ndarray, levels: np.ndarray, minimum: np.ndarray, x: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    diff = scale * levels + minimum - x
    return _sequential_sum(weights * (diff * diff))


def _quantize_affine_blocks(
    blocks: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Quantize super-blocks [S, 256] up to the bit packing, the part Q4_K and Q5_K share.

    Returns d and dmin as fp16 [S], the 6-bit scales and mins [S, 8] and the levels [S, 256].
    """
    n_super = blocks.shape[0]
    x = blocks.reshape(n_super * 8, 32).T.copy()  # [32, S*8]

    # Weight each value by the block's RMS plus its own magnitude (no importance matrix).
    av_x = np.sqrt(_sequential_sum(x * x) / F32(32))
    weights = av_x + np.abs(x)
    scales, mins, levels = _make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep)
    scales = scales.reshape(n_super, 8)
    mins = mins.reshape(n_super, 8)

    # Quantize the 8 scales and 8 mins of a super-block to 6 bits against their maximum.
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    quant_scales = _six_bits(_nearest_int(inv_scale[:, None] * scales))
    quant_mins = _six_bits(_nearest_int(inv_min[:, None] * mins))
    d = _to_fp16(max_scale / F32(63))
    dmin = _to_fp16(max_min / F32(63))

    # Requantize every value against the stored (rounded) scale and min. A block whose scale
    # rounds to 0 keeps the levels that make_qkx2_quants chose.
    block_scale = d.astype(F32)[:, None] * quant_scales.astype(F32)  # [S, 8]
    block_min = dmin.astype(F32)[:, None] * quant_mins.astype(F32)
    values = blocks.reshape(n_super, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requantized = _nearest_int((values + block_min[:, :, None]) / block_scale[:, :, None])
    requantized = np.clip(requantized, 0, nmax)
    previous = levels.T.reshape(n_super, 8, 32)
    levels = np.where((block_scale != 0)[:, :, None], requantized, previous)
    return d, dmin, quant_scales, quant_mins, levels.reshape(n_super, QK_K).astype(np.uint8)


def _six_bits(rounded: np.ndarray) -> np.ndarray:
    # The C code stores nearest_int's result in a uint8 (wrapping) and then caps it at 63.
    return np.minimum(rounded.astype(np.int64) & 0xFF, 63).astype(np.uint8)


def _pack_scales_and_mins(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit scales and 8 six-bit mins [S, 8] into the 12 bytes of a K-quant block.

    Bytes 0-3 hold scales 0-3 and bytes 4-7 mins 0-3 in their low 6 bits. Bytes 8-11 hold the low
    4 bits of scales 4-7 and mins 4-7. The top 2 bits of bytes 0-7 carry the top 2 bits of
    scales 4-7 and mins 4-7.
    """
    packed = np.empty((scales.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = scales[:, 0:4] | ((scales[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = mins[:, 0:4] | ((mins[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (scales[:, 4:8] & 0xF) | ((mins[:, 4:8] & 0xF) << 4)
    return packed


def _quantize_q4_k_blocks(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, mins, levels = _quantize_affine_blocks(
        blocks, nmax=15, rmin=-1.0, rdelta=0.1, nstep=20
    )
    # Each 64-value group becomes 32 bytes: values 0-31 in the low nibbles, 32-63 in the high.
    groups = levels.reshape(-1, 4, 2, 32)
    qs = (groups[:, :, 0] | (groups[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate(
        [_fp16_bytes(d), _fp16_bytes(dmin), _pack_scales_and_mins(scales, mins), qs], axis=1
    )


def _quantize_q5_k_blocks(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, mins, levels = _quantize_affine_blocks(
        blocks, nmax=31, rmin=-0.5, rdelta=0.1, nstep=15
    )
    groups = levels.reshape(-1, 4, 2, 32)  # [S, 64-value group, half, 32]
    low = groups & 0xF
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    # The fifth bit of value j of half h in group g goes to bit 2g + h of qh[j].
    high = (groups >> 4).astype(np.uint8)
    shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
    qh = np.bitwise_or.reduce(high << shifts[None, :, :, None], axis=(1, 2)).astype(np.uint8)
    return np.concatenate(
        [_fp16_bytes(d), _fp16_bytes(dmin), _pack_scales_and_mins(scales, mins), qh, qs], axis=1
    )


def _fp16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype("<f2").view(np.uint8).reshape(-1, 2)


# Q6_K: symmetric blocks of 16 with an 8-bit scale each, llama.cpp's make_qx_quants.


def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit a symmetric scale to each block in x [16, blocks] for levels -nmax..nmax-1.

    Weights each value by its square (rmse_type 1), tries 19 candidate scales around
    -nmax / max and keeps the best least-squares fit. Returns (scale [blocks], levels + nmax
    [16, blocks] as float32). An all-zero block gets scale 0 and levels 0.
    """
    abs_x = np.abs(x)
    amax = abs_x.max(axis=0)
    signed_max = np.take_along_axis(x, _first_argmax(abs_x, axis=0), axis=0)[0]
    zero = amax < GROUP_MAX_EPS
    weights = x * x
    weighted_x = weights * x

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-nmax) / signed_max
        levels = np.clip(_nearest_int(iscale * x), -nmax, nmax - 1)
        sum_lx = _sequential_sum(weighted_x * levels)
        sum_l2 = _sequential_sum(weights * levels * levels)
        scale = np.where(sum_l2 != 0, sum_lx / sum_l2, F32(0))
        best = scale * sum_lx

        for step in (*range(-9, 0), *range(1, 10)):
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / signed_max
            candidate = np.clip(_nearest_int(iscale * x), -nmax, nmax - 1)
            sum_lx = _sequential_sum(weighted_x * candidate)
            sum_l2 = _sequential_sum(weights * candidate * candidate)
            better = (sum_l2 > 0) & (sum_lx * sum_lx > best * sum_l2)
            levels = np.where(better, candidate, levels)
            scale = np.where(better, sum_lx / sum_l2, scale)
            best = np.where(better, scale * sum_lx, best)

    scale = np.where(zero, F32(0), scale)
    levels = np.where(zero, F32(0), levels + F32(nmax))
    return scale, levels


def _quantize_q6_k_blocks(blocks: np.ndarray) -> np.ndarray:
    n_super = blocks.shape[0]
    x = blocks.reshape(n_super * 16, 16).T.copy()  # [16, S*16]
    scales, levels = _make_qx_quants(x, nmax=32)
    scales = scales.reshape(n_super, 16)

    # The 16 scales are stored as int8 against the one with the largest magnitude.
    max_scale = np.take_along_axis(scales, _first_argmax(np.abs(scales), axis=1), axis=1)[:, 0]
    zero_super = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-128) / max_scale
        d = _to_fp16(F32(1) / iscale)
        rounded = _nearest_int(iscale[:, None] * scales)
    rounded = np.where(zero_super[:, None], F32(0), rounded)
    quant_scales = np.minimum(rounded.astype(np.int64), 127).astype(np.int8)

    # Requantize against the stored scales. A block whose scale rounds to 0 keeps the levels of
    # make_qx_quants.
    block_scale = d.astype(F32)[:, None] * quant_scales.astype(F32)  # [S, 16]
    values = blocks.reshape(n_super, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requantized = np.clip(_nearest_int(values / block_scale[:, :, None]), -32, 31) + F32(32)
    previous = levels.T.reshape(n_super, 16, 16)
    levels = np.where((block_scale != 0)[:, :, None], requantized, previous)
    levels = levels.reshape(n_super, QK_K).astype(np.uint8)

    # Each 128-value half is stored as 64 ql bytes and 32 qh bytes. The ql bytes hold the low
    # nibbles of values l and l + 64, then of l + 32 and l + 96. Byte l of qh holds the 2 high
    # bits of values l, l + 32, l + 64 and l + 96.
    quarters = levels.reshape(n_super, 2, 4, 32)
    low = quarters & 0xF
    ql = np.concatenate(
        [low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2
    ).reshape(n_super, 128)
    high = quarters >> 4
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    qh = qh.reshape(n_super, 64)

    out = np.concatenate([ql, qh, quant_scales.view(np.uint8), _fp16_bytes(d)], axis=1)
    # llama.cpp writes an all-zero block when every scale of the super-block is (near) zero.
    out[zero_super] = 0
    return out


_QUANTIZERS = {
    GGMLQuantizationType.Q4_K: _quantize_q4_k_blocks,
    GGMLQuantizationType.Q5_K: _quantize_q5_k_blocks,
    GGMLQuantizationType.Q6_K: _quantize_q6_k_blocks,
}
