"""The models the app offers and the one in use: store files, the embedded default, files opened
before, the settings remembered for each, and the state of a load under way. No Qt.

A model is known by a key: the resolved path of its file, or `EMBEDDED_KEY` for the embedded
default (wherever the store keeps it). An entry may also name GGUF LoRA adapters applied on top of
its base file at run time (`ModelEntry.adapters`, each with a scale); its key then names them too,
so a combination remembers its own settings. The demo reasoning adapter shipped with the app makes
"Gemma-3-270M + demo reasoning adapter", the default a new user starts with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgemma_models.catalog import DEFAULT_PRESET, preset_for_provenance
from medgemma_models.gguf_info import ModelInfo, human_count
from medgemma_models.store import DEFAULT_MODEL_NAME, demo_adapter, list_models, models_dir
from medgemma_models.store import is_embedded_model as is_embedded_file

from .generation import AdapterUse, Loaded
from .resolve import AdapterMatch
from .history import History
from .settings import ChatSettings, LoadSettings, stored_settings
from .vision_files import find_mmproj, is_mmproj

EMBEDDED_KEY = "embedded-default"
EMBEDDED_TITLE = "Gemma 3 270M · Q4_K_M (embedded)"
DEMO_TITLE = "Gemma-3-270M + demo reasoning adapter"
LAST_MODEL_SETTING = "last_model"
LAST_ADAPTERS_SETTING = "last_adapters"
RECENT_MODELS_SETTING = "recent_models"
RECENT_COMBINATIONS_SETTING = "recent_combinations"
RECENT_LIMIT = 12


@dataclass(frozen=True)
class ModelEntry:
    """One line of the model picker."""

    path: Path | None  # None: the embedded default
    title: str
    tooltip: str
    adapters: tuple[AdapterUse, ...] = ()
    vision: bool = False  # an mmproj that fits lies beside it: the model takes images

    @property
    def key(self) -> str:
        return model_key(self.path, self.adapters)


@dataclass(frozen=True)
class PendingLoad:
    path: Path | None
    key: str
    fresh: bool  # no settings remembered for it yet: its preset comes from the file once loaded
    adapters: tuple[AdapterUse, ...] = ()


@dataclass(frozen=True)
class LoadedModel:
    """The model in use: what the load gave (`loaded`) and how the library lists it."""

    loaded: Loaded
    key: str
    embedded: bool
    adapters: tuple[AdapterUse, ...] = ()  # as chosen, with their scales (`loaded.adapters`: the files read)
    title: str = ""  # the combination's name, as the list shows it ("" without adapters)

    @property
    def path(self) -> Path:
        return self.loaded.path

    @property
    def info(self) -> ModelInfo:
        return self.loaded.info

    @property
    def sha256(self) -> str:
        return self.loaded.sha256

    @property
    def n_ctx(self) -> int:
        return self.loaded.n_ctx

    @property
    def offload(self) -> str:
        """What the load did about the GPU, in the status bar's words."""
        return self.loaded.report.describe()

    def status(self) -> str:
        """The status bar's line: its name, the GPU offload and, for our exports, their check."""
        line = f"{self.title or self.info.name} · {self.offload}"
        check = verification_text(self.info)
        return f"{line} · {check}" if check else line


def model_key(path: Path | None, adapters: tuple[AdapterUse, ...] = ()) -> str:
    """The key settings are remembered under."""
    key = str(Path(path).resolve()) if path is not None else EMBEDDED_KEY
    return key + "".join(f"+{a.path.resolve()}:{a.scale:g}" for a in adapters)


def adapter_label(name: str, scale: float) -> str:
    return name if scale == 1 else f"{name} \u00d7{scale:g}"


def combination_title(base: str, adapters: Sequence[tuple[str, float]]) -> str:
    """'Gemma 3 270m + cot ×0.5': the base's name and each adapter's, with its scale when not 1."""
    return " + ".join([base, *(adapter_label(name, scale) for name, scale in adapters)])


def describe(info: ModelInfo) -> str:
    """The facts a user picks a model by: architecture, size, quantization, real bpw, context, and
    for our exports how closely they follow transformers (or that they were not checked)."""
    size = info.size_label or human_count(info.parameter_count)
    context = f"{info.context_length:,} ctx" if info.context_length else "context unknown"
    megabytes = info.file_size / 1e6
    facts = (f"{info.architecture} · {size} · {info.file_type} · {info.bits_per_weight:.2f} bpw real · "
             f"{context} · {megabytes:,.0f} MB")
    check = verification_text(info)
    return f"{facts} · {check}" if check else facts


