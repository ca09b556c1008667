"""llama.cpp (through llama-cpp-python) as the reference consumer of the GGUF files we write.

llama-cpp-python is a test dependency. When it is missing, the tests fail with a message that
says how to install it. They are never skipped, because a skipped consumer check proves nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from conftest import write_tiny_checkpoint
from gguf_fixtures import CHAT_TEMPLATE, tiny_vocab
from qwen_edge.convert.gguf_tokenizer import GGUFVocab, write_tokenizer_files

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
# Token ids of Qwen2.5's vocabulary.
ENDOFTEXT = 151643
IM_END = 151645
QWEN_VOCAB_ROWS = 151936


def llama_cpp():
    """Import llama_cpp, failing the test with an install hint when it is missing."""
    try:
        import llama_cpp as module
    except ImportError as error:
        pytest.fail(
            f"llama-cpp-python is not importable ({error}). It is a test dependency that "
            "builds llama.cpp from source: run `make install-dev` or "
            "`.venv/bin/pip install 'llama-cpp-python>=0.3.16'`."
        )
    return module


def load_llama(path: Path, *, n_ctx: int = 1024, logits_all: bool = False, **options):
    """Load the GGUF file at `path` in llama.cpp on the CPU, without its log output."""
    return llama_cpp().Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=2,
        logits_all=logits_all,
        verbose=False,
        **options,
    )


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """Logits [len(ids), vocab rows] of llama.cpp for the prompt `ids` (needs logits_all)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def is_end_of_generation(llm, token: int) -> bool:
    module = llama_cpp()
    return bool(module.llama_vocab_is_eog(module.llama_model_get_vocab(llm.model), token))


def last_logits(llm) -> np.ndarray:
    """Logits of the last evaluated token (works without logits_all)."""
    module = llama_cpp()
    pointer = module.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()


def greedy_tokens(llm, ids: list[int], max_tokens: int) -> list[int]:
    """Generate greedily after `ids`; the list ends with the end-of-generation token if one
    came within `max_tokens`."""
    llm.reset()
    llm.eval(ids)
    generated = []
    for _ in range(max_tokens):
        token = int(np.argmax(last_logits(llm)))
        generated.append(token)
        if is_end_of_generation(llm, token):
            break
        llm.eval([token])
    return generated


def model_quantize(src: Path, dst: Path, ftype: int) -> None:
    """Quantize the GGUF file `src` into `dst` with llama.cpp's llama_model_quantize."""
    module = llama_cpp()
    params = module.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    status = module.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert status == 0, f"llama_model_quantize({src}, ftype={ftype}) returned {status}"


