"""Save an SVG screenshot of the chat app after real replies from a model (docs/chat.svg).

    .venv/bin/python -m qwen_edge.tui.screenshot docs/chat.svg [-m MODEL]

It sends the model two questions, each in its own conversation, in a temporary history database,
with greedy decoding, then saves the screen. The replies and the figures in the status line are
what the model and the machine produced.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from qwen_edge import store
from qwen_edge.tui.app import ChatApp
from qwen_edge.tui.backend import QwenBackend
from qwen_edge.tui.history import ConversationSettings, open_history
from qwen_edge.tui.testing import wait_until
from qwen_edge.tui.widgets.composer import Composer

QUESTIONS = [
    ("用一句话介绍长江。", 80),
    ("Write a Python function that checks whether a string is a palindrome.", 400),
]
SIZE = (110, 36)
TIMEOUT = 1800.0  # seconds per reply; a CPU without a fast matrix unit is slow


async def take_screenshot(model: str, output: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="qwen-edge-screenshot-") as directory:
        history = open_history(Path(directory) / "chat.sqlite3")
        backend = QwenBackend()
        app = ChatApp(backend, history, settings=ConversationSettings(model, temperature=0.0))
        try:
            async with app.run_test(size=SIZE) as pilot:
                for index, (question, max_tokens) in enumerate(QUESTIONS):
                    if index:
                        await pilot.press("ctrl+n")
                    app.screen.draft_settings = ConversationSettings(
                        model, temperature=0.0, max_tokens=max_tokens
                    )
                    app.screen.query_one(Composer).text = question
                    await pilot.press("enter")
                    await wait_until(
                        pilot,
                        lambda: app.screen.job is None and len(app.screen.message_views) == 2,
                        timeout=TIMEOUT,
                        what="the reply",
                    )
                # Show the question and the start of the reply rather than its end.
                app.screen.query_one("#messages").scroll_home(animate=False)
                await pilot.pause()
                app.save_screenshot(filename=output.name, path=str(output.parent))
        finally:
            backend.close()
            history.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="Save an SVG screenshot of the chat app.")
    parser.add_argument("output", type=Path, help="SVG file to write")
    parser.add_argument("-m", "--model", default=store.DEMO_MODEL, help="model to ask")
    args = parser.parse_args()
    asyncio.run(take_screenshot(args.model, args.output.resolve()))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
