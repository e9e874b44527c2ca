"""Check exported GGUF files against transformers: KL divergence, top-1 agreement and perplexity.

The reference is the base in float32 with the adapters merged by PEFT, so it is computed by code
that shares nothing with our merge and GGUF writer. Both sides see the same token ids, tokenized
once with the GGUF's own tokenizer (llama.cpp) so that tokenization differences cannot hide or
fake a weight error.
"""

from __future__ import annotations

import gc
import importlib.util
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from medgemma_models.errors import ConversionError

from .progress import Progress, no_progress

if TYPE_CHECKING:
    import torch

# Longer than Gemma-3's 512-token sliding window, so that a wrong window size shows up in the figures.
CHUNK_TOKENS = 1024
# The quick verification every conversion runs unless --no-verify: a few hundred positions.
QUICK_TOKENS = 320
# Positions compared at once: 32 rows x 262,144 vocab x float64 is 64 MiB per array. Neither side
# ever holds more than this many positions' logits: the reference waits in a file, llama.cpp
# computes them a block at a time.
_ROWS = 32


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
    # The reference logits go to a file so that the torch model can be freed before llama.cpp
    # loads; plain file writes and reads keep them out of the resident memory (a memory map's
    # touched pages would count).
    with tempfile.TemporaryDirectory(prefix="medgemma-verify-") as tmp:
        reference = Path(tmp) / "reference.f32"
        with open(reference, "wb") as sink:
            _reference_logits(base, adapters, chunks, n_vocab, sink, progress)
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


def reference_model(base: Path, adapters: Sequence[tuple[Path, float]]) -> torch.nn.Module:
    """The base in float32 with each adapter merged by PEFT at `scale * alpha / r` (rsLoRA: `/ sqrt(r)`)."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM, GgufConfig

    base = Path(base)
    if base.is_file():
        # Unpacked to plain float32 weights: transformers would otherwise keep GGUF blocks and
        # compute with its own quantized kernels, which is not the reference we want.
        model = AutoModelForCausalLM.from_pretrained(
            base.parent, gguf_file=base.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    for index, (adapter, scale) in enumerate(adapters):
        name = f"adapter{index}"
        peft_model = PeftModel.from_pretrained(model, str(adapter), adapter_name=name)
        # PEFT's own user scale: set_scale makes its scaling `scale * alpha / r` (or `/ sqrt(r)`),
        # which merge_and_unload then applies as W + scaling * B @ A.
        for module in peft_model.modules():
            if isinstance(module, LoraLayer) and name in module.scaling:
                module.set_scale(name, scale)
        # Merging one adapter at a time sums the deltas: each depends only on its own A and B.
        model = peft_model.merge_and_unload()
    return model.eval()


def _reference_logits(
    base: Path,
    adapters: Sequence[tuple[Path, float]],
    chunks: list[list[int]],
    n_vocab: int,
    sink: BinaryIO,
    progress: Progress,
) -> None:
    """Write the reference's logits of every position but each chunk's last, in order, as float32 rows."""
    import torch

    progress("verify: reference", 0, len(chunks))
    model = reference_model(base, adapters)
    # The model's own forward, split where it costs nothing: the decoder once per chunk, then the
    # output matrix (and Gemma-2's final soft-capping) a block of positions at a time, so that the
    # full-vocabulary logits of a whole chunk (1 GiB for 1,024 Gemma positions) never exist at once.
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    softcap = getattr(config, "final_logit_softcapping", None)
    with torch.inference_mode():
        for done, chunk in enumerate(chunks, 1):
            hidden = decoder(input_ids=torch.tensor([chunk]), use_cache=False).last_hidden_state[0, :-1]
            for start in range(0, len(hidden), _ROWS):
                logits = head(hidden[start : start + _ROWS]).float()
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                if logits.shape[-1] < n_vocab:
                    raise ConversionError(
                        f"the reference model has {logits.shape[-1]} vocabulary rows, the GGUF {n_vocab}"
                    )
                # Rows past the GGUF's vocabulary (padding in some checkpoints) are left out on both sides.
                sink.write(np.ascontiguousarray(logits[:, :n_vocab].numpy()).tobytes())
            del hidden
            progress("verify: reference", done, len(chunks))
    del model, decoder, head
    gc.collect()


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
        n = len(gguf)
        values = compare_rows(reference, gguf, targets[row : row + n])
        for value, into in zip(values, (kld, same, nll_ref, nll_gguf)):
            into.append(value)
        row += n
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

