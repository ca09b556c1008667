"""The real backend's checks that need no model, the MLX thread, and the helpers that turn
stored messages into a prompt."""

from __future__ import annotations

import pytest

from qwen_edge import store
from qwen_edge.errors import QwenEdgeError
from qwen_edge.tui.backend import MLXThread, QwenBackend, describe_quantization
from qwen_edge.tui.history import ASSISTANT, COMPLETE, ERROR, USER, ConversationSettings
from qwen_edge.tui.history import StoredMessage as Stored
from qwen_edge.tui.screens.chat import backend_messages, title_from
from qwen_edge.tui.widgets.message_view import last_block_start


@pytest.fixture
def backend(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_EDGE_HOME", str(tmp_path / "home"))
    backend = QwenBackend()
    yield backend
    backend.close()


def test_missing_demo_model_names_command(backend):
    problem = backend.model_problem(store.DEMO_MODEL)
    assert "is not available" in problem
    assert "qwen-edge demo-model" in problem
    assert "read-only" in problem


def test_missing_model_names_convert(backend):
    problem = backend.model_problem("my-model")
    assert "'my-model' is not available" in problem
    assert "qwen-edge convert FILE.gguf my-model --to hf" in problem


def test_model_problem_none_for_loadable_models(backend, tmp_path):
    stored = tmp_path / "home" / "models" / "stored-model"
    stored.mkdir(parents=True)
    (stored / "config.json").write_text("{}", encoding="utf-8")
    assert backend.model_problem("stored-model") is None
    assert backend.model_problem(str(stored)) is None
    assert backend.model_problem("Qwen/Qwen2.5-0.5B-Instruct") is None


def test_directory_without_config_rejected(backend, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no config.json" in backend.model_problem(str(empty))


def test_load_of_missing_model_raises_user_error(backend):
    steps = []
    with pytest.raises(QwenEdgeError, match="is not available"):
        backend.load("my-model", lambda *step: steps.append(step))
    assert backend.info is None


def test_stream_without_loaded_model_raises(backend):
    import threading

    with pytest.raises(QwenEdgeError, match="is not loaded"):
        next(backend.stream([], ConversationSettings("m"), threading.Event()))


def test_mlx_thread_runs_jobs_in_order():
    runner = MLXThread()
    try:
        import mlx.core as mx

        results = [runner.submit(lambda i=i: (mx.array([i]) * 2).item()) for i in range(3)]
        assert [future.result(timeout=30) for future in results] == [0, 2, 4]
        failing = runner.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=30)
    finally:
        runner.close()


def test_describe_quantization():
    class Quantization:
        bits, group_size = 4, 64

    class Quantized:
        quantization = Quantization()

    class Plain:
        quantization = None
        torch_dtype = "bfloat16"

    assert describe_quantization(Quantized()) == "4-bit (group 64)"
    assert describe_quantization(Plain()) == "bf16"
    assert describe_quantization(Plain(), "bfloat16") == "bf16"
    assert describe_quantization(Plain(), "float32") == "bf16, computed in f32"
    assert describe_quantization(Quantized(), "float32") == "4-bit (group 64), computed in f32"


def test_backend_messages_skip_empty_replies():
    stored = [
        Stored(1, 1, USER, "q1", COMPLETE, 0.0),
        Stored(2, 1, ASSISTANT, "", ERROR, 0.0),
        Stored(3, 1, USER, "q2", COMPLETE, 0.0),
        Stored(4, 1, ASSISTANT, "partial", "stopped", 0.0),
    ]
    settings = ConversationSettings("m", system_prompt="Be terse.")
    assert backend_messages(settings, stored) == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "q1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "partial"},
    ]
    assert backend_messages(ConversationSettings("m"), stored[:1]) == [
        {"role": "user", "content": "q1"}
    ]


def test_title_from_first_line_shortened():
    assert title_from("\n  Hello world  \nsecond line") == "Hello world"
    long = "长" * 100
    assert title_from(long) == "长" * 47 + "…"
    assert title_from("   ") == "New conversation"


def test_last_block_start_splits_after_complete_blocks():
    source = "# Title\n\npara one\n\n```python\nx = 1\n```\n\n- item\n- item two"
    start = last_block_start(source)
    assert source[start:] == "- item\n- item two"
    assert last_block_start("only one paragraph\nstill it") == 0
    fence = "```\nopen fence\n\nwith blank line"
    assert last_block_start(fence) == 0


def test_compute_dtype_ignores_narrow_embedding(tiny_checkpoint):
    import mlx.core as mx

    from qwen_edge.config import ModelConfig
    from qwen_edge.loader import load_model
    from qwen_edge.tui.backend import compute_dtype

    directory = tiny_checkpoint()
    model = load_model(directory, ModelConfig.from_file(directory), dtype="float32")
    model.model.embed_tokens.weight = model.model.embed_tokens.weight.astype(mx.bfloat16)

    assert compute_dtype(model) == "float32"
