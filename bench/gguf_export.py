"""Benchmark GGUF export: time and peak memory per --type, and our q4_k_m against llama.cpp's.

    .venv/bin/python bench/gguf_export.py [--model DIR] [--types q8_0 q4_k_m ...]

Each export runs in a fresh Python process, so that its peak resident memory (ru_maxrss) is its
own. The second table quantizes one f16 GGUF file of the model to Q4_K_M twice: with our
exporter (which first imports the GGUF file into a temporary float32 checkpoint) and with
llama.cpp's llama_model_quantize (llama-cpp-python, 2 threads). It also counts the tensors
whose bytes are identical in the two outputs.

Peak memory counts resident pages, so it includes the pages of memory-mapped input files that
were read: llama.cpp maps its input GGUF file, our exporter reads with plain file reads.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qwen_edge.convert.gguf_export import GGUF_TYPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Hugging Face model directory (default: the demo model)")
    parser.add_argument("--types", nargs="+", default=list(GGUF_TYPES), help="GGUF types to export")
    parser.add_argument(
        "--worker", nargs=4, metavar=("KIND", "SRC", "OUT", "TYPE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        run_worker(*args.worker)
        return

    model = Path(args.model) if args.model else demo_model()
    with tempfile.TemporaryDirectory(prefix="gguf-bench-") as tmp:
        print(f"model: {model}\n")
        print("| type | time (s) | peak RSS (MiB) | size (MiB) | bits per weight |")
        print("|---|---:|---:|---:|---:|")
        for gguf_type in args.types:
            result = worker("export", model, Path(tmp) / f"{gguf_type}.gguf", gguf_type)
            print(
                f"| {gguf_type} | {result['seconds']:.1f} | {result['peak_mib']:.0f} | "
                f"{result['size_mib']:.0f} | {result['bits_per_weight']:.2f} |",
                flush=True,
            )
            (Path(tmp) / f"{gguf_type}.gguf").unlink()
        print()
        compare_with_llama_cpp(model, Path(tmp))


def compare_with_llama_cpp(model: Path, tmp: Path) -> None:
    f16 = tmp / "f16.gguf"
    worker("export", model, f16, "f16")
    ours = worker("export", f16, tmp / "ours-q4_k_m.gguf", "q4_k_m")
    theirs = worker("llama-quantize", f16, tmp / "llama-q4_k_m.gguf", "q4_k_m")
    identical, total = identical_tensors(tmp / "ours-q4_k_m.gguf", tmp / "llama-q4_k_m.gguf")

    print("Q4_K_M from the same f16 GGUF file:\n")
    print("| quantizer | time (s) | peak RSS (MiB) | size (MiB) |")
    print("|---|---:|---:|---:|")
    for name, result in (("qwen-edge (numpy)", ours), ("llama_model_quantize", theirs)):
        print(
            f"| {name} | {result['seconds']:.1f} | {result['peak_mib']:.0f} | "
            f"{result['size_mib']:.0f} |"
        )
    print(f"\nbyte-identical tensors: {identical} of {total}")


def identical_tensors(first: Path, second: Path) -> tuple[int, int]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from llama_helpers import read_gguf

    ours, theirs = read_gguf(first), read_gguf(second)
    identical = sum(
        name in theirs.tensors and (ours.raw(name) == theirs.raw(name)).all()
        for name in ours.tensors
    )
    return identical, len(ours.tensors)


def worker(kind: str, src: Path, out: Path, gguf_type: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", kind, str(src), str(out), gguf_type]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_worker(kind: str, src: str, out: str, gguf_type: str) -> None:
    started = time.perf_counter()
    if kind == "export":
        from qwen_edge.convert.gguf_export import convert_to_gguf

        summary = convert_to_gguf(src, Path(out), gguf_type=gguf_type, force=True)
        bits_per_weight = summary.bits_per_weight
    else:
        import ctypes

        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = int(GGUF_TYPES[gguf_type].file_type)
        params.nthread = 2
        status = llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(params))
        if status != 0:
            raise SystemExit(f"llama_model_quantize failed with status {status}")
        bits_per_weight = float("nan")
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "seconds": seconds,
        "peak_mib": peak_kib / 1024,
        "size_mib": Path(out).stat().st_size / 2**20,
        "bits_per_weight": bits_per_weight,
    }
    print(json.dumps(result))


def demo_model() -> Path:
    from qwen_edge import store

    path = store.find(store.DEMO_MODEL)
    if path is None:
        raise SystemExit("the demo model is not in the store; run `make demo-model` first")
    return path


if __name__ == "__main__":
    main()
