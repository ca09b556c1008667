"""Edit the last user message before sending it again."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, TextArea


class EditMessageScreen(ModalScreen[str | None]):
    """Dismissed with the edited text, or None when cancelled or left empty."""

    BINDINGS = [
        Binding("ctrl+s", "resend", "Resend"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, text: str) -> None:
        super().__init__(classes="dialog-screen")
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Edit your last message", classes="dialog-title")
            yield TextArea(self.text, id="edited", soft_wrap=True, tab_behavior="indent")
            yield Label("Ctrl+S resends it and replaces the reply; Esc cancels.", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Resend", variant="primary", id="resend")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        editor = self.query_one(TextArea)
        editor.cursor_blink = not self.app.is_headless
        editor.focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "resend":
            self.action_resend()
        else:
            self.action_cancel()

    def action_resend(self) -> None:
        text = self.query_one(TextArea).text
        self.dismiss(text if text.strip() else None)

    def action_cancel(self) -> None:
        self.dismiss(None)
