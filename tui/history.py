"""Chat history on disk: conversations and their messages in one SQLite database.

The database is `chat.sqlite3` in qwen-edge's data directory (see `qwen_edge.store.home`). It runs
in WAL mode with foreign keys on, so two app instances can read and write at once. The schema
version is `PRAGMA user_version`; `MIGRATIONS[i]` upgrades a database from version i to i + 1.
A file SQLite cannot read is moved aside, never deleted, and a fresh database takes its place.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qwen_edge import store
from qwen_edge.errors import QwenEdgeError

log = logging.getLogger("qwen_edge.tui")

DATABASE_NAME = "chat.sqlite3"
BUSY_TIMEOUT_MS = 10_000

# Message roles and the status of a stored message.
USER, ASSISTANT = "user", "assistant"
COMPLETE = "complete"  # a user message, or a reply that ended with the end-of-turn token
LENGTH = "length"  # the reply reached max tokens or the context size
STREAMING = "streaming"  # a reply still being written
STOPPED = "stopped"  # the user stopped the reply
INTERRUPTED = "interrupted"  # the writing process died mid-reply
ERROR = "error"  # generation failed; the reply keeps the text written before the error
# Notes the UI and exports show for a reply that did not end normally.
STATUS_NOTES = {
    STREAMING: "writing…",
    STOPPED: "stopped",
    INTERRUPTED: "interrupted: the app closed before the reply finished",
    LENGTH: "cut off at max tokens",
    ERROR: "failed",
}

MIGRATIONS: list[list[str]] = [
    # 0 -> 1: conversations and messages
    [
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            model TEXT NOT NULL,
            system_prompt TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX messages_by_conversation ON messages(conversation_id, id)",
    ],
    # 1 -> 2: sampling settings per conversation
    [
        "ALTER TABLE conversations ADD COLUMN temperature REAL NOT NULL DEFAULT 0.7",
        "ALTER TABLE conversations ADD COLUMN top_p REAL NOT NULL DEFAULT 0.8",
        "ALTER TABLE conversations ADD COLUMN max_tokens INTEGER NOT NULL DEFAULT 1024",
    ],
    # 2 -> 3: the status of each message and the process writing a streamed reply
    [
        "ALTER TABLE messages ADD COLUMN status TEXT NOT NULL DEFAULT 'complete'",
        "ALTER TABLE messages ADD COLUMN writer_pid INTEGER",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def default_path() -> Path:
    return store.home() / DATABASE_NAME


@dataclass(frozen=True)
class ConversationSettings:
    """Model and sampling settings of a conversation.

    An empty system prompt means the chat template's default one.
    """

    model: str
    system_prompt: str = ""
    temperature: float = 0.7
    top_p: float = 0.8
    max_tokens: int = 1024

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise QwenEdgeError("the model must not be empty; give a store name, path or repo id")
        if self.temperature < 0:
            raise QwenEdgeError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise QwenEdgeError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise QwenEdgeError(f"max tokens must be at least 1, got {self.max_tokens}")


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    settings: ConversationSettings
    created_at: float  # seconds since the epoch
    updated_at: float


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation_id: int
    role: str
    content: str
    status: str
    created_at: float


class HistoryStore:
    """One connection to the history database, shared by the UI thread and the reply writer.

    Every public method runs under a lock and commits before it returns.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        # Set when an unreadable database was moved aside on opening; the UI shows it.
        self.recovery_message: str | None = None
        self._lock = threading.RLock()
        self._connection = self._open()

    # -- opening, migrations and recovery

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect_and_migrate()
        except sqlite3.OperationalError as error:
            # Locked, read-only, out of disk space: the file may be fine, so it stays in place.
            raise QwenEdgeError(
                f"cannot open the history database {self.path}: {error}; check that no other "
                "program holds it locked, that it is writable and that the disk has free space"
            ) from error
        except sqlite3.DatabaseError as error:
            moved = self._move_aside()
            self.recovery_message = (
                f"The history database {self.path} could not be read ({error}). It was moved to "
                f"{moved} and a new, empty database was created. Nothing was deleted: the old "
                "file is still there for recovery with the sqlite3 tool."
            )
            log.warning("%s", self.recovery_message)
            return self._connect_and_migrate()

    def _connect_and_migrate(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,  # shared by the UI and the reply writer, under self._lock
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Check before changing anything, so a file this version cannot use stays as it is.
            check_version(connection, self.path)
            problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA foreign_keys = ON")
            migrate(connection, self.path)
        except BaseException:
            connection.close()
            raise
        return connection

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        counter = 1
        while target.exists():
            counter += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{counter}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                shutil.move(source, Path(f"{target}{suffix}"))
        return target

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._connection.execute("PRAGMA user_version").fetchone()[0]

    def recover_interrupted(self) -> int:
        """Mark replies left in the streaming state by a process that no longer runs as
        interrupted; return how many were marked.

        Call it before this process starts a reply: a streaming reply that names this process's
        pid then comes from an earlier process that had the same pid (common in containers).
        """
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, writer_pid FROM messages WHERE status = ?", (STREAMING,)
            ).fetchall()
            dead = [(INTERRUPTED, id_) for id_, pid in rows if not _process_alive(pid)]
            db.executemany("UPDATE messages SET status = ? WHERE id = ?", dead)
        return len(dead)

    # -- conversations

    def create_conversation(self, title: str, settings: ConversationSettings) -> Conversation:
        now = self.clock()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO conversations (title, model, system_prompt, temperature, top_p, "
                "max_tokens, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (title, *_settings_row(settings), now, now),
            )
        return Conversation(cursor.lastrowid, title, settings, now, now)

    def list_conversations(self, title_filter: str = "") -> list[Conversation]:
        """Return the conversations, most recently updated first; with `title_filter`, only those
        whose title contains it (case-insensitive)."""
        with self._lock:
            rows = self._connection.execute(
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations "
                "ORDER BY updated_at DESC, id DESC"
            ).fetchall()
        conversations = [_conversation(row) for row in rows]
        needle = title_filter.strip().casefold()
        return [c for c in conversations if needle in c.title.casefold()]

    def get_conversation(self, conversation_id: int) -> Conversation:
        with self._lock:
            row = self._connection.execute(
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = ?",
                (conversation_id,),
            ).fetchone()
        if row is None:
            raise QwenEdgeError(f"conversation {conversation_id} not found; it may be deleted")
        return _conversation(row)

    def rename_conversation(self, conversation_id: int, title: str) -> Conversation:
        title = title.strip()
        if not title:
            raise QwenEdgeError("a conversation title must not be empty")
        with self._transaction() as db:
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))
        return self.get_conversation(conversation_id)

    def update_settings(self, conversation_id: int, settings: ConversationSettings) -> Conversation:
        with self._transaction() as db:
            db.execute(
                "UPDATE conversations SET model = ?, system_prompt = ?, temperature = ?, "
                "top_p = ?, max_tokens = ? WHERE id = ?",
                (*_settings_row(settings), conversation_id),
            )
        return self.get_conversation(conversation_id)

    def delete_conversation(self, conversation_id: int) -> None:
        """Delete a conversation and (by the foreign key's cascade) its messages."""
        with self._transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # -- messages

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        with self._lock:
            rows = self._connection.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ).fetchall()
        return [StoredMessage(*row) for row in rows]

    def add_message(
        self, conversation_id: int, role: str, content: str, status: str = COMPLETE
    ) -> StoredMessage:
        """Append a message and commit it; a reply in the STREAMING state records this process
        as its writer."""
        now = self.clock()
        pid = os.getpid() if status == STREAMING else None
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO messages (conversation_id, role, content, status, writer_pid, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, role, content, status, pid, now),
            )
            db.execute(
                "UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id)
            )
        return StoredMessage(cursor.lastrowid, conversation_id, role, content, status, now)

    def update_message(self, message_id: int, content: str, status: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE messages SET content = ?, status = ? WHERE id = ?",
                (content, status, message_id),
            )

    def delete_messages_from(self, conversation_id: int, message_id: int) -> int:
        """Delete the message `message_id` and every later one of its conversation; return how
        many were deleted."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
                (conversation_id, message_id),
            )
        return cursor.rowcount


def check_version(connection: sqlite3.Connection, path: Path) -> int:
    """Return the schema version of `path`; raise QwenEdgeError if it is newer than this code."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise QwenEdgeError(
            f"the history database {path} has schema version {version}, but this qwen-edge "
            f"knows versions up to {SCHEMA_VERSION}; upgrade qwen-edge, or set QWEN_EDGE_HOME "
            "to use another data directory"
        )
    return version


def migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations `path` is missing, each in its own transaction with its version
    bump, so a crash leaves the database at a version boundary."""
    while True:
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Read under the write lock: another instance may have migrated in the meantime.
            version = check_version(connection, path)
            if version == SCHEMA_VERSION:
                connection.execute("COMMIT")
                return
            for statement in MIGRATIONS[version]:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        log.info("migrated %s to schema version %d", path, version + 1)


def open_history(path: Path | None = None, clock: Callable[[], float] = time.time) -> HistoryStore:
    """Open (creating or migrating as needed) the history database, by default the one in the
    user's data directory, and mark replies of crashed processes as interrupted."""
    history = HistoryStore(path or default_path(), clock)
    history.recover_interrupted()
    return history


_CONVERSATION_COLUMNS = (
    "id, title, model, system_prompt, temperature, top_p, max_tokens, created_at, updated_at"
)
_MESSAGE_COLUMNS = "id, conversation_id, role, content, status, created_at"


def _settings_row(settings: ConversationSettings) -> tuple:
    return (
        settings.model,
        settings.system_prompt,
        settings.temperature,
        settings.top_p,
        settings.max_tokens,
    )


def _conversation(row: tuple) -> Conversation:
    id_, title, model, system_prompt, temperature, top_p, max_tokens, created, updated = row
    settings = ConversationSettings(model, system_prompt, temperature, top_p, max_tokens)
    return Conversation(id_, title, settings, created, updated)


def _process_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    if pid == os.getpid():
        return False  # see recover_interrupted
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user has this pid
    return True
