"""Turn the logits of the last position into the next token.

The samplers themselves (temperature, top-p, top-k, min-p, repetition penalty) are mlx-lm's;
this module adds what Qwen checkpoints need on top: embedding rows past the tokenizer's
vocabulary are padding and are cut off before any sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from qwen_edge.errors import QwenEdgeError


@dataclass(frozen=True)
class SamplingSettings:
    """How to pick each token. temperature 0 means greedy (argmax); 0 or 1 disables a filter."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_context_size: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 disables it), got {self.top_k}"),
            (0 <= self.min_p < 1, f"min_p must be in [0, 1), got {self.min_p}"),
            (
                self.repetition_penalty > 0,
                f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}",
            ),
        ]
        if self.seed is not None:
            checks.append((0 <= self.seed < 2**63, f"seed must be in [0, 2**63), got {self.seed}"))
        for ok, message in checks:
            if not ok:
                raise QwenEdgeError(message)


class Sampler:
    """Pick next tokens from logits [B, vocab_size] under `settings`, never an id >= vocab_limit."""

    def __init__(self, settings: SamplingSettings, vocab_limit: int) -> None:
        # imported here: importing mlx_lm pulls in transformers, seconds of start-up
        from mlx_lm.sample_utils import make_repetition_penalty, make_sampler

        self.vocab_limit = vocab_limit
        self._greedy = settings.temperature == 0
        self._pick = make_sampler(
            temp=settings.temperature,
            top_p=settings.top_p if settings.top_p < 1 else 0.0,
            min_p=settings.min_p,
            top_k=settings.top_k,
        )
        self._penalty = None
        # How many past tokens the repetition penalty looks at (0: the history is not needed).
        self.context_size = 0
        if settings.repetition_penalty != 1.0:
            self.context_size = settings.repetition_context_size
            self._penalty = make_repetition_penalty(
                settings.repetition_penalty, settings.repetition_context_size
            )
        if settings.seed is not None:
            mx.random.seed(settings.seed)

    def __call__(self, logits: mx.array, history: mx.array | None = None) -> mx.array:
        """Return the next token ids [B]; `history` contains the recent ids, for the penalty."""
        logits = logits[:, : self.vocab_limit].astype(mx.float32)
        if self._penalty is not None and history is not None and history.size:
            logits = self._penalty(history, logits)
        if self._greedy:
            return mx.argmax(logits, axis=-1)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return self._pick(logprobs)
