"""Stream 20,000 tokens of mixed Markdown through the chat screen and measure two things:

1. the UI time of each append to the reply's Markdown widget, from the first to the last tenth of
   the reply (it should stay flat, not grow with the length of the reply);
2. the latency of a key press during streaming: from posting the key event, as the terminal
   driver does, until the input box shows the character (target: under 50 ms).

The reply comes from ScriptedBackend, so the numbers measure the UI alone. `--rate` is the rate
the backend thread aims at. It ends up lower because that thread and the UI share the GIL, so the
printed elapsed time shows the rate reached.

    .venv/bin/python bench/tui_stream.py [--tokens 20000] [--rate 400]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from textual import events
from textual.await_complete import AwaitComplete
from textual.widgets import Markdown

from qwen_edge.tui.history import ConversationSettings, open_history
from qwen_edge.tui.scripted import ScriptedBackend
from qwen_edge.tui.testing import make_app, wait_until
from qwen_edge.tui.widgets.composer import Composer

SECTION = """\
## Section {n}: notes on the cache

The KV cache keeps the **keys** and *values* of every layer, so a new turn only runs its new
tokens through the model. See `ChatSession.prepare` for the prefix match.

- reuse the longest common prefix
- trim the rest, keeping at least one token
- 中文、日本語、한국어 text wraps without splitting a wide character

```python
def common_prefix_length(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
```

| tokens | reused | new |
|-------:|-------:|----:|
| {n}00 | {n}0 | {n} |

> A quoted remark about section {n}, long enough to wrap once or twice in a narrow terminal.

"""


def markdown_tokens(count: int) -> list[str]:
    """Return `count` token-like chunks (words, punctuation and whitespace runs) of Markdown."""
    tokens: list[str] = []
    n = 0
    while len(tokens) < count:
        n += 1
        tokens += re.findall(r"\s+|\w+|[^\w\s]", SECTION.format(n=n))
    return tokens[:count]


def describe(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"median {statistics.median(values) * 1e3:.1f} ms, 95th percentile {p95 * 1e3:.1f} ms, "
        f"max {max(values) * 1e3:.1f} ms"
    )


async def run(token_count: int, rate: float, key_interval: float) -> int:
    tokens = markdown_tokens(token_count)
    backend = ScriptedBackend([tokens], token_delay=1 / rate, pause_after=0)
    directory = Path(tempfile.mkdtemp(prefix="qwen-edge-bench-"))
    settings = ConversationSettings("scripted-model", max_tokens=token_count)
    app = make_app(
        directory,
        backend,
        model=settings.model,
        history=open_history(directory / "chat.sqlite3"),
        settings=settings,
    )
    appends: list[tuple[int, float]] = []  # (characters before the append, seconds)
    key_latencies: list[float] = []

    async with app.run_test(size=(120, 40)) as pilot:
        composer = app.screen.query_one(Composer)
        await pilot.press("h", "i", "enter")
        await wait_until(pilot, backend.paused.is_set, what="the reply to start")

        original_append = Markdown.append

        def timed_append(markdown: Markdown, text: str) -> AwaitComplete:
            before = len(markdown.source)
            pending = original_append(markdown, text)

            async def timed() -> None:
                start = time.perf_counter()
                await pending
                appends.append((before, time.perf_counter() - start))

            return AwaitComplete(timed())

        Markdown.append = timed_append  # MarkdownStream appends through the widget's method
        started = time.perf_counter()
        backend.resume.set()

        next_key = time.perf_counter() + key_interval
        while app.screen.job is not None:
            if time.perf_counter() >= next_key:
                expected = composer.text + "x"
                pressed = time.perf_counter()
                app.post_message(events.Key("x", "x"))
                while composer.text != expected:
                    await asyncio.sleep(0.0005)
                key_latencies.append(time.perf_counter() - pressed)
                next_key = time.perf_counter() + key_interval
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        view = app.screen.message_views[-1]
        assert view.content == "".join(tokens), "the reply lost text"

    app.history.close()
    tenths = [appends[len(appends) * i // 10 : len(appends) * (i + 1) // 10] for i in range(10)]
    medians = [statistics.median(seconds for _, seconds in part) for part in tenths]
    characters = len("".join(tokens))
    print(f"streamed {token_count} tokens ({characters} characters) in {elapsed:.1f} s")
    print(f"appends to the live Markdown widget: {len(appends)}")
    print("median ms per append, by tenth of the reply:")
    print("  " + " ".join(f"{m * 1e3:.2f}" for m in medians))
    print(f"  last/first tenth: {medians[-1] / medians[0]:.2f}")
    print(f"key presses during streaming: {len(key_latencies)}, {describe(key_latencies)}")
    print(f"  within 50 ms: {sum(t < 0.05 for t in key_latencies)}/{len(key_latencies)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens to stream")
    parser.add_argument(
        "--rate", type=float, default=400.0, help="tokens per second the backend produces"
    )
    parser.add_argument(
        "--key-interval", type=float, default=0.25, help="seconds between two key presses"
    )
    args = parser.parse_args()
    return asyncio.run(run(args.tokens, args.rate, args.key_interval))


if __name__ == "__main__":
    sys.exit(main())
