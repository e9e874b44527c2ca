"""The chat engine: llama.cpp through llama-cpp-python, with no Qt in sight.

Loads a GGUF with the GPU offload the build allows, streams text that can be stopped
between tokens, and reports what a user cares about: time to first token, decode speed
and how much of the prompt came from the KV cache.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp

from medgemma_models.errors import MedGemmaError, ModelLoadError
from medgemma_models.gguf_info import ModelInfo, read_model_info
from medgemma_models.llama_cpp_compat import model_params_with_progress
from medgemma_models.llama_log import app_log
from medgemma_models.mtmd_compat import VisionContext, media_marker
from medgemma_models.prompt import Prompt, PromptImage

from . import adapters as runtime_adapters
from .answer import GenerationStats, LoadCancelledError, OffloadReport
from .forced_offload import split_mode, supports_gpu_offload
from .prompt_tokens import tokenize_prompt
from .settings import GpuSetting, LoadParams, SamplingParams

if TYPE_CHECKING:
    from .generation import AdapterUse

log = logging.getLogger(__name__)


def gpu_backend_name(system_info: str, supports_offload: bool) -> str:
    """Name the offload backend this llama.cpp build was compiled with."""
    if not supports_offload:
        return "CPU"
    for name in ("CUDA", "Metal", "Vulkan", "HIP", "SYCL", "OpenCL", "CANN", "MUSA"):
        if name.lower() in system_info.lower():
            return name
    return "GPU"


def choose_gpu_layers(setting: GpuSetting, supports_offload: bool, n_layers: int) -> int:
    """Layers to offload: all with "auto" on a GPU build, none for "cpu" or a CPU build."""
    if not supports_offload or setting == "cpu":
        return 0
    if setting == "auto":
        # llama.cpp counts the output layer too: n_layers + 1 puts the whole model on the GPU.
        return n_layers + 1
    layers = int(setting)
    if layers < 0:
        raise ValueError("the number of GPU layers cannot be negative")
    return min(layers, n_layers + 1)


class StopText:
    """Cuts the answer at the first of the request's stop strings, which is not shown.

    Text that could still be the start of a stop string is held back until the next piece
    decides it, so nothing is shown that a stop string would have cut.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.held += text
        cuts = [index for index in (self.held.find(stop) for stop in self.stops) if index >= 0]
        if cuts:
            self.stopped = True
            shown, self.held = self.held[: min(cuts)], ""
            return shown
        keep = max((n for stop in self.stops for n in range(min(len(stop) - 1, len(self.held)), 0, -1)
                    if self.held.endswith(stop[:n])), default=0)
        shown, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep:]
        return shown

    def finish(self, tail: str) -> str:
        """The text held back when the answer ends for another reason: it was no stop string."""
        text = self.feed(tail) if tail and not self.stopped else ""
        text, self.held = text + self.held, ""
        return text


def forget_from(llm: llama_cpp.Llama, position: int) -> None:
    """Drop the KV cache's entries from `position` on, as `Llama.eval` does before it writes there."""
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llm.ctx), -1, position, -1)


def image_placeholder(image: PromptImage) -> int:
    """The id that stands for each position of `image` in a prompt's tokens: negative, so never a real
    token, and the image's own, so that the KV cache's prefix match keeps an image it already holds."""
    return -1 - int(image.sha256[:7], 16)


