"""The chat session without Qt: send, stream, stop, regenerate, edit, overflow notice, saving.

Answers come from the scripted engine (or the real 270M model) through a `Runtime` and a waiting
`RuntimeBackend`, as `--ask` runs them; a recording listener stands in for the window.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medgemma_desktop.answer import AnswerStats
from medgemma_desktop.engine import Engine
from medgemma_desktop.events import ModelReady
from medgemma_desktop.export import chat_to_json, chat_to_markdown
from medgemma_desktop.generation import ModelRequest
from medgemma_desktop.runtime import Runtime, RuntimeBackend
from medgemma_desktop.history import History, Message, ModelRecord
from medgemma_desktop.session import ChatSession, SessionListener, chat_title, meta_text
from medgemma_desktop.settings import ChatSettings, LoadParams, LoadSettings
from medgemma_models.gguf_info import read_model_info
from tests.support.chats import long_case_chat
from tests.support.scripted_engine import THINK_SCRIPT, ScriptedEngine, reasoning_pieces, script_reasoning

REASONING_TEXT, ANSWER_TEXT = script_reasoning(THINK_SCRIPT)


class Recorder(SessionListener):
    """Every event the session sends, in order; `on_piece` lets a test act mid-answer."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.grown = ""
        self.on_piece: Any = None

    def chat_cleared(self) -> None:
        self.events.append(("cleared", None))

    def message_shown(self, message: Message, author: str) -> None:
        self.events.append(("shown", (message.role, message.text, author)))

    def answer_started(self, message_id: int, author: str) -> None:
        self.events.append(("started", author))

    def messages_removed(self, from_id: int) -> None:
        self.events.append(("removed", from_id))

    def emergency_noticed(self, message_id: int, notice: dict[str, Any]) -> None:
        self.events.append(("emergency", (notice["matched_phrase"], self.grown)))  # what had streamed by then

    def answer_grew(self, answer: str, reasoning: str, reasoning_tokens: int) -> None:
        self.grown += answer
        if self.on_piece is not None:
            self.on_piece()

    def answer_ended(self, message_id: int, meta: str) -> None:
        self.events.append(("ended", meta))

    def context_trimmed(self, dropped_turns: int) -> None:
        self.events.append(("trimmed", dropped_turns))

    def busy_changed(self, busy: bool) -> None:
        self.events.append(("busy", busy))

    def problem(self, title: str, message: str) -> None:
        self.events.append(("problem", (title, message)))

    def answer_done(self, stats: AnswerStats | None) -> None:
        self.events.append(("done", stats))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


class ManualClock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def db(tmp_path: Path) -> Iterator[History]:
    with History(tmp_path / "history.sqlite3") as opened:
        yield opened


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    made: list[Runtime] = []
    yield made
    for runtime in made:
        runtime.close()


def make_session(db: History, gemma_270m: Path, runtimes: list[Runtime], engine: Any = None,
                 settings: dict | None = None, clock: Any = None) -> tuple[ChatSession, Recorder]:
    engine = engine or ScriptedEngine()
    n_ctx = engine.n_ctx if isinstance(engine, ScriptedEngine) else 1024
    runtime = Runtime(lambda: engine)
    runtimes.append(runtime)
    outcome: list[Any] = []
    runtime.load(ModelRequest(gemma_270m, (), LoadParams(n_ctx=n_ctx, gpu="cpu")), outcome.append).wait()
    assert isinstance(outcome[-1], ModelReady), outcome
    session = ChatSession(db, RuntimeBackend(runtime, lambda event: session.handle(event), wait=True),
                          **({"clock": clock} if clock else {}))
    session.listener = recorder = Recorder()
    session.use_model(read_model_info(gemma_270m), "f" * 64)
    session.use_settings(ChatSettings.from_dict({"preset": "medical-cot-270m", "max_tokens": 256, **(settings or {})}),
                         LoadSettings())
    return session, recorder


