"""The chat history on real SQLite files: schema, chats, messages, settings, deletion, sharing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from medgemma_desktop.history import MIGRATIONS, History, ModelRecord, StreamingMessageWriter
from medgemma_models.errors import MedGemmaError, StoreError


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "history.sqlite3"


@pytest.fixture
def db(db_path: Path):
    with History(db_path) as opened:
        yield opened


def file_bytes(folder: Path) -> bytes:
    """Everything SQLite keeps on disk for the database: main file, -wal and -shm."""
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("history.sqlite3"))


class SteppedClock:
    """A clock the test moves by hand, so write timing is decided by the test, not the machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_new_database_uses_wal_and_records_migrations(db_path: Path, db: History) -> None:
    assert db.applied_migrations() == [name for name, _ in MIGRATIONS]
    raw = sqlite3.connect(db_path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"migrations", "chats", "messages", "settings", "model_settings"} <= tables
    raw.close()


def test_reopening_applies_no_migration_twice(db_path: Path) -> None:
    with History(db_path) as first:
        chat = first.create_chat("kept")
    with History(db_path) as again:
        assert again.applied_migrations() == [name for name, _ in MIGRATIONS]
        assert again.chat(chat).title == "kept"
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT count(*) FROM migrations").fetchone()[0] == len(MIGRATIONS)


def test_connection_settings(db: History) -> None:
    assert db.pragma("foreign_keys") == 1
    assert db.pragma("secure_delete") == 1
    assert db.pragma("busy_timeout") >= 1000


def test_default_file_is_in_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGEMMA_HOME", str(tmp_path / "home"))
    with History() as default:
        default.create_chat()
    assert (tmp_path / "home" / "history.sqlite3").is_file()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "history.sqlite3"
    bogus.write_bytes(b"this is a text file, not SQLite\n" * 200)
    with pytest.raises(StoreError, match="not a usable chat history") as caught:
        History(bogus)
    assert isinstance(caught.value, MedGemmaError)
    assert "\n" not in str(caught.value)


def test_chats_are_listed_newest_first_and_renamed(db: History) -> None:
    first = db.create_chat("First", model=ModelRecord(name="gemma-3-270m"), settings={"temperature": 0.2})
    second = db.create_chat("Second")
    assert [c.id for c in db.chats()] == [second, first]
    db.add_message(first, "user", "a new message moves the chat to the top")
    assert [c.id for c in db.chats()] == [first, second]
    db.rename_chat(second, "Renamed")
    summaries = {c.id: c for c in db.chats()}
    assert summaries[second].title == "Renamed"
    assert summaries[first].model_name == "gemma-3-270m"
    assert summaries[second].model_name is None
    assert db.chat_settings(first) == {"temperature": 0.2}
    db.set_chat_settings(first, {"temperature": 0.9, "think": False})
    assert db.chat_settings(first) == {"temperature": 0.9, "think": False}
    db.set_chat_model(second, ModelRecord(name="other"))
    assert db.chat(second).model_name == "other"
    assert db.chat_model(second) == ModelRecord(name="other")


def test_a_model_record_with_bad_stored_values_reads_them_as_not_recorded(db: History) -> None:
    chat = db.create_chat("Stored by something else")
    stored = ('{"name": ["not", "a", "name"], "file": "/models/m.gguf", "sha256": 7, "quantization": "",'
              ' "file_type": "Q8_0", "bits_per_weight": true, "context_length": -5, "adapters": {"a": 1}}')
    with sqlite3.connect(db.path) as raw:
        raw.execute("UPDATE chats SET model = ? WHERE id = ?", (stored, chat))
    raw.close()
    assert db.chat_model(chat) == ModelRecord(file="/models/m.gguf", quantization="Q8_0")
    assert db.chat(chat).model_name is None
    with sqlite3.connect(db.path) as raw:
        raw.execute("UPDATE chats SET model = '[1, 2]' WHERE id = ?", (chat,))
    raw.close()
    assert db.chat_model(chat) == ModelRecord() and ModelRecord().to_dict() == {}


def test_search_matches_title_or_text_in_any_case(db: History) -> None:
    fever = db.create_chat("Fever in a child")
    rash = db.create_chat("Skin")
    db.add_message(rash, "user", "A RASH on both arms after the Ärztin changed the cream")
    db.add_message(rash, "model", "Possibly contact dermatitis.", reasoning="hidden thought about eczema")
    assert [c.id for c in db.chats("fever")] == [fever]
    assert [c.id for c in db.chats("rash on")] == [rash]
    assert [c.id for c in db.chats("ärztin")] == [rash]  # non-ASCII case folding
    assert [c.id for c in db.chats("DERMATITIS")] == [rash]
    assert db.chats("no such words") == []
    assert len(db.chats("   ")) == 2
    assert db.chats("100%") == []  # LIKE wildcards mean nothing here


