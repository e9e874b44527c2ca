"""Moved to `tests.support.tiny`; this name stays importable for tests written against the old path."""

from tests.support.tiny import *  # noqa: F401,F403
