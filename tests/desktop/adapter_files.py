"""Moved to `tests.support.adapter_files`; this name stays importable for tests written against the old path."""

from tests.support.adapter_files import *  # noqa: F401,F403
