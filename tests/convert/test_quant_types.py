"""Tensor-type control: refusals before any work, the types reaching the file, and the q4_speed recipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from medgemma_convert.options import ConversionOptions
from medgemma_convert.pipeline import convert
from medgemma_convert.plan import plan
from medgemma_models.errors import ConversionError
from medgemma_models.quants import BY_NAME


def _types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def _options(tiny, out: Path, quant: str = "q8_0", **kwargs) -> ConversionOptions:
    return ConversionOptions.create(base=str(tiny.base("gemma3")), out=out, quant=quant, **kwargs)


# The tiny Gemma-3 has rows of 64 (hidden size) and 128 (ffn_down): no 256-value block fits them.
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"output_type": "q4_k"}, "the output type puts token_embd.weight in q4_k, whose blocks of 256 values do not divide its rows of 64"),
    ({"output_type": "q4_0", "embedding_type": "q6_k"}, "the embedding type puts token_embd.weight in q6_k"),
    ({"output_type": "q5_k", "embedding_type": "q8_0"}, "the output type puts output.weight in q5_k"),
    ({"tensor_types": ["ffn_down=q3_k"]}, r"--tensor-type ffn_down=q3_k puts blk.0.ffn_down.weight in q3_k, whose blocks of 256 values do not divide its rows of 128"),
], ids=["output", "embedding", "untied-output", "tensor-type"])
def test_types_that_do_not_fit_the_rows_are_refused_before_any_work(tiny, tmp_path: Path, kwargs, message) -> None:
    with pytest.raises(ConversionError, match=message) as refused:
        plan(_options(tiny, tmp_path / "m.gguf", **kwargs))
    assert "types that fit: f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, iq4_nl" in str(refused.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"output_type": "q9_9"}, "--output-type: unknown tensor type 'q9_9'"),
    ({"tensor_types": ["ffn_down"]}, "expected REGEX=TYPE"),
    ({"tensor_types": ["ffn_(down=q4_0"]}, "not a regular expression"),
    ({"tensor_types": ["ffn_down=q4_k_m"]}, "unknown tensor type 'q4_k_m'"),
    ({"quant": "f16", "imatrix": "auto"}, "apply to quantized outputs"),
    ({"calibration_text": Path("notes.txt"), "imatrix": "x.gguf"}, "--calibration-text is used by --imatrix auto only"),
    ({"verify": "sometimes"}, "unknown verification 'sometimes'"),
])
def test_malformed_options_are_refused(tiny, tmp_path: Path, kwargs, message) -> None:
    with pytest.raises(ConversionError, match=message):
        _options(tiny, tmp_path / "m.gguf", **kwargs)


def test_cli_refusal_is_one_line(tiny, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "medgemma_convert", "--base", str(tiny.base("gemma3")),
                             "--out", str(tmp_path / "m.gguf"), "--quant", "q4_k_m", "--output-type", "Q4_K",
                             "--no-verify", "--progress", "none"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: q4_k_m: the output type puts")


def test_requested_types_are_in_the_file_and_it_loads(tiny, tmp_path: Path) -> None:
    """Untied: a separate output matrix in its own type; the tied case keeps one matrix for both."""
    from llama_cpp import Llama

    untied, tied = tmp_path / "untied.gguf", tmp_path / "tied.gguf"
    convert(plan(_options(tiny, untied, quant="q8_0", output_type="q4_0", embedding_type="q8_0",
                          tensor_types=[r"ffn_down=q4_1", r"blk\.0\.attn_q=f16"])))
    types = _types(untied)
    assert (types["output.weight"], types["token_embd.weight"]) == ("Q4_0", "Q8_0")
    assert {types[f"blk.{i}.ffn_down.weight"] for i in range(6)} == {"Q4_1"}
    assert (types["blk.0.attn_q.weight"], types["blk.1.attn_q.weight"]) == ("F16", "Q8_0")

    convert(plan(_options(tiny, tied, quant="q8_0", output_type="q4_1")))
    types = _types(tied)
    assert "output.weight" not in types and types["token_embd.weight"] == "Q4_1"
    for path in (untied, tied):
        llm = Llama(model_path=str(path), n_ctx=64, verbose=False)
        try:
            llm.eval(llm.tokenize(b"Fever and cough."))
        finally:
            llm.close()


def test_q4_speed_writes_its_recipe(tiny, tmp_path: Path) -> None:
    out = tmp_path / "speed.gguf"
    report = convert(plan(_options(tiny, out, quant="q4_speed")))
    recipe = BY_NAME["q4_speed"]
    types = _types(out)
    output = types.get("output.weight", types["token_embd.weight"])
    assert output == recipe.output_type.upper()
    assert types["token_embd.weight"] == recipe.embedding_type.upper()
    assert ("output.weight" in types) == (recipe.output_type != recipe.embedding_type)
    assert report.inputs["recipes"]["q4_speed"]["output_type"] == recipe.output_type
