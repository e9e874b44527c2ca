"""The model library without Qt: the list, keys, remembered settings, the preset for a new file, loads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest

from medgemma_desktop.answer import OffloadReport
from medgemma_desktop.generation import Loaded
from medgemma_desktop.history import History
from medgemma_desktop.library import (
    EMBEDDED_KEY,
    EMBEDDED_TITLE,
    LAST_MODEL_SETTING,
    RECENT_LIMIT,
    AdapterUse,
    LoadedModel,
    ModelLibrary,
    describe,
    model_key,
)
from medgemma_desktop.settings import ChatSettings, LoadSettings
from medgemma_models import provenance
from medgemma_models.catalog import DEFAULT_PRESET
from medgemma_models.gguf_info import read_model_info
from medgemma_models.store import models_dir


@pytest.fixture
def library(tmp_path: Path) -> Iterator[ModelLibrary]:
    with History(tmp_path / "history.sqlite3") as db:
        library = ModelLibrary(db)
        library.demo = None  # the packaged demo adapter's entry is tested in test_adapter_library.py
        yield library


def tiny_gguf(path: Path, fields: dict[str, object]) -> Path:
    """A one-tensor Gemma-3 GGUF whose header carries `fields` (strings as strings, the rest as JSON)."""
    writer = gguf.GGUFWriter(path, "gemma3")
    writer.add_name(path.stem)
    for key, value in fields.items():
        if isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value if isinstance(value, str) else json.dumps(value))
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def loaded(path: Path) -> Loaded:
    return Loaded(path=path, info=read_model_info(path), n_ctx=2048, report=OffloadReport("cpu", 0, 1, "CPU"), sha256="a" * 64)


def test_keys_name_the_file_or_the_embedded_model(tmp_path: Path) -> None:
    file = tmp_path / "m.gguf"
    assert model_key(None) == EMBEDDED_KEY
    assert model_key(tmp_path / "." / "m.gguf") == model_key(file) == str(file.resolve())
    with_adapter = model_key(file, (AdapterUse(tmp_path / "cot.gguf", 0.5),))
    assert with_adapter.startswith(str(file.resolve())) and with_adapter.endswith("cot.gguf:0.5")


def test_the_list_holds_the_embedded_model_store_files_and_files_opened_before(library: ModelLibrary,
                                                                               tmp_path: Path) -> None:
    store_file = tiny_gguf(models_dir() / "stored.gguf", {})
    (models_dir() / "half-written.gguf.partial").write_bytes(b"GGUF")
    elsewhere = tiny_gguf(tmp_path / "elsewhere.gguf", {})
    library.remember_recent(elsewhere)
    library.remember_recent(tmp_path / "deleted-since.gguf")
    entries = library.entries()
    assert [e.path for e in entries] == [None, store_file, elsewhere]
    assert entries[0].title == EMBEDDED_TITLE and entries[1].title == "stored.gguf"
    assert library.to_inspect() == [store_file, elsewhere]
    assert library.to_inspect() == []  # asked once
    library.set_info(store_file, read_model_info(store_file))
    library.set_info(elsewhere, "unreadable: broken header")
    titles = [e.title for e in library.entries()]
    assert titles[1].startswith("stored · ") and titles[2] == "elsewhere.gguf (unreadable)"
    assert "bpw real" in library.entries()[1].tooltip


def test_recent_files_are_kept_newest_first_and_bounded(library: ModelLibrary, tmp_path: Path) -> None:
    for i in range(RECENT_LIMIT + 3):
        library.remember_recent(tmp_path / f"m{i}.gguf")
    library.remember_recent(tmp_path / "m5.gguf")
    stored = library.history.get_setting("recent_models")
    assert len(stored) == RECENT_LIMIT and stored[0] == str(tmp_path / "m5.gguf") and stored.count(stored[0]) == 1


def test_a_new_file_gets_the_preset_of_its_provenance(library: ModelLibrary, tmp_path: Path) -> None:
    file = tiny_gguf(tmp_path / "cot.gguf", {provenance.KEY_PRESET: "medical-cot-270m"})
    pending, saved = library.begin_load(file)
    assert saved is None and pending.fresh and library.loading
    shown = ChatSettings.from_dict({})
    chat = library.finish_load(loaded(file), shown, LoadSettings(n_ctx=2048))
    assert chat.preset == "medical-cot-270m" and not library.loading
    assert library.current is not None and library.current.key == model_key(file) and not library.current.embedded
    remembered = library.saved_settings(model_key(file))
    assert remembered == (chat, LoadSettings(n_ctx=2048))
    assert library.history.get_setting(LAST_MODEL_SETTING) == str(file) and library.last_model() == file
    assert library.current is not None and not library.current.embedded and library.current.path == file


def test_the_list_shows_an_exports_verification_figures(tmp_path: Path) -> None:
    """Ours, checked: its figures; ours, not checked (--no-verify): says so; anyone else's: neither."""
    figures = {"tokens": 319, "mean_kld": 0.0052, "top1": 0.9467, "mode": "quick"}
    checked = tiny_gguf(tmp_path / "checked.gguf", {provenance.KEY_CONVERTER: "medgemma-convert 0.2.0",
                                                    provenance.KEY_VERIFICATION: figures})
    unchecked = tiny_gguf(tmp_path / "unchecked.gguf", {provenance.KEY_CONVERTER: "medgemma-convert 0.2.0"})
    theirs = tiny_gguf(tmp_path / "theirs.gguf", {})
    garbled = tiny_gguf(tmp_path / "garbled.gguf", {provenance.KEY_CONVERTER: "medgemma-convert 0.2.0",
                                                    provenance.KEY_VERIFICATION: "{not json"})
    assert describe(read_model_info(checked)).endswith(" · verified (quick, 319 tokens): KLD 0.0052, top-1 94.7%")
    assert describe(read_model_info(unchecked)).endswith(" MB · not verified")
    assert describe(read_model_info(garbled)).endswith(" MB · not verified")
    assert describe(read_model_info(theirs)).endswith(" MB")
    # The status bar says it for the model in use, where the facts line is cut short by the window.
    in_use = LoadedModel(loaded(checked), model_key(checked), embedded=False)
    assert in_use.status() == f"checked · {in_use.offload} · verified (quick, 319 tokens): KLD 0.0052, top-1 94.7%"
    other = LoadedModel(loaded(theirs), model_key(theirs), embedded=False)
    assert other.status() == f"theirs · {other.offload}"


