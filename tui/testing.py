"""Helpers for driving the chat app in tests and benchmarks: condition waits and screen text."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

from textual import events
from textual.app import App
from textual.pilot import Pilot

from qwen_edge.tui.app import ChatApp
from qwen_edge.tui.history import ConversationSettings, HistoryStore, open_history
from qwen_edge.tui.scripted import ScriptedBackend

TEST_MODEL = "test-model"


async def wait_until(
    pilot: Pilot, condition: Callable[[], object], timeout: float = 10.0, what: str = ""
) -> None:
    """Let the app run until `condition()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await pilot.pause(0.01)


async def type_text(pilot: Pilot, text: str) -> None:
    """Send `text` one key event per character, as a terminal driver does; `Pilot.press` cannot
    type some characters (a full-width comma, for one)."""
    for character in text:
        if character.isalnum():
            key = character
        else:
            key = unicodedata.name(character, character).lower().replace("-", "_")
            key = key.replace(" ", "_")
        pilot.app.post_message(events.Key(key, character))
        await pilot.pause()


def screen_lines(app: App) -> list[str]:
    """Return the text of every line of the screen as rendered, one string per row."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def fixed_clock(start: float = 1_750_000_000.0, step: float = 60.0) -> Callable[[], float]:
    """Return a clock that advances by `step` seconds on every call, for stable timestamps."""
    now = [start - step]

    def clock() -> float:
        now[0] += step
        return now[0]

    return clock


def make_app(
    directory: Path,
    backend: ScriptedBackend | None = None,
    model: str | None = TEST_MODEL,
    history: HistoryStore | None = None,
    commit_interval: float = 0.05,
    settings: ConversationSettings | None = None,
) -> ChatApp:
    """Return a ChatApp on a scripted backend and a history database in `directory`."""
    history = history or open_history(directory / "chat.sqlite3", fixed_clock())
    return ChatApp(
        backend or ScriptedBackend(),
        history,
        model,
        settings=settings,
        commit_interval=commit_interval,
    )
