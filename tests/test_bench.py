"""The benchmarks: bytes read per token, and bench/run.py's engine workers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlx.utils import tree_flatten

from qwen_edge.bench import weight_bytes
from qwen_edge.config import ModelConfig
from qwen_edge.loader import load_model

BENCH_RUN = Path(__file__).parent.parent / "bench" / "run.py"


@pytest.mark.parametrize("tied", [False, True])
def test_weight_bytes_counts_table_once(tiny_checkpoint, tied):
    directory = tiny_checkpoint(tie_word_embeddings=tied)
    model = load_model(directory, ModelConfig.from_file(directory), dtype="float32")
    config = model.config
    table = config.vocab_size * config.hidden_size * 4
    one_layer = sum(v.nbytes for _, v in tree_flatten(model.model.layers[0].parameters()))
    final_norm = config.hidden_size * 4

    # A tied table is read whole as the head. An untied one costs a row, and the head a table.
    tables = table if tied else config.hidden_size * 4 + table
    assert weight_bytes(model) == config.n_layers * one_layer + final_norm + tables


def test_bench_run_two_engines(tmp_path, demo_model_dir):
    result = subprocess.run(
        [sys.executable, str(BENCH_RUN), "-m", str(demo_model_dir), "-p", "8", "-g", "3"]
        + ["-n", "1", "--engines", "qwen-edge,qwen-edge-bf16", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stderr
    assert "qwen-edge-bf16" in result.stdout
    record = json.loads(next(tmp_path.glob("*.json")).read_text(encoding="utf-8"))
    ours, bf16 = record["engines"]["qwen-edge"], record["engines"]["qwen-edge-bf16"]
    assert ours["generation_tps"] > 0
    # Each engine runs in its own process, so the bf16 one has no float32 copy of the weights.
    assert 0 < bf16["peak_memory_gb"] < ours["peak_memory_gb"]
    assert "bfloat16" in bf16["note"]
    assert set(record["greedy_tokens_match_qwen_edge"]) == {"qwen-edge", "qwen-edge-bf16"}
