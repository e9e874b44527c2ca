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
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path

from medgemma_models.errors import ConversionError

from .quants import LLAMA_FTYPES

# llama.cpp widens each tensor to float32 before quantizing it; by default a whole tensor at once
# (the 262,144-row embedding: 0.7 GB for the 270M, 1.2 GB for the 1B). Slabs of this many bytes
# give byte-identical files at a fraction of the memory, and no slower.
SLAB_BYTES = 64 * 1024 * 1024

_GGML_LOG_ERROR = 3
# What llama.cpp logs as it starts on each tensor: "[  12/ 340] blk.0.attn_q.weight - ...".
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\] (\S+)")


class QuantizerLog:
    """llama.cpp's log while quantizing: kept off the terminal, read for progress and errors.

    llama.cpp logs on the thread that called it, so each line is credited to its own output.
    """

    def __init__(self) -> None:
        self.tensors: dict[int, tuple[int, int]] = {}  # thread -> (tensors started, total)
        self.in_blocks: set[int] = set()  # threads whose quantizer has reached the blk.* tensors
        self.last_error: dict[int, str] = {}
        self._callback: object = None

    def _on_log(self, level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        thread, line = threading.get_ident(), text.decode("utf-8", "replace")
        tensor = _TENSOR_LINE.match(line)
        if tensor:
            self.tensors[thread] = (int(tensor[1]), int(tensor[2]))
            if tensor[3].startswith("blk."):
                self.in_blocks.add(thread)
        elif level == _GGML_LOG_ERROR and line.strip():
            self.last_error[thread] = line.strip()

    @contextlib.contextmanager
    def installed(self) -> Iterator[QuantizerLog]:
        import llama_cpp
        from llama_cpp import _logger

        # Kept on self: a quantizer left running after an interrupt may still be calling it.
        self._callback = llama_cpp.llama_log_callback(self._on_log)
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        try:
            yield self
        finally:
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def quantize(source: Path, target: Path, quant: str, log: QuantizerLog | None = None) -> None:
    """Write `source` (f32/f16/bf16 GGUF) quantized to `quant` (e.g. "q8_0") at `target`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_FTYPES[quant])
    params.nthread = os.cpu_count() or 1
    params.max_buf_size = SLAB_BYTES
    with contextlib.ExitStack() as stack:
        log = log or stack.enter_context(QuantizerLog().installed())
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0:
        # A failed write (a full disk) is the usual cause; llama.cpp says so in its log only.
        reason = log.last_error.get(threading.get_ident(), "no reason given; check the free disk space")
        raise ConversionError(f"could not write {target}: llama.cpp's quantizer failed ({reason})")


@dataclass
class _Job:
    quant: str
    target: Path
    thread: int = 0  # set once it runs
    result: Future[None] = field(default_factory=Future, repr=False)

    def start(self, source: Path, log: QuantizerLog) -> None:
        # A daemon thread: llama.cpp cannot be stopped midway, and an interrupted conversion
        # (Ctrl-C, Cancel in the app) should not wait for it before exiting.
        threading.Thread(target=self._run, args=(source, log), name=f"quantize {self.quant}", daemon=True).start()

    def _run(self, source: Path, log: QuantizerLog) -> None:
        self.thread = threading.get_ident()
        try:
            quantize(source, self.target, self.quant, log)
        except BaseException as exc:  # noqa: BLE001  (raised on the calling thread)
            self.result.set_exception(exc)
        else:
            self.result.set_result(None)


def quantize_all(source: Path, targets: dict[str, Path], progress: Callable[[str, int, int], None],
                 finished: Callable[[str], None]) -> None:
    """Quantize `source` to each of `targets` (quant -> path), side by side.

    On the calling thread: `progress(quant, tensors done, total)` ten times a second, and
    `finished(quant)` as each output is complete. The first failure is raised at once; outputs
    still being written are left to finish on their own (llama.cpp cannot be stopped midway).
    """
    log = QuantizerLog()
    running: list[_Job] = []
    with log.installed():
        for quant, target in targets.items():
            job = _Job(quant, target)
            job.start(source, log)
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
