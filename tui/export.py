"""Write a conversation as a Markdown document."""

from __future__ import annotations

import re
import time
from pathlib import Path

from qwen_edge.tui.history import ASSISTANT, COMPLETE, STATUS_NOTES, Conversation, StoredMessage


def conversation_markdown(conversation: Conversation, messages: list[StoredMessage]) -> str:
    """Return the conversation as Markdown: a title, its settings, then one section per
    message. Message text is copied unchanged, so code blocks stay code blocks."""
    settings = conversation.settings
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(conversation.created_at))
    lines = [
        f"# {conversation.title}",
        "",
        f"- Model: `{settings.model}`",
        f"- Temperature {settings.temperature:g}, top-p {settings.top_p:g}, "
        f"max tokens {settings.max_tokens}",
        f"- Started: {created}",
    ]
    if settings.system_prompt:
        lines += ["", "## System", "", settings.system_prompt]
    for message in messages:
        heading = "Assistant" if message.role == ASSISTANT else "You"
        if message.status != COMPLETE and message.status in STATUS_NOTES:
            heading += f" ({STATUS_NOTES[message.status]})"
        lines += ["", f"## {heading}", "", message.content]
    return "\n".join(lines) + "\n"


def default_export_name(conversation: Conversation) -> str:
    """Return a file name made from the title: word characters (any script) and dashes."""
    slug = re.sub(r"[^\w]+", "-", conversation.title, flags=re.UNICODE).strip("-_").lower()
    return f"{slug[:60] or 'conversation'}.md"


def export_conversation(
    conversation: Conversation, messages: list[StoredMessage], path: Path
) -> Path:
    path = path.expanduser()
    path.write_text(conversation_markdown(conversation, messages), encoding="utf-8")
    return path
