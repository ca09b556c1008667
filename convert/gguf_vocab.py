"""Turn a Qwen2 Hugging Face tokenizer into the `tokenizer.*` metadata of a GGUF file.

llama.cpp has no tokenizer.json reader. It rebuilds the byte-level BPE from a token list, the
merges and a type per token. This module reads tokenizer.json, tokenizer_config.json,
config.json and generation_config.json and produces the same keys that llama.cpp's
convert_hf_to_gguf.py writes for Qwen2 (`get_vocab_base` and `_set_vocab_gpt2` there).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, TokenType

from qwen_edge.convert.gguf_tokenizer import QWEN2_SPLIT_REGEX
from qwen_edge.errors import QwenEdgeError

logger = logging.getLogger("qwen_edge.convert")

# llama.cpp's name for Qwen2's pre-tokenizer split pattern. Without it llama.cpp falls back to
# the GPT-2 pattern, which groups runs of digits that Qwen2 splits one by one.
QWEN2_PRE = "qwen2"


@dataclass(frozen=True)
class GGUFVocabulary:
    """The tokenizer metadata of a GGUF file, with one token per embedding row."""

    tokens: list[str]  # byte-level spelling ("Ġthe"); rows past the tokenizer are "[PAD<id>]"
    token_types: list[int]  # gguf.TokenType values
    merges: list[str]  # "left right"
    eos_token_id: int
    bos_token_id: int | None
    padding_token_id: int | None
    add_bos_token: bool
    chat_template: str | None
    pre: str = QWEN2_PRE


def read_vocabulary(model_dir: Path, n_rows: int) -> GGUFVocabulary:
    """Read the tokenizer files of the Qwen2 checkpoint in `model_dir`, padded to `n_rows` tokens.

    Raises QwenEdgeError when tokenizer.json is missing or is not a byte-level BPE, when the
    tokenizer has more tokens than the embedding has rows, or when no end-of-sequence token is
    named anywhere.
    """
    tokenizer = _read_json(model_dir / "tokenizer.json", required=True)
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json")
    config = _read_json(model_dir / "config.json")
    generation_config = _read_json(model_dir / "generation_config.json")

    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise QwenEdgeError(
            f"{model_dir / 'tokenizer.json'} has a {model.get('type')!r} model, but Qwen2 uses a "
            "byte-level BPE. Only Qwen2 and Qwen2.5 tokenizers can be exported to GGUF."
        )
    _check_pre_tokenizer(tokenizer, model_dir)

    ids = _token_ids(model, tokenizer.get("added_tokens") or [], model_dir, n_rows)
    tokens, token_types = _token_table(model, tokenizer.get("added_tokens") or [], n_rows)
    eos_token_id = _special_id(
        "eos", tokenizer_config, ids, config.get("eos_token_id"), generation_config
    )
    if eos_token_id is None:
        raise QwenEdgeError(
            f"{model_dir} names no end-of-sequence token (eos_token in tokenizer_config.json or "
            "eos_token_id in config.json), so llama.cpp would never stop generating. Add one."
        )
    return GGUFVocabulary(
        tokens=tokens,
        token_types=token_types,
        merges=_merges(model),
        eos_token_id=eos_token_id,
        bos_token_id=_special_id(
            "bos", tokenizer_config, ids, config.get("bos_token_id"), generation_config
        ),
        padding_token_id=_special_id("pad", tokenizer_config, ids, None, generation_config),
        add_bos_token=bool(tokenizer_config.get("add_bos_token", False)),
        chat_template=_chat_template(tokenizer_config, model_dir),
    )


def add_vocabulary(writer: GGUFWriter, vocab: GGUFVocabulary) -> None:
    """Add the `tokenizer.ggml.*` keys and `tokenizer.chat_template` to `writer`."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_eos_token_id(vocab.eos_token_id)
    if vocab.bos_token_id is not None:
        writer.add_bos_token_id(vocab.bos_token_id)
    if vocab.padding_token_id is not None:
        writer.add_pad_token_id(vocab.padding_token_id)
    writer.add_add_bos_token(vocab.add_bos_token)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)