def verification_text(info: ModelInfo) -> str:
    """How closely our export follows transformers ("verified (quick, 319 tokens): KLD …"), "not
    verified" for one made with --no-verify, "" for a file we did not make."""
    made = info.typed_provenance()
    if made.verification is not None:
        return made.verification.describe()
    return "not verified" if made.converter is not None else ""


class ModelLibrary:
    """The model list, the remembered settings per model and the load state, kept in History."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.current: LoadedModel | None = None
        self.pending: PendingLoad | None = None
        self.settings_key: str | None = None  # whose settings are on show (the pending model's while loading)
        # Header facts (an adapter's with its base), an error, or None: asked for.
        self._infos: dict[Path, ModelInfo | AdapterMatch | str | None] = {}
        self._vision: dict[Path, Path | None] = {}  # the projector found beside each model file
        self.demo = demo_adapter()  # the packaged demo reasoning adapter, when this build has one

    # -- the list -------------------------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        """The embedded default, the store's GGUF files, files opened before and the one in use.

        Files whose header has not been read yet show their name; `to_inspect()` says which.
        """
        paths: list[Path] = [p for p in list_models() if p.name != DEFAULT_MODEL_NAME]
        recent = [Path(p) for p in self._recent() if Path(p).is_file()]
        paths += [p for p in recent if p.parent.resolve() != models_dir().resolve() and not is_embedded_file(p)
                  and p not in paths]
        in_use = self.current.path if self.current is not None else None
        if in_use is not None and in_use not in paths and not is_embedded_file(in_use):
            paths.append(in_use)
        entries = [ModelEntry(None, EMBEDDED_TITLE, "The embedded default model")]
        demo = self.demo_entry()
        if demo is not None:
            entries.insert(0, demo)
        entries += self._combinations()
        for path in paths:
            info = self._infos.get(path)
            if isinstance(info, AdapterMatch):
                entries.append(self._adapter_entry(path, info))
            elif isinstance(info, ModelInfo) and is_mmproj(info):
                continue  # a projector is part of its model's entry, not a model of its own
            elif isinstance(info, ModelInfo):
                if path not in self._vision:
                    self._vision[path] = find_mmproj(path, info)
                mmproj = self._vision[path]
                title = f"{info.name} · {info.file_type}" + (" · vision" if mmproj else "")
                tooltip = f"{path}\n{describe(info)}" + (f"\nwith its vision projector {mmproj.name}" if mmproj else "")
                entries.append(ModelEntry(path, title, tooltip, vision=mmproj is not None))
            elif isinstance(info, str):
                entries.append(ModelEntry(path, f"{path.name} (unreadable)", info))
            else:
                entries.append(ModelEntry(path, path.name, str(path)))
        # A combination used before may also be a store adapter on its base: list it once.
        unique: dict[str, ModelEntry] = {}
        for entry in entries:
            unique.setdefault(entry.key, entry)
        return list(unique.values())

    def demo_entry(self) -> ModelEntry | None:
        """"Gemma-3-270M + demo reasoning adapter", when this build ships the adapter."""
        if self.demo is None:
            return None
        return ModelEntry(None, DEMO_TITLE, f"The embedded model with the demo chain-of-thought adapter\n{self.demo}\n"
                          "A demonstration of the format, not a medical model.", (AdapterUse(self.demo, 1.0),))

    def default_choice(self) -> tuple[Path | None, tuple[AdapterUse, ...]]:
        """What a first start opens: the demo combination when shipped, else the embedded model."""
        demo = self.demo_entry()
        return (None, demo.adapters) if demo is not None else (None, ())

    def _adapter_entry(self, path: Path, match: AdapterMatch) -> ModelEntry:
        """A store adapter, on the base found for it; without one, choosing it asks for the base."""
        tooltip = f"{path}\nGGUF LoRA adapter for {match.adapter.architecture}"
        if match.base is None:
            return ModelEntry(path, f"{match.adapter.name} (adapter: base not found)", tooltip + "; its base is not in the store")
        base = None if is_embedded_file(match.base) else match.base
        return ModelEntry(base, combination_title(self._base_title(base), [(match.adapter.name, 1.0)]),
                          f"{tooltip}\non {match.base}", (AdapterUse(path, 1.0),))

    def _base_title(self, path: Path | None) -> str:
        if path is None:
            return "Gemma-3-270M"
        info = self._infos.get(path)
        return info.name if isinstance(info, ModelInfo) else path.name

    def _adapter_name(self, path: Path) -> str:
        info = self._infos.get(path)
        return info.adapter.name if isinstance(info, AdapterMatch) else path.stem

    def _combinations(self) -> list[ModelEntry]:
        """Base + adapters combinations used before whose files are all still there."""
        entries = []
        demo = self.demo_entry()
        for base, adapters in self._recent_combinations():
            if demo is not None and (base, adapters) == (None, demo.adapters):
                continue  # listed first, under its own name
            title = combination_title(self._base_title(base), [(self._adapter_name(a.path), a.scale) for a in adapters])
            tooltip = "\n".join([str(base) if base else "The embedded default model",
                                  *(f"+ {a.path} \u00d7{a.scale:g}" for a in adapters)])
            entries.append(ModelEntry(base, title, tooltip, adapters))
        return entries

    def _recent_combinations(self) -> list[tuple[Path | None, tuple[AdapterUse, ...]]]:
        stored = self.history.get_setting(RECENT_COMBINATIONS_SETTING, [])
        found = []
        for item in stored if isinstance(stored, list) else []:
            choice = _read_choice(item)
            if choice is not None and choice[1] and (choice[0] is None or choice[0].is_file()) \
                    and all(a.path.is_file() for a in choice[1]):
                found.append(choice)
        return found

    def _remember_combination(self, path: Path | None, adapters: tuple[AdapterUse, ...]) -> None:
        stored = self.history.get_setting(RECENT_COMBINATIONS_SETTING, [])
        item = _choice_record(path, adapters)
        rest = [c for c in (stored if isinstance(stored, list) else []) if c != item]
        self.history.set_setting(RECENT_COMBINATIONS_SETTING, [item, *rest][:RECENT_LIMIT])

    def to_inspect(self) -> list[Path]:
        """Listed files whose header nobody has asked for yet; from now on they count as asked."""
        listed = [p for e in self.entries() for p in (e.path, *(a.path for a in e.adapters)) if p is not None]
        unknown = list(dict.fromkeys(p for p in listed if p not in self._infos and p != self.demo))
        self._infos.update({p: None for p in unknown})
        return unknown

    def set_info(self, path: Path, info: ModelInfo | AdapterMatch | str) -> None:
        """A file's facts (an adapter's, with the base found for it), or why its header could not be read."""
        self._infos[path] = info
        self._vision.pop(path, None)

    def adapter_info(self, path: Path) -> AdapterMatch | None:
        """What the list knows of `path` as an adapter (None: not an adapter, or not read yet)."""
        info = self._infos.get(path)
        return info if isinstance(info, AdapterMatch) else None

    def selected_key(self) -> str | None:
        """The key of the picker's entry for the model in use (None: no model loaded)."""
        return self.current.key if self.current is not None else None

    def remember_recent(self, path: Path) -> None:
        recent = [p for p in self._recent() if p != str(path)]
        self.history.set_setting(RECENT_MODELS_SETTING, [str(path), *recent][:RECENT_LIMIT])

    def recent_files(self) -> list[Path]:
        """Files opened before that are still there."""
        return [Path(p) for p in self._recent() if Path(p).is_file()]

    def _recent(self) -> list[str]:
        stored = self.history.get_setting(RECENT_MODELS_SETTING, [])
        return [p for p in stored if isinstance(p, str)] if isinstance(stored, list) else []

    def last_model(self) -> Path | None:
        """The file used last time, if it is still there (None: the embedded model)."""
        last = self.history.get_setting(LAST_MODEL_SETTING)
        return Path(last) if isinstance(last, str) and Path(last).is_file() else None

    def start_choice(self) -> tuple[Path | None, tuple[AdapterUse, ...]]:
        """What the window opens at start: the model (and adapters) used last, else `default_choice()`."""
        if self.history.get_setting(LAST_MODEL_SETTING, _NEVER) is _NEVER:
            return self.default_choice()
        adapters = _read_choice({"base": None, "adapters": self.history.get_setting(LAST_ADAPTERS_SETTING, [])})
        kept = tuple(a for a in adapters[1] if a.path.is_file()) if adapters is not None else ()
        return self.last_model(), kept

    # -- settings -------------------------------------------------------------------------------

    def saved_settings(self, key: str) -> tuple[ChatSettings, LoadSettings] | None:
        saved = self.history.model_settings(key)
        if saved is None:
            return None
        return ChatSettings.from_dict(saved), LoadSettings.from_dict(saved)

    def save_settings(self, chat: ChatSettings, load: LoadSettings) -> None:
        """Remember the settings on show for their model (not while a load is under way)."""
        if self.settings_key is not None and self.pending is None:
            self.history.set_model_settings(self.settings_key, stored_settings(chat, load))

    # -- loading --------------------------------------------------------------------------------

    @property
    def loading(self) -> bool:
        return self.pending is not None

    def begin_load(self, path: Path | None, adapters: Sequence[AdapterUse] = ()
                   ) -> tuple[PendingLoad, tuple[ChatSettings, LoadSettings] | None]:
        """A load of `path` (with `adapters` on top) starts: its key and the settings remembered for it (None: none yet)."""
        adapters = tuple(adapters)
        if path is not None and is_embedded_file(path):  # opened by its path: still the embedded entry
            path = None
        key = model_key(path, adapters)
        saved = self.saved_settings(key)
        self.pending = PendingLoad(path, key, fresh=saved is None, adapters=adapters)
        self.settings_key = key
        return self.pending, saved

    def begin_reload(self) -> PendingLoad | None:
        """Load the model in use again (new context, threads or GPU settings)."""
        if self.current is None or self.pending is not None:
            return None
        self.pending = PendingLoad(None if self.current.embedded else self.current.path, self.current.key, fresh=False,
                                   adapters=self.current.adapters)
        return self.pending

    def finish_load(self, loaded: Loaded, chat: ChatSettings, load: LoadSettings) -> ChatSettings:
        """The pending load is done: it becomes the model in use, remembered with its settings.

        Returns the chat settings to show: a file seen for the first time gets the preset it was
        made for (from its adapters' provenance first, then its own, or the catalog).
        """
        pending = self.pending or PendingLoad(loaded.path, model_key(loaded.path), fresh=False)
        self.pending = None
        if pending.fresh:
            chat = ChatSettings.defaults_for(preset_for_loaded(loaded))
        embedded = pending.path is None or is_embedded_file(loaded.path)  # the store's copy or the bundle's
        title = ""
        if pending.adapters:
            names = [(a.name, use.scale) for a, use in zip(loaded.adapters, pending.adapters)]
            demo = self.demo_entry()
            title = DEMO_TITLE if demo is not None and embedded and pending.adapters == demo.adapters \
                else combination_title(loaded.info.name, names)
        self.current = LoadedModel(loaded, key=pending.key, embedded=embedded, adapters=pending.adapters, title=title)
        self._infos[loaded.path] = loaded.info
        for adapter in loaded.adapters:
            self._infos[adapter.path] = AdapterMatch(adapter, loaded.path)
        self.settings_key = pending.key
        self.history.set_model_settings(pending.key, stored_settings(chat, load))
        self.history.set_setting(LAST_MODEL_SETTING, str(pending.path) if pending.path is not None else None)
        self.history.set_setting(LAST_ADAPTERS_SETTING, _choice_record(None, pending.adapters)["adapters"])
        if pending.path is not None:
            self.remember_recent(loaded.path)
        if pending.adapters:
            self._remember_combination(pending.path, pending.adapters)
        return chat

    def undo_load(self, previous: LoadedModel | None) -> None:
        """Taking a loaded model failed half-way: `previous` is the model in use again (then `abort_load`)."""
        self.current = previous

    def abort_load(self) -> tuple[ChatSettings, LoadSettings] | None:
        """The pending load failed or was cancelled: the model in use stays; its settings to show again."""
        self.pending = None
        self.settings_key = self.current.key if self.current is not None else None
        return self.saved_settings(self.settings_key) if self.settings_key is not None else None


