"""verify.py: the PEFT reference merge, the KL/top-1/perplexity arithmetic, and the real 270M end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tests.support.tiny import ALL_PROJECTIONS, make_adapter

from medgemma_convert.reference import reference_model
from medgemma_convert.verify import (
    QUICK_TOKENS,
    VerifyFigures,
    compare_rows,
    default_eval_text,
    tokenize,
    verify_outputs,
)
from medgemma_models.errors import ConversionError
from medgemma_models.files import sha256_file


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _expected_delta(adapter: Path, module: str, scale: float) -> torch.Tensor:
    """scale * (alpha / r) * B @ A (rsLoRA: alpha / sqrt(r)) for one module, straight from the adapter files."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    tensors = load_file(adapter / "adapter_model.safetensors")
    a = tensors[f"base_model.model.{module}.lora_A.weight"]
    b = tensors[f"base_model.model.{module}.lora_B.weight"]
    r = config["r"]
    scaling = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
    return scale * scaling * (b.double() @ a.double())


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
@pytest.mark.parametrize("scale", [1.0, 0.5, -2.0, 0.0])
def test_reference_merge_is_scale_times_alpha_over_r_times_b_a(tiny: Any, tmp_path: Path, scale: float,
                                                               rslora: bool) -> None:
    base_folder = tiny.base("gemma3")
    adapter = make_adapter(base_folder, tmp_path / "adapter", targets=ALL_PROJECTIONS, r=4, alpha=8, rslora=rslora)
    base = _weights(reference_model(base_folder, []))
    merged = _weights(reference_model(base_folder, [(adapter, scale)]))
    assert merged.keys() == base.keys()  # merge_and_unload leaves no LoRA parameters behind
    changed = 0
    for name, weight in merged.items():
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] in ALL_PROJECTIONS:
            delta = weight.double() - base[name].double()
            torch.testing.assert_close(delta, _expected_delta(adapter, module, scale), rtol=1e-4, atol=1e-6)
            changed += 1
        else:
            assert torch.equal(weight, base[name]), name
    assert changed == len(ALL_PROJECTIONS) * json.loads((base_folder / "config.json").read_text())["num_hidden_layers"]


def test_two_adapters_add_up(tiny: Any) -> None:
    base_folder, first, second = tiny.base("gemma3"), tiny.adapter("gemma3", "qv"), tiny.adapter("gemma3", "all")
    base = _weights(reference_model(base_folder, []))
    merged = _weights(reference_model(base_folder, [(first, 1.0), (second, 0.5)]))
    module = "model.layers.1.self_attn.v_proj"  # targeted by both
    expected = _expected_delta(first, module, 1.0) + _expected_delta(second, module, 0.5)
    delta = merged[module + ".weight"].double() - base[module + ".weight"].double()
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-6)


def test_compare_rows_matches_torch_kl_div() -> None:
    generator = np.random.default_rng(7)
    reference = generator.normal(0, 3, (5, 1000)).astype(np.float32)
    gguf = reference + generator.normal(0, 0.3, reference.shape).astype(np.float32)
    targets = generator.integers(0, 1000, 5)
    kld, same, nll_ref, nll_gguf = compare_rows(reference, gguf, targets)
    log_p = torch.log_softmax(torch.from_numpy(reference).double(), -1)
    log_q = torch.log_softmax(torch.from_numpy(gguf).double(), -1)
    expected = torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    np.testing.assert_allclose(kld, expected.numpy(), rtol=1e-9)
    np.testing.assert_array_equal(same, reference.argmax(1) == gguf.argmax(1))
    np.testing.assert_allclose(nll_ref, -log_p[np.arange(5), targets].numpy(), rtol=1e-9)
    np.testing.assert_allclose(nll_gguf, -log_q[np.arange(5), targets].numpy(), rtol=1e-9)
    # The same distribution shifted by a constant is the same distribution.
    kld_same, same_same, _, _ = compare_rows(reference, reference + 5.0, targets)
    assert np.all(np.abs(kld_same) < 1e-9) and same_same.all()


def test_default_eval_text_is_a_few_hundred_words() -> None:
    words = default_eval_text().split()
    assert 300 <= len(words) <= 1000


def test_tokenize_adds_one_bos(gemma_270m: Path) -> None:
    ids, n_vocab = tokenize(gemma_270m, "<bos>Fever and cough.")
    assert n_vocab == 262144
    assert ids[0] == 2 and 2 not in ids[1:]  # special text is not parsed as a token


def test_no_outputs_and_too_short_text(gemma_270m: Path, hf_base_270m: Path) -> None:  # noqa: F811
    assert verify_outputs(hf_base_270m, [], [], "anything") == {}
    with pytest.raises(ConversionError, match="too short"):
        verify_outputs(hf_base_270m, [], [gemma_270m], "")


