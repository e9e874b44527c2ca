"""`medgemma-desktop --self-test`: load a model and generate, with no window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medgemma_models import store
from medgemma_models.catalog import get_preset
from medgemma_models.prompt import Turn

from .engine import Engine
from .settings import LoadParams, SamplingParams

SELF_TEST_QUESTION = "A 58-year-old man has crushing chest pain radiating to his left arm. What is the most likely diagnosis?"
SELF_TEST_TOKENS = 64


def run_self_test(model: Path | None = None, gpu: str | int = "auto", n_ctx: int = 2048) -> dict[str, Any]:
    """Greedy generation of a fixed number of tokens from a fixed medical prompt."""
    path = Path(model) if model else store.default_model()
    engine = Engine()
    offload = engine.load(path, LoadParams(n_ctx=n_ctx, gpu=gpu))
    try:
        prompt = get_preset("gemma-chat").build_prompt([Turn("user", SELF_TEST_QUESTION)])
        # A greedy run that ignores end-of-turn would need a model-specific hack; instead the
        # figures say how many tokens were really generated.
        settings = SamplingParams(temperature=0.0, top_k=1, top_p=1.0, max_tokens=SELF_TEST_TOKENS)
        answer = "".join(engine.stream(prompt, settings))
        stats = engine.last_stats
        info = engine.info
        assert stats is not None and info is not None
        return {
            "model": str(path),
            "name": info.name,
            "architecture": info.architecture,
            "file_type": info.file_type,
            "bits_per_weight": round(info.bits_per_weight, 3),
            "gpu_offload_supported": offload.backend != "CPU",
            "backend": offload.backend,
            "n_gpu_layers": offload.n_gpu_layers,
            "offload": offload.describe(),
            "prompt_tokens": stats.prompt_tokens,
            "generated_tokens": stats.generated_tokens,
            "finish_reason": stats.finish_reason,
            "ttft_ms": round(stats.ttft_ms, 1),
            "decode_tok_per_s": round(stats.decode_tok_per_s, 2),
            "answer": answer,
        }
    finally:
        engine.close()
