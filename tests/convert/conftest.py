"""Session fixtures of the conversion tests: tiny random Gemma-2/Gemma-3 bases and LoRA adapters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.tiny import (
    ALL_PROJECTIONS, TEST_TEXT, gemma2_config, gemma3_config, make_adapter, make_model, train_tokenizer,
)

# name -> (targets, make_adapter keyword arguments); every adapter exists for both architectures.
ADAPTERS = {
    "qv": (("q_proj", "v_proj"), {"r": 4, "alpha": 8, "seed": 1}),
    "mlp": (("o_proj", "gate_proj", "up_proj", "down_proj"), {"r": 8, "alpha": 4, "seed": 2}),
    "all": (ALL_PROJECTIONS, {"r": 4, "alpha": 16, "seed": 3}),
    "rslora": (("q_proj", "k_proj", "down_proj"), {"r": 16, "alpha": 8, "rslora": True, "seed": 4}),
    # PEFT's per-module rank and alpha (rank_pattern / alpha_pattern).
    "patterns": (("q_proj", "v_proj", "down_proj"),
                 {"r": 4, "alpha": 8, "rank_pattern": {"down_proj": 8}, "alpha_pattern": {"v_proj": 32}, "seed": 5}),
}


@dataclass(frozen=True)
class TinyModels:
    tokenizer: Path
    bases: dict[str, Path]
    adapters: dict[tuple[str, str], Path]

    def base(self, arch: str) -> Path:
        return self.bases[arch]

    def adapter(self, arch: str, name: str) -> Path:
        return self.adapters[(arch, name)]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Tokenizer, both bases and all adapters, built once per session (a few seconds)."""
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = root / "tokenizer"
    train_tokenizer(tokenizer)
    bases = {
        "gemma3": make_model(root / "gemma3", gemma3_config(), tokenizer, seed=0),
        "gemma2": make_model(root / "gemma2", gemma2_config(), tokenizer, seed=10),
    }
    adapters = {}
    for arch, base in bases.items():
        for name, (targets, kwargs) in ADAPTERS.items():
            adapters[(arch, name)] = make_adapter(base, root / f"{arch}-lora-{name}", targets=targets, **kwargs)
    return TinyModels(tokenizer, bases, adapters)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty folder for a conversion's outputs (a refused one must leave it empty)."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture(scope="session")
def token_ids(tiny: TinyModels) -> list[int]:
    """The test text as the tiny tokenizer encodes it, after one BOS."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny.tokenizer / "tokenizer.model"))
    return [2, *sp.encode(TEST_TEXT)]
