"""A ChatBackend that streams scripted replies without a model, for tests and the benchmark.

It counts one "token" per character of a plain rendering of the messages, reuses the longest
common prefix with the previous turn the way `ChatSession` does, and drops the oldest turns when
the rendering plus max tokens exceeds `context_size`. Statistics are fixed numbers so that
screenshots are deterministic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

from qwen_edge.errors import QwenEdgeError
from qwen_edge.generate import GenerationStats
from qwen_edge.session import common_prefix_length, split_turns
from qwen_edge.tokenizer import Message
from qwen_edge.tui.backend import (
    BackendEvent,
    ModelInfo,
    Progress,
    ReplyChunk,
    TurnStarted,
    missing_model_message,
)
from qwen_edge.tui.history import ConversationSettings

Reply = str | Sequence[str]  # whole text (cut into chunk_size pieces) or the chunks themselves


def split_chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class ScriptedBackend:
    """Reply number i to `stream` is `replies[i]` (the last one repeats), or `replies(messages)`.

    `pause_after`: after that many chunks of each reply, wait until `resume` or the stop event
    is set, so a test can act mid-stream. `fail_after`: raise RuntimeError after that many
    chunks, like a worker that dies. `on_chunk(index, text)` runs before each chunk is handed on.
    """

    def __init__(
        self,
        replies: Sequence[Reply] | Callable[[list[Message]], Reply] = ("Hello! How can I help?",),
        *,
        chunk_size: int = 4,
        token_delay: float = 0.0,
        missing: Sequence[str] = (),
        load_errors: dict[str, str] | None = None,
        context_size: int = 32768,
        quantization: str = "bf16",
        pause_after: int | None = None,
        fail_after: int | None = None,
        on_chunk: Callable[[int, str], None] | None = None,
    ) -> None:
        self.replies = replies
        self.chunk_size = chunk_size
        self.token_delay = token_delay
        self.missing = set(missing)
        self.load_errors = dict(load_errors or {})
        self.context_size = context_size
        self.quantization = quantization
        self.pause_after = pause_after
        self.fail_after = fail_after
        self.on_chunk = on_chunk

        self.info: ModelInfo | None = None
        self.calls: list[list[Message]] = []  # the messages of every stream() call
        self.turns: list[TurnStarted] = []
        self.loads: list[str] = []  # models loaded, in order
        self.load_gate = threading.Event()  # clear it to hold loading at its first step
        self.load_gate.set()
        self.loading = threading.Event()  # set while a load waits on load_gate
        self.paused = threading.Event()  # set while a reply waits at pause_after
        self.resume = threading.Event()
        self._cached = ""  # the "tokens" (characters) the previous turn left in its cache
        self._lock = threading.Lock()

    def model_problem(self, model: str) -> str | None:
        return missing_model_message(model) if model in self.missing else None

    def load(self, model: str, progress: Progress) -> ModelInfo:
        with self._lock:
            if self.info is not None and self.info.name == model:
                return self.info
            problem = self.model_problem(model) or self.load_errors.get(model)
            if problem is not None:
                raise QwenEdgeError(problem)
            progress(0, 2, f"loading {model}")
            if not self.load_gate.is_set():
                self.loading.set()
                self.load_gate.wait()
                self.loading.clear()
            progress(1, 2, "loading tokenizer")
            self.info = ModelInfo(model, self.quantization, self.context_size)
            self._cached = ""
            self.loads.append(model)
            progress(2, 2, "ready")
            return self.info

    def stream(
        self,
        messages: Sequence[Message],
        settings: ConversationSettings,
        stop: threading.Event,
    ) -> Iterator[BackendEvent]:
        if self.info is None or self.info.name != settings.model:
            raise QwenEdgeError(f"model {settings.model!r} is not loaded; load it first")
        messages = [dict(m) for m in messages]
        self.calls.append(messages)
        kept, dropped = self._fit(messages, settings.max_tokens)
        prompt = render(kept)
        reused = min(common_prefix_length(prompt, self._cached), len(prompt) - 1)
        turn = TurnStarted(len(prompt) - reused, reused, len(prompt), dropped)
        self.turns.append(turn)
        self._cached = prompt
        yield turn

        all_chunks = self._chunks(messages)
        chunks = all_chunks[: settings.max_tokens]
        finish = "length" if len(chunks) < len(all_chunks) else "stop"
        for index, text in enumerate(chunks):
            if index == self.fail_after:
                raise RuntimeError(f"scripted failure after {index} chunks")
            if index == self.pause_after:
                self.paused.set()
                while not (self.resume.is_set() or stop.is_set()):
                    time.sleep(0.005)
                self.paused.clear()
            if stop.is_set():
                return
            if self.token_delay:
                time.sleep(self.token_delay)
            stats = GenerationStats(
                prompt_tokens=turn.processed,
                prompt_tps=1000.0,
                time_to_first_token=0.05,
                generation_tokens=index + 1,
                generation_tps=42.0,
                peak_memory_gb=0.5,
            )
            self._cached += text
            if self.on_chunk is not None:
                self.on_chunk(index, text)
            yield ReplyChunk(text, finish if index == len(chunks) - 1 else None, stats)

    def close(self) -> None:
        self.resume.set()
        self.load_gate.set()

    def _chunks(self, messages: list[Message]) -> list[str]:
        if callable(self.replies):
            reply = self.replies(messages)
        else:
            reply = self.replies[min(len(self.calls) - 1, len(self.replies) - 1)]
        return split_chunks(reply, self.chunk_size) if isinstance(reply, str) else list(reply)

    def _fit(self, messages: list[Message], max_tokens: int) -> tuple[list[Message], int]:
        system, turns = split_turns(messages)
        for dropped in range(len(turns)):
            kept = system + [m for turn in turns[dropped:] for m in turn]
            if len(render(kept)) + max_tokens <= self.context_size:
                return kept, dropped
        raise QwenEdgeError(
            f"the last message plus max tokens {max_tokens} exceeds the context size of "
            f"{self.context_size} tokens; shorten the message or lower max tokens"
        )


def render(messages: Sequence[Message]) -> str:
    return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
