"""The chat app: `qwen-edge chat [-m MODEL]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from textual.app import App

from qwen_edge import store
from qwen_edge.tui.backend import ChatBackend
from qwen_edge.tui.commands import ChatCommands
from qwen_edge.tui.history import ConversationSettings, HistoryStore, open_history
from qwen_edge.tui.reply_writer import COMMIT_INTERVAL
from qwen_edge.tui.screens.chat import ChatScreen

LOG_NAME = "chat.log"

# How long quitting waits for a reply being written to store its final text (seconds).
QUIT_WAIT = 5.0


class ChatApp(App[int]):
    CSS_PATH = "styles/chat.tcss"
    TITLE = "qwen-edge chat"
    COMMANDS = App.COMMANDS | {ChatCommands}

    def __init__(
        self,
        backend: ChatBackend,
        history: HistoryStore,
        model: str | None = None,
        *,
        settings: ConversationSettings | None = None,
        commit_interval: float = COMMIT_INTERVAL,
    ) -> None:
        """Open the chat app on `history`, generating with `backend`.

        `model` is the model of new conversations (default: `store.default_model()`). When it is
        given, the app opens on a new conversation instead of the newest one. `settings` sets
        every setting of new conversations; `model`, when given, replaces its model.
        """
        super().__init__()
        self.backend = backend
        self.history = history
        self.default_model = model or (settings.model if settings else store.default_model())
        settings = settings or ConversationSettings(self.default_model)
        self.default_settings = replace(settings, model=self.default_model)
        self.start_new = model is not None
        self.commit_interval = commit_interval

    def on_mount(self) -> None:
        self.push_screen(ChatScreen(self.default_settings, start_new=self.start_new))

    async def action_quit(self) -> None:
        """Stop a reply being written and wait until its text is stored, then exit."""
        chat_screens = [s for s in self.screen_stack if isinstance(s, ChatScreen)]
        job = chat_screens[0].job if chat_screens else None
        if job is not None:
            job.stop.set()
            await asyncio.to_thread(job.done.wait, QUIT_WAIT)
        self.exit(0)


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `qwen-edge chat` to `parser`."""
    parser.add_argument(
        "-m",
        "--model",
        default=None,
        help="model of new conversations: a name in the local store, a directory or a Hugging "
        f"Face repo id; given, the app opens on a new conversation with it (default: "
        f"$QWEN_EDGE_MODEL, else {store.DEMO_MODEL})",
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=None,
        help="chat history database (default: chat.sqlite3 in the data directory, "
        "$QWEN_EDGE_HOME or the platform's user data directory)",
    )


def run_chat(model: str | None = None, history_path: Path | None = None) -> int:
    """Run the chat app until the user quits; return the exit status.

    Raises QwenEdgeError when the history database cannot be opened. While the app owns the
    terminal, qwen_edge's log goes to chat.log beside the history database.
    """
    from qwen_edge.tui.backend import QwenBackend

    history = open_history(history_path)
    backend = QwenBackend()
    try:
        with log_to_file(history.path.with_name(LOG_NAME)):
            status = ChatApp(backend, history, model).run()
    finally:
        backend.close()
        history.close()
    return status or 0


@contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Send qwen_edge's log records (INFO and above) to `path` instead of the terminal."""
    logger = logging.getLogger("qwen_edge")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved_level, saved_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    logger.propagate = False  # the root handler writes to stderr, under the app's screen
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate


def run_chat_command(args: argparse.Namespace) -> int:
    """Entry point for `qwen-edge chat` after `add_chat_arguments`."""
    return run_chat(args.model, args.history)
