"""One resolution path: a model file, an adapter or a combination becomes the `ModelRequest` to load.

The window's Open GGUF…, the model list's headers, `--ask` and the server all come here: an
adapter finds its base (the file its provenance names, the embedded default, the store's, the
files opened before), a base takes the adapters given, and nothing that does not fit gets as far
as the engine. No Qt, no llama.cpp context: only GGUF headers are read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medgemma_models.errors import MedGemmaError, ModelFileError
from medgemma_models.gguf_info import GEMMA_ARCHITECTURES, ModelInfo, read_model_info
from medgemma_models.store import default_model, list_models
from medgemma_models.store import is_embedded_model as is_embedded_file

from .adapter_files import AdapterFile, check_fits, is_adapter, read_adapter
from .generation import AdapterUse, ModelRequest
from .settings import LoadParams

__all__ = ["AdapterMatch", "base_candidates", "find_base", "inspect_file", "is_embedded_file", "resolve",
           "resolve_adapter"]


@dataclass(frozen=True)
class AdapterMatch:
    """An adapter file in the list and the base found for it (None: none of the known files fits)."""

    adapter: AdapterFile
    base: Path | None


def base_candidates(named: str | None = None, extra: Sequence[Path] = ()) -> list[Path]:
    """Files an adapter's base may be: the one its provenance names, the embedded default, the store's, `extra`."""
    candidates = [Path(named)] if named and named.endswith(".gguf") and Path(named).is_file() else []
    # With no embedded model in this install, the store may still hold the base.
    with contextlib.suppress(MedGemmaError):
        candidates.append(default_model())
    for path in [*list_models(), *extra]:
        if path.is_file() and all(path.resolve() != c.resolve() for c in candidates):
            candidates.append(path)
    return candidates


def find_base(adapter: AdapterFile, candidates: Sequence[Path]) -> Path | None:
    """A candidate the adapter fits (same architecture, every tensor shape), or None.

    Several may fit (a base and its instruction-tuned sibling have the same shapes): the first that
    names the adapter's base (medgemma.base) in its own provenance or its file name wins, else the first.
    """
    fitting = []
    for path in candidates:
        try:
            check_fits(adapter, path)
        except MedGemmaError:
            continue
        fitting.append(path)
    named = [path for path in fitting if adapter.base and _names_base(path, adapter.base)]
    return (named or fitting or [None])[0]


def _names_base(path: Path, base: str) -> bool:
    """Whether a model file says it is `base` (a hub id or a folder): by its provenance, else its file name."""
    wanted = base.rstrip("/\\").lower()
    try:
        said = (read_model_info(path).typed_provenance().base or "").rstrip("/\\").lower()
    except MedGemmaError:
        return False
    name = wanted.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".gguf")
    stem = path.stem.lower()
    return said == wanted or stem == name or stem.startswith(name + "-") and not _sibling(stem, name)


def _sibling(stem: str, name: str) -> bool:
    """`gemma-3-270m-it-…` is not `gemma-3-270m`: an -it/-pt suffix names another model."""
    return stem[len(name) + 1:].split("-", 1)[0] in ("it", "pt")


def inspect_file(path: Path, recent: Sequence[Path] = ()) -> ModelInfo | AdapterMatch:
    """What the model list shows for a file: a model's header, or an adapter with the base found for it."""
    if is_adapter(path):
        adapter = read_adapter(path)
        return AdapterMatch(adapter, find_base(adapter, base_candidates(adapter.base, recent)))
    return read_model_info(path)


def resolve_adapter(path: Path, base: Path | None = None, recent: Sequence[Path] = (),
                    ask_base: Callable[[AdapterFile], Path | None] | None = None,
                    options: LoadParams = LoadParams()) -> ModelRequest | None:
    """An adapter file on its base: `base` if given, else the known file it fits, else the one
    `ask_base` picks (None: the user cancelled). Raises MedGemmaError naming what does not fit."""
    adapter = read_adapter(path)
    if adapter.architecture not in GEMMA_ARCHITECTURES:
        raise ModelFileError(f"{path.name} is an adapter for {adapter.architecture} models; "
                             "MedGemma Edge runs Gemma 2 and Gemma 3 models.")
    if base is None:
        base = find_base(adapter, base_candidates(adapter.base, recent))
    if base is None and ask_base is not None:
        base = ask_base(adapter)
    if base is None:
        if ask_base is not None:
            return None
        base = default_model()  # nothing else known: the embedded model, where a misfit is refused below
    check_fits(adapter, base)
    return ModelRequest(None if is_embedded_file(base) else Path(base), (AdapterUse(Path(path), 1.0),), options)


def resolve(model: Path | None, adapters: Sequence[AdapterUse] = (), recent: Sequence[Path] = (),
            options: LoadParams = LoadParams()) -> ModelRequest:
    """A model named by a front end (`--model`, `--adapter`…): a base (None: the embedded default)
    with `adapters` on it; an adapter named as the model, or adapters with no model, find their base."""
    adapters = tuple(adapters)
    if model is not None and is_adapter(model):
        request = resolve_adapter(Path(model), None, recent, options=options)
        assert request is not None
        return ModelRequest(request.base, (*request.adapters, *adapters), options)
    if model is None and adapters:
        first = read_adapter(adapters[0].path)
        base = find_base(first, base_candidates(first.base, recent))
        model = None if base is None or is_embedded_file(base) else base
    return ModelRequest(Path(model) if model is not None else None, adapters, options)
