"""The runtime without Qt: one engine, one thread, a FIFO of jobs, typed events, cancel, close.

The scripted engine stands in where a test must steer the stream; the real 270M answers where
the model itself matters (typed prompts, a second front end on a plain thread).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from medgemma_desktop.engine import Engine, StopText
from medgemma_desktop.events import (
    AnswerPiece,
    Failed,
    Finished,
    LoadError,
    ModelReady,
    PromptPlanned,
    ReasoningPiece,
    RuntimeEvent,
)
from medgemma_desktop.generation import GenerationRequest, ModelRequest
from medgemma_desktop.runtime import Runtime
from medgemma_desktop.settings import ChatSettings, LoadParams, SamplingParams
from medgemma_models.catalog import get_preset
from medgemma_models.prompt import Turn
from tests.support.scripted_engine import THINK_SCRIPT, ScriptedEngine, reasoning_pieces, script_reasoning

WAIT_S = 60


class Events(list):
    """A job's events, appended on the engine thread."""

    def __call__(self, event: RuntimeEvent) -> None:
        self.append(event)

    def text(self, kind: type) -> str:
        return "".join(e.text for e in self if isinstance(e, kind))


def request(text: str, preset: str = "medical-cot-270m", **settings: object) -> GenerationRequest:
    chat = ChatSettings.from_dict({"preset": preset, "max_tokens": 256, **settings})
    message = type("M", (), {"role": "user", "text": text, "reasoning": "", "image_ids": ()})()
    return GenerationRequest(chat.preset_spec, [message], chat.sampling_params(seed=0), None, True, False)


@pytest.fixture
def scripted(gemma_270m: Path) -> Iterator[Runtime]:
    runtime = Runtime(partial(ScriptedEngine, delay=0.005))
    loaded = Events()
    runtime.load(ModelRequest(gemma_270m), loaded).wait(WAIT_S)
    assert isinstance(loaded[-1], ModelReady)
    yield runtime
    runtime.close()


def test_an_answer_arrives_split_in_order(scripted: Runtime) -> None:
    events = Events()
    assert scripted.generate(request("Fever?"), events).wait(WAIT_S)
    assert isinstance(events[0], PromptPlanned) and isinstance(events[-1], Finished)
    assert (events.text(ReasoningPiece), events.text(AnswerPiece)) == script_reasoning(THINK_SCRIPT)
    stats = events[-1].stats
    assert stats.reasoning_tokens == reasoning_pieces(THINK_SCRIPT) and not stats.unterminated_reasoning
    assert stats.generated_tokens == len(THINK_SCRIPT) and events[-1].text == "".join(THINK_SCRIPT)
    assert events[0].plan.prompt_tokens == stats.prompt_tokens  # the budget step's tokens are the engine's


def test_jobs_run_one_at_a_time_first_come_first_served(scripted: Runtime) -> None:
    order: list[int] = []
    lock = threading.Lock()

    def sink(n: int, events: Events) -> Events:
        def record(event: RuntimeEvent) -> None:
            events(event)
            if isinstance(event, Finished):
                with lock:
                    order.append(n)
        return record

    all_events = [Events() for _ in range(4)]
    jobs = [scripted.generate(request(f"question {n}"), sink(n, all_events[n])) for n in range(4)]
    assert scripted.waiting >= 2  # the first runs, the others wait
    assert all(job.wait(WAIT_S) for job in jobs)
    assert order == [0, 1, 2, 3] and scripted.waiting == 0
    # Never interleaved: each job's events are its own, complete.
    assert all(events.text(AnswerPiece) == script_reasoning(THINK_SCRIPT)[1] for events in all_events)


def test_a_cancelled_queued_job_never_starts_and_a_running_one_stops(scripted: Runtime) -> None:
    running, queued = Events(), Events()
    first = scripted.generate(request("long"), running)
    second = scripted.generate(request("never"), queued)
    second.cancel()
    while not any(isinstance(e, AnswerPiece) for e in running) and not first.done:
        first.wait(0.01)
    first.cancel()
    assert first.wait(WAIT_S) and second.wait(WAIT_S)
    assert running[-1].stats.finish_reason == "cancelled"
    assert running[-1].stats.generated_tokens < len(THINK_SCRIPT)
    [ended] = queued  # no prompt planned, no piece: only the end
    assert isinstance(ended, Finished) and ended.stats.finish_reason == "cancelled" and ended.stats.generated_tokens == 0


def test_a_failed_load_keeps_the_model_in_use(scripted: Runtime, tmp_path: Path, gemma_270m: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 12)
    events = Events()
    scripted.load(ModelRequest(broken), events).wait(WAIT_S)
    assert isinstance(events[-1], LoadError) and "broken.gguf" in events[-1].message
    assert scripted.loaded is not None and scripted.loaded.path == gemma_270m
    answer = Events()
    scripted.generate(request("Still there?"), answer).wait(WAIT_S)
    assert isinstance(answer[-1], Finished)


