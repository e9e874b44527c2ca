"""`medgemma-desktop --ask` and `medgemma_desktop.ask`: one question through the window's path, no display, no Qt.

Real llama.cpp on the real Gemma-3-270M, with adapters written by `adapter_files` (random deltas:
they change the answer but teach no format) and, when it has been trained, the packaged demo adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from medgemma_desktop.ask import Asker
from medgemma_desktop.engine import Engine
from medgemma_desktop.generation import AdapterUse, LoadFailed, ModelRequest, open_model
from medgemma_desktop.settings import LoadParams
from medgemma_models.catalog import get_preset
from medgemma_models.prompt import THINK_OFF_PREFIX
from medgemma_models.store import demo_adapter

from tests.support.adapter_files import write_adapter_set

QUESTION = "What are the first-line treatments for type 2 diabetes?"
GREEDY = {"temperature": 0.0, "max_tokens": 24}
COT = get_preset("medical-cot-270m")
JSON_KEYS = {"reasoning", "answer", "finish_reason", "prompt_tokens", "generated_tokens", "ttft_ms", "decode_tok_per_s"}
needs_demo = pytest.mark.skipif(demo_adapter() is None, reason="the demo reasoning adapter has not been trained into "
                                "models/medgemma_models/data/demo-reasoning-adapter.gguf yet")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_adapter_set(tmp_path_factory.mktemp("ask-adapters"))


@pytest.fixture(scope="module")
def cot_asker(gemma_270m: Path, adapters: dict[str, Path]) -> Iterator[Asker]:
    with Asker(gemma_270m, [AdapterUse(adapters["cot"], 1.0)], engine_factory=Engine) as asker:
        yield asker


def run_ask(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point's code in a child process with no display (MEDGEMMA_HOME is the test's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    code = "import sys; from medgemma_desktop.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "--ask", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def test_the_adapters_preset_shapes_the_prompt_with_think_on_and_off(cot_asker: Asker, gemma_270m: Path) -> None:
    on = cot_asker.ask(QUESTION, think=True, **GREEDY)
    off = cot_asker.ask(QUESTION, think=False, **GREEDY)
    assert on.preset == off.preset == "medical-cot-270m" and cot_asker.title == "Gemma 3 270m + test cot"
    assert on.think and COT.think_instruction in on.prompt and not on.prompt.endswith(THINK_OFF_PREFIX)
    assert not off.think and COT.think_instruction not in off.prompt and off.prompt.endswith(THINK_OFF_PREFIX)
    assert f"### Question:\n{QUESTION}" in on.prompt
    # Think off pre-fills an empty <think></think>: what follows is all answer.
    assert off.reasoning == "" and off.answer and not off.unterminated_reasoning
    assert 0 < on.generated_tokens <= GREEDY["max_tokens"] and on.finish_reason in ("stop", "length")
    assert on.prompt_tokens > off.prompt_tokens and on.decode_tok_per_s > 0  # the instruction is longer
    assert off.text.strip() == off.answer and THINK_OFF_PREFIX not in off.text
    # Each question is a new chat: asking again gives the same greedy answer to the same prompt.
    again = cot_asker.ask(QUESTION, think=False, **GREEDY)
    assert (again.prompt, again.answer) == (off.prompt, off.answer)
    with Asker(gemma_270m, []) as plain:  # the base alone: plain chat, and another answer
        alone = plain.ask(QUESTION, think=False, **GREEDY)
    assert alone.preset == "gemma-chat" and not alone.think and alone.answer != off.answer


def test_an_adapter_that_does_not_fit_is_refused_before_any_engine_exists(gemma_270m: Path,
                                                                          adapters: dict[str, Path]) -> None:
    engines: list[Engine] = []

    def factory() -> Engine:
        engines.append(Engine())
        return engines[-1]

    request = ModelRequest(gemma_270m, (AdapterUse(adapters["1b"], 1.0),), LoadParams(n_ctx=512))
    with pytest.raises(LoadFailed, match=r"wide.gguf does not fit gemma-3-270m.*another model size") as failure:
        open_model(factory, request)
    assert failure.value.title == "Cannot open this model" and engines == []


def test_cli_prints_the_answer(gemma_270m: Path, adapters: dict[str, Path]) -> None:
    result = run_ask(QUESTION, "--model", str(gemma_270m), "--adapter", f"{adapters['cot']}:0.5", "--think", "off",
                     "--temperature", "0", "--max-tokens", "16")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and "Reasoning:" not in result.stdout  # no reasoning: no label


def test_cli_json_is_one_object(gemma_270m: Path, adapters: dict[str, Path]) -> None:
    result = run_ask(QUESTION, "--model", str(gemma_270m), "--adapter", str(adapters["cot"]), "--think", "on",
                     "--temperature", "0", "--max-tokens", "16", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)  # the whole output is one JSON object
    assert JSON_KEYS <= set(answer) and answer["preset"] == "medical-cot-270m" and answer["think"] is True
    assert 0 < answer["generated_tokens"] <= 16 and answer["finish_reason"] in ("stop", "length")
    assert isinstance(answer["reasoning"], str) and isinstance(answer["answer"], str)


@pytest.mark.parametrize(("adapter", "expected"), [
    ("missing.gguf", "no such adapter file"),
    ("1b", "does not fit"),
])
def test_cli_refuses_a_bad_adapter_in_one_line(gemma_270m: Path, adapters: dict[str, Path], tmp_path: Path,
                                               adapter: str, expected: str) -> None:
    path = adapters.get(adapter, tmp_path / adapter)
    result = run_ask(QUESTION, "--model", str(gemma_270m), "--adapter", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and expected in result.stderr and "Traceback" not in result.stderr


def test_cli_options_need_ask() -> None:
    result = subprocess.run([sys.executable, "-m", "medgemma_desktop", "--think", "on"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 2 and "go with --ask" in result.stderr


def test_ask_imports_no_qt() -> None:
    code = ("import sys, medgemma_desktop.cli, medgemma_desktop.ask; "
            "sys.exit(1 if any(m.startswith('PySide6') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode == 0


@needs_demo
@pytest.mark.parametrize("think", ["on", "off"])
def test_the_default_is_the_demo_reasoning_model(think: str) -> None:
    """No --model: the app's default, "Gemma-3-270M + demo reasoning adapter", reasons only with Think on."""
    result = run_ask(QUESTION, "--think", think, "--temperature", "0", "--max-tokens", "512", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["model"] == "Gemma-3-270M + demo reasoning adapter" and answer["preset"] == "medical-cot-270m"
    if think == "on":
        assert answer["reasoning"] and answer["answer"]
    else:
        assert answer["reasoning"] == "" and answer["answer"]


EMERGENCY = "A 58-year-old with crushing chest pain radiating to the left arm, sweating. What should be done first?"


def test_cli_json_carries_the_emergency_notice(gemma_270m: Path) -> None:
    result = run_ask(EMERGENCY, "--model", str(gemma_270m), "--temperature", "0", "--max-tokens", "8", "--json")
    assert result.returncode == 0, result.stderr
    notice = json.loads(result.stdout)["emergency_notice"]
    assert notice["text"] == "This may be an emergency: call your local emergency number now."
    assert notice["matched_phrase"] == "chest pain"
    benign = run_ask(QUESTION, "--model", str(gemma_270m), "--temperature", "0", "--max-tokens", "8", "--json")
    assert benign.returncode == 0, benign.stderr
    assert json.loads(benign.stdout)["emergency_notice"] is None


def test_cli_plain_prints_the_notice_before_the_answer(gemma_270m: Path) -> None:
    result = run_ask(EMERGENCY, "--model", str(gemma_270m), "--temperature", "0", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("!! This may be an emergency: call your local emergency number now.")
