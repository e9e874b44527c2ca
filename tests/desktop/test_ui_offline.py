"""No network: a whole session (open, load, chat, export) with every socket call made to fail."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

import medgemma_desktop
from medgemma_desktop.history import History
from tests.support.window_steps import FAST_SETTINGS, send

pytestmark = pytest.mark.slow


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every connection or name lookup tried; each one raises as it would with the network off."""
    tried: list[str] = []

    def refuse(name: str):
        def blocked(*args, **kwargs):
            tried.append(f"{name}{args[1:] if name.startswith('socket.') else args}")
            raise OSError(f"network blocked by the test: {name}")
        return blocked

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    return tried


def test_a_whole_session_opens_no_connection(qtbot, attempts, make_window, history: History,
                                             tmp_path: Path, gemma_270m: Path) -> None:
    window = make_window(settings=FAST_SETTINGS)
    send(qtbot, window, "What is hypertension?")
    send(qtbot, window, "How is it treated?")
    assert window.chats.export_chat(tmp_path / "chat.md", "markdown")
    assert window.chats.export_chat(tmp_path / "chat.json", "json")
    window.close()
    reopened = make_window(settings=FAST_SETTINGS)
    reopened.chats.open_chat(history.chats()[0].id)

    assert attempts == []
    assert window.errors == [] and reopened.errors == []
    assert len(reopened.chat_view.cards()) == 4
    assert json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))


def test_the_app_has_no_network_code() -> None:
    package = Path(medgemma_desktop.__file__).parent
    network = re.compile(r"^\s*(import|from)\s+(socket|urllib|http|requests|httpx|aiohttp|huggingface_hub)\b"
                         r"|QtNetwork|QNetworkAccessManager|QWebEngine", re.MULTILINE)
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py") if network.search(p.read_text())]
    # The one socket the app may own: the local server's listening one, bound where the user said.
    assert offenders == ["server/serve.py"]
    listener = (package / "server" / "serve.py").read_text()
    assert not re.search(r"\.connect(_ex)?\(|create_connection|urlopen", listener)
