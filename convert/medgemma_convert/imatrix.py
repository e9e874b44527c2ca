"""Importance matrices: how much each input column of each weight matrix matters, for the quantizer.

As llama.cpp's `llama-imatrix` defines it: for every matrix multiplication with a weight, the sum
over tokens of the squared input activation of each input column (`NAME.in_sum2`), and the number
of tokens summed (`NAME.counts`). `llama_model_quantize` weighs each column's rounding error by
`in_sum2 / counts`, so the columns a medical text actually drives are kept most precisely.

It is computed with llama.cpp itself, on the merged export, through the scheduler's eval callback
(`cb_eval`) exactly as `llama-imatrix` does: the same graph, the same activations and the same
tensor names, so the result is what `llama-imatrix -m merged.gguf -f text` would write (plus the
output matrix, which llama-imatrix leaves out when it is tied to the embedding). That is cheaper
than transformers hooks too: no torch, no second float32 copy of the model, and llama.cpp's
forward pass is faster on the CPU; the product with the output matrix (most of a 270M's work) is
skipped, as only its input is needed. Files are read and written in llama.cpp's GGUF
imatrix format (and its older .dat format is read), so they go both ways with `llama-quantize`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medgemma_models.errors import ConversionError
from medgemma_models.llama_log import LlamaLog

from .progress import Progress, no_progress

if TYPE_CHECKING:  # llama.cpp is loaded only when an importance matrix is computed
    import llama_cpp

# llama-imatrix's defaults: 512-token chunks, each starting with BOS; batches of fewer than 16
# tokens are left out (llama.cpp's rule, kept so the two tools agree).
CHUNK_TOKENS = 512
MIN_BATCH_TOKENS = 16
# Tokens evaluated per llama_decode. Every position asks for logits, so that no layer drops rows
# (llama.cpp keeps only the positions with outputs in the last layer); their buffer is this many
# rows x vocabulary floats (128 MiB for Gemma), whose values are never computed: the graph stops
# before the output matrix.
BATCH_TOKENS = 128

_SUMS, _COUNTS = ".in_sum2", ".counts"
# The output matrix (Gemma's is the tied embedding) multiplies the final norm's output, which
# llama.cpp's graph names "result_norm".
OUTPUT = "output.weight"
_FINAL_NORM = b"result_norm"


@dataclass
class ImatrixEntry:
    sums: np.ndarray  # (matrices, columns) float64: sum over tokens of x**2 per input column
    counts: np.ndarray  # (matrices,) float64: tokens summed


@dataclass
class Imatrix:
    entries: dict[str, ImatrixEntry] = field(default_factory=dict)
    datasets: tuple[str, ...] = ()
    chunk_count: int = 0
    chunk_size: int = CHUNK_TOKENS

    def importance(self) -> dict[str, np.ndarray]:
        """Per weight: `in_sum2 / counts` flattened, 1 where no token was seen (as llama-quantize loads it)."""
        out = {}
        for name, entry in self.entries.items():
            counts = entry.counts[:, None]
            values = np.divide(entry.sums, counts, out=np.ones_like(entry.sums), where=counts > 0)
            out[name] = np.ascontiguousarray(values.reshape(-1), dtype=np.float32)
        return out

    @property
    def tokens(self) -> int:
        return int(max((e.counts.max() for e in self.entries.values()), default=0))


def default_calibration_text() -> str:
    """The clinical prose shipped for `--imatrix auto` (distinct from the verification text)."""
    return files("medgemma_convert").joinpath("data", "calibration_medical.txt").read_text(encoding="utf-8")


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# llama.cpp's file formats


def read_imatrix(path: Path) -> Imatrix:
    """An imatrix file written by `llama-imatrix` (GGUF, or the older .dat layout) or by us."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ConversionError(f"cannot read the imatrix {path}: {exc.strerror or exc}") from None
    try:
        result = _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)
    except (ValueError, struct.error, IndexError, KeyError) as exc:
        raise ConversionError(f"{path} is not an importance matrix file ({exc})") from None
    if not result.entries:
        raise ConversionError(f"{path} holds no importance matrix entries")
    return result


