"""The shipped demo adapter is the file its model card describes: same SHA-256, same size, same training run."""

from __future__ import annotations

import hashlib
import re

from medgemma_models.store import demo_adapter


def card_text() -> str:
    adapter = demo_adapter()
    assert adapter is not None, "the demo adapter is not in models/medgemma_models/data"
    return adapter.with_suffix(".md").read_text(encoding="utf-8")


def test_the_shipped_adapters_sha256_and_size_are_the_cards() -> None:
    adapter = demo_adapter()
    card = card_text()
    digest = re.search(r"SHA-256: `([0-9a-f]{64})`", card)
    size = re.search(r"Size: ([0-9,]+) bytes", card)
    assert digest and size, "the model card must state the file's SHA-256 and size"
    assert hashlib.sha256(adapter.read_bytes()).hexdigest() == digest.group(1)
    assert adapter.stat().st_size == int(size.group(1).replace(",", ""))


def test_the_card_names_the_training_command_it_came_from() -> None:
    command = re.search(r"python -m medgemma_convert\.demo\.train [^\n`]*", card_text())
    assert command, "the model card must give the training command"
    # The recipe the card gives is the one the summary figures came from.
    assert "--epochs" in command.group(0) and "--seed" in command.group(0)
