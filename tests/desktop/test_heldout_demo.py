"""The held-out evaluation of the demo adapter (tests/bench/heldout_demo.py): how an output is classified, and a short real run through `--ask`'s path."""

from __future__ import annotations

from pathlib import Path

import pytest

from medgemma_convert.demo.dataset import Item
from tests.bench.heldout_demo import GREEDY, Outcome, evaluate, figures


def outcome(text: str, think: bool, ended: bool = True) -> Outcome:
    from tests.support.chats import split_whole

    reasoning, answer = split_whole(text) if think else ("", text)
    return Outcome("x", think, text, reasoning.strip(), answer.strip(), 10, ended)


@pytest.mark.parametrize(
    ("text", "think", "ok"),
    [
        ("<think>Iron is lost.</think>\nBleeding.", True, True),
        ("<think>Iron is lost.</think>\n", True, False),  # no answer after the reasoning
        ("<think>Iron is lost and lost and lost", True, False),  # reasoning never closed
        ("Bleeding.", True, False),  # Think on but no reasoning block
        ("\nBleeding.", False, True),
        ("\n<think>Iron.</think>Bleeding.", False, False),  # reasoning although Think was off
        ("  \n", False, False),
    ],
)
def test_an_output_is_counted_only_in_the_presets_format(text: str, think: bool, ok: bool) -> None:
    assert outcome(text, think).format_ok is ok


def test_figures_count_each_mode_on_its_own() -> None:
    outcomes = [
        outcome("<think>a</think>\nb", True), outcome("<think>a", True, ended=False),
        outcome("\nb", False), outcome("\nb", False, ended=False), outcome("<think></think>b", False),
    ]
    on, off = figures(outcomes, True), figures(outcomes, False)
    assert (on.questions, on.format_ok, on.closed_think, on.ended_with_end_of_turn) == (2, 1, 1, 1)
    assert (off.questions, off.format_ok, off.non_empty_answer, off.ended_with_end_of_turn) == (3, 2, 3, 2)


@pytest.mark.slow
def test_a_real_run_stops_at_the_token_limit(gemma_270m: Path) -> None:
    item = Item("q", "haematology", "What is the commonest cause of anaemia worldwide?", "r", "a", "heldout")
    outcomes = evaluate(gemma_270m, None, [item], GREEDY, max_tokens=6, threads=1)
    assert [o.think for o in outcomes] == [True, False]
    for o in outcomes:
        assert 0 < o.generated_tokens <= 6
        assert o.ended_with_end_of_turn == (o.generated_tokens < 6)
