"""A multi-turn chat over one KV cache that reuses the longest common token prefix between turns.

Each turn renders the whole conversation with the checkpoint's chat template. The cache still
contains the previous turn's prompt and reply. Only the tokens after the longest common prefix of
the new prompt and the cached tokens are run through the model. Rendering the whole conversation
(instead of appending a rendered fragment per turn) keeps the template's default system prompt at
the start only, where every turn's prompt shares it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from qwen_edge.cache import KVCache
from qwen_edge.errors import QwenEdgeError
from qwen_edge.generate import GenerationEvent, stream_generate
from qwen_edge.model import Qwen2Model
from qwen_edge.sample import SamplingSettings
from qwen_edge.tokenizer import Message, Tokenizer


@dataclass(frozen=True)
class PreparedTurn:
    """The prompt of one turn, split into the part already in the cache and the new part."""

    new_ids: list[int]  # tokens the model still has to process
    reused: int  # prompt tokens taken from the previous turn's cache
    prompt_tokens: int  # reused + len(new_ids)
    dropped_turns: int  # oldest user/assistant turns left out to fit the context
    messages: list[Message]  # the messages actually rendered


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Return the number of leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reuse_prefix(cache: KVCache, held: list[int], prompt: list[int]) -> list[int]:
    """Trim `cache`, which contains the token ids `held`, to its longest common prefix with
    `prompt` and return the prompt tokens still to process.

    At least one token is always left to process, because its logits give the next token.
    """
    common = min(common_prefix_length(held, prompt), len(prompt) - 1)
    cache.trim(cache.offset - common)
    return prompt[common:]


def split_turns(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """Split `messages` into the leading system messages and the turns after them.

    A turn starts at a user message and takes every following message up to the next user
    message, so dropping a whole turn never leaves an assistant reply without its question.
    """
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    system = list(messages[:head])
    turns: list[list[Message]] = []
    for message in messages[head:]:
        if message["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return system, turns


class ChatSession:
    """A model, its tokenizer and one KV cache carried from turn to turn.

    `cached_ids` are the tokens whose keys and values the cache holds, in order.
    """

    def __init__(
        self, model: Qwen2Model, tokenizer: Tokenizer, context_size: int | None = None
    ) -> None:
        max_context = model.config.max_position_embeddings
        if context_size is not None and not 0 < context_size <= max_context:
            raise QwenEdgeError(
                f"context_size must be between 1 and the model's {max_context} positions, "
                f"got {context_size}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.context_size = context_size or max_context
        self.cache = model.make_cache(max_size=self.context_size)
        # Every token appended to the cache so far; the cache contains the first `cache.offset`.
        self._fed: list[int] = []

    @property
    def cached_ids(self) -> list[int]:
        return self._fed[: self.cache.offset]

    def reset(self) -> None:
        """Forget the cached conversation."""
        self.cache.trim(self.cache.offset)
        self._fed = []

    def render(self, messages: Sequence[Message]) -> list[int]:
        """Return the token ids of `messages` rendered with the chat template, ending with the
        assistant's generation prompt."""
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(list(messages)))

    def fit(self, messages: Sequence[Message], max_tokens: int) -> tuple[list[Message], int]:
        """Drop the oldest turns (never the system messages or the last turn) until the prompt
        plus `max_tokens` fits in the context; return the kept messages and the number of turns
        dropped."""
        system, turns = split_turns(messages)
        if not turns:
            raise QwenEdgeError("the conversation has no user message to reply to")
        dropped = 0
        while True:
            kept = system + [m for turn in turns[dropped:] for m in turn]
            needed = len(self.render(kept)) + max_tokens
            if needed <= self.context_size:
                return kept, dropped
            if dropped == len(turns) - 1:
                raise QwenEdgeError(
                    f"the last message needs {needed - max_tokens} prompt tokens plus max tokens "
                    f"{max_tokens}, more than the context size of {self.context_size} tokens; "
                    "shorten the message or the system prompt, or lower max tokens"
                )
            dropped += 1

    def prepare(self, messages: Sequence[Message], max_tokens: int = 0) -> PreparedTurn:
        """Fit `messages` into the context and trim the cache to the longest common prefix of
        their token ids and the cached ones; return the tokens still to process."""
        kept, dropped = self.fit(messages, max_tokens)
        ids = self.render(kept)

        new_ids = reuse_prefix(self.cache, self.cached_ids, ids)
        reused = len(ids) - len(new_ids)
        self._fed = ids[:reused]
        return PreparedTurn(new_ids, reused, len(ids), dropped, kept)

    def stream(
        self,
        turn: PreparedTurn,
        *,
        max_tokens: int = 512,
        sampling: SamplingSettings | None = None,
        prefill_step_size: int = 512,
    ) -> Iterator[GenerationEvent]:
        """Generate the reply to a turn from `prepare`, yielding one event per token.

        Stopping early (leaving the loop) is safe: the cache keeps what was processed and the
        next `prepare` reuses it.
        """
        if len(self._fed) != turn.reused or self.cache.offset != turn.reused:
            raise QwenEdgeError(
                "the cache changed since this turn was prepared; call prepare() again"
            )
        self._fed.extend(turn.new_ids)
        # The cache is sized to the context, so a reply stops with "length" when it fills up.
        max_tokens = min(max_tokens, self.context_size - turn.prompt_tokens)
        for event in stream_generate(
            self.model,
            self.tokenizer,
            turn.new_ids,
            max_tokens=max_tokens,
            sampling=sampling,
            cache=self.cache,
            prefill_step_size=prefill_step_size,
        ):
            # The cache may already hold this token (the next step is queued before yielding),
            # so record it before handing the event on.
            self._fed.append(event.token)
            yield event
