"""Exceptions that qwen-edge raises for bad input.

Each one carries a message meant for the user: it names the value that was wrong and says what
to do. The command-line entry point prints that message alone, without a traceback.
"""


class QwenEdgeError(Exception):
    """Base class of the errors qwen-edge reports to the user."""


class ConfigError(QwenEdgeError):
    """A config.json that is missing, malformed or not a Qwen2 model."""


class CheckpointError(QwenEdgeError):
    """Weights that are missing, misshaped, pickled or otherwise unusable."""


class GGUFError(QwenEdgeError):
    """A GGUF file that is truncated, corrupt or of an unsupported architecture or type."""


class CacheError(QwenEdgeError):
    """A KV cache that is full or was built for a model of another shape."""
