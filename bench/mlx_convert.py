"""Benchmark MLX conversion: our converter against mlx_lm.convert, same source and settings.

    .venv/bin/python bench/mlx_convert.py [--model DIR] [--repeats N]

Settings compared: 4 bits and 8 bits (group size 64), and the mixed 4/6-bit recipe (ours
`--recipe mixed`, mlx-lm's `mixed_4_6`, which apply the same llama.cpp rule to an untied model
such as the demo model), all with bfloat16
for the tensors that are not quantized. Each conversion runs in a fresh Python process, so its
peak resident memory (VmHWM on Linux, ru_maxrss elsewhere) is its own. Runs alternate between
the two converters, so that a busy machine slows both alike. The table gives the median time
of the conversion call (imports excluded), the highest peak RSS, the RSS after imports, the
output size, and how many tensors of the two outputs are bit-identical.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "4-bit": {"bits": 4, "recipe": "uniform"},
    "8-bit": {"bits": 8, "recipe": "uniform"},
    "mixed 4/6": {"bits": 4, "recipe": "mixed"},
}
GROUP_SIZE = 64
DTYPE = "bfloat16"
CONVERTERS = ("qwen-edge", "mlx_lm.convert")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Hugging Face model directory (default: the demo model)")
    parser.add_argument("--repeats", type=int, default=3, help="conversions per converter")
    parser.add_argument(
        "--worker", nargs=5, metavar=("CONVERTER", "SRC", "OUT", "BITS", "RECIPE"), help="internal"
    )
    args = parser.parse_args()
    if args.worker:
        converter, src, out, bits, recipe = args.worker
        run_worker(converter, Path(src), Path(out), int(bits), recipe)
        return

    model = Path(args.model) if args.model else demo_model()
    print(f"model: {model}, group size {GROUP_SIZE}, {DTYPE}, {args.repeats} runs each\n")
    print(
        "| settings | converter | time (s) | peak RSS (MiB) | RSS after imports (MiB) | "
        "output (MiB) | identical tensors |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="mlx-convert-bench-") as tmp:
        for index, (name, setting) in enumerate(SETTINGS.items()):
            results: dict[str, list[dict]] = {converter: [] for converter in CONVERTERS}
            outputs = {}
            for run in range(args.repeats):
                for converter in CONVERTERS:
                    out = Path(tmp) / f"{index}-{converter}-{run}"
                    shutil.rmtree(outputs.get(converter, out), ignore_errors=True)
                    results[converter].append(worker(converter, model, out, setting))
                    outputs[converter] = out
            identical, total = identical_tensors(*outputs.values())
            for out in outputs.values():
                shutil.rmtree(out)
            for converter in CONVERTERS:
                runs = results[converter]
                print(
                    f"| {name} | {converter} | "
                    f"{statistics.median(r['seconds'] for r in runs):.1f} | "
                    f"{max(r['peak_mib'] for r in runs):.0f} | "
                    f"{statistics.median(r['import_mib'] for r in runs):.0f} | "
                    f"{runs[0]['size_mib']:.0f} | {identical}/{total} |",
                    flush=True,
                )


def demo_model() -> Path:
    from qwen_edge import store

    path = store.find(store.DEMO_MODEL)
    if path is None:
        sys.exit("the demo model is not in the store; run `make demo-model` or pass --model")
    return path


def worker(converter: str, src: Path, out: Path, setting: dict) -> dict:
    """Run one conversion in a fresh process and return its figures."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        converter,
        str(src),
        str(out),
        str(setting["bits"]),
        setting["recipe"],
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"{converter} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_worker(converter: str, src: Path, out: Path, bits: int, recipe: str) -> None:
    if converter == "qwen-edge":
        from qwen_edge.convert.mlx_export import convert_to_mlx

        import_mib = peak_mib()
        start = time.perf_counter()
        convert_to_mlx(str(src), out, bits=bits, group_size=GROUP_SIZE, dtype=DTYPE, recipe=recipe)
    else:
        from mlx_lm.convert import convert

        import_mib = peak_mib()
        start = time.perf_counter()
        convert(
            str(src),
            str(out),
            quantize=True,
            q_bits=bits,
            q_group_size=GROUP_SIZE,
            dtype=DTYPE,
            quant_predicate="mixed_4_6" if recipe == "mixed" else None,
        )
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    figures = {
        "seconds": seconds,
        "peak_mib": peak_mib(),
        "import_mib": import_mib,
        "size_mib": size / 2**20,
    }
    print(json.dumps(figures))


def peak_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux this is VmHWM from /proc/self/status: ru_maxrss would carry over the peak of the
    parent process, which Linux keeps across fork and exec.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # the value is in kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def identical_tensors(ours: Path, theirs: Path) -> tuple[int, int]:
    """Count the tensors with the same name, dtype and bytes in both outputs."""
    import mlx.core as mx

    def tensors(directory: Path) -> dict:
        found = {}
        for file in sorted(directory.glob("*.safetensors")):
            found.update(mx.load(str(file)))
        return found

    a, b = tensors(ours), tensors(theirs)
    same = sum(
        1
        for name, value in a.items()
        if name in b and value.dtype == b[name].dtype and mx.array_equal(value, b[name]).item()
    )
    return same, len(a.keys() | b.keys())


if __name__ == "__main__":
    main()
