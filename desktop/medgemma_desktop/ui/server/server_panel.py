"""The window's local server: a Server menu and a small non-modal panel to start and stop it,
with its address, the requests served and a key to generate and copy. Remembered across starts.

The server (`server.serve.ServerThread`) runs on its own thread and event loop on the window's
runtime, so the window's questions and the server's requests take turns on the one model, and
nothing here waits on the network stack: starting binds one socket, stopping only asks.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from medgemma_models.errors import MedGemmaError

from ...history import History
from ...library import ModelEntry, ModelLibrary
from ...runtime import Runtime
from ...server.config import DEFAULT_HOST, DEFAULT_PORT, ServerConfig, new_api_key
from ..models.settings_panel import SettingsPanel

if TYPE_CHECKING:
    from ...server.serve import ServerThread
    from ...server.service import ChatService

log = logging.getLogger(__name__)

SERVER_SETTING = "local_server"  # {"on", "host", "port", "require_key", "api_key"}


class ServerPanel(QObject):
    """Owns the server beside the window; `dialog` is its panel once opened."""

    served_count = Signal(int)  # emitted on the server's thread; queued to the GUI thread
    state_changed = Signal()

    def __init__(self, window: QMainWindow, runtime: Runtime, library: ModelLibrary, history: History,
                 settings_panel: SettingsPanel) -> None:
        super().__init__(window)
        self._window, self.runtime, self.library, self.history = window, runtime, library, history
        self.settings_panel = settings_panel
        self.server: ServerThread | None = None
        self.service: ChatService | None = None  # the server stack is imported when first started
        self.error = ""
        self.served = 0
        self.dialog = ServerDialog(self, window)
        menu = window.menuBar().addMenu("&Server")
        self.action = menu.addAction("&Local server…")
        self.action.setObjectName("serverAction")
        self.action.triggered.connect(self.dialog.show)
        self.served_count.connect(self._on_served)
        settings_panel.changed.connect(self.model_changed)
        # A stopped server's thread ends by itself; the panel looks now and then rather than wait.
        self._watch = QTimer(self)
        self._watch.setInterval(500)
        self._watch.timeout.connect(self._check_stopped)

    # -- remembered state ---------------------------------------------------------------------------

    def stored(self) -> dict[str, Any]:
        value = self.history.get_setting(SERVER_SETTING, {})
        return value if isinstance(value, dict) else {}

    def remember(self, **changes: Any) -> None:
        self.history.set_setting(SERVER_SETTING, {**self.stored(), **changes})

    def config(self) -> ServerConfig:
        stored = self.stored()
        host = stored.get("host") if isinstance(stored.get("host"), str) else DEFAULT_HOST
        port = stored.get("port") if isinstance(stored.get("port"), int) else DEFAULT_PORT
        key = stored.get("api_key") if stored.get("require_key") and isinstance(stored.get("api_key"), str) else None
        return ServerConfig(host=host, port=port, api_key=key)

    def restore(self) -> None:
        """At start: the server comes back on if it was on when the window closed."""
        if self.stored().get("on"):
            self.start()

    # -- start and stop -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.server is not None

    @property
    def url(self) -> str:
        return self.server.url if self.server is not None else ""

    @Slot()
    def start(self) -> bool:
        if self.server is not None:
            return True
        from ...server.serve import ServerThread
        from ...server.service import ChatService

        config = self.config()
        try:
            config.check()
            service = ChatService(self.runtime, self.library, config, switch_models=False)
            service.on_request_done = self.served_count.emit
            self.service = service
            self.model_changed()
            self.server = ServerThread(service)
        except MedGemmaError as exc:
            self.service, self.error = None, str(exc)
            self.remember(on=False)
            self.state_changed.emit()
            return False
        self.error = ""
        self.remember(on=True)
        self._watch.start()
        log.info("local server on %s", self.server.url)
        self.state_changed.emit()
        return True

    @Slot()
    def stop(self) -> None:
        """Asks the server to end (its open answers stop at the next token); the window's own go on."""
        if self.server is not None:
            self.server.stop(timeout=0)
        self.server = None
        self.remember(on=False)
        self.state_changed.emit()

    def shutdown(self) -> None:
        """The window closes: the server ends with it, remembered as it was."""
        if self.server is not None:
            self.server.stop(timeout=2)
            self.server = None

    @Slot()
    def _check_stopped(self) -> None:
        if self.server is not None and not self.server.running:  # it died (the port was taken away, say)
            self.server, self.error = None, "the server stopped"
            self.state_changed.emit()
        if self.server is None:
            self._watch.stop()

    @Slot(int)
    def _on_served(self, count: int) -> None:
        self.served = count
        self.state_changed.emit()

    @Slot()
    def model_changed(self) -> None:
        """The window loaded a model or changed its settings: the server answers the same way."""
        current = self.library.current
        if self.service is None or current is None or self.library.loading:
            return
        entry = ModelEntry(None if current.embedded else current.path, current.title or current.info.name, "",
                           current.adapters)
        self.service.use(entry, current.loaded, self.settings_panel.chat_settings())


