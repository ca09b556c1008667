"""Model configuration read from a checkpoint's config.json."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen_edge.errors import ConfigError

# transformers' Qwen2Config uses this base when a config.json names no rope_theta.
DEFAULT_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class RopeScaling:
    """RoPE scaling as transformers understands it, normalised from either spelling."""

    rope_type: str  # "linear" or "yarn"
    factor: float
    original_max_position_embeddings: int | None = None
    # YaRN only: None means "derive it as transformers does".
    attention_factor: float | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True


@dataclass(frozen=True)
class QuantizationConfig:
    """mlx-lm's quantization block: defaults plus per-module overrides keyed by module path."""

    group_size: int
    bits: int
    mode: str = "affine"
    # module path -> (group_size, bits), or False for a module that stays unquantized.
    overrides: dict[str, tuple[int, int] | bool] = field(default_factory=dict)

    def for_module(self, path: str) -> tuple[int, int] | None:
        """Return (group_size, bits) for the module at `path`, or None if it is not quantized."""
        override = self.overrides.get(path)
        if override is False:
            return None
        if isinstance(override, tuple):
            return override
        return self.group_size, self.bits


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a Qwen2 / Qwen2.5 decoder, under Hugging Face's config.json names."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int  # rows of the embedding; the tokenizer may use fewer
    rms_norm_eps: float = 1e-6
    rope_theta: float = DEFAULT_ROPE_THETA
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    head_dim: int = 0  # 0: derive hidden_size // num_attention_heads
    rope_scaling: RopeScaling | None = None
    quantization: QuantizationConfig | None = None
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    torch_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}; set head_dim in config.json"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}; the checkpoint's config.json "
                "is inconsistent"
            )

    @property
    def n_heads(self) -> int:
        return self.num_attention_heads

    @property
    def n_kv_heads(self) -> int:
        return self.num_key_value_heads

    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Build a config from a parsed config.json; keys this decoder does not use are ignored."""
        model_type = raw.get("model_type")
        if model_type != "qwen2":
            raise ConfigError(
                f"model_type {model_type!r} is not supported: qwen-edge runs Qwen2 and Qwen2.5 "
                'checkpoints, whose config.json says "model_type": "qwen2"'
            )
        required = (
            "hidden_size",
            "num_hidden_layers",
            "intermediate_size",
            "num_attention_heads",
            "vocab_size",
        )
        missing = [key for key in required if key not in raw]
        if missing:
            raise ConfigError(f"config.json lacks the keys {', '.join(missing)}")

        rope_parameters = _rope_parameters(raw)
        return cls(
            hidden_size=int(raw["hidden_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_attention_heads=int(raw["num_attention_heads"]),
            # transformers falls back to multi-head attention when the key is absent.
            num_key_value_heads=int(raw.get("num_key_value_heads") or raw["num_attention_heads"]),
            vocab_size=int(raw["vocab_size"]),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(
                rope_parameters.get("rope_theta") or raw.get("rope_theta") or DEFAULT_ROPE_THETA
            ),
            max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            head_dim=int(raw.get("head_dim") or 0),
            rope_scaling=_rope_scaling(rope_parameters, raw),
            quantization=_quantization(raw),
            eos_token_ids=_token_ids(raw.get("eos_token_id")),
            bos_token_id=raw.get("bos_token_id"),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read config.json (or the config.json inside a directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path} not found; a model directory must contain config.json")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must contain a JSON object, not {type(raw).__name__}")
        return cls.from_dict(raw)


def _rope_parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """Return the RoPE settings under either spelling: `rope_scaling` (older) or
    `rope_parameters` (transformers 5), with `type` or `rope_type` naming the kind."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"rope_scaling must be an object or null, not {params!r}")
    return params


def _rope_scaling(params: dict[str, Any], raw: dict[str, Any]) -> RopeScaling | None:
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type == "default":
        return None
    if rope_type not in ("linear", "yarn"):
        raise ConfigError(
            f"rope type {rope_type!r} is not supported; Qwen2.5 checkpoints use no scaling, "
            "'linear' or 'yarn'"
        )
    if "factor" not in params and rope_type == "linear":
        raise ConfigError("rope scaling of type 'linear' needs a 'factor'")

    original = params.get("original_max_position_embeddings") or raw.get(
        "original_max_position_embeddings"
    )
    factor = params.get("factor")
    if factor is None:
        # transformers derives a missing YaRN factor from the two context lengths.
        if not original:
            raise ConfigError(
                "YaRN rope scaling needs 'factor' or original_max_position_embeddings"
            )
        factor = raw.get("max_position_embeddings", 32768) / original

    return RopeScaling(
        rope_type=rope_type,
        factor=float(factor),
        original_max_position_embeddings=int(original or raw.get("max_position_embeddings", 32768)),
        attention_factor=params.get("attention_factor"),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        truncate=bool(params.get("truncate", True)),
    )


def _quantization(raw: dict[str, Any]) -> QuantizationConfig | None:
    block = raw.get("quantization") or raw.get("quantization_config")
    if not block:
        return None
    if "group_size" not in block or "bits" not in block:
        raise ConfigError(
            f"the quantization block {block!r} lacks group_size or bits; only mlx-lm's "
            "format is supported"
        )
    overrides: dict[str, tuple[int, int] | bool] = {}
    for key, value in block.items():
        if isinstance(value, dict) and "bits" in value:
            overrides[key] = (int(value.get("group_size", block["group_size"])), int(value["bits"]))
        elif value is False:
            overrides[key] = False
    return QuantizationConfig(
        group_size=int(block["group_size"]),
        bits=int(block["bits"]),
        mode=str(block.get("mode", "affine")),
        overrides=overrides,
    )


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """Return YaRN's attention factor 0.1 * mscale * ln(scale) + 1 (Peng et al., 2023, eq. 21)."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0
