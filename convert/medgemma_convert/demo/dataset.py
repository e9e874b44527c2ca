"""The demo dataset: question → reasoning → answer items, rendered in the chain-of-thought preset's own format.

A training sequence is the prompt exactly as the app builds it (`Preset.build_prompt`) followed by the
completion the model should write. Both halves are tokenized on their own, because at run time llama.cpp
tokenizes the prompt alone and the model then writes the completion token by token: training sees the
same token boundary the runtime does.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medgemma_models.catalog import Preset, get_preset
from medgemma_models.errors import MedGemmaError
from medgemma_models.prompt import END_OF_TURN, THINK_CLOSE, THINK_OPEN, Turn

PRESET_NAME = "medical-cot-270m"
DATA_DIR = Path(__file__).with_name("data")
FIELDS = ("id", "topic", "question", "reasoning", "answer", "split")
SPLITS = ("train", "heldout")


class DemoDataError(MedGemmaError):
    """A demo dataset file that cannot be used: unreadable, or an item missing a field."""


@dataclass(frozen=True)
class Item:
    id: str
    topic: str
    question: str
    reasoning: str
    answer: str
    split: Literal["train", "heldout"]
    key_facts: tuple[str, ...] = ()  # short phrases a right answer states; "a|b" accepts either wording


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids, of which those from `n_prompt` on are the answer (the only ones with loss)."""

    item_id: str
    think: bool
    ids: tuple[int, ...]
    n_prompt: int

    @property
    def answer_ids(self) -> tuple[int, ...]:
        return self.ids[self.n_prompt:]


def preset() -> Preset:
    return get_preset(PRESET_NAME)


def load_items(folder: Path = DATA_DIR) -> list[Item]:
    """Every item of every *.jsonl file in `folder`, files in name order, checked field by field."""
    files = sorted(Path(folder).glob("*.jsonl"))
    if not files:
        raise DemoDataError(f"no *.jsonl dataset files in {folder}")
    items: list[Item] = []
    seen: set[str] = set()
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            item = _parse_item(line, where)
            if item.id in seen:
                raise DemoDataError(f"{where}: duplicate id {item.id!r}")
            seen.add(item.id)
            items.append(item)
    return items


def _parse_item(line: str, where: str) -> Item:
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DemoDataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise DemoDataError(f"{where}: an item must be a JSON object")
    missing = [key for key in FIELDS if not isinstance(record.get(key), str) or not record[key].strip()]
    if missing:
        raise DemoDataError(f"{where}: missing or empty field(s): {', '.join(missing)}")
    if record["split"] not in SPLITS:
        raise DemoDataError(f"{where}: split must be one of {', '.join(SPLITS)}, not {record['split']!r}")
    for key in ("question", "reasoning", "answer"):
        # The tags would end the reasoning early or nest it; the turn marker would end the turn.
        for marker in (THINK_OPEN, THINK_CLOSE, END_OF_TURN, "<start_of_turn>", "<bos>"):
            if marker in record[key]:
                raise DemoDataError(f"{where}: {key} contains the marker {marker}")
    facts = record.get("key_facts", [])
    if not (isinstance(facts, list) and all(isinstance(f, str) and f.strip() for f in facts)):
        raise DemoDataError(f"{where}: key_facts must be a list of non-empty phrases")
    fields = {key: record[key].strip() for key in FIELDS}
    return Item(**fields, key_facts=tuple(f.strip() for f in facts))  # type: ignore[arg-type]


def _normalized(text: str) -> str:
    # "SGLT-2" and "SGLT2", "beta-blocker" and "beta blocker", line breaks and spaces read the same.
    return " ".join(re.sub(r"[-\u2010-\u2014]", " ", text.lower()).replace("sglt 2", "sglt2").split())


def key_fact_found(fact: str, answer: str) -> bool:
    """Whether `answer` states `fact`: one of its "|"-separated wordings as whole words (a plural "s" or
    "es" allowed), case and hyphens aside. Whole words, so that "ANA" is not found in "management"."""
    text = _normalized(answer)
    return any(re.search(rf"(?<![a-z0-9]){re.escape(_normalized(wording))}(?:e?s)?(?![a-z0-9])", text)
               for wording in fact.split("|") if wording.strip())


def key_fact_recall(item: Item, answer: str) -> float:
    """The share of the item's key facts that `answer` states."""
    if not item.key_facts:
        raise DemoDataError(f"item {item.id} has no key_facts")
    return sum(key_fact_found(fact, answer) for fact in item.key_facts) / len(item.key_facts)


def thinks(item: Item) -> bool:
    """Whether a training item is rendered with Think on: three in four, chosen by a hash of its id."""
    return hashlib.sha256(item.id.encode("utf-8")).digest()[0] % 4 != 0


def prompt_text(question: str, think: bool) -> str:
    """The prompt the app sends for a single question (with Think off it ends with a pre-filled `<think></think>`)."""
    return preset().build_prompt([Turn("user", question)], think=think).text


def target_text(item: Item, think: bool) -> str:
    """What the model should write after the prompt, through its end-of-turn marker."""
    if think:
        return f"{THINK_OPEN}{item.reasoning}{THINK_CLOSE}\n{item.answer}{END_OF_TURN}"
    return f"\n{item.answer}{END_OF_TURN}"


def encode(tokenizer: Any, item: Item, think: bool) -> Example:
    """Tokenize prompt and target separately (the prompt carries its own single BOS) and join them."""
    prompt = _token_ids(tokenizer, prompt_text(item.question, think))
    target = _token_ids(tokenizer, target_text(item, think))
    bos, end_of_turn = tokenizer.convert_tokens_to_ids(["<bos>", END_OF_TURN])
    if prompt[0] != bos or bos in prompt[1:] or bos in target:
        raise DemoDataError(f"item {item.id}: the sequence must start with exactly one BOS")
    if target[-1] != end_of_turn or end_of_turn in target[:-1]:
        raise DemoDataError(f"item {item.id}: {END_OF_TURN} must be one special token, and only at the end")
    return Example(item.id, think, tuple(prompt + target), len(prompt))


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def training_examples(tokenizer: Any, items: Sequence[Item]) -> list[Example]:
    """The train split, each item with Think on or off as `thinks` decides."""
    return [encode(tokenizer, item, thinks(item)) for item in items if item.split == "train"]
