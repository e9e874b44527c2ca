"""Writing the vision tower and projector as the "mmproj" GGUF that llama.cpp's mtmd loads beside the text model.

Keys, names and tensor types follow llama.cpp's own converter (`convert_hf_to_gguf.py`,
MmprojModel / Gemma3VisionModel), so that every runtime reads our mmproj as it reads theirs:
`general.architecture = clip`, `general.type = mmproj`, `clip.projector_type = gemma3`, GELU (not
quick-GELU, llama.cpp's fallback), patch and position embeddings, norms and biases in f32, the input
projection in f16 (ggml cannot multiply by it quantized), the rest in the type asked for.

The provenance keys tie the file to its text model: the same `medgemma.base` and adapters, and the
text model's embedding width (`medgemma.text_embedding_length`), which the pair check compares.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
from medgemma_models.errors import ConversionError
from medgemma_models.provenance import (
    KEY_ADAPTERS,
    KEY_BASE,
    KEY_CONVERTER,
    KEY_TEXT_EMBEDDING,
)

from .adapter import ResolvedAdapter
from .gguf_export import Provenance, encode_tensor, tensor_nbytes
from .lora import AdapterWeights
from .options import MMPROJ_TYPES
from .progress import Progress
from .vision import INPUT_PROJECTION, VisionTensor, VisionTower

_FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
               "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_QTYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
           "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}


def mmproj_path(out: Path, explicit: Path | None = None) -> Path:
    """`mmproj-<output name>` beside the text model (llama.cpp's and LM Studio's naming), or the path given."""
    return explicit if explicit is not None else out.with_name(f"mmproj-{out.name}")


def vision_adapters(adapters: tuple[ResolvedAdapter, ...]) -> tuple[ResolvedAdapter, ...]:
    """The adapters with their vision-tower targets in place of their language-model ones."""
    return tuple(replace(a, targets=a.vision_targets) for a in adapters)


def write_mmproj(vision: VisionTower, adapters: tuple[ResolvedAdapter, ...], path: Path, out_type: str,
                 provenance: Provenance, progress: Progress) -> None:
    """Write the vision tower (its adapter deltas merged) and projector to `path` as an mmproj GGUF."""
    if out_type not in MMPROJ_TYPES:
        raise ConversionError(f"unknown mmproj type {out_type!r}; valid: {', '.join(MMPROJ_TYPES)}")
    weights = AdapterWeights(vision_adapters(adapters))
    writer = gguf.GGUFWriter(None, "clip")
    try:
        _add_metadata(writer, vision, out_type, provenance)
        types = {t.name: tensor_type(t, out_type) for t in vision.tensors}
        for t in vision.tensors:
            qtype = types[t.name]
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), tensor_nbytes(t.shape, qtype), raw_dtype=qtype)
        writer.write_header_to_file(path=path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        stage = f"export mmproj {out_type}"
        progress(stage, 0, len(vision.tensors))
        for done, t in enumerate(vision.tensors, start=1):
            data = t.stored.read_rows()
            if not np.isfinite(data).all():
                raise ConversionError(f"the base weight {t.source} in {t.stored.file.name} holds NaN or infinite values")
            if weights.targets(t.name):
                data = weights.apply(t.name, data)
                if not np.isfinite(data).all():
                    raise ConversionError(f"adding the adapters' deltas to {t.source} overflows float32")
            if t.norm_shift:
                data += 1.0  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp by w
            writer.write_tensor_data(encode_tensor(data, types[t.name], t.source, "pass --mmproj-type f32 or bf16"))
            progress(stage, done, len(vision.tensors))
    finally:
        writer.close()


def tensor_type(tensor: VisionTensor, out_type: str) -> gguf.GGMLQuantizationType:
    """The type llama.cpp's converter gives each tensor of a Gemma 3 mmproj."""
    if tensor.name == INPUT_PROJECTION:
        return gguf.GGMLQuantizationType.F16  # llama.cpp issue 13025: mtmd needs it in f16
    if len(tensor.shape) <= 1 or tensor.embedding:
        return gguf.GGMLQuantizationType.F32
    qtype = _QTYPES[out_type]
    if qtype == gguf.GGMLQuantizationType.Q8_0 and tensor.shape[-1] % 32:
        return gguf.GGMLQuantizationType.F16  # q8_0 packs rows in blocks of 32 values
    return qtype


def _add_metadata(writer: gguf.GGUFWriter, vision: VisionTower, out_type: str, prov: Provenance) -> None:
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(prov.name)
    if prov.license:
        writer.add_license(prov.license)
    writer.add_file_type(_FILE_TYPES[out_type])
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(gguf.VisionProjectorType.GEMMA3)
    writer.add_vision_projection_dim(vision.text_hidden_size)
    writer.add_vision_image_size(vision.image_size)
    writer.add_vision_patch_size(vision.patch_size)
    writer.add_vision_embedding_length(vision.hidden_size)
    writer.add_vision_feed_forward_length(vision.intermediate_size)
    writer.add_vision_block_count(vision.n_layers)
    writer.add_vision_head_count(vision.n_heads)
    writer.add_vision_image_mean(list(vision.image_mean))
    writer.add_vision_image_std(list(vision.image_std))
    writer.add_vision_attention_layernorm_eps(vision.layer_norm_eps)
    writer.add_vision_use_gelu(True)  # SigLIP's GELU; without the key llama.cpp uses quick-GELU
    # Written always, though llama.cpp assumes 4 (every Gemma 3) when it is missing: the file says what it is.
    writer.add_vision_projector_scale_factor(vision.scale_factor)
    writer.add_string(KEY_BASE, prov.base)
    writer.add_string(KEY_ADAPTERS, json.dumps(list(prov.adapters)))
    writer.add_uint32(KEY_TEXT_EMBEDDING, vision.text_hidden_size)
    writer.add_string(KEY_CONVERTER, prov.converter)
