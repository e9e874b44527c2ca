"""Document files for the index tests, made here: PDFs written by Qt (text on known pages), text, bad inputs.

Qt's `QPdfWriter` writes a real text layer that pypdf reads back, so no PDF library is needed to
make them; pypdf itself writes the encrypted one. A Qt GUI application must exist (pytest-qt's `qapp`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QRectF
from PySide6.QtGui import QColor, QPageSize, QPainter, QPdfWriter, QTextDocument

# The facts the tests ask about, each on a known page of guide.pdf.
GUIDE_PAGES = (
    "Hypertension in adults. Measure blood pressure in both arms and confirm with ambulatory monitoring.",
    "Asthma. A short-acting bronchodilator inhaler relieves symptoms; inhaled corticosteroids prevent attacks.",
    ("Type 2 Diabetes. Metformin is the first-line drug for adults with type 2 diabetes, started at 500 mg "
     "once daily with food and increased slowly to limit stomach upset."),
    "Chronic kidney disease. Check the eGFR and albumin to creatinine ratio every year.",
)


def write_pdf(path: Path, pages: Sequence[str]) -> Path:
    """A PDF with one page per text, each page's text drawn as a real text layer."""
    writer = QPdfWriter(str(path))
    writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
    writer.setResolution(72)
    painter = QPainter(writer)
    try:
        for number, text in enumerate(pages):
            if number:
                writer.newPage()
            document = QTextDocument()
            document.setPlainText(text)
            document.setTextWidth(writer.width())
            document.drawContents(painter)
    finally:
        painter.end()
    return path


def write_scanned_pdf(path: Path, pages: int = 2) -> Path:
    """A PDF of pictures only (what a scanner makes): pages with no text layer."""
    writer = QPdfWriter(str(path))
    writer.setResolution(72)
    painter = QPainter(writer)
    try:
        for number in range(pages):
            if number:
                writer.newPage()
            painter.fillRect(QRectF(40, 40, 300, 200), QColor(90, 90, 90))
    finally:
        painter.end()
    return path


def write_encrypted_pdf(path: Path, source: Path, password: str = "secret") -> Path:
    """`source` encrypted with a user password (it cannot be opened without it)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(source))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")  # RC4 needs no cryptography package
    with path.open("wb") as out:
        writer.write(out)
    return path


def write_malformed_pdf(path: Path) -> Path:
    """Bytes that start like a PDF and are not one."""
    path.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >>\nstream\n\x00\xff garbage \xfe\nendobj\n")
    return path