class Engine:
    """One loaded model, its vision projector when it has one, and its KV cache."""

    def __init__(self) -> None:
        self.llm: llama_cpp.Llama | None = None
        self.info: ModelInfo | None = None
        self.offload: OffloadReport | None = None
        self.options: LoadParams | None = None
        self.last_stats: GenerationStats | None = None
        self.vision: VisionContext | None = None
        self.images_encoded = 0  # every image evaluated since the load: a follow-up question adds none
        # The images of the prompts tokenized so far, by placeholder id, and how many positions each takes.
        self._images: dict[int, PromptImage] = {}
        self._image_lengths: dict[str, int] = {}

    @property
    def loaded(self) -> bool:
        return self.llm is not None

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx() if self.llm is not None else 0

    def load(
        self,
        path: Path | str,
        options: LoadParams = LoadParams(),
        progress: Callable[[float], bool] | None = None,
    ) -> OffloadReport:
        """Load a GGUF, offloading to the GPU when the build and the setting allow.

        A failed GPU load is retried on the CPU, and the report says why. On any failure
        the model loaded before stays loaded.
        """
        info = read_model_info(path)
        if not info.is_gemma:
            raise ModelLoadError(f"{info.path.name} is a {info.architecture} model; this app runs Gemma models")
        llama_log = app_log()
        supports = supports_gpu_offload()
        backend = gpu_backend_name(llama_cpp.llama_print_system_info().decode(errors="replace"), supports)
        n_layers = info.block_count or 0
        layers = choose_gpu_layers(options.gpu, supports, n_layers)
        fallback = None
        errors_before = llama_log.errors_seen
        try:
            llm = self._open(info.path, options, layers, progress)
        except LoadCancelledError:
            raise
        except (ValueError, RuntimeError, OSError) as exc:
            if layers == 0:
                raise ModelLoadError(f"llama.cpp could not load {info.path.name}: {llama_log.last_error() or exc}") from exc
            fallback = llama_log.first_error_since(errors_before) or str(exc)
            log.warning("GPU load failed (%s); retrying on the CPU", fallback)
            try:
                llm = self._open(info.path, options, 0, progress)
            except (ValueError, RuntimeError, OSError) as retry_exc:
                reason = llama_log.last_error() or retry_exc
                raise ModelLoadError(f"llama.cpp could not load {info.path.name}: {reason}") from retry_exc
            layers = 0
        self.close()
        self.llm, self.info, self.options = llm, info, options
        self.offload = OffloadReport(options.gpu, layers, n_layers, backend, fallback)
        return self.offload

    def _open(
        self, path: Path, options: LoadParams, n_gpu_layers: int, progress: Callable[[float], bool] | None
    ) -> llama_cpp.Llama:
        cancelled = False

        def watch(fraction: float) -> bool:
            nonlocal cancelled
            cancelled = progress is not None and not progress(fraction)
            return not cancelled

        with model_params_with_progress(watch) if progress is not None else contextlib.nullcontext():
            try:
                return llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=options.n_ctx,
                    # None keeps llama-cpp-python's default of half the cores: a thread per
                    # core spins badly as soon as anything else wants the CPU.
                    n_threads=options.n_threads,
                    n_gpu_layers=n_gpu_layers,
                    split_mode=split_mode(n_gpu_layers),
                    # A full-size sliding-window cache lets a new turn reuse the
                    # earlier turns' KV entries instead of evaluating them again.
                    swa_full=True,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                if cancelled:
                    raise LoadCancelledError("model load cancelled") from exc
                raise

    def set_adapters(self, adapters: Sequence[AdapterUse]) -> None:
        """Run the loaded base with these GGUF LoRA adapters (none: the base alone); clears the KV cache.

        An adapter that does not fit is refused (ModelFileError) and the adapters set before stay.
        """
        llm = self._require()
        current = runtime_adapters.attached_to(llm)
        if adapters:
            runtime_adapters.attach(llm, [(a.path, a.scale) for a in adapters])
        elif current is not None:
            current.detach()  # also clears the KV cache, computed with the adapters

    def set_vision(self, mmproj: Path | None) -> None:
        """Load the vision projector `mmproj` for the loaded model (None: none); one of another model is refused."""
        llm = self._require()
        assert self.info is not None
        if self.vision is not None:
            self.vision.close()
            self.vision = None
        self._images.clear()
        self._image_lengths.clear()
        if mmproj is not None:
            threads = self.options.n_threads if self.options is not None else None
            self.vision = VisionContext(llm, self.info.path, mmproj, n_threads=threads, log=app_log())

    def close(self) -> None:
        if self.vision is not None:
            self.vision.close()
            self.vision = None
        if self.llm is not None:
            self.llm.close()
        self.llm = None

    def _require(self) -> llama_cpp.Llama:
        if self.llm is None:
            raise ModelLoadError("no model is loaded")
        return self.llm

    def tokenize(self, prompt: Prompt) -> list[int]:
        """Tokens of a prompt that carries its own <bos> and turn markers (only those are control tokens);
        each image takes as many positions as mtmd gives it, held by its placeholder id."""
        return tokenize_prompt(self._require(), prompt, self._image_tokens if self.vision is not None else None)

    def _image_tokens(self, image: PromptImage) -> list[int]:
        assert self.vision is not None
        length = self._image_lengths.get(image.sha256)
        if length is None:
            with self.vision.tokenize(media_marker(), [image.rgb], add_special=False) as chunks:
                length = sum(chunk.n_tokens for chunk in chunks.describe())
            self._image_lengths[image.sha256] = length
        placeholder = image_placeholder(image)
        self._images[placeholder] = image
        return [placeholder] * length

    def _evaluate_images(self, tokens: list[int]) -> tuple[int, float]:
        """Bring the KV cache up to the end of the prompt's last image, encoding only the images it
        does not hold already; returns how many were encoded and the milliseconds that took.

        llama-cpp-python's own prefix match then finds everything up to there cached and evaluates
        only the text after it.
        """
        llm = self._require()
        # Only this prompt's images are kept in memory (a stored picture can be 12 MB of pixels).
        in_prompt = {t for t in tokens if t < 0}
        self._images = {placeholder: image for placeholder, image in self._images.items() if placeholder in in_prompt}
        last = max((i for i, t in enumerate(tokens) if t < 0), default=-1)
        if last < 0:
            return 0, 0.0
        assert self.vision is not None
        end = last + 1
        start = self.cached_prefix(tokens)
        # A prefix that ends inside an image is no use: that image is encoded whole again.
        while 0 < start < len(tokens) and tokens[start - 1] < 0 and tokens[start] == tokens[start - 1]:
            start -= 1
        if start >= end:
            return 0, 0.0
        llm.n_tokens = start
        encoded, began = 0, time.perf_counter()
        position = start
        while position < end:
            run_end = position
            if tokens[position] >= 0:
                while run_end < end and tokens[run_end] >= 0:
                    run_end += 1
                llm.eval(tokens[position:run_end])  # removes what the cache held from here on
                position = run_end
                continue
            image = self._images[tokens[position]]
            length = self._image_lengths[image.sha256]
            if length > llm.n_batch:
                raise MedGemmaError(f"an image takes {length} tokens, more than the batch of {llm.n_batch}: "
                                    "mtmd evaluates an image in one batch")
            forget_from(llm, position)
            after = self.vision.eval_image(image.rgb, position, llm.n_batch)
            if after != position + length:
                raise MedGemmaError(f"mtmd placed an image in {after - position} positions, not {length}")
            llm.input_ids[position:after] = tokens[position:after]
            llm.n_tokens = position = after
            encoded += 1
        self.images_encoded += encoded
        return encoded, (time.perf_counter() - began) * 1000

    def cached_prefix(self, tokens: list[int]) -> int:
        """How many leading tokens of `tokens` are already in the KV cache."""
        llm = self._require()
        cached = llm.input_ids[: llm.n_tokens]
        n = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            n += 1
        # llama.cpp evaluates at least the last prompt token again to get fresh logits.
        return min(n, max(len(tokens) - 1, 0))

    def stream(
        self,
        prompt: Prompt | Sequence[int],
        settings: SamplingParams = SamplingParams(),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[str]:
        """Yield the answer's text, one piece per generated token (a piece can be empty while a
        character's UTF-8 bytes are still arriving); `last_stats` is set when it ends.

        `prompt` is a `Prompt` or its token ids (already tokenized by the prompt's budget step).
        `should_stop` is checked between tokens, so a stop takes effect within one token.
        """
        llm = self._require()
        tokens = list(prompt) if not isinstance(prompt, (Prompt, str)) else self.tokenize(prompt)
        if len(tokens) + 1 > llm.n_ctx():
            raise MedGemmaError(f"the prompt has {len(tokens)} tokens; the context holds {llm.n_ctx()}")
        max_tokens = max(0, min(settings.max_tokens, llm.n_ctx() - len(tokens)))
        reused = self.cached_prefix(tokens)
        start = time.perf_counter()
        images_encoded, image_ms = self._evaluate_images(tokens)
        if settings.seed is not None:
            llm.set_seed(settings.seed)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stop_text = StopText(settings.stop)
        first_at: float | None = None
        last_at = start
        generated = 0
        received = 0  # tokens sampled, the end-of-turn token included
        finish = "length"
        self.last_stats = None
        generator = llm.generate(
            tokens,
            top_k=settings.top_k,
            top_p=settings.top_p,
            min_p=settings.min_p,
            temp=settings.temperature,
            repeat_penalty=settings.repeat_penalty,
        )
        try:
            for token in generator:
                now = time.perf_counter()
                if first_at is None:
                    first_at = now
                last_at = now
                received += 1
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                generated += 1
                yield stop_text.feed(decoder.decode(llm.detokenize([token])))
                if stop_text.stopped:
                    finish = "stop"
                    break
                if generated >= max_tokens:
                    break
                if should_stop():
                    finish = "cancelled"
                    break
            tail = stop_text.finish(decoder.decode(b"", final=True))
            if tail:
                yield tail
        finally:
            generator.close()
            ttft = ((first_at or time.perf_counter()) - start) * 1000
            decode_time = last_at - (first_at or last_at)
            # The first token's time is the prompt's; decode speed counts the tokens after it.
            speed = (received - 1) / decode_time if received > 1 and decode_time > 0 else 0.0
            self.last_stats = GenerationStats(len(tokens), reused, generated, ttft, speed, finish,
                                              images_encoded, round(image_ms, 1))
