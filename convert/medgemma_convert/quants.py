"""Output types asked for on the command line, and the file names they are written to.

The table of types itself is shared with the app: `medgemma_models.quants`.
"""

from __future__ import annotations

from pathlib import Path

from medgemma_models.errors import ConversionError
from medgemma_models.quants import LLAMA_FTYPES, UNQUANTIZED, VALID

__all__ = ["LLAMA_FTYPES", "UNQUANTIZED", "VALID", "intermediate_type", "output_paths", "parse_quants"]

def parse_quants(text: str | None) -> tuple[str, ...]:
    """'f16,q8_0' -> ('f16', 'q8_0'); unknown names are refused with the list of valid ones."""
    names = [n.strip().lower() for n in (text or "f16").split(",") if n.strip()]
    if not names:
        raise ConversionError(f"no output type given; valid: {', '.join(VALID)}")
    for name in names:
        if name not in VALID:
            raise ConversionError(f"unknown quantization {name!r}; valid: {', '.join(VALID)}")
    return tuple(dict.fromkeys(names))  # keep order, drop repeats


def output_paths(out: Path, quants: tuple[str, ...]) -> dict[str, Path]:
    """One quant writes exactly OUT; several write OUT-<quant>.gguf beside it (model.gguf -> model-q8_0.gguf)."""
    if len(quants) == 1:
        return {quants[0]: out}
    stem = out.name[: -len(".gguf")] if out.name.endswith(".gguf") else out.name
    return {q: out.with_name(f"{stem}-{q}.gguf") for q in quants}


def intermediate_type(quants: tuple[str, ...]) -> str:
    """The unquantized type our writer produces: the first one asked for, else f32 as a temporary source."""
    for q in quants:
        if q in UNQUANTIZED:
            return q
    return "f32"
