"""The data folder, the models folder and written outputs are private to their owner (POSIX)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from medgemma_models import store
from medgemma_models.files import atomic_output

pytestmark = pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX; Windows uses the folder's ACL")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most desktops start programs with: new files 0644, new folders 0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_data_and_models_folders_are_private(medgemma_home: Path, usual_umask: None) -> None:
    assert not medgemma_home.exists()
    assert mode(store.home()) == 0o700
    assert mode(store.models_dir()) == 0o700
    assert store.history_path().parent == medgemma_home


def test_folders_made_by_an_older_version_are_made_private(medgemma_home: Path, usual_umask: None) -> None:
    (medgemma_home / "models").mkdir(parents=True)
    assert mode(medgemma_home) == 0o755
    store.models_dir()
    assert mode(medgemma_home) == 0o700 and mode(medgemma_home / "models") == 0o700


def test_partial_and_final_outputs_are_private(tmp_path: Path, usual_umask: None) -> None:
    target = tmp_path / "chat.md"
    with atomic_output(target) as partial:
        assert mode(partial) == 0o600  # private while it is written, too
        partial.write_text("a medical chat")
        assert mode(partial) == 0o600
    assert mode(target) == 0o600


def test_an_output_its_writer_recreated_is_made_private(tmp_path: Path, usual_umask: None) -> None:
    target = tmp_path / "model.gguf"
    with atomic_output(target, force=True) as partial:
        partial.unlink()  # some writers delete and create their file themselves
        partial.write_bytes(b"GGUF")
        assert mode(partial) == 0o644
    assert mode(target) == 0o600
