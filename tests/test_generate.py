"""The generation loop: stop ids, padding rows, streaming text, sampling settings, prefill."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from qwen_edge.cache import KVCache
from qwen_edge.config import ModelConfig
from qwen_edge.errors import QwenEdgeError
from qwen_edge.generate import generate, prefill, prompt_to_tokens, stream_generate
from qwen_edge.loader import load_model
from qwen_edge.sample import SamplingSettings

ENDOFTEXT, IM_END = 151643, 151645
PADDING_ID = 151700  # an embedding row past len(tokenizer) == 151665
MIXED_TEXT = "你好，世界！🙂 Ünïcödé 日本語 한국어 🚀👨‍👩‍👧 done"


class ScriptedModel:
    """Stands in for Qwen2Model: step n's logits peak at script[n], and a padding row scores
    higher still, so only the sampler's vocabulary cut keeps it out."""

    def __init__(self, script: list[int], vocab_size: int = 151936) -> None:
        self.config = ModelConfig(
            hidden_size=8,
            num_hidden_layers=1,
            intermediate_size=8,
            num_attention_heads=1,
            num_key_value_heads=1,
            vocab_size=vocab_size,
        )
        self.script = script
        self.calls = 0

    def make_cache(self, max_size: int | None = None) -> KVCache:
        return KVCache.for_model(self.config, max_size)

    def __call__(self, tokens, cache=None, last_only=False):
        cache.check_room(tokens.shape[1])
        cache.advance(tokens.shape[1])
        logits = np.full((1, 1, self.config.vocab_size), -10.0, dtype=np.float32)
        logits[0, 0, self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        logits[0, 0, PADDING_ID] = 30.0
        self.calls += 1
        return mx.array(logits)


def run(model, tokenizer, prompt="hi", **options):
    return list(stream_generate(model, tokenizer, prompt, **options))


@pytest.mark.parametrize("stop_id", [ENDOFTEXT, IM_END])
def test_stops_on_each_eos_id(demo_tokenizer, stop_id):
    reply = demo_tokenizer.encode("Hello world")
    model = ScriptedModel(reply + [stop_id] + demo_tokenizer.encode(" never shown"))

    events = run(model, demo_tokenizer, max_tokens=50)

    assert "".join(e.text for e in events) == "Hello world"
    assert events[-1].finish_reason == "stop"
    assert events[-1].token == stop_id
    assert all(e.finish_reason is None for e in events[:-1])


def test_stop_ids_are_the_union_of_config_files(demo_tokenizer):
    assert {ENDOFTEXT, IM_END} <= demo_tokenizer.eos_token_ids


def test_padding_rows_are_never_produced(demo_tokenizer):
    model = ScriptedModel(demo_tokenizer.encode("a b c d e f g h"))

    greedy = run(model, demo_tokenizer, max_tokens=8)
    sampled = run(
        ScriptedModel(demo_tokenizer.encode("a b c")),
        demo_tokenizer,
        max_tokens=30,
        temperature=5.0,
        seed=0,
    )

    assert all(e.token < demo_tokenizer.vocab_limit for e in greedy + sampled)
    assert [e.token for e in greedy] == demo_tokenizer.encode("a b c d e f g h")


def test_max_tokens_finishes_with_length(demo_tokenizer):
    model = ScriptedModel(demo_tokenizer.encode("one two three four five"))

    events = run(model, demo_tokenizer, max_tokens=3)

    assert len(events) == 3
    assert events[-1].finish_reason == "length"
    assert events[-1].stats.generation_tokens == 3
    assert events[-1].stats.prompt_tokens == 1


def test_streamed_text_never_splits_a_character(demo_tokenizer):
    script = demo_tokenizer.encode(MIXED_TEXT)
    # the text must really contain tokens that end inside a character, or this tests nothing
    assert any("\ufffd" in demo_tokenizer.decode([t]) for t in script)
    model = ScriptedModel(script + [IM_END])

    chunks = [e.text for e in run(model, demo_tokenizer, max_tokens=100)]

    assert all("\ufffd" not in chunk for chunk in chunks)
    assert "".join(chunks) == demo_tokenizer.decode(script) == MIXED_TEXT


def test_reply_starting_with_space_keeps_it(demo_tokenizer):
    script = demo_tokenizer.encode(" indented\n  and more")
    model = ScriptedModel(script + [IM_END])

    assert "".join(e.text for e in run(model, demo_tokenizer)) == " indented\n  and more"


def test_detokenizer_releases_invalid_bytes(demo_tokenizer):
    # The first token of " 🚀" holds a space and only the start of the 4-byte emoji. Repeated,
    # the bytes are invalid UTF-8: they must come out (as U+FFFD) rather than be held forever.
    partial = demo_tokenizer.encode(" 🚀")[0]
    assert demo_tokenizer.decode([partial]).endswith("\ufffd")
    detokenizer = demo_tokenizer.detokenizer()

    pieces = [detokenizer.add_token(partial) for _ in range(20)]

    assert any(pieces)
    assert "".join(pieces) + detokenizer.finalize() == demo_tokenizer.decode([partial] * 20)


def test_messages_use_the_chat_template(demo_tokenizer):
    messages = [{"role": "user", "content": "2+2?"}]

    ids = prompt_to_tokens(demo_tokenizer, messages)

    assert ids == demo_tokenizer.encode(demo_tokenizer.apply_chat_template(messages))
    assert ids[-3:] == demo_tokenizer.encode("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "options,message",
    [
        ({"max_tokens": 0}, "max_tokens must be at least 1, got 0"),
        ({"temperature": -1.0}, "temperature must be >= 0, got -1.0"),
        ({"top_p": 0.0}, "top_p must be in \\(0, 1\\], got 0.0"),
        ({"top_k": -2}, "top_k must be >= 0"),
        ({"min_p": 1.5}, "min_p must be in \\[0, 1\\)"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"prefill_step_size": 0}, "prefill_step_size must be at least 1"),
    ],
)
def test_bad_settings_are_named(demo_tokenizer, options, message):
    with pytest.raises(QwenEdgeError, match=message):
        run(ScriptedModel([1]), demo_tokenizer, **options)