def _read_gguf(path: Path) -> Imatrix:
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {f.name: f for f in reader.fields.values()}
    if "general.type" in fields and fields["general.type"].contents() != "imatrix":
        raise ValueError(f"its general.type is {fields['general.type'].contents()!r}, not 'imatrix'")
    tensors = {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}
    entries = {}
    for name in tensors:
        if name.endswith(_SUMS):
            base = name[: -len(_SUMS)]
            counts = tensors[base + _COUNTS].reshape(-1)
            entries[base] = ImatrixEntry(tensors[name].reshape(len(counts), -1), counts)

    def value(key: str, default: object) -> object:
        return fields[key].contents() if key in fields else default

    datasets = value(gguf.Keys.IMatrix.DATASETS, [])
    return Imatrix(entries, tuple(datasets),  # type: ignore[arg-type]
                   int(value(gguf.Keys.IMatrix.CHUNK_COUNT, 0)), int(value(gguf.Keys.IMatrix.CHUNK_SIZE, 0)))  # type: ignore[call-overload]


def _read_legacy(path: Path) -> Imatrix:
    # n_entries, then per entry: name length, name, ncall, nval, nval floats holding
    # (sum / tokens) * ncall; optionally the chunk count and the dataset name at the end.
    data = path.read_bytes()
    (n_entries,), at = struct.unpack_from("<i", data), 4
    if n_entries < 1:
        raise ValueError("no entries")
    entries = {}
    for _ in range(n_entries):
        (length,) = struct.unpack_from("<i", data, at)
        name = data[at + 4 : at + 4 + length].decode("utf-8")
        ncall, nval = struct.unpack_from("<ii", data, at + 4 + length)
        at += 12 + length
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=at).astype(np.float64)
        at += 4 * nval
        # llama-quantize divides by ncall: keep that as the count so importance() agrees.
        entries[name] = ImatrixEntry(values.reshape(1, -1), np.array([float(ncall)]))
    chunks, datasets = 0, ()
    if at + 4 <= len(data):
        (chunks,) = struct.unpack_from("<i", data, at)
        if at + 8 <= len(data):
            (length,) = struct.unpack_from("<i", data, at + 4)
            datasets = (data[at + 8 : at + 8 + length].decode("utf-8", "replace"),) if length > 0 else ()
    return Imatrix(entries, datasets, chunks, 0)