def looks_special(text: str) -> bool:
    """Tell whether an added token is written like a control token (`<|...|>`).

    llama.cpp's converter marks such tokens CONTROL even when tokenizer.json calls them not
    special (Qwen2.5 does so for its fill-in-the-middle tokens), because llama.cpp treats some
    of them as end of generation.
    """
    return text.startswith("<|") and text.endswith("|>")


def _token_table(
    model: dict[str, Any], added_tokens: list[dict[str, Any]], n_rows: int
) -> tuple[list[str], list[int]]:
    tokens = [f"[PAD{index}]" for index in range(n_rows)]
    token_types = [int(TokenType.UNUSED)] * n_rows
    for text, token_id in (model.get("vocab") or {}).items():
        tokens[token_id] = text
        token_types[token_id] = int(TokenType.NORMAL)
    for added in added_tokens:
        token_id, text = added["id"], added["content"]
        tokens[token_id] = text
        control = added.get("special", False) or looks_special(text)
        token_types[token_id] = int(TokenType.CONTROL if control else TokenType.USER_DEFINED)
    return tokens, token_types


def _token_ids(
    model: dict[str, Any], added_tokens: list[dict[str, Any]], model_dir: Path, n_rows: int
) -> dict[str, int]:
    ids = dict(model.get("vocab") or {})
    for added in added_tokens:
        ids[added["content"]] = added["id"]
    largest = max(ids.values(), default=-1)
    if largest >= n_rows:
        raise QwenEdgeError(
            f"{model_dir / 'tokenizer.json'} has token id {largest}, but the embedding has only "
            f"{n_rows} rows (vocab_size in config.json). The tokenizer does not belong to this "
            "checkpoint; copy the tokenizer files of the model it was trained with."
        )
    return ids


def _merges(model: dict[str, Any]) -> list[str]:
    # tokenizer.json stores merges as "a b" strings (older tokenizers releases) or ["a", "b"].
    return [
        merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges") or []
    ]


def _special_id(
    role: str,
    tokenizer_config: dict[str, Any],
    ids: dict[str, int],
    config_id: int | list[int] | None,
    generation_config: dict[str, Any],
) -> int | None:
    """Find the id of the bos, eos or pad token: tokenizer_config.json first, as transformers
    does, then config.json, then generation_config.json."""
    token = tokenizer_config.get(f"{role}_token")
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str) and token in ids:
        return ids[token]
    for value in (config_id, generation_config.get(f"{role}_token_id")):
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return None


def _chat_template(tokenizer_config: dict[str, Any], model_dir: Path) -> str | None:
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        # Several named templates: llama.cpp reads the default one from this key.
        named = {entry.get("name"): entry.get("template") for entry in template}
        template = named.get("default")
    if template is None and (model_dir / "chat_template.jinja").is_file():
        # Recent transformers releases save the template in this file instead.
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if template is None:
        logger.warning("%s has no chat template, so llama.cpp cannot format chats", model_dir)
    return template


def _check_pre_tokenizer(tokenizer: dict[str, Any], model_dir: Path) -> None:
    patterns = _split_patterns(tokenizer.get("pre_tokenizer") or {})
    if QWEN2_SPLIT_REGEX not in patterns:
        # NOTE: llama.cpp splits with Qwen2's pattern regardless, so text may tokenize
        # differently from transformers for this checkpoint.
        logger.warning(
            "%s does not split text with Qwen2's pattern, but the GGUF file still names %r",
            model_dir / "tokenizer.json",
            QWEN2_PRE,
        )


def _split_patterns(pre_tokenizer: dict[str, Any]) -> list[str]:
    if pre_tokenizer.get("type") == "Sequence":
        return [p for item in pre_tokenizer["pretokenizers"] for p in _split_patterns(item)]
    if pre_tokenizer.get("type") == "Split":
        return [pre_tokenizer.get("pattern", {}).get("Regex")]
    return []


def _read_json(path: Path, *, required: bool = False) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise QwenEdgeError(
                f"{path} not found. A GGUF file carries the tokenizer, so the checkpoint needs "
                "its tokenizer files (tokenizer.json, tokenizer_config.json) beside the weights."
            )
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise QwenEdgeError(f"{path} is not valid JSON: {error}") from error