@pytest.mark.parametrize("fields", [
    {provenance.KEY_PRESET: "no-such-preset"},
    {provenance.KEY_PRESET: 7},
    {provenance.KEY_ADAPTERS: "not json ["},
    {provenance.KEY_ADAPTERS: {"id": "a mapping, not a list"}},
    {provenance.KEY_ADAPTERS: [{"id": 5}, "x", None], provenance.KEY_BASE: 3},
])
def test_malformed_provenance_falls_back_to_plain_chat(library: ModelLibrary, tmp_path: Path, fields: dict) -> None:
    file = tiny_gguf(tmp_path / "odd.gguf", fields)
    library.begin_load(file)
    assert library.finish_load(loaded(file), ChatSettings.from_dict({}), LoadSettings()).preset == DEFAULT_PRESET


def test_remembered_settings_win_over_the_provenance(library: ModelLibrary, tmp_path: Path) -> None:
    file = tiny_gguf(tmp_path / "cot.gguf", {provenance.KEY_PRESET: "medical-cot-270m"})
    mine = ChatSettings.from_dict({"preset": "gemma-chat", "top_k": 7})
    library.history.set_model_settings(model_key(file), {**mine.to_dict(), **LoadSettings().to_dict()})
    _, saved = library.begin_load(file)
    assert saved == (mine, LoadSettings())
    assert library.finish_load(loaded(file), mine, LoadSettings()) == mine


def test_settings_are_not_saved_while_a_load_is_under_way(library: ModelLibrary, tmp_path: Path) -> None:
    first = tiny_gguf(tmp_path / "first.gguf", {})
    library.begin_load(first)
    library.finish_load(loaded(first), ChatSettings.from_dict({}), LoadSettings())
    second = tiny_gguf(tmp_path / "second.gguf", {})
    library.begin_load(second)
    library.save_settings(ChatSettings.from_dict({"top_k": 3}), LoadSettings())
    assert library.history.model_settings(model_key(second)) is None
    restored = library.abort_load()  # failed or cancelled: the first model stays, with its settings
    assert restored == (ChatSettings.from_dict({}), LoadSettings()) and library.current.path == first
    library.save_settings(ChatSettings.from_dict({"top_k": 3}), LoadSettings())
    assert library.saved_settings(model_key(first))[0].top_k == 3


def test_reload_loads_the_model_in_use_again(library: ModelLibrary, tmp_path: Path) -> None:
    assert library.begin_reload() is None  # nothing loaded yet
    file = tiny_gguf(tmp_path / "m.gguf", {})
    library.begin_load(None)
    library.finish_load(loaded(file), ChatSettings.from_dict({}), LoadSettings())
    assert library.current.embedded and library.current.key == EMBEDDED_KEY
    assert library.history.get_setting(LAST_MODEL_SETTING) is None
    pending = library.begin_reload()
    assert pending is not None and pending.path is None and pending.key == EMBEDDED_KEY and not pending.fresh
    assert library.begin_reload() is None  # one load at a time
