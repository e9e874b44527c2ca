"""What the writer puts in the GGUF: Gemma specifics, vocabulary, provenance; and the quantized outputs."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from tests.support.tiny import CHAT_TEMPLATE, TEST_TEXT, kld, llama_logits

from medgemma_convert.options import ConversionOptions
from medgemma_convert.pipeline import convert
from medgemma_convert.plan import plan
from medgemma_models.files import sha256_file
from medgemma_models.gguf_info import read_model_info


def export(base: Path, out: Path, adapters: list[str] = (), quant: str = "f32", **kwargs) -> dict:
    return convert(plan(ConversionOptions.create(base=str(base), out=out, adapters=list(adapters), quant=quant, **kwargs)))


def fields(path: Path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    values = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    tensors = {t.name: t for t in reader.tensors}
    return values, tensors


@pytest.fixture(scope="module")
def gemma3_export(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("meta3") / "g3.gguf"
    export(tiny.base("gemma3"), out, [str(tiny.adapter("gemma3", "qv"))], name="Tiny G3", license="apache-2.0")
    return out


def test_gemma3_architecture_keys(gemma3_export):
    values, _ = fields(gemma3_export)
    assert values["general.architecture"] == "gemma3"
    expected = {
        "block_count": 6, "context_length": 512, "embedding_length": 64, "feed_forward_length": 128,
        "attention.head_count": 2, "attention.head_count_kv": 1, "attention.key_length": 32,
        "attention.value_length": 32, "attention.sliding_window": 16,
    }
    for key, value in expected.items():
        assert values[f"gemma3.{key}"] == value, key
    assert values["gemma3.rope.freq_base"] == 1_000_000.0  # global layers
    # Sliding-window layers use 10,000, llama.cpp's default: left out, as llama.cpp's converter did.
    assert "gemma3.rope.freq_base_swa" not in values
    assert values["gemma3.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert "gemma3.attention.sliding_window_pattern" not in values  # the default every-6th pattern
    assert values["general.file_type"] == gguf.LlamaFileType.ALL_F32


def test_gemma3_vocabulary_matches_sentencepiece(tiny, gemma3_export):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny.tokenizer / "tokenizer.model"))
    values, _ = fields(gemma3_export)
    assert values["tokenizer.ggml.model"] == "llama" and values["tokenizer.ggml.pre"] == "default"
    tokens = values["tokenizer.ggml.tokens"]
    assert tokens == [sp.IdToPiece(i) for i in range(sp.vocab_size())]
    assert np.allclose(values["tokenizer.ggml.scores"][6:], [sp.GetScore(i) for i in range(6, sp.vocab_size())])
    types = values["tokenizer.ggml.token_type"]
    assert [types[i] for i in range(6)] == [gguf.TokenType.CONTROL] * 6  # pad eos bos unk + turn markers, as flagged special
    assert types[sp.PieceToId("<0x41>")] == gguf.TokenType.BYTE
    ids = {k: values[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "unknown", "padding", "eot")}
    assert ids == {"bos": 2, "eos": 1, "unknown": 3, "padding": 0, "eot": 5}
    assert values["tokenizer.ggml.add_bos_token"] is True and values["tokenizer.ggml.add_eos_token"] is False
    assert values["tokenizer.ggml.add_space_prefix"] is False
    assert values["tokenizer.chat_template"] == CHAT_TEMPLATE


def test_llama_cpp_tokenizes_like_sentencepiece(gemma3_export, token_ids):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gemma3_export), vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(TEST_TEXT.encode(), add_bos=True, special=True) == token_ids
        assert llm.token_eos() == 1
    finally:
        llm.close()


def test_chat_template_gives_one_bos(gemma3_export):
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = Llama(model_path=str(gemma3_export), vocab_only=True, verbose=False)
    try:
        values, _ = fields(gemma3_export)
        formatter = Jinja2ChatFormatter(values["tokenizer.chat_template"], eos_token="<eos>", bos_token="<bos>")
        result = formatter(messages=[{"role": "user", "content": "Fever for 3 days?"}])
        # llama-cpp-python adds BOS only when the template has not (added_special).
        tokens = llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)
        assert tokens.count(2) == 1 and tokens[0] == 2
    finally:
        llm.close()


def test_norms_get_plus_one_once_and_embeddings_stay_tied(tiny, gemma3_export):
    from safetensors.numpy import load_file

    hf = load_file(tiny.base("gemma3") / "model.safetensors")
    _, tensors = fields(gemma3_export)
    assert "output.weight" not in tensors
    np.testing.assert_array_equal(np.asarray(tensors["output_norm.weight"].data), hf["model.norm.weight"] + 1)
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.attn_q_norm.weight"].data), hf["model.layers.0.self_attn.q_norm.weight"] + 1)
    np.testing.assert_array_equal(np.asarray(tensors["token_embd.weight"].data), hf["model.embed_tokens.weight"])
    # q_proj carries the adapter's delta, k_proj (not targeted) is the base weight exactly.
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.attn_k.weight"].data), hf["model.layers.1.self_attn.k_proj.weight"])
    assert not np.array_equal(np.asarray(tensors["blk.1.attn_q.weight"].data), hf["model.layers.1.self_attn.q_proj.weight"])


def test_provenance_keys(tiny, gemma3_export):
    values, _ = fields(gemma3_export)
    adapter = tiny.adapter("gemma3", "qv")
    assert values["general.name"] == "Tiny G3" and values["general.license"] == "apache-2.0"
    assert values["medgemma.base"] == str(tiny.base("gemma3"))
    assert values["medgemma.converter"].startswith("medgemma-convert ")
    assert "medgemma.preset" not in values  # a local folder the catalog does not know
    [entry] = json.loads(values["medgemma.adapters"])
    assert entry == {"id": str(adapter), "sha256": sha256_file(adapter / "adapter_model.safetensors"),
                     "scale": 1.0, "r": 4, "alpha": 8.0, "rslora": False}
    info = read_model_info(gemma3_export)
    assert info.provenance["adapters"] == [entry] and info.eot_id == 5


def test_gemma2_soft_capping_and_window(tiny, tmp_path):
    out = tmp_path / "g2.gguf"
    export(tiny.base("gemma2"), out, quant="bf16")
    values, tensors = fields(out)
    assert values["general.architecture"] == "gemma2"
    assert values["gemma2.attn_logit_softcapping"] == 50.0
    assert values["gemma2.final_logit_softcapping"] == 30.0
    assert values["gemma2.attention.sliding_window"] == 16
    assert values["general.file_type"] == gguf.LlamaFileType.MOSTLY_BF16
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.BF16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_several_quants_from_one_pass(tiny, token_ids, tmp_path):
    out = tmp_path / "model.gguf"
    report = export(tiny.base("gemma3"), out, [str(tiny.adapter("gemma3", "all"))], quant="f16,q8_0,q4_k_m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-f16.gguf", "model-q4_k_m.gguf", "model-q8_0.gguf"]
    by_quant = {o.quant: o for o in report.outputs}
    for quant, output in by_quant.items():
        info = read_model_info(output.path)
        assert output.file_type == info.file_type == quant.upper()
        assert output.tensor_types == info.tensor_types
        assert output.bits_per_weight == pytest.approx(info.bits_per_weight, abs=1e-4)
        assert info.provenance["adapters"][0]["id"] == str(tiny.adapter("gemma3", "all"))  # kept by llama.cpp's quantizer
    # Rows of 64 and 128 columns are not multiples of 256: Q4_K_M falls back, and the report says so.
    assert "Q4_K" not in by_quant["q4_k_m"].tensor_types
    assert by_quant["q4_k_m"].bits_per_weight > 4.5
    f16 = llama_logits(tmp_path / "model-f16.gguf", token_ids)
    q8 = llama_logits(tmp_path / "model-q8_0.gguf", token_ids)
    assert kld(f16, q8).mean() < 0.01


@pytest.mark.parametrize("quant", ["f32", "f16", "bf16"])
def test_row_blocks_write_the_same_bytes(tiny, tmp_path, monkeypatch, quant):
    # Large untouched tensors (the embedding) are streamed in row blocks; with a tiny block size the
    # tiny model's embedding takes that path too, including a short last block.
    from medgemma_convert import merge

    export(tiny.base("gemma2"), tmp_path / "whole.gguf", quant=quant)
    monkeypatch.setattr(merge, "BLOCK_ELEMENTS", 1000)
    export(tiny.base("gemma2"), tmp_path / "blocks.gguf", quant=quant)
    assert (tmp_path / "whole.gguf").read_bytes() == (tmp_path / "blocks.gguf").read_bytes()