class ServerDialog(QDialog):
    """The panel: address, key, Start/Stop, and what the server is doing."""

    def __init__(self, panel: ServerPanel, window: QMainWindow) -> None:
        super().__init__(window)
        self.panel = panel
        self.setObjectName("serverDialog")
        self.setWindowTitle("Local server")
        stored = panel.config()
        self.host = QLineEdit(stored.host, self)
        self.port = QSpinBox(self)
        self.port.setRange(1, 65535)
        self.port.setValue(stored.port or DEFAULT_PORT)
        self.require_key = QCheckBox("Require an API key", self)
        self.require_key.setChecked(stored.api_key is not None)
        self.key = QLineEdit(panel.stored().get("api_key") or "", self)
        self.key.setReadOnly(True)
        self.key.setPlaceholderText("Generate a key")
        self.generate = QPushButton("Generate", self)
        self.copy = QPushButton("Copy", self)
        self.toggle = QPushButton("Start", self)
        self.toggle.setObjectName("serverToggle")
        self.state = QLabel(self)
        self.state.setObjectName("serverState")
        self.state.setWordWrap(True)
        note = QLabel("OpenAI-compatible: point a client at the address below + /v1. Only this computer can reach "
                      "it on 127.0.0.1; any other address needs a key. Conversations are not saved.", self)
        note.setWordWrap(True)
        keys = QHBoxLayout()
        for widget in (self.key, self.generate, self.copy):
            keys.addWidget(widget)
        form = QFormLayout()
        form.addRow("Address", self.host)
        form.addRow("Port", self.port)
        form.addRow(self.require_key)
        form.addRow("Key", keys)
        layout = QVBoxLayout(self)
        layout.addWidget(note)
        layout.addLayout(form)
        layout.addWidget(self.state)
        layout.addWidget(self.toggle)
        self.generate.clicked.connect(self._generate)
        self.copy.clicked.connect(self._copy)
        self.toggle.clicked.connect(self._toggle)
        panel.state_changed.connect(self.show_state)
        self.show_state()

    def shown_state(self) -> str:
        return self.state.text()

    @Slot()
    def show_state(self) -> None:
        running = self.panel.running
        self.toggle.setText("Stop" if running else "Start")
        for widget in (self.host, self.port, self.require_key, self.generate):
            widget.setEnabled(not running)
        if running:
            key = "key required" if self.panel.config().api_key else "no key"
            self.state.setText(f"Running on {self.panel.url}/v1 · {key} · {self.panel.served} requests served")
        else:
            self.state.setText(f"Stopped. {self.panel.error}".strip())

    @Slot()
    def _generate(self) -> None:
        self.key.setText(new_api_key())
        self.require_key.setChecked(True)

    @Slot()
    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(self.key.text())

    @Slot()
    def _toggle(self) -> None:
        if self.panel.running:
            self.panel.stop()
            return
        require = self.require_key.isChecked()
        if require and not self.key.text():
            self._generate()
        self.panel.remember(host=self.host.text().strip() or DEFAULT_HOST, port=self.port.value(),
                            require_key=require, api_key=self.key.text() or None)
        self.panel.start()
