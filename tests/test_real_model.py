"""The demo model (Qwen2.5-Coder-0.5B-Instruct, imported from its Q4_K_M GGUF) through the native
decoder, against transformers on the same directory, both in float32."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conftest import nmse
from qwen_edge import load, stream_generate

PROMPT = "The quick brown fox 跳过了懒狗。 def add(a: int, b: int):\n    return a + b  # 求和"
TOLERANCE = 1e-4  # NMSE over all positions and the whole vocabulary


@pytest.fixture(scope="module")
def ours(demo_model_dir):
    return load(demo_model_dir, dtype="float32")


@pytest.fixture(scope="module")
def reference(demo_model_dir):
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(demo_model_dir)


@pytest.fixture(scope="module")
def prompt_ids(ours):
    _, tokenizer = ours
    ids = tokenizer.encode(PROMPT)
    assert len(ids) == 32, f"the prompt should be 32 tokens, it is {len(ids)}"
    return ids


def test_logits_match_transformers(ours, reference, prompt_ids):
    import torch

    model, _ = ours
    their_model, _ = reference
    with torch.no_grad():
        expected = their_model(torch.tensor([prompt_ids])).logits[0].numpy()

    logits = np.array(model(mx.array([prompt_ids]))[0])

    assert nmse(logits, expected) < TOLERANCE
    assert np.array_equal(logits.argmax(-1), expected.argmax(-1))


def test_greedy_tokens_match_transformers(ours, reference):
    import torch

    model, tokenizer = ours
    their_model, their_tokenizer = reference
    messages = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
    prompt = their_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        expected = their_model.generate(
            **prompt,
            max_new_tokens=16,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
        )[0, prompt["input_ids"].shape[1] :].tolist()

    tokens = [e.token for e in stream_generate(model, tokenizer, messages, max_tokens=16)]

    assert len(expected) == 16
    assert tokens == expected


def test_chat_reply_stops_at_end_of_turn(ours):
    model, tokenizer = ours
    messages = [{"role": "user", "content": "Reply with the single word: yes"}]

    events = list(stream_generate(model, tokenizer, messages, max_tokens=48))

    assert events[-1].finish_reason == "stop"
    assert events[-1].token == 151645
    assert "yes" in "".join(e.text for e in events).lower()
