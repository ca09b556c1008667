"""What the chat app needs from a model, and the implementation over qwen_edge.

The app talks to a `ChatBackend`: load a model (reporting progress), stream a reply to a list of
messages, and say why a model cannot be loaded. `QwenBackend` runs the native decoder with a
`ChatSession`; tests use `qwen_edge.tui.scripted.ScriptedBackend` instead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from qwen_edge import store
from qwen_edge.errors import QwenEdgeError
from qwen_edge.generate import GenerationStats
from qwen_edge.model import Qwen2Model
from qwen_edge.tokenizer import Message
from qwen_edge.tui.history import ConversationSettings

# done, total, description of the step being run
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ModelInfo:
    name: str  # as the conversation names it: a store name, a path or a repo id
    quantization: str  # "bf16", "4-bit (group 64)", ...
    context_size: int  # tokens


@dataclass(frozen=True)
class TurnStarted:
    """The first event of a reply: how the prompt was split between cache and new tokens."""

    processed: int  # prompt tokens run through the model for this turn
    reused: int  # prompt tokens taken from the previous turn's KV cache
    prompt_tokens: int
    dropped_turns: int  # oldest turns left out so that the prompt fits the context


@dataclass(frozen=True)
class ReplyChunk:
    text: str  # never ends inside a character
    finish_reason: str | None  # None while streaming, then "stop" or "length"
    stats: GenerationStats


BackendEvent = TurnStarted | ReplyChunk


class ChatBackend(Protocol):
    info: ModelInfo | None  # the loaded model

    def model_problem(self, model: str) -> str | None:
        """Return why `model` cannot be loaded and how to get it back, or None if it can."""
        ...

    def load(self, model: str, progress: Progress) -> ModelInfo:
        """Load `model` unless it is already loaded; blocks, so call it from a worker thread."""
        ...

    def stream(
        self,
        messages: Sequence[Message],
        settings: ConversationSettings,
        stop: threading.Event,
    ) -> Iterator[BackendEvent]:
        """Reply to `messages` with the loaded model: one TurnStarted, then ReplyChunks.

        Generation ends early once `stop` is set.
        """
        ...

    def close(self) -> None: ...


def missing_model_message(model: str) -> str:
    """Explain that `model` is not available and how to get it back."""
    location = (
        f"Model {model!r} is not available: it is neither a directory nor a model in the "
        f"local store ({store.models_dir()})."
    )
    if model == store.DEMO_MODEL:
        remedy = "Run `qwen-edge demo-model` (or `make demo-model`) to prepare it again."
    else:
        remedy = (
            f"Put the checkpoint back, import a GGUF file with `qwen-edge convert FILE.gguf "
            f"{model} --to hf`, or pick another model in the conversation's settings."
        )
    return f"{location} {remedy} Until then this conversation is read-only."


DTYPE_NAMES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}


def describe_quantization(config: object, computed_in: str | None = None) -> str:
    """Return "4-bit (group 64)" for a quantized config, else its dtype such as "bf16"; with
    `computed_in` (a dtype name) different from that, add it, as in "bf16, computed in f32"."""
    quantization = getattr(config, "quantization", None)
    if quantization is not None:
        stored = f"{quantization.bits}-bit (group {quantization.group_size})"
    else:
        dtype = getattr(config, "torch_dtype", None) or "unknown dtype"
        stored = DTYPE_NAMES.get(dtype, dtype)
    if computed_in is None:
        return stored
    computed = DTYPE_NAMES.get(computed_in, computed_in)
    return stored if computed == stored else f"{stored}, computed in {computed}"


def compute_dtype(model: Qwen2Model) -> str:
    """Return the name ("float32"...) of the dtype the model computes in. Its first parameter
    is not a guide, because an untied embedding table may be stored narrower."""
    return str(model.dtype).removeprefix("mlx.core.")


class MLXThread:
    """One thread that runs every MLX call of the app.

    MLX keeps its streams per thread, and an array made on one thread's stream cannot be
    evaluated on another, so loading and generation share this thread and its own stream.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], object], Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="qwen-edge-mlx", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], object]) -> Future:
        future: Future = Future()
        self._jobs.put((job, future))
        return future

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        import mlx.core as mx

        with mx.stream(mx.new_stream(mx.default_device())):
            while (item := self._jobs.get()) is not None:
                job, future = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(job())
                except BaseException as error:  # handed to the waiting thread
                    future.set_exception(error)


