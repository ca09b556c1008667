"""The SQLite chat history: schema, migrations, concurrent writers, corruption recovery and the
reply writer."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from qwen_edge.errors import QwenEdgeError
from qwen_edge.tui.history import (
    ASSISTANT,
    COMPLETE,
    INTERRUPTED,
    MIGRATIONS,
    SCHEMA_VERSION,
    STOPPED,
    STREAMING,
    USER,
    ConversationSettings,
    HistoryStore,
    default_path,
    open_history,
)
from qwen_edge.tui.reply_writer import ReplyWriter
from qwen_edge.tui.testing import fixed_clock

SETTINGS = ConversationSettings("test-model")


def database_version_at(path: Path, version: int) -> sqlite3.Connection:
    """Create a database at schema `version` by running only the first migrations."""
    connection = sqlite3.connect(path, isolation_level=None)
    for steps in MIGRATIONS[:version]:
        for statement in steps:
            connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {version}")
    return connection


def test_new_database_wal_and_foreign_keys(tmp_path):
    history = open_history(tmp_path / "chat.sqlite3")
    assert history.schema_version == SCHEMA_VERSION
    journal_mode = history._connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert journal_mode == "wal"
    assert history._connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    history.close()


def test_default_path_follows_qwen_edge_home(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_EDGE_HOME", str(tmp_path / "data"))
    assert default_path() == tmp_path / "data" / "chat.sqlite3"
    history = open_history()
    assert (tmp_path / "data" / "chat.sqlite3").is_file()
    history.close()


@pytest.mark.parametrize("old_version", range(1, SCHEMA_VERSION))
def test_migration_keeps_data_from_older_version(tmp_path, old_version):
    path = tmp_path / "chat.sqlite3"
    old = database_version_at(path, old_version)
    old.execute(
        "INSERT INTO conversations (id, title, model, system_prompt, created_at, updated_at) "
        "VALUES (1, 'kept 保留', 'm', 'sys', 1.0, 2.0)"
    )
    old.execute(
        "INSERT INTO messages (conversation_id, role, content, created_at) "
        "VALUES (1, 'user', 'question', 1.0), (1, 'assistant', 'answer', 2.0)"
    )
    old.close()

    history = open_history(path)
    assert history.schema_version == SCHEMA_VERSION
    conversation = history.get_conversation(1)
    assert conversation.title == "kept 保留"
    assert conversation.settings == ConversationSettings("m", "sys", 0.7, 0.8, 1024)
    messages = [(m.role, m.content, m.status) for m in history.messages(1)]
    assert messages == [(USER, "question", COMPLETE), (ASSISTANT, "answer", COMPLETE)]
    history.close()


def test_newer_schema_version_rejected_untouched(tmp_path):
    path = tmp_path / "chat.sqlite3"
    future = database_version_at(path, SCHEMA_VERSION)
    future.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    future.close()
    before = path.read_bytes()

    with pytest.raises(QwenEdgeError, match=f"schema version {SCHEMA_VERSION + 5}"):
        open_history(path)
    assert path.read_bytes() == before
    assert list(tmp_path.glob("*.corrupt-*")) == []


def test_garbage_file_moved_aside(tmp_path):
    path = tmp_path / "chat.sqlite3"
    garbage = b"definitely not SQLite " * 500
    path.write_bytes(garbage)

    history = open_history(path)

    moved = list(tmp_path.glob("chat.sqlite3.corrupt-*"))
    assert len(moved) == 1
    assert moved[0].read_bytes() == garbage
    assert str(moved[0]) in history.recovery_message
    assert "could not be read" in history.recovery_message
    assert history.schema_version == SCHEMA_VERSION
    conversation = history.create_conversation("fresh", SETTINGS)
    assert history.get_conversation(conversation.id).title == "fresh"
    history.close()


def test_damaged_pages_detected_and_moved_aside(tmp_path):
    path = tmp_path / "chat.sqlite3"
    history = open_history(path)
    conversation = history.create_conversation("big", SETTINGS)
    for i in range(300):
        history.add_message(conversation.id, USER, f"message {i} " * 20)
    history._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    history.close()
    data = bytearray(path.read_bytes())
    page_size = 4096
    assert len(data) > 8 * page_size
    # Overwrite pages 3 to 6 (b-tree pages of the messages table) with a pattern.
    data[2 * page_size : 6 * page_size] = b"\xa5" * (4 * page_size)
    path.write_bytes(bytes(data))

    reopened = open_history(path)

    assert reopened.recovery_message is not None
    moved = list(tmp_path.glob("chat.sqlite3.corrupt-*"))
    assert [p.read_bytes() for p in moved if not p.name.endswith(("-wal", "-shm"))] == [bytes(data)]
    assert reopened.list_conversations() == []
    reopened.close()


def test_unopenable_path_not_moved(tmp_path):
    path = tmp_path / "chat.sqlite3"
    path.mkdir()  # SQLite cannot open a directory: an OperationalError, not corruption
    with pytest.raises(QwenEdgeError, match="cannot open the history database"):
        open_history(path)
    assert path.is_dir()
    assert list(tmp_path.glob("*.corrupt-*")) == []


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from qwen_edge.tui.history import ConversationSettings, open_history, USER, ASSISTANT

    path, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    history = open_history(path)
    shared = history.list_conversations("shared")[0]
    own = history.create_conversation(name, ConversationSettings("m"))
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for i in range(count):
        history.add_message(own.id, USER, f"{name} {i}")
        history.add_message(shared.id, ASSISTANT, f"{name} {i}")
    history.close()
    """
)


