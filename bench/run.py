"""Side-by-side speed of qwen-edge and its peers on one model, in one run (`make bench`).

Engines, all fed the same prompt token ids and generating the same number of tokens greedily:
  qwen-edge     our decoder (qwen_edge.load + stream_generate), in the dtype the loader picks
                for the backend (float32 on the CPU backend with OpenBLAS)
  qwen-edge-bf16  our decoder with the weights kept in their stored dtype (bf16 for the demo
                model), the same dtype mlx-lm computes in
  mlx-lm        mlx_lm.load + mlx_lm.generate.generate_step, same weights and MLX backend
  transformers  Qwen2ForCausalLM on torch (CPU), same weights and dtype
  llama.cpp     llama-cpp-python on a GGUF of the same weights (exported by qwen-edge in the
                same dtype, when the exporter is available)
Each engine runs in a process of its own, so its peak memory (the process's peak resident set,
model loading included) is its own. Runs alternate between engines (A B C D A B C D ...) so that
a machine that heats up or gets busy affects all of them alike. Medians go to a table, with
ratios to qwen-edge, and to bench/results/*.json. Where the weights are identical, the greedy
tokens should match ours, and the script reports any that do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass
class RunResult:
    prompt_tps: float
    generation_tps: float
    time_to_first_token: float
    peak_memory_gb: float  # peak resident set of the engine's process
    tokens: list[int]
    mlx_peak_gb: float | None = None  # MLX's own allocator peak, for the MLX engines


Runner = Callable[[list[int], int], RunResult]


def rss_peak_gb() -> float:
    """Return the peak resident memory of this process so far (Linux and macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if platform.system() == "Darwin" else peak * 1024 / 1e9


def timed_generation(steps: Callable[[], object], prompt_len: int, gen: int) -> RunResult:
    """Time an iterator of generated token ids: its first item ends the prefill."""
    start = time.perf_counter()
    tokens: list[int] = []
    first = 0.0
    for token in steps():
        tokens.append(int(token))
        if len(tokens) == 1:
            first = time.perf_counter()
        if len(tokens) == gen:
            break
    end = time.perf_counter()
    ttft = first - start
    return RunResult(
        prompt_tps=prompt_len / ttft if ttft else 0.0,
        generation_tps=(len(tokens) - 1) / (end - first) if end > first else 0.0,
        time_to_first_token=ttft,
        peak_memory_gb=0.0,
        tokens=tokens,
    )


def qwen_edge_runner(model_dir: Path, dtype: str | None = None) -> tuple[Runner, str]:
    import mlx.core as mx

    from qwen_edge import backend, load, stream_generate
    from qwen_edge.tokenizer import Tokenizer

    model, tokenizer = load(model_dir, dtype=dtype)
    no_stop = Tokenizer(tokenizer.hf, eos_token_ids=())

    def run(prompt: list[int], gen: int) -> RunResult:
        result = timed_generation(
            lambda: (e.token for e in stream_generate(model, no_stop, prompt, max_tokens=gen)),
            len(prompt),
            gen,
        )
        result.mlx_peak_gb = mx.get_peak_memory() / 1e9
        return result

    dtype = str(model.dtype).removeprefix("mlx.core.")
    blas = backend.blas_summary()
    return run, f"weights {model.weight_layout} {dtype}, {mx.default_device()}, {blas}"


def mlx_lm_runner(model_dir: Path) -> tuple[Runner, str]:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, _ = load(str(model_dir))

    def run(prompt: list[int], gen: int) -> RunResult:
        mx.reset_peak_memory()
        steps = generate_step(mx.array(prompt), model, max_tokens=gen)
        result = timed_generation(lambda: (token for token, _ in steps), len(prompt), gen)
        result.mlx_peak_gb = mx.get_peak_memory() / 1e9
        return result

    return run, f"mlx-lm, {mx.default_device()}"


def transformers_runner(model_dir: Path) -> tuple[Runner, str]:
    import torch
    from transformers import DynamicCache, Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(model_dir, dtype="auto").eval()

    def steps(prompt: list[int], gen: int):
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            logits = model(torch.tensor([prompt]), cache=cache, use_cache=True).logits
            for _ in range(gen):
                token = logits[0, -1].argmax()
                yield token.item()
                logits = model(token.view(1, 1), cache=cache, use_cache=True).logits

    def run(prompt: list[int], gen: int) -> RunResult:
        return timed_generation(lambda: steps(prompt, gen), len(prompt), gen)

    return run, f"torch {torch.__version__}, {model.dtype}, {torch.get_num_threads()} threads"


def export_gguf(model_dir: Path, work_dir: Path, gguf_type: str) -> Path:
    """Write the GGUF that llama.cpp runs, in this process, so that the export's memory is not
    counted as llama.cpp's."""
    from qwen_edge.convert.gguf_export import convert_to_gguf

    return convert_to_gguf(
        str(model_dir),
        work_dir / f"model-{gguf_type}.gguf",
        gguf_type=gguf_type,
        allow_requantize=False,
        force=True,
        progress=None,
    )


def llama_cpp_runner(gguf: Path, gguf_type: str) -> tuple[Runner, str]:
    from llama_cpp import Llama

    threads = os.cpu_count() or 1
    llm = Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, verbose=False)

    def run(prompt: list[int], gen: int) -> RunResult:
        llm.reset()
        steps = llm.generate(prompt, temp=0.0, top_k=1, reset=True)
        return timed_generation(lambda: steps, len(prompt), gen)

    return run, f"llama-cpp-python, {gguf_type} GGUF, {threads} threads"


