"""One reply being generated: the worker-thread side and the messages it posts to the UI.

The worker thread pulls events from the backend, commits the growing text with a ReplyWriter
and hands new text to the UI through a ChunkBuffer. It posts one ReplyUpdated at a time, so when
the UI falls behind, the chunks that arrived meanwhile are appended together.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from textual.message import Message as TextualMessage

from qwen_edge.errors import QwenEdgeError
from qwen_edge.generate import GenerationStats
from qwen_edge.tokenizer import Message
from qwen_edge.tui.backend import ChatBackend, ModelInfo, TurnStarted
from qwen_edge.tui.history import (
    COMPLETE,
    ERROR,
    LENGTH,
    STOPPED,
    ConversationSettings,
    HistoryStore,
)
from qwen_edge.tui.reply_writer import ReplyWriter

log = logging.getLogger("qwen_edge.tui")


class ChunkBuffer:
    """Text the worker has produced and the UI has not appended yet."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._scheduled = False
        self._lock = threading.Lock()

    def push(self, text: str) -> bool:
        """Add text; return True when the caller must post a ReplyUpdated (none is pending)."""
        with self._lock:
            self._parts.append(text)
            if self._scheduled:
                return False
            self._scheduled = True
            return True

    def drain(self) -> str:
        with self._lock:
            text = "".join(self._parts)
            self._parts.clear()
            self._scheduled = False
            return text


@dataclass
class ReplyJob:
    conversation_id: int
    reply_id: int
    messages: list[Message]
    settings: ConversationSettings
    view: Any = None  # the MessageView that shows the reply; used on the UI thread only
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)  # set when the row is final
    buffer: ChunkBuffer = field(default_factory=ChunkBuffer)
    text: str = ""  # the whole reply so far, as committed by the worker
    stats: GenerationStats | None = None  # of the latest chunk


class LoadProgress(TextualMessage):
    def __init__(self, model: str, done: int, total: int, step: str) -> None:
        super().__init__()
        self.model = model
        self.done = done
        self.total = total
        self.step = step


class ModelLoaded(TextualMessage):
    def __init__(self, info: ModelInfo) -> None:
        super().__init__()
        self.info = info


class LoadFailed(TextualMessage):
    def __init__(self, model: str, error: str) -> None:
        super().__init__()
        self.model = model
        self.error = error


class ReplyTurnStarted(TextualMessage):
    def __init__(self, job: ReplyJob, turn: TurnStarted) -> None:
        super().__init__()
        self.job = job
        self.turn = turn


class ReplyUpdated(TextualMessage):
    """New text waits in the job's buffer."""

    def __init__(self, job: ReplyJob) -> None:
        super().__init__()
        self.job = job


class ReplyFinished(TextualMessage):
    def __init__(self, job: ReplyJob, status: str, error: str | None) -> None:
        super().__init__()
        self.job = job
        self.status = status
        self.error = error


def load_model(
    backend: ChatBackend, model: str, post: Callable[[TextualMessage], object]
) -> ModelInfo | None:
    """Load `model`, posting progress; on failure post LoadFailed and return None."""

    def progress(done: int, total: int, step: str) -> None:
        post(LoadProgress(model, done, total, step))

    try:
        info = backend.load(model, progress)
    except QwenEdgeError as error:
        log.warning("loading %s failed: %s", model, error)
        post(LoadFailed(model, str(error)))
        return None
    except Exception as error:  # shown in the UI; the traceback goes to the log
        log.exception("loading %s failed", model)
        post(LoadFailed(model, f"loading {model} failed unexpectedly: {error!r}"))
        return None
    post(ModelLoaded(info))
    return info


def run_reply(
    job: ReplyJob,
    backend: ChatBackend,
    history: HistoryStore,
    post: Callable[[TextualMessage], object],
    commit_interval: float,
) -> None:
    """Generate the reply of `job` in the calling (worker) thread.

    The reply row ends with the text generated so far and a final status, also when generation
    raises. Only a killed process leaves it STREAMING, and the next start marks it INTERRUPTED.
    """
    writer = ReplyWriter(history, job.reply_id, commit_interval)
    status, error, finish = ERROR, None, None
    try:
        if load_model(backend, job.settings.model, post) is None:
            error = f"model {job.settings.model!r} could not be loaded"
            return
        for event in backend.stream(job.messages, job.settings, job.stop):
            if job.stop.is_set():
                break
            if isinstance(event, TurnStarted):
                post(ReplyTurnStarted(job, event))
                continue
            job.text += event.text
            writer.update(job.text)
            job.stats, finish = event.stats, event.finish_reason
            if job.buffer.push(event.text):
                post(ReplyUpdated(job))
        status = LENGTH if finish == "length" else COMPLETE
        if job.stop.is_set():
            status = STOPPED
    except QwenEdgeError as failure:
        log.warning("generating reply %d failed: %s", job.reply_id, failure)
        error = str(failure)
    except Exception as failure:  # shown in the UI; the traceback goes to the log
        log.exception("generating reply %d failed", job.reply_id)
        error = f"generation failed unexpectedly: {failure!r}"
    finally:
        writer.close(status)
        job.done.set()
        post(ReplyFinished(job, status, error))
