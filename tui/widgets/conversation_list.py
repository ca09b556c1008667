"""The sidebar: a title filter above the conversations, newest first."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, ListItem, ListView

from qwen_edge.tui.history import Conversation


class ConversationItem(ListItem):
    def __init__(self, conversation: Conversation) -> None:
        super().__init__(Label(conversation.title, markup=False), classes="conversation")
        self.conversation = conversation


class ConversationList(Vertical):
    class Selected(Message):
        """The user picked a conversation to open."""

        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class FilterChanged(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def compose(self) -> ComposeResult:
        yield Input(placeholder="Filter by title", id="filter", compact=True)
        yield ListView(id="conversation-items")

    @property
    def filter_text(self) -> str:
        return self.query_one("#filter", Input).value

    @property
    def items(self) -> list[ConversationItem]:
        return list(self.query(ConversationItem))

    async def show(self, conversations: list[Conversation], current_id: int | None) -> None:
        """Replace the listed conversations and highlight `current_id` if it is among them."""
        view = self.query_one(ListView)
        await view.clear()
        await view.extend([ConversationItem(c) for c in conversations])
        ids = [c.id for c in conversations]
        view.index = ids.index(current_id) if current_id in ids else None

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.FilterChanged(event.value))

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ConversationItem):
            self.post_message(self.Selected(event.item.conversation.id))