def test_close_ends_every_job_with_its_last_event(gemma_270m: Path) -> None:
    runtime = Runtime(partial(ScriptedEngine, delay=0.02))
    runtime.load(ModelRequest(gemma_270m), Events()).wait(WAIT_S)
    jobs = [(runtime.generate(request(f"q{n}"), events), events) for n, events in enumerate([Events(), Events()])]
    runtime.close(timeout=WAIT_S)
    assert not runtime.thread.is_alive() and runtime.loaded is None
    for job, events in jobs:
        assert job.done and isinstance(events[-1], (Finished, Failed))


def test_no_model_is_a_failure_not_a_hang() -> None:
    runtime = Runtime(ScriptedEngine)
    events = Events()
    assert runtime.generate(request("Hello?"), events).wait(WAIT_S)
    runtime.close()
    assert events == [Failed("No model is loaded.")]


def test_the_engine_refuses_a_prompt_made_of_strings(gemma_270m: Path) -> None:
    """A prompt turned into a string has lost which parts are markers: only a Prompt or ids go in."""
    engine = Engine()
    engine.load(gemma_270m, LoadParams(n_ctx=512, gpu="cpu"))
    try:
        prompt = get_preset("gemma-chat").build_prompt([Turn("user", "Name one cause of anaemia.")])
        with pytest.raises(TypeError, match="Prompt or token ids"):
            list(engine.stream(prompt.text, SamplingParams(max_tokens=2)))
        with pytest.raises(TypeError):
            list(engine.stream(prompt.text + "\n", SamplingParams(max_tokens=2)))
        with pytest.raises(TypeError):
            prompt + "more"  # noqa: B018 - a Prompt is no string: concatenation itself fails
        tokens = engine.tokenize(prompt)
        assert list(engine.stream(tokens, SamplingParams(temperature=0.0, max_tokens=4)))
        assert engine.last_stats is not None and engine.last_stats.prompt_tokens == len(tokens)
    finally:
        engine.close()


def test_stop_strings_end_the_answer_unshown(gemma_270m: Path) -> None:
    engine = Engine()
    engine.load(gemma_270m, LoadParams(n_ctx=512, gpu="cpu"))
    try:
        prompt = get_preset("gemma-chat").build_prompt([Turn("user", "List three symptoms of flu.")])
        greedy = SamplingParams(temperature=0.0, top_k=1, max_tokens=24)
        full = "".join(engine.stream(prompt, greedy))
        stop = full[len(full) // 2: len(full) // 2 + 4]  # four characters from the middle, likely across tokens
        cut = "".join(engine.stream(prompt, dataclasses.replace(greedy, stop=("never-seen", stop))))
        assert cut == full[: full.index(stop)] and engine.last_stats.finish_reason == "stop"
    finally:
        engine.close()


def test_held_back_text_is_shown_when_it_was_no_stop_string() -> None:
    stops = StopText(("</end>",))
    assert [stops.feed(piece) for piece in ("a </e", "nd", "x")] == ["a ", "", "</endx"]
    assert stops.finish("") == "" and not stops.stopped
    tail = StopText(("</end>",))
    assert tail.feed("b </en") == "b " and tail.finish("") == "</en"


@pytest.mark.slow
def test_a_second_front_end_on_a_plain_thread_shares_the_model(gemma_270m: Path) -> None:
    """Two front ends (here: two plain threads) submit to one runtime; each gets its own complete answer."""
    runtime = Runtime()
    ready = Events()
    runtime.load(ModelRequest(gemma_270m, (), LoadParams(n_ctx=1024, gpu="cpu")), ready).wait(WAIT_S * 5)
    assert isinstance(ready[-1], ModelReady)
    results: dict[str, Events] = {}

    def front_end(question: str) -> None:
        events = Events()
        runtime.generate(request(question, preset="gemma-chat", temperature=0.0, max_tokens=12), events).wait(WAIT_S * 5)
        results[question] = events

    threads = [threading.Thread(target=front_end, args=(q,)) for q in ("What is anaemia?", "What is a fever?")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    alone = Events()
    runtime.generate(request("What is a fever?", preset="gemma-chat", temperature=0.0, max_tokens=12), alone).wait(WAIT_S)
    runtime.close()
    assert all(isinstance(events[-1], Finished) and events.text(AnswerPiece).strip() for events in results.values())
    assert results["What is a fever?"].text(AnswerPiece) == alone.text(AnswerPiece)
