"""Building the prompt for the next answer: cache-friendly, reasoning handled, fitted to the context."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from medgemma_desktop.conversation import PromptPlan, build_prompt
from medgemma_desktop.history import History
from medgemma_models.catalog import get_preset
from medgemma_models.errors import MedGemmaError, PromptTooLongError
from medgemma_models.prompt import BOS, THINK_OFF_PREFIX, Prompt
from tests.support.chats import split_whole


@dataclass(frozen=True)
class Msg:
    role: str
    text: str
    reasoning: str = ""
    image_ids: tuple[str, ...] = ()


def words(prompt: Prompt) -> list[str]:
    """A stand-in tokenizer: a token per word."""
    return prompt.text.split()


@pytest.fixture(scope="module")
def count_tokens(gemma_270m: Path) -> Callable[[Prompt], list[int]]:
    """The real Gemma tokenizer (vocabulary only: no weights loaded), on prompts without typed markers."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(gemma_270m), vocab_only=True, verbose=False)
    return lambda prompt: vocab.tokenize(prompt.text.encode("utf-8"), add_bos=False, special=True)


@pytest.fixture(scope="module")
def tokenize(gemma_270m: Path) -> Callable[[str], list[int]]:
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(gemma_270m), vocab_only=True, verbose=False)
    return lambda text: vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def plan(preset_name: str, history, **overrides) -> PromptPlan:
    options = dict(system=None, think=True, send_reasoning_back=False, n_ctx=100_000, max_tokens=100, tokenize=words)
    options.update(overrides)
    return build_prompt(get_preset(preset_name), history, **options)


# Raw model outputs as llama.cpp would stream them; the chat stores them split.
RAW_ANSWERS = [
    "<think>\nFever with a stiff neck suggests meningitis.\n</think>\n\nSeek urgent care: possible meningitis.",
    "<think>Photophobia fits too.</think>It also explains the light sensitivity.",
    "<think>\n\n</think>\n\nNo, antibiotics should not be delayed.",
]
QUESTIONS = ["Fever and a stiff neck?", "And light hurts my eyes?", "Can we wait a day?", "What tests are done?"]


def grow_chat(preset_name: str, raw_answers: list[str], **options) -> list[tuple[str, str]]:
    """Send the questions one by one, answering each with a raw output; (prompt, raw answer) per turn."""
    chat: list[Msg] = []
    turns = []
    for question, raw in zip(QUESTIONS, [*raw_answers, ""]):
        chat.append(Msg("user", question))
        prompt = plan(preset_name, chat, **options).prompt.text
        turns.append((prompt, raw))
        reasoning, answer = split_whole(raw)
        chat.append(Msg("model", answer, reasoning))
    return turns


@pytest.mark.parametrize(
    ("preset_name", "options", "raw_answers"),
    [
        ("gemma-chat", {}, ["Seek urgent care.", "That fits meningitis too.", "No, do not wait."]),
        ("medical-qa-1b", {"system": "Answer briefly."}, ["Seek urgent care.", "Yes.", "No."]),
        ("medical-cot-270m", {"think": True, "send_reasoning_back": True}, RAW_ANSWERS),
        # Thinking off: the prompt pre-fills <think></think>, the model writes only the answer.
        ("medical-cot-270m", {"think": False, "send_reasoning_back": True}, ["Urgent care.", "Yes.", "No."]),
        ("medical-cot-270m", {"think": False, "send_reasoning_back": False}, ["Urgent care.", "Yes.", "No."]),
    ],
)
def test_each_prompt_extends_the_last_prompt_and_answer(preset_name, options, raw_answers, tokenize) -> None:
    turns = grow_chat(preset_name, raw_answers, **options)
    for (previous, answer), (current, _) in zip(turns, turns[1:]):
        # The text up to the end of the previous answer is unchanged...
        assert current.startswith(previous + answer)
        # ...and so are its tokens (<end_of_turn> is a special token, so the cut is clean):
        # llama.cpp keeps them in the KV cache and evaluates only the new message.
        cached = tokenize(previous + answer)
        assert tokenize(current)[: len(cached)] == cached
        assert current.count(BOS) == 1