def ggml_quantize(values: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    """Quantize float32 rows [rows, cols] with ggml's own ggml_quantize_chunk, without an
    importance matrix (the path llama_model_quantize takes)."""
    library = _ggml_base()
    values = np.ascontiguousarray(values, dtype=np.float32)
    rows, cols = values.shape
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    out = np.zeros((rows, cols // block_size * type_size), dtype=np.uint8)
    library.ggml_quantize_init(int(ggml_type))
    written = library.ggml_quantize_chunk(
        int(ggml_type), values.ctypes.data, out.ctypes.data, 0, rows, cols, None
    )
    assert written == out.nbytes
    return out


_GGML_BASE = None


def _ggml_base() -> ctypes.CDLL:
    global _GGML_BASE
    if _GGML_BASE is None:
        library_dir = Path(llama_cpp().__file__).parent / "lib"
        candidates = sorted(library_dir.glob("libggml-base.*"))
        if not candidates:
            pytest.fail(f"libggml-base not found in {library_dir}; reinstall llama-cpp-python")
        library = ctypes.CDLL(str(candidates[0]))
        library.ggml_quantize_init.argtypes = [ctypes.c_int]
        library.ggml_quantize_chunk.restype = ctypes.c_size_t
        library.ggml_quantize_chunk.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
        ]
        _GGML_BASE = library
    return _GGML_BASE


@dataclass(frozen=True)
class GGUFTensor:
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order: rows first
    offset: int  # absolute, in bytes
    n_bytes: int


@dataclass
class GGUFFile:
    """The metadata and tensor table of a GGUF file, read with a plain parser.

    gguf.GGUFReader took about 15 s for the 300k strings of a Qwen vocabulary on a loaded 2-core
    machine, and this parser reads them in under a second. Written apart from the exporter, it
    also checks the file layout.
    """

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]

    def raw(self, name: str) -> np.ndarray:
        """The bytes of tensor `name` as uint8 [rows, bytes per row]."""
        tensor = self.tensors[name]
        rows = int(np.prod(tensor.shape[:-1]))
        with self.path.open("rb") as file:
            file.seek(tensor.offset)
            data = np.fromfile(file, dtype=np.uint8, count=tensor.n_bytes)
        return data.reshape(rows, -1)

    def values(self, name: str) -> np.ndarray:
        """Tensor `name` dequantized to float32, in its numpy shape."""
        tensor = self.tensors[name]
        return dequantize(self.raw(name), tensor.ggml_type).reshape(tensor.shape)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_SCALARS.update({10: "<Q", 11: "<q", 12: "<d"})
_STRING, _ARRAY = 8, 9


def read_gguf(path: Path) -> GGUFFile:
    """Parse the header of the GGUF file at `path` (version 3, little-endian)."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        reader = _Cursor(data)
        assert bytes(data[:4]) == b"GGUF", f"{path} is not a GGUF file"
        reader.offset = 4
        assert reader.scalar("<I") == 3
        n_tensors, n_kv = reader.scalar("<Q"), reader.scalar("<Q")
        metadata = {}
        for _ in range(n_kv):
            key = reader.string()
            metadata[key] = reader.value(reader.scalar("<I"))
        infos = []
        for _ in range(n_tensors):
            name = reader.string()
            dims = [reader.scalar("<Q") for _ in range(reader.scalar("<I"))]
            ggml_type = GGMLQuantizationType(reader.scalar("<I"))
            infos.append((name, tuple(reversed(dims)), ggml_type, reader.scalar("<Q")))
        alignment = metadata.get("general.alignment", 32)
        data_start = -(-reader.offset // alignment) * alignment

    tensors = {}
    for name, shape, ggml_type, offset in infos:
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        n_bytes = int(np.prod(shape)) // block_size * type_size
        tensors[name] = GGUFTensor(ggml_type, shape, data_start + offset, n_bytes)
    return GGUFFile(path, metadata, tensors)


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.offset = 0

    def scalar(self, layout: str):
        (value,) = struct.unpack_from(layout, self.data, self.offset)
        self.offset += struct.calcsize(layout)
        return value

    def string(self) -> str:
        length = self.scalar("<Q")
        text = bytes(self.data[self.offset : self.offset + length]).decode("utf-8")
        self.offset += length
        return text

    def value(self, value_type: int):
        if value_type == _STRING:
            return self.string()
        if value_type != _ARRAY:
            return self.scalar(_SCALARS[value_type])
        item_type, count = self.scalar("<I"), self.scalar("<Q")
        if item_type in _SCALARS:
            dtype = np.dtype(_SCALARS[item_type])
            items = np.frombuffer(self.data, dtype, count, self.offset).tolist()
            self.offset += dtype.itemsize * count
            return items
        return [self.value(item_type) for _ in range(count)]


def tiny_model_with_tokenizer(directory: Path, demo_model_dir: Path, **config) -> Path:
    """Write a random Qwen2 checkpoint with the demo model's tokenizer, and so its 151936
    embedding rows: a GGUF file cannot be written without a tokenizer."""
    write_tiny_checkpoint(directory, vocab_size=QWEN_VOCAB_ROWS, **config)
    for name in TOKENIZER_FILES:
        shutil.copy(demo_model_dir / name, directory / name)
    return directory


def small_vocab_model(directory: Path, **config) -> Path:
    """Write a random Qwen2 checkpoint with a 400-token byte-level BPE tokenizer (Qwen's special
    tokens included), so that the embedding is small and exports take a fraction of a second."""
    tokens, token_types, merges = tiny_vocab()
    write_tiny_checkpoint(directory, vocab_size=len(tokens), **config)
    vocab = GGUFVocab(
        tokens=list(tokens),
        token_type=list(token_types),
        merges=list(merges),
        eos_token_id=tokens.index("<|im_end|>"),
        bos_token_id=tokens.index("<|endoftext|>"),
        padding_token_id=tokens.index("<|endoftext|>"),
        chat_template=CHAT_TEMPLATE,
    )
    write_tokenizer_files(vocab, directory)
    return directory
