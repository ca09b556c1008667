"""ChatSession: prefix reuse between turns, logits equal to a recomputation, context overflow."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conftest import nmse, write_tiny_checkpoint
from qwen_edge.config import ModelConfig
from qwen_edge.errors import QwenEdgeError
from qwen_edge.generate import stream_generate
from qwen_edge.loader import load_model
from qwen_edge.session import ChatSession, common_prefix_length, split_turns

DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """A random Qwen2 model with the real vocabulary size, so the demo tokenizer fits it."""
    directory = write_tiny_checkpoint(
        tmp_path_factory.mktemp("session") / "tiny",
        vocab_size=151936,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return load_model(directory, ModelConfig.from_file(directory), dtype="float32")


@pytest.fixture
def session(tiny_model, demo_tokenizer) -> ChatSession:
    return ChatSession(tiny_model, demo_tokenizer, context_size=1024)


def run_turn(session: ChatSession, messages: list[dict], max_tokens: int = 6) -> tuple:
    turn = session.prepare(messages, max_tokens)
    events = list(session.stream(turn, max_tokens=max_tokens))
    return turn, events


def logits_from_scratch(model, ids: list[int]) -> np.ndarray:
    cache = model.make_cache()
    return np.array(model(mx.array([ids]), cache)[0])


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([5], [6]) == 0


def test_split_turns_keeps_replies_with_questions():
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
    ]
    system, turns = split_turns(messages)
    assert system == messages[:1]
    assert turns == [messages[1:3], messages[3:]]


def test_turn_two_processes_only_new_tokens(session):
    first = [{"role": "user", "content": "Hello there"}]
    turn1, events = run_turn(session, first)
    assert turn1.reused == 0
    assert events[0].stats.prompt_tokens == turn1.prompt_tokens
    reply = "".join(event.text for event in events)

    second = first + [
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And now?"},
    ]
    cached_before = session.cached_ids
    turn2 = session.prepare(second, 6)
    full_ids = session.render(second)

    assert turn2.reused >= turn1.prompt_tokens
    assert turn2.reused == common_prefix_length(full_ids, cached_before)
    assert turn2.new_ids == full_ids[turn2.reused :]
    assert turn2.prompt_tokens == len(full_ids)
    assert session.cache.offset == turn2.reused

    events2 = list(session.stream(turn2, max_tokens=6))
    # stream_generate counts only the tokens it was given, i.e. the new ones.
    assert events2[0].stats.prompt_tokens == len(turn2.new_ids)


def test_turn_two_logits_equal_recomputation(session, tiny_model):
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    _, events = run_turn(session, first)
    second = first + [
        {"role": "assistant", "content": "".join(event.text for event in events)},
        {"role": "user", "content": "你好，再说一遍"},
    ]
    turn2 = session.prepare(second, 6)
    full_ids = session.render(second)

    cached_logits = np.array(tiny_model(mx.array([turn2.new_ids]), session.cache)[0])
    fresh_logits = logits_from_scratch(tiny_model, full_ids)[turn2.reused :]

    assert cached_logits.shape == fresh_logits.shape
    assert nmse(cached_logits, fresh_logits) < 1e-6
    assert (cached_logits.argmax(-1) == fresh_logits.argmax(-1)).all()


def test_turn_two_tokens_equal_fresh_generation(session, tiny_model, demo_tokenizer):
    first = [{"role": "user", "content": "Count to three"}]
    _, events = run_turn(session, first)
    second = first + [
        {"role": "assistant", "content": "".join(event.text for event in events)},
        {"role": "user", "content": "Again"},
    ]
    turn2 = session.prepare(second, 8)
    reused_tokens = [event.token for event in session.stream(turn2, max_tokens=8)]
    fresh_tokens = [
        event.token for event in stream_generate(tiny_model, demo_tokenizer, second, max_tokens=8)
    ]
    assert turn2.reused > 0
    assert reused_tokens == fresh_tokens


def test_default_system_prompt_rendered_once(session, demo_tokenizer):
    first = [{"role": "user", "content": "One"}]
    _, events = run_turn(session, first)
    second = first + [
        {"role": "assistant", "content": "".join(event.text for event in events)},
        {"role": "user", "content": "Two"},
    ]
    turn2 = session.prepare(second, 6)
    prompt = demo_tokenizer.decode(session.cached_ids + turn2.new_ids)
    assert prompt.count(DEFAULT_SYSTEM) == 1
    assert prompt.startswith("<|im_start|>system\n" + DEFAULT_SYSTEM)


def test_same_prompt_again_processes_one_token(session):
    messages = [{"role": "user", "content": "Regenerate me"}]
    turn1, _ = run_turn(session, messages)
    again = session.prepare(messages, 6)
    assert again.reused == turn1.prompt_tokens - 1
    assert len(again.new_ids) == 1


def test_stopped_reply_keeps_cache_consistent(session, tiny_model):
    messages = [{"role": "user", "content": "Tell me a long story"}]
    turn = session.prepare(messages, 20)
    stream = session.stream(turn, max_tokens=20)
    partial = [next(stream) for _ in range(3)]
    stream.close()
    assert session.cache.offset <= len(session._fed)
    assert session.cached_ids[: turn.prompt_tokens] == session.render(messages)

    follow_up = messages + [
        {"role": "assistant", "content": "".join(event.text for event in partial)},
        {"role": "user", "content": "Go on"},
    ]
    turn2 = session.prepare(follow_up, 6)
    cached_logits = np.array(tiny_model(mx.array([turn2.new_ids]), session.cache)[0])
    fresh_logits = logits_from_scratch(tiny_model, session.render(follow_up))[turn2.reused :]
    assert nmse(cached_logits, fresh_logits) < 1e-6


def test_overflow_drops_oldest_turns_keeps_system(tiny_model, demo_tokenizer):
    session = ChatSession(tiny_model, demo_tokenizer, context_size=160)
    messages = [{"role": "system", "content": "Answer in one word."}]
    for i in range(6):
        messages.append({"role": "user", "content": f"Question number {i} about rivers and seas"})
        messages.append({"role": "assistant", "content": f"Answer number {i}, water"})
    messages.append({"role": "user", "content": "Last question"})
    max_tokens = 16

    turn = session.prepare(messages, max_tokens)

    assert turn.dropped_turns > 0
    assert turn.messages[0] == messages[0]
    assert turn.messages[-1] == messages[-1]
    assert turn.messages[1] == messages[1 + 2 * turn.dropped_turns]
    assert turn.prompt_tokens + max_tokens <= 160
    # One turn fewer dropped would not fit.
    one_more = [messages[0]] + messages[1 + 2 * (turn.dropped_turns - 1) :]
    assert len(session.render(one_more)) + max_tokens > 160


def test_overflow_of_last_message_alone_raises(tiny_model, demo_tokenizer):
    session = ChatSession(tiny_model, demo_tokenizer, context_size=64)
    messages = [{"role": "user", "content": "word " * 200}]
    with pytest.raises(QwenEdgeError, match="context size of 64 tokens"):
        session.prepare(messages, 8)


def test_context_size_beyond_model_rejected(tiny_model, demo_tokenizer):
    with pytest.raises(QwenEdgeError, match="context_size must be between"):
        ChatSession(tiny_model, demo_tokenizer, context_size=10**9)


def test_stale_turn_rejected(session):
    messages = [{"role": "user", "content": "Hi"}]
    run_turn(session, messages)
    turn = session.prepare(messages, 4)
    assert turn.reused > 0
    session.reset()
    with pytest.raises(QwenEdgeError, match="prepare"):
        next(session.stream(turn, max_tokens=4))
