"""GGUF LoRA adapters on the loaded real Gemma-3-270M, through llama.cpp, without Qt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
from llama_cpp import Llama

from medgemma_desktop.adapter_files import check_fits, is_adapter, read_adapter
from medgemma_desktop.adapters import attach, attached_to
from medgemma_models.errors import ModelFileError

from tests.support.tiny import make_adapter

PROMPT = "<start_of_turn>user\nWhat are the first-line treatments for type 2 diabetes?<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def adapter_files(hf_base_270m: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    """Two small f32 GGUF adapters for the real 270M (q/v r=4, and the MLP r=2), plus both folded into one file."""
    from medgemma_convert.lora_gguf import export_lora
    from medgemma_convert.options import LoraOptions
    from medgemma_convert.plan import plan_lora

    folder = tmp_path_factory.mktemp("runtime-adapters")
    peft = {
        "qv": make_adapter(hf_base_270m, folder / "qv", targets=("q_proj", "v_proj"), r=4, alpha=8, seed=21, size=0.15),
        "mlp": make_adapter(hf_base_270m, folder / "mlp", targets=("gate_proj", "up_proj"), r=2, alpha=4, seed=22,
                            size=0.15),
    }
    files = {}
    for name, adapters in (("qv", ["qv"]), ("mlp", ["mlp"]), ("both", ["qv:1.0", "mlp:0.5"])):
        specs = [f"{peft[a.split(':')[0]]}:{a.split(':')[1] if ':' in a else 1.0}" for a in adapters]
        out = folder / f"{name}.gguf"
        export_lora(plan_lora(LoraOptions.create(base=str(hf_base_270m), adapters=specs, out=out, out_type="f32",
                                                 preset="gemma-chat")))
        files[name] = out
    return files


@pytest.fixture
def llm(gemma_270m: Path) -> Iterator[Llama]:
    model = Llama(model_path=str(gemma_270m), n_ctx=256, n_batch=256, logits_all=True, verbose=False, n_threads=2)
    yield model
    model.close()


def logits(llm: Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def greedy(llm: Llama, prompt: str = PROMPT, tokens: int = 24) -> str:
    result = llm.create_completion(prompt, max_tokens=tokens, temperature=0.0, seed=1)
    return result["choices"][0]["text"]


def test_header_is_read_without_loading(adapter_files: dict[str, Path], gemma_270m: Path, hf_base_270m: Path) -> None:  # noqa: F811
    info = read_adapter(adapter_files["both"])
    assert info.architecture == "gemma3" and info.preset == "gemma-chat" and info.base == str(hf_base_270m)
    assert len(info.provenance.adapters) == 2 and info.provenance.adapters[1].scale == 0.5
    assert info.pairs["blk.0.attn_q.weight"] == ((640, 4), (4, 1024))  # ggml order: [n_in, r], [r, n_out]
    assert info.pairs["blk.3.ffn_up.weight"] == ((640, 2), (2, 2048))
    assert is_adapter(adapter_files["qv"]) and not is_adapter(gemma_270m)
    check_fits(info, gemma_270m)


def test_attach_scale_and_detach(llm: Llama, adapter_files: dict[str, Path]) -> None:
    ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    plain = logits(llm, ids)
    attached = attach(llm, [(adapter_files["qv"], 1.0)])
    assert attached_to(llm) is attached and attached.describe() == "qv \u00d71"
    with_adapter = logits(llm, ids)
    assert np.abs(with_adapter - plain).max() > 0.5  # the adapter changes the model
    # A new scale is a new attachment (what the engine does when the user changes it).
    attach(llm, [(adapter_files["qv"], 0.0)])
    np.testing.assert_allclose(logits(llm, ids), plain, atol=1e-4)  # scale 0: the base alone
    attached = attach(llm, [(adapter_files["qv"], 1.0)])
    np.testing.assert_allclose(logits(llm, ids), with_adapter, atol=1e-4)
    attached.detach()
    assert attached_to(llm) is None and not attached.attached
    np.testing.assert_allclose(logits(llm, ids), plain, atol=1e-4)
    attached.detach()  # a second detach does nothing


def test_same_as_llama_cpp_python_lora_path(llm: Llama, gemma_270m: Path, adapter_files: dict[str, Path]) -> None:
    ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    attach(llm, [(adapter_files["qv"], 0.7)])
    ours = logits(llm, ids)
    reference = Llama(model_path=str(gemma_270m), lora_path=str(adapter_files["qv"]), lora_scale=0.7, n_ctx=256,
                      n_batch=256, logits_all=True, verbose=False, n_threads=2)
    try:
        np.testing.assert_allclose(ours, logits(reference, ids), atol=1e-4)
    finally:
        reference.close()


def test_two_adapters_with_scales_equal_one_folded_file(llm: Llama, adapter_files: dict[str, Path]) -> None:
    """qv at 1 and mlp at 0.5 as two runtime adapters = the file the converter made of both at those scales."""
    ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    attach(llm, [(adapter_files["qv"], 1.0), (adapter_files["mlp"], 0.5)])
    two = logits(llm, ids)
    attach(llm, [(adapter_files["both"], 1.0)])  # replaces the pair
    one = logits(llm, ids)
    # f32 files: the same sums in the same order. (The Q4_K_M base quantizes activations to 8 bits,
    # so even float32 rounding differences can flip a rounding step and show up far downstream.)
    np.testing.assert_allclose(two, one, atol=1e-4)


def test_changing_adapters_resets_the_prompt_cache(llm: Llama, gemma_270m: Path, adapter_files: dict[str, Path]) -> None:
    """A prompt evaluated before attaching must not be reused: the answer equals a fresh model's with the adapter."""
    plain_answer = greedy(llm)
    assert llm.n_tokens > 0
    attach(llm, [(adapter_files["qv"], 1.0)])
    assert llm.n_tokens == 0
    cached_then_attached = greedy(llm)
    fresh = Llama(model_path=str(gemma_270m), n_ctx=256, n_batch=256, logits_all=True, verbose=False, n_threads=2)
    try:
        attach(fresh, [(adapter_files["qv"], 1.0)])
        assert cached_then_attached == greedy(fresh)
    finally:
        fresh.close()
    assert cached_then_attached != plain_answer
    attach(llm, [(adapter_files["qv"], 0.0)])
    assert llm.n_tokens == 0
    assert greedy(llm) == plain_answer


