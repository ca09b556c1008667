"""Rotary position embedding with the scalings Qwen2.5 configs use (none, linear, YaRN).

The rotation itself is `mx.fast.rope` in the non-interleaved ("rotate half") layout that Qwen
checkpoints are trained with. What differs between the scalings is only the per-pair frequency,
computed once here, and, for YaRN, a factor on the attention logits.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from qwen_edge.config import ModelConfig, RopeScaling, yarn_get_mscale


def inverse_frequencies(
    head_dim: int, base: float, scaling: RopeScaling | None
) -> tuple[mx.array, float]:
    """Return (inv_freq of shape [head_dim // 2], attention factor) as transformers computes them.

    The attention factor multiplies both cos and sin in transformers, which scales every
    query-key product by its square.
    """
    exponents = mx.arange(0, head_dim, 2, dtype=mx.float32) / head_dim
    inv_freq = 1.0 / (base**exponents)
    if scaling is None:
        return inv_freq, 1.0
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor, 1.0
    return _yarn_inverse_frequencies(inv_freq, head_dim, base, scaling)


def _yarn_inverse_frequencies(
    inv_freq: mx.array, head_dim: int, base: float, scaling: RopeScaling
) -> tuple[mx.array, float]:
    factor = scaling.factor
    if scaling.attention_factor is not None:
        attention_factor = float(scaling.attention_factor)
    elif scaling.mscale and scaling.mscale_all_dim:
        attention_factor = yarn_get_mscale(factor, scaling.mscale) / yarn_get_mscale(
            factor, scaling.mscale_all_dim
        )
    else:
        attention_factor = yarn_get_mscale(factor)

    # Dimensions that rotate fewer than beta_slow times over the original context are
    # interpolated (divided by the factor). Those that rotate more than beta_fast times keep
    # their frequency, and a linear ramp blends the band between.
    original_context = scaling.original_max_position_embeddings

    def correction_dim(n_rotations: float) -> float:
        return (head_dim * math.log(original_context / (n_rotations * 2 * math.pi))) / (
            2 * math.log(base)
        )

    low = correction_dim(scaling.beta_fast)
    high = correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp

    ramp = mx.clip((mx.arange(head_dim // 2, dtype=mx.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    interpolated = inv_freq / factor
    scaled = interpolated * (1 - extrapolation_weight) + inv_freq * extrapolation_weight
    return scaled, attention_factor


class RoPE(nn.Module):
    """Rotary embedding over the whole head dimension, positions starting at `offset`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        inv_freq, attention_factor = inverse_frequencies(
            config.head_dim, config.rope_theta, config.rope_scaling
        )
        # mx.fast.rope takes wavelengths divided by 2 pi, i.e. 1 / inv_freq. The leading underscore
        # keeps the array out of the module's parameters.
        self._freqs = 1.0 / inv_freq
        self.attention_factor = attention_factor

    def __call__(self, x: mx.array, offset: int | mx.array) -> mx.array:
        """Rotate `x` [B, H, L, head_dim], whose first position is `offset`."""
        if mx.default_device() == mx.cpu and isinstance(offset, int):
            return self._rotate(x, offset)
        return mx.fast.rope(
            x,
            self.head_dim,
            traditional=False,
            base=None,
            scale=1.0,
            offset=offset,
            freqs=self._freqs,
        )

    def _rotate(self, x: mx.array, offset: int) -> mx.array:
        """Apply the same rotation with plain ops. MLX's CPU backend runs mx.fast.rope as a
        generic fallback that cost about 65 us per call on a 2-core x86 (mlx 0.32), several
        times more than these few elementwise ops on a decode step's one position."""
        L = x.shape[2]
        positions = mx.arange(offset, offset + L, dtype=mx.float32)
        angles = positions[:, None] / self._freqs[None, :]  # (L, head_dim / 2)
        cos, sin = mx.cos(angles), mx.sin(angles)
        first, second = mx.split(x, 2, axis=-1)
        rotated = [first * cos - second * sin, second * cos + first * sin]
        return mx.concatenate(rotated, axis=-1).astype(x.dtype)
