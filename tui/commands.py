"""Command palette entries for every action of the chat screen."""

from __future__ import annotations

from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

from qwen_edge.tui.screens.chat import CHAT_ACTIONS, ChatScreen


class ChatCommands(Provider):
    def _commands(self) -> list[tuple[str, object, str]]:
        screen = self.screen
        if not isinstance(screen, ChatScreen):
            return []
        commands = []
        for action in CHAT_ACTIONS:
            key = self.app.get_key_display(Binding(action.key, action.action))
            name = f"{action.description} ({key})"
            commands.append((name, partial(screen.run_action, action.action), action.help))
        return commands

    async def discover(self) -> Hits:
        for name, callback, help_text in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, callback, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
