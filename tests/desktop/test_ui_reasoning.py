"""The three reasoning controls, with a scripted engine streaming `<think>` cut at awkward places."""

from __future__ import annotations

from functools import partial

import pytest
from PySide6.QtCore import Qt

from medgemma_desktop.history import History
from medgemma_models.prompt import THINK_OFF_PREFIX
from tests.support.scripted_engine import THINK_SCRIPT, ScriptedEngine, reasoning_pieces, script_reasoning
from tests.support.window_steps import ANSWER_TIMEOUT_MS, send

REASONING = {"preset": "medical-cot-270m", "max_tokens": 256}
REASONING_TEXT, ANSWER_TEXT = script_reasoning(THINK_SCRIPT)
REASONING_PIECES = reasoning_pieces(THINK_SCRIPT)


@pytest.fixture(autouse=True)
def clear_prompts() -> None:
    ScriptedEngine.prompts.clear()


def test_reasoning_is_split_from_the_answer_and_collapsed(qtbot, make_window, history: History) -> None:
    window = make_window(ScriptedEngine, settings=REASONING)
    panel = window.settings_panel
    assert panel.think.isEnabled() and panel.show_reasoning.isEnabled() and panel.send_reasoning.isEnabled()
    assert not panel.send_reasoning.isChecked()  # off by default
    send(qtbot, window, "Fever, cough and aching muscles in winter: what is it?")

    card = window.chat_view.cards()[-1]
    assert card.answer() == ANSWER_TEXT
    assert card.reasoning_text() == REASONING_TEXT
    assert "<think" not in card.answer() and "think>" not in card.reasoning_text()
    block = card.reasoning
    assert block.isVisibleTo(card) and not block.is_expanded()
    assert not block.body.isVisibleTo(block)
    assert block.title() == f"Thought ({REASONING_PIECES} tokens)"
    qtbot.mouseClick(block.toggle, Qt.MouseButton.LeftButton)
    assert block.is_expanded() and block.body.isVisibleTo(block)
    assert block.caption.isVisibleTo(block) and "not a clinical justification" in block.caption.text()
    assert block.body.markdown() == REASONING_TEXT
    message = history.messages(window.session.chat_id)[-1]
    assert (message.text, message.reasoning) == (ANSWER_TEXT, REASONING_TEXT)
    assert message.meta["reasoning_tokens"] == REASONING_PIECES
    # Think on: the prompt carries the preset's instruction and leaves the reasoning to the model.
    assert not ScriptedEngine.prompts[-1].endswith(THINK_OFF_PREFIX)


def test_thinking_line_counts_tokens_while_streaming(qtbot, make_window) -> None:
    window = make_window(partial(ScriptedEngine, delay=0.05), settings=REASONING)
    window.composer.set_text("Chest pain on exertion?")
    with qtbot.waitSignal(window.answer_finished, timeout=ANSWER_TIMEOUT_MS):
        assert window.send()
        card = window.chat_view.cards()[-1]
        qtbot.waitUntil(lambda: card.reasoning.tokens >= 3, timeout=ANSWER_TIMEOUT_MS)
        assert card.reasoning.title().startswith("Thinking… (")
        assert not card.reasoning.is_expanded()
    assert card.reasoning.title().startswith("Thought (")


def test_think_off_prefills_an_empty_think_block(qtbot, make_window) -> None:
    window = make_window(partial(ScriptedEngine, script=("Influenza", " is likely.")),
                         settings={**REASONING, "think": False})
    send(qtbot, window, "Fever and cough?")
    assert ScriptedEngine.prompts[-1].endswith("<start_of_turn>model\n" + THINK_OFF_PREFIX)
    card = window.chat_view.cards()[-1]
    assert card.answer() == "Influenza is likely." and card.reasoning_text() == ""
    assert not card.reasoning.isVisibleTo(card)


def test_show_reasoning_off_hides_the_block_but_keeps_the_text(qtbot, make_window, history: History) -> None:
    window = make_window(ScriptedEngine, settings={**REASONING, "show_reasoning": False})
    send(qtbot, window, "Fever and cough?")
    card = window.chat_view.cards()[-1]
    assert card.answer() == ANSWER_TEXT
    assert not card.reasoning.isVisibleTo(card)
    assert history.messages(window.session.chat_id)[-1].reasoning == REASONING_TEXT
    window.settings_panel.show_reasoning.setChecked(True)
    assert card.reasoning.isVisibleTo(card)


@pytest.mark.parametrize("send_back", [False, True])
def test_send_reasoning_back_controls_the_next_prompt(qtbot, make_window, send_back: bool) -> None:
    window = make_window(ScriptedEngine, settings={**REASONING, "send_reasoning_back": send_back})
    send(qtbot, window, "Fever and cough?")
    send(qtbot, window, "And if it lasts two weeks?")
    second_prompt = ScriptedEngine.prompts[-1]
    assert ANSWER_TEXT in second_prompt
    assert (REASONING_TEXT in second_prompt) is send_back
    assert second_prompt.startswith(ScriptedEngine.prompts[0].removesuffix("<start_of_turn>model\n"))


def test_controls_are_disabled_with_a_reason_for_presets_that_do_not_reason(qtbot, make_window) -> None:
    window = make_window(ScriptedEngine, settings={"preset": "gemma-chat"})
    panel = window.settings_panel
    for box in (panel.think, panel.show_reasoning, panel.send_reasoning):
        assert not box.isEnabled()
        assert "does not reason" in box.toolTip()
    send(qtbot, window, "Hello")
    # A plain model's stray <think> is still shown apart, never lost.
    card = window.chat_view.cards()[-1]
    assert card.answer() == ANSWER_TEXT and card.reasoning.isVisibleTo(card)
    assert not ScriptedEngine.prompts[-1].endswith(THINK_OFF_PREFIX)
    index = panel.preset.findData("medical-cot-270m")
    panel.preset.setCurrentIndex(index)
    assert panel.think.isEnabled() and panel.think.toolTip() == "Think"
