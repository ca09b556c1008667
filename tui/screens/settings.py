"""Edit a conversation's model, system prompt and sampling settings."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, TextArea

from qwen_edge.errors import QwenEdgeError
from qwen_edge.tui.history import ConversationSettings


class SettingsScreen(ModalScreen[ConversationSettings | None]):
    """Dismissed with the new settings, or None when cancelled."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, settings: ConversationSettings, title: str) -> None:
        super().__init__(classes="dialog-screen")
        self.settings = settings
        self.conversation_title = title

    def compose(self) -> ComposeResult:
        settings = self.settings
        with Vertical(classes="dialog wide", id="settings"):
            yield Label(f"Settings of “{self.conversation_title}”", classes="dialog-title")
            yield Label("Model: a name in the local store, a directory or a Hugging Face repo id")
            yield Input(settings.model, id="model")
            yield Label("System prompt (empty: the chat template's default)")
            yield TextArea(settings.system_prompt, id="system-prompt", soft_wrap=True)
            with Horizontal(classes="numbers"):
                with Vertical():
                    yield Label("Temperature (0: greedy)")
                    yield Input(f"{settings.temperature:g}", id="temperature", type="number")
                with Vertical():
                    yield Label("Top-p (1: off)")
                    yield Input(f"{settings.top_p:g}", id="top-p", type="number")
                with Vertical():
                    yield Label("Max tokens per reply")
                    yield Input(str(settings.max_tokens), id="max-tokens", type="integer")
            yield Label("", id="error", classes="error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#system-prompt", TextArea).cursor_blink = not self.app.is_headless
        self.query_one("#model", Input).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def read_settings(self) -> ConversationSettings:
        """Build settings from the fields; raise QwenEdgeError naming the invalid one."""
        return ConversationSettings(
            model=self.query_one("#model", Input).value.strip(),
            system_prompt=self.query_one("#system-prompt", TextArea).text,
            temperature=_number(self, "#temperature", "temperature", float),
            top_p=_number(self, "#top-p", "top-p", float),
            max_tokens=_number(self, "#max-tokens", "max tokens", int),
        )

    def action_save(self) -> None:
        try:
            settings = self.read_settings()
        except QwenEdgeError as error:
            self.query_one("#error", Label).update(f"Not saved: {error}")
            return
        self.dismiss(settings)

    def action_cancel(self) -> None:
        self.dismiss(None)


def _number(screen: SettingsScreen, selector: str, name: str, kind: type) -> float | int:
    text = screen.query_one(selector, Input).value.strip()
    try:
        return kind(text)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise QwenEdgeError(f"{name} must be {expected}, got {text!r}") from None
