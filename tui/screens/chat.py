"""The main screen: conversations on the left, the open conversation and its input on the right.

Generation runs in a Textual thread worker (see `reply_job.run_reply`). This screen only mounts
widgets, appends streamed text and reacts to keys, so the UI stays responsive during a reply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, HelpPanel, Input, ProgressBar, Static

from qwen_edge import store
from qwen_edge.tokenizer import Message
from qwen_edge.tui.backend import ChatBackend
from qwen_edge.tui.export import default_export_name, export_conversation
from qwen_edge.tui.history import (
    ASSISTANT,
    STREAMING,
    USER,
    Conversation,
    ConversationSettings,
    HistoryStore,
    StoredMessage,
)
from qwen_edge.tui.reply_job import (
    LoadFailed,
    LoadProgress,
    ModelLoaded,
    ReplyFinished,
    ReplyJob,
    ReplyTurnStarted,
    ReplyUpdated,
    load_model,
    run_reply,
)
from qwen_edge.tui.screens.confirm import ConfirmScreen
from qwen_edge.tui.screens.edit_message import EditMessageScreen
from qwen_edge.tui.screens.model_picker import ModelPickerScreen
from qwen_edge.tui.screens.settings import SettingsScreen
from qwen_edge.tui.screens.text_prompt import TextPromptScreen
from qwen_edge.tui.widgets.composer import Composer
from qwen_edge.tui.widgets.conversation_list import ConversationList
from qwen_edge.tui.widgets.markdown_view import MarkdownView
from qwen_edge.tui.widgets.message_view import MessageView
from qwen_edge.tui.widgets.status_line import StatusLine

log = logging.getLogger("qwen_edge.tui")

TITLE_LENGTH = 48  # characters of the first message used as a new conversation's title


@dataclass(frozen=True)
class ChatAction:
    """A key binding of the chat screen; the command palette lists the same actions."""

    key: str
    action: str
    description: str
    help: str
    show: bool = True  # in the footer; every binding is in the help panel (F1)


CHAT_ACTIONS = [
    ChatAction("escape", "stop", "Stop", "Stop the reply being written and keep its text"),
    ChatAction("ctrl+r", "regenerate", "Regenerate", "Write the last reply again"),
    ChatAction(
        "f3", "edit_last", "Edit last", "Edit your last message and send it again", show=False
    ),
    ChatAction("ctrl+n", "new_conversation", "New", "Start a new conversation"),
    ChatAction("f2", "rename", "Rename", "Rename this conversation", show=False),
    ChatAction("f8", "delete", "Delete", "Delete this conversation", show=False),
    ChatAction("ctrl+f", "filter", "Filter", "Filter the conversations by title", show=False),
    ChatAction(
        "ctrl+s", "settings", "Settings", "Model, system prompt, temperature, top-p, max tokens"
    ),
    ChatAction("ctrl+o", "pick_model", "Model", "Choose this conversation's model", show=False),
    ChatAction("f5", "export", "Export", "Export this conversation to Markdown", show=False),
    ChatAction("f4", "copy_reply", "Copy reply", "Copy the last reply", show=False),
    ChatAction("ctrl+b", "toggle_sidebar", "Sidebar", "Show or hide the conversations", show=False),
    ChatAction("f1", "help", "Keys", "Show or hide every key binding"),
]

WELCOME = """\
# qwen-edge chat

Type a message below and press **Enter** to start a conversation; **Ctrl+J** adds a line.

- **Ctrl+O** picks the model, **Ctrl+S** sets the system prompt, temperature, top-p and max tokens.
- **Esc** stops a reply, **Ctrl+R** writes it again, **F3** edits your last message.
- **F1** lists every key; **Ctrl+P** opens the command palette.
"""


def title_from(text: str) -> str:
    """Return a conversation title: the first non-empty line of `text`, shortened."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "New conversation")
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1] + "…"


def backend_messages(settings: ConversationSettings, stored: list[StoredMessage]) -> list[Message]:
    """Return the messages sent to the model: the system prompt when set, then every message
    except empty replies. A reply is empty when it failed or was stopped before its first token."""
    messages: list[Message] = []
    if settings.system_prompt.strip():
        messages.append({"role": "system", "content": settings.system_prompt})
    for message in stored:
        if message.role == ASSISTANT and not message.content:
            continue
        messages.append({"role": message.role, "content": message.content})
    return messages


