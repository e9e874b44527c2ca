"""The f32 export, run through llama.cpp, computes what transformers + PEFT compute on the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.support.tiny import kld, llama_logits, reference_logits

from medgemma_convert.options import ConversionOptions
from medgemma_convert.pipeline import convert
from medgemma_convert.plan import plan

# case -> [(adapter name, scale)]
CASES = {
    "no-adapter": [],
    "one-adapter": [("qv", 1.0)],
    "two-adapters": [("qv", 1.0), ("mlp", 1.0)],
    "scaled-adapter": [("all", 0.5)],
    "rslora": [("rslora", 1.0)],
    "all-seven-targets": [("all", 1.0)],
    "rank-and-alpha-patterns": [("patterns", 1.0)],
    "negative-scale": [("qv", -1.0)],
}


def export(base: Path, adapters: list[tuple[Path, float]], out: Path, quant: str = "f32") -> dict:
    options = ConversionOptions.create(base=str(base), out=out, adapters=[f"{p}:{s}" for p, s in adapters], quant=quant)
    return convert(plan(options))


@pytest.mark.parametrize("arch", ["gemma3", "gemma2"])
@pytest.mark.parametrize("case", list(CASES))
def test_f32_export_matches_transformers_with_peft(tiny, token_ids, tmp_path: Path, arch: str, case: str) -> None:
    base = tiny.base(arch)
    adapters = [(tiny.adapter(arch, name), scale) for name, scale in CASES[case]]
    out = tmp_path / "model.gguf"
    export(base, adapters, out)

    expected = reference_logits(base, adapters, token_ids)
    got = llama_logits(out, token_ids)
    divergence = kld(expected, got)
    assert np.array_equal(expected.argmax(-1), got.argmax(-1)), f"top-1 differs at {np.flatnonzero(expected.argmax(-1) != got.argmax(-1))}"
    assert divergence.mean() < 1e-4, f"mean KLD {divergence.mean():.2e}"
    if adapters:
        # The adapters must matter, or agreement would prove nothing about the merge.
        unmerged = reference_logits(base, [], token_ids)
        assert kld(expected, unmerged).mean() > 1e-2
        assert (expected.argmax(-1) != unmerged.argmax(-1)).any()