_DONE = object()


class QwenBackend:
    """The native decoder behind the chat app: one loaded model and its ChatSession."""

    def __init__(self, context_size: int | None = None) -> None:
        self.context_size = context_size
        self.info: ModelInfo | None = None
        self._session = None  # qwen_edge.session.ChatSession, made on the MLX thread
        self._mlx = MLXThread()

    def model_problem(self, model: str) -> str | None:
        path = Path(model).expanduser()
        if path.is_dir():
            if (path / "config.json").is_file():
                return None
            return (
                f"{path} has no config.json, so it is not a model directory. Give a Hugging Face "
                "or mlx-lm checkpoint directory, a model in the store or a repo id. Until then "
                "this conversation is read-only."
            )
        if store.find(model) is not None:
            return None
        from qwen_edge.convert.source import is_repo_id

        if is_repo_id(model):
            return None  # downloaded on load; a failure there is shown as an error
        return missing_model_message(model)

    def load(self, model: str, progress: Progress) -> ModelInfo:
        if self.info is not None and self.info.name == model:
            return self.info
        return self._mlx.submit(lambda: self._load(model, progress)).result()

    def _load(self, model: str, progress: Progress) -> ModelInfo:
        from qwen_edge.config import ModelConfig
        from qwen_edge.loader import load, resolve_model_path
        from qwen_edge.session import ChatSession

        if self.info is not None and self.info.name == model:
            return self.info  # loaded by a job queued before this one
        problem = self.model_problem(model)
        if problem is not None:
            raise QwenEdgeError(problem)
        from qwen_edge.convert.source import download, is_repo_id

        total = 3
        progress(0, total, f"finding {model}")
        directory = download(model) if is_repo_id(model) else resolve_model_path(model)
        progress(1, total, "loading weights and tokenizer")
        # load() picks the compute dtype and weight layout for this backend (float32 with a fast
        # CPU BLAS, dequantized layers on the CPU), as `qwen-edge generate` does.
        decoder, tokenizer = load(directory)
        progress(2, total, "preparing the KV cache")
        self._session = ChatSession(decoder, tokenizer, self.context_size)
        config = ModelConfig.from_file(directory)
        self.info = ModelInfo(
            model,
            describe_quantization(config, compute_dtype(decoder)),
            self._session.context_size,
        )
        progress(3, total, "ready")
        return self.info

    def stream(
        self,
        messages: Sequence[Message],
        settings: ConversationSettings,
        stop: threading.Event,
    ) -> Iterator[BackendEvent]:
        if self._session is None or self.info is None or self.info.name != settings.model:
            raise QwenEdgeError(f"model {settings.model!r} is not loaded; load it first")
        events: queue.Queue = queue.Queue()
        abandoned = threading.Event()
        self._mlx.submit(lambda: self._generate(messages, settings, stop, abandoned, events))
        try:
            while (event := events.get()) is not _DONE:
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            abandoned.set()

    def _generate(
        self,
        messages: Sequence[Message],
        settings: ConversationSettings,
        stop: threading.Event,
        abandoned: threading.Event,
        events: queue.Queue,
    ) -> None:
        from qwen_edge.sample import SamplingSettings

        try:
            session = self._session
            turn = session.prepare(messages, settings.max_tokens)
            events.put(
                TurnStarted(len(turn.new_ids), turn.reused, turn.prompt_tokens, turn.dropped_turns)
            )
            sampling = SamplingSettings(temperature=settings.temperature, top_p=settings.top_p)
            for event in session.stream(turn, max_tokens=settings.max_tokens, sampling=sampling):
                if stop.is_set() or abandoned.is_set():
                    break
                events.put(ReplyChunk(event.text, event.finish_reason, event.stats))
        except Exception as error:  # handed to the consuming thread, which reports it
            events.put(error)
        finally:
            events.put(_DONE)

    def close(self) -> None:
        self._mlx.close()