def adapter_records(loaded: Loaded, uses: Sequence[AdapterUse]) -> list[dict[str, Any]]:
    """The adapters a chat's answers came from, for its model record and exports."""
    return [{"name": a.name, "file": str(a.path), "scale": use.scale, "sha256": digest}
            for a, use, digest in zip(loaded.adapters, uses, loaded.adapter_sha256)]


def preset_for_loaded(loaded: Loaded) -> str:
    """The preset a model was made for: the first adapter's provenance that names one, else the base's."""
    for adapter in loaded.adapters:
        preset = preset_for_provenance(adapter.provenance)
        if preset != DEFAULT_PRESET:
            return preset
    return preset_for_provenance(loaded.info.typed_provenance())


_NEVER = object()  # a setting never written (None is a value: the embedded model)


def _choice_record(path: Path | None, adapters: Sequence[AdapterUse]) -> dict[str, Any]:
    """A base and its adapters as History stores them (JSON)."""
    return {"base": str(path) if path is not None else None, "adapters": [[str(a.path), a.scale] for a in adapters]}


def _read_choice(item: Any) -> tuple[Path | None, tuple[AdapterUse, ...]] | None:
    """A stored choice, or None when it is malformed (written by another version, or edited)."""
    if not isinstance(item, dict) or not isinstance(item.get("adapters"), list):
        return None
    base = item.get("base")
    if base is not None and not isinstance(base, str):
        return None
    adapters = []
    for pair in item["adapters"]:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(pair[1], (int, float)) and not isinstance(pair[1], bool)):
            return None
        adapters.append(AdapterUse(Path(pair[0]), float(pair[1])))
    return (Path(base) if base else None), tuple(adapters)
