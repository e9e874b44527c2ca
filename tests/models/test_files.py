import os

import pytest

from medgemma_models.errors import OutputError
from medgemma_models.files import atomic_folder, atomic_output, format_bytes


def test_success_renames_into_place(tmp_path):
    target = tmp_path / "out.gguf"
    with atomic_output(target) as partial:
        assert partial.name == "out.gguf.partial"
        partial.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    assert not partial.exists()


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_leaves_nothing(tmp_path, error):
    target = tmp_path / "out.gguf"
    with pytest.raises(type(error)):
        with atomic_output(target) as partial:
            partial.write_bytes(b"half")
            raise error
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_force(tmp_path):
    target = tmp_path / "out.gguf"
    target.write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists"):
        with atomic_output(target) as partial:
            partial.write_bytes(b"new")
    assert target.read_bytes() == b"old"
    with atomic_output(target, force=True) as partial:
        partial.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_missing_and_read_only_folders(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        with atomic_output(tmp_path / "nope" / "x.gguf"):
            raise AssertionError("not reached")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(OutputError, match="not writable"):
            with atomic_output(locked / "x.gguf"):
                raise AssertionError("not reached")
    finally:
        locked.chmod(0o700)


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "hf"
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(target) as partial:
            (partial / "config.json").write_text("{}")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(target) as partial:
        assert partial.name == "hf.partial" and list(partial.iterdir()) == []
        (partial / "config.json").write_text("{}")
        assert not target.exists()
    assert [p.name for p in target.iterdir()] == ["config.json"]
    with pytest.raises(OutputError, match="already exists"):
        with atomic_folder(target):
            raise AssertionError("not reached")
    # With force, a failed run keeps the old folder; a finished one replaces it, and no copy is left.
    with pytest.raises(RuntimeError):
        with atomic_folder(target, force=True) as partial:
            raise RuntimeError("disk full")
    assert [p.name for p in target.iterdir()] == ["config.json"]
    with atomic_folder(target, force=True) as partial:
        (partial / "model.safetensors").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_sizes_read_as_file_managers_show_them():
    assert [format_bytes(n) for n in (999, 1_000, 253_000_000, 16_500_000_000)] == [
        "999 bytes", "1.0 kB", "253.0 MB", "16.5 GB"]
