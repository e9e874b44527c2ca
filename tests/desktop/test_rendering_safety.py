"""Chat text is shown without reading a file, a device, a FIFO or a share, and never as HTML.

Qt reads files from C++, where Python's audit hooks see nothing, so reads are watched with
Linux inotify on the folder of the bait files: any open by any code of this process shows up.
"""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import pytest
from PySide6.QtCore import QObject, QPoint, Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices, QImage, QTextCursor, QTextDocument
from PySide6.QtWidgets import QComboBox, QLabel, QListWidget, QWidget

from medgemma_desktop.ui.chat.message_view import MessageView
from tests.support.window_steps import FAST_SETTINGS, send

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches file opens with inotify")

IN_ACCESS, IN_OPEN = 0x1, 0x20
HOSTILE_NAME = "<b>x</b><img src=/etc/passwd>"


class OpenWatch:
    """Names of the files opened in one folder since the watch began (inotify, so C++ opens count)."""

    def __init__(self, folder: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self._fd >= 0, os.strerror(ctypes.get_errno())
        assert self._libc.inotify_add_watch(self._fd, os.fsencode(folder), IN_OPEN | IN_ACCESS) >= 0

    def opened(self) -> set[str]:
        names = set()
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return names
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                names.add(os.fsdecode(data[offset + 16:offset + 16 + length].rstrip(b"\0")))
                offset += 16 + length

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def bait(tmp_path: Path) -> Iterator[tuple[Path, OpenWatch]]:
    """A folder holding a real PNG, watched for opens."""
    folder = tmp_path / "bait"
    folder.mkdir()
    image = QImage(16, 16, QImage.Format.Format_RGB32)
    image.fill(0xFF0000)
    assert image.save(str(folder / "scan.png"))
    watch = OpenWatch(folder)
    yield folder, watch
    watch.close()


def shown_card(qtbot: Any, text: str, author: str = "You") -> MessageView:
    """A message card with `text`, laid out and painted as on screen."""
    card = MessageView(1, "model", author)
    qtbot.addWidget(card)
    card.resize(600, 400)
    card.show()
    card.set_content(text, reasoning=text)
    card.reasoning.set_expanded(True)  # the reasoning block renders the same text
    qtbot.waitExposed(card)
    card.grab()  # paint every inline object there is
    return card


def documents(card: MessageView) -> list[QTextDocument]:
    return [card.body.document(), card.reasoning.body.document()]


def has_images(document: QTextDocument) -> bool:
    block = document.begin()
    while block.isValid():
        pieces = block.begin()
        while not pieces.atEnd():
            if pieces.fragment().charFormat().isImageFormat():
                return True
            pieces += 1
        block = block.next()
    return False


def test_a_local_image_is_not_read(qtbot: Any, bait) -> None:
    folder, watch = bait
    png = folder / "scan.png"
    text = f"Look: ![chest x-ray]({png}) and ![]({png.as_uri()}) and ![]({png.name})\n\n| a |\n|---|\n| ![cell]({png}) |"
    card = shown_card(qtbot, text)
    assert watch.opened() == set()
    for document in documents(card):
        assert not has_images(document)
        assert document.resource(QTextDocument.ResourceType.ImageResource, QUrl.fromLocalFile(str(png))) is None
        shown = document.toPlainText()
        # Images show as their alt text (Qt's Markdown reader drops an image with no alt text).
        assert "[image: chest x-ray]" in shown and "[image: cell]" in shown
    assert card.answer() == text  # the stored text itself is untouched (copy, export)


def test_raw_html_is_shown_as_text(qtbot: Any, bait) -> None:
    folder, watch = bait
    text = f'<img src="{folder / "scan.png"}"> and <b>not bold</b>\n\n<div style="background-image: url({folder / "scan.png"})">x</div>'
    card = shown_card(qtbot, text)
    assert watch.opened() == set()
    shown = card.body.document().toPlainText()
    assert f'<img src="{folder / "scan.png"}">' in shown
    assert "<b>not bold</b>" in shown
    assert "<div style=" in shown


def test_a_unc_path_is_never_opened(qtbot: Any, bait, monkeypatch: pytest.MonkeyPatch) -> None:
    # On Linux a backslashed UNC path is a relative file name: files with exactly those names in the
    # current folder show whether Qt tries to read them (on Windows it would dial the share).
    folder, watch = bait
    monkeypatch.chdir(folder)
    names = ["\\\\host\\share\\x.png", "\\host\\share\\x.png"]
    for name in names:
        (folder / name).write_bytes((folder / "scan.png").read_bytes())
    watch.opened()  # forget the writes above
    text = "![a](\\\\host\\share\\x.png) ![b](\\\\\\\\host\\\\share\\\\x.png) <img src='\\\\host\\share\\x.png'>"
    card = shown_card(qtbot, text)
    assert watch.opened() == set()
    assert not has_images(card.body.document())


@pytest.mark.timeout(300)
def test_devices_and_fifos_do_not_block_the_window(tmp_path: Path) -> None:
    # In a child process with a memory cap: before the fix, /dev/zero was read until memory ran
    # out and a FIFO with no writer blocked the GUI thread for good.
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        from PySide6.QtWidgets import QApplication
        from medgemma_desktop.ui.chat.message_view import MessageView
        app = QApplication([])
        card = MessageView(1, "model", "model")
        card.resize(600, 400)
        card.show()
        for target in ("/dev/zero", "/dev/urandom", {str(fifo)!r}):
            card.set_content(f"![scan]({{target}}) ![]({{target}}) <img src={{target}}>")
            app.processEvents()
            card.grab()
            print("rendered", target, flush=True)
        """
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:3] == ["rendered /dev/zero", "rendered /dev/urandom", f"rendered {fifo}"]


class UrlSpy(QObject):
    """Qt's own hook for opening URLs: registered for a scheme, it receives every open of that scheme."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[QUrl] = []

    @Slot(QUrl)
    def open(self, url: QUrl) -> None:
        self.urls.append(url)


def test_links_are_shown_but_never_opened(qtbot: Any) -> None:
    spy = UrlSpy()
    for scheme in ("https", "file"):
        QDesktopServices.setUrlHandler(scheme, spy, "open")
    try:
        card = shown_card(qtbot, "Read [the leaflet](https://example.org/leaflet) or [this](file:///etc/passwd).")
        view = card.body
        for anchor_text in ("the leaflet", "this"):
            cursor = view.document().find(anchor_text)
            assert cursor.charFormat().isAnchor()
            start = QTextCursor(view.document())
            start.setPosition(cursor.selectionStart() + 1)
            point: QPoint = view.cursorRect(start).center()
            qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)
        assert spy.urls == []
        assert view.source() == QUrl()
    finally:
        for scheme in ("https", "file"):
            QDesktopServices.unsetUrlHandler(scheme)