def test_messages_round_trip(db: History) -> None:
    chat = db.create_chat()
    user = db.add_message(chat, "user", "What causes anaemia?")
    answer = db.add_message(chat, "model", "", reasoning="", meta={"preset": "gemma-chat"}, complete=False)
    db.update_message(answer, "Iron deficiency, most often.", "Think about common causes.")
    stored = db.messages(chat)
    assert [m.id for m in stored] == [user, answer]
    assert stored[0].role == "user" and stored[0].complete and stored[0].meta == {}
    model = stored[1]
    assert model.text == "Iron deficiency, most often."
    assert model.reasoning == "Think about common causes."
    assert model.meta == {"preset": "gemma-chat"}  # meta=None keeps what was there
    assert not model.complete
    db.update_message(answer, model.text, model.reasoning, meta={"stats": {"generated_tokens": 7}}, complete=True)
    final = db.message(answer)
    assert final.complete and final.meta == {"stats": {"generated_tokens": 7}}
    assert final.updated_at >= final.created_at


def test_bad_roles_and_missing_rows(db: History) -> None:
    chat = db.create_chat()
    with pytest.raises(ValueError):
        db.add_message(chat, "system", "no system role in Gemma")
    with pytest.raises(StoreError):
        db.chat(9999)
    with pytest.raises(StoreError):
        db.add_message(9999, "user", "to nowhere")
    with pytest.raises(StoreError):
        db.update_message(9999, "x", "")
    with pytest.raises(StoreError):
        db.rename_chat(9999, "x")


def test_delete_messages_from_cuts_the_tail_of_one_chat(db: History) -> None:
    chat, other = db.create_chat(), db.create_chat()
    ids = [db.add_message(chat, role, f"m{i}") for i, role in enumerate(["user", "model"] * 3)]
    kept_elsewhere = db.add_message(other, "user", "untouched")
    db.delete_messages_from(ids[3])
    assert [m.id for m in db.messages(chat)] == ids[:3]
    assert [m.id for m in db.messages(other)] == [kept_elsewhere]
    # New messages after a cut come after the ones kept.
    again = db.add_message(chat, "model", "regenerated")
    assert [m.id for m in db.messages(chat)] == [*ids[:3], again]


def test_settings_are_json_values(db: History) -> None:
    assert db.get_setting("notice_acknowledged") is None
    assert db.get_setting("notice_acknowledged", False) is False
    db.set_setting("notice_acknowledged", True)
    db.set_setting("last_model", "/models/a.gguf")
    db.set_setting("window", {"width": 900, "splitter": [200, 700]})
    db.set_setting("last_model", "/models/b.gguf")
    assert db.get_setting("notice_acknowledged") is True
    assert db.get_setting("last_model") == "/models/b.gguf"
    assert db.get_setting("window") == {"width": 900, "splitter": [200, 700]}
    assert db.model_settings("abc123") is None
    db.set_model_settings("abc123", {"temperature": 0.3, "n_ctx": 2048})
    db.set_model_settings("abc123", {"temperature": 0.4, "n_ctx": 2048})
    assert db.model_settings("abc123") == {"temperature": 0.4, "n_ctx": 2048}


def test_delete_chat_removes_the_text_from_the_files(db_path: Path, db: History) -> None:
    secret = "ZEBRA-PANCREAS-4711"
    kept = db.create_chat("Kept chat")
    db.add_message(kept, "user", "an unrelated question that stays")
    chat = db.create_chat(f"Title {secret}")
    db.add_message(chat, "user", f"My patient id is {secret}, what now? " * 20)
    answer = db.add_message(chat, "model", "", complete=False)
    writer = StreamingMessageWriter(db, answer, interval=0.0)
    for i in range(30):  # many versions of the row, as a streaming answer leaves behind
        writer.append(answer=f"{secret} piece {i}. ", reasoning=f"thinking about {secret} {i}. ")
    writer.finish()
    assert secret.encode() in file_bytes(db_path.parent)

    db.delete_chat(chat)

    assert secret.encode() not in file_bytes(db_path.parent)
    assert [c.id for c in db.chats()] == [kept]
    assert db.messages(chat) == []
    assert db.messages(kept)[0].text == "an unrelated question that stays"


