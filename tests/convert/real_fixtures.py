"""Moved to `tests.support.real_fixtures`; this name stays importable for tests written against the old path."""

from tests.support.real_fixtures import *  # noqa: F401,F403
