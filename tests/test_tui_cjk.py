"""Chinese, Japanese and Korean text in the chat app: typed, pasted, streamed, wrapped in a
narrow terminal and stored, without a wide character ever split or lost."""

from __future__ import annotations

import pytest
from rich.cells import cell_len
from textual import events

from qwen_edge.tui.history import ASSISTANT, COMPLETE, USER, open_history
from qwen_edge.tui.scripted import ScriptedBackend
from qwen_edge.tui.testing import make_app, type_text, wait_until
from qwen_edge.tui.widgets.composer import Composer

pytestmark = pytest.mark.asyncio

CHINESE = "长江是中国最长的河流，全长约六千三百公里，流经十一个省级行政区。"
JAPANESE = "東京は日本の首都であり、世界最大級の都市圏を持っている。"
KOREAN = "서울은 대한민국의 수도이며 한강이 도시를 가로질러 흐른다."
MIXED = f"{CHINESE}{JAPANESE} {KOREAN} 🙂 e\u0301"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_EDGE_HOME", str(tmp_path / "home"))


def widget_lines(app, widget) -> list[str]:
    """Return the rendered rows of `widget`, cropped to its region by terminal cells."""
    region = widget.region
    strips = app.screen._compositor.render_strips()
    return [strips[y].crop(region.x, region.right).text for y in range(region.y, region.bottom)]


def assert_wrapped_whole(lines: list[str], text: str, width: int) -> None:
    """Every row fits `width` cells and the rows, joined, hold `text` with no character lost
    or replaced (a split wide character would show as a space or vanish)."""
    for line in lines:
        assert cell_len(line) <= width, line
    joined = "".join(line.strip() for line in lines)
    assert joined.replace(" ", "") == text.replace(" ", "")


async def test_typed_cjk_text_reaches_history(tmp_path):
    backend = ScriptedBackend(["好的"])
    app = make_app(tmp_path, backend)
    async with app.run_test() as pilot:
        await type_text(pilot, "你好，世界こんにちは안녕하세요")
        composer = app.screen.query_one(Composer)
        assert composer.text == "你好，世界こんにちは안녕하세요"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen.job is None and backend.calls)
        stored = app.history.messages(app.screen.conversation.id)
        assert stored[0].content == "你好，世界こんにちは안녕하세요"
        assert app.screen.conversation.title == "你好，世界こんにちは안녕하세요"


async def test_pasted_cjk_text_kept_intact(tmp_path):
    backend = ScriptedBackend(["收到"])
    app = make_app(tmp_path, backend)
    pasted = f"{CHINESE}\n{JAPANESE}\n\n{KOREAN}\n"
    async with app.run_test() as pilot:
        composer = app.screen.query_one(Composer)
        app.post_message(events.Paste(pasted))
        await wait_until(pilot, lambda: composer.text == pasted)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen.job is None and backend.calls)
        assert backend.calls[0][-1]["content"] == pasted


async def test_streamed_cjk_chunks_wrap_without_split(tmp_path):
    # One character per chunk, as a tokenizer releases a CJK character once it is complete.
    backend = ScriptedBackend([list(CHINESE + JAPANESE)], pause_after=10)
    app = make_app(tmp_path, backend)
    async with app.run_test(size=(50, 40)) as pilot:
        await pilot.press("ctrl+b")  # hide the sidebar; the chat is 50 cells wide
        await pilot.press(*"讲讲", "enter")
        await wait_until(pilot, backend.paused.is_set)
        view = app.screen.message_views[-1]
        await wait_until(pilot, lambda: view.content == (CHINESE + JAPANESE)[:10])

        backend.resume.set()
        await wait_until(pilot, lambda: app.screen.job is None)
        await pilot.pause()
        markdown = view.body
        lines = [line for line in widget_lines(app, markdown) if line.strip()]
        assert len(lines) > 2  # the paragraph really wraps
        assert_wrapped_whole(lines, CHINESE + JAPANESE, markdown.region.width)


async def test_korean_wraps_at_odd_width(tmp_path):
    # An odd width forces a wide character to meet the right edge on some rows.
    text = "一" + CHINESE + KOREAN
    backend = ScriptedBackend([text], chunk_size=3)
    app = make_app(tmp_path, backend)
    async with app.run_test(size=(41, 40)) as pilot:
        await pilot.press("ctrl+b")
        await pilot.press(*"hi", "enter")
        await wait_until(pilot, lambda: app.screen.job is None and backend.calls)
        await pilot.pause()
        markdown = app.screen.message_views[-1].body
        lines = [line for line in widget_lines(app, markdown) if line.strip()]
        assert_wrapped_whole(lines, text, markdown.region.width)


async def test_composer_wraps_cjk_text(tmp_path):
    app = make_app(tmp_path, ScriptedBackend())
    async with app.run_test(size=(41, 30)) as pilot:
        await pilot.press("ctrl+b")
        composer = app.screen.query_one(Composer)
        app.post_message(events.Paste(CHINESE))
        await wait_until(pilot, lambda: composer.text == CHINESE)
        await pilot.pause()
        content = composer.content_region
        strips = app.screen._compositor.render_strips()
        rows = [
            strips[y].crop(content.x, content.right).text for y in range(content.y, content.bottom)
        ]
        rows = [row for row in rows if row.strip()]
        assert len(rows) > 1
        assert_wrapped_whole(rows, CHINESE, content.width)


async def test_cjk_stored_and_reloaded_byte_exact(tmp_path):
    database = tmp_path / "chat.sqlite3"
    reply = f"{KOREAN}\n\n```python\nprint('{CHINESE}')\n```\n{MIXED}"
    app = make_app(tmp_path, ScriptedBackend([reply], chunk_size=1), history=open_history(database))
    async with app.run_test() as pilot:
        app.post_message(events.Paste(MIXED))
        await wait_until(pilot, lambda: app.screen.query_one(Composer).text == MIXED)
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: app.screen.job is None and len(app.screen.message_views) == 2
        )
    app.history.close()

    history = open_history(database)
    conversation = history.list_conversations()[0]
    stored = [
        (m.role, m.content.encode("utf-8"), m.status) for m in history.messages(conversation.id)
    ]
    assert stored == [
        (USER, MIXED.encode("utf-8"), COMPLETE),
        (ASSISTANT, reply.encode("utf-8"), COMPLETE),
    ]
    assert [c.title for c in history.list_conversations("长江")] == [conversation.title]
    history.close()
