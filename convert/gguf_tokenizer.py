"""Rebuild a Qwen2 Hugging Face tokenizer from the vocabulary stored in a GGUF file.

A GGUF file has no tokenizer.json. llama.cpp stores the byte-level BPE vocabulary, the merges and
a type for each token under `tokenizer.ggml.*` keys. This module turns those back into the
tokenizer.json and tokenizer_config.json that Qwen2.5 ships on the Hugging Face hub, with the
`tokenizers` library doing the BPE.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from gguf import TokenType
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE

from qwen_edge.errors import GGUFError

logger = logging.getLogger("qwen_edge.convert")

# The split pattern of Qwen2's tokenizer.json. llama.cpp uses the same pattern for the
# pre-tokenizer names below (LLAMA_VOCAB_PRE_TYPE_QWEN2 in its src/llama-vocab.cpp).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PRE_TOKENIZERS = frozenset({"qwen2", "deepseek-r1-qwen"})

# Token texts that llama.cpp treats as end of generation wherever they appear in a vocabulary
# (the `special_eog_ids` rule in src/llama-vocab.cpp, llama.cpp commit 00ad355). llama.cpp also
# stops on the fill-in-the-middle pad, repo and file-separator tokens. Those are left out here
# because they only end fill-in-the-middle completions, not chat turns.
END_OF_GENERATION_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "</s>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<eos>",
        "<turn|>",
        "<|tool_response>",
        "<｜end▁of▁sentence｜>",
        "[e~[",
    }
)


@dataclass(frozen=True)
class GGUFVocab:
    """The `tokenizer.*` metadata of a GGUF file that a Hugging Face tokenizer needs."""

    tokens: list[str]  # tokenizer.ggml.tokens, in byte-level spelling ("Ġthe")
    token_type: list[int]  # tokenizer.ggml.token_type, values of gguf.TokenType
    merges: list[str]  # tokenizer.ggml.merges, "left right"
    eos_token_id: int
    bos_token_id: int | None = None
    padding_token_id: int | None = None
    add_bos_token: bool = False
    chat_template: str | None = None
    model_max_length: int = 32768
    pre: str | None = None  # tokenizer.ggml.pre


def kept_token_count(vocab: GGUFVocab) -> int:
    """Count the tokens left after dropping the UNUSED rows at the end of the vocabulary.

    Qwen pads its embedding matrix to a round number of rows (151936 for 151665 tokens) and
    llama.cpp stores those rows as UNUSED `[PAD151665]`... tokens. An UNUSED token anywhere
    else is kept, so that token ids stay contiguous.
    """
    count = len(vocab.tokens)
    while count > 0 and vocab.token_type[count - 1] == TokenType.UNUSED:
        count -= 1
    return count


def build_tokenizer(vocab: GGUFVocab) -> Tokenizer:
    """Build the byte-level BPE tokenizer that Qwen2's tokenizer.json describes."""
    count = kept_token_count(vocab)
    ids = _token_ids(vocab.tokens[:count])
    merges = _split_merges(vocab.merges)

    tokenizer = Tokenizer(
        BPE(
            vocab=ids,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
            ignore_merges=False,
        )
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    tokenizer.decoder = decoders.ByteLevel()

    # Every added token is already in the BPE vocabulary, so each keeps its GGUF id. A token
    # missing from it would get the next free id from the `tokenizers` library instead.
    added = [token for _, token in _added_tokens(vocab, count)]
    tokenizer.add_special_tokens([token for token in added if token.special])
    tokenizer.add_tokens([token for token in added if not token.special])
    return tokenizer


def end_of_generation_ids(vocab: GGUFVocab) -> list[int]:
    """List the ids that end generation: the GGUF eos token first, then CONTROL tokens whose
    text llama.cpp treats as end of generation, in id order."""
    ids = [vocab.eos_token_id]
    for token_id, (text, token_type) in enumerate(zip(vocab.tokens, vocab.token_type, strict=True)):
        is_end = token_type == TokenType.CONTROL and text in END_OF_GENERATION_TEXTS
        if is_end and token_id not in ids:
            ids.append(token_id)
    return ids


def tokenizer_config(vocab: GGUFVocab) -> dict:
    """Build tokenizer_config.json in the layout of Qwen2.5's own."""
    added = _added_tokens(vocab, kept_token_count(vocab))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {
            str(token_id): _added_token_entry(token) for token_id, token in added
        },
        "bos_token": _token_text(vocab, vocab.bos_token_id) if vocab.add_bos_token else None,
        "eos_token": _token_text(vocab, vocab.eos_token_id),
        "pad_token": _token_text(vocab, vocab.padding_token_id),
        "unk_token": None,
        "add_bos_token": vocab.add_bos_token,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": vocab.model_max_length,
        "split_special_tokens": False,
    }
    if vocab.chat_template is not None:
        config["chat_template"] = vocab.chat_template
    return config