ENGINES = ["qwen-edge", "qwen-edge-bf16", "mlx-lm", "transformers", "llama.cpp"]


def make_runner(name: str, model_dir: Path, gguf: Path, gguf_type: str) -> tuple[Runner, str]:
    """Build the runner of engine `name` (in a worker process)."""
    if name == "qwen-edge":
        return qwen_edge_runner(model_dir)
    if name == "qwen-edge-bf16":
        return qwen_edge_runner(model_dir, dtype="bfloat16")
    if name == "mlx-lm":
        return mlx_lm_runner(model_dir)
    if name == "transformers":
        return transformers_runner(model_dir)
    return llama_cpp_runner(gguf, gguf_type)


def worker(name: str, model_dir: Path, gguf: Path, gguf_type: str) -> int:
    """Serve runs of one engine: read {"prompt", "gen"} requests on stdin, write one result line
    for each.

    Libraries that print to stdout would corrupt the results, so this process's stdout goes to
    stderr and results go to a private copy of the original stdout.
    """
    output = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        run, note = make_runner(name, model_dir, gguf, gguf_type)
    except ImportError as error:
        output.write(json.dumps({"skip": str(error)}) + "\n")
        return 0
    output.write(json.dumps({"note": note}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        result = run(request["prompt"], request["gen"])
        result.peak_memory_gb = rss_peak_gb()
        output.write(json.dumps(asdict(result)) + "\n")
    return 0


class Engine:
    """One engine's worker process, seen from the parent."""

    def __init__(self, name: str, model_dir: Path, gguf: Path, gguf_type: str) -> None:
        self.name = name
        command = [sys.executable, __file__, "--worker", name, "-m", str(model_dir)]
        command += ["--gguf", str(gguf), "--gguf-type", gguf_type]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8"
        )
        hello = self._read()
        self.skip: str | None = hello.get("skip")
        self.note: str = hello.get("note", "")

    def run(self, prompt: list[int], gen: int) -> RunResult:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"prompt": prompt, "gen": gen}) + "\n")
        self.process.stdin.flush()
        return RunResult(**self._read())

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait()

    def _read(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"the {self.name} worker exited with status {code}; see above")
        return json.loads(line)


def median_row(results: list[RunResult]) -> dict[str, float]:
    row = {
        "prompt_tps": statistics.median(r.prompt_tps for r in results),
        "generation_tps": statistics.median(r.generation_tps for r in results),
        "time_to_first_token": statistics.median(r.time_to_first_token for r in results),
        "peak_memory_gb": max(r.peak_memory_gb for r in results),
    }
    if results[0].mlx_peak_gb is not None:
        row["mlx_peak_gb"] = max(r.mlx_peak_gb or 0.0 for r in results)
    return row


