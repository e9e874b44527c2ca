"""Base + adapter combinations in the model library, without Qt: listing, keys, preset, defaults, the base search."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from medgemma_desktop.adapter_files import read_adapter
from medgemma_desktop.answer import OffloadReport
from medgemma_desktop.generation import AdapterUse, Loaded
from medgemma_desktop.history import History
from medgemma_desktop.library import (
    DEMO_TITLE,
    EMBEDDED_KEY,
    EMBEDDED_TITLE,
    RECENT_COMBINATIONS_SETTING,
    ModelLibrary,
    combination_title,
    model_key,
)
from medgemma_desktop.resolve import find_base
from medgemma_desktop.settings import ChatSettings, LoadSettings
from medgemma_models.catalog import DEFAULT_PRESET
from medgemma_models.gguf_info import read_model_info

from tests.support.adapter_files import write_adapter

# The 1B's attention shapes: an adapter made for another model size.
SHAPES_1B = {"attn_q": (1152, 1024), "attn_v": (1152, 256)}


@pytest.fixture
def library(tmp_path: Path) -> Iterator[ModelLibrary]:
    with History(tmp_path / "history.sqlite3") as db:
        library = ModelLibrary(db)
        library.demo = None
        yield library


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    return {
        "cot": write_adapter(folder / "cot.gguf", name="test cot", preset="medical-cot-270m", layers=2),
        "plain": write_adapter(folder / "plain.gguf", name="plain", preset=None, layers=2),
        "1b": write_adapter(folder / "wide.gguf", shapes=SHAPES_1B, layers=2),
        "gemma2": write_adapter(folder / "g2.gguf", arch="gemma2", layers=2),
    }


def loaded(base: Path, *adapter_paths: Path) -> Loaded:
    return Loaded(path=base, info=read_model_info(base), n_ctx=2048, report=OffloadReport("cpu", 0, 18, "CPU"),
                  sha256="a" * 64, adapters=tuple(read_adapter(p) for p in adapter_paths))


def test_the_demo_combination_comes_first_and_is_the_default(library: ModelLibrary, adapters: dict[str, Path],
                                                             gemma_270m: Path) -> None:
    assert library.default_choice() == (None, ()) and library.start_choice() == (None, ())  # no demo in this build
    library.demo = adapters["cot"]
    demo = (AdapterUse(adapters["cot"], 1.0),)
    entries = library.entries()
    assert [(e.path, e.title, e.adapters) for e in entries[:2]] == [(None, DEMO_TITLE, demo), (None, EMBEDDED_TITLE, ())]
    assert entries[0].key != entries[1].key == EMBEDDED_KEY
    assert library.start_choice() == library.default_choice() == (None, demo)  # a first start opens the demo
    library.begin_load(None, demo)
    chat = library.finish_load(loaded(gemma_270m, adapters["cot"]), ChatSettings.from_dict({}), LoadSettings())
    assert chat.preset == "medical-cot-270m" and library.current.title == DEMO_TITLE
    assert library.selected_key() == entries[0].key and [e.title for e in library.entries()].count(DEMO_TITLE) == 1
    library.begin_load(None)  # the user picks the plain base: the next start opens it
    library.finish_load(loaded(gemma_270m), ChatSettings.from_dict({}), LoadSettings())
    assert library.start_choice() == (None, ())


def test_a_combination_has_its_own_key_preset_settings_and_entry(library: ModelLibrary, adapters: dict[str, Path],
                                                                 gemma_270m: Path) -> None:
    uses = (AdapterUse(adapters["cot"], 0.5), AdapterUse(adapters["plain"], 1.0))
    pending, saved = library.begin_load(gemma_270m, uses)
    assert saved is None and pending.fresh and pending.key == model_key(gemma_270m, uses) != model_key(gemma_270m)
    chat = library.finish_load(loaded(gemma_270m, adapters["cot"], adapters["plain"]), ChatSettings.from_dict({}),
                               LoadSettings(n_ctx=1024))
    # The preset comes from the adapter that names one; the base alone stays plain chat.
    assert chat.preset == "medical-cot-270m" and chat.think
    assert library.current.title == "Gemma 3 270m + test cot \u00d70.5 + plain"
    assert library.current.adapters == uses and library.saved_settings(pending.key) == (chat, LoadSettings(n_ctx=1024))
    assert library.saved_settings(model_key(gemma_270m)) is None
    assert library.start_choice() == (gemma_270m, uses)
    combination = [e for e in library.entries() if e.adapters]
    assert [(e.path, e.adapters, e.key) for e in combination] == [(gemma_270m, uses, pending.key)]
    library.begin_load(gemma_270m)
    plain = library.finish_load(loaded(gemma_270m), ChatSettings.from_dict({}), LoadSettings())
    assert plain.preset == DEFAULT_PRESET
    _, again = library.begin_load(gemma_270m, uses)  # back to the combination: its own settings
    assert again == (chat, LoadSettings(n_ctx=1024))


def test_combinations_whose_files_are_gone_or_malformed_are_not_listed(library: ModelLibrary, tmp_path: Path,
                                                                       adapters: dict[str, Path]) -> None:
    good = {"base": None, "adapters": [[str(adapters["cot"]), 1.0]]}
    library.history.set_setting(RECENT_COMBINATIONS_SETTING, [
        {"base": None, "adapters": [[str(tmp_path / "deleted.gguf"), 1.0]]},
        {"base": str(tmp_path / "no-base.gguf"), "adapters": [[str(adapters["cot"]), 1.0]]},
        {"base": None, "adapters": [[str(adapters["cot"]), "big"]]},
        {"base": 4, "adapters": []}, "junk", None, good,
    ])
    combination = [e for e in library.entries() if e.adapters]
    assert [e.adapters for e in combination] == [(AdapterUse(adapters["cot"], 1.0),)]
    assert combination[0].title == "Gemma-3-270M + cot"  # the header not read yet: the file's name
    assert adapters["cot"] in library.to_inspect()


def test_the_base_is_found_by_architecture_and_shapes(adapters: dict[str, Path], gemma_270m: Path,
                                                      tmp_path: Path) -> None:
    not_a_base = adapters["plain"]  # an adapter is never a base
    assert find_base(read_adapter(adapters["cot"]), [not_a_base, tmp_path / "missing.gguf", gemma_270m]) == gemma_270m
    assert find_base(read_adapter(adapters["1b"]), [not_a_base, gemma_270m]) is None
    assert find_base(read_adapter(adapters["gemma2"]), [gemma_270m]) is None


def test_of_several_bases_that_fit_the_one_the_provenance_names_wins(gemma_270m: Path, tmp_path: Path) -> None:
    it = tmp_path / "gemma-3-270m-it-q4_k_m.gguf"
    it.symlink_to(gemma_270m)  # same shapes as the base: only the name tells them apart
    for_it = read_adapter(write_adapter(tmp_path / "it.gguf", base="google/gemma-3-270m-it", layers=1))
    for_base = read_adapter(write_adapter(tmp_path / "pt.gguf", base="google/gemma-3-270m", layers=1))
    unnamed = read_adapter(write_adapter(tmp_path / "anon.gguf", base=None, layers=1))
    assert find_base(for_it, [gemma_270m, it]) == it
    assert find_base(for_base, [it, gemma_270m]) == gemma_270m
    assert find_base(unnamed, [it, gemma_270m]) == it  # nothing named: the first that fits
    by_file = read_adapter(write_adapter(tmp_path / "file.gguf", base="/elsewhere/gemma-3-270m-it-q4_k_m.gguf", layers=1))
    assert find_base(by_file, [gemma_270m, it]) == it  # a base recorded as a file path: its name


def test_titles_name_the_base_and_each_adapter_with_its_scale() -> None:
    assert combination_title("Gemma 3 270m", [("cot", 1.0), ("style", 0.25)]) == "Gemma 3 270m + cot + style \u00d70.25"
