"""Every call to llama.cpp's multimodal library (mtmd), through llama-cpp-python's `llama_cpp.mtmd_cpp`, in one place.

A `VisionContext` is an mmproj loaded for one `llama_cpp.Llama`: it splits a prompt holding media
markers into text and image chunks (mtmd adds Gemma 3's <start_of_image> / <end_of_image> around
each image) and evaluates them into the model's context, returning the next position (n_past).

mtmd decodes a Gemma 3 image with non-causal attention, all of its tokens in one batch: the
context's n_batch and n_ubatch must be at least the tokens of an image (256 for MedGemma).

`tests/models/test_mtmd_contract.py` checks these bindings against the installed version.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelFileError
from .llama_log import LlamaLog
from .mmproj_pair import check_pair

TEXT, IMAGE = "text", "image"
_mtmd_log: LlamaLog | None = None  # the capture mtmd logs to (it holds the C callback alive)


@dataclass(frozen=True)
class RgbImage:
    """An image as 8-bit RGB, row by row (width * height * 3 bytes), as Pillow's `Image.tobytes()` gives it."""

    width: int
    height: int
    data: bytes

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or len(self.data) != self.width * self.height * 3:
            raise ValueError(f"an RGB image of {self.width}x{self.height} needs {self.width * self.height * 3} bytes, "
                             f"not {len(self.data)}")


@dataclass(frozen=True)
class Chunk:
    """One piece of a tokenized prompt: text tokens, or an image's embeddings."""

    kind: str  # TEXT or IMAGE
    n_tokens: int
    tokens: tuple[int, ...] = ()  # a text chunk's token ids


def media_marker() -> str:
    """The marker that stands for one image in a prompt's text ("<__media__>")."""
    from llama_cpp import mtmd_cpp

    return mtmd_cpp.mtmd_default_marker().decode("utf-8")


class Chunks:
    """A tokenized prompt, owned by mtmd until `close()`."""

    def __init__(self, pointer: Any) -> None:
        self._pointer = pointer

    def __len__(self) -> int:
        from llama_cpp import mtmd_cpp

        return int(mtmd_cpp.mtmd_input_chunks_size(self._pointer))

    def _chunk(self, index: int) -> Any:
        from llama_cpp import mtmd_cpp

        return mtmd_cpp.mtmd_input_chunks_get(self._pointer, index)

    def describe(self) -> list[Chunk]:
        from llama_cpp import mtmd_cpp

        described = []
        for i in range(len(self)):
            chunk = self._chunk(i)
            n_tokens = int(mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk))
            if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t(0)
                tokens = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                described.append(Chunk(TEXT, n_tokens, tuple(int(tokens[j]) for j in range(count.value))))
            else:
                described.append(Chunk(IMAGE, n_tokens))
        return described

    def close(self) -> None:
        from llama_cpp import mtmd_cpp

        if self._pointer is not None:
            mtmd_cpp.mtmd_input_chunks_free(self._pointer)
            self._pointer = None

    def __enter__(self) -> Chunks:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class VisionContext:
    """An mmproj loaded beside a llama.cpp text model (a `llama_cpp.Llama`)."""

    def __init__(self, llm: Any, model_path: Path, mmproj: Path, n_threads: int | None = None,
                 use_gpu: bool = False, log: LlamaLog | None = None) -> None:
        """Load `mmproj` for `llm` (loaded from `model_path`); an mmproj of another model is refused first.

        mtmd's own log (it prints every image it encodes) goes to `log` (the app's: `llama_log.app_log()`),
        or to a capture of this context's own: never to the terminal.
        """
        from llama_cpp import mtmd_cpp

        check_pair(Path(model_path), Path(mmproj))
        global _mtmd_log
        self.log = log or LlamaLog()
        # mtmd keeps the callback process-wide: the capture it calls must outlive this context.
        _mtmd_log = self.log
        mtmd_cpp.mtmd_helper_log_set(self.log.c_callback(), ctypes.c_void_p(0))  # mtmd's and its helpers' log
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.print_timings = False
        if n_threads is not None:
            params.n_threads = n_threads
        self._llm = llm
        self._ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode("utf-8"), llm.model, params)
        if not self._ctx:
            reason = self.log.last_error()
            raise ModelFileError(f"llama.cpp could not load the mmproj {Path(mmproj).name}"
                                 + (f": {reason}" if reason else ""))
        if not mtmd_cpp.mtmd_support_vision(self._ctx):
            self.close()
            raise ModelFileError(f"{Path(mmproj).name} holds no vision tower")

    def tokenize(self, text: str, images: Sequence[RgbImage], add_special: bool = True) -> Chunks:
        """`text` with one media marker per image, split into chunks; `add_special` puts BOS first."""
        from llama_cpp import mtmd_cpp

        markers = text.count(media_marker())
        if markers != len(images):
            raise ValueError(f"the prompt has {markers} media marker(s) for {len(images)} image(s): the number of "
                             "images and media markers differ")
        bitmaps = [self._bitmap(image) for image in images]
        try:
            encoded = text.encode("utf-8")
            prompt = mtmd_cpp.mtmd_input_text(encoded, len(encoded), add_special, True)
            array = (mtmd_cpp.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            chunks = Chunks(mtmd_cpp.mtmd_input_chunks_init())
            result = mtmd_cpp.mtmd_tokenize(self._ctx, chunks._pointer, ctypes.byref(prompt), array, len(bitmaps))
            if result != 0:
                chunks.close()
                raise ValueError(f"mtmd could not tokenize the prompt or read its images (error {result})")
            return chunks
        finally:
            for bitmap in bitmaps:
                mtmd_cpp.mtmd_bitmap_free(bitmap)

    def eval_chunks(self, chunks: Chunks, n_past: int, n_batch: int, logits_last: bool = True,
                    first: int = 0, end: int | None = None) -> int:
        """Evaluate chunks first..end into sequence 0 from position `n_past`; returns the next position."""
        from llama_cpp import llama_cpp, mtmd_cpp

        new_n_past = llama_cpp.llama_pos(n_past)
        end = len(chunks) if end is None else end
        for index in range(first, end):
            result = mtmd_cpp.mtmd_helper_eval_chunk_single(
                self._ctx, self._llm.ctx, chunks._chunk(index), new_n_past.value, 0, n_batch,
                logits_last and index == end - 1, ctypes.byref(new_n_past))
            if result != 0:
                raise RuntimeError(f"llama.cpp failed to evaluate part {index + 1} of the prompt (error {result})")
        return int(new_n_past.value)

    def eval_image(self, image: RgbImage, n_past: int, n_batch: int) -> int:
        """Evaluate one image (with its <start_of_image> / <end_of_image>) at `n_past`; returns the next position."""
        with self.tokenize(media_marker(), [image], add_special=False) as chunks:
            return self.eval_chunks(chunks, n_past, n_batch, logits_last=False)

    def _bitmap(self, image: RgbImage) -> Any:
        from llama_cpp import mtmd_cpp

        data = (ctypes.c_uint8 * len(image.data)).from_buffer_copy(image.data)
        bitmap = mtmd_cpp.mtmd_bitmap_init(image.width, image.height, data)
        if not bitmap:
            raise ValueError(f"mtmd could not take an image of {image.width}x{image.height}")
        return bitmap

    def close(self) -> None:
        from llama_cpp import mtmd_cpp

        if self._ctx:
            mtmd_cpp.mtmd_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> VisionContext:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
