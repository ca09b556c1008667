"""Every chat action is reachable from the command palette and listed in the footer or the
help panel; the `qwen-edge chat` options parse."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
from rich.console import Console
from textual.command import CommandList
from textual.widgets import Footer, HelpPanel
from textual.widgets._key_panel import BindingsTable

from qwen_edge.tui.app import add_chat_arguments
from qwen_edge.tui.commands import ChatCommands
from qwen_edge.tui.screens.chat import CHAT_ACTIONS
from qwen_edge.tui.screens.settings import SettingsScreen
from qwen_edge.tui.testing import make_app, wait_until


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_EDGE_HOME", str(tmp_path / "home"))


@pytest.mark.asyncio
async def test_palette_provider_lists_every_action(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test() as pilot:
        await pilot.pause()
        provider = ChatCommands(app.screen)
        hits = [hit async for hit in provider.discover()]
        assert [hit.text.split(" (")[0] for hit in hits] == [a.description for a in CHAT_ACTIONS]
        assert all(hit.help for hit in hits)

        matches = [hit async for hit in provider.search("regen")]
        assert [hit.text for hit in matches] == ["Regenerate (^r)"]


@pytest.mark.asyncio
async def test_palette_runs_settings_action(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"Settings")
        commands = app.screen.query_one(CommandList)

        def first_hit() -> str:
            if commands.option_count == 0 or commands.highlighted is None:
                return ""
            return str(commands.get_option_at_index(commands.highlighted).prompt)

        await wait_until(pilot, lambda: first_hit().startswith("Settings (^s)"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))


@pytest.mark.asyncio
async def test_bindings_in_footer_or_help(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        footer_text = " ".join(
            str(key.render()) for key in app.screen.query_one(Footer).query("FooterKey")
        )
        await pilot.press("f1")
        await wait_until(pilot, lambda: app.screen.query(HelpPanel))
        await pilot.pause()
        console = Console(width=100, record=True, file=io.StringIO())
        console.print(app.screen.query_one(BindingsTable).render_bindings_table())
        help_text = console.export_text()

        for action in CHAT_ACTIONS:
            assert action.description in help_text, action
            if action.show:
                assert action.description in footer_text, action
        assert "Send" in footer_text
        assert "Newline" in footer_text

        await pilot.press("f1")
        await wait_until(pilot, lambda: not app.screen.query(HelpPanel))


def test_chat_arguments_parse():
    parser = argparse.ArgumentParser()
    add_chat_arguments(parser)
    args = parser.parse_args(["-m", "Qwen/Qwen2.5-0.5B-Instruct", "--history", "/tmp/h.db"])
    assert args.model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert args.history == Path("/tmp/h.db")
    defaults = parser.parse_args([])
    assert (defaults.model, defaults.history) == (None, None)


def test_log_to_file_keeps_records_off_stderr(tmp_path, capsys):
    import logging

    from qwen_edge.tui.app import log_to_file

    path = tmp_path / "chat.log"
    with log_to_file(path):
        logging.getLogger("qwen_edge.tui").warning("kept in the file")
    assert "kept in the file" in path.read_text(encoding="utf-8")
    assert "kept in the file" not in capsys.readouterr().err
    assert logging.getLogger("qwen_edge").propagate
