"""End to end: the chat app on the real demo model, a short greedy reply and a second turn."""

from __future__ import annotations

import re

import pytest

from qwen_edge import store
from qwen_edge.generate import generate
from qwen_edge.tui.app import ChatApp
from qwen_edge.tui.backend import QwenBackend
from qwen_edge.tui.history import ConversationSettings, open_history
from qwen_edge.tui.testing import wait_until
from qwen_edge.tui.widgets.composer import Composer

pytestmark = [pytest.mark.asyncio, pytest.mark.real_model]

MAX_TOKENS = 8
# A short system prompt keeps the prompt (and the CPU prefill in CI) small.
SYSTEM = "Be brief."
QUESTION = "2 + 2 = ?"


async def ask(pilot, text: str) -> None:
    app = pilot.app
    views_before = len(app.screen.message_views)
    app.screen.query_one(Composer).text = text
    await pilot.press("enter")
    await wait_until(
        pilot,
        lambda: app.screen.job is None and len(app.screen.message_views) == views_before + 2,
        timeout=120,
        what="the model's reply",
    )


async def test_demo_model_greedy_reply_in_app(tmp_path, demo_model_dir):
    backend = QwenBackend()
    settings = ConversationSettings(
        store.DEMO_MODEL, SYSTEM, temperature=0.0, max_tokens=MAX_TOKENS
    )
    app = ChatApp(backend, open_history(tmp_path / "chat.sqlite3"), settings=settings)
    try:
        async with app.run_test(size=(160, 30)) as pilot:
            await wait_until(pilot, lambda: backend.info is not None, timeout=120, what="load")
            await ask(pilot, QUESTION)
            first_reply = app.screen.message_views[-1]
            status = str(app.screen.query_one("#status").render())
            assert status.startswith(f"{store.DEMO_MODEL} · bf16")
            assert "tok/s" in status

            await ask(pilot, "3 + 3 = ?")
            status = str(app.screen.query_one("#status").render())
            processed, reused = map(
                int, re.search(r"(\d+) processed, (\d+) reused", status).groups()
            )
            assert reused > 0
            assert processed < reused

        session = backend._session
        expected = backend._mlx.submit(
            lambda: generate(
                session.model,
                session.tokenizer,
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
                max_tokens=MAX_TOKENS,
            )
        ).result()
        assert first_reply.content == expected
        assert first_reply.content.strip()
        stored = app.history.messages(app.history.list_conversations()[0].id)
        assert stored[1].content == expected
    finally:
        backend.close()
        app.history.close()
