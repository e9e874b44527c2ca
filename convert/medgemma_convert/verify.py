"""Check exported GGUF files against transformers: KL divergence, top-1 agreement and perplexity.

The reference is the base in float32 with the adapters merged by PEFT, so it is computed by code
that shares nothing with our merge and GGUF writer. Both sides see the same token ids, tokenized
once with the GGUF's own tokenizer (llama.cpp) so that tokenization differences cannot hide or
fake a weight error.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medgemma_models.errors import ConversionError

from .progress import Progress, no_progress

if TYPE_CHECKING:
    import torch

# Longer than Gemma-3's 512-token sliding window, so that a wrong window size shows up in the figures.
CHUNK_TOKENS = 1024
# Positions compared at once: 32 rows x 262,144 vocab x float64 is 64 MiB per array.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
) -> dict[str, VerifyFigures]:
    """Figures for each output GGUF (keyed by its path as a string) against base + adapters in float32.

    `base` is a local Hugging Face folder or a GGUF file (transformers dequantizes it). The
    reference logits wait in a temporary file of tokens x vocabulary x 4 bytes (about 0.7 GB for
    the shipped text with Gemma's 262,144 tokens).
    """
    progress = progress or no_progress
    if not outputs:
        return {}
    ids, n_vocab = tokenize(outputs[0], text)
    if len(ids) < 2:
        raise ConversionError("the evaluation text is too short: it needs at least one token after BOS")
    chunks = [ids[i : i + chunk_tokens] for i in range(0, len(ids), chunk_tokens)]
    chunks = [c for c in chunks if len(c) >= 2]  # a lone last token predicts nothing
    n_positions = sum(len(c) - 1 for c in chunks)
    # The reference logits go to a file so that the torch model can be freed before llama.cpp
    # loads, and neither side holds every position's full-vocabulary logits in memory.
    with tempfile.TemporaryDirectory(prefix="medgemma-verify-") as tmp:
        reference = np.lib.format.open_memmap(
            Path(tmp) / "reference.npy", mode="w+", dtype=np.float32, shape=(n_positions, n_vocab)
        )
        _reference_logits(base, adapters, chunks, reference, progress)
        figures = {}
        for output in outputs:
            figures[str(output)] = _compare(output, chunks, reference, progress)
        del reference
    return figures


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
    out: np.ndarray,
    progress: Progress,
) -> None:
    import torch

    progress("verify: reference", 0, len(chunks))
    model = reference_model(base, adapters)
    n_vocab = out.shape[1]
    row = 0
    with torch.inference_mode():
        for done, chunk in enumerate(chunks, 1):
            logits = model(input_ids=torch.tensor([chunk]), use_cache=False).logits[0, :-1]
            if logits.shape[-1] < n_vocab:
                raise ConversionError(
                    f"the reference model has {logits.shape[-1]} vocabulary rows, the GGUF {n_vocab}"
                )
            # Rows past the GGUF's vocabulary (padding in some checkpoints) are left out on both sides.
            out[row : row + len(chunk) - 1] = logits[:, :n_vocab].float().numpy()
            row += len(chunk) - 1
            del logits
            progress("verify: reference", done, len(chunks))
    del model
    gc.collect()


def _compare(output: Path, chunks: list[list[int]], reference: np.ndarray, progress: Progress) -> VerifyFigures:
    from llama_cpp import Llama

    stage = f"verify: {output.name}"
    progress(stage, 0, len(chunks))
    longest = max(len(c) for c in chunks)
    llm = Llama(
        model_path=str(output),
        n_ctx=longest,
        n_batch=min(longest, 512),
        logits_all=True,
        n_gpu_layers=0,
        verbose=False,
    )
    try:
        if llm.n_vocab() != reference.shape[1]:
            raise ConversionError(f"{output.name} has a vocabulary of {llm.n_vocab()}, the first output {reference.shape[1]}")
        kld: list[np.ndarray] = []
        same: list[np.ndarray] = []
        nll_ref: list[np.ndarray] = []
        nll_gguf: list[np.ndarray] = []
        row = 0
        for done, chunk in enumerate(chunks, 1):
            llm.reset()
            llm.eval(chunk)
            n = len(chunk) - 1
            targets = np.asarray(chunk[1:])
            for start in range(0, n, _ROWS):
                stop = min(start + _ROWS, n)
                rows = compare_rows(reference[row + start : row + stop], llm.scores[start:stop], targets[start:stop])
                for values, into in zip(rows, (kld, same, nll_ref, nll_gguf)):
                    into.append(values)
            row += n
            progress(stage, done, len(chunks))
    finally:
        llm.close()
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