def print_table(rows: dict[str, dict[str, float]], notes: dict[str, str]) -> None:
    ours = rows["qwen-edge"]
    header = f"{'engine':<15} {'prompt tok/s':>13} {'gen tok/s':>10} {'TTFT s':>8} {'peak GB':>8}"
    print(header + f"  {'prompt x':>8} {'gen x':>6} {'mem x':>6}")
    for name, row in rows.items():
        prompt_ratio = row["prompt_tps"] / ours["prompt_tps"] if ours["prompt_tps"] else 0
        gen_ratio = row["generation_tps"] / ours["generation_tps"] if ours["generation_tps"] else 0
        memory_ratio = row["peak_memory_gb"] / ours["peak_memory_gb"]
        print(
            f"{name:<15} {row['prompt_tps']:>13.1f} {row['generation_tps']:>10.2f} "
            f"{row['time_to_first_token']:>8.3f} {row['peak_memory_gb']:>8.2f}  "
            f"{prompt_ratio:>8.2f} {gen_ratio:>6.2f} {memory_ratio:>6.2f}   {notes[name]}"
        )
    print(
        "ratios are engine / qwen-edge (speed above 1: the engine is faster; memory below 1: it "
        "needs less). peak GB: peak resident set of the engine's own process."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default=None, help="model directory or store name")
    parser.add_argument("-p", "--prompt-tokens", type=int, default=512)
    parser.add_argument("-g", "--gen-tokens", type=int, default=128)
    parser.add_argument("-n", "--runs", type=int, default=3)
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help="comma-separated subset of the engines"
    )
    parser.add_argument("--gguf-type", default="bf16", help="GGUF type for llama.cpp")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON record goes"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--gguf", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from qwen_edge import store
    from qwen_edge.loader import resolve_model_path

    model_dir = resolve_model_path(args.model or store.default_model())
    if args.worker:
        return worker(args.worker, model_dir, args.gguf, args.gguf_type)

    from qwen_edge.bench import benchmark_prompt
    from qwen_edge.tokenizer import Tokenizer

    prompt = benchmark_prompt(Tokenizer.from_pretrained(model_dir), args.prompt_tokens)
    wanted = [e.strip() for e in args.engines.split(",")]
    for name in wanted:
        if name not in ENGINES:
            parser.error(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")

    engines: dict[str, Engine] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="qwen-edge-bench-") as tmp:
        gguf = Path(tmp) / "none.gguf"
        if "llama.cpp" in wanted:
            gguf = export_gguf(model_dir, Path(tmp), args.gguf_type)
        try:
            for name in wanted:
                engine = Engine(name, model_dir, gguf, args.gguf_type)
                if engine.skip:
                    print(f"skipping {name}: {engine.skip}", file=sys.stderr)
                    engine.close()
                    continue
                engines[name], notes[name] = engine, engine.note

            results: dict[str, list[RunResult]] = {name: [] for name in engines}
            for engine in engines.values():  # warm-up
                engine.run(prompt[:16], 2)
            for i in range(args.runs):
                for name, engine in engines.items():
                    results[name].append(engine.run(prompt, args.gen_tokens))
                    print(f"run {i + 1}/{args.runs} {name}: done", file=sys.stderr)
        finally:
            for engine in engines.values():
                engine.close()

    rows = {name: median_row(r) for name, r in results.items()}
    print(
        f"model {model_dir.name}, prompt {args.prompt_tokens} tokens, {args.gen_tokens} generated, "
        f"median of {args.runs} runs, {platform.machine()} {platform.system()}"
    )
    print_table(rows, notes)

    reference = results["qwen-edge"][0].tokens if "qwen-edge" in results else None
    matches = {}
    for name, runs in results.items():
        same = reference is not None and runs[0].tokens == reference
        matches[name] = same
        if not same:
            where = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(runs[0].tokens, reference or [], strict=False))
                    if a != b
                ),
                None,
            )
            print(f"greedy tokens of {name} differ from qwen-edge's (first at step {where})")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {
        "model": model_dir.name,
        "prompt_tokens": args.prompt_tokens,
        "generation_tokens": args.gen_tokens,
        "runs": args.runs,
        "machine": f"{platform.machine()} {platform.system()} {platform.platform()}",
        "cpus": os.cpu_count(),
        "engines": {name: {**rows[name], "note": notes[name]} for name in rows},
        "greedy_tokens_match_qwen_edge": matches,
    }
    out = args.results_dir / f"{stamp}-{platform.node() or 'host'}.json"
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
