"""PEFT LoRA adapters as one GGUF adapter file in llama.cpp's runtime format, unmerged.

llama.cpp adds `scale * alpha / rank * B @ A` for each tensor pair `<base name>.lora_a` (ggml shape
[n_in, r]) and `.lora_b` ([r, n_out]), with one `adapter.lora.alpha` for the whole file and `rank`
read from each lora_b. PEFT's own factor is `alpha_m / r_m` per module (`/ sqrt(r_m)` with rsLoRA,
`rank_pattern` / `alpha_pattern` per module), times the user's scale. Several adapters on one
tensor become one pair whose ranks are concatenated (B_1 A_1 + B_2 A_2 = [B_1 B_2] [A_1; A_2]).
Whatever llama.cpp's single factor cannot say is folded into each adapter's block of lora_b, so that
at runtime scale 1 the file adds exactly PEFT's deltas. A plain single adapter is written as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from medgemma_models import provenance
from medgemma_models.files import atomic_output, sha256_file
from medgemma_models.report import ConversionReport, OutputRecord, StageRecord

from . import CONVERTER_ID
from .adapter import LoraTarget, ResolvedAdapter
from .gguf_export import encode_tensor
from .lora_verify import verify_lora
from .plan import LoraPlan
from .progress import Progress, no_progress
from .report import StageRecorder, describe_output

_Q8_BLOCK = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]


def runtime_scale(alpha: float, rank: int) -> float:
    """The factor llama.cpp gives B @ A at adapter scale 1 (with alpha 0 it uses the scale alone)."""
    return alpha / rank if alpha else 1.0


def lora_pairs(plan: LoraPlan) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(base tensor name, A [rank, n_in], B [n_out, rank]) in float32, in the base's tensor order."""
    by_tensor: dict[str, list[tuple[ResolvedAdapter, LoraTarget]]] = {}
    for adapter in plan.adapters:
        for target in adapter.targets:
            by_tensor.setdefault(target.name, []).append((adapter, target))
    pairs = []
    for tensor in plan.base.tensors:
        parts = by_tensor.get(tensor.name)
        if not parts:
            continue
        rank = sum(target.rank for _, target in parts)
        given = runtime_scale(plan.alpha, rank)
        a = np.concatenate([target.a.read_rows() for _, target in parts], axis=0)
        blocks = []
        for adapter, target in parts:
            b = target.b.read_rows()
            fold = adapter.factor(target) / given
            blocks.append(b if fold == 1.0 else b * np.float32(fold))
        pairs.append((tensor.name, np.ascontiguousarray(a, dtype=np.float32),
                      np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)))
    return pairs


def write_lora_gguf(plan: LoraPlan, path: Path, progress: Progress = no_progress) -> None:
    """Write the adapter file to `path` (the caller makes it atomic)."""
    pairs = lora_pairs(plan)
    writer = gguf.GGUFWriter(path, plan.base.arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, plan.alpha)
        writer.add_name(plan.name)
        writer.add_file_type(_FILE_TYPES[plan.options.out_type])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string(provenance.KEY_BASE, plan.base.id)
        writer.add_string(provenance.KEY_ADAPTERS, json.dumps(adapter_records(plan)))
        if plan.preset:
            writer.add_string(provenance.KEY_PRESET, plan.preset)
        writer.add_string(provenance.KEY_CONVERTER, CONVERTER_ID)
        progress("export adapter", 0, len(pairs))
        for done, (name, a, b) in enumerate(pairs, 1):
            for suffix, data in ((".lora_a", a), (".lora_b", b)):
                qtype = _tensor_type(data, plan.options.out_type)
                writer.add_tensor(name + suffix, encode_tensor(data, qtype, name + suffix, "export f32 instead"),
                                  raw_dtype=qtype)
            progress("export adapter", done, len(pairs))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def adapter_records(plan: LoraPlan) -> list[dict[str, Any]]:
    """medgemma.adapters: each adapter's identity, with the base it names in its config."""
    records = []
    for adapter in plan.adapters:
        record = adapter.provenance()
        if adapter.base_model:
            record["base"] = adapter.base_model
        records.append(record)
    return records


_FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
               "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


def _tensor_type(data: np.ndarray, out_type: str) -> gguf.GGMLQuantizationType:
    # Q8_0 needs rows that are whole blocks of 32: lora_b's rows are only `rank` long, so, as in
    # llama.cpp's converter, such tensors stay in F16.
    if out_type == "q8_0" and data.shape[-1] % _Q8_BLOCK == 0:
        return gguf.GGMLQuantizationType.Q8_0
    if out_type == "f32":
        return gguf.GGMLQuantizationType.F32
    return gguf.GGMLQuantizationType.F16


def export_lora(plan: LoraPlan, progress: Progress = no_progress) -> ConversionReport:
    """Write the adapter file atomically, verify it if asked; returns the report."""
    recorder = StageRecorder()
    out = plan.options.out
    with recorder.stage(f"export adapter {plan.options.out_type}"), atomic_output(out, plan.options.force) as partial:
        write_lora_gguf(plan, partial, progress)
    output = describe_output(out, plan.options.out_type, sha256_file(out))
    if plan.options.verify:
        with recorder.stage("verify"):
            output["verification"] = verify_lora(plan, progress).to_dict()
    return ConversionReport(
        converter=CONVERTER_ID,
        inputs={
            "base": {"id": plan.base.id, "kind": plan.base.kind, "path": str(plan.base.path), "architecture": plan.base.arch},
            "adapters": adapter_records(plan),
            "preset": plan.preset,
            "name": plan.name,
        },
        outputs=(OutputRecord(**output),),
        warnings=plan.warnings,
        stages=tuple(StageRecord(**stage) for stage in recorder.stages),
        memory_method=recorder.method,
        wall_s=recorder.total_wall(),
        extra={"adapter": {"alpha": plan.alpha}},
    )
