"""Chats written straight into a history, for tests that open an existing conversation."""

from __future__ import annotations

from medgemma_desktop.history import History
from medgemma_models.reasoning import ReasoningSplitter

CASE_NOTE = "The patient reports intermittent chest discomfort after climbing stairs. " * 6


def long_case_chat(history: History, turns: int = 4) -> int:
    """A chat of `turns` long question/answer pairs: more than a 512-token context holds."""
    chat = history.create_chat("Long case")
    for turn in range(turns):
        history.add_message(chat, "user", f"Case note {turn}: {CASE_NOTE}")
        history.add_message(chat, "model", f"Noted {turn}: {CASE_NOTE}")
    return chat


def split_whole(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a whole message, as the app's streaming splitter splits it."""
    splitter = ReasoningSplitter()
    segments = splitter.feed(text) + splitter.finish()
    return ("".join(s.text for s in segments if s.kind == "reasoning"),
            "".join(s.text for s in segments if s.kind == "answer"))
