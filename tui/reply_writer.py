"""Commit a streaming reply to the history database while it grows.

The generating thread calls `update` with the whole text so far; a timer thread commits the
latest text every `interval` seconds when it changed. A process killed mid-reply therefore loses
at most `interval` seconds of text plus one commit.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from qwen_edge.tui.history import STREAMING, HistoryStore

log = logging.getLogger("qwen_edge.tui")

COMMIT_INTERVAL = 0.5  # seconds


class ReplyWriter:
    def __init__(
        self, history: HistoryStore, message_id: int, interval: float = COMMIT_INTERVAL
    ) -> None:
        self.history = history
        self.message_id = message_id
        self.interval = interval
        self.text = ""
        self.commits = 0
        self._dirty = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"reply-writer-{message_id}", daemon=True
        )
        self._thread.start()

    def update(self, text: str) -> None:
        """Set the reply's whole text so far."""
        with self._lock:
            self.text = text
            self._dirty = True

    def close(self, status: str) -> None:
        """Stop the timer and commit the final text with its status (COMPLETE, STOPPED...)."""
        self._closed.set()
        self._thread.join()
        with self._lock:
            text = self.text
            self._dirty = False
        self.history.update_message(self.message_id, text, status)
        self.commits += 1

    def _run(self) -> None:
        while not self._closed.wait(self.interval):
            self._commit()

    def _commit(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            text = self.text
            self._dirty = False
        try:
            self.history.update_message(self.message_id, text, STREAMING)
        except sqlite3.Error as error:
            # The next tick retries; close() writes the final text regardless.
            log.warning("committing reply %d failed: %s", self.message_id, error)
            with self._lock:
                self._dirty = True
            return
        self.commits += 1
