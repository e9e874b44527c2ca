"""Output types: names users type, the llama.cpp file type each maps to, and output file names."""

from __future__ import annotations

from pathlib import Path

from medgemma_models.errors import ConversionError

# Written directly by our GGUF writer (no llama.cpp pass).
UNQUANTIZED = ("f32", "f16", "bf16")

# name -> llama_cpp constant; llama.cpp itself picks per-tensor types within each file type
# (e.g. Q4_K_M keeps some tensors in Q6_K and falls back for rows not a multiple of 256).
LLAMA_FTYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
    "q3_k_l": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}

VALID = UNQUANTIZED + tuple(LLAMA_FTYPES)


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
