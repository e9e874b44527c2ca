"""`medgemma-convert lora --verify`: the base in llama.cpp with the GGUF adapter on top, against
transformers with the PEFT adapters merged, on the same evaluation text as merged exports."""

from __future__ import annotations

import tempfile
from pathlib import Path

from . import CONVERTER_ID
from .gguf_export import Provenance, write_gguf
from .plan import LoraPlan
from .progress import Progress, no_progress
from .verify import VerifyFigures, default_eval_text, verify_outputs


def verify_lora(plan: LoraPlan, progress: Progress = no_progress) -> VerifyFigures:
    """Figures of base + the written adapter file (at scale 1) against base + PEFT adapters in float32.

    A Hugging Face base is exported to a temporary f16 GGUF first (llama.cpp needs one); a GGUF
    base is used as it is, so its own quantization error is part of the figures.
    """
    path = plan.options.eval_text
    text = path.read_text(encoding="utf-8") if path is not None else default_eval_text()
    references = [(a.folder, a.scale) for a in plan.adapters]
    with tempfile.TemporaryDirectory(prefix="medgemma-lora-verify-", dir=plan.options.out.parent) as tmp:
        base_gguf = plan.base.path
        if plan.base.kind != "gguf":
            base_gguf = Path(tmp) / "base-f16.gguf"
            provenance = Provenance(name=plan.base.id, license=None, base=plan.base.id, adapters=(), preset=None,
                                    converter=CONVERTER_ID)
            write_gguf(plan.base, (), base_gguf, "f16", provenance, progress)
        figures = verify_outputs(plan.base.path, references, [base_gguf], text, progress, lora=plan.options.out)
        return figures[str(base_gguf)]
