"""Images in the window, with the real engine on the tiny multimodal pair: attach, see the thumbnail,
send, regenerate, edit and resend with the image, delete the chat and its image files."""

from __future__ import annotations

import numpy as np
from PIL import Image
from PySide6.QtCore import QMimeData, QUrl
from tests.desktop.test_images_decode import dicom, ramp
from tests.support.window_steps import ANSWER_TIMEOUT_MS, FAST_SETTINGS, send

from medgemma_desktop.ui.chat.chat_presenter import DICOM_NOTICE_SETTING
from medgemma_desktop.ui.chat.composer import NO_VISION_TIP

SETTINGS = {**FAST_SETTINGS, "max_tokens": 4, "n_ctx": 512, "preset": "gemma-chat"}


def attach(qtbot, window, *paths) -> None:
    before = len(window.composer.image_parts())
    window.chats.attach_files(list(paths))
    qtbot.waitUntil(lambda: len(window.composer.image_parts()) == before + len(paths), timeout=10_000)


def test_attach_send_regenerate_edit_and_delete_with_images(qtbot, make_window, vision_pair, tmp_path, medgemma_home):
    window = make_window(model=vision_pair.model, settings=SETTINGS)
    assert window.session.vision and window.composer.attach.isEnabled()
    png = tmp_path / "rash.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), np.uint8)).save(png)
    attach(qtbot, window, png, dicom(tmp_path / "chest.dcm", ramp(32, 32)))
    assert window.history.get_setting(DICOM_NOTICE_SETTING)  # the first DICOM showed what is kept
    assert window.composer.images.isVisibleTo(window.composer)

    # Removing one before sending: it does not go with the message.
    dicom_part = next(p for p in window.composer.image_parts() if p.kind == "dicom")
    window.composer.images.remove(dicom_part.sha256)
    assert [p.kind for p in window.composer.image_parts()] == ["png"]
    send(qtbot, window, "What is this rash?")
    assert window.composer.image_parts() == []
    question, answer = window.history.messages(window.session.chat_id)
    assert [p["kind"] for p in question.meta["images"]] == ["png"]
    assert answer.meta["stats"]["images_encoded"] == 1
    card = window.chat_view.cards()[0]
    assert len(card.images.parts) == 1 and card.images.isVisibleTo(card)

    # Regenerate: the image is in the KV cache, nothing is encoded again.
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        window.chat_view.cards()[-1].regenerate_button.click()
    assert window.history.messages(window.session.chat_id)[-1].meta["stats"]["images_encoded"] == 0

    # Edit and resend: the image comes back into the composer and goes again with the new text.
    window.chats.edit_message(question.id)
    assert [p.sha256 for p in window.composer.image_parts()] == [question.image_ids[0]]
    send(qtbot, window, "Is this rash infectious?")
    edited = window.history.messages(window.session.chat_id)[0]
    assert edited.text == "Is this rash infectious?" and edited.image_ids == question.image_ids

    stored = medgemma_home / "images" / f"{question.image_ids[0]}.png"
    assert stored.is_file()
    window.session.delete_chat(window.session.chat_id)
    assert not stored.exists()


def test_a_dropped_file_and_a_bad_one(qtbot, make_window, vision_pair, tmp_path):
    window = make_window(model=vision_pair.model, settings=SETTINGS)
    good = tmp_path / "eye.png"
    Image.new("RGB", (20, 20), (200, 30, 30)).save(good)
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    errors: list[str] = []
    window.chats.report_error = lambda title, message: errors.append(message)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(bad)), QUrl.fromLocalFile(str(good))])
    window.composer.input.insertFromMimeData(mime)  # what a paste or a drop of files does
    qtbot.waitUntil(lambda: len(window.composer.image_parts()) == 1 and bool(errors), timeout=10_000)
    assert "notes.png is not an image" in errors[0]


def test_a_text_only_model_disables_attaching_and_says_why(qtbot, make_window):
    window = make_window(settings=FAST_SETTINGS)  # the real 270M: no projector
    assert not window.composer.attach.isEnabled()
    assert window.composer.attach.toolTip() == NO_VISION_TIP


def test_opening_the_projector_opens_its_model_listed_as_one_vision_entry(qtbot, make_window, vision_pair, tmp_path):
    import shutil

    window = make_window(settings=FAST_SETTINGS)  # the 270M first: no vision
    assert not window.session.vision
    with qtbot.waitSignal(window.model_loaded, timeout=120_000):
        assert window.models.open_model_file(vision_pair.mmproj)  # the user picked the mmproj file
    assert window.library.current.path == vision_pair.model and window.session.vision
    assert window.composer.attach.isEnabled()
    # The model list: one entry for the pair, marked "vision"; the projector is not a model of its own.
    qtbot.waitUntil(lambda: any(e.vision for e in window.library.entries()), timeout=30_000)
    entries = [e for e in window.library.entries() if e.path in (vision_pair.model, vision_pair.mmproj)]
    assert len(entries) == 1 and entries[0].title.endswith("· vision")

    # A projector alone in its folder: refused in one sentence, and the model in use stays.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(vision_pair.mmproj, alone / vision_pair.mmproj.name)
    errors: list[str] = []
    window.models.report_error = lambda title, message: errors.append(message)
    assert not window.models.open_model_file(alone / vision_pair.mmproj.name)
    assert "no model beside it fits it" in errors[0] and window.library.current.path == vision_pair.model
