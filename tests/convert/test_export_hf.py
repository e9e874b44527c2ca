"""`medgemma-convert export-hf`: a GGUF back to a Hugging Face folder that transformers loads and trains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from tests.support.tiny import TEST_TEXT, kld, llama_logits

from medgemma_convert.export_hf import export_hf, plan_export_hf
from medgemma_convert.options import ConversionOptions, ExportHfOptions
from medgemma_convert.pipeline import convert
from medgemma_convert.plan import plan
from medgemma_convert.progress import Progress, ProgressEvent, no_progress
from medgemma_convert.verify import compare_rows, default_eval_text, tokenize
from medgemma_models.errors import ConversionError, OutputError
from medgemma_models.files import sha256_file
from medgemma_models.report import ConversionReport

# Config fields that decide what the model computes: they must come back as they went in.
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "sliding_window", "layer_types", "vocab_size", "final_logit_softcapping",
              "attn_logit_softcapping", "rope_theta")


def export(model: Path, out: Path, progress: Progress = no_progress, **kwargs: object) -> ConversionReport:
    return export_hf(plan_export_hf(ExportHfOptions.create(model, out, **kwargs)), progress)


def folder(report: ConversionReport) -> Path:
    return Path(report.extra["folder"])


def gguf_of(base: Path, out: Path, quant: str = "f32") -> Path:
    convert(plan(ConversionOptions.create(base=str(base), out=out, quant=quant)))
    return out


def llama_tokens(model: Path, text: str) -> list[int]:
    """llama.cpp's token ids for `text` after BOS, with the turn markers read as the special tokens they are."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), vocab_only=True, verbose=False)
    try:
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    finally:
        llm.close()


def hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