def test_thinking_answers_with_reasoning_stripped_still_share_the_earlier_turns() -> None:
    turns = grow_chat("medical-cot-270m", RAW_ANSWERS, think=True, send_reasoning_back=False)
    for (previous, _), (current, _) in zip(turns, turns[1:]):
        # Only the previous answer changes (its reasoning left out); everything before it is reused.
        assert current.startswith(previous)


def test_earlier_reasoning_is_left_out_unless_sent_back() -> None:
    chat = [
        Msg("user", "Chest pain on exertion?"),
        Msg("model", "Possibly angina.", reasoning="UNIQUE-REASONING-TEXT exertional pattern"),
        Msg("user", "What next?"),
    ]
    stripped = plan("medical-cot-270m", chat, send_reasoning_back=False).prompt.text
    assert "UNIQUE-REASONING-TEXT" not in stripped
    assert "<start_of_turn>model\nPossibly angina.<end_of_turn>" in stripped
    sent = plan("medical-cot-270m", chat, send_reasoning_back=True).prompt.text
    assert "<start_of_turn>model\n<think>UNIQUE-REASONING-TEXT exertional pattern</think>Possibly angina.<end_of_turn>" in sent


def test_think_off_prefills_an_empty_think_only_for_reasoning_presets() -> None:
    chat = [Msg("user", "Headache?")]
    assert plan("medical-cot-270m", chat, think=False).prompt.text.endswith("<start_of_turn>model\n" + THINK_OFF_PREFIX)
    assert plan("medical-cot-270m", chat, think=True).prompt.text.endswith("<start_of_turn>model\n")
    assert plan("gemma-chat", chat, think=False).prompt.text.endswith("<start_of_turn>model\n")
    assert "<think>" not in plan("gemma-chat", chat, think=False).prompt.text


def test_the_system_text_is_folded_into_the_first_user_turn() -> None:
    chat = [Msg("user", "First question"), Msg("model", "First answer"), Msg("user", "Second question")]
    text = plan("gemma-chat", chat, system="You are careful.").prompt.text
    assert text.startswith(BOS + "<start_of_turn>user\nYou are careful.\n\nFirst question<end_of_turn>\n")
    assert text.count("You are careful.") == 1


def long_chat(pairs: int) -> list[Msg]:
    chat = [Msg("user", "FIRST-CASE a 40 year old with fever " * 3), Msg("model", "first answer " * 5)]
    for i in range(1, pairs):
        chat += [Msg("user", f"question-{i} " + "detail " * 20), Msg("model", f"answer-{i} " + "words " * 20)]
    return [*chat, Msg("user", "NEWEST-QUESTION what now?")]


