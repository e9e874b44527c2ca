"""What a load and an answer report, as plain values: no llama.cpp, no Qt.

The engine fills `GenerationStats`; the generation path, which splits the reasoning off, adds
what it knows and hands `AnswerStats` to every front end (the window, `--ask`, the server).
"""

from __future__ import annotations

from dataclasses import dataclass

from medgemma_models.errors import MedGemmaError

from .settings import GpuSetting


class LoadCancelledError(MedGemmaError):
    """The user cancelled a model load."""


@dataclass(frozen=True)
class GenerationStats:
    """One answer as the engine saw it: tokens and timing."""

    prompt_tokens: int
    reused_tokens: int  # of the prompt, found in the KV cache (OpenAI's `cached_tokens`)
    generated_tokens: int
    ttft_ms: float
    decode_tok_per_s: float  # the one speed figure: tokens after the first over the time they took
    finish_reason: str  # "stop", "length" or "cancelled"
    images_encoded: int = 0  # images of the prompt encoded for this answer (not found in the KV cache)
    image_encode_ms: float = 0.0  # the time that took (part of the time to first token)


@dataclass(frozen=True)
class AnswerStats(GenerationStats):
    """One answer as the front ends report it: the engine's figures plus the reasoning's."""

    reasoning_tokens: int = 0  # generated tokens that carried reasoning text or its tags
    unterminated_reasoning: bool = False  # a <think> opened and never closed


@dataclass(frozen=True)
class OffloadReport:
    requested: GpuSetting
    n_gpu_layers: int
    n_layers: int
    backend: str  # "CPU", "CUDA", "Metal", ...
    fallback_reason: str | None = None

    def describe(self) -> str:
        """What happened, in the words the status bar shows."""
        if self.fallback_reason:
            return f"CPU ({self.backend} failed: {self.fallback_reason}; retried on CPU)"
        if self.n_gpu_layers == 0:
            if self.backend == "CPU":
                return "CPU (this build has no GPU offload)"
            return f"CPU (offload off; this build has {self.backend})"
        return f"{self.backend}: {min(self.n_gpu_layers, self.n_layers)} of {self.n_layers} layers"
