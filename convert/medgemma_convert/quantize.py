"""Quantizing an unquantized GGUF with llama.cpp itself (`llama_model_quantize`).

Several outputs are quantized side by side, each on its own thread: llama.cpp's quantizer keeps
about 1.5 of 2 cores busy (its reference kernels and file writes run on one thread), and a second
one fills the gaps. They start one after another, though: llama.cpp quantizes the embedding first
and keeps all of it in memory meanwhile (0.6 GB for the 1B), so each output starts once the one
before it has moved on to the transformer blocks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medgemma_models.errors import ConversionError
from medgemma_models.llama_log import LlamaLog
from medgemma_models.quants import BY_NAME, TENSOR_TYPES

from .quants import LLAMA_FTYPES

if TYPE_CHECKING:
    from .imatrix import Imatrix
    from .options import ConversionOptions

# llama.cpp widens each tensor to float32 before quantizing it; by default a whole tensor at once
# (the 262,144-row embedding: 0.7 GB for the 270M, 1.2 GB for the 1B). Slabs of this many bytes
# give byte-identical files at a fraction of the memory, and no slower.
SLAB_BYTES = 64 * 1024 * 1024

# What llama.cpp logs as it starts on each tensor: "[  12/ 340] blk.0.attn_q.weight - ...".
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\] (\S+)")


class QuantizerLog(LlamaLog):
    """llama.cpp's log while quantizing (`installed()`): kept off the terminal, read for progress and errors.

    llama.cpp logs on the thread that called it, so each line is credited to its own output.
    """

    def __init__(self) -> None:
        super().__init__(on_line=self._on_line)
        self.tensors: dict[int, tuple[int, int]] = {}  # thread -> (tensors started, total)
        self.in_blocks: set[int] = set()  # threads whose quantizer has reached the blk.* tensors

    def _on_line(self, _level: int, line: str) -> None:
        tensor = _TENSOR_LINE.match(line)
        if tensor:
            thread = threading.get_ident()
            self.tensors[thread] = (int(tensor[1]), int(tensor[2]))
            if tensor[3].startswith("blk."):
                self.in_blocks.add(thread)


@dataclass(frozen=True)
class QuantRecipe:
    """One quantized output: llama.cpp's file type, and the per-tensor types that override its choice."""

    ftype: str  # llama_cpp constant, e.g. "LLAMA_FTYPE_MOSTLY_Q4_K_M"
    output_type: str | None = None  # ggml type name of the output matrix ("q4_0")
    embedding_type: str | None = None  # of the token embedding (its lookups cost little per token)
    tensor_types: tuple[tuple[str, str], ...] = ()  # (regex on GGUF tensor names, ggml type name)

    @property
    def untied(self) -> bool:
        """A separate output matrix is needed: Gemma ties it to the embedding, and they differ."""
        return self.output_type is not None and self.embedding_type is not None and self.output_type != self.embedding_type


def recipes_for(quants: tuple[str, ...], output_type: str | None = None, embedding_type: str | None = None,
                tensor_types: tuple[tuple[str, str], ...] = ()) -> dict[str, QuantRecipe]:
    """The recipe of each quantized output: the table's, with the user's tensor types on top."""
    recipes = {}
    for quant in quants:
        row = BY_NAME[quant]
        if row.llama_ftype is None:
            continue
        recipes[quant] = QuantRecipe(
            ftype=row.llama_ftype,
            output_type=output_type or row.output_type,
            embedding_type=embedding_type or row.embedding_type,
            # llama.cpp takes the first pattern that matches: the user's come first.
            tensor_types=tuple(tensor_types) + row.tensor_types,
        )
    return recipes