def test_send_streams_the_answer_split_and_saves_it(db: History, gemma_270m: Path, runtimes: list[Runtime]) -> None:
    session, seen = make_session(db, gemma_270m, runtimes)
    assert session.send("  Fever, cough and aching muscles in winter: what is it?  ")
    assert not session.busy and session.answer is None
    [chat] = db.chats()
    assert chat.id == session.chat_id and chat.title == chat_title("Fever, cough and aching muscles in winter: what is it?")
    user, model = db.messages(chat.id)
    assert (user.role, user.text) == ("user", "Fever, cough and aching muscles in winter: what is it?")
    assert (model.text, model.reasoning, model.complete) == (ANSWER_TEXT, REASONING_TEXT, True)
    assert model.meta["reasoning_tokens"] == reasoning_pieces(THINK_SCRIPT)
    assert model.meta["stats"]["finish_reason"] == "stop" and model.meta["model"]["sha256"] == "f" * 64
    assert model.meta["settings"]["preset"] == "medical-cot-270m"
    assert seen.grown == ANSWER_TEXT
    assert seen.kinds() == ["shown", "started", "busy", "trimmed", "ended", "busy", "done"]
    assert seen.events[0] == ("shown", ("user", user.text, "You"))
    assert seen.events[-1][1] is session.last_stats and session.last_stats.generated_tokens == len(THINK_SCRIPT)


def test_nothing_is_sent_without_text_a_model_or_while_busy(db: History, gemma_270m: Path, runtimes: list[Runtime]) -> None:
    session, seen = make_session(db, gemma_270m, runtimes)
    assert not session.send("   ")
    session.model = None
    assert not session.send("Hello")
    assert db.chats() == [] and seen.events == []


def test_stop_keeps_the_partial_answer_marked_incomplete(db: History, gemma_270m: Path, runtimes: list[Runtime]) -> None:
    session, seen = make_session(db, gemma_270m, runtimes, engine=ScriptedEngine(script=[f"w{i} " for i in range(50)]))
    seen.on_piece = lambda: session.stop() if seen.grown.count("w") == 5 else None
    assert session.send("Explain the heart.")
    model = db.messages(session.chat_id)[-1]
    assert not model.complete and model.text == "w0 w1 w2 w3 w4 "
    assert session.last_stats.finish_reason == "cancelled"
    assert ("ended", meta_text(model.meta, False, "model")) in seen.events
    assert meta_text(model.meta, False, "model").startswith("Stopped — partial answer")


def test_regenerate_replaces_the_last_answer(db: History, gemma_270m: Path, runtimes: list[Runtime]) -> None:
    session, seen = make_session(db, gemma_270m, runtimes)
    session.send("Fever?")
    first = db.messages(session.chat_id)[-1]
    assert session.regenerate(first.id)
    messages = db.messages(session.chat_id)
    assert [m.role for m in messages] == ["user", "model"] and messages[1].complete
    assert messages[1].created_at > first.created_at  # a new answer (SQLite may reuse the id)
    assert ("removed", first.id) in seen.events and seen.kinds().count("started") == 2


def test_edit_and_resend_replaces_the_last_question(db: History, gemma_270m: Path, runtimes: list[Runtime]) -> None:
    session, seen = make_session(db, gemma_270m, runtimes)
    session.send("What is a fever?")
    question = db.messages(session.chat_id)[0]
    assert session.start_edit(question.id) == "What is a fever?"
    assert session.send("What is a high fever in adults?")
    messages = db.messages(session.chat_id)
    assert [(m.role, m.text) for m in messages][0] == ("user", "What is a high fever in adults?") and len(messages) == 2
    assert session.editing_id is None and ("removed", question.id) in seen.events


def test_context_overflow_leaves_out_early_turns_and_says_so(db: History, gemma_270m: Path, runtimes: list[Runtime]) -> None:
    session, seen = make_session(db, gemma_270m, runtimes, engine=ScriptedEngine(script=["Summary."], n_ctx=512),
                                 settings={"preset": "gemma-chat", "max_tokens": 16})
    chat = long_case_chat(db)
    session.open_chat(chat)
    assert seen.kinds()[:1] == ["cleared"] and seen.kinds().count("shown") == 8
    session.send("Summarise the case.")
    dropped = db.messages(chat)[-1].meta["dropped_turns"]
    assert dropped >= 2 and dropped % 2 == 0
    assert ("trimmed", dropped) in seen.events
    assert session.last_stats.prompt_tokens + 16 <= 512


def test_deleting_the_chat_mid_answer_discards_the_answer(db: History, gemma_270m: Path, runtimes: list[Runtime]) -> None:
    session, seen = make_session(db, gemma_270m, runtimes, engine=ScriptedEngine(script=[f"w{i} " for i in range(50)]))
    seen.on_piece = lambda: session.delete_chat(session.chat_id) if seen.grown == "w0 w1 " else None
    session.send("Is zebracornitis contagious?")
    assert db.chats() == [] and session.chat_id is None and not session.busy
    assert seen.kinds()[-1] == "done" and "problem" not in seen.kinds()


