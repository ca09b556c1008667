"""qwen-edge: run Qwen2.5 models offline with a native MLX decoder."""

# First, before anything imports mlx: it may load a faster BLAS for MLX's CPU backend.
from qwen_edge import backend  # noqa: F401  # isort: skip

from qwen_edge.cache import KVCache
from qwen_edge.config import ModelConfig
from qwen_edge.errors import QwenEdgeError
from qwen_edge.generate import GenerationEvent, GenerationStats, generate, stream_generate
from qwen_edge.loader import load
from qwen_edge.model import Qwen2Model
from qwen_edge.sample import SamplingSettings
from qwen_edge.tokenizer import Tokenizer
from qwen_edge.version import __version__

__all__ = [
    "GenerationEvent",
    "GenerationStats",
    "KVCache",
    "ModelConfig",
    "Qwen2Model",
    "QwenEdgeError",
    "SamplingSettings",
    "Tokenizer",
    "__version__",
    "generate",
    "load",
    "stream_generate",
]
