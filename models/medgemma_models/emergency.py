"""The emergency notice: a question is checked against a list of red flags before any model answers.

The check is plain word matching on a shipped list (data/red_flags.json), so no model can talk it away.
A `red_flags.json` in the user's data folder replaces the shipped list.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from medgemma_models import store

NOTICE_TEXT = "This may be an emergency: call your local emergency number now."
OVERRIDE_NAME = "red_flags.json"
# Words that, shortly before a phrase in the same clause, mean the phrase is denied ("no chest pain").
NEGATIONS = frozenset({"no", "not", "denies", "denied", "deny", "without", "never", "none", "isn't", "doesn't", "don't"})
NEGATION_WINDOW = 4
# Clause breaks end a negation's reach ("no fever but chest pain to the arm").
CLAUSE_BREAKS = frozenset({"but", "however", "although", "yet", "."})
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|\.|[,;:!?]")


class RedFlagListError(ValueError):
    """A red-flag list file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class EmergencyNotice:
    text: str
    matched_phrase: str
    red_flag: str
    crisis_line: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


@dataclass(frozen=True)
class RedFlag:
    id: str
    name: str
    source: str
    # Every group must match (in any order); within a group any one phrase does.
    groups: tuple[tuple[tuple[str, ...], ...], ...]
    phrases: tuple[str, ...]
    crisis_line: str | None
    examples_positive: tuple[str, ...]
    examples_negative: tuple[str, ...]


def _stem(word: str) -> str:
    """A crude stem so that variants meet: 'sweating', 'sweats' and 'sweat' all become 'sweat'."""
    word = word.replace("'", "")
    for suffix in ("ing", "ed", "es", "s", "y"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _tokens(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'")
    return [tok if tok in NEGATIONS or not tok[0].isalnum() else _stem(tok) for tok in _TOKEN.findall(text)]


def _parse(entry: dict, origin: Path | str) -> RedFlag:
    try:
        groups_raw = entry["patterns"]
        groups = tuple(tuple(tuple(_tokens(p)) for p in group) for group in groups_raw)
        if not groups or any(not g or any(not p for p in g) for g in groups):
            raise ValueError("empty pattern")
        return RedFlag(
            id=str(entry["id"]),
            name=str(entry["name"]),
            source=str(entry["source"]),
            groups=groups,
            phrases=tuple(str(p) for p in groups_raw[0]),
            crisis_line=entry.get("crisis_line"),
            examples_positive=tuple(entry.get("examples_positive", ())),
            examples_negative=tuple(entry.get("examples_negative", ())),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RedFlagListError(f"{origin}: bad red-flag entry {entry!r:.80}: {exc}") from exc


def parse_list(text: str, origin: Path | str) -> tuple[RedFlag, ...]:
    try:
        data = json.loads(text)
        entries = data["red_flags"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RedFlagListError(f"{origin}: not a red-flag list ({exc})") from exc
    if not isinstance(entries, list) or not entries:
        raise RedFlagListError(f"{origin}: 'red_flags' must be a non-empty list")
    return tuple(_parse(entry, origin) for entry in entries)


@functools.cache  # the package's own file: read and parsed once, not on every question
def shipped_list() -> tuple[RedFlag, ...]:
    source = resources.files("medgemma_models") / "data" / "red_flags.json"
    return parse_list(source.read_text(encoding="utf-8"), "shipped red_flags.json")


def override_path() -> Path:
    return store.home() / OVERRIDE_NAME


def load_list() -> tuple[tuple[RedFlag, ...], str | None]:
    """The user's list if there is a good one, else the shipped one; plus the error when the user's file is broken."""
    path = override_path()
    if not path.is_file():
        return shipped_list(), None
    try:
        return parse_list(path.read_text(encoding="utf-8"), path), None
    except (OSError, UnicodeDecodeError) as exc:
        return shipped_list(), f"{path}: cannot be read ({exc}); using the shipped red-flag list"
    except RedFlagListError as exc:
        return shipped_list(), f"{exc}; using the shipped red-flag list"


def _negated(tokens: list[str], start: int) -> bool:
    for tok in reversed(tokens[max(0, start - NEGATION_WINDOW) : start]):
        if tok in CLAUSE_BREAKS or tok in {",", ";", ":", "!", "?"}:
            return False
        if tok in NEGATIONS:
            return True
    return False


def _find(tokens: list[str], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(
        tuple(tokens[i : i + n]) == phrase and not _negated(tokens, i) for i in range(len(tokens) - n + 1)
    )


def match(text: str, red_flags: tuple[RedFlag, ...]) -> EmergencyNotice | None:
    tokens = _tokens(text)
    for flag in red_flags:
        first: str | None = None
        for index, group in enumerate(flag.groups):
            hit = next((i for i, phrase in enumerate(group) if _find(tokens, phrase)), None)
            if hit is None:
                break
            if index == 0:
                first = flag.phrases[hit]
        else:
            return EmergencyNotice(NOTICE_TEXT, first or "", flag.name, flag.crisis_line)
    return None


def check(text: str) -> EmergencyNotice | None:
    """The notice for a question, or None. Called by the chat, `--ask` and the server before any answer."""
    red_flags, _error = load_list()
    return match(text, red_flags)