def write_imatrix(imatrix: Imatrix, path: Path) -> None:
    """Write in llama.cpp's GGUF imatrix layout (what `llama-imatrix` writes and `llama-quantize` reads)."""
    import gguf

    writer = gguf.GGUFWriter(path, arch="imatrix")
    # llama-imatrix writes no general.architecture: an imatrix belongs to no model architecture.
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_type(gguf.GGUFType.IMATRIX)
    writer.add_array(gguf.Keys.IMatrix.DATASETS, list(imatrix.datasets))
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, imatrix.chunk_count)
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, imatrix.chunk_size)
    for name in sorted(imatrix.entries):  # llama-imatrix sorts too: the same input, the same bytes
        entry = imatrix.entries[name]
        writer.add_tensor(name + _SUMS, np.ascontiguousarray(entry.sums, dtype=np.float32))
        writer.add_tensor(name + _COUNTS, np.ascontiguousarray(entry.counts.reshape(-1, 1), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------------------------------------
# computing it with llama.cpp


class _GgmlTensor(ctypes.Structure):
    # struct ggml_tensor from ggml.h. The layout is checked at run time against ggml_get_name().
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


_GGML_TYPE_F32 = 0


def _ggml() -> ctypes.CDLL:
    from medgemma_models.llama_cpp_compat import load_ggml_library

    libggml = load_ggml_library("ggml")
    libggml.ggml_get_name.restype = ctypes.c_void_p
    libggml.ggml_get_name.argtypes = [ctypes.c_void_p]
    libggml.ggml_op_desc.restype = ctypes.c_char_p
    libggml.ggml_op_desc.argtypes = [ctypes.c_void_p]
    libggml.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    libggml.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    return libggml


class _Collector:
    """The eval callback: sums x**2 over the input rows of every weight's MUL_MAT, as llama-imatrix does."""

    def __init__(self) -> None:
        self.ggml = _ggml()
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.checked = False
        self.error: Exception | None = None
        self.callback = _eval_callback_type()(self._on_eval)  # kept alive while llama.cpp holds it

    def _weight_name(self, t: _GgmlTensor) -> str | None:
        if self.ggml.ggml_op_desc(ctypes.addressof(t)) != b"MUL_MAT" or not t.src[0] or not t.src[1]:
            return None
        name = _GgmlTensor.from_address(t.src[0]).name.decode("utf-8", "replace")
        if "#" in name:  # llama.cpp's backend copies are named "BACKEND#name#n"
            name = name.split("#")[1]
        return name if name.startswith("blk.") else None

    def _on_eval(self, pointer: int, ask: bool, _user_data: int) -> bool:
        # An exception cannot cross back into llama.cpp: it is kept, and returning False stops the graph.
        try:
            return self._collect(pointer, ask)
        except Exception as exc:  # noqa: BLE001  (raised after llama_decode returns)
            self.error = exc
            return False

    def _collect(self, pointer: int, ask: bool) -> bool:
        t = _GgmlTensor.from_address(pointer)
        if not self.checked:
            if self.ggml.ggml_get_name(pointer) != pointer + _GgmlTensor.name.offset:
                raise ConversionError("this llama.cpp build's ggml_tensor layout is not the one the imatrix code reads")
            self.checked = True
        if t.name == _FINAL_NORM:
            # The output matrix's input. Its product with the 262,144-row output matrix is 60 % of
            # the whole forward pass and is not needed here: returning False once these rows are
            # recorded stops the graph right before it.
            if ask:
                return True
            self._add(OUTPUT, t)
            return False
        name = self._weight_name(t)
        if name is None:
            return not ask  # not asked for; and an answer of False while computing would stop the graph
        src1 = _GgmlTensor.from_address(t.src[1])
        if ask:
            return src1.type == _GGML_TYPE_F32 and src1.ne[1] >= MIN_BATCH_TOKENS
        self._add(name, src1)
        return True

    def _add(self, name: str, x_tensor: _GgmlTensor) -> None:
        """Add the squares of the rows of `x_tensor` (float32, one row per token) to `name`'s sums."""
        if x_tensor.type != _GGML_TYPE_F32:
            raise ConversionError(f"the input of {name} is not float32")
        if not self.ggml.ggml_backend_buffer_is_host(x_tensor.buffer):
            raise ConversionError("the importance matrix is computed on the CPU only")
        ne, nb = list(x_tensor.ne), list(x_tensor.nb)
        span = sum((n - 1) * s for n, s in zip(ne, nb)) + 4
        raw = (ctypes.c_char * span).from_address(x_tensor.data)
        x = np.ndarray(shape=ne[::-1], dtype=np.float32, buffer=raw, strides=nb[::-1]).reshape(-1, ne[0])
        squares = np.einsum("ij,ij->j", x, x, dtype=np.float64)
        if name in self.sums:
            self.sums[name] += squares
        else:
            self.sums[name] = squares
        self.counts[name] = self.counts.get(name, 0) + x.shape[0]


def _eval_callback_type() -> type:
    import llama_cpp

    return llama_cpp.ggml_backend_sched_eval_callback


def compute_imatrix(model: Path, texts: Sequence[tuple[str, str]], progress: Progress = no_progress,
                    chunk_tokens: int = CHUNK_TOKENS, threads: int | None = None) -> Imatrix:
    """The imatrix of `model` (an unquantized GGUF) over `texts`: (dataset label, text) pairs.

    Each text is cut into chunks of `chunk_tokens` tokens that each start with BOS, as
    llama-imatrix cuts its input; every position's logits are computed so that the output matrix
    sees every token.
    """
    with LlamaLog().installed():  # kept off the terminal
        return _compute(model, texts, progress, chunk_tokens, threads or default_threads())


def _compute(model: Path, texts: Sequence[tuple[str, str]], progress: Progress, chunk_tokens: int,
             threads: int) -> Imatrix:
    import llama_cpp

    collector = _Collector()
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = 0
    loaded = llama_cpp.llama_model_load_from_file(str(model).encode(), model_params)
    if not loaded:
        raise ConversionError(f"llama.cpp could not load {model} to compute the importance matrix")
    try:
        vocab = llama_cpp.llama_model_get_vocab(loaded)
        bos = llama_cpp.llama_vocab_bos(vocab)
        chunks = [c for _, text in texts for c in imatrix_chunks(_tokenize(vocab, text), bos, chunk_tokens)]
        if not chunks:
            raise ConversionError("the calibration text is too short for an importance matrix")
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = chunk_tokens
        ctx_params.n_batch = ctx_params.n_ubatch = BATCH_TOKENS
        ctx_params.n_threads = ctx_params.n_threads_batch = threads
        ctx_params.cb_eval = collector.callback
        ctx_params.cb_eval_user_data = None
        ctx = llama_cpp.llama_init_from_model(loaded, ctx_params)
        if not ctx:
            raise ConversionError(f"llama.cpp could not make a context for {model}")
        try:
            progress("imatrix", 0, len(chunks))
            batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)
            try:
                for done, chunk in enumerate(chunks, 1):
                    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                    for start in range(0, len(chunk), BATCH_TOKENS):
                        status = _decode(ctx, batch, chunk[start : start + BATCH_TOKENS], start)
                        if collector.error is not None:
                            raise collector.error
                        if status != 0:
                            raise ConversionError("llama.cpp failed while computing the importance matrix")
                    progress("imatrix", done, len(chunks))
            finally:
                llama_cpp.llama_batch_free(batch)
        finally:
            llama_cpp.llama_free(ctx)
    finally:
        llama_cpp.llama_model_free(loaded)
    entries = {name: ImatrixEntry(sums.reshape(1, -1), np.array([float(collector.counts[name])]))
               for name, sums in collector.sums.items()}
    return Imatrix(entries, tuple(label for label, _ in texts), len(chunks), chunk_tokens)


def default_threads() -> int:
    """Half the cores, as the app's engine: the callback splits each batch's graph at every weight
    (about 130 pieces for Gemma-3-270M), and each piece ends in a barrier of all threads; with a
    thread per core, one thread held up by another process stalls all of them at every piece
    (measured on 2 busy cores: 200 s with 2 threads, 7 s with 1, on the tiny test model)."""
    return max(1, (os.cpu_count() or 2) // 2)


def _tokenize(vocab: llama_cpp.llama_vocab_p, text: str) -> list[int]:
    import llama_cpp

    data = text.encode("utf-8")
    room = len(data) + 16
    tokens = (llama_cpp.llama_token * room)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), tokens, room, False, False)
    if n < 0:
        raise ConversionError("the calibration text could not be tokenized")
    return list(tokens[:n])


def imatrix_chunks(ids: list[int], bos: int, size: int) -> list[list[int]]:
    # As llama-imatrix, the first token of each chunk is replaced by BOS; unlike it, a last short
    # chunk is kept (a user's short text would otherwise count for nothing).
    return [[bos, *ids[i + 1 : i + size]] for i in range(0, len(ids), size) if len(ids) - i >= MIN_BATCH_TOKENS]


def _decode(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch, tokens: list[int], first_pos: int) -> int:
    import llama_cpp

    batch.n_tokens = len(tokens)
    for i, token in enumerate(tokens):
        batch.token[i] = token
        batch.pos[i] = first_pos + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = True
    return int(llama_cpp.llama_decode(ctx, batch))


def calibration_texts(extra: Path | None) -> list[tuple[str, str]]:
    """The shipped calibration text, plus the user's own if given: (label, text) pairs."""
    texts = [("medgemma:calibration_medical.txt", default_calibration_text())]
    if extra is not None:
        texts.append((extra.name, extra.read_text(encoding="utf-8")))
    return texts
