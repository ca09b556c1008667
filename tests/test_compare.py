"""The quality report: its statistics against a direct computation, the shipped text, and
comparisons of tiny models through the same loader the command uses."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from conftest import write_tiny_checkpoint
from qwen_edge.convert.compare import compare_logits, default_text, run_compare
from qwen_edge.convert.mlx_export import export_mlx
from qwen_edge.errors import QwenEdgeError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_statistics_match_direct_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 3, size=(70, 40)).astype(np.float32)  # more rows than one step of 64
    b = a + rng.normal(0, 1, size=a.shape).astype(np.float32)
    targets = rng.integers(0, 40, size=69)

    stats = compare_logits(mx.array(a), mx.array(b), targets=targets.tolist())

    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    log_a, log_b = log_softmax(a64), log_softmax(b64)
    kl = (np.exp(log_a) * (log_a - log_b)).sum(axis=-1)
    rows = np.arange(69)
    assert stats.positions == 70
    assert stats.nmse == pytest.approx(((b64 - a64) ** 2).mean() / a64.var(), rel=1e-4)
    assert stats.top1_agreement == pytest.approx((a.argmax(-1) == b.argmax(-1)).mean())
    assert stats.mean_kl == pytest.approx(kl.mean(), rel=1e-4)
    assert stats.max_kl == pytest.approx(kl.max(), rel=1e-4)
    assert stats.perplexity_a == pytest.approx(np.exp(-log_a[rows, targets].mean()), rel=1e-4)
    assert stats.perplexity_b == pytest.approx(np.exp(-log_b[rows, targets].mean()), rel=1e-4)


def test_identical_logits_agree_fully():
    a = mx.random.normal((10, 30), key=mx.random.key(1))
    stats = compare_logits(a, a)
    assert stats.nmse == 0.0
    assert stats.top1_agreement == 1.0
    assert abs(stats.mean_kl) < 1e-6
    assert math.isnan(stats.perplexity_a)


def test_padding_rows_are_left_out():
    a = mx.random.normal((8, 20), key=mx.random.key(2))
    # Columns from 16 up stand for padding rows of the embedding: B differs only there.
    b = mx.concatenate([a[:, :16], a[:, 16:] + 50.0], axis=1)
    stats = compare_logits(a, b, vocab_limit=16)
    assert stats.nmse == 0.0
    assert stats.top1_agreement == 1.0


def test_mismatched_vocabularies_are_rejected():
    with pytest.raises(QwenEdgeError, match=r"shape \(4, 12\).*\(4, 10\)"):
        compare_logits(mx.zeros((4, 10)), mx.zeros((4, 12)))


def test_default_text_mixes_english_chinese_and_code(demo_tokenizer):
    text = default_text()
    assert 480 <= len(demo_tokenizer.encode(text)) <= 560
    assert len(re.findall(r"[\u4e00-\u9fff]", text)) > 100
    assert "def " in text
    assert "class " in text
    assert len(re.findall(r"\b(the|and|of)\b", text)) > 10


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_model_dir) -> Path:
    """A tiny model with the demo tokenizer and all of its vocabulary rows (the default text uses
    ids up to 151k)."""
    directory = write_tiny_checkpoint(
        tmp_path_factory.mktemp("compare") / "a",
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
        vocab_size=151936,
    )
    for name in TOKENIZER_FILES:
        shutil.copyfile(demo_model_dir / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, reference) -> Path:
    return export_mlx(str(reference), tmp_path_factory.mktemp("compare") / "q8", bits=8).path


def test_model_against_itself(reference, demo_tokenizer):
    report = run_compare(str(reference), str(reference))
    assert report.stats.positions == len(demo_tokenizer.encode(default_text()))
    assert report.nmse == 0.0
    assert report.top1_agreement == 1.0
    assert abs(report.mean_kl) < 1e-6
    assert report.stats.perplexity_a == report.stats.perplexity_b


def test_quantized_model_report(reference, quantized):
    report = run_compare(str(reference), str(quantized))
    assert 0 < report.nmse < 1e-2
    assert report.top1_agreement > 0.9
    assert 0 < report.mean_kl < 1e-2

    text = report.format()
    assert f"A (reference): directory {reference}" in text
    assert f"B: directory {quantized}" in text
    assert re.search(r"over \d+ tokens: logits NMSE \d\.\d+e-0\d, top-1 agreement", text)
    assert "mean KL divergence" in text


def test_text_file_option(tmp_path, reference, quantized):
    text_file = tmp_path / "text.txt"
    text_file.write_text("def add(a, b):\n    return a + b\n\n两数相加。", encoding="utf-8")
    report = run_compare(str(reference), str(quantized), text_file)
    assert 10 < report.stats.positions < 30


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "text file .* not found"), (b"   \n", "is empty"), (b"\xff\xfe\x00", "not UTF-8")],
)
def test_bad_text_file_is_rejected(tmp_path, reference, content, message):
    text_file = tmp_path / "text.txt"
    if content is not None:
        text_file.write_bytes(content)
    with pytest.raises(QwenEdgeError, match=message):
        run_compare(str(reference), str(reference), text_file)


def test_different_tokenizer_is_rejected(tmp_path, reference):
    other = tmp_path / "other"
    shutil.copytree(reference, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text("utf-8"))
    tokenizer["model"]["merges"] = []  # byte-level pieces only: the same text gets other ids
    (other / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")

    with pytest.raises(QwenEdgeError, match="tokenizes the text differently"):
        run_compare(str(reference), str(other))


def test_convert_report_compares_with_source(tmp_path, reference):
    result = export_mlx(str(reference), tmp_path / "q4", bits=4, report=True)
    assert result.report is not None
    assert result.report.b == f"directory {tmp_path / 'q4'}"
    assert result.report.top1_agreement > 0.5
    assert "top-1 agreement" in result.format()
