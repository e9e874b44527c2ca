"""SIGKILL a process in the middle of a streaming answer: at most the last second is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medgemma_desktop.history import History

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

REASONING_TOKENS = 40
TOKEN_PERIOD_S = 0.02
KILL_AFTER_S = 2.5
INTERVAL_S = 1.0
# The writer saves on the first token after a second has passed, so the newest save can be up
# to a token period (plus the save itself and a scheduling hiccup) older than a second.
SLACK_S = 0.25

# The child streams like the chat worker does: tokens into a StreamingMessageWriter, reasoning
# first, then the answer. After each append it reports how many tokens it has appended and when
# (time.monotonic is one clock for every process on the machine).
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from medgemma_desktop.history import History, StreamingMessageWriter

    history = History(Path(sys.argv[1]))
    message_id = int(sys.argv[2])
    writer = StreamingMessageWriter(history, message_id, interval={interval})
    print("ready", time.monotonic(), flush=True)
    i = 0
    while True:
        if i < {reasoning_tokens}:
            writer.append(reasoning=f"r{{i}} ")
        else:
            writer.append(answer=f"a{{i}} ")
        i += 1
        print(i, time.monotonic(), flush=True)
        time.sleep({period})
    """
).format(interval=INTERVAL_S, reasoning_tokens=REASONING_TOKENS, period=TOKEN_PERIOD_S)


def token_text(i: int) -> tuple[str, str]:
    """(reasoning, answer) piece of token i, as the child appends it."""
    return (f"r{i} ", "") if i < REASONING_TOKENS else ("", f"a{i} ")


def saved_token_count(reasoning: str, answer: str) -> int:
    """How many of the child's tokens the saved text holds; fails if it is not an exact prefix."""
    n = 0
    expected_reasoning = expected_answer = ""
    while (expected_reasoning, expected_answer) != (reasoning, answer):
        r, a = token_text(n)
        expected_reasoning += r
        expected_answer += a
        n += 1
        assert len(expected_reasoning) <= len(reasoning) and len(expected_answer) <= len(answer), (
            f"saved text is not what the child streamed: {reasoning!r} / {answer!r}"
        )
    return n


def test_sigkill_mid_answer_loses_at_most_the_last_second(tmp_path: Path) -> None:
    db_path = tmp_path / "history.sqlite3"
    with History(db_path) as history:
        chat = history.create_chat("crash")
        history.add_message(chat, "user", "Explain the causes of chest pain.")
        message_id = history.add_message(chat, "model", "", complete=False)

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path), str(message_id)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline().split()[0] == "ready"
        time.sleep(KILL_AFTER_S)
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    reports = [(int(n), float(t)) for n, t in (line.split() for line in child.stdout.read().splitlines())]
    child.stdout.close()
    assert reports, "the child never appended a token"
    appended = reports[-1][0]

    with History(db_path) as history:
        saved = history.message(message_id)
    assert not saved.complete
    count = saved_token_count(saved.reasoning, saved.text)

    assert count <= appended
    must_have = max((n for n, t in reports if t <= killed_at - INTERVAL_S - SLACK_S), default=0)
    assert count >= must_have, f"lost more than a second: saved {count} of {appended} tokens, needed {must_have}"
    # The run must actually have crossed the reasoning/answer boundary and saved more than once.
    assert appended > REASONING_TOKENS
    assert count > 0