def check_recipes(recipes: dict[str, QuantRecipe], tensors: list[tuple[str, tuple[int, ...]]]) -> None:
    """Refuse a tensor type whose block does not divide the rows of a tensor it would apply to.

    `tensors` are (GGUF name, numpy shape). llama.cpp quantizes a row in blocks of 32 or 256
    values; given a type that does not fit, it writes a file it then cannot load (or falls back
    to another type without saying so in the file's name), so this is checked before any work.
    """
    matrices = {name: shape for name, shape in tensors if len(shape) == 2 and not name.endswith("_norm.weight")}
    for quant, recipe in recipes.items():
        aimed: list[tuple[str, str, str]] = []  # (tensor, type, what asked for it)
        output = "output.weight" if "output.weight" in matrices or recipe.untied else "token_embd.weight"
        if recipe.output_type:
            aimed.append((output, recipe.output_type, "the output type"))
        if recipe.embedding_type:
            aimed.append(("token_embd.weight", recipe.embedding_type, "the embedding type"))
        names = [*matrices, *(["output.weight"] if recipe.untied and "output.weight" not in matrices else [])]
        for pattern, type_name in recipe.tensor_types:
            aimed += [(name, type_name, f"--tensor-type {pattern}={type_name}")
                      for name in names if re.search(pattern, name)]
        for name, type_name, source in aimed:
            columns = matrices.get(name, matrices.get("token_embd.weight", (0, 0)))[-1]
            if columns % _block_size(type_name):
                fitting = ", ".join(t for t in TENSOR_TYPES if columns % _block_size(t) == 0)
                raise ConversionError(
                    f"{quant}: {source} puts {name} in {type_name}, whose blocks of {_block_size(type_name)} values "
                    f"do not divide its rows of {columns} (llama.cpp would write a file it cannot load); "
                    f"types that fit: {fitting}"
                )


def check_quantization(options: ConversionOptions,
                       tensors: list[tuple[str, tuple[int, ...]]]) -> tuple[dict[str, QuantRecipe], Imatrix | None]:
    """Everything about the quantized outputs that can be refused before any work: types against the
    rows they would apply to, the imatrix file against the tensors it weighs, the files named.

    Returns each quantized output's recipe, and the imatrix file read (None without one).
    """
    from medgemma_models.files import check_writable

    from .imatrix import read_imatrix

    recipes = recipes_for(options.quants, options.output_type, options.embedding_type, options.tensor_types)
    check_recipes(recipes, tensors)
    if options.calibration_text is not None and not options.calibration_text.is_file():
        raise ConversionError(f"calibration text not found: {options.calibration_text}")
    if options.save_imatrix is not None:
        check_writable(options.save_imatrix, options.force)
    if options.imatrix not in (None, "auto"):
        columns = {name: shape[-1] for name, shape in tensors if len(shape) == 2}
        columns.setdefault("output.weight", columns.get("token_embd.weight", 0))
        path = Path(options.imatrix)
        if not path.is_file():
            raise ConversionError(f"imatrix file not found: {path}")
        matrix = read_imatrix(path)
        for name, entry in matrix.entries.items():
            if name in columns and entry.sums.shape[-1] != columns[name]:
                raise ConversionError(f"the imatrix {path.name} is for another model: it has {entry.sums.shape[-1]} "
                                      f"columns for {name}, which has {columns[name]}")
        return recipes, matrix
    return recipes, None


def _block_size(type_name: str) -> int:
    import gguf

    return int(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name.upper()]][0])


def ggml_type(name: str) -> int:
    """'q4_0' -> GGML_TYPE_Q4_0's value (gguf-py's table is ggml's enum)."""
    import gguf

    return int(gguf.GGMLQuantizationType[name.upper()])


def quantize(source: Path, target: Path, recipe: QuantRecipe | str, log: QuantizerLog | None = None,
             imatrix: dict[str, np.ndarray] | None = None) -> None:
    """Write `source` (f32/f16/bf16 GGUF) quantized by `recipe` (or a quant name, e.g. "q8_0") at `target`.

    `imatrix` maps GGUF weight names to per-column importance (`Imatrix.importance()`).
    """
    import llama_cpp

    if isinstance(recipe, str):
        recipe = QuantRecipe(LLAMA_FTYPES[recipe])
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, recipe.ftype)
    params.nthread = os.cpu_count() or 1
    params.max_buf_size = SLAB_BYTES
    if recipe.output_type is not None:
        params.output_tensor_type = ggml_type(recipe.output_type)
    if recipe.embedding_type is not None:
        params.token_embedding_type = ggml_type(recipe.embedding_type)
    # The arrays llama.cpp reads through these pointers must live until it returns.
    overrides = _overrides(recipe.tensor_types)
    if overrides is not None:
        params.tt_overrides = overrides
    importance = _imatrix_array(imatrix, tied=not recipe.untied) if imatrix else None
    if importance is not None:
        params.imatrix = importance[0]
    with contextlib.ExitStack() as stack:
        log = log or stack.enter_context(QuantizerLog().installed())
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0:
        # A failed write (a full disk) is the usual cause; llama.cpp says so in its log only.
        reason = log.last_error(threading.get_ident()) or "no reason given; check the free disk space"
        raise ConversionError(f"could not write {target}: llama.cpp's quantizer failed ({reason})")