@pytest.mark.parametrize("prompt", ["", [], [1.5, 2.5]])
def test_bad_prompts_are_rejected(demo_tokenizer, prompt):
    with pytest.raises(QwenEdgeError, match="prompt"):
        run(ScriptedModel([1]), demo_tokenizer, prompt=prompt)


def test_prompt_longer_than_cache_is_rejected(demo_tokenizer):
    model = ScriptedModel([1])

    with pytest.raises(QwenEdgeError, match="KV cache is full"):
        run(model, demo_tokenizer, prompt=list(range(20)), cache=model.make_cache(max_size=10))


@pytest.fixture
def tiny_model(tiny_checkpoint):
    """A tiny random model with the real Qwen vocabulary (151936 rows)."""
    directory = tiny_checkpoint(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=151936
    )
    return load_model(directory, ModelConfig.from_file(directory), dtype="float32")


def test_chunked_prefill_equals_one_pass(tiny_model):
    tokens = mx.array(np.random.default_rng(0).integers(0, 151665, size=37))

    whole = prefill(tiny_model, tokens, tiny_model.make_cache(), step_size=512)
    chunked_cache = tiny_model.make_cache()
    chunked = prefill(tiny_model, tokens, chunked_cache, step_size=5)

    assert chunked_cache.offset == 37
    assert np.abs(np.array(whole) - np.array(chunked)).max() < 1e-4


def test_same_seed_same_tokens(tiny_model, demo_tokenizer):
    options = dict(max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, seed=7)

    first = [e.token for e in run(tiny_model, demo_tokenizer, **options)]
    second = [e.token for e in run(tiny_model, demo_tokenizer, **options)]
    other = [e.token for e in run(tiny_model, demo_tokenizer, **{**options, "seed": 8})]

    assert first == second
    assert first != other


def test_top_k_one_is_greedy(tiny_model, demo_tokenizer):
    greedy = [e.token for e in run(tiny_model, demo_tokenizer, max_tokens=10)]
    top1 = [
        e.token
        for e in run(tiny_model, demo_tokenizer, max_tokens=10, temperature=2.0, top_k=1, seed=3)
    ]

    assert top1 == greedy


def test_repetition_penalty_changes_a_repetitive_reply(tiny_model, demo_tokenizer):
    plain = [e.token for e in run(tiny_model, demo_tokenizer, max_tokens=24)]
    penalised = [
        e.token for e in run(tiny_model, demo_tokenizer, max_tokens=24, repetition_penalty=5.0)
    ]

    assert len(set(penalised)) >= len(set(plain))
    assert penalised != plain


def test_greedy_generation_matches_cached_argmax(tiny_model, demo_tokenizer):
    prompt = demo_tokenizer.encode("def add(a, b):")
    reply = [e.token for e in run(tiny_model, demo_tokenizer, prompt=prompt, max_tokens=8)]

    # recompute each step from scratch, without a cache
    expected = []
    sequence = list(prompt)
    for _ in range(8):
        logits = tiny_model(mx.array([sequence]))[0, -1, : demo_tokenizer.vocab_limit]
        expected.append(int(mx.argmax(logits).item()))
        sequence.append(expected[-1])

    assert reply[: len(expected)] == expected[: len(reply)]


def test_generate_joins_stream(tiny_model, demo_tokenizer):
    text = generate(tiny_model, demo_tokenizer, "hello", max_tokens=6)
    events = run(tiny_model, demo_tokenizer, "hello", max_tokens=6)

    assert text == "".join(e.text for e in events)


def test_sampling_settings_object_and_keywords_agree(tiny_model, demo_tokenizer):
    settings = SamplingSettings(temperature=0.8, seed=11)

    by_object = [e.token for e in run(tiny_model, demo_tokenizer, sampling=settings)][:6]
    by_keywords = [e.token for e in run(tiny_model, demo_tokenizer, temperature=0.8, seed=11)][:6]

    assert by_object == by_keywords


def test_rotating_cache_generates_past_its_size(demo_tokenizer):
    from qwen_edge.kv_rotating import RotatingKVCache

    model = ScriptedModel(demo_tokenizer.encode(" word" * 40))
    cache = RotatingKVCache.for_model(model.config, max_size=8, keep=4)

    events = run(model, demo_tokenizer, prompt=list(range(100, 106)), max_tokens=20, cache=cache)

    assert len(events) == 20
    assert events[-1].finish_reason == "length"


def test_negative_seed_is_rejected(demo_tokenizer):
    with pytest.raises(QwenEdgeError, match="seed must be in"):
        run(ScriptedModel([1]), demo_tokenizer, seed=-1)
