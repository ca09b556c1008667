"""The checkpoint's tokenizer and chat template (through transformers), its stop ids, and a
streaming detokenizer that never splits a UTF-8 character."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from qwen_edge.errors import CheckpointError

log = logging.getLogger("qwen_edge")

Message = dict[str, str]


class Tokenizer:
    """A Hugging Face tokenizer plus what generation needs from the checkpoint."""

    def __init__(self, hf_tokenizer: Any, eos_token_ids: Iterable[int]) -> None:
        self.hf = hf_tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        # Embedding rows at or above this id are padding and must never be sampled.
        self.vocab_limit = len(hf_tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, config_eos_ids: Iterable[int] = ()) -> Tokenizer:
        """Load the tokenizer files in `path` and collect its stop ids.

        Stop ids are the union of those in config.json (`config_eos_ids`),
        generation_config.json and the tokenizer's own eos token.
        """
        from transformers import AutoTokenizer

        path = Path(path)
        if not (path / "tokenizer.json").is_file() and not (path / "vocab.json").is_file():
            raise CheckpointError(
                f"no tokenizer in {path}: expected tokenizer.json (or vocab.json and merges.txt) "
                "beside the weights"
            )
        # trust_remote_code stays off: a checkpoint's own Python code is never run.
        hf = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        eos = set(config_eos_ids) | set(_generation_config_eos_ids(path))
        if hf.eos_token_id is not None:
            eos.add(hf.eos_token_id)
        if not eos:
            log.warning(
                "%s names no end-of-sequence token; generation stops only at max_tokens", path
            )
        return cls(hf, eos)

    def __len__(self) -> int:
        return self.vocab_limit

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text such as `<|im_end|>` becomes its single id."""
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> str:
        """Render `messages` with the checkpoint's chat template (transformers runs the Jinja
        template in a sandbox)."""
        if not self.hf.chat_template:
            raise CheckpointError(
                "this tokenizer has no chat template; pass raw text instead of messages "
                "(qwen-edge generate --raw)"
            )
        return self.hf.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def detokenizer(self) -> StreamingDetokenizer:
        return StreamingDetokenizer(self)


def _generation_config_eos_ids(path: Path) -> list[int]:
    file = path / "generation_config.json"
    if not file.is_file():
        return []
    try:
        value = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError) as error:
        raise CheckpointError(f"{file} is not a valid JSON object: {error}") from error
    if value is None:
        return []
    return [value] if isinstance(value, int) else [int(v) for v in value]


MAX_HELD = 8


class StreamingDetokenizer:
    """Turn token ids into text chunks as they arrive.

    A byte-level BPE token can end in the middle of a UTF-8 character (CJK, emoji). Tokens are
    held back while their decoded text ends in U+FFFD and released once the character is
    complete, so the joined chunks equal `decode` of all ids. mlx-lm's BPE detokenizer drops a
    leading space of the first chunk, which breaks that equality for a reply that starts with a
    space, hence this one.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pending: list[int] = []
        self.text = ""

    def add_token(self, token: int) -> str:
        """Add one token and return the text it completes (possibly empty)."""
        self.pending.append(token)
        chunk = self.tokenizer.decode(self.pending)
        # A character is at most 4 bytes and every token at least 1, so text still unfinished
        # after MAX_HELD tokens is invalid UTF-8 and is released as it decodes.
        if chunk.endswith("\ufffd") and len(self.pending) < MAX_HELD:
            return ""
        self.pending.clear()
        self.text += chunk
        return chunk

    def finalize(self) -> str:
        """Release whatever is still held back (an incomplete character decodes as U+FFFD)."""
        if not self.pending:
            return ""
        chunk = self.tokenizer.decode(self.pending)
        self.pending.clear()
        self.text += chunk
        return chunk
