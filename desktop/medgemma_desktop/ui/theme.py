"""The app's look: a calm dark theme in the manner of local-LLM desktop apps, one accent colour."""

ACCENT = "#3fb8a5"

STYLESHEET = f"""
QMainWindow, QWidget#center, QWidget#chatContainer {{ background: #16181d; color: #e6e8ec; }}
QWidget {{ font-size: 13px; }}
QLabel {{ color: #e6e8ec; }}
QDialog, QMessageBox, QInputDialog {{ background: #1b1e24; color: #e6e8ec; }}
QDialog QLabel, QMessageBox QLabel, QCheckBox {{ color: #e6e8ec; }}
QTableWidget, QHeaderView::section {{ background: #1d2027; color: #e6e8ec; gridline-color: #2e333d; border: none; }}
QMenuBar {{ background: #0f1114; color: #cfd4dc; border-bottom: 1px solid #23272f; }}
QMenuBar::item {{ background: transparent; padding: 4px 10px; }}
QMenuBar::item:selected {{ background: #23303a; color: #ffffff; }}
QMenu {{ background: #1b1e24; color: #e6e8ec; border: 1px solid #2e333d; }}
QMenu::item:selected {{ background: #23303a; }}
QToolTip {{ background: #262a33; color: #e6e8ec; border: 1px solid #3a404c; padding: 4px; }}

QWidget#sidebar {{ background: #0f1114; border-right: 1px solid #23272f; }}
QLabel#brand {{ font-size: 17px; color: #f2f4f7; padding: 2px 4px 8px 4px; }}
QPushButton#newChat {{ background: {ACCENT}; color: #0b1412; font-weight: 600; border: none;
    border-radius: 8px; padding: 8px; text-align: left; }}
QPushButton#newChat:hover {{ background: #58c9b7; }}
QListWidget#chatList {{ background: transparent; border: none; color: #cfd4dc; outline: none; }}
QListWidget#chatList::item {{ padding: 8px 8px; border-radius: 6px; margin: 1px 0; }}
QListWidget#chatList::item:hover {{ background: #1b1f26; }}
QListWidget#chatList::item:selected {{ background: #23303a; color: #ffffff; }}
QListWidget#collections {{ background: #181b21; border: 1px solid #2a2f38; border-radius: 6px; color: #cfd4dc; }}
QListWidget#collections::item {{ padding: 6px; }}
QListWidget#collections::item:selected {{ background: #23303a; color: #ffffff; }}
QLabel#citation {{ color: #b9c0cb; font-size: 12px; }}

QLineEdit, QPlainTextEdit, QSpinBox, QDoubleSpinBox, QComboBox {{
    background: #1d2027; color: #e6e8ec; border: 1px solid #2e333d; border-radius: 7px; padding: 5px 8px;
    selection-background-color: #2f6f66; }}
QLineEdit:focus, QPlainTextEdit:focus, QSpinBox:focus, QDoubleSpinBox:focus, QComboBox:focus {{ border-color: {ACCENT}; }}
QComboBox QAbstractItemView {{ background: #1d2027; color: #e6e8ec; selection-background-color: #23303a; }}
QAbstractSpinBox::up-button, QAbstractSpinBox::down-button {{ width: 0; border: none; }}
QSpinBox:disabled, QDoubleSpinBox:disabled, QComboBox:disabled, QCheckBox:disabled {{ color: #5f6672; }}

QPushButton {{ background: #242832; color: #e6e8ec; border: 1px solid #323846; border-radius: 7px; padding: 6px 12px; }}
QPushButton:hover {{ background: #2b303b; }}
QPushButton:disabled {{ color: #5f6672; border-color: #272b33; }}
QPushButton#danger:hover {{ background: #4a2327; border-color: #6b2d33; }}
QPushButton#sendButton {{ background: {ACCENT}; color: #0b1412; font-weight: 600; border: none; padding: 10px 16px; }}
QPushButton#sendButton:hover {{ background: #58c9b7; }}
QPushButton#sendButton[stop="true"] {{ background: #d9685f; color: #1a0b0a; }}

QWidget#modelBar {{ background: #13151a; border-bottom: 1px solid #23272f; }}
QComboBox#modelPicker {{ font-weight: 600; padding: 6px 10px; }}
QLabel#modelDetails {{ color: #9aa3af; }}

QScrollArea#chatView {{ background: #16181d; }}
QFrame#userCard {{ background: #22324a; border: 1px solid #2d4260; border-radius: 12px; margin-left: 120px; }}
QFrame#modelCard {{ background: #1d2027; border: 1px solid #2a2f38; border-radius: 12px; margin-right: 60px; }}
QFrame#userCard QTextBrowser, QFrame#modelCard QTextBrowser {{ background: transparent; color: #e9ecf1; font-size: 14px; }}
QLabel#author {{ color: {ACCENT}; font-weight: 600; font-size: 12px; }}
QFrame#userCard QLabel#author {{ color: #9cc0ff; }}
QLabel#meta {{ color: #7f8895; font-size: 11px; }}
QToolButton#cardAction {{ background: transparent; color: #8a93a0; border: none; padding: 2px 6px; font-size: 12px; }}
QToolButton#cardAction:hover {{ color: #e6e8ec; background: #2a2f38; border-radius: 5px; }}
QFrame#reasoningBlock {{ background: #181b21; border: 1px solid #2a2f38; border-left: 3px solid #c9a24a; border-radius: 8px; }}
QToolButton#reasoningToggle {{ background: transparent; color: #d8b866; border: none; font-weight: 600; }}
QLabel#reasoningCaption {{ color: #a08a55; font-size: 11px; font-style: italic; }}
QFrame#reasoningBlock QTextBrowser {{ color: #aeb5bf; font-size: 13px; }}
QLabel#droppedNotice {{ background: #2b2417; color: #e7c77c; border: 1px solid #4d3f22; border-radius: 8px; padding: 8px 10px; }}
QLabel#emptyHint {{ color: #6d7582; font-size: 15px; padding: 80px 40px; }}

QWidget#composer {{ background: #16181d; }}
QLabel#noticeLine {{ color: #c9a24a; font-size: 12px; }}
QLabel#editingBanner {{ color: #9cc0ff; font-size: 12px; }}
QPlainTextEdit#messageInput {{ font-size: 14px; border-radius: 10px; padding: 8px 10px; }}

QScrollArea#settingsPanel, QWidget#settingsBody {{ background: #13151a; }}
QScrollArea#settingsPanel {{ border-left: 1px solid #23272f; }}
QGroupBox {{ color: #cfd4dc; border: 1px solid #262b34; border-radius: 9px; margin-top: 14px; padding: 10px 8px 8px 8px;
    font-weight: 600; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 10px; padding: 0 4px; color: #9aa3af; }}
QLabel#hint {{ color: #7f8895; font-size: 11px; font-weight: normal; }}
QCheckBox {{ color: #d6dbe2; spacing: 8px; font-weight: normal; }}

QStatusBar {{ background: #0f1114; color: #9aa3af; border-top: 1px solid #23272f; }}
QStatusBar QLabel {{ color: #9aa3af; padding: 0 8px; }}
QProgressBar {{ background: #1d2027; border: 1px solid #2e333d; border-radius: 4px; height: 8px; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 4px; }}
QSplitter::handle {{ background: #23272f; width: 1px; }}
QScrollBar:vertical {{ background: transparent; width: 10px; }}
QScrollBar::handle:vertical {{ background: #2c313a; border-radius: 5px; min-height: 30px; }}
QScrollBar::add-line:vertical, QScrollBar::sub-line:vertical {{ height: 0; }}
"""
