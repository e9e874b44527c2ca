"""Exporting a chat from a real history database as Markdown and JSON."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from medgemma_desktop.export import chat_to_json, chat_to_markdown, export_chat, iso_utc
from medgemma_desktop.history import History, ModelRecord
from medgemma_models.errors import MedGemmaError
from medgemma_models.files import sha256_file
from medgemma_models.gguf_info import read_model_info

SETTINGS = {"preset": "medical-cot-270m", "temperature": 0.6, "top_p": 0.95, "max_tokens": 1024, "think": True}


@pytest.fixture(scope="module")
def real_model(gemma_270m: Path) -> ModelRecord:
    """The model record of the real 270M file (reading its header takes a while: once per module)."""
    return ModelRecord.of(read_model_info(gemma_270m), sha256_file(gemma_270m))


def test_model_record_of_the_real_model(gemma_270m: Path, real_model: ModelRecord) -> None:
    assert real_model.file == str(gemma_270m)
    assert real_model.name
    assert real_model.architecture == "gemma3"
    assert real_model.quantization is not None and real_model.quantization.startswith("Q4_K")
    assert real_model.bits_per_weight is not None and 4.0 < real_model.bits_per_weight < 8.0
    assert real_model.sha256 == sha256_file(gemma_270m)
    assert real_model.context_length == 32768
    assert ModelRecord.from_dict(json.loads(json.dumps(real_model.to_dict()))) == real_model


@pytest.fixture
def filled(tmp_path: Path, real_model: ModelRecord):
    """A history with one chat: a question, a finished answer with reasoning, a stopped answer."""
    with History(tmp_path / "history.sqlite3") as history:
        chat = history.create_chat("Chest pain | on exertion", model=real_model, settings=SETTINGS)
        history.add_message(chat, "user", "Chest pain when climbing stairs, gone at rest?")
        history.add_message(
            chat,
            "model",
            "This pattern suggests **stable angina**.\n\n- see a doctor\n- avoid exertion",
            reasoning="Exertional pain relieved by rest.\n\nClassic for angina.",
            meta={"model": real_model.to_dict(), "stats": {"generated_tokens": 42, "decode_tok_per_s": 50.0}},
        )
        history.add_message(chat, "user", "And if it happens at rest?")
        history.add_message(chat, "model", "Then it could be unstable", complete=False)
        yield history, chat


def test_markdown_has_model_settings_times_and_labelled_reasoning(filled, real_model: ModelRecord) -> None:
    history, chat = filled
    text = chat_to_markdown(history.chat(chat), history.messages(chat), history.chat_model(chat), SETTINGS)
    assert text.startswith("# Chest pain | on exertion\n")
    assert f"**Name:** {real_model.name}" in text
    assert f"`{real_model.sha256}`" in text
    assert f"{real_model.quantization} ({real_model.bits_per_weight:.2f} bits per weight)" in text
    assert str(real_model.file) in text
    assert "**temperature:** 0.6" in text and "**preset:** medical-cot-270m" in text
    assert "Not for clinical use" in text
    summary = history.chat(chat)
    assert f"Created {iso_utc(summary.created_at)}" in text
    for message in history.messages(chat):
        assert iso_utc(message.created_at) in text
    # Reasoning is labelled as the model's, quoted apart from the answer, and comes before it.
    label = text.index("Model reasoning (the model's own working, not a clinical justification)")
    assert label < text.index("> Exertional pain relieved by rest.\n>\n> Classic for angina.") < text.index("**stable angina**")
    assert "- see a doctor\n- avoid exertion" in text
    assert text.count("Model reasoning") == 1  # the question and the unfinished answer have none
    assert "Then it could be unstable\n\n*(this answer was stopped before it was finished)*" in text
    assert text.index("### You ·") < text.index("### Model ·")


def test_json_has_everything_a_program_needs(filled, real_model: ModelRecord) -> None:
    history, chat = filled
    document = json.loads(chat_to_json(history.chat(chat), history.messages(chat), history.chat_model(chat), SETTINGS))
    assert document["format"] == "medgemma-edge-chat" and document["version"] == 1
    assert document["title"] == "Chest pain | on exertion"
    model = document["model"]
    assert model["name"] == real_model.name
    assert model["file"] == real_model.file
    assert model["sha256"] == real_model.sha256
    assert model["quantization"] == real_model.quantization
    assert model["bits_per_weight"] == pytest.approx(real_model.bits_per_weight)
    assert model["context_length"] == real_model.context_length and model["architecture"] == "gemma3"
    assert document["settings"] == SETTINGS
    messages = document["messages"]
    assert [m["role"] for m in messages] == ["user", "model", "user", "model"]
    assert messages[1]["model_reasoning"] == "Exertional pain relieved by rest.\n\nClassic for angina."
    assert messages[1]["text"].startswith("This pattern suggests")
    assert messages[1]["meta"]["stats"]["generated_tokens"] == 42
    assert [m["complete"] for m in messages] == [True, True, True, False]
    stamps = [document["created_at"], document["updated_at"], document["exported_at"]]
    stamps += [m[key] for m in messages for key in ("created_at", "updated_at")]
    for stamp in stamps:
        assert stamp.endswith("Z")
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
    created = datetime.fromisoformat(messages[0]["created_at"].replace("Z", "+00:00"))
    assert abs(created.timestamp() - history.messages(chat)[0].created_at) < 1.0


@pytest.mark.parametrize("fmt", ["markdown", "json"])
def test_export_chat_writes_the_file_whole(filled, tmp_path: Path, fmt: str) -> None:
    history, chat = filled
    target = tmp_path / f"chat.{'md' if fmt == 'markdown' else 'json'}"
    target.write_text("an older export")
    export_chat(history, chat, target, fmt)  # replaces an existing file
    written = target.read_text(encoding="utf-8")
    assert "Then it could be unstable" in written
    if fmt == "json":
        assert json.loads(written)["settings"] == SETTINGS
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("chat.")) == [target.name]


def test_export_errors_are_clear(filled, tmp_path: Path) -> None:
    history, chat = filled
    with pytest.raises(MedGemmaError, match="does not exist"):
        export_chat(history, chat, tmp_path / "missing-folder" / "chat.md", "markdown")
    with pytest.raises(MedGemmaError):
        export_chat(history, 9999, tmp_path / "chat.md", "markdown")
    with pytest.raises(ValueError):
        export_chat(history, chat, tmp_path / "chat.txt", "text")  # type: ignore[arg-type]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(MedGemmaError, match="not writable"):
            export_chat(history, chat, locked / "chat.md", "markdown")
    assert not list(tmp_path.glob("**/*.partial"))


def test_iso_utc() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    moment = datetime(2026, 11, 21, 22, 30, 5, tzinfo=timezone.utc)
    assert iso_utc(moment.timestamp()) == "2026-11-21T22:30:05Z"


def test_an_empty_chat_without_a_model_record_exports(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite3") as history:
        chat = history.create_chat()
        export_chat(history, chat, tmp_path / "empty.md", "markdown")
        export_chat(history, chat, tmp_path / "empty.json", "json")
    assert "(not recorded)" in (tmp_path / "empty.md").read_text()
    document = json.loads((tmp_path / "empty.json").read_text())
    assert document["messages"] == [] and document["model"]["name"] is None and document["model"]["sha256"] is None
