"""What each output will take on disk, and the conversion in memory, from the tensor shapes alone.

Unquantized outputs and the mmproj are sized with our writers' own per-tensor types, so only the
metadata is guessed. A quantized output follows llama.cpp's choices as far as they are simple
rules: the file type's main type; the output matrix (or a tied embedding) in Q6_K; attn_v and
ffn_down one type up in the _M and _L mixes; and a row that is not a whole number of blocks falls
back to the type llama.cpp picks (Gemma's 640-wide rows for the K types). It is an estimate, within
a few percent on the files measured in tests/convert/test_space.py; reports give the real size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import gguf

from .gguf_export import tensor_nbytes, tensor_type
from .quantize import QuantRecipe

Shapes = Iterable[tuple[str, tuple[int, ...]]]  # (GGUF name, numpy shape)

_OUTPUT, _EMBEDDING = "output.weight", "token_embd.weight"
# attn_v and ffn_down one type up in llama.cpp's mixes: in the layers `_more_bits` picks for the
# _M mixes of Q4_K and Q5_K (about half), in every layer here for Q3_K's (an upper bound).
_RAISED = {"q4_k_m": "q6_k", "q5_k_m": "q6_k", "q3_k_m": "q4_k", "q3_k_l": "q5_k"}
_SOME_LAYERS = ("q4_k_m", "q5_k_m")
# llama.cpp's choice when a row is not a whole number of the type's blocks.
_FALLBACK = {"q2_k": "iq4_nl", "q3_k": "iq4_nl", "iq4_xs": "iq4_nl", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}
# The header: per token of the vocabulary its string, score and type (25 bytes on Gemma's, measured
# on the 270M's file), per tensor its name, shape, type, offset and alignment, and the other keys.
_PER_TOKEN, _PER_TENSOR, _FIXED = 25, 64, 1 << 12
# Python with numpy, gguf-py and llama.cpp loaded (70 MB measured), with room; the merge's row blocks.
_RUNTIME, _ROW_BLOCKS = 150_000_000, 32_000_000


def unquantized_bytes(tensors: Shapes, out_type: str, vocab_size: int) -> int:
    """An f32, f16 or bf16 GGUF from our writer."""
    tensors = list(tensors)
    body = sum(tensor_nbytes(shape, tensor_type(name, shape, out_type)) for name, shape in tensors)
    return body + metadata_bytes(vocab_size, len(tensors))


def quantized_bytes(tensors: Shapes, quant: str, recipe: QuantRecipe, vocab_size: int) -> int:
    """A GGUF written by llama.cpp's quantizer with `recipe`."""
    tensors = list(tensors)
    names = {name for name, _ in tensors}
    output = _OUTPUT if _OUTPUT in names or recipe.untied else _EMBEDDING
    if recipe.untied and _OUTPUT not in names:
        tensors += [(_OUTPUT, shape) for name, shape in tensors if name == _EMBEDDING]
    main = _main_type(recipe.ftype)
    n_layers = sum(1 for name, _ in tensors if re.fullmatch(r"blk\.\d+\.attn_v\.weight", name))
    total = metadata_bytes(vocab_size, len(tensors))
    for name, shape in tensors:
        if len(shape) <= 1 or name.endswith("_norm.weight"):
            total += tensor_nbytes(shape, gguf.GGMLQuantizationType.F32)
            continue
        type_name = next((t for pattern, t in recipe.tensor_types if re.search(pattern, name)), None)
        if type_name is None and name == output:
            type_name = recipe.output_type or ("q8_0" if main == "q8_0" else "q6_k")
        elif type_name is None and name == _EMBEDDING:
            type_name = recipe.embedding_type or main
        elif type_name is None and (layer := re.match(r"blk\.(\d+)\.(attn_v|ffn_down)\.", name)):
            raised = quant in _RAISED and (quant not in _SOME_LAYERS or _more_bits(int(layer[1]), n_layers))
            type_name = _RAISED[quant] if raised else main
        total += tensor_nbytes(shape, _fitting(type_name or main, shape[-1]))
    return total


def peak_bytes(tensors: Shapes, quantized: bool) -> int:
    """The conversion's expected peak resident memory. The merge streams blocks of rows, so only
    llama.cpp's quantizer holds a whole tensor: its largest one in float32, read from the mapped source.
    Measured on two layers of MedGemma-27B's widths (tests/convert/test_space.py)."""
    largest = max((4 * math.prod(shape) for _, shape in tensors), default=0)
    return _RUNTIME + (largest if quantized else _ROW_BLOCKS)


def metadata_bytes(vocab_size: int, n_tensors: int) -> int:
    return _FIXED + _PER_TOKEN * vocab_size + _PER_TENSOR * n_tensors


def _more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third between."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def _main_type(ftype: str) -> str:
    """'LLAMA_FTYPE_MOSTLY_Q4_K_M' -> 'q4_k'."""
    name = ftype.removeprefix("LLAMA_FTYPE_MOSTLY_").lower()
    return name[:4] if re.fullmatch(r"q\d_k_[sml]", name) else name


def _fitting(type_name: str, columns: int) -> gguf.GGMLQuantizationType:
    while columns % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name.upper()]][0]:
        type_name = _FALLBACK.get(type_name, "f16")
    return gguf.GGMLQuantizationType[type_name.upper()]
