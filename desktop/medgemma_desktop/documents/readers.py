"""A document file as pages of text: `.pdf`, `.txt`, `.md`; anything unusable raises `Unreadable` with the reason.

PDFs are read with pypdf: BSD-licensed and pure Python, so it ships in the bundle on every platform
with nothing to compile, and it reads the text layer page by page, which is all the index needs.
(PyMuPDF is AGPL and may not be used; pypdfium2 would add a native library per platform for text
that pypdf already extracts.) Text files have no pages: a form feed starts a new one, else the
whole file is page 1.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

from medgemma_models.errors import MedGemmaError

log = logging.getLogger(__name__)

SUFFIXES = (".pdf", ".txt", ".md")
# A bigger file is almost surely not a guideline; reading it would hold the indexer for minutes.
MAX_FILE_BYTES = 256 * 1024 * 1024
NO_TEXT = "no text: scanned pages need OCR, which this app does not do"
PERMISSION_DENIED = "permission denied: the file cannot be read"
# Typeset text (PDFs above all) spells "first" with the one-glyph ligature "ﬁ"; the index's tokenizer
# keeps it, so "first" would not find "ﬁrst". The ligatures (U+FB00–FB06) become their letters.
_LIGATURE = re.compile("[\ufb00-\ufb06]")


class Unreadable(MedGemmaError):
    """A file the index skips; the message is the reason the user is shown."""


class IndexingCancelled(MedGemmaError):
    """The user cancelled indexing; what was committed before stays."""


def check_size(size: int) -> None:
    if size == 0:
        raise Unreadable("the file is empty")
    if size > MAX_FILE_BYTES:
        raise Unreadable(f"too large ({size / 2**30:.1f} GB; files over {MAX_FILE_BYTES // 2**20} MB are not indexed)")


def read_pages(path: Path, on_page: Callable[[], None] | None = None) -> list[str]:
    """The text of each page of `path`, page 1 first (empty strings for pages without text).

    `on_page` is called after each page is read (progress); an exception it raises (a cancel) passes through.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise Unreadable(f"not a document this app reads ({', '.join(SUFFIXES)})")
    try:
        check_size(path.stat().st_size)
        pages = _read_pdf(path, on_page) if suffix == ".pdf" else _read_text(path)
        if suffix != ".pdf" and on_page is not None:
            for _ in pages:
                on_page()
    except FileNotFoundError:
        raise Unreadable("the file vanished while it was being indexed") from None
    except PermissionError:
        raise Unreadable(PERMISSION_DENIED) from None
    except IsADirectoryError:
        raise Unreadable("a folder, not a file") from None
    except OSError as exc:
        raise Unreadable(f"cannot be read: {exc.strerror or exc}") from None
    if not any(page.strip() for page in pages):
        raise Unreadable(NO_TEXT if suffix == ".pdf" else "the file has no text")
    return [_LIGATURE.sub(lambda m: unicodedata.normalize("NFKC", m.group()), page) for page in pages]


def _read_text(path: Path) -> list[str]:
    data = path.read_bytes()
    check_size(len(data))  # it may have changed since the stat
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8") from None
    return text.split("\f")


def _read_pdf(path: Path, on_page: Callable[[], None] | None) -> list[str]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            # Many PDFs are encrypted with an empty user password (only printing is restricted).
            try:
                opened = reader.decrypt("")
            except DependencyError:
                raise Unreadable("encrypted, and this build cannot decrypt it") from None
            if not opened:
                raise Unreadable("encrypted: it needs a password") from None
        pages = []
        for number, page in enumerate(reader.pages, start=1):
            try:
                pages.append(page.extract_text() or "")
            except Exception as exc:  # one broken page must not lose the others
                log.warning("%s page %d: no text (%s: %s)", path, number, type(exc).__name__, exc)
                pages.append("")
            if on_page is not None:
                on_page()
        return pages
    except (Unreadable, IndexingCancelled, OSError):
        raise
    except FileNotDecryptedError:
        raise Unreadable("encrypted: it needs a password") from None
    except PdfReadError as exc:
        raise Unreadable(f"not a readable PDF ({exc})"[:200]) from None
    except Exception as exc:  # a malformed file fails pypdf in many ways; it is one skipped file, not a crash
        raise Unreadable(f"not a readable PDF ({type(exc).__name__}: {exc})"[:200]) from None
