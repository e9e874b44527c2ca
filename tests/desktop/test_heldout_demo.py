"""The held-out evaluation of the demo adapter (tests/bench/heldout_demo.py): how an output is classified, and a short real run through `--ask`'s path."""

from __future__ import annotations

from pathlib import Path

import pytest

from medgemma_convert.demo.dataset import Item
from tests.bench.heldout_demo import GREEDY, Outcome, chosen_items, evaluate, figures


def outcome(text: str, think: bool, ended: bool = True, split: str = "heldout", recall: float | None = None) -> Outcome:
    from tests.support.chats import split_whole

    reasoning, answer = split_whole(text) if think else ("", text)
    return Outcome("x", split, think, text, reasoning.strip(), answer.strip(), 10, ended, recall)


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
    on, off = figures(outcomes, True, "heldout"), figures(outcomes, False, "heldout")
    assert (on.questions, on.format_ok, on.closed_think, on.ended_with_end_of_turn) == (2, 1, 1, 1)
    assert (off.questions, off.format_ok, off.non_empty_answer, off.ended_with_end_of_turn) == (3, 2, 3, 2)


def test_key_fact_recall_is_averaged_per_split_and_mode() -> None:
    outcomes = [outcome("\nb", False, split="train", recall=1.0), outcome("\nb", False, split="train", recall=0.5),
                outcome("\nb", False, split="heldout", recall=0.0), outcome("\nb", False, split="heldout")]
    train, heldout = figures(outcomes, False, "train"), figures(outcomes, False, "heldout")
    assert (train.questions, train.key_fact_recall, train.all_key_facts) == (2, 0.75, 1)
    # An item without key facts counts in the format figures but not in the recall.
    assert (heldout.questions, heldout.key_fact_recall, heldout.all_key_facts) == (2, 0.0, 0)
    assert figures(outcomes, True, "train").key_fact_recall is None


def test_every_nth_training_item_and_all_held_out_items_are_chosen() -> None:
    items = [Item(f"t{i}", "x", "q", "r", "a", "train") for i in range(5)] + [Item("h", "x", "q", "r", "a", "heldout")]
    assert [i.id for i in chosen_items(items, "train", 2)] == ["t0", "t2", "t4"]
    assert [i.id for i in chosen_items(items, "both", 3)] == ["t0", "t3", "h"]
    assert [i.id for i in chosen_items(items, "heldout", 3)] == ["h"]


@pytest.mark.slow
def test_a_real_run_stops_at_the_token_limit(gemma_270m: Path) -> None:
    item = Item("q", "haematology", "What is the commonest cause of anaemia worldwide?", "r", "a", "heldout",
                ("iron deficiency",))
    outcomes = evaluate(gemma_270m, None, [item], GREEDY, max_tokens=6, threads=1)
    assert [o.think for o in outcomes] == [True, False]
    for o in outcomes:
        assert 0 < o.generated_tokens <= 6
        assert o.ended_with_end_of_turn == (o.generated_tokens < 6)
        assert o.key_fact_recall in (0.0, 1.0)
