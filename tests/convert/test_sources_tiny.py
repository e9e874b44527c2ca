"""Every kind of base: an HF folder with only tokenizer.json, a Gemma-3 multimodal checkpoint, a GGUF file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
from tests.support.tiny import TEST_TEXT, gemma3_config, kld, llama_logits, make_model, reference_logits, write_json

from medgemma_convert.options import ConversionOptions
from medgemma_convert.pipeline import convert
from medgemma_convert.plan import plan

# Keys that name the inputs rather than describe the model.
_INPUT_KEYS = ("general.name", "medgemma.base", "medgemma.adapters")


def export(base: Path, out: Path, adapters: list[str] = (), quant: str = "f32", **options):
    the_plan = plan(ConversionOptions.create(base=str(base), out=out, adapters=list(adapters), quant=quant, **options))
    convert(the_plan)
    return the_plan


def contents(path: Path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    values = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith(("GGUF.", *_INPUT_KEYS))}
    return values, {t.name: np.array(t.data) for t in reader.tensors}


def test_tokenizer_json_only(tiny, token_ids, tmp_path):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    base = tmp_path / "json-only"
    shutil.copytree(tiny.base("gemma3"), base)
    AutoTokenizer.from_pretrained(base).save_pretrained(base)  # writes tokenizer.json from tokenizer.model
    (base / "tokenizer.model").unlink()
    export(base, tmp_path / "json.gguf")
    export(tiny.base("gemma3"), tmp_path / "spm.gguf")
    from_json, _ = contents(tmp_path / "json.gguf")
    from_spm, _ = contents(tmp_path / "spm.gguf")
    for key in ("tokens", "token_type", "bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "eot_token_id"):
        assert from_json[f"tokenizer.ggml.{key}"] == from_spm[f"tokenizer.ggml.{key}"], key
    llm = Llama(model_path=str(tmp_path / "json.gguf"), vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(TEST_TEXT.encode(), add_bos=True, special=True) == token_ids
    finally:
        llm.close()


def _multimodal_copy(text_base: Path, folder: Path) -> Path:
    """The text model nested as Gemma3ForConditionalGeneration nests it, beside a (tiny) vision tower."""
    import torch
    from safetensors.torch import load_file, save_file

    folder.mkdir()
    weights = {k.replace("model.", "model.language_model.", 1): v for k, v in load_file(text_base / "model.safetensors").items()}
    weights["model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.ones(8, 3, 2, 2)
    weights["model.multi_modal_projector.mm_input_projection_weight"] = torch.ones(8, 64)
    save_file(weights, folder / "model.safetensors")
    text_config = json.loads((text_base / "config.json").read_text())
    text_config.pop("architectures")
    write_json(folder / "config.json", {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "text_config": text_config, "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 8},
    })
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copyfile(text_base / name, folder / name)
    return folder


def test_language_model_of_a_multimodal_checkpoint(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    base = _multimodal_copy(tiny.base("gemma3"), tmp_path / "multimodal")
    adapter = tmp_path / "multimodal-lora"
    shutil.copytree(tiny.adapter("gemma3", "qv"), adapter)
    tensors = load_file(adapter / "adapter_model.safetensors")
    nested = {k.replace("base_model.model.model.", "base_model.model.model.language_model.", 1): v for k, v in tensors.items()}
    some = next(iter(tensors.values()))
    nested["base_model.model.model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = some.clone()
    nested["base_model.model.model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"] = some.clone()
    save_file(nested, adapter / "adapter_model.safetensors")

    # Its vision tower is a stub (tests/convert/test_mmproj.py exports a real one): the text model only.
    the_plan = export(base, tmp_path / "mm.gguf", [str(adapter)], mmproj=False)
    assert any("vision-tower module(s) left out" in w for w in the_plan.warnings)
    export(tiny.base("gemma3"), tmp_path / "text.gguf", [str(tiny.adapter("gemma3", "qv"))])
    mm_values, mm_tensors = contents(tmp_path / "mm.gguf")
    text_values, text_tensors = contents(tmp_path / "text.gguf")
    assert mm_values == text_values
    assert mm_tensors.keys() == text_tensors.keys()
    for name, data in text_tensors.items():
        np.testing.assert_array_equal(mm_tensors[name], data, err_msg=name)


def test_gguf_base_with_adapter(tiny, token_ids, tmp_path):
    gguf_base = tmp_path / "base-f32.gguf"
    export(tiny.base("gemma3"), gguf_base)
    adapter = tiny.adapter("gemma3", "all")
    the_plan = export(gguf_base, tmp_path / "merged.gguf", [str(adapter)])
    assert any("requantizing them loses quality" in w for w in the_plan.warnings)
    reader = gguf.GGUFReader(tmp_path / "merged.gguf")
    assert reader.get_field("medgemma.base").contents() == str(gguf_base)
    assert reader.get_field("tokenizer.ggml.eot_token_id").contents() == 5
    expected = reference_logits(tiny.base("gemma3"), [(adapter, 1.0)], token_ids)
    got = llama_logits(tmp_path / "merged.gguf", token_ids)
    assert np.array_equal(expected.argmax(-1), got.argmax(-1))
    assert kld(expected, got).mean() < 1e-4


def test_rope_parameters_of_transformers_5_with_other_bases(tiny, token_ids, tmp_path):
    config = gemma3_config()
    for key in ("rope_theta", "rope_local_base_freq", "rope_scaling"):
        config.pop(key)
    config["rope_parameters"] = {
        "full_attention": {"rope_type": "default", "rope_theta": 500_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 20_000.0},
    }
    base = make_model(tmp_path / "rope", config, tiny.tokenizer, seed=3)
    export(base, tmp_path / "rope.gguf")
    reader = gguf.GGUFReader(tmp_path / "rope.gguf")
    assert reader.get_field("gemma3.rope.freq_base").contents() == 500_000.0
    assert reader.get_field("gemma3.rope.freq_base_swa").contents() == 20_000.0
    expected = reference_logits(base, [], token_ids)
    got = llama_logits(tmp_path / "rope.gguf", token_ids)
    assert np.array_equal(expected.argmax(-1), got.argmax(-1))
    assert kld(expected, got).mean() < 1e-4
