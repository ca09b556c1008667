"""Crash safety: the chat app killed with SIGKILL mid-reply loses at most the last second."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from qwen_edge.tui.history import ASSISTANT, INTERRUPTED, USER, open_history

CHUNK = "word "
CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from qwen_edge.tui.app import ChatApp
    from qwen_edge.tui.history import open_history
    from qwen_edge.tui.scripted import ScriptedBackend

    def on_chunk(index, text):
        print(f"chunk {index} {time.monotonic()}", flush=True)

    backend = ScriptedBackend(
        [[%(chunk)r] * 5000], token_delay=0.005, on_chunk=on_chunk
    )
    app = ChatApp(backend, open_history(Path(sys.argv[1])), "test-model")

    async def main():
        async with app.run_test() as pilot:
            await pilot.press("h", "i", "enter")
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
) % {"chunk": CHUNK}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_loses_at_most_last_second(tmp_path):
    path = tmp_path / "chat.sqlite3"
    env = {**os.environ, "QWEN_EDGE_HOME": str(tmp_path / "home")}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    emitted: list[float] = []  # time each chunk was handed to the app
    try:
        while True:
            line = child.stdout.readline()
            assert line, f"the app exited early: {child.stderr.read()}"
            emitted.append(float(line.split()[2]))
            if emitted[-1] - emitted[0] > 2.5:
                break
        killed_at = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        emitted += [float(line.split()[2]) for line in child.stdout.read().splitlines()]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    history = open_history(path)
    conversation = history.list_conversations()[0]
    user, reply = history.messages(conversation.id)
    assert (user.role, user.content) == (USER, "hi")
    assert reply.role == ASSISTANT
    assert reply.status == INTERRUPTED

    stored_chunks = len(reply.content) // len(CHUNK)
    assert reply.content == CHUNK * stored_chunks
    older_than_a_second = sum(1 for t in emitted if t <= killed_at - 1.0)
    assert older_than_a_second > 0
    assert stored_chunks >= older_than_a_second
    assert stored_chunks <= len(emitted)
    history.close()
