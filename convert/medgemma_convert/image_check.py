"""The image check of an exported pair (text GGUF + mmproj): llama.cpp's next-token logits after an image.

The prompt is text, an image, and text, with "\\n\\n" on both sides of the image as Hugging Face's
Gemma 3 processor writes it (`full_image_sequence`). mtmd evaluates the text before the image and
the image itself; the text after it is decoded here with every position's logits kept, so each
of its positions is compared with transformers on exactly the same token ids (those mtmd made).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medgemma_models.mtmd_compat import IMAGE, RgbImage, VisionContext, media_marker

from .progress import Progress, no_progress

# The check's prompt: a user turn asking about the image, then the start of the model's answer.
CHECK_BEFORE = "<start_of_turn>user\nDescribe this medical image."
CHECK_AFTER = "<end_of_turn>\n<start_of_turn>model\n"


def check_image(size: int) -> np.ndarray:
    """The fixed image of the check: size x size RGB (uint8), smooth gradients with a fine pattern over them.
    Exactly the vision tower's size: transformers stretches other sizes and mtmd pads them, so any other
    size would compare two resamplings, not the export."""
    y, x = np.mgrid[0:size, 0:size] / max(1, size - 1)
    pattern = (np.sin(x * 37.0) * np.cos(y * 23.0) + 1) / 2
    rgb = np.stack([x, y, pattern], axis=-1) * 0.8 + pattern[..., None] * 0.2
    return (rgb * 255).round().astype(np.uint8)


def verify_image(base: Path, adapters: Sequence[tuple[Path, float]], model: Path, mmproj: Path, size: int,
                 progress: Progress = no_progress) -> dict[str, Any]:
    """Mean KLD and top-1 of llama.cpp (text GGUF + mmproj) against transformers + PEFT in float32, over the
    next-token distributions after the check image."""
    from .verify import compare_rows, run_reference

    pixels = check_image(size)
    progress("verify: image", 0, 2)
    prompt, got = gguf_image_logits(model, mmproj, RgbImage(size, size, pixels.tobytes()), CHECK_BEFORE, CHECK_AFTER)
    progress("verify: image", 1, 2)
    with tempfile.TemporaryDirectory(prefix="medgemma-verify-image-") as tmp:
        folder = Path(tmp)
        (folder / "image.rgb").write_bytes(pixels.tobytes())
        run_reference({"kind": "image", "base": str(base), "adapters": [[str(p), s] for p, s in adapters],
                       "ids": list(prompt.ids), "tail_start": prompt.tail_start, "image": str(folder / "image.rgb"),
                       "size": size, "out": str(folder / "logits.f32")}, folder, progress)
        # Rows past the GGUF's vocabulary (padding in some checkpoints) are left out, as in the text check.
        reference = np.fromfile(folder / "logits.f32", dtype=np.float32).reshape(len(got), -1)[:, : got.shape[1]]
    targets = np.asarray(reference.argmax(axis=1))
    kld, same, _, _ = compare_rows(reference, got, targets)
    progress("verify: image", 2, 2)
    return {"mode": "image", "tokens": int(len(kld)), "mean_kld": float(kld.mean()), "top1": float(same.mean()),
            "image_size": size}


@dataclass(frozen=True)
class ImagePrompt:
    """What llama.cpp evaluated: token ids with None for each image position, and where the compared text starts."""

    ids: tuple[int | None, ...]
    tail_start: int  # the first compared position (the text after the image)


def image_prompt_text(before: str, after: str) -> str:
    return f"{before}\n\n{media_marker()}\n\n{after}"


def gguf_image_logits(model: Path, mmproj: Path, image: RgbImage, before: str, after: str,
                      n_threads: int = 2) -> tuple[ImagePrompt, np.ndarray]:
    """llama.cpp's logits for every position of the text after the image (rows: positions, columns: vocabulary)."""
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=512, n_batch=512, n_ubatch=512, n_gpu_layers=0, n_threads=n_threads,
                verbose=False)
    try:
        with VisionContext(llm, model, mmproj, n_threads=n_threads) as vision, \
                vision.tokenize(image_prompt_text(before, after), [image]) as chunks:
            described = chunks.describe()
            if len(described) < 3 or described[-1].kind == IMAGE:
                raise ValueError("the prompt must end in text after the image")
            ids: list[int | None] = []
            for chunk in described:
                ids.extend(chunk.tokens if chunk.kind != IMAGE else [None] * chunk.n_tokens)
            tail = list(described[-1].tokens)
            n_past = vision.eval_chunks(chunks, 0, 512, logits_last=False, end=len(described) - 1)
            batch = llama_cpp.llama_batch_init(len(tail), 0, 1)
            try:
                batch.n_tokens = len(tail)
                for i, token in enumerate(tail):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, n_past + i, 1, True
                    batch.seq_id[i][0] = 0
                if llama_cpp.llama_decode(llm.ctx, batch) != 0:
                    raise RuntimeError(f"llama.cpp failed to evaluate the text after the image with {model.name}")
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(len(tail), llm.n_vocab()))
                return ImagePrompt(tuple(ids), len(ids) - len(tail)), logits.astype(np.float64)
            finally:
                llama_cpp.llama_batch_free(batch)
    finally:
        llm.close()