class ChatScreen(Screen):
    BINDINGS = [
        Binding(a.key, a.action, a.description, show=a.show, tooltip=a.help) for a in CHAT_ACTIONS
    ]

    def __init__(self, default_settings: ConversationSettings, start_new: bool = False) -> None:
        super().__init__()
        self.draft_settings = default_settings  # for the conversation started by the next send
        self.start_new = start_new
        self.conversation: Conversation | None = None
        self.job: ReplyJob | None = None
        self.read_only_reason: str | None = None

    # -- layout

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield ConversationList(id="sidebar")
            with Vertical(id="chat"):
                yield Static("", id="notice", markup=False)
                yield VerticalScroll(id="messages")
                yield Composer(id="composer")
                with Horizontal(id="status-bar"):
                    yield StatusLine(id="status")
                    yield ProgressBar(id="load-progress", show_eta=False, show_percentage=True)
        yield Footer()

    @property
    def history(self) -> HistoryStore:
        return self.app.history

    @property
    def backend(self) -> ChatBackend:
        return self.app.backend

    @property
    def composer(self) -> Composer:
        return self.query_one(Composer)

    @property
    def status_line(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def message_views(self) -> list[MessageView]:
        return list(self.query_one("#messages").query(MessageView))

    @property
    def settings(self) -> ConversationSettings:
        return self.conversation.settings if self.conversation else self.draft_settings

    async def on_mount(self) -> None:
        self.query_one("#load-progress").display = False
        self.query_one("#notice").display = False
        self.query_one("#messages").anchor()
        if self.history.recovery_message:
            self.notify(self.history.recovery_message, severity="warning", timeout=30)
        conversations = self.history.list_conversations()
        if conversations and not self.start_new:
            await self.open_conversation(conversations[0].id)
        else:
            await self.open_draft()
        self.composer.focus()

    def on_unmount(self) -> None:
        # The app is closing: let a reply being written end, so its worker thread can finish.
        if self.job is not None:
            self.job.stop.set()

    # -- opening conversations

    async def refresh_sidebar(self) -> None:
        sidebar = self.query_one(ConversationList)
        conversations = self.history.list_conversations(sidebar.filter_text)
        await sidebar.show(conversations, self.conversation.id if self.conversation else None)

    async def open_draft(self) -> None:
        """Show the empty state; the next message sent starts a new conversation."""
        self.conversation = None
        self.sub_title = "New conversation"
        messages = self.query_one("#messages")
        await messages.remove_children()
        await messages.mount(MarkdownView(WELCOME, id="welcome"))
        await self.refresh_sidebar()
        self.use_model(self.draft_settings.model)

    async def open_conversation(self, conversation_id: int) -> None:
        self.conversation = self.history.get_conversation(conversation_id)
        self.sub_title = self.conversation.title
        messages = self.query_one("#messages")
        await messages.remove_children()
        await messages.mount_all(
            MessageView(m.role, m.content, m.status, message_id=m.id)
            for m in self.history.messages(conversation_id)
        )
        messages.scroll_end(animate=False)
        await self.refresh_sidebar()
        self.use_model(self.conversation.settings.model)

    def use_model(self, model: str) -> None:
        """Make `model` the one in use: read-only with a notice if it cannot be loaded,
        else load it in a worker unless it is loaded already."""
        self.read_only_reason = self.backend.model_problem(model)
        notice = self.query_one("#notice", Static)
        notice.update(self.read_only_reason or "")
        notice.display = self.read_only_reason is not None
        self.composer.read_only = self.read_only_reason is not None

        info = self.backend.info
        loaded = info is not None and info.name == model
        self.status_line.set_state(
            model=model,
            info=info if loaded else None,
            turn=None,
            stats=None,
            dropped_turns=0,
            read_only=self.read_only_reason is not None,
        )
        if self.read_only_reason is None and not loaded:
            self.run_worker(
                partial(load_model, self.backend, model, self.post_message),
                thread=True,
                group="load",
                name=f"load {model}",
            )
        self.refresh_bindings()

    @on(ConversationList.Selected)
    async def conversation_selected(self, event: ConversationList.Selected) -> None:
        if self.job is not None:
            self.notify("A reply is being written; press Esc to stop it first.")
            return
        await self.open_conversation(event.conversation_id)
        self.composer.focus()

    @on(ConversationList.FilterChanged)
    async def filter_changed(self) -> None:
        await self.refresh_sidebar()

    # -- model loading

    def on_load_progress(self, event: LoadProgress) -> None:
        bar = self.query_one("#load-progress", ProgressBar)
        bar.display = True
        bar.update(total=event.total, progress=event.done)
        self.status_line.set_state(model=event.model, loading=event.step)

    def on_model_loaded(self, event: ModelLoaded) -> None:
        self.query_one("#load-progress").display = False
        if event.info.name == self.settings.model:
            self.status_line.set_state(info=event.info, loading=None)

    def on_load_failed(self, event: LoadFailed) -> None:
        self.query_one("#load-progress").display = False
        self.status_line.set_state(loading=None)
        self.notify(event.error, title="Model not loaded", severity="error", timeout=20)

    # -- sending and streaming

    @on(Composer.Submitted)
    async def composer_submitted(self, event: Composer.Submitted) -> None:
        if not event.text.strip():
            return
        if self.job is not None:
            self.notify("A reply is being written; press Esc to stop it first.")
            return
        if self.read_only_reason is not None:
            self.notify(self.read_only_reason, severity="warning")
            return
        self.composer.clear()
        await self.send(event.text)

    async def send(self, text: str) -> None:
        """Commit `text` as a user message, then start the reply."""
        if self.conversation is None:
            self.conversation = self.history.create_conversation(
                title_from(text), self.draft_settings
            )
            self.sub_title = self.conversation.title
            await self.query_one("#messages").remove_children()
        message = self.history.add_message(self.conversation.id, USER, text)
        await self.query_one("#messages").mount(
            MessageView(USER, text, message.status, message_id=message.id)
        )
        await self.start_reply()

    async def start_reply(self) -> None:
        conversation = self.conversation
        messages = backend_messages(conversation.settings, self.history.messages(conversation.id))
        reply = self.history.add_message(conversation.id, ASSISTANT, "", STREAMING)
        view = MessageView(ASSISTANT, "", STREAMING, message_id=reply.id)
        scroll = self.query_one("#messages")
        await scroll.mount(view)
        scroll.anchor()
        await view.start_stream()

        self.job = ReplyJob(conversation.id, reply.id, messages, conversation.settings, view=view)
        self.run_worker(
            partial(
                run_reply,
                self.job,
                self.backend,
                self.history,
                self.post_message,
                self.app.commit_interval,
            ),
            thread=True,
            group="reply",
            name=f"reply {reply.id}",
        )
        self.refresh_bindings()
        await self.refresh_sidebar()

    def on_reply_turn_started(self, event: ReplyTurnStarted) -> None:
        turn = event.turn
        self.status_line.set_state(turn=turn, stats=None, dropped_turns=turn.dropped_turns)
        if turn.dropped_turns:
            self.notify(
                f"The conversation no longer fits the model's context: the oldest "
                f"{turn.dropped_turns} turn(s) were left out of the prompt (the system prompt "
                "stays).",
                severity="warning",
                timeout=10,
            )

    async def on_reply_updated(self, event: ReplyUpdated) -> None:
        text = event.job.buffer.drain()
        if text:
            await event.job.view.append(text)
        self.status_line.set_state(stats=event.job.stats)

    async def on_reply_finished(self, event: ReplyFinished) -> None:
        job = event.job
        rest = job.buffer.drain()
        if rest:
            await job.view.append(rest)
        await job.view.finish(event.status, event.error)
        if job.stats is not None:
            self.status_line.set_state(stats=job.stats)
        if self.job is job:
            self.job = None
        if event.error:
            self.notify(event.error, title="Reply failed", severity="error", timeout=20)
        self.refresh_bindings()

    # -- actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Dim the actions that cannot run now (None) instead of hiding them."""
        idle = self.job is None
        has_conversation = self.conversation is not None
        can_generate = idle and has_conversation and self.read_only_reason is None
        enabled = {
            "stop": not idle,
            "regenerate": can_generate,
            "edit_last": can_generate,
            "new_conversation": idle,
            "rename": has_conversation,
            "delete": idle and has_conversation,
            "settings": idle,
            "pick_model": idle,
            "export": has_conversation,
        }.get(action, True)
        return True if enabled else None

    def action_stop(self) -> None:
        if self.job is not None:
            self.job.stop.set()

    def _last(self, role: str) -> StoredMessage | None:
        stored = self.history.messages(self.conversation.id) if self.conversation else []
        return next((m for m in reversed(stored) if m.role == role), None)

    async def _remove_from(self, message_id: int) -> None:
        """Delete the message `message_id` and all later ones, stored and shown."""
        self.history.delete_messages_from(self.conversation.id, message_id)
        for view in self.message_views:
            if view.message_id is not None and view.message_id >= message_id:
                await view.remove()

    async def action_regenerate(self) -> None:
        if self.check_action("regenerate", ()) is not True:
            return
        last_user = self._last(USER)
        if last_user is None:
            self.notify("There is no message to reply to yet.")
            return
        last_reply = self._last(ASSISTANT)
        if last_reply is not None and last_reply.id > last_user.id:
            await self._remove_from(last_reply.id)
        await self.start_reply()

    def action_edit_last(self) -> None:
        if self.check_action("edit_last", ()) is not True:
            return
        last_user = self._last(USER)
        if last_user is None:
            self.notify("There is no message of yours to edit yet.")
            return

        async def resend(text: str | None) -> None:
            if text is None:
                return
            await self._remove_from(last_user.id)
            await self.send(text)

        self.app.push_screen(EditMessageScreen(last_user.content), resend)

    async def action_new_conversation(self) -> None:
        if self.job is not None:
            return
        # The new conversation starts with this one's settings, on a model that can be loaded.
        model = self.app.default_model if self.read_only_reason else self.settings.model
        self.draft_settings = replace(self.settings, model=model)
        await self.open_draft()
        self.composer.focus()

    def action_rename(self) -> None:
        conversation = self.conversation
        if conversation is None:
            self.notify("Send a message first: a new conversation is saved with its first one.")
            return

        async def rename(title: str | None) -> None:
            if title is None:
                return
            self.conversation = self.history.rename_conversation(conversation.id, title)
            self.sub_title = self.conversation.title
            await self.refresh_sidebar()

        self.app.push_screen(TextPromptScreen("Rename conversation", conversation.title), rename)

    def action_delete(self) -> None:
        conversation = self.conversation
        if conversation is None or self.job is not None:
            return
        count = len(self.history.messages(conversation.id))
        question = f"Delete “{conversation.title}” and its {count} messages? This cannot be undone."

        async def delete(confirmed: bool | None) -> None:
            if not confirmed:
                return
            self.history.delete_conversation(conversation.id)
            remaining = self.history.list_conversations()
            if remaining:
                await self.open_conversation(remaining[0].id)
            else:
                await self.open_draft()
            self.notify(f"Deleted “{conversation.title}”.")

        self.app.push_screen(ConfirmScreen(question), delete)

    def action_filter(self) -> None:
        sidebar = self.query_one(ConversationList)
        sidebar.display = True
        sidebar.query_one(Input).focus()

    def _apply_settings(self, settings: ConversationSettings | None) -> None:
        if settings is None:
            return
        if self.conversation is not None:
            self.conversation = self.history.update_settings(self.conversation.id, settings)
        else:
            self.draft_settings = settings
        self.use_model(settings.model)
        self.notify("Settings saved.")

    def action_settings(self) -> None:
        if self.job is not None:
            return
        title = self.conversation.title if self.conversation else "New conversation"
        self.app.push_screen(SettingsScreen(self.settings, title), self._apply_settings)

    def action_pick_model(self) -> None:
        if self.job is not None:
            return

        def picked(model: str | None) -> None:
            if model is not None:
                self._apply_settings(replace(self.settings, model=model))

        self.app.push_screen(ModelPickerScreen(store.list_models(), self.settings.model), picked)

    def action_export(self) -> None:
        conversation = self.conversation
        if conversation is None:
            self.notify("Nothing to export yet: send a message first.")
            return
        suggestion = str(Path.cwd() / default_export_name(conversation))

        def export(path: str | None) -> None:
            if path is None:
                return
            messages = self.history.messages(conversation.id)
            try:
                written = export_conversation(conversation, messages, Path(path))
            except OSError as error:
                log.warning(
                    "exporting conversation %d to %s failed: %s", conversation.id, path, error
                )
                self.notify(
                    f"Cannot write {path}: {error.strerror or error}; choose another path.",
                    severity="error",
                )
                return
            self.notify(f"Exported to {written}")

        self.app.push_screen(
            TextPromptScreen("Export to Markdown file", suggestion, "Enter writes the file"), export
        )

    def action_copy_reply(self) -> None:
        replies = [view for view in self.message_views if view.role == ASSISTANT]
        if not replies:
            self.notify("There is no reply to copy yet.")
            return
        replies[-1].action_copy()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(ConversationList)
        sidebar.display = not sidebar.display

    def action_help(self) -> None:
        panels = self.query(HelpPanel)
        if panels:
            panels.remove()
        else:
            self.mount(HelpPanel())
