"""medgemma-convert on the real Gemma-3-270M (an HF folder re-made from the embedded GGUF), run as the CLI runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from medgemma_convert.verify import default_eval_text, tokenize

pytestmark = pytest.mark.slow

# Keys our export may add that the embedded file (made by llama.cpp's converter from Google's
# release) lacks. The EOT id: the architecture notes ask for <end_of_turn> (106) as EOT so that
# every runtime stops at the end of a turn; llama.cpp's converter leaves it to the runtime's guess.
EXTRA_KEYS_ALLOWED = {"tokenizer.ggml.eot_token_id"}


def convert(*args: str) -> subprocess.CompletedProcess[str]:
    """`medgemma-convert ARGS` in a child process, as a user or the desktop app runs it."""
    result = subprocess.run([sys.executable, "-m", "medgemma_convert", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metadata(path: Path) -> dict[str, Any]:
    """The `gemma3.*` and `tokenizer.ggml.*` keys of a GGUF file with their values."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    return {key: field.contents() for key, field in fields.items() if key.startswith(("gemma3.", "tokenizer.ggml."))}


def test_f16_export_reproduces_the_embedded_metadata(gemma_270m: Path, hf_base_270m: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "gemma-3-270m-f16.gguf"
    convert("--base", str(hf_base_270m), "--out", str(out), "--quant", "f16", "--progress", "none")
    expected, got = metadata(gemma_270m), metadata(out)
    assert len(expected) >= 20  # 11 gemma3.* keys and the tokenizer's, including three 262,144-long arrays
    missing = sorted(expected.keys() - got.keys())
    assert not missing, f"keys of the embedded GGUF missing from the export: {missing}"
    differing = sorted(key for key in expected if got[key] != expected[key])
    assert not differing, {key: (expected[key], got[key]) for key in differing if not isinstance(expected[key], list)}
    extra = got.keys() - expected.keys()
    assert extra <= EXTRA_KEYS_ALLOWED, sorted(extra)
    if "tokenizer.ggml.eot_token_id" in got:
        assert got["tokenizer.ggml.tokens"][got["tokenizer.ggml.eot_token_id"]] == "<end_of_turn>"


def test_lora_export_matches_transformers_with_peft(
    hf_base_270m: Path,  # noqa: F811
    lora_270m: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A random LoRA r=8 on all seven projections: f16 KLD < 0.001 and top-1 >= 99%; q8_0 KLD < 0.01."""
    out, report_path = tmp_path / "medical.gguf", tmp_path / "report.json"
    convert("--base", str(hf_base_270m), "--adapter", str(lora_270m), "--out", str(out), "--quant", "f16,q8_0",
            "--verify", "--report", str(report_path), "--progress", "none")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    outputs = {output["quant"]: output for output in report["outputs"]}
    assert set(outputs) == {"f16", "q8_0"}
    ids, _ = tokenize(Path(outputs["f16"]["path"]), default_eval_text())
    f16, q8_0 = outputs["f16"]["verification"], outputs["q8_0"]["verification"]
    for figures in (f16, q8_0):
        assert figures["tokens"] == len(ids) - 1  # the whole shipped text, one chunk
        assert 1 < figures["ppl_reference"] < 1000
    assert f16["mean_kld"] < 0.001, f16
    assert f16["top1"] >= 0.99, f16
    assert q8_0["mean_kld"] < 0.01, q8_0
    # Quantizing to 8 bits can only move the file further from the float32 reference.
    assert q8_0["mean_kld"] > f16["mean_kld"]
    [adapter] = report["inputs"]["adapters"]
    assert len(adapter["sha256"]) == 64