def test_an_answer_in_another_chat_goes_on_saving_unseen(db: History, gemma_270m: Path, runtimes: list[Runtime]) -> None:
    session, seen = make_session(db, gemma_270m, runtimes, engine=ScriptedEngine(script=[f"w{i} " for i in range(20)]))
    other = db.create_chat("Other")
    seen.on_piece = lambda: session.open_chat(other) if seen.grown == "w0 " else None
    session.send("Long question")
    first = [c for c in db.chats() if c.id != other][0]
    assert db.messages(first.id)[-1].text == "".join(f"w{i} " for i in range(20))
    assert seen.grown == "w0 " and "ended" not in seen.kinds()  # nothing more was shown


def test_a_failed_answer_is_saved_with_the_reason_and_reported(db: History, gemma_270m: Path, runtimes: list[Runtime]) -> None:
    session, seen = make_session(db, gemma_270m, runtimes, engine=ScriptedEngine(script=["x"], n_ctx=64),
                                 settings={"preset": "gemma-chat", "max_tokens": 60})
    session.send("A question far too long for a context of sixty-four tokens " * 4)
    model = db.messages(session.chat_id)[-1]
    assert not model.complete and "too long for the context" in model.meta["error"]
    [(title, message)] = [value for kind, value in seen.events if kind == "problem"]
    assert title == "The answer failed" and message == model.meta["error"]
    assert seen.events[-2] == ("done", None) and seen.kinds()[-1] == "problem" and not session.busy


def test_titles_and_meta_lines() -> None:
    assert chat_title("  a\nb  ") == "a b"
    assert len(chat_title("x" * 100)) == 48 and chat_title("x" * 100).endswith("…")
    stats = {"generated_tokens": 12, "decode_tok_per_s": 30.0, "finish_reason": "length"}
    assert meta_text({"stats": stats}, True, "model") == "12 tokens · 30.0 tok/s · cut at max tokens"
    assert meta_text({"error": "boom", "unterminated_reasoning": True}, False, "model") == (
        "Failed: boom · reasoning did not finish")
    assert meta_text({"stats": "garbage"}, True, "model") == "" and meta_text({}, True, "user") == ""


@pytest.mark.slow
def test_the_real_model_answers_through_the_session(db: History, gemma_270m: Path, runtimes: list[Runtime]) -> None:
    session, seen = make_session(db, gemma_270m, runtimes, engine=Engine(),
                                 settings={"preset": "gemma-chat", "temperature": 0.0, "max_tokens": 16})
    session.send("What are common symptoms of anemia?")
    session.send("And its causes?")
    answers = [m for m in db.messages(session.chat_id) if m.role == "model"]
    assert len(answers) == 2 and all(a.text.strip() and a.complete for a in answers)
    assert session.last_stats.reused_tokens > 0  # the second turn found the first in the KV cache


def test_the_chat_core_imports_no_qt_and_no_llama() -> None:
    code = ("import sys; import medgemma_desktop.session, medgemma_desktop.library, medgemma_desktop.settings, "
            "medgemma_desktop.generation, medgemma_desktop.runtime, medgemma_desktop.resolve; "
            "print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] in "
            "('PySide6', 'shiboken6', 'torch', 'llama_cpp')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stdout


EMERGENCY = "A 58-year-old with crushing chest pain radiating to the left arm, sweating. What should be done first?"


def test_the_emergency_notice_comes_first_is_saved_kept_on_regenerate_and_exported(
        db: History, gemma_270m: Path, runtimes: list[Runtime]) -> None:
    session, seen = make_session(db, gemma_270m, runtimes, engine=Engine(),
                                 settings={"preset": "gemma-chat", "temperature": 0.0, "max_tokens": 12})
    session.send(EMERGENCY)
    assert ("emergency", ("chest pain", "")) in seen.events  # told before the first token
    answer = db.messages(session.chat_id)[-1]
    assert answer.meta["emergency_notice"]["text"] == "This may be an emergency: call your local emergency number now."
    assert session.regenerate(answer.id)
    assert [kind for kind, _ in seen.events].count("emergency") == 2
    again = db.messages(session.chat_id)[-1]
    assert again.meta["emergency_notice"]["matched_phrase"] == "chest pain"
    [summary] = db.chats()
    messages = db.messages(session.chat_id)
    model, settings = again.meta["model"], again.meta["settings"]
    record = ModelRecord.from_dict(model)
    assert "This may be an emergency" in chat_to_markdown(summary, messages, record, settings)
    assert "emergency_notice" in chat_to_json(summary, messages, record, settings)
