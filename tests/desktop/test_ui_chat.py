"""The window with the real engine on the real Gemma-3-270M: send, stop, regenerate, edit, reload, delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from medgemma_models.files import sha256_file
from medgemma_desktop.events import AnswerPiece
from medgemma_desktop.history import History
from tests.support.chats import long_case_chat
from tests.support.window_steps import ANSWER_TIMEOUT_MS, FAST_SETTINGS, LOAD_TIMEOUT_MS, load_model, send


pytestmark = pytest.mark.slow


def test_send_streams_answer_and_saves_it(qtbot, make_window, history: History) -> None:
    window = make_window(settings=FAST_SETTINGS)
    events: list = []
    window.bridge.generation_event.connect(events.append)
    send(qtbot, window, "What are common symptoms of anemia?")
    pieces = [event.text for event in events if isinstance(event, AnswerPiece)]

    cards = window.chat_view.cards()
    assert [c.role for c in cards] == ["user", "model"]
    assert cards[0].answer() == "What are common symptoms of anemia?"
    assert len(pieces) > 1  # the answer arrived in pieces, not at once
    answer = cards[1].answer()
    assert answer.strip() and answer == "".join(pieces)
    [chat] = history.chats()
    assert chat.title == "What are common symptoms of anemia?"
    user, model = history.messages(chat.id)
    assert (user.role, user.text) == ("user", "What are common symptoms of anemia?")
    assert model.role == "model" and model.complete and model.text == answer
    assert model.meta["stats"]["finish_reason"] in ("stop", "length")
    assert model.meta["model"]["quantization"] == window.library.current.info.file_type
    assert "tok/s" in window.status.shown_speed() and "TTFT" in window.status.shown_speed()
    assert window.status.shown_context().startswith("ctx ") and f"/ {window.library.current.n_ctx:,}" in window.status.shown_context()
    assert window.composer.text() == ""


def test_a_second_front_end_on_a_plain_thread_takes_its_turn_while_the_window_streams(
        qtbot, make_window, history: History) -> None:
    """What the server does, in a few lines: jobs submitted to the window's runtime from another thread."""
    import threading

    from medgemma_desktop.events import Finished
    from medgemma_desktop.generation import GenerationRequest
    from medgemma_desktop.server.openai_api import ApiMessage
    from medgemma_desktop.settings import ChatSettings

    window = make_window(settings=FAST_SETTINGS)
    settings = ChatSettings.from_dict(FAST_SETTINGS)
    request = GenerationRequest(settings.preset_spec, [ApiMessage("user", "Name one vitamin.")],
                                settings.sampling_params(), None, False, False)
    heard: list = []

    def other_front_end() -> None:
        window.runtime.generate(request, heard.append).wait(120)

    window.composer.set_text("What is a fever?")
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        assert window.send()
        other = threading.Thread(target=other_front_end)
        other.start()
    other.join(120)
    assert isinstance(heard[-1], Finished) and any(isinstance(e, AnswerPiece) and e.text for e in heard)
    assert window.chat_view.cards()[-1].answer().strip()
    [chat] = history.chats()
    assert [m.role for m in history.messages(chat.id)] == ["user", "model"]  # the other's answer is its own


def test_offload_is_stated_in_the_status_bar(qtbot, make_window) -> None:
    window = make_window(settings={**FAST_SETTINGS, "gpu": "cpu"})
    assert window.library.current.offload.startswith("CPU")
    assert window.library.current.offload in window.status.shown_model()
    assert "bpw real" in window.model_bar.shown_details()


def test_escape_stops_mid_answer_and_keeps_the_partial_answer(qtbot, make_window, history: History) -> None:
    window = make_window(settings={**FAST_SETTINGS, "max_tokens": 400})
    window.composer.set_text("Explain in detail how the heart pumps blood through the body.")
    assert window.send()
    qtbot.waitUntil(lambda: window.session.answer is not None and window.session.answer.pieces >= 4, timeout=ANSWER_TIMEOUT_MS)
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        qtbot.keyClick(window.composer.input, Qt.Key.Key_Escape)

    assert window.session.last_stats.finish_reason == "cancelled"
    assert window.session.last_stats.generated_tokens < 400
    card = window.chat_view.cards()[-1]
    assert card.answer().strip()
    assert "Stopped" in card.meta.text()
    model = history.messages(history.chats()[0].id)[-1]
    assert not model.complete
    assert model.text == card.answer()


