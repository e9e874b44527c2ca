"""bitsandbytes 4-bit checkpoints as a base: dequantized by bitsandbytes, merged, and checked against
transformers on the same dequantized weights; broken quant states refused. On the tiny Gemma 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.support.tiny import kld, llama_logits, make_bnb_4bit, reference_logits

from medgemma_convert.cli import main

WEIGHT = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def bnb_bases(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bnb")
    return {
        "nf4-double": make_bnb_4bit(tiny.base("gemma3"), root / "nf4-double"),
        "fp4": make_bnb_4bit(tiny.base("gemma3"), root / "fp4", quant_type="fp4", double_quant=False),
    }


def convert(base: Path, out: Path, *adapters: Path) -> int:
    argv = ["--base", str(base), "--out", str(out), "--no-verify", "--progress", "none"]
    for adapter in adapters:
        argv += ["--adapter", str(adapter)]
    return main(argv)


@pytest.mark.parametrize("kind", ["nf4-double", "fp4"])
def test_bnb_source_matches_transformers_on_the_dequantized_weights(bnb_bases, tiny, token_ids, tmp_path, capsys, kind):
    out = tmp_path / "model.gguf"
    assert convert(bnb_bases[kind], out, tiny.adapter("gemma3", "qv")) == 0
    assert "bitsandbytes 4-bit checkpoint" in capsys.readouterr().err  # the source is lossy: said so
    got = llama_logits(out, token_ids)
    # reference_model dequantizes with bitsandbytes, then PEFT merges the (QLoRA) adapter.
    reference = reference_logits(bnb_bases[kind], [(tiny.adapter("gemma3", "qv"), 1.0)], token_ids)
    mean = kld(reference, got).mean()
    print(f"{kind}: mean KLD {mean:.3g}")
    assert mean < 1e-3
    assert (reference.argmax(-1) == got.argmax(-1)).mean() > 0.95
    # 4-bit rounding is real: the 16-bit base answers measurably differently.
    assert kld(reference_logits(tiny.base("gemma3"), [(tiny.adapter("gemma3", "qv"), 1.0)], token_ids), got).mean() > 10 * mean


def _edit_state(base: Path, folder: Path, edit) -> Path:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(base, folder)
    tensors = load_file(folder / "model.safetensors")
    key = f"{WEIGHT}.quant_state.bitsandbytes__nf4"
    tensors[key] = np.frombuffer(edit(tensors[key].tobytes()), dtype=np.uint8).copy()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _refused(capsys, base: Path, out_dir: Path, match: str) -> None:
    out_dir.mkdir()
    capsys.readouterr()
    assert convert(base, out_dir / "model.gguf") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err, err
    assert list(out_dir.iterdir()) == []


def test_state_whose_sizes_disagree_with_the_shape(bnb_bases, tmp_path, capsys):
    def wider(blob: bytes) -> bytes:
        state = json.loads(blob)
        state["shape"] = [state["shape"][0], state["shape"][1] * 2]
        return json.dumps(state).encode()

    base = _edit_state(bnb_bases["nf4-double"], tmp_path / "wider", wider)
    _refused(capsys, base, tmp_path / "out", "packed values has 4,096 values, but shape (64, 256)")


def test_truncated_quant_state_blob(bnb_bases, tmp_path, capsys):
    base = _edit_state(bnb_bases["nf4-double"], tmp_path / "cut", lambda blob: blob[: len(blob) // 2])
    _refused(capsys, base, tmp_path / "out", "quant state blob is truncated or corrupt")


def test_8bit_checkpoint_is_refused_by_name(bnb_bases, tmp_path, capsys):
    base = tmp_path / "int8"
    shutil.copytree(bnb_bases["nf4-double"], base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True, "load_in_4bit": False}
    (base / "config.json").write_text(json.dumps(config))
    _refused(capsys, base, tmp_path / "out", "8-bit (LLM.int8) checkpoint")


def test_real_270m_in_nf4_through_f16(hf_base_270m, tmp_path):  # noqa: F811
    """The real 270M loaded with BitsAndBytesConfig(nf4, double quantization) on the CPU and saved, as QLoRA
    users keep it: its f16 export against transformers on the dequantized weights, KLD < 1e-3."""
    base = make_bnb_4bit(hf_base_270m, tmp_path / "gemma-3-270m-bnb-4bit")
    report = tmp_path / "report.json"
    argv = ["--base", str(base), "--out", str(tmp_path / "model.gguf"), "--progress", "none", "--report", str(report)]
    assert main(argv) == 0
    figures = json.loads(report.read_text())["outputs"][0]["verification"]
    print(f"270M nf4 -> f16: {figures}")
    assert figures["mean_kld"] < 1e-3 and figures["top1"] >= 0.99
