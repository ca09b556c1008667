"""The generation loop: prefill the prompt in chunks, then decode one token per step.

Each decode step builds the next step's graph and starts evaluating it (`mx.async_eval`) before
the current token is handed to the caller, so detokenizing and printing overlap with the model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import mlx.core as mx

from qwen_edge.cache import KVCache
from qwen_edge.compiled import compiled_decode
from qwen_edge.errors import QwenEdgeError
from qwen_edge.model import Qwen2Model
from qwen_edge.sample import Sampler, SamplingSettings
from qwen_edge.tokenizer import Message, Tokenizer

Prompt = str | Sequence[int] | Sequence[Message]


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int = 0
    prompt_tps: float = 0.0
    time_to_first_token: float = 0.0  # seconds
    generation_tokens: int = 0
    generation_tps: float = 0.0
    peak_memory_gb: float = 0.0


@dataclass(frozen=True)
class GenerationEvent:
    """One step of a streamed reply: its text (possibly empty while a character is incomplete),
    the token id, and on the last event the finish reason ("stop" or "length")."""

    text: str
    token: int
    finish_reason: str | None
    stats: GenerationStats


def prompt_to_tokens(tokenizer: Tokenizer, prompt: Prompt) -> list[int]:
    """Token ids for raw text, for ids given as such, or for chat messages rendered with the
    checkpoint's chat template."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    items = list(prompt)
    if not items:
        raise QwenEdgeError("the prompt is empty; give text, token ids or chat messages")
    if all(isinstance(item, int) for item in items):
        return items
    if all(isinstance(item, dict) for item in items):
        return tokenizer.encode(tokenizer.apply_chat_template(items))
    raise QwenEdgeError(
        "a prompt must be a string, a list of token ids or a list of {'role', 'content'} "
        f"messages, not a list of {type(items[0]).__name__}"
    )


def prefill(model: Qwen2Model, tokens: mx.array, cache: KVCache, step_size: int) -> mx.array:
    """Run `tokens` [L] through the model in chunks of `step_size`; return the logits of the
    last position [1, vocab_size]. Chunking bounds the attention scores' memory on long prompts."""
    for start in range(0, tokens.size - step_size, step_size):
        model(tokens[None, start : start + step_size], cache)
        mx.eval(cache.state)
    last_start = ((tokens.size - 1) // step_size) * step_size
    return model(tokens[None, last_start:], cache, last_only=True)[:, -1, :]


def stream_generate(
    model: Qwen2Model,
    tokenizer: Tokenizer,
    prompt: Prompt,
    *,
    max_tokens: int = 512,
    sampling: SamplingSettings | None = None,
    cache: KVCache | None = None,
    prefill_step_size: int = 512,
    compile_step: bool = True,
    **sampling_options: float | int | None,
) -> Iterator[GenerationEvent]:
    """Generate a reply to `prompt`, yielding one event per new token.

    `prompt`: raw text, token ids, or chat messages (rendered with the chat template).
    Sampling: pass `sampling`, or its fields as keywords (temperature, top_p, top_k, min_p,
    repetition_penalty, repetition_context_size, seed); the default is greedy.
    `cache`: a KV cache to append to (for instance the previous turn's); a new one by default.
    `compile_step`: run decode steps as one compiled graph (see compiled.py) where the cache
    allows it; False runs them op by op.
    Generation stops at any of the tokenizer's stop ids ("stop") or after `max_tokens` ("length").
    """
    if max_tokens < 1:
        raise QwenEdgeError(f"max_tokens must be at least 1, got {max_tokens}")
    if prefill_step_size < 1:
        raise QwenEdgeError(f"prefill_step_size must be at least 1, got {prefill_step_size}")
    settings = replace(sampling or SamplingSettings(), **sampling_options)
    sampler = Sampler(settings, tokenizer.vocab_limit)
    prompt_ids = prompt_to_tokens(tokenizer, prompt)
    if not prompt_ids:
        raise QwenEdgeError("the prompt encodes to no tokens; give a non-empty prompt")
    if cache is None:
        cache = model.make_cache()
    cache.check_room(len(prompt_ids) + 1)

    mx.reset_peak_memory()
    history = mx.array(prompt_ids, dtype=mx.int32)
    detokenizer = tokenizer.detokenizer()
    start = time.perf_counter()

    def step(logits: mx.array) -> mx.array:
        nonlocal history
        token = sampler(logits, history)
        if sampler.context_size:
            history = mx.concatenate([history, token.astype(mx.int32)])[-sampler.context_size :]
        return token

    compiled = compiled_decode(model) if compile_step else None

    def decode(token: mx.array) -> mx.array:
        if compiled is not None and compiled.supports(cache):
            return compiled(token[None], cache)[:, -1, :]
        return model(token[None], cache, last_only=True)[:, -1, :]

    # prefill, then the first token
    token = step(prefill(model, history, cache, prefill_step_size))
    mx.async_eval(token)

    prompt_time = 0.0
    generated = 0
    while True:
        # queue the next step before waiting for this token
        next_token = None
        if generated + 1 < max_tokens and cache.has_room(1):
            next_token = step(decode(token))
            mx.async_eval(next_token)

        token_id = token.item()
        generated += 1
        if generated == 1:
            prompt_time = time.perf_counter() - start
            decode_start = time.perf_counter()

        stats = GenerationStats(
            prompt_tokens=len(prompt_ids),
            prompt_tps=len(prompt_ids) / prompt_time if prompt_time else 0.0,
            time_to_first_token=prompt_time,
            generation_tokens=generated,
            generation_tps=_rate(generated - 1, time.perf_counter() - decode_start),
            peak_memory_gb=mx.get_peak_memory() / 1e9,
        )
        if token_id in tokenizer.eos_token_ids:
            yield GenerationEvent(detokenizer.finalize(), token_id, "stop", stats)
            return
        text = detokenizer.add_token(token_id)
        if next_token is None:
            yield GenerationEvent(text + detokenizer.finalize(), token_id, "length", stats)
            return
        yield GenerationEvent(text, token_id, None, stats)
        token = next_token


def generate(model: Qwen2Model, tokenizer: Tokenizer, prompt: Prompt, **options: object) -> str:
    """Return the whole reply to `prompt` (see `stream_generate` for the options)."""
    return "".join(event.text for event in stream_generate(model, tokenizer, prompt, **options))


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 and count > 0 else 0.0
