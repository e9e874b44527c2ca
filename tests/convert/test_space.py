"""The plan sizes every output before any work, and refuses what does not fit on the disk.

Estimates are compared with files really written: tiny conversions here, the real 270M's Q4_K_M
as published, and a MedGemma-27B-shaped checkpoint (config and safetensors headers; its data is a
sparse file that holds no blocks) against the published sizes of its GGUFs.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from medgemma_convert.base import resolve_base
from medgemma_convert.options import ConversionOptions
from medgemma_convert.pipeline import convert
from medgemma_convert.plan import plan
from medgemma_convert.quantize import recipes_for
from medgemma_convert.space import peak_bytes, quantized_bytes, unquantized_bytes
from medgemma_models.errors import ConversionError, OutputError
from medgemma_models.files import check_free_space

# google/medgemma-27b-text-it's text config (Gemma 3 27B).
MEDGEMMA_27B = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 5376,
    "intermediate_size": 21504, "num_hidden_layers": 62, "num_attention_heads": 32, "num_key_value_heads": 16,
    "head_dim": 128, "vocab_size": 262208, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "rope_local_base_freq": 10000.0, "sliding_window": 1024,
    "sliding_window_pattern": 6, "query_pre_attn_scalar": 168, "max_position_embeddings": 131072,
    "final_logit_softcapping": None, "attn_logit_softcapping": None, "torch_dtype": "bfloat16",
}


def sparse_checkpoint(folder: Path, config: dict, tokenizer: Path) -> Path:
    """A Hugging Face folder of `config`'s shapes in bf16 whose data is a hole: headers are real, bytes are not."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(tokenizer / "tokenizer.model", folder / "tokenizer.model")
    h, inter, heads, kv, dim = (config[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                    "num_key_value_heads", "head_dim"))
    shapes = {"model.embed_tokens.weight": [config["vocab_size"], h], "model.norm.weight": [h]}
    for i in range(config["num_hidden_layers"]):
        block = f"model.layers.{i}."
        shapes |= {block + "self_attn.q_proj.weight": [heads * dim, h], block + "self_attn.k_proj.weight": [kv * dim, h],
                   block + "self_attn.v_proj.weight": [kv * dim, h], block + "self_attn.o_proj.weight": [h, heads * dim],
                   block + "self_attn.q_norm.weight": [dim], block + "self_attn.k_norm.weight": [dim],
                   block + "mlp.gate_proj.weight": [inter, h], block + "mlp.up_proj.weight": [inter, h],
                   block + "mlp.down_proj.weight": [h, inter]}
        shapes |= {block + norm + ".weight": [h] for norm in ("input_layernorm", "post_attention_layernorm",
                                                              "pre_feedforward_layernorm", "post_feedforward_layernorm")}
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    with open(folder / "model.safetensors", "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        out.truncate(8 + len(encoded) + offset)
    return folder


def test_a_27b_shaped_plan_sizes_its_outputs_before_any_work(tiny, tmp_path: Path) -> None:
    base = resolve_base(str(sparse_checkpoint(tmp_path / "medgemma-27b", MEDGEMMA_27B, tiny.tokenizer)))
    shapes = [(t.name, t.shape) for t in base.tensors]
    parameters = sum(math.prod(shape) for _, shape in shapes)
    assert 27.0e9 < parameters < 27.1e9
    vocab = MEDGEMMA_27B["vocab_size"]
    f16 = unquantized_bytes(shapes, "f16", vocab)
    assert abs(f16 - 2 * parameters) < 0.001 * f16
    recipes = recipes_for(("q8_0", "q4_k_m"))
    # Published GGUFs of medgemma-27b-text-it (llama.cpp's own quantizer): Q8_0 28.7 GB, Q4_K_M 16.5 GB,
    # rounded to 0.1 GB (measured: 0.03% and 0.3% off).
    assert abs(quantized_bytes(shapes, "q8_0", recipes["q8_0"], vocab) - 28.7e9) < 0.02 * 28.7e9
    assert abs(quantized_bytes(shapes, "q4_k_m", recipes["q4_k_m"], vocab) - 16.5e9) < 0.02 * 16.5e9
    # The plan's memory: the runtime and the largest tensor (the embedding) in float32, not the model.
    assert peak_bytes(shapes, quantized=True) < 6e9 and peak_bytes(shapes, quantized=False) < 0.2e9
    # llama.cpp scales a 27B's attention by hidden_size / heads = 168; a config that says otherwise is refused.
    wrong = sparse_checkpoint(tmp_path / "wrong", {**MEDGEMMA_27B, "query_pre_attn_scalar": 128}, tiny.tokenizer)
    with pytest.raises(ConversionError, match="query_pre_attn_scalar=128, but llama.cpp by 168 for a model of 62 layers"):
        resolve_base(str(wrong))


@pytest.mark.slow
def test_memory_stays_near_one_tensor_not_one_shard(tiny, tmp_path: Path) -> None:
    """Two layers of MedGemma-27B's widths (the vocabulary cut to 4,096): a 1.7 GB shard, 462 MB tensors in float32."""
    config = {**MEDGEMMA_27B, "num_hidden_layers": 2, "vocab_size": 4096, "query_pre_attn_scalar": 128}
    base = sparse_checkpoint(tmp_path / "base", config, tiny.tokenizer)
    shard = (base / "model.safetensors").stat().st_size
    the_plan = plan(ConversionOptions.create(base=str(base), out=tmp_path / "m.gguf", quant="q4_k_m"))
    largest = max(4 * math.prod(t.shape) for t in the_plan.base.tensors)
    assert the_plan.peak_bytes < shard / 2
    # In a process of its own, as the app runs it: this one holds torch and the other tests' models.
    report_path = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "medgemma_convert", "--base", str(base), "--out", str(tmp_path / "m.gguf"),
                    "--quant", "q4_k_m", "--no-verify", "--progress", "none", "--report", str(report_path)],
                   check=True, capture_output=True)
    peaks = {stage["stage"]: stage["peak_rss_bytes"] for stage in json.loads(report_path.read_text())["stages"]}
    assert max(peaks.values()) < min(1.25 * the_plan.peak_bytes, largest + 0.25e9, shard / 2), peaks
    assert max(peaks.values()) > 0.5 * the_plan.peak_bytes, peaks  # the estimate is not a loose bound either


