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


@dataclass(frozen=True)
class TinyVision:
    """A tiny multimodal Gemma 3 as transformers 5 saves it, the same as Google's release names it, and adapters."""

    base: Path  # transformers 5 names: vision_tower.encoder.*, language_model.model.*
    release_base: Path  # the release's names: vision_tower.vision_model.*
    all_linear: Path  # PEFT "all-linear": vision and language targets (base_model.model.model.vision_tower.encoder.*)
    release_all_linear: Path  # the same adapter with older PEFT's names (base_model.model.vision_tower.vision_model.*)
    vision_only: Path  # targets on the vision tower only
    tokenizer: Path


@pytest.fixture(scope="session")
def tiny_vision(tmp_path_factory: pytest.TempPathFactory) -> TinyVision:
    """The multimodal fixture, built once per session (a few seconds)."""
    from tests.support.tiny_vision import (
        IMAGE_TOKENS, VISION_ONLY_TARGETS, make_multimodal_adapter, make_multimodal_model, with_release_names,
    )

    root = tmp_path_factory.mktemp("tiny-vision")
    tokenizer = root / "tokenizer"
    train_tokenizer(tokenizer, IMAGE_TOKENS)
    base = make_multimodal_model(root / "gemma3-mm", tokenizer, seed=30)
    all_linear = make_multimodal_adapter(base, root / "lora-all-linear", seed=31)
    vision_only = make_multimodal_adapter(base, root / "lora-vision", targets=VISION_ONLY_TARGETS, r=8, alpha=8, seed=32)
    return TinyVision(
        base=base, release_base=with_release_names(base, root / "gemma3-mm-release"), all_linear=all_linear,
        release_all_linear=with_release_names(all_linear, root / "lora-all-linear-release", adapter=True),
        vision_only=vision_only, tokenizer=tokenizer,
    )


@pytest.fixture(scope="session")
def token_ids_mm(tiny_vision: TinyVision) -> list[int]:
    """The test text as the multimodal model's tokenizer encodes it, after one BOS."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_vision.tokenizer / "tokenizer.model"))
    return [2, *sp.encode(TEST_TEXT)]
