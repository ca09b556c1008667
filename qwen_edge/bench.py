"""Measure prompt and generation speed of the native decoder (`qwen-edge bench`).

Generation on a laptop is bound by memory bandwidth: every decode step reads all weights once,
plus the KV cache. The report therefore gives the bytes read per generated token and, on Apple
silicon, the fraction of the chip's bandwidth that the measured speed implies.
"""

from __future__ import annotations

import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass

import mlx.core as mx
from mlx.utils import tree_flatten

from qwen_edge import backend
from qwen_edge.generate import GenerationStats, stream_generate
from qwen_edge.model import Qwen2Model
from qwen_edge.tokenizer import Tokenizer

# Unified-memory bandwidth in GB/s from Apple's published specifications. Where a chip came
# with two GPU/memory configurations, the higher one is listed.
APPLE_BANDWIDTH_GBPS = {
    "Apple M1": 68.25,
    "Apple M1 Pro": 200.0,
    "Apple M1 Max": 400.0,
    "Apple M1 Ultra": 800.0,
    "Apple M2": 100.0,
    "Apple M2 Pro": 200.0,
    "Apple M2 Max": 400.0,
    "Apple M2 Ultra": 800.0,
    "Apple M3": 100.0,
    "Apple M3 Pro": 150.0,
    "Apple M3 Max": 400.0,
    "Apple M3 Ultra": 819.0,
    "Apple M4": 120.0,
    "Apple M4 Pro": 273.0,
    "Apple M4 Max": 546.0,
}


@dataclass(frozen=True)
class BenchResult:
    """Medians over the runs."""

    prompt_tokens: int
    generation_tokens: int
    runs: int
    prompt_tps: float
    generation_tps: float
    time_to_first_token: float  # seconds
    peak_memory_gb: float
    bytes_per_token: int
    weight_layout: str
    dtype: str
    blas: str  # the BLAS serving MLX's CPU matmuls
    compiled_step: bool  # decode steps ran as one compiled graph
    device: str
    chip: str | None
    bandwidth_gbps: float | None
    bandwidth_fraction: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def format(self) -> str:
        lines = [
            f"device: {self.device} ({self.chip or platform.machine()}), weights: "
            f"{self.weight_layout} {self.dtype}, BLAS: {self.blas}, compiled decode step: "
            f"{'on' if self.compiled_step else 'off'}",
            f"prompt:     {self.prompt_tokens} tokens, {self.prompt_tps:.1f} tok/s "
            f"(time to first token {self.time_to_first_token:.3f} s)",
            f"generation: {self.generation_tokens} tokens, {self.generation_tps:.2f} tok/s",
            f"peak memory: {self.peak_memory_gb:.2f} GB; read per token: "
            f"{self.bytes_per_token / 1e9:.3f} GB",
        ]
        if self.bandwidth_gbps:
            achieved = self.generation_tps * self.bytes_per_token / 1e9
            lines.append(
                f"bandwidth: {achieved:.1f} of {self.bandwidth_gbps:.0f} GB/s "
                f"({100 * (self.bandwidth_fraction or 0):.0f}% of the bandwidth-bound ceiling)"
            )
        lines.append(f"(median of {self.runs} runs)")
        return "\n".join(lines)


def apple_chip() -> str | None:
    """Return the Apple silicon chip name (for example "Apple M2 Pro"), or None elsewhere."""
    if platform.system() != "Darwin":
        return None
    try:
        return subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def weight_bytes(model: Qwen2Model) -> int:
    """Return the parameter bytes one decode step reads, apart from the KV cache.

    That is every parameter, except that an untied embedding table counts as the one row a
    lookup reads. A tied table is read whole, as the output head.
    """
    total = sum(value.nbytes for _, value in tree_flatten(model.parameters()))
    if model.config.tie_word_embeddings:
        return total
    embedding = model.model.embed_tokens
    table = sum(value.nbytes for _, value in tree_flatten(embedding.parameters()))
    return total - table + table // model.config.vocab_size


def kv_bytes_per_token(model: Qwen2Model, prompt_tokens: int, generation_tokens: int) -> int:
    """Bytes of cached keys and values read by an average decode step."""
    config = model.config
    mean_length = prompt_tokens + generation_tokens / 2
    itemsize = model.dtype.size
    return int(2 * config.n_layers * config.n_kv_heads * config.head_dim * itemsize * mean_length)


BENCH_TEXT = (
    "A key-value cache stores the keys and values of every past position, so each new token "
    "attends to them without recomputing the prefix. 键值缓存保存每个位置的键和值。\n"
    "def attention(q, k, v):\n    scores = q @ k.T / math.sqrt(q.shape[-1])\n"
    "    return softmax(scores) @ v\n"
)


def benchmark_prompt(tokenizer: Tokenizer, length: int) -> list[int]:
    """Return a prompt of exactly `length` tokens of ordinary text and code.

    Every engine gets the same prompt.
    Natural text, unlike random ids, gives clear argmax decisions, so engines on the same
    weights should agree on the greedy continuation."""
    unit = tokenizer.encode(BENCH_TEXT)
    return (unit * (length // len(unit) + 1))[:length]


def run_benchmark(
    model: Qwen2Model,
    tokenizer: Tokenizer,
    prompt_tokens: int = 512,
    generation_tokens: int = 128,
    runs: int = 3,
    compile_step: bool = True,
) -> BenchResult:
    """Time `runs` generations of exactly `generation_tokens` after a `prompt_tokens` prompt
    (stop tokens are ignored) and return the medians. One short warm-up run comes first.
    `compile_step` is passed to `stream_generate`."""
    prompt = benchmark_prompt(tokenizer, prompt_tokens)
    no_stop = Tokenizer(tokenizer.hf, eos_token_ids=())

    def one_run(max_tokens: int) -> GenerationStats:
        events = stream_generate(
            model, no_stop, prompt, max_tokens=max_tokens, compile_step=compile_step
        )
        *_, last = events
        return last.stats

    one_run(2)
    stats = [one_run(generation_tokens) for _ in range(runs)]

    bytes_per_token = weight_bytes(model) + kv_bytes_per_token(
        model, prompt_tokens, generation_tokens
    )
    generation_tps = statistics.median(s.generation_tps for s in stats)
    chip = apple_chip()
    bandwidth = APPLE_BANDWIDTH_GBPS.get(chip or "")
    fraction = None
    if bandwidth:
        fraction = generation_tps * bytes_per_token / 1e9 / bandwidth
    return BenchResult(
        prompt_tokens=prompt_tokens,
        generation_tokens=generation_tokens,
        runs=runs,
        prompt_tps=statistics.median(s.prompt_tps for s in stats),
        generation_tps=generation_tps,
        time_to_first_token=statistics.median(s.time_to_first_token for s in stats),
        peak_memory_gb=max(s.peak_memory_gb for s in stats),
        bytes_per_token=bytes_per_token,
        weight_layout=model.weight_layout,
        dtype=str(model.dtype).removeprefix("mlx.core."),
        blas=backend.blas_summary(),
        compiled_step=compile_step,
        device=str(mx.default_device()),
        chip=chip,
        bandwidth_gbps=bandwidth,
        bandwidth_fraction=fraction,
    )