def test_delete_chat_while_another_window_has_the_file_open(db_path: Path, db: History) -> None:
    secret = "OKAPI-SPLEEN-0815"
    with History(db_path) as other_window:
        chat = other_window.create_chat("shared")
        other_window.add_message(chat, "user", f"{secret} " * 50)
        assert [c.id for c in db.chats()] == [chat]
        db.delete_chat(chat)
        assert other_window.chats() == []
        assert secret.encode() not in file_bytes(db_path.parent)


def test_two_histories_on_one_file_see_each_other(db_path: Path, db: History) -> None:
    with History(db_path) as second:
        chat = db.create_chat("from the first window")
        second.add_message(chat, "user", "written by the second window")
        db.add_message(chat, "model", "answered in the first")
        assert [m.text for m in second.messages(chat)] == ["written by the second window", "answered in the first"]
        assert [m.text for m in db.messages(chat)] == [m.text for m in second.messages(chat)]


def test_a_second_process_writing_at_the_same_time(db_path: Path, db: History) -> None:
    chat = db.create_chat("busy")
    count = 150
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from pathlib import Path
                from medgemma_desktop.history import History
                h = History(Path({str(db_path)!r}))
                print("ready", flush=True)
                for i in range({count}):
                    h.add_message({chat}, "model", f"child {{i}}")
                    h.set_setting("child_progress", i)
                h.close()
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    for i in range(count):
        db.add_message(chat, "user", f"parent {i}")
        db.chats("child")  # reads interleaved with the other process's writes
    assert child.wait(timeout=120) == 0

    texts = [m.text for m in db.messages(chat)]
    assert sorted(t for t in texts if t.startswith("parent")) == sorted(f"parent {i}" for i in range(count))
    assert [t for t in texts if t.startswith("child")] == [f"child {i}" for i in range(count)]
    assert db.get_setting("child_progress") == count - 1
    assert db.pragma("integrity_check") == "ok"


def test_writer_saves_once_the_interval_has_passed(db_path: Path, db: History) -> None:
    chat = db.create_chat()
    answer = db.add_message(chat, "model", "", complete=False)
    clock = SteppedClock()
    writer = StreamingMessageWriter(db, answer, interval=1.0, clock=clock)
    with History(db_path) as reader:  # what another process would find after a crash
        writer.append(reasoning="Fever and ")
        clock.now = 0.5
        writer.append(reasoning="cough.")
        assert reader.message(answer).reasoning == ""
        clock.now = 1.0
        writer.append(answer="Likely a viral")
        assert (reader.message(answer).reasoning, reader.message(answer).text) == ("Fever and cough.", "Likely a viral")
        assert not reader.message(answer).complete
        clock.now = 1.5
        writer.append(answer=" infection.")
        assert reader.message(answer).text == "Likely a viral"
        clock.now = 2.2
        writer.append()  # nothing new: nothing to write
        assert writer.pending and reader.message(answer).text == "Likely a viral"
        writer.flush()
        assert reader.message(answer).text == "Likely a viral infection."
        writer.finish(meta={"stats": {"finish_reason": "stop"}})
        final = reader.message(answer)
    assert final.complete
    assert final.text == writer.text == "Likely a viral infection."
    assert final.reasoning == writer.reasoning == "Fever and cough."
    assert final.meta == {"stats": {"finish_reason": "stop"}}


def test_a_stopped_answer_is_kept_incomplete(db: History) -> None:
    chat = db.create_chat()
    answer = db.add_message(chat, "model", "", meta={"model": {"name": "m"}}, complete=False)
    writer = StreamingMessageWriter(db, answer, interval=60.0)
    writer.append(answer="The first half")
    writer.finish(complete=False)
    stopped = db.message(answer)
    assert stopped.text == "The first half"
    assert not stopped.complete
    assert stopped.meta == {"model": {"name": "m"}}


def test_a_writer_thread_and_a_reading_thread_share_one_history(db: History) -> None:
    chat = db.create_chat()
    answer = db.add_message(chat, "model", "", complete=False)
    writer = StreamingMessageWriter(db, answer, interval=0.0)
    failures: list[BaseException] = []

    def stream() -> None:
        try:
            for i in range(100):
                writer.append(answer=f"{i} ")
            writer.finish()
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            failures.append(exc)

    worker = threading.Thread(target=stream)
    worker.start()
    seen = []
    while worker.is_alive():
        seen.append(db.message(answer).text)
    worker.join()
    assert failures == []
    final = db.message(answer).text
    assert final == "".join(f"{i} " for i in range(100))
    assert all(final.startswith(text) for text in seen)