@pytest.mark.parametrize("arch", ["gemma3", "gemma2"])
def test_f32_gguf_comes_back_as_the_original_weights(tiny, token_ids, tmp_path: Path, arch: str) -> None:
    from transformers import AutoTokenizer

    base = tiny.base(arch)
    source = gguf_of(base, tmp_path / "model.gguf")
    result = export(source, tmp_path / "hf")
    assert result.inputs["base"]["architecture"] == arch
    assert result.warnings == ()  # an unquantized source with its own chat template: nothing to warn about
    original, exported = load_file(base / "model.safetensors"), load_file(folder(result) / "model.safetensors")
    assert exported.keys() == original.keys() - {"lm_head.weight"}
    for name, weight in original.items():
        if name.endswith("norm.weight"):
            # Stored as 1 + w in float32 and taken back: off by at most the rounding of 1 + w.
            np.testing.assert_allclose(exported[name], weight, rtol=0, atol=2.5e-7, err_msg=name)
        elif name in exported:
            np.testing.assert_array_equal(exported[name], weight, err_msg=name)  # f32 all the way: bit for bit
    before = json.loads((base / "config.json").read_text())
    after = json.loads((folder(result) / "config.json").read_text())
    for key in SHAPE_KEYS:
        if key in before:
            assert after[key] == before[key], key
    assert after["architectures"] == before["architectures"]
    np.testing.assert_allclose(hf_logits(folder(result), token_ids), hf_logits(base, token_ids), atol=1e-4)
    # The rebuilt tokenizer splits text as llama.cpp does on the source file, and decodes it back.
    tokenizer = AutoTokenizer.from_pretrained(folder(result))
    ids = llama_tokens(source, TEST_TEXT)
    assert tokenizer(TEST_TEXT)["input_ids"] == ids
    assert tokenizer.decode(ids) == "<bos>" + TEST_TEXT
    prose = TEST_TEXT.rsplit("\n", 1)[1]  # no turn markers: as verify tokenizes evaluation text
    assert tokenizer(prose)["input_ids"] == tokenize(source, prose)[0]
    config = json.loads((folder(result) / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"]["5"]["content"] == "<end_of_turn>"
    assert config["chat_template"]
    assert json.loads((folder(result) / "generation_config.json").read_text())["eos_token_id"] == [1, 5]


def test_round_trip_through_gguf_again_gives_the_same_file(tiny, tmp_path: Path) -> None:
    """GGUF -> HF -> GGUF: the second GGUF holds the same tensors and architecture keys as the first."""
    from gguf import GGUFReader

    first = gguf_of(tiny.base("gemma3"), tmp_path / "first.gguf")
    exported = folder(export(first, tmp_path / "hf"))
    second = gguf_of(exported, tmp_path / "second.gguf")
    a, b = GGUFReader(first), GGUFReader(second)
    assert {t.name: bytes(t.data) for t in a.tensors} == {t.name: bytes(t.data) for t in b.tensors}
    keys = {k for k in a.fields if k.startswith(("gemma3.", "tokenizer.ggml."))}
    # The folder gains the tokenizer.json transformers makes; its post-processor says "no SEP" as well.
    extra = {k for k in b.fields if k.startswith(("gemma3.", "tokenizer.ggml."))} - keys
    assert extra <= {"tokenizer.ggml.add_sep_token"} and not any(b.fields[k].contents() for k in extra)
    for key in keys:
        assert a.fields[key].contents() == b.fields[key].contents(), key


def test_quantized_source_warns_and_loads(tiny, token_ids, tmp_path: Path) -> None:
    source = gguf_of(tiny.base("gemma3"), tmp_path / "model.gguf", quant="q8_0")
    result = export(source, tmp_path / "hf", dtype="bfloat16")
    assert any("quantized (Q8_0)" in w for w in result.warnings), result.warnings
    from safetensors.torch import load_file as load_torch

    assert load_torch(folder(result) / "model.safetensors")["model.embed_tokens.weight"].dtype == torch.bfloat16
    # The 8-bit source in llama.cpp and its bf16 export in transformers still agree closely.
    assert kld(llama_logits(source, token_ids), hf_logits(folder(result), token_ids)).mean() < 0.01


def test_existing_folder_is_kept_unless_force(tiny, tmp_path: Path) -> None:
    source = gguf_of(tiny.base("gemma3"), tmp_path / "model.gguf")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputError, match="already exists"):
        export(source, out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    export(source, out, force=True)
    assert (out / "config.json").is_file() and not (out / "mine.txt").exists()
    assert not (tmp_path / "hf.partial").exists()


def test_interrupt_leaves_nothing(tiny, tmp_path: Path) -> None:
    source = gguf_of(tiny.base("gemma3"), tmp_path / "model.gguf")

    def interrupt(stage: str, done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export(source, tmp_path / "hf", progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_refusals(tiny, tmp_path: Path) -> None:
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_bytes(b"not a model at all")
    with pytest.raises(ConversionError, match="not a readable GGUF"):
        export(not_gguf, tmp_path / "a")
    with pytest.raises(ConversionError, match="no such GGUF"):
        export(tmp_path / "missing.gguf", tmp_path / "b")
    model = gguf_of(tiny.base("gemma3"), tmp_path / "model.gguf")
    with pytest.raises(OutputError, match="does not exist"):
        export(model, tmp_path / "no" / "such" / "folder")
    from medgemma_convert.lora_gguf import export_lora
    from medgemma_convert.options import LoraOptions
    from medgemma_convert.plan import plan_lora

    adapter = tmp_path / "adapter.gguf"
    export_lora(plan_lora(LoraOptions.create(base=str(model), adapters=[str(tiny.adapter("gemma3", "qv"))], out=adapter)))
    with pytest.raises(ConversionError, match="is a LoRA adapter, not a model"):
        export(adapter, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.gguf", "model.gguf", "notes.gguf"]


def test_command_line(tiny, tmp_path: Path) -> None:
    source = gguf_of(tiny.base("gemma2"), tmp_path / "model.gguf")
    result = subprocess.run([sys.executable, "-m", "medgemma_convert", "export-hf", str(source), str(tmp_path / "hf"),
                             "--progress", "none"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "gemma2" in result.stdout and (tmp_path / "hf" / "tokenizer.model").is_file()
    again = subprocess.run([sys.executable, "-m", "medgemma_convert", "export-hf", str(source), str(tmp_path / "hf"),
                            "--progress", "none"], capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr
    # As the app reads a conversion: JSON progress lines, then the done event with the report.
    lines = subprocess.run([sys.executable, "-m", "medgemma_convert", "export-hf", str(source), str(tmp_path / "hf"),
                            "--dtype", "float16", "--progress", "json", "--force"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    events = [ProgressEvent.from_json_line(line) for line in lines]
    assert all(events) and {"plan", "export-hf"} <= {e.stage for e in events if e}
    report = events[-1].report if events[-1] else None
    assert report is not None and report.outputs[0].file_type == "safetensors F16"
    weights = tmp_path / "hf" / "model.safetensors"
    assert report.outputs[0].sha256 == sha256_file(weights) and report.outputs[0].bytes == weights.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "model.gguf"]  # no .partial, no .replaced


@pytest.mark.slow
def test_real_270m_loads_and_follows_llama_cpp(gemma_270m: Path, tmp_path: Path) -> None:
    """The embedded Q4_K_M model exported in float32: transformers on it against llama.cpp on the source file."""
    from transformers import AutoTokenizer

    result = export(gemma_270m, tmp_path / "hf")
    assert any("quantized" in w for w in result.warnings)
    text = default_eval_text().split("\n\n")[0]
    ids, _ = tokenize(gemma_270m, text)
    tokenizer = AutoTokenizer.from_pretrained(folder(result))
    assert tokenizer(text)["input_ids"] == ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") == 106
    expected = llama_logits(gemma_270m, ids)
    got = hf_logits(folder(result), ids)
    divergence, same, _, _ = compare_rows(got[:-1], expected[:-1], np.asarray(ids[1:]))
    # The same weights; llama.cpp multiplies its 4/5-bit blocks with 8-bit-quantized activations,
    # which is all that is left between them (measured: mean KLD 0.006, top-1 97 %).
    assert divergence.mean() < 0.02, divergence.mean()
    assert same.mean() > 0.95
