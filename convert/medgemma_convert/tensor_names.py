"""Hugging Face tensor names of Gemma checkpoints and adapters -> GGUF tensor names."""

from __future__ import annotations

import gguf

ARCHES = {"gemma3": gguf.MODEL_ARCH.GEMMA3, "gemma2": gguf.MODEL_ARCH.GEMMA2}

# A Gemma-3 multimodal checkpoint nests the language model under one of these prefixes
# (the first from transformers < 4.52, the second after).
_LANGUAGE_MODEL_PREFIXES = ("language_model.model.", "model.language_model.")
_SKIPPED_PREFIXES = (
    "vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.",
)
_TIED_OUTPUT = ("lm_head.weight", "language_model.lm_head.weight")


def text_model_name(hf_name: str) -> str | None:
    """'model.language_model.layers.0.x' -> 'model.layers.0.x'; None for tensors the text model does not use."""
    if hf_name in _TIED_OUTPUT or hf_name.startswith(_SKIPPED_PREFIXES):
        return None  # Gemma ties the output to the embeddings; vision parts are not exported
    for prefix in _LANGUAGE_MODEL_PREFIXES:
        if hf_name.startswith(prefix):
            return "model." + hf_name[len(prefix):]
    return hf_name


class NameMap:
    """Maps (text-model) Hugging Face names of one architecture onto GGUF names."""

    def __init__(self, arch: str, n_blocks: int) -> None:
        self.arch = arch
        self._map = gguf.get_tensor_name_map(ARCHES[arch], n_blocks)

    def gguf_name(self, hf_name: str) -> str | None:
        name = text_model_name(hf_name)
        if name is None:
            return None
        return self._map.get_name(name, try_suffixes=(".weight", ".bias"))


def is_norm(hf_name: str) -> bool:
    """Gemma's RMSNorm computes x * (1 + w): these weights get +1 on export."""
    return hf_name.endswith("norm.weight")