def _overrides(tensor_types: tuple[tuple[str, str], ...]) -> ctypes.Array | None:
    import llama_cpp

    if not tensor_types:
        return None
    array = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
    for item, (pattern, type_name) in zip(array, tensor_types):
        item.pattern = pattern.encode()
        item.type = ggml_type(type_name)
    array[-1].pattern = None  # the end of the list
    return array


def _imatrix_array(importance: dict[str, np.ndarray], tied: bool) -> tuple[ctypes.Array, list[np.ndarray]]:
    """llama.cpp's `llama_model_imatrix_data` list (ending with a NULL name), and the arrays it points into."""
    import llama_cpp

    from .imatrix import OUTPUT

    entries = dict(importance)
    if tied and OUTPUT in entries:
        # Gemma's output matrix is the embedding: quantize it by the output's importance, which is
        # where its rounding shows in every logit (a lookup reads one row per token).
        entries.setdefault("token_embd.weight", entries.pop(OUTPUT))
    kept = [np.ascontiguousarray(v, dtype=np.float32) for v in entries.values()]
    array = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
    for item, name, values in zip(array, entries, kept):
        item.name = name.encode()
        item.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        item.size = values.size
    array[-1].name = None
    return array, kept


def untie(source: Path, target: Path) -> None:
    """Copy the GGUF `source` to `target` with a separate `output.weight`, a copy of `token_embd.weight`.

    llama.cpp quantizes a tied embedding to one type for both uses; a separate output matrix can
    take a faster type while the embedding keeps its own.
    """
    from .stamp import add_output_matrix

    add_output_matrix(source, target)


@dataclass
class _Job:
    quant: str
    target: Path
    recipe: QuantRecipe
    source: Path
    imatrix: dict[str, np.ndarray] | None = None
    thread: int = 0  # set once it runs
    result: Future[None] = field(default_factory=Future, repr=False)

    def start(self, log: QuantizerLog) -> None:
        # A daemon thread: llama.cpp cannot be stopped midway, and an interrupted conversion
        # (Ctrl-C, Cancel in the app) should not wait for it before exiting.
        threading.Thread(target=self._run, args=(log,), name=f"quantize {self.quant}", daemon=True).start()

    def _run(self, log: QuantizerLog) -> None:
        self.thread = threading.get_ident()
        try:
            quantize(self.source, self.target, self.recipe, log, self.imatrix)
        except BaseException as exc:  # noqa: BLE001  (raised on the calling thread)
            self.result.set_exception(exc)
        else:
            self.result.set_result(None)


def quantize_all(source: Path, targets: dict[str, Path], progress: Callable[[str, int, int], None],
                 finished: Callable[[str], None], recipes: dict[str, QuantRecipe] | None = None,
                 imatrix: dict[str, np.ndarray] | None = None, untied_source: Path | None = None) -> None:
    """Quantize `source` to each of `targets` (quant -> path), side by side.

    `recipes` (quant -> recipe) default to the quant's own file type; a recipe with a separate
    output matrix reads `untied_source` (`untie(source)`). `imatrix` applies to every output.
    On the calling thread: `progress(quant, tensors done, total)` ten times a second, and
    `finished(quant)` as each output is complete. The first failure is raised at once; outputs
    still being written are left to finish on their own (llama.cpp cannot be stopped midway).
    """
    recipes = recipes or {}
    log = QuantizerLog()
    running: list[_Job] = []
    with log.installed():
        for quant, target in targets.items():
            recipe = recipes.get(quant) or QuantRecipe(LLAMA_FTYPES[quant])
            job_source = untied_source if recipe.untied else source
            if job_source is None:
                raise ConversionError(f"{quant} needs a separate output matrix, and none was prepared")
            job = _Job(quant, target, recipe, job_source, imatrix)
            job.start(log)
            running.append(job)
            while job in running and job.thread not in log.in_blocks:
                running = _step(running, log, progress, finished)
        while running:
            running = _step(running, log, progress, finished)


def _step(running: list[_Job], log: QuantizerLog, progress: Callable[[str, int, int], None],
          finished: Callable[[str], None]) -> list[_Job]:
    """Wait a moment; report progress and completed outputs; return the jobs still running."""
    wait([job.result for job in running], timeout=0.1, return_when=FIRST_COMPLETED)
    still = []
    for job in running:
        started, total = log.tensors.get(job.thread, (1, 1))
        if job.result.done():
            job.result.result()  # raises its error
            progress(job.quant, total, total)
            finished(job.quant)
        else:
            progress(job.quant, started - 1, total)
            still.append(job)
    return still
