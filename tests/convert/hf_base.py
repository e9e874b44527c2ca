"""Moved to `tests.support.hf_base`; this name stays importable for tests written against the old path."""

from tests.support.hf_base import *  # noqa: F401,F403
