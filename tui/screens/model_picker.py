"""Pick the model of a conversation: one from the local store, a directory or a repo id."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from qwen_edge.store import StoredModel


def format_size(size_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size_bytes < 1000 or unit == "GB":
            return f"{size_bytes:.0f} {unit}" if unit == "B" else f"{size_bytes:.1f} {unit}"
        size_bytes /= 1000
    raise AssertionError("unreachable")


class ModelPickerScreen(ModalScreen[str | None]):
    """Dismissed with the chosen model (store name, path or repo id), or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, models: list[StoredModel], current: str) -> None:
        super().__init__(classes="dialog-screen")
        self.models = models
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="model-picker"):
            yield Label("Choose a model", classes="dialog-title")
            if self.models:
                yield OptionList(
                    *[
                        Option(
                            f"{m.name}  {format_size(m.size_bytes)}  {m.quantization}", id=m.name
                        )
                        for m in self.models
                    ],
                    id="stored-models",
                )
            else:
                yield Label(
                    "The local store has no models yet: `qwen-edge demo-model` prepares the demo "
                    "model, `qwen-edge convert FILE.gguf NAME --to hf` imports a GGUF file.",
                    classes="hint",
                )
            yield Label("…or a directory or Hugging Face repo id (Enter picks it):")
            yield Input(placeholder="e.g. ./my-qwen or Qwen/Qwen2.5-0.5B-Instruct", id="other")
            yield Label(f"Current model: {self.current}", classes="hint", markup=False)

    def on_mount(self) -> None:
        if self.models:
            options = self.query_one(OptionList)
            names = [m.name for m in self.models]
            options.highlighted = names.index(self.current) if self.current in names else 0
            options.focus()
        else:
            self.query_one("#other", Input).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)
