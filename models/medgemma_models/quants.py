"""The output types a conversion can write: one table, read by the converter and the app.

Each row is a name users type, the llama.cpp file type it maps to (None: written by our own
GGUF writer, no llama.cpp pass) and whether the app's Convert… dialog offers it. llama.cpp
itself picks per-tensor types within each file type (Q4_K_M keeps some tensors in Q6_K, and
rows not a multiple of 256 fall back), so reports give the real bits per weight.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuantType:
    name: str  # what users type: "q4_k_m"
    llama_ftype: str | None  # llama_cpp constant; None: unquantized, written by our GGUF writer
    offered: bool = False  # a checkbox in the app's Convert… dialog
    checked: bool = False  # checked there by default
    # A recipe on top of the file type (ggml type names): the output matrix's type, the token
    # embedding's (a different one unties them: a separate output matrix is written), and
    # (regex on GGUF tensor names, type) overrides.
    output_type: str | None = None
    embedding_type: str | None = None
    tensor_types: tuple[tuple[str, str], ...] = ()

    @property
    def unquantized(self) -> bool:
        return self.llama_ftype is None


QUANT_TYPES: tuple[QuantType, ...] = (
    QuantType("f32", None),
    QuantType("f16", None, offered=True),
    QuantType("bf16", None),
    QuantType("q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0", offered=True, checked=True),
    QuantType("q6_k", "LLAMA_FTYPE_MOSTLY_Q6_K", offered=True),
    QuantType("q5_k_m", "LLAMA_FTYPE_MOSTLY_Q5_K_M", offered=True),
    QuantType("q5_k_s", "LLAMA_FTYPE_MOSTLY_Q5_K_S"),
    QuantType("q5_1", "LLAMA_FTYPE_MOSTLY_Q5_1"),
    QuantType("q5_0", "LLAMA_FTYPE_MOSTLY_Q5_0"),
    QuantType("q4_k_m", "LLAMA_FTYPE_MOSTLY_Q4_K_M", offered=True, checked=True),
    QuantType("q4_k_s", "LLAMA_FTYPE_MOSTLY_Q4_K_S"),
    # Chosen from a measured sweep (README, "Quantization"): the output matrix is most of the
    # work per token, and IQ4_NL reads about half of Q8_0's bytes; the rest as Q6_K, which on
    # Gemma's 640-wide rows falls back to Q8_0, whose kernels decode faster on a CPU than the
    # Q5_0/Q5_1 fallbacks of Q4_K/Q5_K. The embedding's lookups keep Q8_0 (a separate output
    # matrix). With --imatrix auto its KLD is below q4_k_m's.
    QuantType("q4_speed", "LLAMA_FTYPE_MOSTLY_Q6_K", output_type="iq4_nl", embedding_type="q8_0", offered=True),
    QuantType("q4_1", "LLAMA_FTYPE_MOSTLY_Q4_1"),
    QuantType("q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0"),
    QuantType("iq4_nl", "LLAMA_FTYPE_MOSTLY_IQ4_NL"),
    QuantType("iq4_xs", "LLAMA_FTYPE_MOSTLY_IQ4_XS"),
    QuantType("q3_k_l", "LLAMA_FTYPE_MOSTLY_Q3_K_L"),
    QuantType("q3_k_m", "LLAMA_FTYPE_MOSTLY_Q3_K_M"),
    QuantType("q3_k_s", "LLAMA_FTYPE_MOSTLY_Q3_K_S"),
    QuantType("q2_k", "LLAMA_FTYPE_MOSTLY_Q2_K"),
)

BY_NAME = {q.name: q for q in QUANT_TYPES}
VALID = tuple(BY_NAME)
UNQUANTIZED = tuple(q.name for q in QUANT_TYPES if q.unquantized)
LLAMA_FTYPES = {q.name: q.llama_ftype for q in QUANT_TYPES if q.llama_ftype is not None}
OFFERED = tuple(q.name for q in QUANT_TYPES if q.offered)
CHECKED = tuple(q.name for q in QUANT_TYPES if q.checked)

# Types a tensor can be given with --output-type, --embedding-type and --tensor-type: those
# llama.cpp quantizes to without an importance matrix being required.
TENSOR_TYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0",
                "iq4_nl", "iq4_xs", "q3_k", "q2_k")
