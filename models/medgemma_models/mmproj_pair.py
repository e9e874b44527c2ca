"""Does an mmproj (vision tower) belong to a text model? Checked from both headers, before llama.cpp loads them.

llama.cpp's own check says only "mismatch between text model (n_embd) and mmproj (n_embd)", and
only for a width mismatch. Here a mismatch is one sentence naming both files, and files this
project wrote are also compared by what they were made from: the same base, the same adapters.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelFileError
from .gguf_info import CLIP_ARCHITECTURE, ModelInfo, read_model_info


def check_pair(model: Path | ModelInfo, mmproj: Path | ModelInfo) -> None:
    """Raise ModelFileError unless `mmproj` is an mmproj that fits the text model `model`."""
    text = model if isinstance(model, ModelInfo) else read_model_info(model)
    vision = mmproj if isinstance(mmproj, ModelInfo) else read_model_info(mmproj)
    if vision.architecture != CLIP_ARCHITECTURE or vision.vision.get("type") not in (None, "mmproj"):
        raise ModelFileError(f"{vision.path.name} is not an mmproj file (its architecture is {vision.architecture})")
    if not text.is_gemma:
        raise ModelFileError(f"{text.path.name} is not a Gemma text model (its architecture is {text.architecture})")
    width, projected = text.embedding_length, vision.vision.get("projection_dim")
    if width is not None and projected is not None and width != projected:
        raise ModelFileError(
            f"{vision.path.name} projects images for a text model {projected} wide, but {text.path.name} is {width} "
            "wide: they are not from the same model")
    text_prov, vision_prov = text.typed_provenance(), vision.typed_provenance()
    if text_prov.base and vision_prov.base and text_prov.base != vision_prov.base:
        raise ModelFileError(
            f"{vision.path.name} was made from the base {vision_prov.base}, {text.path.name} from {text_prov.base}")
    if text_prov.base and vision_prov.base and _hashes(text) != _hashes(vision):
        raise ModelFileError(
            f"{vision.path.name} and {text.path.name} were merged with different adapters "
            f"({_describe(vision)} against {_describe(text)}); convert them together")


def _hashes(info: ModelInfo) -> tuple[tuple[str | None, float], ...]:
    return tuple((a.sha256, a.scale) for a in info.typed_provenance().adapters)


def _describe(info: ModelInfo) -> str:
    adapters = info.typed_provenance().adapters
    return ", ".join(a.id for a in adapters) if adapters else "none"
