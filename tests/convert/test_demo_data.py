"""The demo chain-of-thought dataset: size and splits, the rendered training text, and the label mask."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medgemma_convert.demo.dataset import (
    DemoDataError,
    Item,
    encode,
    key_fact_found,
    key_fact_recall,
    load_items,
    preset,
    prompt_text,
    target_text,
    thinks,
    training_examples,
)
from medgemma_models.prompt import Turn


@pytest.fixture(scope="module")
def items() -> list[Item]:
    return load_items()


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.tokenizer)


def test_the_dataset_has_300_items_and_a_held_out_split(items: list[Item]) -> None:
    assert len(items) >= 300
    assert len({item.id for item in items}) == len(items)
    assert sum(item.split == "heldout" for item in items) >= 30
    assert {item.split for item in items} == {"train", "heldout"}


def test_about_a_quarter_of_the_training_items_are_rendered_with_think_off(items: list[Item]) -> None:
    train = [item for item in items if item.split == "train"]
    share = sum(not thinks(item) for item in train) / len(train)
    assert 0.18 <= share <= 0.32, share


def test_the_training_text_is_the_presets_prompt_followed_by_the_answer(items: list[Item]) -> None:
    cot = preset()
    for item in items:
        turns = [Turn("user", item.question)]
        think_on = cot.build_prompt(turns, think=True).text
        think_off = cot.build_prompt(turns, think=False).text
        assert prompt_text(item.question, True) + target_text(item, True) == (
            think_on + f"<think>{item.reasoning}</think>\n{item.answer}<end_of_turn>")
        assert prompt_text(item.question, False) + target_text(item, False) == (
            think_off + f"\n{item.answer}<end_of_turn>")
        # The preset's own format: one BOS, system text (+ think instruction only with Think on), the markers.
        assert think_on.startswith(f"<bos><start_of_turn>user\n{cot.system}\n{cot.think_instruction}\n\n### Question:\n")
        assert think_on.endswith(f"{item.question}\n\n### Response:\n<end_of_turn>\n<start_of_turn>model\n")
        assert cot.think_instruction not in think_off
        assert think_off.endswith("<start_of_turn>model\n<think></think>")


def test_the_label_mask_covers_exactly_the_answer_tokens(items: list[Item], tiny_tokenizer) -> None:
    bos, end_of_turn = tiny_tokenizer.convert_tokens_to_ids(["<bos>", "<end_of_turn>"])
    for item in items[:60]:
        for think in (True, False):
            example = encode(tiny_tokenizer, item, think)
            assert example.ids[0] == bos and example.ids.count(bos) == 1
            assert example.ids[-1] == end_of_turn and example.ids.count(end_of_turn) == 2  # the user turn's, the answer's
            assert tiny_tokenizer.decode(example.answer_ids) == target_text(item, think)
            assert tiny_tokenizer.decode(example.ids[: example.n_prompt]) == prompt_text(item.question, think)


def test_only_training_items_become_examples_with_their_think_choice(items: list[Item], tiny_tokenizer) -> None:
    examples = training_examples(tiny_tokenizer, items[:80])
    train = [item for item in items[:80] if item.split == "train"]
    assert [e.item_id for e in examples] == [item.id for item in train]
    assert [e.think for e in examples] == [thinks(item) for item in train]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"id": "x", "topic": "t", "question": "q", "reasoning": "r", "split": "train"}), "answer"),
        (json.dumps({"id": "x", "topic": "t", "question": "q", "reasoning": "r", "answer": "a", "split": "test"}),
         "split must be"),
        (json.dumps({"id": "x", "topic": "t", "question": "q", "reasoning": "r </think> r", "answer": "a",
                     "split": "train"}), "</think>"),
    ],
)
def test_a_bad_item_is_refused_naming_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    good = json.dumps({"id": "a", "topic": "t", "question": "q", "reasoning": "r", "answer": "a", "split": "train"})
    (tmp_path / "part.jsonl").write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DemoDataError, match=rf"part\.jsonl line 2: .*{message}"):
        load_items(tmp_path)


def test_every_item_has_two_or_three_short_key_facts_found_in_its_own_answer(items: list[Item]) -> None:
    for item in items:
        assert 2 <= len(item.key_facts) <= 3, item.id
        for fact in item.key_facts:
            assert key_fact_found(fact, item.answer), (item.id, fact)
            # The first wording is the one the answer uses; the others are alternatives.
            assert key_fact_found(fact.split("|")[0], item.answer), (item.id, fact)
            assert all(1 <= len(wording.split()) <= 6 for wording in fact.split("|")), (item.id, fact)


def test_a_key_fact_matches_any_wording_regardless_of_case_and_hyphens() -> None:
    answer = "Give an SGLT-2 inhibitor and a Beta Blocker; adrenaline if shocked."
    assert key_fact_found("sglt2 inhibitor", answer)
    assert key_fact_found("beta-blocker", answer)
    assert key_fact_found("epinephrine|adrenaline", answer)
    assert not key_fact_found("metformin|GLP-1 receptor agonist", answer)
    item = Item("x", "t", "q", "r", "a", "train", key_facts=("metformin", "beta-blocker", "adrenaline"))
    assert key_fact_recall(item, answer) == pytest.approx(2 / 3)
    assert key_fact_recall(item, "Rest.") == 0.0
    with pytest.raises(DemoDataError, match="no key_facts"):
        key_fact_recall(Item("y", "t", "q", "r", "a", "train"), answer)


@pytest.mark.parametrize("facts", ["metformin", [1, 2], ["metformin", " "]])
def test_an_item_whose_key_facts_are_not_a_list_of_phrases_is_refused(tmp_path: Path, facts: object) -> None:
    line = json.dumps({"id": "a", "topic": "t", "question": "q", "reasoning": "r", "answer": "a",
                       "key_facts": facts, "split": "train"})
    (tmp_path / "part.jsonl").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(DemoDataError, match=r"part\.jsonl line 1: key_facts must be a list"):
        load_items(tmp_path)


def test_a_duplicate_id_is_refused(tmp_path: Path) -> None:
    line = json.dumps({"id": "a", "topic": "t", "question": "q", "reasoning": "r", "answer": "a", "split": "train"})
    (tmp_path / "part_a.jsonl").write_text(line + "\n", encoding="utf-8")
    (tmp_path / "part_b.jsonl").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(DemoDataError, match="part_b.jsonl line 1: duplicate id 'a'"):
        load_items(tmp_path)


def test_the_shipped_adapter_is_a_gguf_lora_for_the_chain_of_thought_preset() -> None:
    from importlib import resources

    from gguf import GGUFReader

    data = resources.files("medgemma_models").joinpath("data")
    for name in ("demo-reasoning-adapter.md", "demo-reasoning-loss.png"):
        assert data.joinpath(name).is_file(), name
    with resources.as_file(data.joinpath("demo-reasoning-adapter.gguf")) as path:
        reader = GGUFReader(path)
        fields = {key: reader.fields[key].contents() for key in
                  ("general.type", "general.architecture", "adapter.type", "adapter.lora.alpha", "medgemma.preset")}
        assert fields == {"general.type": "adapter", "general.architecture": "gemma3", "adapter.type": "lora",
                          "adapter.lora.alpha": 32.0, "medgemma.preset": "medical-cot-270m"}
        # lora_a and lora_b of seven projections in each of the 18 layers, rank 16.
        assert len(reader.tensors) == 2 * 7 * 18
        assert {int(min(t.shape)) for t in reader.tensors} == {16}


def test_the_screenshots_question_is_a_training_item(items: list[Item]) -> None:
    # The README's caption says the pictured question was trained on; keep the two true together.
    script = (Path(__file__).resolve().parents[2] / "packaging" / "screenshot.py").read_text(encoding="utf-8")
    question = re.search(r'^QUESTION = "([^"]+)"', script, re.MULTILINE)
    assert question, "packaging/screenshot.py has no QUESTION"
    trained = {item.question: item for item in items if item.split == "train"}
    assert question.group(1) in trained
