"""The status line under the input: model, speed, time to first token, context and memory."""

from __future__ import annotations

from dataclasses import dataclass

from textual.widgets import Static

from qwen_edge.generate import GenerationStats
from qwen_edge.tui.backend import ModelInfo, TurnStarted


@dataclass
class StatusState:
    model: str = ""
    info: ModelInfo | None = None
    turn: TurnStarted | None = None
    stats: GenerationStats | None = None
    dropped_turns: int = 0  # oldest turns left out of the last prompt
    loading: str | None = None  # the loading step being run, None when idle
    read_only: bool = False


def format_status(state: StatusState) -> str:
    """Return the status text: "model · quant │ 12.3 tok/s │ first token 0.21 s │ ..."."""
    if state.loading is not None:
        return f"Loading {state.model}: {state.loading}"
    if state.info is None:
        suffix = " (not available: read-only)" if state.read_only else " (not loaded)"
        return f"{state.model or 'no model'}{suffix}"

    parts = [f"{state.info.name} · {state.info.quantization}"]
    context_used = state.turn.prompt_tokens if state.turn is not None else 0
    if state.stats is not None:
        context_used += state.stats.generation_tokens
        parts.append(f"{state.stats.generation_tps:.1f} tok/s")
        parts.append(f"first token {state.stats.time_to_first_token:.2f} s")
    parts.append(f"context {context_used}/{state.info.context_size}")
    if state.stats is not None:
        parts.append(f"peak {state.stats.peak_memory_gb:.2f} GB")
    if state.turn is not None:
        parts.append(f"prompt: {state.turn.processed} processed, {state.turn.reused} reused")
    if state.dropped_turns:
        parts.append(f"{state.dropped_turns} oldest turn(s) dropped")
    return " │ ".join(parts)


class StatusLine(Static):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.state = StatusState()

    def set_state(self, **changes: object) -> None:
        for name, value in changes.items():
            setattr(self.state, name, value)
        self.update(format_status(self.state))
