"""Documents in the window, with the real engine on the real 270M: make a collection, add a folder
(indexing off the window's thread, with progress), tick it for the chat, ask, see the citations under
the answer, find them saved and exported; the choice is remembered with the chat."""

from __future__ import annotations

import json

from tests.support.document_files import GUIDE_PAGES, write_malformed_pdf, write_pdf
from tests.support.window_steps import FAST_SETTINGS, send

from medgemma_desktop.documents.passages import CITATIONS_META, HEADER, PASSAGES_META
from medgemma_desktop.session import COLLECTIONS_SETTING


def test_a_chat_answers_from_a_collection_with_the_page_cited(qtbot, make_window, tmp_path, medgemma_home):
    folder = tmp_path / "guidelines"
    folder.mkdir()
    write_pdf(folder / "guide.pdf", GUIDE_PAGES)
    write_malformed_pdf(folder / "broken.pdf")
    window = make_window(settings=FAST_SETTINGS)
    dialog = window.documents.open_dialog()
    dialog.create("Guidelines")
    assert window.session.collections == ["Guidelines"]
    progress: list = []
    window.documents.progressed.connect(progress.append)
    with qtbot.waitSignal(window.documents.indexed, timeout=60_000) as done:
        dialog.add([folder])
    report = done.args[0]
    assert report.indexed == [str(folder / "guide.pdf")] and progress and progress[-1].files_total == 2
    assert "Skipped broken.pdf" in dialog.status.text()
    assert "4 passages" in dialog.list.item(0).text() or "passages" in dialog.list.item(0).text()

    send(qtbot, window, "Which drug is first-line for type 2 diabetes, and at what dose?")
    question, answer = window.history.messages(window.session.chat_id)
    assert question.meta[PASSAGES_META].startswith(HEADER)
    cited = answer.meta[CITATIONS_META]
    assert (cited[0]["source"], cited[0]["page"]) == ("guide.pdf", 3) and "Metformin" in cited[0]["snippet"]
    card = window.chat_view.cards()[-1]
    assert card.sources.isVisibleTo(card) and card.citations[0].page == 3
    assert window.history.chat_settings(window.session.chat_id)[COLLECTIONS_SETTING] == ["Guidelines"]

    markdown, document = tmp_path / "chat.md", tmp_path / "chat.json"
    assert window.chats.export_chat(markdown, "markdown") and window.chats.export_chat(document, "json")
    assert "**Sources:**" in markdown.read_text() and "guide.pdf, page 3" in markdown.read_text()
    assert json.loads(document.read_text())["messages"][1]["meta"][CITATIONS_META][0]["page"] == 3

    # Another chat with no collection ticked asks without documents; reopening the first shows its tick.
    chat = window.session.chat_id
    window.chats.new_chat()
    window.session.use_collections([])
    send(qtbot, window, "What is a fever?")
    assert PASSAGES_META not in window.history.messages(window.session.chat_id)[0].meta
    window.chats.open_chat(chat)
    assert window.session.collections == ["Guidelines"]
    dialog.refresh()
    assert dialog.list.item(0).checkState().name == "Checked"

    # Deleting the collection takes its text out of the data folder.
    dialog.remove("Guidelines")
    assert not any(b"Metformin" in p.read_bytes() for p in (medgemma_home / "documents").iterdir())
