"""Writing the merged model as an unquantized GGUF (f32, f16 or bf16), streaming tensor by tensor.

Metadata follows llama.cpp's own converter (`convert_hf_to_gguf.py`, Gemma2Model / Gemma3Model):
the same keys and values, so every runtime reads our files as it reads theirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from medgemma_models.errors import ConversionError
from medgemma_models.provenance import KEY_ADAPTERS, KEY_BASE, KEY_CONVERTER, KEY_PRESET, PREFIX
from medgemma_models.gguf_compat import BulkArrayWriter

from . import casts
from .adapter import ResolvedAdapter
from .base import ResolvedBase
from .merge import RowBlocks, merged_tensors
from .progress import Progress

FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}
TENSOR_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
}
# Default swa patterns llama.cpp assumes when the file does not say (every 6th / every 2nd layer global).
_SWA_PERIOD = {"gemma3": 6, "gemma2": 2}
# The local (sliding-window) RoPE base llama.cpp assumes for Gemma-3 when the file does not say.
_LLAMA_DEFAULT_SWA_THETA = 10_000.0
_F16_EXPONENT = 0x7C00


@dataclass(frozen=True)
class Provenance:
    name: str
    license: str | None
    base: str
    adapters: tuple[dict[str, Any], ...]
    preset: str | None
    converter: str


def write_gguf(base: ResolvedBase, adapters: tuple[ResolvedAdapter, ...], path: Path, out_type: str,
               provenance: Provenance, progress: Progress) -> None:
    """Write the merged model to `path` in `out_type` ("f32", "f16" or "bf16")."""
    # A GGUF base is opened in full once, here: its metadata arrays are copied and its tensors merged.
    gguf_base = gguf.GGUFReader(base.path) if base.kind == "gguf" else None
    writer = BulkArrayWriter(None, base.arch)
    try:
        _add_metadata(writer, base, out_type, provenance, gguf_base)
        types = {}
        for t in base.tensors:
            qtype = tensor_type(t.name, t.shape, out_type)
            types[t.name] = qtype
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), tensor_nbytes(t.shape, qtype), raw_dtype=qtype)
        writer.write_header_to_file(path=path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = len(base.tensors)
        progress(f"export {out_type}", 0, total)
        for done, (tensor, data) in enumerate(merged_tensors(base, adapters, gguf_base), start=1):
            qtype = types[tensor.name]
            if isinstance(data, RowBlocks):
                writer.write_tensor_data(_Streamed(data, qtype, tensor_nbytes(tensor.shape, qtype), tensor.source))  # type: ignore[arg-type]
            else:
                writer.write_tensor_data(encode_tensor(data, qtype, tensor.source))
            progress(f"export {out_type}", done, total)
    finally:
        writer.close()


def tensor_type(name: str, shape: tuple[int, ...], out_type: str) -> gguf.GGMLQuantizationType:
    # llama.cpp keeps 1-D tensors and norms in F32: most kernels only take F32 for them.
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    return TENSOR_TYPES[out_type]


def encode_tensor(data: np.ndarray, qtype: gguf.GGMLQuantizationType, name: str,
                  overflow_hint: str = "export bf16 or f32 instead") -> np.ndarray:
    """The float32 tensor's bytes in `qtype`, rounded to nearest even as ggml does (f32, f16, bf16 or
    one of gguf-py's quantizations); `overflow_hint` says what to pass instead when f16 overflows."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        encoded = casts.f32_to_f16(data)
        # The merge let only finite values through: an all-ones exponent here is an overflow to infinity.
        if ((encoded.view(np.uint16) & _F16_EXPONENT) == _F16_EXPONENT).any():
            raise ConversionError(f"{name} has values beyond float16's range (±65504); {overflow_hint}")
        return encoded
    if qtype == gguf.GGMLQuantizationType.BF16:
        return casts.f32_to_bf16(data)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


class _Streamed:
    """Stands in for the array GGUFWriter.write_tensor_data writes (it needs .nbytes and .tofile),
    converting and writing one block of rows at a time."""

    def __init__(self, blocks: RowBlocks, qtype: gguf.GGMLQuantizationType, nbytes: int, name: str) -> None:
        self.blocks, self.qtype, self.nbytes, self.name = blocks, qtype, nbytes, name

    def tofile(self, fout: Any) -> None:
        for block in self.blocks:
            encode_tensor(block, self.qtype, self.name).tofile(fout)


