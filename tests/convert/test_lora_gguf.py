"""`medgemma-convert lora`: PEFT adapters as a GGUF adapter that llama.cpp applies at runtime, unmerged.

Each case runs llama.cpp on the base GGUF with the adapter file on top and compares it with
transformers + PEFT on the same weights, and with the merged export of the same adapters.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from safetensors.numpy import load_file
from tests.support.tiny import TEST_TEXT, gemma3_config, kld, llama_logits, make_adapter, make_model, reference_logits

from medgemma_convert.lora_gguf import export_lora
from medgemma_convert.options import LoraOptions
from medgemma_convert.plan import plan_lora
from medgemma_convert.options import ConversionOptions
from medgemma_convert.pipeline import convert
from medgemma_convert.plan import plan
from medgemma_models.errors import MedGemmaError
from medgemma_models.report import ConversionReport

# case -> [(adapter name, scale)]; the names are the tiny fixtures' adapters (tests/convert/conftest.py).
CASES = {
    "one-adapter": [("qv", 1.0)],
    "all-seven-targets": [("all", 1.0)],
    "scaled": [("all", 0.5)],
    "rslora": [("rslora", 1.0)],
    "rank-and-alpha-patterns": [("patterns", 1.0)],
    "two-adapters": [("qv", 1.0), ("mlp", 0.5)],
    "two-adapters-on-one-tensor": [("all", 1.0), ("rslora", -0.7)],
}


def base_gguf(base: Path, out: Path, quant: str = "f32", adapters: list[tuple[Path, float]] = ()) -> Path:
    """The merged export (no adapters: the plain base) through the ordinary conversion."""
    convert(plan(ConversionOptions.create(base=str(base), out=out, quant=quant,
                                          adapters=[f"{p}:{s}" for p, s in adapters])))
    return out


def lora_gguf(base: Path | str, adapters: list[tuple[Path, float]], out: Path, out_type: str = "f32",
              **kwargs) -> ConversionReport:
    options = LoraOptions.create(base=str(base), adapters=[f"{p}:{s}" for p, s in adapters], out=out, out_type=out_type,
                                 **kwargs)
    return export_lora(plan_lora(options))


def runtime_logits(base: Path, adapter: Path, ids: list[int], scale: float = 1.0) -> np.ndarray:
    """llama.cpp's logits for every position of `ids`, the adapter file applied on the base at `scale`."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(base), lora_path=str(adapter), lora_scale=scale, n_ctx=512, n_batch=512,
                logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def base_ggufs(tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """(arch, type) -> the tiny base exported without adapters, in f32 and f16."""
    folder = tmp_path_factory.mktemp("lora-bases")
    return {(arch, quant): base_gguf(tiny.base(arch), folder / f"{arch}-{quant}.gguf", quant)
            for arch in ("gemma3", "gemma2") for quant in ("f32", "f16")}


@pytest.mark.parametrize("arch", ["gemma3", "gemma2"])
@pytest.mark.parametrize("case", list(CASES))
def test_runtime_adapter_matches_transformers_with_peft(tiny, token_ids, base_ggufs, tmp_path: Path, arch: str,
                                                        case: str) -> None:
    base = tiny.base(arch)
    adapters = [(tiny.adapter(arch, name), scale) for name, scale in CASES[case]]
    out = tmp_path / "adapter.gguf"
    lora_gguf(base, adapters, out)

    expected = reference_logits(base, adapters, token_ids)
    got = runtime_logits(base_ggufs[(arch, "f32")], out, token_ids)
    divergence = kld(expected, got)
    assert divergence.mean() < 1e-3, f"mean KLD {divergence.mean():.2e}"
    assert (expected.argmax(-1) == got.argmax(-1)).mean() >= 0.99
    # The adapters must matter, or agreement would prove nothing.
    plain = reference_logits(base, [], token_ids)
    assert kld(expected, plain).mean() > 1e-2


@pytest.mark.parametrize("case", ["one-adapter", "rank-and-alpha-patterns", "two-adapters"])
def test_f16_runtime_adapter_matches_the_merged_f16_export(tiny, token_ids, base_ggufs, tmp_path: Path,
                                                          case: str) -> None:
    base = tiny.base("gemma3")
    adapters = [(tiny.adapter("gemma3", name), scale) for name, scale in CASES[case]]
    lora_gguf(base, adapters, tmp_path / "adapter.gguf", out_type="f16")
    merged = base_gguf(base, tmp_path / "merged.gguf", "f16", adapters)
    runtime = runtime_logits(base_ggufs[("gemma3", "f16")], tmp_path / "adapter.gguf", token_ids)
    assert kld(llama_logits(merged, token_ids), runtime).mean() < 1e-3


def test_runtime_scale_multiplies_the_delta(tiny, token_ids, base_ggufs, tmp_path: Path) -> None:
    """llama.cpp's scale 0.5 on a file made at scale 1 equals PEFT at scale 0.5, rsLoRA included."""
    base, adapter = tiny.base("gemma3"), tiny.adapter("gemma3", "rslora")
    lora_gguf(base, [(adapter, 1.0)], tmp_path / "adapter.gguf")
    got = runtime_logits(base_ggufs[("gemma3", "f32")], tmp_path / "adapter.gguf", token_ids, scale=0.5)
    assert kld(reference_logits(base, [(adapter, 0.5)], token_ids), got).mean() < 1e-3


def test_plain_adapter_is_written_as_it_is(tiny, tmp_path: Path) -> None:
    """keys, names and ggml shapes llama.cpp checks; a plain adapter's tensors and alpha unchanged."""
    adapter = tiny.adapter("gemma3", "qv")
    report = lora_gguf(tiny.base("gemma3"), [(adapter, 1.0)], tmp_path / "adapter.gguf", preset="gemma-chat")
    reader = GGUFReader(tmp_path / "adapter.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert fields["general.type"] == "adapter" and fields["general.architecture"] == "gemma3"
    assert fields["adapter.type"] == "lora" and fields["adapter.lora.alpha"] == config["lora_alpha"]
    assert fields["medgemma.base"] == str(tiny.base("gemma3")) and fields["medgemma.preset"] == "gemma-chat"
    [record] = json.loads(fields["medgemma.adapters"])
    assert record["id"] == f"{adapter}" and len(record["sha256"]) == 64 and record["r"] == config["r"]
    assert report.outputs[0].file_type == "F32" and report.extra["adapter"]["alpha"] == config["lora_alpha"]
    peft = load_file(adapter / "adapter_model.safetensors")
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * 2 * 6  # q and v of six layers, A and B each
    for layer in range(6):
        for proj, gguf_name in (("q_proj", "attn_q"), ("v_proj", "attn_v")):
            a = peft[f"base_model.model.model.layers.{layer}.self_attn.{proj}.lora_A.weight"]
            b = peft[f"base_model.model.model.layers.{layer}.self_attn.{proj}.lora_B.weight"]
            ta, tb = tensors[f"blk.{layer}.{gguf_name}.weight.lora_a"], tensors[f"blk.{layer}.{gguf_name}.weight.lora_b"]
            assert list(ta.shape) == [a.shape[1], a.shape[0]] and list(tb.shape) == [b.shape[1], b.shape[0]]  # ggml order
            np.testing.assert_array_equal(ta.data, a)
            np.testing.assert_array_equal(tb.data, b)


def test_folded_factors_keep_the_delta(tiny, tmp_path: Path) -> None:
    """rank_pattern/alpha_pattern and two adapters: B' A' at llama.cpp's alpha / rank is PEFT's summed delta."""
    base = tiny.base("gemma3")
    patterns, second = tiny.adapter("gemma3", "patterns"), tiny.adapter("gemma3", "all")
    lora_gguf(base, [(patterns, 1.0), (second, 2.0)], tmp_path / "adapter.gguf")
    reader = GGUFReader(tmp_path / "adapter.gguf")
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    for module, name, rank in (("self_attn.v_proj", "attn_v", 4 + 4), ("mlp.down_proj", "ffn_down", 8 + 4)):
        expected = sum(
            _peft_delta(adapter, f"model.layers.2.{module}", scale) for adapter, scale in ((patterns, 1.0), (second, 2.0))
        )
        a, b = tensors[f"blk.2.{name}.weight.lora_a"], tensors[f"blk.2.{name}.weight.lora_b"]
        assert a.shape[0] == rank
        np.testing.assert_allclose(alpha / rank * (b.astype(np.float64) @ a), expected, rtol=1e-5, atol=1e-6)


def _peft_delta(adapter: Path, module: str, scale: float) -> np.ndarray:
    """PEFT's delta for one module, read straight from the adapter's files (rank_pattern/alpha_pattern included)."""
    import re

    config = json.loads((adapter / "adapter_config.json").read_text())
    tensors = load_file(adapter / "adapter_model.safetensors")
    key = f"base_model.model.{module}"
    if f"{key}.lora_A.weight" not in tensors:
        return np.zeros(())
    a, b = tensors[f"{key}.lora_A.weight"].astype(np.float64), tensors[f"{key}.lora_B.weight"].astype(np.float64)
    alpha = next((v for k, v in (config.get("alpha_pattern") or {}).items() if re.fullmatch(rf"(.*\.)?{k}", module)),
                 config["lora_alpha"])
    r = a.shape[0]
    return scale * alpha / (r ** 0.5 if config.get("use_rslora") else r) * (b @ a)


def test_q8_0_keeps_short_rows_in_f16(tiny, tmp_path: Path, token_ids, base_ggufs) -> None:
    base, adapter = tiny.base("gemma3"), tiny.adapter("gemma3", "all")
    lora_gguf(base, [(adapter, 1.0)], tmp_path / "adapter.gguf", out_type="q8_0")
    types = {t.name: t.tensor_type for t in GGUFReader(tmp_path / "adapter.gguf").tensors}
    # lora_a rows are n_in = 64 or 128 long (whole Q8_0 blocks); lora_b rows are rank 4, too short.
    assert types["blk.0.attn_q.weight.lora_a"] == GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_q.weight.lora_b"] == GGMLQuantizationType.F16
    got = runtime_logits(base_ggufs[("gemma3", "f32")], tmp_path / "adapter.gguf", token_ids)
    assert kld(reference_logits(base, [(adapter, 1.0)], token_ids), got).mean() < 1e-2


def test_gguf_base_is_accepted(tiny, tmp_path: Path, base_ggufs) -> None:
    """The base can be the GGUF the adapter will run on: the same names and shapes are checked."""
    adapter = tiny.adapter("gemma2", "mlp")
    lora_gguf(base_ggufs[("gemma2", "f16")], [(adapter, 1.0)], tmp_path / "adapter.gguf")
    assert GGUFReader(tmp_path / "adapter.gguf").fields["general.architecture"].contents() == "gemma2"


def _refused(match: str, base: Path, adapters: list[Path], out_dir: Path) -> None:
    with pytest.raises(MedGemmaError, match=match) as info:
        lora_gguf(base, [(a, 1.0) for a in adapters], out_dir / "adapter.gguf")
    assert "\n" not in str(info.value)
    assert list(out_dir.iterdir()) == [], "a refused export left files behind"


def test_refusals(tiny, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    base = tiny.base("gemma3")
    _refused("is a DoRA adapter", base, [make_adapter(base, tmp_path / "dora", use_dora=True)], out_dir)
    _refused("changes .*embed_tokens.*not supported", base,
             [make_adapter(base, tmp_path / "embed", targets=("q_proj", "embed_tokens"))], out_dir)
    head = tmp_path / "head"
    shutil.copytree(tiny.adapter("gemma3", "qv"), head)
    config = json.loads((head / "adapter_config.json").read_text())
    (head / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "lm_head"]}))
    _refused("changes lm_head", base, [head], out_dir)
    wide = make_model(tmp_path / "wide", gemma3_config(hidden_size=96), tiny.tokenizer)
    _refused("does not fit the base", base, [make_adapter(wide, tmp_path / "wide-lora")], out_dir)
    other = tmp_path / "for-gemma2"
    shutil.copytree(tiny.adapter("gemma3", "qv"), other)
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "google/gemma-2-2b"}))
    _refused("made for google/gemma-2-2b", base, [other], out_dir)
    with pytest.raises(MedGemmaError, match="no --adapter"):
        export_lora(plan_lora(LoraOptions.create(base=str(base), adapters=[], out=out_dir / "a.gguf")))