def test_regenerate_replaces_the_last_answer(qtbot, make_window, history: History) -> None:
    window = make_window(settings={**FAST_SETTINGS, "temperature": 0.9})
    send(qtbot, window, "Name a vitamin.")
    first = window.chat_view.cards()[-1]
    assert first.regenerate_button.isVisibleTo(first)
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        qtbot.mouseClick(first.regenerate_button, Qt.MouseButton.LeftButton)

    messages = history.messages(window.session.chat_id)
    assert [m.role for m in messages] == ["user", "model"] and messages[1].complete
    cards = window.chat_view.cards()
    assert len(cards) == 2 and cards[1] is not first and cards[1].message_id == messages[1].id
    assert cards[1].answer() == messages[1].text


def test_edit_and_resend_replaces_the_last_question(qtbot, make_window, history: History) -> None:
    window = make_window(settings=FAST_SETTINGS)
    send(qtbot, window, "What is a fever?")
    user_card = window.chat_view.cards()[0]
    assert user_card.edit_button.isVisibleTo(user_card)
    qtbot.mouseClick(user_card.edit_button, Qt.MouseButton.LeftButton)
    assert window.composer.text() == "What is a fever?"
    assert window.composer.is_editing_shown()
    window.composer.set_text("What is a high fever in adults?")
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        qtbot.keyClick(window.composer.input, Qt.Key.Key_Return)

    messages = history.messages(window.session.chat_id)
    assert [(m.role, m.text) for m in messages][0] == ("user", "What is a high fever in adults?")
    assert len(messages) == 2 and messages[1].complete
    assert [c.answer() for c in window.chat_view.cards()][0] == "What is a high fever in adults?"


def test_history_reloads_in_a_new_window(qtbot, make_window, history: History, gemma_270m: Path) -> None:
    first = make_window(settings=FAST_SETTINGS)
    send(qtbot, first, "What does a normal blood pressure look like?")
    send(qtbot, first, "And a high one?")
    expected = [(c.role, c.answer()) for c in first.chat_view.cards()]
    first.close()

    other = History(history.path)
    try:
        second = make_window(db=other, load=False)
        assert second.sidebar.titles() == ["What does a normal blood pressure look like?"]
        second.sidebar.list.setCurrentRow(0)
        assert [(c.role, c.answer()) for c in second.chat_view.cards()] == expected
        assert len(expected) == 4
    finally:
        second.shutdown()
        other.close()


def test_delete_really_deletes(qtbot, make_window, history: History) -> None:
    window = make_window(settings=FAST_SETTINGS)
    send(qtbot, window, "Is zebracornitis contagious?")
    chat_id = window.session.chat_id
    window.chats.delete_chat(chat_id)

    assert history.chats() == [] and history.messages(chat_id) == []
    assert window.chat_view.cards() == [] and window.sidebar.titles() == []
    for path in history.path.parent.glob(history.path.name + "*"):
        assert b"zebracornitis" not in path.read_bytes(), path


def test_model_and_settings_are_remembered_per_file(qtbot, make_window, history: History, gemma_270m: Path) -> None:
    window = make_window(settings=FAST_SETTINGS)
    window.settings_panel.top_k.setValue(7)
    window.settings_panel.system.setPlainText("Answer briefly.")
    window.close()

    again = make_window(load=False)
    assert again.history.get_setting("last_model") == str(gemma_270m)
    load_model(qtbot, again, gemma_270m)
    assert again.settings_panel.top_k.value() == 7
    assert again.settings_panel.chat_settings().system_prompt() == "Answer briefly."
    again.settings_panel.reset_to_defaults()
    assert again.settings_panel.top_k.value() == 64  # gemma-chat's default
    assert again.settings_panel.n_ctx.value() == FAST_SETTINGS["n_ctx"]  # loading settings are kept


