"""Moved to `tests.support.gguf_rewrite`; this name stays importable for tests written against the old path."""

from tests.support.gguf_rewrite import *  # noqa: F401,F403