def test_oldest_pairs_are_left_out_when_the_context_is_full() -> None:
    chat = long_chat(pairs=12)
    full = plan("gemma-chat", chat, system="SYSTEM-TEXT")
    n_ctx, max_tokens = full.prompt_tokens // 2, 50
    fitted = plan("gemma-chat", chat, system="SYSTEM-TEXT", n_ctx=n_ctx, max_tokens=max_tokens)

    assert fitted.prompt_tokens + max_tokens <= n_ctx
    assert fitted.dropped_turns > 0 and fitted.dropped_turns % 2 == 0
    for kept in ("SYSTEM-TEXT", "FIRST-CASE", "first answer", "NEWEST-QUESTION"):
        assert kept in fitted.prompt.text
    dropped_pairs = fitted.dropped_turns // 2
    # The oldest pairs after the first one go; the rest are kept in order.
    assert "question-1 " not in fitted.prompt.text
    assert f"question-{dropped_pairs} " not in fitted.prompt.text
    for i in range(dropped_pairs + 1, 12):
        assert f"question-{i} " in fitted.prompt.text and f"answer-{i} " in fitted.prompt.text
    # No more is left out than needed: keeping one more pair would not fit.
    one_more = chat[:2] + chat[2 + 2 * (dropped_pairs - 1):]
    assert plan("gemma-chat", one_more, system="SYSTEM-TEXT").prompt_tokens + max_tokens > n_ctx
    # Turns still alternate, ending with the generation prompt's model turn.
    roles = [part.split("\n", 1)[0] for part in fitted.prompt.text.split("<start_of_turn>")[1:]]
    assert roles == ["user", "model"] * (len(roles) // 2) and len(roles) % 2 == 0


def test_nothing_is_left_out_when_it_fits() -> None:
    chat = long_chat(pairs=4)
    result = plan("gemma-chat", chat, n_ctx=10_000, max_tokens=500)
    assert result.dropped_turns == 0
    assert result.prompt_tokens == len(words(result.prompt))


def test_a_message_too_long_for_the_context_is_a_clear_error() -> None:
    chat = [*long_chat(pairs=3)[:-1], Msg("user", "word " * 1000)]
    with pytest.raises(PromptTooLongError) as caught:
        plan("gemma-chat", chat, n_ctx=600, max_tokens=100)
    assert isinstance(caught.value, MedGemmaError)
    assert "too long for the context" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_fitting_with_the_real_tokenizer(count_tokens) -> None:
    chat = long_chat(pairs=20)
    n_ctx, max_tokens = 512, 128
    fitted = plan("medical-cot-270m", chat, n_ctx=n_ctx, max_tokens=max_tokens, tokenize=count_tokens)
    assert fitted.prompt_tokens == len(count_tokens(fitted.prompt))
    assert fitted.prompt_tokens + max_tokens <= n_ctx
    assert fitted.dropped_turns > 0
    assert "FIRST-CASE" in fitted.prompt.text and "NEWEST-QUESTION" in fitted.prompt.text


def test_a_chat_from_the_history_database(tmp_path: Path, count_tokens) -> None:
    with History(tmp_path / "history.sqlite3") as history:
        chat = history.create_chat()
        history.add_message(chat, "user", "Is a resting heart rate of 48 normal?")
        history.add_message(chat, "model", "In trained athletes it can be.", reasoning="Bradycardia thresholds.")
        history.add_message(chat, "user", "I am not an athlete.")
        result = plan(
            "medical-cot-270m", history.messages(chat), n_ctx=2048, max_tokens=256, tokenize=count_tokens
        )
    assert result.dropped_turns == 0
    assert "In trained athletes it can be." in result.prompt.text and "Bradycardia" not in result.prompt.text
    assert result.prompt.text.endswith("I am not an athlete.\n\n### Response:\n<end_of_turn>\n<start_of_turn>model\n")


def test_irregular_chats_are_made_to_alternate() -> None:
    chat = [
        Msg("user", "First"),
        Msg("model", ""),  # an answer that failed before writing anything
        Msg("user", "Second try"),
    ]
    text = plan("gemma-chat", chat).prompt.text
    assert text == BOS + "<start_of_turn>user\nFirst\n\nSecond try<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(ValueError):
        plan("gemma-chat", [Msg("user", "q"), Msg("model", "a")])


def test_completion_presets_use_the_newest_message_only() -> None:
    chat = [Msg("user", "old case"), Msg("model", "Influenza"), Msg("user", "fever, stiff neck, photophobia")]
    result = plan("symptom-diagnosis-2b", chat)
    assert result.dropped_turns == 0
    assert result.prompt.text.endswith("### Symptoms:\nfever, stiff neck, photophobia\n### Diagnosis:\n")
    assert "old case" not in result.prompt.text
    with pytest.raises(PromptTooLongError):
        plan("symptom-diagnosis-2b", chat, n_ctx=40, max_tokens=30)


@pytest.mark.slow
def test_the_second_turn_reuses_the_first_from_the_kv_cache(gemma_270m: Path) -> None:
    """The real engine: turn 2 evaluates only what is new, because its prompt extends turn 1's."""
    from medgemma_desktop.engine import Engine
    from medgemma_desktop.settings import LoadParams, SamplingParams

    engine = Engine()
    engine.load(gemma_270m, LoadParams(n_ctx=1024, gpu="cpu"))
    try:
        greedy = SamplingParams(temperature=0.0, max_tokens=24, seed=0)
        preset = get_preset("gemma-chat")
        options = dict(system="Answer briefly.", think=True, send_reasoning_back=False, n_ctx=engine.n_ctx,
                       max_tokens=greedy.max_tokens, tokenize=engine.tokenize)
        chat = [Msg("user", "What is a normal resting heart rate for adults?")]
        first = build_prompt(preset, chat, **options)
        answer = "".join(engine.stream(first.tokens, greedy))
        assert answer.strip()
        chat += [Msg("model", answer), Msg("user", "And for children?")]
        second = build_prompt(preset, chat, **options)
        list(engine.stream(second.tokens, greedy))
        stats = engine.last_stats
    finally:
        engine.close()
    assert stats is not None
    assert second.dropped_turns == 0
    assert stats.prompt_tokens == second.prompt_tokens
    # Everything up to the end of the first answer came from the cache.
    assert stats.reused_tokens >= first.prompt_tokens + len(engine_tokens(gemma_270m, answer)) - 1
    assert stats.prompt_tokens - stats.reused_tokens < 20


def engine_tokens(model: Path, text: str) -> list[int]:
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    return vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)