def test_context_overflow_leaves_out_early_turns_and_says_so(qtbot, make_window, history: History) -> None:
    window = make_window(settings={**FAST_SETTINGS, "n_ctx": 512})
    assert window.library.current.n_ctx == 512
    chat = long_case_chat(history)
    window.chats.open_chat(chat)
    assert window.chat_view.shown_dropped_notice() is None
    send(qtbot, window, "Summarise the case.")

    notice = window.chat_view.shown_dropped_notice()
    assert notice is not None
    dropped = history.messages(chat)[-1].meta["dropped_turns"]
    assert dropped >= 2 and dropped % 2 == 0
    assert notice.startswith(f"{dropped} earlier messages left out")
    assert window.session.last_stats.prompt_tokens + FAST_SETTINGS["max_tokens"] <= 512


def test_broken_model_files_keep_the_model_in_use(qtbot, make_window, tmp_path: Path, gemma_270m: Path) -> None:
    window = make_window(settings=FAST_SETTINGS)
    text_file = tmp_path / "notes.gguf"
    text_file.write_text("this is not a model\n")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(gemma_270m.read_bytes()[:4096])

    for broken in (text_file, truncated, tmp_path / "missing.gguf"):
        reported = len(window.errors)
        assert window.models.open_model_file(broken)
        qtbot.waitUntil(lambda n=reported: len(window.errors) > n and not window.library.loading, timeout=LOAD_TIMEOUT_MS)
        assert len(window.errors) == reported + 1
        title, message = window.errors[-1]
        assert title == "Cannot open this model" and broken.name in message
        assert window.library.current.path == gemma_270m and window.library.current.info.path == gemma_270m
        assert window.model_bar.selected_key() == str(gemma_270m)
    boxes = [b for b in window.findChildren(QMessageBox) if b.isVisible()]
    assert boxes and all(b.windowTitle() == "Cannot open this model" for b in boxes)
    assert not window.library.loading
    send(qtbot, window, "Still there?")  # the old model still answers
    assert window.chat_view.cards()[-1].answer().strip()


def test_export_as_markdown_and_json(qtbot, make_window, tmp_path: Path, history: History) -> None:
    import json

    window = make_window(settings=FAST_SETTINGS)
    send(qtbot, window, "What is a normal resting heart rate?")
    answer = window.chat_view.cards()[-1].answer()
    assert window.chats.export_chat(tmp_path / "chat.md", "markdown")
    assert window.chats.export_chat(tmp_path / "chat.json", "json")

    markdown = (tmp_path / "chat.md").read_text(encoding="utf-8")
    assert "What is a normal resting heart rate?" in markdown
    assert answer.strip().splitlines()[0] in markdown
    assert window.library.current.info.name in markdown and window.library.current.info.file_type in markdown
    data = json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))
    texts = json.dumps(data, ensure_ascii=False)
    assert "What is a normal resting heart rate?" in texts and window.library.current.info.file_type in texts
    # The exact file that wrote the answers, by its sha256.
    digest = sha256_file(window.library.current.path)
    assert digest in markdown
    assert digest in texts


def test_the_emergency_notice_shows_before_the_first_token_and_stays_on_regenerate(qtbot, make_window) -> None:
    window = make_window(settings=FAST_SETTINGS)
    seen_at_first_token: list[bool] = []

    def on_event(event) -> None:
        if isinstance(event, AnswerPiece) and not seen_at_first_token:
            card = window.chat_view.cards()[-1]
            seen_at_first_token.append(card.emergency.isVisibleTo(card))

    window.bridge.generation_event.connect(on_event)
    send(qtbot, window, "Crushing chest pain spreading to my left arm and I am sweating")
    assert seen_at_first_token == [True]
    card = window.chat_view.cards()[-1]
    assert "This may be an emergency: call your local emergency number now." in card.emergency.text()
    assert '"chest pain"' in card.emergency.text() and card.emergency.text().count("\n") == 0
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        qtbot.mouseClick(card.regenerate_button, Qt.MouseButton.LeftButton)
    again = window.chat_view.cards()[-1]
    assert again is not card and again.emergency.isVisibleTo(again)
    assert not window.chat_view.cards()[0].emergency.isVisibleTo(window.chat_view.cards()[0])
