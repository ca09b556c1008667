"""The qwen-edge command: help, version, generate, and errors without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qwen_edge import __version__
from qwen_edge.cli import main


def qwen_edge(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qwen_edge.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=600,
    )


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])

    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("generate", "convert", "models", "demo-model"):
        assert command in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])

    assert capsys.readouterr().out.strip() == f"qwen-edge {__version__}"


def test_generate_streams_reply_and_stats(demo_model_dir):
    result = qwen_edge(
        "generate", "-m", str(demo_model_dir), "-p", "请只回答：好", "--max-tokens", "6"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "\ufffd" not in result.stdout
    assert "tok/s" in result.stderr
    assert "peak memory" in result.stderr
    assert "tok/s" not in result.stdout


def test_generate_raw_uses_store_name(demo_model_dir):
    env = {**os.environ, "QWEN_EDGE_MODEL": demo_model_dir.name}
    result = qwen_edge("generate", "--raw", "-p", "def add(a, b):", "--max-tokens", "4", env=env)

    assert result.returncode == 0, result.stderr
    assert "finish: length" in result.stderr


def test_missing_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QWEN_EDGE_HOME", str(tmp_path))

    code = main(["generate", "-m", "not-a-model", "-p", "hi"])

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model 'not-a-model' not found")
    assert "Traceback" not in err


def test_default_model_not_prepared_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QWEN_EDGE_HOME", str(tmp_path))
    monkeypatch.delenv("QWEN_EDGE_MODEL", raising=False)

    assert main(["generate", "-p", "hi"]) == 1
    assert "qwen-edge demo-model" in capsys.readouterr().err


def test_bad_sampling_option_is_a_clear_error(demo_model_dir, capsys):
    code = main(["generate", "-m", str(demo_model_dir), "-p", "hi", "--temp", "-1"])

    assert code == 1
    assert "temperature must be >= 0, got -1.0" in capsys.readouterr().err


def test_models_lists_store(tmp_path, monkeypatch, capsys, tiny_checkpoint):
    monkeypatch.setenv("QWEN_EDGE_HOME", str(tmp_path))
    assert main(["models"]) == 0
    assert "no models" in capsys.readouterr().err

    tiny = tiny_checkpoint()
    (tmp_path / "models").mkdir()
    tiny.rename(tmp_path / "models" / "tiny-test")
    assert main(["models"]) == 0
    assert "tiny-test" in capsys.readouterr().out


def test_prompt_cache_is_reused_across_runs(demo_model_dir, tmp_path):
    cache_file = tmp_path / "session.safetensors"
    args = ["generate", "-m", str(demo_model_dir), "--max-tokens", "3"]
    args += ["--prompt-cache", str(cache_file)]

    first = qwen_edge(*args, "-p", "Name a prime number.")
    second = qwen_edge(*args, "-p", "Name a prime number larger than 10.")

    assert first.returncode == 0, first.stderr
    assert cache_file.is_file()
    assert second.returncode == 0, second.stderr
    reused = [line for line in second.stderr.splitlines() if line.startswith("prompt cache")]
    assert reused, second.stderr
    count, total = (int(w) for w in reused[0].split() if w.isdigit())
    assert 20 < count < total


def test_kv_options_generate(demo_model_dir):
    result = qwen_edge(
        "generate", "-m", str(demo_model_dir), "-p", "hi", "--max-tokens", "3",
        "--kv-bits", "8", "--raw",
    )  # fmt: skip
    rotating = qwen_edge(
        "generate", "-m", str(demo_model_dir), "-p", "hi", "--max-tokens", "3",
        "--max-kv-size", "64",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert rotating.returncode == 0, rotating.stderr


def test_bench_json(demo_model_dir):
    import json

    result = qwen_edge(
        "bench", "-m", str(demo_model_dir), "-p", "8", "-g", "3", "-n", "1", "--json"
    )

    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["prompt_tokens"] == 8
    assert record["generation_tokens"] == 3
    assert record["generation_tps"] > 0
    assert record["weight_layout"] == "float"
    assert record["bytes_per_token"] > 900_000_000  # bf16 weights of the 0.5B model