def test_existing_output_is_kept_unless_force(tiny, tmp_path: Path) -> None:
    out = tmp_path / "adapter.gguf"
    out.write_bytes(b"precious")
    adapter = tiny.adapter("gemma3", "qv")
    with pytest.raises(MedGemmaError, match="already exists"):
        lora_gguf(tiny.base("gemma3"), [(adapter, 1.0)], out)
    assert out.read_bytes() == b"precious"
    lora_gguf(tiny.base("gemma3"), [(adapter, 1.0)], out, force=True)
    assert out.read_bytes()[:4] == b"GGUF" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter.gguf"]


def test_command_line_with_verify(tiny, tmp_path: Path) -> None:
    base, first, second = tiny.base("gemma3"), tiny.adapter("gemma3", "rslora"), tiny.adapter("gemma3", "patterns")
    text = tmp_path / "eval.txt"
    text.write_text(TEST_TEXT)
    result = subprocess.run(
        [sys.executable, "-m", "medgemma_convert", "lora", "--base", str(base), "--adapter", f"{first}:0.5",
         "--adapter", str(second), "--out", str(tmp_path / "adapter.gguf"), "--verify", "--eval-text", str(text),
         "--progress", "json"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["stage"] == "done"
    [output] = done["report"]["outputs"]
    figures = output["verification"]
    assert figures["mean_kld"] < 1e-3 and figures["top1"] >= 0.99, figures
    assert [a["scale"] for a in done["report"]["inputs"]["adapters"]] == [0.5, 1.0]


@pytest.mark.slow
def test_real_270m_lora_r8_all_projections(gemma_270m: Path, hf_base_270m: Path, lora_270m: Path,  # noqa: F811
                                           tmp_path: Path) -> None:
    """The figures of the README: base f16 GGUF + the GGUF adapter in llama.cpp against transformers + PEFT."""
    out = tmp_path / "lora-r8.gguf"
    result = subprocess.run(
        [sys.executable, "-m", "medgemma_convert", "lora", "--base", str(hf_base_270m), "--adapter", str(lora_270m),
         "--out", str(out), "--verify", "--progress", "json"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])["report"]
    [output] = report["outputs"]
    figures = output["verification"]
    print(f"\nreal 270M LoRA r=8, 7 projections: {output['bytes']:,} bytes, {figures}")
    assert figures["mean_kld"] < 1e-3, figures
    assert figures["top1"] >= 0.99, figures
    assert len([t for t in GGUFReader(out).tensors]) == 18 * 7 * 2
