"""Measure how far model B's next-token predictions drift from model A's over one text.

Both models read the same tokens (by default the English, Chinese and code text shipped in
data/compare.txt, about 512 tokens), and at every position their logits over the tokenizer's
vocabulary are compared. Embedding rows past the tokenizer's length are padding and are left out.

- logits NMSE: mean squared difference of B's logits from A's, divided by the variance of A's.
- top-1 agreement: the share of positions where both models rank the same token first.
- mean KL divergence: KL(P_A || P_B) in nats, averaged over positions, with A as the reference.
- perplexity of each model on the text, as a sanity check of the reference itself.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import mlx.core as mx

from qwen_edge.convert.source import open_source
from qwen_edge.errors import QwenEdgeError
from qwen_edge.loader import load
from qwen_edge.model import Qwen2Model

DEFAULT_TEXT = "data/compare.txt"
# A longer text is cut to this many tokens: A's logits for all positions are kept in memory
# while B runs (2048 positions x 151936 rows x 2 bytes = 0.6 GB in bfloat16).
MAX_TOKENS = 2048
FORWARD_CHUNK = 512  # positions per forward pass; bounds the attention scores' memory
STATS_ROWS = 64  # positions per step of the statistics, in float32


@dataclass(frozen=True)
class LogitStats:
    """Agreement of two models' logits over the same positions."""

    positions: int
    nmse: float
    top1_agreement: float  # 0..1
    mean_kl: float  # nats
    max_kl: float
    perplexity_a: float  # nan without target tokens
    perplexity_b: float


@dataclass(frozen=True)
class CompareReport:
    """The quality report of model B against reference model A."""

    a: str
    b: str
    stats: LogitStats

    @property
    def nmse(self) -> float:
        return self.stats.nmse

    @property
    def top1_agreement(self) -> float:
        return self.stats.top1_agreement

    @property
    def mean_kl(self) -> float:
        return self.stats.mean_kl

    def format(self) -> str:
        """Return the report as a few lines of text."""
        s = self.stats
        return "\n".join(
            [
                f"A (reference): {self.a}",
                f"B: {self.b}",
                f"over {s.positions} tokens: logits NMSE {s.nmse:.3e}, "
                f"top-1 agreement {100 * s.top1_agreement:.2f}%, "
                f"mean KL divergence {s.mean_kl:.4f} nats (max {s.max_kl:.3f})",
                f"perplexity: A {s.perplexity_a:.3f}, B {s.perplexity_b:.3f}",
            ]
        )


def default_text() -> str:
    """Return the text shipped with the package for comparisons."""
    return resources.files("qwen_edge.convert").joinpath(DEFAULT_TEXT).read_text(encoding="utf-8")


def run_compare(a: str, b: str, text_file: Path | None = None) -> CompareReport:
    """Compare model `b` against reference `a` over `text_file` (default: the shipped text).

    `a` and `b` are anything a conversion accepts as a source: a directory, a model in the
    store, a .gguf file or a Hugging Face repo id.
    """
    text = None
    if text_file is not None:
        text = _read_text(Path(text_file))
    return compare_models(a, b, text)


def compare_models(a: str | Path, b: str | Path, text: str | None = None) -> CompareReport:
    """Compare model `b` against reference `a` over `text` (default: the shipped text).

    The models are loaded one after the other, so only one is in memory at a time. Each gets the
    loader's defaults: on the CPU backend quantized layers are dequantized at load, which gives
    the quantized weights' logits up to float rounding.
    """
    text = default_text() if text is None else text
    with open_source(a) as source:
        model, tokenizer = load(source.path)
        ids = tokenizer.encode(text)[:MAX_TOKENS]
        if len(ids) < 2:
            raise QwenEdgeError(
                f"the comparison text encodes to {len(ids)} tokens; give a text of at least two"
            )
        vocab_limit = min(len(tokenizer), model.config.vocab_size)
        reference = model_logits(model, ids)
        a_name = source.description
        del model, tokenizer
        _release_memory()

    with open_source(b) as source:
        model, tokenizer = load(source.path)
        if tokenizer.encode(text)[:MAX_TOKENS] != ids:
            raise QwenEdgeError(
                f"{source.description} tokenizes the text differently from {a_name}; compare "
                "needs two versions of the same model, with the same tokenizer"
            )
        vocab_limit = min(vocab_limit, model.config.vocab_size)
        other = model_logits(model, ids)
        b_name = source.description
        del model, tokenizer
        _release_memory()

    stats = compare_logits(reference, other, targets=ids[1:], vocab_limit=vocab_limit)
    return CompareReport(a_name, b_name, stats)