def short_text() -> str:
    """The shipped text's first paragraph (about 250 tokens): the llama.cpp side's all-position logits are the slow part."""
    return default_eval_text().split("\n\n")[0]


@pytest.fixture(scope="module")
def embedded_figures(gemma_270m: Path, hf_base_270m: Path) -> VerifyFigures:  # noqa: F811
    """The embedded Q4_K_M file against its own dequantized weights in float32."""
    calls: list[tuple[str, int, int]] = []
    figures = verify_outputs(hf_base_270m, [], [gemma_270m], short_text(), progress=lambda *c: calls.append(c))
    assert {stage for stage, _, _ in calls} == {"verify: reference", f"verify: {gemma_270m.name}"}
    assert calls[-1] == (f"verify: {gemma_270m.name}", 1, 1)
    return figures[str(gemma_270m)]


@pytest.mark.slow
def test_quantized_file_is_close_to_its_dequantized_weights(gemma_270m: Path, embedded_figures: VerifyFigures) -> None:
    figures = embedded_figures
    ids, _ = tokenize(gemma_270m, short_text())
    assert figures.tokens == len(ids) - 1
    # Same weights up to bf16 rounding, but llama.cpp multiplies Q4_K/Q5_0 blocks against
    # 8-bit-quantized activations: close, yet measurably not identical.
    assert 0 < figures.mean_kld < 0.05
    assert figures.mean_kld <= figures.p99_kld
    assert figures.top1 > 0.9
    assert math.isfinite(figures.ppl_reference) and 1 < figures.ppl_reference < 100
    assert figures.ppl_gguf == pytest.approx(figures.ppl_reference, rel=0.05)
    assert set(figures.to_dict()) == {"tokens", "mean_kld", "p99_kld", "top1", "ppl_reference", "ppl_gguf", "mode"}


@pytest.mark.slow
def test_gguf_base_and_short_chunks_agree(gemma_270m: Path, embedded_figures: VerifyFigures) -> None:
    """A GGUF file as the base (transformers dequantizes it), and the text cut into several chunks."""
    figures = verify_outputs(gemma_270m, [], [gemma_270m], short_text(), chunk_tokens=100)[str(gemma_270m)]
    chunks = math.ceil((embedded_figures.tokens + 1) / 100)
    assert chunks >= 3
    assert figures.tokens == embedded_figures.tokens + 1 - chunks  # each chunk's last token predicts nothing
    assert 0 < figures.mean_kld < 0.05
    assert figures.top1 > 0.9


@pytest.mark.slow
def test_adapter_in_the_reference_is_detected(
    gemma_270m: Path,
    hf_base_270m: Path,  # noqa: F811
    lora_270m: Path,  # noqa: F811
    embedded_figures: VerifyFigures,
) -> None:
    """The GGUF lacks the adapter the reference has (once at scale 1, once at 0): the figures must show it."""
    figures = verify_outputs(hf_base_270m, [(lora_270m, 1.0), (lora_270m, 0.0)], [gemma_270m], short_text())
    missing = figures[str(gemma_270m)]
    assert missing.mean_kld > 10 * embedded_figures.mean_kld
    assert missing.top1 < embedded_figures.top1


def test_every_conversion_is_verified_quickly_by_default(tiny, tmp_path: Path) -> None:
    """No flag: the quick check runs on every output, and the report, the file and `inspect` carry its figures."""
    import subprocess
    import sys

    import gguf

    out, report_path = tmp_path / "m.gguf", tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "medgemma_convert", "--base", str(tiny.base("gemma3")),
                             "--adapter", str(tiny.adapter("gemma3", "all")), "--out", str(out), "--quant", "f32,q8_0",
                             "--report", str(report_path), "--progress", "none"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert "verify" in [s["stage"] for s in report["stages"]]
    for output in report["outputs"]:
        figures = output["verification"]
        assert figures["mode"] == "quick" and 100 < figures["tokens"] <= QUICK_TOKENS - 1
        stored = gguf.GGUFReader(output["path"]).fields["medgemma.verification"].contents()
        assert json.loads(stored) == figures
        assert output["sha256"] == sha256_file(Path(output["path"]))  # hashed after the figures were added
    by_quant = {o["quant"]: o["verification"] for o in report["outputs"]}
    assert by_quant["f32"]["mean_kld"] < 1e-4 and by_quant["f32"]["top1"] > 0.99  # the merge is exact (near-ties aside)
    assert by_quant["f32"]["mean_kld"] < by_quant["q8_0"]["mean_kld"] < 0.05
    shown = subprocess.run([sys.executable, "-m", "medgemma_convert", "inspect", str(tmp_path / "m-q8_0.gguf")],
                           capture_output=True, text=True)
    assert shown.returncode == 0 and '"mode": "quick"' in shown.stdout