def _crafted_adapter(path: Path, arch: str, a_shape: tuple[int, int], b_shape: tuple[int, int]) -> Path:
    """A GGUF LoRA adapter with one pair on blk.0.attn_q.weight, numpy shapes (r, n_in) and (n_out, r)."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.ones(a_shape, dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.ones(b_shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_misfits_are_refused_and_the_model_stays(llm: Llama, gemma_270m: Path, adapter_files: dict[str, Path],
                                                 tmp_path: Path) -> None:
    ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    attached = attach(llm, [(adapter_files["qv"], 1.0)])
    before = logits(llm, ids)
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(adapter_files["qv"].read_bytes()[:5000])
    cases = {
        "is an adapter for gemma2 models, but gemma-3-270m": _crafted_adapter(tmp_path / "g2.gguf", "gemma2", (4, 640), (1024, 4)),
        r"does not fit .*blk.0.attn_q.weight is \[640, 1024\] there": _crafted_adapter(
            tmp_path / "wide.gguf", "gemma3", (4, 1152), (1024, 4)),
        "is not a LoRA adapter": gemma_270m,
        "corrupt or truncated|truncated": corrupt,
        "no such adapter file": tmp_path / "missing.gguf",
    }
    for match, path in cases.items():
        with pytest.raises(ModelFileError, match=match) as info:
            attach(llm, [(adapter_files["mlp"], 1.0), (path, 1.0)])
        assert "\n" not in str(info.value)
        # The model, its adapters and their effect are untouched.
        assert attached_to(llm) is attached and attached.attached
        np.testing.assert_allclose(logits(llm, ids), before, atol=1e-4)


def test_closing_the_model_frees_its_adapters(gemma_270m: Path, adapter_files: dict[str, Path]) -> None:
    model = Llama(model_path=str(gemma_270m), n_ctx=128, verbose=False, n_threads=2)
    attached = attach(model, [(adapter_files["qv"], 1.0), (adapter_files["mlp"], 0.3)])
    model.close()  # the unload path: adapters go first, through the Llama's own exit stack
    assert not attached.attached
    attached.detach()
