import pytest

from medgemma_models.reasoning import ReasoningSplitter, strip_reasoning
from tests.support.chats import split_whole

TEXT = "<think>The pain radiates to the arm; think ACS.</think>Most likely: myocardial infarction."


def run(pieces: list[str]) -> tuple[list[tuple[str, str]], ReasoningSplitter]:
    splitter = ReasoningSplitter()
    segments = [s for p in pieces for s in splitter.feed(p)] + splitter.finish()
    return [(s.kind, s.text) for s in segments], splitter


def joined(segments: list[tuple[str, str]], kind: str) -> str:
    return "".join(text for k, text in segments if k == kind)


def test_whole_text_splits_into_reasoning_then_answer():
    segments, splitter = run([TEXT])
    assert segments == [
        ("reasoning", "The pain radiates to the arm; think ACS."),
        ("answer", "Most likely: myocardial infarction."),
    ]
    assert not splitter.unterminated


@pytest.mark.parametrize("cut", range(1, len(TEXT)))
def test_a_cut_at_any_position_gives_the_same_split(cut):
    segments, _ = run([TEXT[:cut], TEXT[cut:]])
    assert joined(segments, "reasoning") == "The pain radiates to the arm; think ACS."
    assert joined(segments, "answer") == "Most likely: myocardial infarction."


def test_one_character_at_a_time():
    segments, _ = run(list(TEXT))
    assert joined(segments, "reasoning") == "The pain radiates to the arm; think ACS."
    assert joined(segments, "answer") == "Most likely: myocardial infarction."


def test_nothing_is_held_back_longer_than_a_possible_tag():
    splitter = ReasoningSplitter()
    first = splitter.feed("<think>abc</th")
    assert [(s.kind, s.text) for s in first] == [("reasoning", "abc")]
    second = splitter.feed("ink>x")
    assert [(s.kind, s.text) for s in second] == [("answer", "x")]


def test_a_lookalike_that_is_not_a_tag_is_released_as_text():
    segments, _ = run(["a <thin", "g> b"])
    assert joined(segments, "answer") == "a <thing> b"
    assert joined(segments, "reasoning") == ""


def test_unterminated_reasoning_is_reported():
    segments, splitter = run(["<think>still thinking when the tokens ran o", "ut"])
    assert joined(segments, "reasoning") == "still thinking when the tokens ran out"
    assert joined(segments, "answer") == ""
    assert splitter.unterminated


def test_empty_think_block_from_think_off_prefill():
    segments, splitter = run(["<think></think>", "Answer."])
    assert segments == [("answer", "Answer.")]
    assert not splitter.unterminated


def test_a_stream_that_starts_inside_reasoning():
    splitter = ReasoningSplitter(start_in_reasoning=True)
    segments = splitter.feed("step one</think>done") + splitter.finish()
    assert [(s.kind, s.text) for s in segments] == [("reasoning", "step one"), ("answer", "done")]


def test_strip_and_split_whole_messages():
    assert strip_reasoning(TEXT) == "Most likely: myocardial infarction."
    assert strip_reasoning("<think>never closed") == ""
    assert split_whole(TEXT) == ("The pain radiates to the arm; think ACS.", "Most likely: myocardial infarction.")
