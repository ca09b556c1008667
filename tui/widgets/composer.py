"""The message input: a multi-line TextArea where Enter sends and Ctrl+J inserts a newline."""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class Composer(TextArea):
    """Pasted text arrives as one Paste event and is inserted as is, newlines included."""

    BINDINGS = [
        # Enter is handled in _on_key (TextArea inserts a newline for it before bindings run);
        # the binding is here so that the footer and the help panel show it.
        Binding("enter", "submit", "Send"),
        Binding("ctrl+j,shift+enter,alt+enter", "newline", "Newline"),
    ]

    class Submitted(Message):
        def __init__(self, composer: Composer, text: str) -> None:
            super().__init__()
            self.composer = composer
            self.text = text

    def __init__(self, text: str = "", *, id: str | None = None) -> None:
        super().__init__(
            text,
            id=id,
            soft_wrap=True,
            show_line_numbers=False,
            tab_behavior="focus",
            compact=True,
            highlight_cursor_line=False,
            placeholder="Message (Enter sends, Ctrl+J adds a line)",
        )

    def on_mount(self) -> None:
        # A blinking cursor makes screenshots differ from run to run.
        self.cursor_blink = not self.app.is_headless

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter" and not self.read_only:
            event.stop()
            event.prevent_default()
            self.action_submit()
            return
        await super()._on_key(event)

    def action_submit(self) -> None:
        self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        if self.read_only:
            return
        start, end = self.selection
        self.replace("\n", start, end, maintain_selection_offset=False)
