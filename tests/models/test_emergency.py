"""The red-flag check: the shipped list's own examples, negation, variants, and the user's override file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgemma_models import emergency


@pytest.fixture(autouse=True)
def _own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEMMA_HOME", str(tmp_path / "home"))


FLAGS = emergency.shipped_list()
POSITIVES = [(flag.id, text) for flag in FLAGS for text in flag.examples_positive]
NEGATIVES = [(flag.id, text) for flag in FLAGS for text in flag.examples_negative]


@pytest.mark.parametrize(("flag_id", "text"), POSITIVES)
def test_every_listed_positive_matches(flag_id, text):
    notice = emergency.match(text, FLAGS)
    assert notice is not None
    assert notice.red_flag == next(f.name for f in FLAGS if f.id == flag_id)
    assert notice.text == emergency.NOTICE_TEXT


@pytest.mark.parametrize(("flag_id", "text"), NEGATIVES)
def test_no_listed_negative_matches(flag_id, text):
    assert emergency.match(text, FLAGS) is None


def test_every_entry_has_a_source_and_examples():
    for flag in FLAGS:
        assert flag.source and flag.examples_positive and flag.examples_negative


def test_case_and_word_variants_match():
    notice = emergency.check("CRUSHING CHEST PAIN that radiates to my left arm and I am sweaty")
    assert notice is not None and notice.matched_phrase == "chest pain"


def test_negation_does_not_reach_past_a_clause_break():
    assert emergency.check("No fever, but chest pain spreading to the jaw") is not None
    assert emergency.check("Patient denies chest pain; the arm is bruised") is None


def test_suicide_notice_carries_a_crisis_line_and_is_json_able():
    notice = emergency.check("I keep thinking I want to end my life")
    assert notice is not None and notice.crisis_line
    assert json.loads(json.dumps(notice.to_dict()))["crisis_line"] == notice.crisis_line


def test_override_file_replaces_the_shipped_list():
    path = emergency.override_path()
    path.write_text(json.dumps({"red_flags": [{"id": "x", "name": "Test flag", "source": "test",
                                               "patterns": [["purple toes"]]}]}), encoding="utf-8")
    assert emergency.check("my purple toes").red_flag == "Test flag"
    assert emergency.check("I want to kill myself") is None


def test_broken_override_names_the_file_and_falls_back_to_the_shipped_list():
    path = emergency.override_path()
    path.write_text("{not json", encoding="utf-8")
    flags, error = emergency.load_list()
    assert error is not None and str(path) in error
    assert flags == FLAGS
    assert emergency.check("I want to kill myself") is not None


SETS = json.loads((Path(__file__).parent / "data" / "emergency_sets.json").read_text(encoding="utf-8"))


def precision_recall() -> tuple[float, float]:
    true_pos = sum(emergency.match(text, FLAGS) is not None for text in SETS["positive"])
    false_pos = sum(emergency.match(text, FLAGS) is not None for text in SETS["negative"])
    return true_pos / max(1, true_pos + false_pos), true_pos / len(SETS["positive"])


def test_precision_and_recall_on_the_phrasing_sets():
    assert len(SETS["positive"]) >= 60 and len(SETS["negative"]) >= 60
    precision, recall = precision_recall()
    print(f"emergency red flags: precision {precision:.3f}, recall {recall:.3f}")
    assert recall >= 0.98 and precision >= 0.95


if __name__ == "__main__":
    print("precision %.3f, recall %.3f" % precision_recall())
