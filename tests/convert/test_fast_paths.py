"""The conversion's fast paths give the same bytes as the plain ones they replace.

ggml's float converters instead of numpy's, bulk-packed vocabulary arrays instead of gguf-py's
item-by-item packing, llama.cpp's quantizer in slabs instead of whole tensors, and all quantized
outputs written side by side instead of one after the other.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from medgemma_convert import casts, quantize
from medgemma_convert.gguf_export import BulkArrayWriter
from medgemma_convert.options import ConversionOptions
from medgemma_convert.pipeline import convert
from medgemma_convert.plan import plan
from medgemma_models.errors import ConversionError
from medgemma_models.gguf_info import read_model_info
from medgemma_models.report import ConversionReport


def _floats() -> np.ndarray:
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(3_000_000, dtype=np.float32) * 0.05,  # weights; large enough to be split across threads
        rng.integers(0, 1 << 32, 1_000_000, dtype=np.uint32).view(np.float32),  # any bits: tiny, huge, subnormal
        np.array([0.0, -0.0, 65504.0, 65519.9, 65520.0, np.inf, -np.inf, 2.0**-25, 2.0**-24 * 1.5], np.float32),
    ])
    return values[~np.isnan(values)]  # NaN payloads may differ; NaN stays NaN (asserted below)


def test_ggml_converters_are_loaded_here():
    for conversion in casts.GGML_ROWS:  # otherwise the tests below compare numpy with itself
        assert casts.ggml_row(conversion) is not None, conversion


@pytest.mark.parametrize("use_ggml", [True, False])
def test_float_conversions_round_as_numpy_and_gguf_do(use_ggml, monkeypatch):
    if not use_ggml:
        monkeypatch.setattr(casts, "ggml_row", lambda conversion: None)
    values = _floats()
    with np.errstate(over="ignore"):
        expected_f16 = values.astype(np.float16)
    np.testing.assert_array_equal(casts.f32_to_f16(values).view(np.uint16), expected_f16.view(np.uint16))
    expected_bf16 = gguf.quants.quantize(values, gguf.GGMLQuantizationType.BF16).view(np.uint16)
    np.testing.assert_array_equal(casts.f32_to_bf16(values), expected_bf16)
    np.testing.assert_array_equal(casts.bf16_to_f32(expected_bf16), (expected_bf16.astype(np.uint32) << 16).view(np.float32))
    strided = values[:10].reshape(5, 2).T  # any layout; the shape is kept
    np.testing.assert_array_equal(casts.f32_to_f16(strided), strided.astype(np.float16))
    assert np.isnan(casts.f32_to_f16(np.array([np.nan], np.float32))[0])


def _write_kv(writer_class: type, path: Path) -> bytes:
    writer = writer_class(path, "gemma3")
    tokens = [f"tok{i}".encode() for i in range(5000)] + ["<end_of_turn>".encode(), "▁é".encode()]
    writer.add_token_list(tokens)
    writer.add_array("test.strings", [f"s{i}" for i in range(2000)])
    writer.add_token_scores([-float(i) / 7 for i in range(len(tokens))])
    writer.add_token_types([i % 6 for i in range(len(tokens))])
    writer.add_array("test.bools", [i % 2 == 0 for i in range(2000)])
    writer.add_array("test.short", [1, 2, 3])
    writer.add_key_value("test.u32", list(range(3000)), gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path.read_bytes()


def test_bulk_array_writer_writes_what_gguf_py_writes(tmp_path):
    assert _write_kv(BulkArrayWriter, tmp_path / "bulk.gguf") == _write_kv(gguf.GGUFWriter, tmp_path / "plain.gguf")
    mixed = BulkArrayWriter(tmp_path / "mixed.gguf", "gemma3")
    mixed.add_array("test.mixed", [1] * 1500 + [2.5])  # not one type: gguf-py refuses, and so does the bulk path
    mixed.write_header_to_file()
    with pytest.raises(ValueError, match="same type"):
        mixed.write_kv_data_to_file()
    mixed.close()


def _export(base: Path, out: Path, quant: str, adapters: tuple[str, ...] = ()) -> ConversionReport:
    out.parent.mkdir(parents=True, exist_ok=True)
    options = ConversionOptions.create(base=str(base), out=out, adapters=list(adapters), quant=quant, name="Tiny")
    return convert(plan(options))


def test_quantizing_in_slabs_gives_the_same_file(tiny, tmp_path, monkeypatch):
    source = tmp_path / "tiny-f32.gguf"
    _export(tiny.base("gemma3"), source, "f32")
    outputs = {}
    for slab in (0, 4096):  # 0: llama.cpp's default, whole tensors; 4 KiB: many slabs per tensor
        monkeypatch.setattr(quantize, "SLAB_BYTES", slab)
        for quant in ("q8_0", "q4_k_m"):
            outputs[slab, quant] = tmp_path / f"{quant}-{slab}.gguf"
            quantize.quantize(source, outputs[slab, quant], quant)
    for quant in ("q8_0", "q4_k_m"):
        assert outputs[0, quant].read_bytes() == outputs[4096, quant].read_bytes()


def test_outputs_quantized_side_by_side_equal_those_made_alone(tiny, tmp_path):
    adapter = str(tiny.adapter("gemma3", "all"))
    together = _export(tiny.base("gemma3"), tmp_path / "together" / "m.gguf", "f32,q8_0,q4_k_m", (adapter,))
    assert [s.stage for s in together.stages] == ["merge+export f32", "quantize q8_0+q4_k_m", "hash outputs"]
    for quant in ("q8_0", "q4_k_m"):
        alone = _export(tiny.base("gemma3"), tmp_path / quant / "m.gguf", quant, (adapter,))
        [made_alone] = alone.outputs
        [made_together] = [o for o in together.outputs if o.quant == quant]
        assert made_together.sha256 == made_alone.sha256
        assert Path(made_together.path).read_bytes() == Path(made_alone.path).read_bytes()


def test_quantize_all_reports_progress_per_output(tiny, tmp_path):
    source = tmp_path / "tiny-f32.gguf"
    _export(tiny.base("gemma3"), source, "f32")
    n_tensors = len(gguf.GGUFReader(source).tensors)
    targets = {"q8_0": tmp_path / "a.gguf", "q4_k_m": tmp_path / "b.gguf", "q5_0": tmp_path / "c.gguf"}
    seen: dict[str, list[tuple[int, int]]] = {q: [] for q in targets}
    finished: list[str] = []
    quantize.quantize_all(source, targets, lambda q, done, total: seen[q].append((done, total)), finished.append)
    assert sorted(finished) == sorted(targets)
    for quant, path in targets.items():
        assert read_model_info(path).file_type == quant.upper()
        counts = [c for c in seen[quant] if c != (0, 1)]  # (0, 1): before llama.cpp has logged a tensor
        assert counts[-1] == (n_tensors, n_tensors), counts
        assert all(0 <= done <= total == n_tensors for done, total in counts), counts
        assert [d for d, _ in counts] == sorted(d for d, _ in counts)  # never goes back


def test_quantizer_failure_names_the_output_and_llama_cpp_reason(tiny, tmp_path):
    source = tmp_path / "tiny-f32.gguf"
    _export(tiny.base("gemma3"), source, "f32")
    target = tmp_path / "missing-folder" / "q.gguf"
    with pytest.raises(ConversionError, match=rf"could not write {re.escape(str(target))}: llama.cpp's quantizer failed \(.+\)"):
        quantize.quantize(source, target, "q8_0")


def test_bfloat16_base_round_trips_exactly(tiny, tmp_path):
    """A bf16 checkpoint (as Google releases them) is widened exactly, and written back to bf16 unchanged."""
    import torch
    from safetensors.torch import load_file, save_file

    base = tmp_path / "bf16"
    shutil.copytree(tiny.base("gemma3"), base)
    weights = {k: v.to(torch.bfloat16) for k, v in load_file(base / "model.safetensors").items()}
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    embedding = weights["model.embed_tokens.weight"]

    _export(base, tmp_path / "f32.gguf", "f32")
    _export(base, tmp_path / "bf16.gguf", "bf16")
    f32 = {t.name: t for t in gguf.GGUFReader(tmp_path / "f32.gguf").tensors}["token_embd.weight"]
    bf16 = {t.name: t for t in gguf.GGUFReader(tmp_path / "bf16.gguf").tensors}["token_embd.weight"]
    np.testing.assert_array_equal(np.asarray(f32.data), embedding.float().numpy())
    np.testing.assert_array_equal(np.asarray(bf16.data).view(np.uint16).reshape(embedding.shape),
                                  embedding.view(torch.uint16).numpy())


def test_conversion_does_not_import_torch(tiny, tmp_path):
    """The merge and export run on numpy: torch and friends are loaded only to check the outputs."""
    script = (
        "import json, sys\n"
        "from medgemma_convert.cli import main\n"
        f"code = main(['--base', {str(tiny.base('gemma3'))!r}, '--adapter', {str(tiny.adapter('gemma3', 'qv'))!r},"
        f" '--out', {str(tmp_path / 'm.gguf')!r}, '--quant', 'f16,q8_0', '--no-verify', '--progress', 'none'])\n"
        "heavy = ('torch', 'transformers', 'peft', 'safetensors')\n"
        "print(json.dumps({'code': code, 'loaded': [m for m in heavy if m in sys.modules]}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"code": 0, "loaded": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-f16.gguf", "m-q8_0.gguf"]
