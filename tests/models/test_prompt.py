import pytest

from medgemma_models.catalog import get_base, get_preset, preset_for, presets
from medgemma_models.prompt import BOS, Prompt, Turn, format_chat, format_completion


def test_single_turn_has_one_bos_and_the_generation_prompt():
    text = format_chat([Turn("user", "What causes gout?")]).text
    assert text == "<bos><start_of_turn>user\nWhat causes gout?<end_of_turn>\n<start_of_turn>model\n"
    assert text.count(BOS) == 1


def test_system_text_is_folded_into_the_first_user_turn_only():
    turns = [Turn("user", "Q1"), Turn("model", "A1"), Turn("user", "Q2")]
    text = format_chat(turns, system="Be brief.").text
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nQ1<end_of_turn>\n")
    assert text.count("Be brief.") == 1
    assert "system" not in text


def test_multi_turn_order_and_roles():
    turns = [Turn("user", "Q1"), Turn("model", "A1"), Turn("user", "Q2")]
    text = format_chat(turns).text
    assert text == (
        "<bos><start_of_turn>user\nQ1<end_of_turn>\n"
        "<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nQ2<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_a_later_turn_extends_the_earlier_prompt_for_kv_reuse():
    first = format_chat([Turn("user", "Q1")], system="S").text
    second = format_chat([Turn("user", "Q1"), Turn("model", "A1"), Turn("user", "Q2")], system="S").text
    assert second.startswith(first + "A1<end_of_turn>\n")


def test_unknown_role_and_model_first_are_refused():
    with pytest.raises(ValueError):
        format_chat([Turn("system", "x")])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        format_chat([Turn("model", "hi")], system="S")


def test_cot_preset_wraps_questions_and_asks_to_think():
    preset = get_preset("medical-cot-270m")
    text = preset.build_prompt([Turn("user", "Why is the troponin raised?")]).text
    assert "### Question:\nWhy is the troponin raised?\n\n### Response:\n" in text
    assert preset.think_instruction in text
    assert text.endswith("<start_of_turn>model\n")
    assert text.count(BOS) == 1


def test_think_off_prefills_an_empty_think_block_and_drops_the_instruction():
    preset = get_preset("medical-cot-270m")
    text = preset.build_prompt([Turn("user", "Q")], think=False).text
    assert text.endswith("<start_of_turn>model\n<think></think>")
    assert preset.think_instruction not in text


def test_think_off_changes_nothing_for_a_preset_that_does_not_reason():
    preset = get_preset("gemma-chat")
    assert preset.build_prompt([Turn("user", "Q")], think=False) == preset.build_prompt([Turn("user", "Q")])
    prompt = preset.build_prompt([Turn("user", "Q")])
    assert isinstance(prompt, Prompt) and not isinstance(prompt, str)


def test_completion_preset_uses_the_template_and_the_first_line():
    preset = get_preset("symptom-diagnosis-2b")
    text = preset.build_prompt([Turn("user", "fever, stiff neck, photophobia")]).text
    assert text == (
        "<bos>Below is a patient case with symptoms. Provide ONLY the most likely diagnosis.\n"
        "### Symptoms:\nfever, stiff neck, photophobia\n### Diagnosis:\n"
    )
    assert format_completion("{symptoms}!", symptoms="x").text == "<bos>x!"


def test_catalog_finds_presets_by_adapter_and_base():
    assert preset_for(["alphaaico/Medical-Diagnosis-COT-Gemma3-270M"]).name == "medical-cot-270m"
    assert preset_for(["Sugandha-Chauhan/MedGemma-SymptomDiagnosis"]).name == "symptom-diagnosis-2b"
    assert preset_for([], "google/gemma-3-270m").name == "gemma-chat"
    assert preset_for(["someone/unknown"], None) is None
    assert {"gemma-chat", "medical-cot-270m", "medical-qa-1b", "symptom-diagnosis-2b"} <= set(presets())


def test_catalog_base_shapes_and_aliases():
    spec = get_base("unsloth/gemma-2-2b-bnb-4bit")
    assert spec is not None and spec.id == "google/gemma-2-2b" and spec.arch == "gemma2"
    assert get_base("google/gemma-3-270m").hidden_size == 640
    assert get_base("google/gemma-3-1b-it").n_layers == 26
    assert get_base("meta-llama/Llama-3-8B") is None