def test_two_instances_write_at_once(tmp_path):
    path = tmp_path / "chat.sqlite3"
    history = open_history(path)
    shared = history.create_conversation("shared", SETTINGS)
    count = 150
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(path), name, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("alpha", "beta")
    ]
    for writer in writers:
        assert writer.stdout.readline().strip() == "ready"
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()
    for writer in writers:
        _, errors = writer.communicate(timeout=120)
        assert writer.returncode == 0, errors

    by_title = {c.title: c for c in history.list_conversations()}
    for name in ("alpha", "beta"):
        contents = [m.content for m in history.messages(by_title[name].id)]
        assert contents == [f"{name} {i}" for i in range(count)]
    shared_contents = [m.content for m in history.messages(shared.id)]
    assert len(shared_contents) == 2 * count
    for name in ("alpha", "beta"):
        # Each writer's messages keep their order within the shared conversation.
        assert [c for c in shared_contents if c.startswith(name)] == [
            f"{name} {i}" for i in range(count)
        ]
    history.close()


def test_conversations_listed_newest_first_and_filtered(tmp_path):
    history = open_history(tmp_path / "chat.sqlite3", fixed_clock())
    first = history.create_conversation("Rust lifetimes", SETTINGS)
    second = history.create_conversation("长江 question", SETTINGS)
    third = history.create_conversation("rusty nails", SETTINGS)
    assert [c.id for c in history.list_conversations()] == [third.id, second.id, first.id]

    history.add_message(first.id, USER, "bump")  # a new message moves it to the top
    assert [c.id for c in history.list_conversations()] == [first.id, third.id, second.id]
    assert [c.id for c in history.list_conversations("RUST")] == [first.id, third.id]
    assert [c.id for c in history.list_conversations("长江")] == [second.id]
    assert history.list_conversations("nothing like this") == []
    history.close()


def test_delete_conversation_cascades_to_messages(tmp_path):
    history = open_history(tmp_path / "chat.sqlite3")
    conversation = history.create_conversation("doomed", SETTINGS)
    history.add_message(conversation.id, USER, "q")
    history.delete_conversation(conversation.id)
    count = history._connection.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert count == 0
    with pytest.raises(QwenEdgeError, match="not found"):
        history.get_conversation(conversation.id)
    history.close()


def test_rename_rejects_empty_title(tmp_path):
    history = open_history(tmp_path / "chat.sqlite3")
    conversation = history.create_conversation("title", SETTINGS)
    with pytest.raises(QwenEdgeError, match="must not be empty"):
        history.rename_conversation(conversation.id, "   ")
    history.close()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"top_p": 0.0}, "top-p must be in"),
        ({"top_p": 1.5}, "top-p must be in"),
        ({"max_tokens": 0}, "max tokens must be at least 1"),
        ({"model": " "}, "model must not be empty"),
    ],
)
def test_invalid_settings_rejected(changes, message):
    values = {"model": "m", **changes}
    with pytest.raises(QwenEdgeError, match=message):
        ConversationSettings(**values)


def test_dead_writer_reply_marked_interrupted(tmp_path):
    path = tmp_path / "chat.sqlite3"
    history = HistoryStore(path)
    conversation = history.create_conversation("c", SETTINGS)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        orphan = history.add_message(conversation.id, ASSISTANT, "half", STREAMING)
        live = history.add_message(conversation.id, ASSISTANT, "still going", STREAMING)
        for message_id, pid in ((orphan.id, dead_pid), (live.id, alive.pid)):
            history._connection.execute(
                "UPDATE messages SET writer_pid = ? WHERE id = ?", (pid, message_id)
            )

        assert history.recover_interrupted() == 1
        statuses = {m.id: m.status for m in history.messages(conversation.id)}
        assert statuses == {orphan.id: INTERRUPTED, live.id: STREAMING}
    finally:
        alive.kill()
        alive.wait()
    history.close()


def test_reply_writer_commits_while_streaming(tmp_path):
    path = tmp_path / "chat.sqlite3"
    history = open_history(path)
    conversation = history.create_conversation("c", SETTINGS)
    reply = history.add_message(conversation.id, ASSISTANT, "", STREAMING)
    reader = sqlite3.connect(path)  # a second connection sees only committed text

    def committed() -> tuple[str, str]:
        return reader.execute(
            "SELECT content, status FROM messages WHERE id = ?", (reply.id,)
        ).fetchone()

    writer = ReplyWriter(history, reply.id, interval=0.05)
    writer.update("first words")
    deadline = time.monotonic() + 5
    while committed() != ("first words", STREAMING):
        assert time.monotonic() < deadline, f"not committed: {committed()}"
        time.sleep(0.01)
    writer.update("first words and more")
    writer.close(STOPPED)
    assert committed() == ("first words and more", STOPPED)
    assert writer.commits >= 2
    reader.close()
    history.close()