def write_tokenizer_files(vocab: GGUFVocab, out_dir: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`."""
    check_vocab(vocab)
    if vocab.pre not in QWEN2_PRE_TOKENIZERS:
        # NOTE: the Qwen2 split pattern is used regardless, so a file converted from another
        # tokenizer would tokenize differently from llama.cpp.
        logger.warning(
            "tokenizer.ggml.pre is %r, not one of %s, so Qwen2's pre-tokenizer is used anyway",
            vocab.pre,
            sorted(QWEN2_PRE_TOKENIZERS),
        )
    if vocab.chat_template is None:
        logger.warning(
            "the GGUF file has no tokenizer.chat_template, so chat prompts cannot be built"
        )

    build_tokenizer(vocab).save(str(out_dir / "tokenizer.json"))
    config = tokenizer_config(vocab)
    _write_json(out_dir / "tokenizer_config.json", config)
    special_tokens = {
        key: config[key] for key in ("bos_token", "eos_token", "pad_token") if config[key]
    }
    _write_json(out_dir / "special_tokens_map.json", special_tokens)


def check_vocab(vocab: GGUFVocab) -> None:
    """Raise GGUFError if the token types or the special token ids do not fit the tokens."""
    if len(vocab.token_type) != len(vocab.tokens):
        raise GGUFError(
            f"tokenizer.ggml.token_type has {len(vocab.token_type)} entries but "
            f"tokenizer.ggml.tokens has {len(vocab.tokens)}. The file is corrupt. "
            "Download it again."
        )
    count = kept_token_count(vocab)
    named_ids = {
        "tokenizer.ggml.eos_token_id": vocab.eos_token_id,
        "tokenizer.ggml.bos_token_id": vocab.bos_token_id,
        "tokenizer.ggml.padding_token_id": vocab.padding_token_id,
    }
    for key, token_id in named_ids.items():
        if token_id is not None and not 0 <= token_id < count:
            raise GGUFError(
                f"{key} is {token_id}, outside the {count} tokens of the vocabulary. "
                "the file is corrupt. Download it again."
            )


def _token_ids(tokens: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for token_id, token in enumerate(tokens):
        if token in ids:
            # NOTE: the later id wins, so the earlier one can never be produced by encoding.
            logger.warning("token %r appears at ids %d and %d", token, ids[token], token_id)
        ids[token] = token_id
    return ids


def _split_merges(merges: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for index, merge in enumerate(merges):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise GGUFError(
                f"tokenizer.ggml.merges[{index}] is {merge!r}, not two tokens separated by one "
                "space. The file is corrupt. Download it again."
            )
        pairs.append((parts[0], parts[1]))
    return pairs


def _added_tokens(vocab: GGUFVocab, count: int) -> list[tuple[int, AddedToken]]:
    """List the CONTROL tokens (special) and USER_DEFINED ones (not special) with their ids."""
    added = []
    for token_id in range(count):
        token_type = vocab.token_type[token_id]
        if token_type in (TokenType.CONTROL, TokenType.USER_DEFINED):
            special = token_type == TokenType.CONTROL
            token = AddedToken(vocab.tokens[token_id], special=special, normalized=False)
            added.append((token_id, token))
    return added


def _added_token_entry(token: AddedToken) -> dict:
    return {
        "content": token.content,
        "lstrip": token.lstrip,
        "normalized": token.normalized,
        "rstrip": token.rstrip,
        "single_word": token.single_word,
        "special": token.special,
    }


def _token_text(vocab: GGUFVocab, token_id: int | None) -> str | None:
    return None if token_id is None else vocab.tokens[token_id]


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
