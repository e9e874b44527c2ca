"""Check exported GGUF files against transformers: KL divergence, top-1 agreement and perplexity.

The reference is the base in float32 with the adapters applied by PEFT (reference.py, run in a
child process), so it is computed by code that shares nothing with our merge and GGUF writer.
Both sides see the same token ids, tokenized once with the GGUF's own tokenizer (llama.cpp) so
that tokenization differences cannot hide or fake a weight error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from medgemma_models.errors import ConversionError
from medgemma_models.offline import OFFLINE_ENV
from medgemma_models.progress import STAGE_ERROR, ProgressEvent

from .progress import Progress, no_progress

# Longer than Gemma-3's 512-token sliding window, so that a wrong window size shows up in the figures.
CHUNK_TOKENS = 1024
# The quick verification every conversion runs unless --no-verify: a few hundred positions.
QUICK_TOKENS = 320
# Positions llama.cpp evaluates at once: their logits (16 x 262,144 float32, 16 MiB) are all of an
# output's logits ever held, and the reference's wait in a file. Fewer rows cost time (8: 3.0 s for
# the f16 270M's 319 positions against 2.1 s) for little memory (70 MB of llama.cpp buffers at 16).
_ROWS = 16
# Positions compared in float64 at once: each array of 4 x 262,144 is 8 MiB, five at a time.
_COMPARE_ROWS = 4
# How often a wait on the reference's child process reports progress (and so can be cancelled).
_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class VerifyFigures:
    """How closely one GGUF file follows the float32 reference on the evaluation text."""

    tokens: int  # positions compared (each predicts the next token)
    mean_kld: float  # mean KL(P_reference || P_gguf), nats
    p99_kld: float
    top1: float  # fraction of positions where both pick the same most likely token
    ppl_reference: float
    ppl_gguf: float
    mode: str = "full"  # "quick": the first QUICK_TOKENS tokens of the text only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_available() -> None:
    """Refuse before any work when the reference's libraries (the convert extra) are not installed."""
    missing = [name for name in ("torch", "transformers", "peft") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConversionError(f"checking the outputs needs {', '.join(missing)} (pip install 'medgemma-edge[convert]'); "
                              "or pass --no-verify")


def default_eval_text() -> str:
    """The clinical prose shipped with the package for `--verify` without `--eval-text`."""
    return files("medgemma_convert").joinpath("data", "eval_medical.txt").read_text(encoding="utf-8")


def verify_outputs(
    base: Path,
    adapters: Sequence[tuple[Path, float]],
    outputs: Sequence[Path],
    text: str,
    progress: Progress | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
    lora: Path | None = None,
    max_tokens: int | None = None,
) -> dict[str, VerifyFigures]:
    """Figures for each output GGUF (keyed by its path as a string) against base + adapters in float32.

    `base` is a local Hugging Face folder or a GGUF file (transformers dequantizes it). `lora`, a
    GGUF adapter file, is applied on top of each output in llama.cpp. `max_tokens` keeps only the
    start of the text (the quick verification). The reference logits wait in a temporary file of
    tokens x vocabulary x 4 bytes, written and read back one block of positions at a time.
    """
    progress = progress or no_progress
    if not outputs:
        return {}
    ids, n_vocab = tokenize(outputs[0], text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ConversionError("the evaluation text is too short: it needs at least one token after BOS")
    chunks = split_chunks(ids, chunk_tokens)
    mode = "quick" if max_tokens is not None else "full"
    # The reference logits go to a file, written by a child process whose memory is gone before
    # llama.cpp loads; plain file writes and reads keep them out of the resident memory (a memory
    # map's touched pages would count).
    with tempfile.TemporaryDirectory(prefix="medgemma-verify-") as tmp:
        reference = Path(tmp) / "reference.f32"
        _reference_logits(Path(base), adapters, chunks, n_vocab, reference, progress)
        figures = {}
        for output in outputs:
            stage = f"verify: {output.name}"
            progress(stage, 0, len(chunks))
            with open(reference, "rb") as source:
                blocks = gguf_logits(output, chunks, lora=lora, on_chunk=lambda done, s=stage: progress(s, done, len(chunks)))
                figures[str(output)] = replace(compare_blocks(with_reference(source, n_vocab, blocks), chunks), mode=mode)
    return figures


def split_chunks(ids: list[int], chunk_tokens: int) -> list[list[int]]:
    """Consecutive pieces of `chunk_tokens`; a lone last token (it predicts nothing) is left out."""
    chunks = [ids[i : i + chunk_tokens] for i in range(0, len(ids), chunk_tokens)]
    return [c for c in chunks if len(c) >= 2]


def tokenize(model: Path, text: str) -> tuple[list[int], int]:
    """Token ids of `text` with exactly one BOS, as llama.cpp tokenizes it, and the vocabulary size."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), vocab_only=True, verbose=False)
    try:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        bos = llm.token_bos()
        if not ids or ids[0] != bos:
            ids = [bos, *ids]  # a model whose metadata says not to add BOS is still evaluated after one
        return ids, llm.n_vocab()
    finally:
        llm.close()


def _reference_logits(
    base: Path,
    adapters: Sequence[tuple[Path, float]],
    chunks: list[list[int]],
    n_vocab: int,
    out: Path,
    progress: Progress,
) -> None:
    """Have reference.py write the reference's logits to `out`, in a child process.

    torch never enters this process, and the child's memory is gone before llama.cpp loads. Its
    progress is relayed; this side also reports every half second while it waits, so that a
    cancel (raised from a progress report) kills the child at once, even while it imports torch.
    """
    run_reference({"base": str(base), "adapters": [[str(p), s] for p, s in adapters], "chunks": chunks,
                   "n_vocab": n_vocab, "out": str(out)}, out.parent, progress)


def run_reference(job_data: dict[str, Any], folder: Path, progress: Progress) -> None:
    """Run reference.py on one job (its JSON written to `folder`), relaying its progress; failures raise ConversionError."""
    job = folder / "job.json"
    job.write_text(json.dumps(job_data), encoding="utf-8")
    stage, last, error = "verify: reference", (0, 0), None
    with open(folder / "stderr.txt", "w+", encoding="utf-8", errors="replace") as stderr:
        child = subprocess.Popen([sys.executable, "-I", "-c", _RUN_REFERENCE, *_source_roots(), str(job)],
                                 stdout=subprocess.PIPE, stderr=stderr, text=True, env=dict(os.environ, **OFFLINE_ENV))
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True).start()
        try:
            progress(stage, *last)
            while (line := _next_line(lines, lambda: progress(stage, *last))) is not None:
                event = ProgressEvent.from_json_line(line)
                if event is not None and event.stage == STAGE_ERROR:
                    error = event.message
                elif event is not None and event.stage == stage:
                    last = (event.done, event.total)
                    progress(stage, *last)
            child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
        if child.returncode < 0:  # killed: by the system when memory runs out, most often
            raise ConversionError(f"the reference model (transformers + PEFT) was stopped by signal {-child.returncode}")
        if child.returncode != 0:
            stderr.seek(0)
            reason = error or (stderr.read().strip().splitlines() or ["no message"])[-1]
            raise ConversionError(f"the reference model (transformers + PEFT) failed: {reason}")


# The child runs the very copy of the packages this process runs (`-I` ignores PYTHONPATH, and a source
# checkout or a second worktree would otherwise be shadowed by the installed copy): their folders
# come first on its path, then the job file is its only argument.
_RUN_REFERENCE = (
    "import runpy, sys; roots, sys.argv[1:] = sys.argv[1:-1], sys.argv[-1:]; sys.path[:0] = roots; "
    "runpy.run_module('medgemma_convert.reference', run_name='__main__', alter_sys=True)"
)


def _source_roots() -> list[str]:
    import medgemma_convert
    import medgemma_models

    return list(dict.fromkeys(str(Path(m.__file__).resolve().parents[1]) for m in (medgemma_convert, medgemma_models)))


def _read_lines(stream: TextIO, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def _next_line(lines: queue.Queue[str | None], waiting: Callable[[], None]) -> str | None:
    while True:
        try:
            return lines.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            waiting()


def gguf_logits(model: Path, chunks: list[list[int]], rows: int = _ROWS, lora: Path | None = None,
                on_chunk: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """llama.cpp's logits of every position but each chunk's last, `rows` positions per block, in order.

    Each chunk starts from an empty cache; only `rows` positions' logits are ever held.
    """
    import llama_cpp
    from llama_cpp import Llama

    longest = max(len(c) for c in chunks)
    llm = Llama(model_path=str(model), lora_path=str(lora) if lora else None, n_ctx=longest, n_batch=rows,
                n_ubatch=rows, n_gpu_layers=0, verbose=False)
    batch = llama_cpp.llama_batch_init(rows, 0, 1)
    try:
        n_vocab = llm.n_vocab()
        for done, chunk in enumerate(chunks, 1):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
            wanted = len(chunk) - 1
            for start in range(0, wanted, rows):
                tokens = chunk[start : min(start + rows, wanted)]
                batch.n_tokens = len(tokens)
                for i, token in enumerate(tokens):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, start + i, 1, True
                    batch.seq_id[i][0] = 0
                if llama_cpp.llama_decode(llm.ctx, batch) != 0:
                    raise ConversionError(f"llama.cpp failed to evaluate {model.name}")
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(len(tokens), n_vocab))
                yield logits.copy()
            if on_chunk is not None:
                on_chunk(done)
    finally:
        llama_cpp.llama_batch_free(batch)
        llm.close()


def with_reference(source: BinaryIO, n_vocab: int, blocks: Iterator[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs (reference rows, gguf rows): the reference's next rows from `source`, as many as each block has."""
    for block in blocks:
        if block.shape[1] != n_vocab:
            raise ConversionError(f"an output has a vocabulary of {block.shape[1]}, the first output {n_vocab}")
        reference = np.fromfile(source, dtype=np.float32, count=block.size).reshape(block.shape)
        yield reference, block


def compare_blocks(pairs: Iterable[tuple[np.ndarray, np.ndarray]], chunks: list[list[int]]) -> VerifyFigures:
    """The figures over (reference, gguf) logit blocks covering `chunks`' positions in order."""
    targets = np.concatenate([np.asarray(c[1:]) for c in chunks])
    kld: list[np.ndarray] = []
    same: list[np.ndarray] = []
    nll_ref: list[np.ndarray] = []
    nll_gguf: list[np.ndarray] = []
    row = 0
    for reference, gguf in pairs:
        for start in range(0, len(gguf), _COMPARE_ROWS):
            end = min(start + _COMPARE_ROWS, len(gguf))
            values = compare_rows(reference[start:end], gguf[start:end], targets[row + start : row + end])
            for value, into in zip(values, (kld, same, nll_ref, nll_gguf)):
                into.append(value)
        row += len(gguf)
    all_kld = np.concatenate(kld)
    return VerifyFigures(
        tokens=int(all_kld.size),
        mean_kld=float(all_kld.mean()),
        p99_kld=float(np.percentile(all_kld, 99)),
        top1=float(np.concatenate(same).mean()),
        ppl_reference=float(np.exp(np.concatenate(nll_ref).mean())),
        ppl_gguf=float(np.exp(np.concatenate(nll_gguf).mean())),
    )


def compare_rows(
    reference: np.ndarray, gguf: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per position: KL(P_ref || P_gguf), same top-1, and each side's negative log-likelihood of the target."""
    ref = log_softmax(reference)
    got = log_softmax(gguf)
    kld = np.sum(np.exp(ref) * (ref - got), axis=1)
    picked = np.arange(len(targets)), targets
    return kld, ref.argmax(axis=1) == got.argmax(axis=1), -ref[picked], -got[picked]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64: KLDs near 1e-5 need more than float32's rounding allows."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

