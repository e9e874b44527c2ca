"""Images through the chat session, `--ask --image` and the exports, on the tiny multimodal pair.

A DICOM with a canary patient name and ID is sent; the canaries must be nowhere afterwards: not in
the database, the image store, either export or the logs. Deleting the chat removes its images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from tests.desktop.test_ask import run_ask
from tests.desktop.test_images_decode import CANARY_ID, CANARY_NAME, dicom, ramp

from medgemma_desktop.ask import Asker
from medgemma_desktop.events import RuntimeEvent
from medgemma_desktop.export import export_chat
from medgemma_desktop.generation import ModelRequest
from medgemma_desktop.history import History
from medgemma_desktop.images.decode import read_image_file
from medgemma_desktop.images.store import ImageStore
from medgemma_desktop.runtime import Runtime, RuntimeBackend
from medgemma_desktop.session import ChatSession
from medgemma_desktop.settings import ChatSettings, LoadParams, LoadSettings
from medgemma_models.errors import MedGemmaError

CANARIES = (CANARY_NAME, CANARY_ID, "Canaryson", "Canary General Hospital", "ACC-CANARY-9", "19470101")


def everything_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_a_dicom_chat_keeps_no_identifier_and_its_images_go_with_it(vision_pair, medgemma_home, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    runtime = Runtime()
    history = History(medgemma_home / "history.sqlite3")
    try:
        events: list[RuntimeEvent] = []
        runtime.load(ModelRequest(vision_pair.model, mmproj=vision_pair.mmproj, options=LoadParams(n_ctx=512)),
                     events.append).wait()
        loaded = runtime.loaded
        assert loaded is not None and loaded.vision
        session = ChatSession(history, RuntimeBackend(runtime, lambda e: session.handle(e), wait=True))
        session.use_model(loaded.info, loaded.sha256, vision=True)
        session.use_settings(ChatSettings.from_dict({"preset": "gemma-chat", "temperature": 0.0, "max_tokens": 8}),
                             LoadSettings())
        decoded = read_image_file(dicom(tmp_path / "chest.dcm", ramp(32, 32)))
        stored = session.images.put(decoded)
        assert stored.parent == medgemma_home / "images"
        assert session.send("What does this X-ray show?", [decoded.part])
        chat = session.chat_id
        answer = history.messages(chat)[-1]
        assert answer.complete and answer.meta["stats"]["images_encoded"] == 1

        # A follow-up question about the same image: the cache holds it, nothing is encoded again.
        assert session.send("Is the heart enlarged?")
        assert history.messages(chat)[-1].meta["stats"]["images_encoded"] == 0

        (tmp_path / "out").mkdir()
        export_chat(history, chat, tmp_path / "out" / "chat.md", "markdown", session.images)
        export_chat(history, chat, tmp_path / "out" / "chat.json", "json", session.images)
        markdown = (tmp_path / "out" / "chat.md").read_text()
        assert f"chat-images/{decoded.part.sha256[:16]}.png" in markdown
        assert (tmp_path / "out" / "chat-images" / f"{decoded.part.sha256[:16]}.png").read_bytes() == decoded.png
        image = json.loads((tmp_path / "out" / "chat.json").read_text())["messages"][0]["meta"]["images"][0]
        assert (image["sha256"], image["size"], image["kind"]) == (decoded.part.sha256, len(decoded.png), "dicom")

        history.checkpoint()
        kept = everything_under(medgemma_home) + everything_under(tmp_path / "out") + caplog.text.encode()
        for canary in CANARIES:
            assert canary.encode() not in kept, canary

        session.delete_chat(chat)
        assert not stored.exists()
    finally:
        history.close()
        runtime.close()


def test_a_missing_image_file_leaves_the_chat_usable(vision_pair, medgemma_home, tmp_path):
    with Asker(vision_pair.model, [], LoadSettings.from_dict({"n_ctx": 512}), mmproj=vision_pair.mmproj) as asker:
        image = tmp_path / "scan.png"
        from PIL import Image

        Image.fromarray(ramp(32, 32).astype(np.uint8)).save(image)
        result = asker.ask("What is this?", images=[image], max_tokens=4, temperature=0.0)
        assert result.images == {"count": 1, "tokens": 6} and result.image_encode_ms > 0
        for stored in asker.session.images.folder.iterdir():
            stored.unlink()  # the file is gone: the message still opens, the prompt says so
        assert asker.session.regenerate(asker.history.messages(asker.session.chat_id)[-1].id)
        assert "[image missing]" in asker.recorder.plan.plan.prompt.text


def test_the_mmproj_beside_the_model_is_found_and_a_text_model_refuses_images(vision_pair, gemma_270m, tmp_path):
    image = tmp_path / "scan.png"
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    result = run_ask("What is shown?", "--model", str(vision_pair.model), "--image", str(image), "--max-tokens", "4",
                     "--temperature", "0", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["images"] == {"count": 1, "tokens": 6} and answer["image_encode_ms"] > 0

    refused = run_ask("What is shown?", "--model", str(gemma_270m), "--image", str(image), "--max-tokens", "4")
    assert refused.returncode == 2 and "cannot see images" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_projector_of_another_model_is_refused_by_name(vision_pair, gemma_270m):
    with pytest.raises(MedGemmaError, match="mmproj-tiny-vision.gguf"):
        Asker(gemma_270m, [], mmproj=vision_pair.mmproj)


def test_the_store_says_where_the_images_are(medgemma_home):
    assert ImageStore().folder == medgemma_home / "images"
