"""Moved to `tests.support.window_steps`; this name stays importable for tests written against the old path."""

from tests.support.window_steps import *  # noqa: F401,F403
