"""Which layers an MLX conversion quantizes, and at how many bits.

Two recipes. "uniform" gives every quantizable layer the same bits. "mixed" follows llama.cpp's
Q4_K_M: 6 bits (Q6_K there) for the output head and for v_proj and down_proj on the layers that
`use_more_bits` selects, 4 bits for the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from qwen_edge.errors import QwenEdgeError

RECIPES = ("uniform", "mixed")
BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
EMBEDDING_BITS = (4, 8, 16)  # 16: keep the embedding unquantized
MIXED_BASE_BITS = 4
MIXED_HIGH_BITS = 6
MODE = "affine"

EMBEDDING = "model.embed_tokens"
OUTPUT_HEAD = "lm_head"


def use_more_bits(layer: int, n_layers: int) -> bool:
    """Return True for the layers that llama.cpp's Q4_K_M quantizes with more bits: the first and
    last eighth of the layers, and every third layer between them (`use_more_bits` in llama.cpp's
    src/llama-quant.cpp, integer division as in C)."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


@dataclass(frozen=True)
class QuantizationPlan:
    """Quantization settings per module path: (group_size, bits), or None to keep it in float."""

    group_size: int
    bits: int
    layers: dict[str, tuple[int, int] | None]
    # module path -> why it stays in float, for the layers the user did not ask to keep in float
    unquantizable: dict[str, str] = field(default_factory=dict)

    def config_block(self) -> dict[str, object]:
        """Return mlx-lm's `quantization` block: the defaults, then one entry per module whose
        settings differ from them (a dict of its own settings, or false when unquantized)."""
        block: dict[str, object] = {"group_size": self.group_size, "bits": self.bits, "mode": MODE}
        for path, settings in self.layers.items():
            if settings is None:
                block[path] = False
            elif settings != (self.group_size, self.bits):
                group_size, bits = settings
                block[path] = {"group_size": group_size, "bits": bits, "mode": MODE}
        return block

    def bits_histogram(self) -> dict[int, int]:
        """Return how many modules are quantized at each bit width."""
        counts: dict[int, int] = {}
        for settings in self.layers.values():
            if settings is not None:
                counts[settings[1]] = counts.get(settings[1], 0) + 1
        return dict(sorted(counts.items()))


def check_options(*, bits: int, group_size: int, recipe: str, embedding_bits: int | None) -> None:
    """Raise QwenEdgeError for a setting the converter does not support."""
    if bits not in BITS:
        raise QwenEdgeError(f"bits {bits} is not supported; use one of {_listing(BITS)}")
    if group_size not in GROUP_SIZES:
        raise QwenEdgeError(
            f"group size {group_size} is not supported; use one of {_listing(GROUP_SIZES)}"
        )
    if recipe not in RECIPES:
        raise QwenEdgeError(f"recipe {recipe!r} is not one of {_listing(RECIPES)}")
    if recipe == "mixed" and bits != MIXED_BASE_BITS:
        raise QwenEdgeError(
            f"--recipe mixed quantizes to {MIXED_BASE_BITS} and {MIXED_HIGH_BITS} bits, so it "
            f"needs --bits {MIXED_BASE_BITS}, not {bits}; use --recipe uniform for {bits} bits"
        )
    if embedding_bits is not None and embedding_bits not in EMBEDDING_BITS:
        raise QwenEdgeError(
            f"embedding bits {embedding_bits} is not supported; use one of "
            f"{_listing(EMBEDDING_BITS)} (16 keeps the embedding unquantized)"
        )


def plan_quantization(
    modules: Iterable[tuple[str, int]],
    *,
    n_layers: int,
    tie_word_embeddings: bool,
    bits: int,
    group_size: int,
    recipe: str = "uniform",
    embedding_bits: int | None = None,
) -> QuantizationPlan:
    """Decide the settings of each quantizable module, given as (path, input width) pairs.

    The embedding takes `embedding_bits` when given. A module whose input width is not a multiple
    of `group_size` cannot be quantized (MLX quantizes whole groups along the input axis) and is
    listed in the plan's `unquantizable`.
    """
    check_options(bits=bits, group_size=group_size, recipe=recipe, embedding_bits=embedding_bits)
    layers: dict[str, tuple[int, int] | None] = {}
    unquantizable: dict[str, str] = {}
    for path, width in modules:
        module_bits = _module_bits(path, n_layers, tie_word_embeddings, bits, recipe)
        if path == EMBEDDING and embedding_bits is not None:
            module_bits = None if embedding_bits == 16 else embedding_bits
        if module_bits is not None and width % group_size:
            unquantizable[path] = (
                f"input width {width} is not a multiple of the group size {group_size}"
            )
            module_bits = None
        layers[path] = None if module_bits is None else (group_size, module_bits)
    return QuantizationPlan(group_size, bits, layers, unquantizable)


def _module_bits(
    path: str, n_layers: int, tie_word_embeddings: bool, bits: int, recipe: str
) -> int:
    if recipe == "uniform":
        return bits
    # With tied embeddings the embedding is the output head, and llama.cpp treats it as one.
    is_output_head = path == OUTPUT_HEAD or (tie_word_embeddings and path == EMBEDDING)
    if is_output_head:
        return MIXED_HIGH_BITS
    layer = _layer_index(path)
    favoured = path.endswith((".self_attn.v_proj", ".mlp.down_proj"))
    if layer is not None and favoured and use_more_bits(layer, n_layers):
        return MIXED_HIGH_BITS
    return bits


def _layer_index(path: str) -> int | None:
    parts = path.split(".")
    if len(parts) > 2 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        return int(parts[2])
    return None


def _listing(values: Iterable[object]) -> str:
    return ", ".join(str(v) for v in values)