IMAGE_TOKENS = 256  # MedGemma 4B's


def words_and_images(prompt: Prompt) -> list[str]:
    """A stand-in tokenizer: a token per word, and an image's 256 positions."""
    return [word for segment in prompt.segments
            for word in ([segment.image.sha256] * IMAGE_TOKENS if segment.image else segment.text.split())]


def test_images_of_earlier_messages_are_left_out_oldest_first_before_any_turn():
    from medgemma_models.mtmd_compat import RgbImage

    def image_id(n: int) -> str:
        return f"{n:064x}"

    messages = []
    for n in range(1, 4):
        messages += [Msg("user", f"question {n}", image_ids=(image_id(n),)), Msg("model", f"answer {n}")]
    messages.append(Msg("user", "last question", image_ids=(image_id(9),)))
    plan_for = functools.partial(build_prompt, get_preset("gemma-chat"), messages, system=None, think=False,
                                 send_reasoning_back=False, max_tokens=16, tokenize=words_and_images,
                                 load_image=lambda sha: RgbImage(1, 1, b"\0\0\0"))
    full = plan_for(n_ctx=4096)
    assert (full.images, full.dropped_images) == (4, 0)
    plan = plan_for(n_ctx=full.prompt_tokens + 16 - IMAGE_TOKENS)  # room for all but one image and a note
    assert (plan.dropped_images, plan.dropped_turns, plan.images) == (2, 0, 2)
    assert [image.sha256 for image in plan.prompt.images] == [image_id(3), image_id(9)]
    assert plan.prompt.text.count("[image left out: the context is full]") == 2
    # With no room for any earlier image, pairs go next; the new message keeps its own image.
    tight = plan_for(n_ctx=IMAGE_TOKENS + 16 + 40)
    assert tight.dropped_turns > 0 and image_id(9) in [image.sha256 for image in tight.prompt.images]


def test_a_missing_image_file_is_named_in_the_prompt_and_the_rest_goes_on():
    from medgemma_desktop.conversation import ImageMissingError

    def gone(sha256: str):
        raise ImageMissingError(sha256)

    plan = build_prompt(get_preset("gemma-chat"), [Msg("user", "What is this?", image_ids=("a" * 64,))], system=None,
                        think=False, send_reasoning_back=False, n_ctx=4096, max_tokens=16, tokenize=words,
                        load_image=gone)
    assert plan.images == 0 and "[image missing]\n\nWhat is this?" in plan.prompt.text
