"""Pilot tests of the chat app on a scripted token stream: sending, streaming, stopping,
regenerating, editing, history on disk, model handling and the status line."""

from __future__ import annotations

import pytest
from textual import events
from textual.widgets import Input, ListView, Markdown, ProgressBar, TextArea

from qwen_edge.tui.app import ChatApp
from qwen_edge.tui.history import (
    ASSISTANT,
    COMPLETE,
    ERROR,
    STOPPED,
    STREAMING,
    USER,
    ConversationSettings,
    open_history,
)
from qwen_edge.tui.scripted import ScriptedBackend, split_chunks
from qwen_edge.tui.testing import TEST_MODEL, make_app, screen_lines, wait_until
from qwen_edge.tui.widgets.composer import Composer
from qwen_edge.tui.widgets.markdown_view import MarkdownView
from qwen_edge.tui.widgets.message_view import FREEZE_CHARACTERS

pytestmark = pytest.mark.asyncio

CODE_REPLY = "Here you go:\n\n```python\ndef double(x):\n    return 2 * x\n```\n\nThat is all."


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Keep the model store and history of the machine out of reach."""
    monkeypatch.setenv("QWEN_EDGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QWEN_EDGE_MODEL", raising=False)


def idle(app: ChatApp) -> bool:
    return app.screen.job is None


async def send(pilot, text: str) -> None:
    """Type `text` into the composer and press Enter."""
    composer = pilot.app.screen.query_one(Composer)
    composer.focus()
    await pilot.press(*text)
    await pilot.press("enter")


async def send_and_wait(pilot, text: str) -> None:
    app = pilot.app
    before = len(app.screen.message_views)
    await send(pilot, text)
    await wait_until(
        pilot, lambda: len(app.screen.message_views) >= before + 2 and idle(app), what="reply"
    )


def stored(app: ChatApp) -> list[tuple[str, str, str]]:
    conversation = app.screen.conversation
    return [(m.role, m.content, m.status) for m in app.history.messages(conversation.id)]


def status_text(app: ChatApp) -> str:
    return str(app.screen.query_one("#status").render())


async def test_send_commits_user_message_before_reply(tmp_path):
    backend = ScriptedBackend(["Hi there, friend!"], pause_after=0)
    app = make_app(tmp_path, backend)
    async with app.run_test() as pilot:
        await send(pilot, "hello")
        await wait_until(pilot, backend.paused.is_set, what="the reply to start")

        assert stored(app) == [(USER, "hello", COMPLETE), (ASSISTANT, "", STREAMING)]
        backend.resume.set()
        await wait_until(pilot, lambda: idle(app), what="the reply to finish")

        assert stored(app) == [
            (USER, "hello", COMPLETE),
            (ASSISTANT, "Hi there, friend!", COMPLETE),
        ]
        assert app.screen.query_one(Composer).text == ""
        assert backend.calls == [[{"role": "user", "content": "hello"}]]


async def test_reply_streams_chunk_by_chunk(tmp_path):
    backend = ScriptedBackend(["abcdefghijkl"], chunk_size=2, pause_after=3)
    app = make_app(tmp_path, backend)
    async with app.run_test() as pilot:
        await send(pilot, "stream please")
        await wait_until(pilot, backend.paused.is_set)
        reply_view = app.screen.message_views[-1]
        await wait_until(pilot, lambda: reply_view.content == "abcdef", what="three chunks shown")
        assert reply_view.status == STREAMING
        assert "writing…" in "\n".join(screen_lines(app))

        backend.resume.set()
        await wait_until(pilot, lambda: idle(app))
        assert reply_view.content == "abcdefghijkl"
        assert reply_view.status == COMPLETE


async def test_reply_renders_markdown_code_block(tmp_path):
    app = make_app(tmp_path, ScriptedBackend([CODE_REPLY]))
    async with app.run_test(size=(100, 30)) as pilot:
        await send_and_wait(pilot, "code please")
        screen = "\n".join(screen_lines(app))
        assert "def double(x):" in screen
        assert "```" not in screen  # the fence is rendered as a code block, not as text
        assert app.screen.message_views[-1].body.source == CODE_REPLY


async def test_escape_stops_reply_keeps_text(tmp_path):
    backend = ScriptedBackend(["one two three four five six"], chunk_size=4, pause_after=3)
    app = make_app(tmp_path, backend)
    async with app.run_test() as pilot:
        await send(pilot, "count")
        await wait_until(pilot, backend.paused.is_set)
        await pilot.press("escape")
        await wait_until(pilot, lambda: idle(app), what="the stopped reply")

        partial = "one two thre"
        assert stored(app)[-1] == (ASSISTANT, partial, STOPPED)
        view = app.screen.message_views[-1]
        assert view.content == partial
        assert view.status == STOPPED
        assert "Assistant · stopped" in "\n".join(screen_lines(app))


async def test_regenerate_replaces_last_reply(tmp_path):
    backend = ScriptedBackend(["first answer", "second answer"])
    app = make_app(tmp_path, backend)
    async with app.run_test() as pilot:
        await send_and_wait(pilot, "question")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(backend.calls) == 2 and idle(app))

        assert stored(app) == [(USER, "question", COMPLETE), (ASSISTANT, "second answer", COMPLETE)]
        assert backend.calls[1] == backend.calls[0]
        assert [v.content for v in app.screen.message_views] == ["question", "second answer"]


async def test_edit_and_resend_last_message(tmp_path):
    backend = ScriptedBackend(["answer to typo", "answer to fix"])
    app = make_app(tmp_path, backend)
    async with app.run_test() as pilot:
        await send_and_wait(pilot, "helo wrld")
        await pilot.press("f3")
        editor = await_screen_widget(app, "#edited", TextArea)
        assert editor.text == "helo wrld"
        editor.text = "hello world"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: len(backend.calls) == 2 and idle(app))

        assert stored(app) == [
            (USER, "hello world", COMPLETE),
            (ASSISTANT, "answer to fix", COMPLETE),
        ]
        assert backend.calls[1] == [{"role": "user", "content": "hello world"}]
        assert [v.content for v in app.screen.message_views] == ["hello world", "answer to fix"]


def await_screen_widget(app: ChatApp, selector: str, kind: type):
    return app.screen.query_one(selector, kind)


async def test_conversations_new_rename_filter_delete(tmp_path):
    app = make_app(tmp_path, ScriptedBackend(["ok"]))
    async with app.run_test(size=(100, 30)) as pilot:
        await send_and_wait(pilot, "first topic")
        await pilot.press("ctrl+n")
        assert app.screen.conversation is None
        assert app.screen.message_views == []
        await send_and_wait(pilot, "second topic")

        def titles() -> list[str]:
            return [item.conversation.title for item in app.screen.query_one("#sidebar").items]

        assert titles() == ["second topic", "first topic"]  # newest first

        await pilot.press("f2")
        rename_input = app.screen.query_one("#value", Input)
        assert rename_input.value == "second topic"
        rename_input.value = "Renamed 第二"
        await pilot.press("enter")
        await wait_until(pilot, lambda: titles() == ["Renamed 第二", "first topic"])
        assert app.history.get_conversation(app.screen.conversation.id).title == "Renamed 第二"

        await pilot.press("ctrl+f")
        await pilot.press(*"first")
        await wait_until(pilot, lambda: titles() == ["first topic"], what="filtered list")
        app.screen.query_one("#filter", Input).value = ""
        await wait_until(pilot, lambda: len(titles()) == 2)

        deleted_id = app.screen.conversation.id
        await pilot.press("f8")
        await pilot.press("n")  # cancel keeps it
        assert len(app.history.list_conversations()) == 2
        await pilot.press("f8")
        await pilot.press("y")
        await wait_until(pilot, lambda: titles() == ["first topic"])
        assert [c.title for c in app.history.list_conversations()] == ["first topic"]
        assert app.history.messages(deleted_id) == []
        assert app.screen.conversation.title == "first topic"


async def test_open_conversation_from_sidebar(tmp_path):
    app = make_app(tmp_path, ScriptedBackend(["reply one", "reply two"]))
    async with app.run_test(size=(100, 30)) as pilot:
        await send_and_wait(pilot, "alpha")
        await pilot.press("ctrl+n")
        await send_and_wait(pilot, "beta")

        items = app.screen.query_one("#conversation-items", ListView)
        items.focus()
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: app.screen.conversation.title == "alpha")
        assert [v.content for v in app.screen.message_views] == ["alpha", "reply one"]


async def test_settings_modal_saves_and_validates(tmp_path):
    backend = ScriptedBackend(["fine"])
    app = make_app(tmp_path, backend)
    async with app.run_test(size=(100, 36)) as pilot:
        await send_and_wait(pilot, "hi")
        await pilot.press("ctrl+s")
        modal = app.screen
        modal.query_one("#temperature", Input).value = "-1"
        await pilot.press("ctrl+s")
        assert app.screen is modal  # not dismissed
        assert "temperature must be >= 0" in str(modal.query_one("#error").render())

        modal.query_one("#temperature", Input).value = "0.2"
        modal.query_one("#top-p", Input).value = "0.9"
        modal.query_one("#max-tokens", Input).value = "64"
        modal.query_one("#system-prompt", TextArea).text = "Answer in haiku."
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.screen is not modal)

        settings = app.history.get_conversation(app.screen.conversation.id).settings
        assert settings == ConversationSettings(TEST_MODEL, "Answer in haiku.", 0.2, 0.9, 64)

        await send_and_wait(pilot, "again")
        assert backend.calls[-1][0] == {"role": "system", "content": "Answer in haiku."}


async def test_settings_cancel_keeps_settings(tmp_path):
    app = make_app(tmp_path, ScriptedBackend(["fine"]))
    async with app.run_test(size=(100, 36)) as pilot:
        await send_and_wait(pilot, "hi")
        before = app.history.get_conversation(app.screen.conversation.id).settings
        await pilot.press("ctrl+s")
        app.screen.query_one("#max-tokens", Input).value = "5"
        await pilot.press("escape")
        assert app.history.get_conversation(app.screen.conversation.id).settings == before


async def test_export_writes_markdown(tmp_path):
    app = make_app(tmp_path, ScriptedBackend([CODE_REPLY]))
    async with app.run_test() as pilot:
        await send_and_wait(pilot, "Write double() 请")
        await pilot.press("f5")
        path_input = app.screen.query_one("#value", Input)
        assert path_input.value.endswith("write-double-请.md")
        target = tmp_path / "export.md"
        path_input.value = str(target)
        await pilot.press("enter")
        await wait_until(pilot, target.exists, what="the exported file")

        text = target.read_text(encoding="utf-8")
        assert text.startswith("# Write double() 请\n")
        assert "## You\n\nWrite double() 请\n" in text
        assert "## Assistant\n\n" + CODE_REPLY in text


async def test_export_to_unwritable_path_reports_error(tmp_path):
    app = make_app(tmp_path, ScriptedBackend(["x"]))
    async with app.run_test(notifications=True) as pilot:
        await send_and_wait(pilot, "hi")
        await pilot.press("f5")
        app.screen.query_one("#value", Input).value = str(tmp_path / "missing-dir" / "a.md")
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: any("Cannot write" in n.message for n in app._notifications)
        )


async def test_copy_reply_and_focused_message(tmp_path):
    app = make_app(tmp_path, ScriptedBackend(["copy me 复制"]))
    async with app.run_test() as pilot:
        await send_and_wait(pilot, "question text")
        await pilot.press("f4")
        assert app.clipboard == "copy me 复制"

        app.screen.message_views[0].focus()
        await pilot.press("c")
        assert app.clipboard == "question text"


async def test_reopen_restores_every_conversation(tmp_path):
    database = tmp_path / "chat.sqlite3"
    backend = ScriptedBackend([CODE_REPLY, "partial reply that gets stopped"], pause_after=2)
    app = make_app(tmp_path, backend, history=open_history(database))
    async with app.run_test() as pilot:
        await send(pilot, "first")
        await wait_until(pilot, backend.paused.is_set)
        backend.resume.set()
        await wait_until(pilot, lambda: idle(app))
        backend.resume.clear()
        await pilot.press("ctrl+n")
        await send(pilot, "second 第二")
        await wait_until(pilot, backend.paused.is_set)
        await pilot.press("escape")
        await wait_until(pilot, lambda: idle(app))
        expected = {
            c.title: [(m.role, m.content, m.status) for m in app.history.messages(c.id)]
            for c in app.history.list_conversations()
        }
    app.history.close()

    reopened = make_app(tmp_path, ScriptedBackend(), model=None, history=open_history(database))
    async with reopened.run_test() as pilot:
        await wait_until(pilot, lambda: reopened.screen.conversation is not None)
        titles = [i.conversation.title for i in reopened.screen.query_one("#sidebar").items]
        assert titles == ["second 第二", "first"]
        assert [(v.role, v.content, v.status) for v in reopened.screen.message_views] == expected[
            "second 第二"
        ]
        assert expected["second 第二"][-1] == (ASSISTANT, "partial ", STOPPED)
        assert expected["first"][-1] == (ASSISTANT, CODE_REPLY, COMPLETE)
    reopened.history.close()


async def test_interrupted_reply_marked_on_reopen(tmp_path):
    history = open_history(tmp_path / "chat.sqlite3")
    conversation = history.create_conversation("crashed", ConversationSettings(TEST_MODEL))
    history.add_message(conversation.id, USER, "tell me")
    reply = history.add_message(conversation.id, ASSISTANT, "", STREAMING)
    history.update_message(reply.id, "half a rep", STREAMING)
    history.close()  # the row names this test's pid, which a new open takes for a dead writer

    app = make_app(tmp_path, model=None, history=open_history(tmp_path / "chat.sqlite3"))
    async with app.run_test(size=(100, 24)) as pilot:
        await wait_until(pilot, lambda: len(app.screen.message_views) == 2)
        view = app.screen.message_views[-1]
        assert (view.content, view.status) == ("half a rep", "interrupted")
        assert "interrupted" in "\n".join(screen_lines(app))


async def test_worker_failure_keeps_partial_reply(tmp_path):
    backend = ScriptedBackend(["abcdefghijklmnop"], chunk_size=4, fail_after=2)
    app = make_app(tmp_path, backend)
    async with app.run_test(notifications=True) as pilot:
        await send(pilot, "crash please")
        await wait_until(pilot, lambda: idle(app) and len(app.screen.message_views) == 2)

        assert stored(app)[-1] == (ASSISTANT, "abcdefgh", ERROR)
        view = app.screen.message_views[-1]
        assert view.status == ERROR
        assert "scripted failure" in view.error
        assert any("scripted failure" in n.message for n in app._notifications)


async def test_missing_model_opens_read_only(tmp_path):
    history = open_history(tmp_path / "chat.sqlite3")
    conversation = history.create_conversation("old", ConversationSettings("gone-model"))
    history.add_message(conversation.id, USER, "earlier question")
    history.add_message(conversation.id, ASSISTANT, "earlier answer")
    backend = ScriptedBackend(missing=["gone-model"])
    app = make_app(tmp_path, backend, model=None, history=history)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.conversation is not None)
        notice = app.screen.query_one("#notice")
        assert notice.display
        notice_text = str(notice.render())
        assert "'gone-model' is not available" in notice_text
        assert "qwen-edge convert" in notice_text
        assert app.screen.query_one(Composer).read_only

        await send(pilot, "more")
        await pilot.press("ctrl+r")
        assert backend.calls == []
        assert len(history.messages(conversation.id)) == 2
        assert [v.content for v in app.screen.message_views] == [
            "earlier question",
            "earlier answer",
        ]


async def test_picking_another_model_unlocks_read_only(tmp_path, monkeypatch):
    home = tmp_path / "home"
    model_dir = home / "models" / "small-model"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text('{"torch_dtype": "bfloat16"}', encoding="utf-8")
    history = open_history(tmp_path / "chat.sqlite3")
    conversation = history.create_conversation("old", ConversationSettings("gone-model"))
    history.add_message(conversation.id, USER, "q")
    backend = ScriptedBackend(["new answer"], missing=["gone-model"])
    app = make_app(tmp_path, backend, model=None, history=history)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.conversation is not None)
        await pilot.press("ctrl+o")
        picker = app.screen
        assert "small-model" in "\n".join(screen_lines(app))
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is not picker)

        assert history.get_conversation(conversation.id).settings.model == "small-model"
        assert not app.screen.query_one(Composer).read_only
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: backend.calls and idle(app))
        assert backend.loads == ["small-model"]


async def test_load_error_shown_without_traceback(tmp_path):
    message = "cannot download Org/model: the Hugging Face hub is unreachable"
    backend = ScriptedBackend(load_errors={"Org/model": message})
    app = make_app(tmp_path, backend, model="Org/model")
    async with app.run_test(notifications=True) as pilot:
        await wait_until(pilot, lambda: any(message in n.message for n in app._notifications))
        await send(pilot, "hi")
        await wait_until(pilot, lambda: len(app.screen.message_views) == 2 and idle(app))
        assert app.screen.message_views[-1].status == ERROR
        assert "Traceback" not in "\n".join(screen_lines(app))


async def test_model_loading_shows_progress(tmp_path):
    backend = ScriptedBackend()
    backend.load_gate.clear()
    app = make_app(tmp_path, backend)
    async with app.run_test() as pilot:
        await wait_until(pilot, backend.loading.is_set, what="the load to start")
        bar = app.screen.query_one("#load-progress", ProgressBar)
        await wait_until(pilot, lambda: bar.display)
        assert "Loading test-model" in status_text(app)

        await pilot.press(*"typing while loading")
        assert app.screen.query_one(Composer).text == "typing while loading"

        backend.load_gate.set()
        await wait_until(pilot, lambda: not bar.display, what="the progress bar to hide")
        assert status_text(app).startswith("test-model · bf16")


async def test_status_line_processed_and_reused(tmp_path):
    backend = ScriptedBackend(["answer one", "answer two"])
    app = make_app(tmp_path, backend)
    async with app.run_test(size=(160, 30)) as pilot:
        await send_and_wait(pilot, "first")
        turn1 = backend.turns[0]
        assert f"prompt: {turn1.processed} processed, 0 reused" in status_text(app)

        await send_and_wait(pilot, "second")
        turn2 = backend.turns[1]
        assert turn2.reused > 0
        text = status_text(app)
        assert f"prompt: {turn2.processed} processed, {turn2.reused} reused" in text
        assert "42.0 tok/s" in text
        assert "first token 0.05 s" in text
        context_used = turn2.prompt_tokens + len(split_chunks("answer two", 4))
        assert f"context {context_used}/32768" in text
        assert "peak 0.50 GB" in text


async def test_context_overflow_drops_oldest_turns(tmp_path):
    backend = ScriptedBackend(["r" * 20], chunk_size=5, context_size=150)
    app = make_app(tmp_path, backend)
    async with app.run_test(size=(160, 30), notifications=True) as pilot:
        await pilot.press("ctrl+s")
        app.screen.query_one("#system-prompt", TextArea).text = "sys"
        app.screen.query_one("#max-tokens", Input).value = "20"
        await pilot.press("ctrl+s")
        for i in range(4):
            await send_and_wait(pilot, f"question number {i}")

        assert backend.turns[-1].dropped_turns > 0
        assert backend.calls[-1][0] == {"role": "system", "content": "sys"}
        assert "oldest turn(s) dropped" in status_text(app)
        assert any("oldest" in n.message for n in app._notifications)


async def test_enter_sends_and_ctrl_j_inserts_newline(tmp_path):
    backend = ScriptedBackend(["ok"])
    app = make_app(tmp_path, backend)
    async with app.run_test() as pilot:
        await pilot.press(*"line one")
        await pilot.press("ctrl+j")
        await pilot.press(*"line two")
        composer = app.screen.query_one(Composer)
        assert composer.text == "line one\nline two"
        await pilot.press("enter")
        await wait_until(pilot, lambda: idle(app) and backend.calls)
        assert backend.calls[0][-1]["content"] == "line one\nline two"


async def test_paste_keeps_multiline_text_intact(tmp_path):
    backend = ScriptedBackend(["ok"])
    app = make_app(tmp_path, backend)
    pasted = "def f():\n\treturn 1\n\n  indented  \n"
    async with app.run_test() as pilot:
        composer = app.screen.query_one(Composer)
        app.post_message(events.Paste(pasted))  # as the terminal driver delivers it
        await wait_until(pilot, lambda: composer.text == pasted)
        await pilot.press("enter")
        await wait_until(pilot, lambda: idle(app) and backend.calls)
        assert app.history.messages(app.screen.conversation.id)[0].content == pasted


async def test_blank_message_not_sent(tmp_path):
    backend = ScriptedBackend(["ok"])
    app = make_app(tmp_path, backend)
    async with app.run_test() as pilot:
        await pilot.press("space", "ctrl+j", "enter")
        assert app.screen.conversation is None
        assert backend.calls == []


async def test_first_run_shows_welcome(tmp_path):
    app = make_app(tmp_path, model=None)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.query("#welcome"))
        assert app.screen.conversation is None
        assert "Type a message below" in "\n".join(screen_lines(app))


async def test_corrupt_history_message_shown(tmp_path):
    database = tmp_path / "chat.sqlite3"
    database.write_bytes(b"this is not a sqlite database" * 100)
    app = make_app(tmp_path, history=open_history(database))
    async with app.run_test(notifications=True) as pilot:
        await wait_until(pilot, lambda: app._notifications)
        messages = [n.message for n in app._notifications]
        assert any("could not be read" in m and "moved to" in m for m in messages)


async def test_quit_mid_reply_stores_stopped_reply(tmp_path):
    backend = ScriptedBackend(["never finished"], pause_after=1)
    app = make_app(tmp_path, backend)
    async with app.run_test() as pilot:
        await send(pilot, "hi")
        await wait_until(pilot, backend.paused.is_set)
        conversation_id = app.screen.conversation.id
        await pilot.press("ctrl+q")
    messages = app.history.messages(conversation_id)
    assert (messages[-1].content, messages[-1].status) == ("neve", STOPPED)


async def test_long_reply_freezes_complete_blocks(tmp_path):
    reply = "\n\n".join(f"Paragraph {i}: " + "text " * 60 for i in range(20))
    chunks = split_chunks(reply, 50)
    backend = ScriptedBackend([chunks], pause_after=len(chunks) - 3)
    app = make_app(tmp_path, backend)
    async with app.run_test() as pilot:
        await send(pilot, "long please")
        await wait_until(pilot, backend.paused.is_set)
        view = app.screen.message_views[-1]

        def shown() -> str:
            segments = "".join(s.source for s in view.query(".segment").results(MarkdownView))
            return segments + view.query_one(".live", Markdown).source

        await wait_until(pilot, lambda: shown() == view.content, what="the streamed text")
        assert len(view.query(".segment")) >= 1
        assert len(view.query_one(".live", Markdown).source) < FREEZE_CHARACTERS + 400

        backend.resume.set()
        await wait_until(pilot, lambda: idle(app))
        assert not view.query(".segment, .live")
        assert view.body.source == reply
        assert stored(app)[-1] == (ASSISTANT, reply, COMPLETE)


async def test_model_picker_takes_path_or_repo_id(tmp_path):
    app = make_app(tmp_path, ScriptedBackend(["ok"]))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+o")
        assert "The local store has no models yet" in "\n".join(screen_lines(app))
        other = app.screen.query_one("#other", Input)
        other.value = "Qwen/Qwen2.5-0.5B-Instruct"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen.settings.model == "Qwen/Qwen2.5-0.5B-Instruct")
        await send_and_wait(pilot, "hi")
        conversation = app.history.get_conversation(app.screen.conversation.id)
        assert conversation.settings.model == "Qwen/Qwen2.5-0.5B-Instruct"
        assert app.backend.loads[-1] == "Qwen/Qwen2.5-0.5B-Instruct"