def test_a_plan_that_does_not_fit_on_the_disk_is_refused_before_any_work(tiny, tmp_path: Path) -> None:
    disk = shutil.disk_usage(tmp_path).total
    # Enough 27B-wide layers that the f32 output (4 bytes a weight) outgrows the whole disk.
    layers = max(2, math.ceil(disk / (4 * 0.42e9)) + 1)
    if disk > 8e12:
        pytest.skip(f"a {disk / 1e12:.0f} TB disk: the sparse source would pass the 16 TiB file size limit of ext4")
    base = sparse_checkpoint(tmp_path / "big", {**MEDGEMMA_27B, "num_hidden_layers": layers, "query_pre_attn_scalar": 128}, tiny.tokenizer)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputError, match=rf"^not enough disk space in {out}: the output needs about [\d.]+ (GB|TB), "
                                          r"and [\d.]+ \w+ is free$"):
        plan(ConversionOptions.create(base=str(base), out=out / "m.gguf", quant="f32"))
    assert list(out.iterdir()) == []


def test_free_space_is_added_up_per_disk(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    check_free_space({tmp_path / "a.gguf": free // 4, tmp_path / "b.gguf": free // 4})
    with pytest.raises(OutputError, match=f"^not enough disk space in {tmp_path}: "):
        check_free_space({tmp_path / "a.gguf": free // 2 + 1, tmp_path / "b.gguf": free // 2 + 1})


def test_estimates_are_close_to_the_files_written(tiny, tmp_path: Path) -> None:
    report = convert(plan(ConversionOptions.create(base=str(tiny.base("gemma3")), out=tmp_path / "m.gguf",
                                                   quant="f16,q8_0,q4_k_m,q4_speed")))
    expected = report.inputs["expected_bytes"]
    assert expected.keys() == {"f16", "q8_0", "q4_k_m", "q4_speed"}
    for output in report.outputs:
        assert abs(expected[output.quant] - output.bytes) < 0.03 * output.bytes, (output.quant, expected, output.bytes)


@pytest.mark.slow
def test_the_real_270m_estimate_is_close_to_its_published_q4_k_m(gemma_270m: Path, hf_base_270m: Path) -> None:
    base = resolve_base(str(hf_base_270m))
    shapes = [(t.name, t.shape) for t in base.tensors]
    estimate = quantized_bytes(shapes, "q4_k_m", recipes_for(("q4_k_m",))["q4_k_m"], base.hparams["vocab_size"])
    assert abs(estimate - gemma_270m.stat().st_size) < 0.01 * gemma_270m.stat().st_size
