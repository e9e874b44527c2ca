"""The window's local server: started and stopped from its panel, answering a real client on
loopback with the window's model, in turn with the window's own questions, remembered across starts."""

from __future__ import annotations

import socket
import threading

import httpx
import openai
import pytest

from medgemma_desktop.history import History
from tests.support.window_steps import ANSWER_TIMEOUT_MS, FAST_SETTINGS, send

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120,
                         http_client=httpx.Client(trust_env=False))


def test_the_panel_starts_a_server_that_answers_beside_the_window(qtbot, make_window, history: History) -> None:
    window = make_window(settings=FAST_SETTINGS)
    dialog = window.server.dialog
    window.server.action.trigger()
    assert dialog.isVisible() and dialog.shown_state() == "Stopped."
    port = free_port()
    dialog.port.setValue(port)
    dialog.toggle.click()
    assert dialog.shown_state().startswith(f"Running on http://127.0.0.1:{port}/v1 · no key · 0 requests")
    answers: list[str] = []

    def ask() -> None:  # on a thread of its own: the window's event loop runs on meanwhile
        result = client(f"http://127.0.0.1:{port}").chat.completions.create(
            model=window.server.service.served.id, max_tokens=8, temperature=0,  # type: ignore[union-attr]
            messages=[{"role": "user", "content": "Name one symptom of anaemia."}])
        answers.append(result.choices[0].message.content or "")

    asker = threading.Thread(target=ask)
    asker.start()
    send(qtbot, window, "What is a fever?")  # the window's own question, in turn on the one model
    qtbot.waitUntil(lambda: "1 requests served" in dialog.shown_state(), timeout=ANSWER_TIMEOUT_MS)
    asker.join(60)
    assert answers and answers[0].strip()
    assert window.chat_view.cards()[-1].answer().strip()
    assert history.chats()[0].title == "What is a fever?" and len(history.chats()) == 1  # the server kept nothing

    dialog.toggle.click()
    assert dialog.shown_state() == "Stopped." and dialog.toggle.text() == "Start"
    qtbot.waitUntil(lambda: not _listening(port), timeout=10_000)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_key_is_generated_required_and_the_server_comes_back_on_at_the_next_start(
        qtbot, make_window, history: History) -> None:
    window = make_window(settings=FAST_SETTINGS)
    dialog = window.server.dialog
    port = free_port()
    dialog.port.setValue(port)
    dialog.generate.click()
    key = dialog.key.text()
    assert dialog.require_key.isChecked() and key.startswith("mge-") and len(key) > 40
    dialog.copy.click()
    assert window.server.dialog.key.text() == key
    dialog.toggle.click()
    assert "key required" in dialog.shown_state()
    model = window.server.service.served.id  # type: ignore[union-attr]
    with pytest.raises(openai.AuthenticationError):
        client(f"http://127.0.0.1:{port}").models.list()
    assert model in [m.id for m in client(f"http://127.0.0.1:{port}", key).models.list()]
    window.shutdown()  # closing the window ends the server, which stays "on" for the next start
    qtbot.waitUntil(lambda: not _listening(port), timeout=10_000)

    again = make_window(settings=FAST_SETTINGS, db=history)
    assert again.server.running and again.server.url == f"http://127.0.0.1:{port}"
    assert model in [m.id for m in client(again.server.url, key).models.list()]


def test_an_open_address_without_a_key_is_refused_in_the_panel(qtbot, make_window) -> None:
    window = make_window(load=False)
    dialog = window.server.dialog
    dialog.host.setText("0.0.0.0")
    dialog.require_key.setChecked(False)
    dialog.toggle.click()
    assert not window.server.running and "without an API key" in dialog.shown_state()
