"""Screenshots of the chat app compared with stored SVGs (pytest-textual-snapshot).

After an intended change of the layout, run `pytest tests/test_tui_snapshots.py
--snapshot-update` and review the new files under tests/__snapshots__/.
"""

from __future__ import annotations

import pytest

from qwen_edge.tui.history import ASSISTANT, USER, ConversationSettings, open_history
from qwen_edge.tui.scripted import ScriptedBackend
from qwen_edge.tui.testing import fixed_clock, make_app, wait_until

SIZE = (100, 32)
CODE_REPLY = """\
A palindrome reads the same both ways:

```python
def is_palindrome(text: str) -> bool:
    cleaned = [c.lower() for c in text if c.isalnum()]
    return cleaned == cleaned[::-1]
```

`is_palindrome("A man, a plan, a canal: Panama")` returns `True`."""


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_EDGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QWEN_EDGE_MODEL", raising=False)


def app_with_conversation(tmp_path):
    history = open_history(tmp_path / "chat.sqlite3", fixed_clock())
    older = history.create_conversation("长江有多长？", ConversationSettings("test-model"))
    history.add_message(older.id, USER, "长江有多长？")
    history.add_message(older.id, ASSISTANT, "长江全长约6300公里。")
    backend = ScriptedBackend([CODE_REPLY], chunk_size=6)
    return make_app(tmp_path, backend, model="test-model", history=history)


async def send_palindrome_question(pilot) -> None:
    app = pilot.app
    await pilot.press(*"Write a palindrome check in Python", "enter")
    await wait_until(pilot, lambda: app.screen.job is None and len(app.screen.message_views) == 2)
    await pilot.pause()


def test_main_screen_with_code_block(snap_compare, tmp_path):
    app = app_with_conversation(tmp_path)
    assert snap_compare(app, terminal_size=SIZE, run_before=send_palindrome_question)


def test_settings_modal(snap_compare, tmp_path):
    app = app_with_conversation(tmp_path)

    async def open_settings(pilot) -> None:
        await send_palindrome_question(pilot)
        await pilot.press("ctrl+s")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_settings)


def test_empty_first_run_screen(snap_compare, tmp_path):
    app = make_app(tmp_path, ScriptedBackend(), model=None)

    async def wait_for_welcome(pilot) -> None:
        await wait_until(pilot, lambda: pilot.app.screen.query("#welcome"))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=wait_for_welcome)