def tensor_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def _add_metadata(writer: gguf.GGUFWriter, base: ResolvedBase, out_type: str, prov: Provenance,
                  gguf_base: gguf.GGUFReader | None) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(prov.name)
    n_params = sum(int(np.prod(t.shape)) for t in base.tensors)
    writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    if prov.license:
        writer.add_license(prov.license)
    if gguf_base is not None:
        _copy_gguf_metadata(writer, gguf_base)
    else:
        _add_hparams(writer, base)
        assert base.vocab is not None
        base.vocab.add_to(writer)
    writer.add_file_type(FILE_TYPES[out_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(KEY_BASE, prov.base)
    writer.add_string(KEY_ADAPTERS, json.dumps(list(prov.adapters)))
    if prov.preset:
        writer.add_string(KEY_PRESET, prov.preset)
    writer.add_string(KEY_CONVERTER, prov.converter)


def rope_settings(h: dict[str, Any], arch: str) -> tuple[float, float, dict[str, Any]]:
    """(global theta, local theta, global scaling) from old-style or transformers-5-style configs."""
    params = h.get("rope_parameters") or h.get("rope_scaling") or {}
    default_global = 1_000_000.0 if arch == "gemma3" else 10_000.0
    local_default = float(h.get("rope_local_base_freq", 10_000.0))
    if "full_attention" in params or "sliding_attention" in params:
        full, sliding = params.get("full_attention", {}), params.get("sliding_attention", {})
        return (float(full.get("rope_theta", h.get("rope_theta", default_global))),
                float(sliding.get("rope_theta", local_default)), full)
    return float(params.get("rope_theta", h.get("rope_theta", default_global))), local_default, params


def _add_hparams(writer: gguf.GGUFWriter, base: ResolvedBase) -> None:
    h, arch = base.hparams, base.arch
    head_dim = int(h.get("head_dim", 256))
    n_layers = int(h["num_hidden_layers"])
    writer.add_block_count(n_layers)
    writer.add_context_length(int(h.get("max_position_embeddings", 131072 if arch == "gemma3" else 8192)))
    writer.add_embedding_length(int(h["hidden_size"]))
    writer.add_feed_forward_length(int(h["intermediate_size"]))
    writer.add_head_count(int(h.get("num_attention_heads", 8)))
    writer.add_head_count_kv(int(h.get("num_key_value_heads", 4)))
    global_theta, local_theta, scaling = rope_settings(h, arch)
    if scaling.get("rope_type", scaling.get("type")) == "linear" and scaling.get("factor"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    writer.add_rope_freq_base(global_theta)
    if arch == "gemma3" and local_theta != _LLAMA_DEFAULT_SWA_THETA:
        writer.add_rope_freq_base_swa(local_theta)  # written only when it is not llama.cpp's default
    writer.add_layer_norm_rms_eps(float(h.get("rms_norm_eps", 1e-6)))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(float(h.get("attn_logit_softcapping") or 50.0))
        writer.add_final_logit_softcapping(float(h.get("final_logit_softcapping") or 30.0))
    elif h.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(h["final_logit_softcapping"]))
    if arch == "gemma2" or h.get("sliding_window_pattern") != 1:
        writer.add_sliding_window(int(h.get("sliding_window", 4096)))
        pattern = _swa_pattern(h, n_layers)
        period = _SWA_PERIOD[arch]
        if pattern is not None and pattern != [i % period < period - 1 for i in range(n_layers)]:
            writer.add_sliding_window_pattern(pattern)  # only when it differs from llama.cpp's default


def _swa_pattern(h: dict[str, Any], n_layers: int) -> list[bool] | None:
    layer_types = h.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == n_layers:
        return [t == "sliding_attention" for t in layer_types]
    period = h.get("sliding_window_pattern")
    if isinstance(period, int) and period > 1:
        return [i % period < period - 1 for i in range(n_layers)]
    return None


_NOT_COPIED = ("GGUF.", "general.", PREFIX)


def _copy_gguf_metadata(writer: gguf.GGUFWriter, reader: gguf.GGUFReader) -> None:
    """Architecture and tokenizer keys of a GGUF base, as they are (its own general.* are replaced)."""
    for field in reader.fields.values():
        if field.name.startswith(_NOT_COPIED):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type)