def test_names_and_metadata_are_shown_as_text(qtbot: Any, bait) -> None:
    folder, watch = bait
    hostile = f"<b>x</b><img src={folder / 'scan.png'}>"
    card = shown_card(qtbot, "hello", author=hostile)
    card.set_meta(hostile)
    card.grab()
    for label in (card.author, card.meta):
        assert label.textFormat() == Qt.TextFormat.PlainText
        assert label.text() == hostile
    assert watch.opened() == set()


def test_problem_dialogs_and_tooltips_show_text_as_written(qtbot: Any, bait) -> None:
    from medgemma_desktop.ui.dialogs.messages import problem_box
    from medgemma_desktop.ui.chat.plain_text import plain_tooltip

    folder, watch = bait
    hostile = f"<b>x</b><img src={folder / 'scan.png'}>"
    parent = QWidget()
    qtbot.addWidget(parent)
    box = problem_box(parent, "Problem", hostile)
    assert box.textFormat() == Qt.TextFormat.PlainText and box.text() == hostile
    # A tooltip is rich text when it looks like HTML; escaped, it shows the characters themselves.
    tip = QTextDocument()
    tip.setHtml(plain_tooltip(hostile + "\nsecond line"))
    assert tip.toPlainText() == hostile + "\nsecond line"
    parent.show()
    box.grab()
    assert watch.opened() == set()


@pytest.fixture(scope="module")
def hostile_gguf(tmp_path_factory: pytest.TempPathFactory, gemma_270m: Path) -> Path:
    """The real 270M model, its general.name replaced by markup that would read /etc/passwd."""
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(gemma_270m)
    out = tmp_path_factory.mktemp("hostile") / "hostile.gguf"
    writer = gguf.GGUFWriter(out, arch=reader.fields["general.architecture"].contents(), endianess=reader.endianess)
    alignment = reader.fields.get("general.alignment")
    if alignment is not None:
        writer.data_alignment = alignment.contents()
    copy_with_new_metadata(reader, writer, {"general.name": MetadataDetails(gguf.GGUFValueType.STRING, HOSTILE_NAME)}, [])
    return out


@pytest.mark.slow
def test_a_model_name_with_markup_shows_literally(qtbot: Any, make_window, hostile_gguf: Path) -> None:
    window = make_window(model=hostile_gguf, settings=FAST_SETTINGS)
    send(qtbot, window, HOSTILE_NAME)  # the chat's title, listed in the sidebar, is the user's words
    labels = [label for label in window.findChildren(QLabel) if "<img" in label.text()]
    assert labels  # the name is shown (status bar, model facts, the answer's author)
    assert [label.objectName() or label.accessibleName() for label in labels
            if label.textFormat() != Qt.TextFormat.PlainText] == []
    tooltips = [widget.toolTip() for widget in window.findChildren(QWidget)]
    for combo in window.findChildren(QComboBox):
        tooltips += [str(combo.itemData(i, Qt.ItemDataRole.ToolTipRole) or "") for i in range(combo.count())]
    for chats in window.findChildren(QListWidget):
        tooltips += [chats.item(i).toolTip() for i in range(chats.count())]
    assert any("&lt;img" in tip for tip in tooltips)  # escaped: shown as the characters they are
    assert [tip for tip in tooltips if "<img" in tip] == []


def test_an_error_summary_is_shown_as_text(qtbot: Any, bait) -> None:
    from medgemma_desktop.ui.dialogs.messages import ErrorDialog

    folder, watch = bait
    summary = f"KeyError: '<img src={folder / 'scan.png'}>'"
    dialog = ErrorDialog(summary, "details", None)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.grab()
    (heading,) = [label for label in dialog.findChildren(QLabel) if "Something went wrong" in label.text()]
    shown = QTextDocument()
    shown.setHtml(heading.text())
    assert summary in shown.toPlainText()
    assert watch.opened() == set()