def model_logits(model: Qwen2Model, ids: Sequence[int]) -> mx.array:
    """Return the logits [L, vocab rows] of `model` at every position of `ids`, in the model's
    dtype, computed FORWARD_CHUNK positions at a time with a KV cache."""
    cache = model.make_cache(max_size=len(ids))
    parts = []
    for start in range(0, len(ids), FORWARD_CHUNK):
        chunk = mx.array(ids[start : start + FORWARD_CHUNK], dtype=mx.int32)[None]
        logits = model(chunk, cache)[0]
        mx.eval(logits)
        parts.append(logits)
    return parts[0] if len(parts) == 1 else mx.concatenate(parts)


def compare_logits(
    reference: mx.array,
    other: mx.array,
    *,
    targets: Sequence[int] | None = None,
    vocab_limit: int | None = None,
) -> LogitStats:
    """Compare logits `other` against `reference`, both [positions, vocabulary].

    Only the first `vocab_limit` columns count. `targets[i]` is the token that follows position
    i; with them the report includes each model's perplexity over those positions.
    """
    if reference.shape != other.shape:
        raise QwenEdgeError(
            f"logits of shape {tuple(other.shape)} cannot be compared with the reference's "
            f"{tuple(reference.shape)}; the models' vocabularies differ"
        )
    positions, columns = reference.shape
    columns = min(columns, vocab_limit or columns)
    targets = list(targets or [])

    squared_error = sum_a = sum_a2 = 0.0
    kl_sum, kl_max, agree = 0.0, 0.0, 0
    nll_a = nll_b = 0.0
    for start in range(0, positions, STATS_ROWS):
        a = reference[start : start + STATS_ROWS, :columns].astype(mx.float32)
        b = other[start : start + STATS_ROWS, :columns].astype(mx.float32)

        diff = b - a
        squared_error += mx.sum(diff * diff).item()
        sum_a += mx.sum(a).item()
        sum_a2 += mx.sum(a * a).item()
        agree += mx.sum(mx.argmax(a, axis=-1) == mx.argmax(b, axis=-1)).item()

        log_a = a - mx.logsumexp(a, axis=-1, keepdims=True)
        log_b = b - mx.logsumexp(b, axis=-1, keepdims=True)
        kl = mx.sum(mx.exp(log_a) * (log_a - log_b), axis=-1)
        kl_sum += mx.sum(kl).item()
        kl_max = max(kl_max, mx.max(kl).item())

        rows = targets[start : start + STATS_ROWS]
        if rows:
            index = mx.array(rows, dtype=mx.int32)[:, None]
            nll_a -= mx.sum(mx.take_along_axis(log_a[: len(rows)], index, axis=-1)).item()
            nll_b -= mx.sum(mx.take_along_axis(log_b[: len(rows)], index, axis=-1)).item()

    count = positions * columns
    mean_a = sum_a / count
    variance_a = sum_a2 / count - mean_a * mean_a
    return LogitStats(
        positions=positions,
        nmse=squared_error / count / variance_a,
        top1_agreement=agree / positions,
        mean_kl=kl_sum / positions,
        max_kl=kl_max,
        perplexity_a=math.exp(nll_a / len(targets)) if targets else math.nan,
        perplexity_b=math.exp(nll_b / len(targets)) if targets else math.nan,
    )


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise QwenEdgeError(f"text file {path} not found") from error
    except UnicodeDecodeError as error:
        raise QwenEdgeError(f"text file {path} is not UTF-8 text: {error}") from error
    if not text.strip():
        raise QwenEdgeError(f"text file {path} is empty; give a text to compare the models on")
    return text


def _release_memory() -> None:
    gc.collect()
    mx.clear_cache()
