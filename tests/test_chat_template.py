"""Chat prompts: byte-equal to transformers' apply_chat_template and to ChatML as published."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

CONVERSATIONS = {
    "no-system": [{"role": "user", "content": "What is RoPE?"}],
    "custom-system": [
        {"role": "system", "content": "你是一个乐于助人的编程助手。"},
        {"role": "user", "content": "写一个快速排序。"},
    ],
    "several-turns": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Print 'hi' in Python.\n```python\n```"},
        {"role": "assistant", "content": "print('hi')"},
        {"role": "user", "content": "And in C? 🙂"},
    ],
}


def chatml(messages: list[dict[str, str]]) -> str:
    """ChatML as Qwen2.5 publishes it, with its default system prompt when none is given."""
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}, *messages]
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_prompt_equals_transformers(demo_tokenizer, demo_model_dir, name):
    messages = CONVERSATIONS[name]
    reference = AutoTokenizer.from_pretrained(demo_model_dir).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )

    ours = demo_tokenizer.apply_chat_template(messages)

    assert ours.encode("utf-8") == reference.encode("utf-8")


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_prompt_equals_published_chatml(demo_tokenizer, name):
    messages = CONVERSATIONS[name]

    assert demo_tokenizer.apply_chat_template(messages) == chatml(messages)


def test_special_tokens_encode_to_single_ids(demo_tokenizer):
    ids = demo_tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|endoftext|>")

    assert ids[0] == 151644
    assert 151645 in ids
    assert ids[-1] == 151643
