"""The collections in the data folder: one index database each, under `documents/` (0700).

One file per collection keeps a collection's text in one place: deleting it overwrites its
passages in the file (`Collection.clear`) and then removes the file with its -wal and -shm.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from medgemma_models.errors import StoreError
from medgemma_models.store import home, private_folder

from .collection import Collection, Hit

log = logging.getLogger(__name__)

SUFFIX = ".sqlite3"


def documents_dir() -> Path:
    return private_folder(home() / "documents")


def file_name(name: str) -> str:
    """A collection's file name: its name made safe, plus a short hash so two names never share a file."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "collection"
    return f"{slug}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}{SUFFIX}"


class Collections:
    """Open, list, delete and search the collections in `folder` (the data folder's by default)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else documents_dir()
        self._open: dict[str, Collection] = {}

    def get(self, name: str) -> Collection:
        """The collection called `name`, created empty when there is none."""
        name = name.strip()
        if not name:
            raise StoreError("a collection needs a name")
        if name not in self._open:
            self._open[name] = Collection(self.folder / file_name(name), name)
        return self._open[name]

    def names(self) -> list[str]:
        names = set(self._open)
        for path in self.folder.glob(f"*{SUFFIX}"):
            if any(opened.path == path for opened in self._open.values()):
                continue
            try:
                with Collection(path) as collection:
                    names.add(collection.name)
            except StoreError as exc:  # one damaged index must not hide the others
                log.warning("%s", exc)
        return sorted(names, key=str.casefold)

    def exists(self, name: str) -> bool:
        """Whether `name` has an index (without opening, or creating, one)."""
        return name in self._open or (self.folder / file_name(name.strip())).exists()

    def delete(self, name: str) -> None:
        collection = self.get(name)
        collection.clear()
        collection.close()
        del self._open[name]
        for path in (collection.path, *(collection.path.with_name(collection.path.name + s) for s in ("-wal", "-shm"))):
            path.unlink(missing_ok=True)

    def search(self, names: list[str], question: str, limit: int = 8) -> list[Hit]:
        """The best passages over the named collections, best first (bm25 scores of each index, merged)."""
        hits = [hit for name in names if self.exists(name) for hit in self.get(name).search(question, limit)]
        return sorted(hits, key=lambda hit: -hit.score)[:limit]

    def close(self) -> None:
        for collection in self._open.values():
            collection.close()
        self._open.clear()
