"""Which vision projector (mmproj) goes with a model file, found the way users ship them.

llama.cpp's releases and LM Studio keep the projector beside the model as `mmproj-*.gguf`; this
converter writes `mmproj-<model name>.gguf` and records the base it was made from. A candidate is
taken only when `mmproj_pair.check_pair` finds it fits the model (width, base, adapters).
"""

from __future__ import annotations

from pathlib import Path

from medgemma_models.errors import MedGemmaError
from medgemma_models.gguf_info import CLIP_ARCHITECTURE, ModelInfo, read_model_info
from medgemma_models.mmproj_pair import check_pair

MMPROJ_PREFIX = "mmproj"


def is_mmproj_name(path: Path) -> bool:
    return path.name.lower().startswith(MMPROJ_PREFIX) and path.suffix.lower() == ".gguf"


def is_mmproj(info: ModelInfo) -> bool:
    return info.architecture == CLIP_ARCHITECTURE


def find_mmproj(model: Path, info: ModelInfo | None = None) -> Path | None:
    """The projector beside `model` (whose header is `info`, if read already) that fits it:
    `mmproj-<stem>.gguf` first, then any other `mmproj*.gguf`."""
    model = Path(model)
    folder = model.parent
    own = folder / f"{MMPROJ_PREFIX}-{model.stem}.gguf"
    others = sorted(p for p in folder.glob("*.gguf") if is_mmproj_name(p) and p != own)
    for candidate in ([own] if own.is_file() else []) + others:
        try:
            check_pair(info if info is not None else model, candidate)
        except MedGemmaError:
            continue
        return candidate
    return None


def find_model(mmproj: Path) -> Path | None:
    """The text model beside `mmproj` that it fits: the one it is named after first."""
    folder = mmproj.parent
    named = folder / f"{mmproj.stem[len(MMPROJ_PREFIX):].lstrip('-_')}.gguf"
    others = sorted(p for p in folder.glob("*.gguf") if not is_mmproj_name(p) and p != named)
    for candidate in ([named] if named.is_file() else []) + others:
        try:
            if not read_model_info(candidate).is_gemma:
                continue
            check_pair(candidate, mmproj)
        except MedGemmaError:
            continue
        return candidate
    return None
