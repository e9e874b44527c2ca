"""Moved to `tests.support.scripted_engine`; this name stays importable for tests written against the old path."""

from tests.support.scripted_engine import *  # noqa: F401,F403
