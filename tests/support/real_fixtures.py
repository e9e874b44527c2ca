"""Session fixtures for the real Gemma-3-270M: its HF-format base and a random LoRA on it.

They are imported once, in tests/conftest.py, so that each is built once a session. The HF base
takes about a minute to build, so it is cached in the checkout's git-ignored `build/test-cache/`,
keyed by the GGUF's sha256 and the layout version: later runs reuse it; deleting the folder rebuilds
it. Not in pytest's cache: that is a plugin (`-p no:cacheprovider` turns it off), and a fixture
must work however pytest is started.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.support.hf_base import LAYOUT_VERSION, build_hf_base
from tests.support.tiny import ALL_PROJECTIONS, make_adapter

from medgemma_models.files import sha256_file


# The adapter's delta as a fraction of each weight's RMS: enough to change the next-token
# distributions clearly, not so much that the model turns to noise.
LORA_SIZE = 0.1
TEST_CACHE = Path(__file__).resolve().parents[2] / "build" / "test-cache"


@pytest.fixture(scope="session")
def hf_base_270m(gemma_270m: Path) -> Path:
    """A Google-style HF folder (bf16 safetensors, tokenizer.model, JSON files) of the embedded 270M."""
    key = f"hf-base-270m-v{LAYOUT_VERSION}-{sha256_file(gemma_270m)[:16]}"
    folder = TEST_CACHE / key
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model"
    if not (model / "config.json").is_file():
        # Build beside the final name and rename, so an interrupted build is never taken as done.
        partial = folder / "model.partial"
        shutil.rmtree(partial, ignore_errors=True)
        build_hf_base(gemma_270m, partial)
        partial.rename(model)
    return model


@pytest.fixture(scope="session")
def lora_270m(hf_base_270m: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LoRA, r=8, on all seven projections, with a delta large enough to change the output."""
    folder = tmp_path_factory.mktemp("lora-270m") / "adapter"
    return make_adapter(hf_base_270m, folder, targets=ALL_PROJECTIONS, r=8, alpha=16, seed=8, size=LORA_SIZE)
