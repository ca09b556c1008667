"""One chat message: a header line with the role and status, and the text as Markdown.

A finished message is one MarkdownView. While a reply streams, its text goes into a Textual
Markdown widget through a MarkdownStream, which parses and mounts only the new blocks. Once that
widget holds more than FREEZE_CHARACTERS, the complete blocks before its last one move into a
MarkdownView segment, so the number of live widgets (and the layout work per appended chunk)
stays bounded however long the reply grows. When the reply ends, the whole text is rendered once
into the message's MarkdownView.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Label, Markdown
from textual.widgets.markdown import MarkdownStream

from qwen_edge.tui.history import (
    ASSISTANT,
    COMPLETE,
    ERROR,
    INTERRUPTED,
    STATUS_NOTES,
    STOPPED,
)
from qwen_edge.tui.widgets.markdown_view import MarkdownView

FREEZE_CHARACTERS = 2000

_parser = MarkdownIt("gfm-like")  # the parser Textual's Markdown widget uses


def last_block_start(source: str) -> int:
    """Return the character offset where the last top-level Markdown block of `source` starts,
    or 0 when there is only one block. The text before that offset consists of complete blocks."""
    starts = [token.map[0] for token in _parser.parse(source) if token.map and token.level == 0]
    if len(starts) < 2:
        return 0
    lines = source.splitlines(keepends=True)
    return sum(len(line) for line in lines[: starts[-1]])


class MessageView(Vertical, can_focus=True):
    """A message of the conversation; focus it and press c to copy its text."""

    BINDINGS = [Binding("c", "copy", "Copy message")]

    status: reactive[str] = reactive(COMPLETE)

    def __init__(
        self,
        role: str,
        content: str,
        status: str = COMPLETE,
        *,
        message_id: int | None = None,
        error: str | None = None,
    ) -> None:
        super().__init__(classes=f"message {role}")
        self.role = role
        self.content = content
        self.message_id = message_id
        self.error = error
        self._live: Markdown | None = None  # the streaming tail of a reply
        self._stream: MarkdownStream | None = None
        self._live_source = ""
        self._freeze_at = FREEZE_CHARACTERS
        self.set_reactive(MessageView.status, status)

    def compose(self) -> ComposeResult:
        yield Label(self._header(), classes="role", markup=False)
        yield MarkdownView(self.content, classes="body")

    @property
    def body(self) -> MarkdownView:
        """The widget showing the whole text once the message is complete."""
        return self.query_one(".body", MarkdownView)

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def watch_status(self) -> None:
        if self.is_mounted:
            self.query_one(".role", Label).update(self._header())
        self.set_class(self.status in (STOPPED, INTERRUPTED, ERROR), "unfinished")

    def _header(self) -> str:
        title = "Assistant" if self.role == ASSISTANT else "You"
        note = STATUS_NOTES.get(self.status)
        if self.status == ERROR and self.error:
            note = f"failed: {self.error}"
        return f"{title} · {note}" if note else title

    async def start_stream(self) -> None:
        """Show appended text through a live Markdown widget until `finish`."""
        self.body.display = False
        await self._start_live("")

    async def _start_live(self, source: str) -> None:
        self._live = Markdown(source, classes="live")
        await self.mount(self._live, before=self.body)
        self._live_source = source
        self._stream = Markdown.get_stream(self._live)

    async def append(self, text: str) -> None:
        if self._stream is None:
            await self.start_stream()
        self.content += text
        self._live_source += text
        await self._stream.write(text)
        if len(self._live_source) >= self._freeze_at:
            await self._freeze()

    async def _freeze(self) -> None:
        """Move the complete blocks of the live widget into a MarkdownView segment."""
        split = last_block_start(self._live_source)
        if split == 0:
            # One block (a long code fence, say) cannot be split; look again after more text.
            # NOTE: such a block stays in the live widget, which re-renders all of it per chunk.
            self._freeze_at = len(self._live_source) + FREEZE_CHARACTERS
            return
        frozen, rest = self._live_source[:split], self._live_source[split:]
        await self._stream.stop()
        old_live = self._live
        await self.mount(MarkdownView(frozen, classes="segment"), before=old_live)
        await self._start_live(rest)
        await old_live.remove()
        self._freeze_at = FREEZE_CHARACTERS

    async def finish(self, status: str, error: str | None = None) -> None:
        """End the stream, then render the whole text once into the message's MarkdownView."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        await self.query(".segment, .live").remove()
        self._live = None
        self._live_source = ""
        self.error = error
        self.status = status
        self.body.update(self.content)
        self.body.display = True

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.content)
        self.notify(f"Copied {len(self.content)} characters to the clipboard")
