"""The local OpenAI-compatible server, with real peers: the official `openai` client and httpx on
loopback, against the real server (uvicorn, Starlette, the guard) on the real runtime.

The answers come from real llama.cpp on the real Gemma-3-270M with a reasoning-preset adapter;
a scripted engine only where a real model cannot be steered (a `<think>` block to split, an
answer slow enough to fill the queue).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest

from medgemma_desktop.engine import Engine
from medgemma_desktop.history import History
from medgemma_desktop.library import ModelEntry, ModelLibrary
from medgemma_desktop.generation import AdapterUse
from medgemma_desktop.runtime import Runtime
from medgemma_desktop.server.config import ServerConfig, ServerConfigError
from medgemma_desktop.server.serve import ServerThread
from medgemma_desktop.server.service import ChatService
from medgemma_desktop.settings import ChatSettings
from medgemma_models.prompt import THINK_OFF_PREFIX

from tests.support.adapter_files import write_adapter_set
from tests.support.scripted_engine import THINK_SCRIPT, ScriptedEngine, script_reasoning

ORIGIN = "http://localhost:3000"
KEY = "test-key-0123456789"
QUESTIONS = ["Name one symptom of anaemia.", "What does the liver do?", "Define hypertension.",
             "What is a fever?", "Name a bone of the arm."]
# Each opens with its own word, asked nowhere else: whatever ran before, the prompt cache holds the
# same shared prefix (up to the question), so each is evaluated the same way alone or in a crowd.
CROWD = ["Describe a pulse.", "Explain fainting.", "List two antibiotics.", "Summarise asthma.",
         "Outline sepsis care.", "Give one vitamin.", "Tell me about insulin.", "Compare flu and colds."]


def client(url: str, key: str = "none") -> openai.OpenAI:
    # trust_env=False: a proxy set in the environment must not see loopback traffic.
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120,
                         http_client=httpx.Client(trust_env=False))


def raw(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, trust_env=False, timeout=120)


class Served:
    def __init__(self, runtime: Runtime, service: ChatService, thread: ServerThread) -> None:
        self.runtime, self.service, self.thread, self.url = runtime, service, thread, thread.url


def start(runtime: Runtime, history: History, entry: ModelEntry, config: ServerConfig,
          settings: ChatSettings | None = None) -> Served:
    service = ChatService(runtime, ModelLibrary(history), config, switch_models=True)
    served = service.load_now(entry)
    if settings is not None:
        service.use(entry, served.loaded, settings)
    return Served(runtime, service, ServerThread(service))


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    store = History(tmp_path_factory.mktemp("server-history") / "history.sqlite3")
    yield store
    store.close()


@pytest.fixture(scope="module")
def real(gemma_270m: Path, history: History, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The 270M with the test reasoning adapter (preset medical-cot-270m), on an ephemeral loopback port."""
    adapters = write_adapter_set(tmp_path_factory.mktemp("server-adapters"))
    runtime = Runtime(Engine)
    entry = ModelEntry(gemma_270m, "270M + cot", "", (AdapterUse(adapters["cot"], 1.0),))
    served = start(runtime, history, entry, ServerConfig(port=0, cors_origins=(ORIGIN,)))
    yield served
    served.thread.stop()
    runtime.close()


@pytest.fixture(scope="module")
def keyed(real: Served) -> Iterator[Served]:
    """A second server on the same runtime and model that requires a key."""
    service = ChatService(real.runtime, real.service.library, ServerConfig(port=0, api_key=KEY), switch_models=False)
    served = real.service.served
    assert served is not None
    service.use(served.entry, served.loaded, served.settings)
    thread = ServerThread(service)
    yield Served(real.runtime, service, thread)
    thread.stop()


@pytest.fixture(scope="module")
def scripted(gemma_270m: Path, history: History) -> Iterator[Served]:
    """A scripted reasoning answer (a <think> block cut at awkward places), a little slow, queue of 1."""
    runtime = Runtime(lambda: ScriptedEngine(THINK_SCRIPT, delay=0.02))
    entry = ModelEntry(gemma_270m, "scripted", "")
    served = start(runtime, history, entry, ServerConfig(port=0, queue=1), ChatSettings.defaults_for("medical-cot-270m"))
    yield served
    served.thread.stop()
    runtime.close()


def ask(url: str, question: str, **options: object) -> openai.types.chat.ChatCompletion:
    return client(url).chat.completions.create(model=options.pop("model", None) or "", messages=[
        {"role": "user", "content": question}], **options)  # type: ignore[arg-type]


def streamed(url: str, question: str, **options: object) -> tuple[str, str, list]:
    chunks = list(client(url).chat.completions.create(
        model=str(options.pop("model")), messages=[{"role": "user", "content": question}], stream=True,
        **options))  # type: ignore[arg-type]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    return content, reasoning, chunks


def model_id(served: Served) -> str:
    assert served.service.served is not None
    return served.service.served.id


# -- the openai client ----------------------------------------------------------------------------

def test_the_openai_client_lists_the_models_and_gets_an_answer_whole_and_streamed(real: Served) -> None:
    names = [m.id for m in client(real.url).models.list()]
    assert model_id(real) in names and "gemma-3-270m" in names
    # Ids come from the files' names: the same after a restart.
    entry = real.service.served.entry  # type: ignore[union-attr]
    assert model_id(real) == f"{Path(entry.path).stem.lower()}+{entry.adapters[0].path.stem}"
    # llama.cpp's numbers depend a little on how much of a prompt was cached (batch sizes differ), so
    # the two compared both follow the same prompt already cached.
    ask(real.url, QUESTIONS[0], model=model_id(real), temperature=0, max_tokens=16)
    content, _, chunks = streamed(real.url, QUESTIONS[0], model=model_id(real), temperature=0, max_tokens=16,
                                  stream_options={"include_usage": True})
    whole = ask(real.url, QUESTIONS[0], model=model_id(real), temperature=0, max_tokens=16)
    assert whole.choices[0].message.content and whole.choices[0].message.content.strip() == content.strip()
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.model == model_id(real)
    assert whole.usage is not None and whole.usage.completion_tokens == 16 or whole.choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.prompt_tokens == whole.usage.prompt_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_a_follow_up_reuses_the_cached_prompt(real: Served) -> None:
    first = ask(real.url, QUESTIONS[1], model=model_id(real), temperature=0, max_tokens=12)
    answer = first.choices[0].message.content or ""
    follow = client(real.url).chat.completions.create(model=model_id(real), temperature=0, max_tokens=8, messages=[
        {"role": "user", "content": QUESTIONS[1]}, {"role": "assistant", "content": answer},
        {"role": "user", "content": "Say it in one word."}])
    assert follow.usage is not None and follow.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]
    cached = follow.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    assert cached is not None and cached >= first.usage.prompt_tokens - 2  # type: ignore[union-attr]


def test_thinking_off_leaves_no_reasoning(real: Served) -> None:
    for options in ({"reasoning_effort": "none"}, {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}):
        whole = ask(real.url, QUESTIONS[2], model=model_id(real), temperature=0, max_tokens=12, **options)
        assert getattr(whole.choices[0].message, "reasoning_content", None) is None


def test_errors_arrive_as_the_clients_exception_types(real: Served, keyed: Served) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        ask(real.url, "Hi", model="no-such-model", max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        ask(real.url, "Hi", model=model_id(real), temperature=7, max_tokens=4)
    with pytest.raises(openai.AuthenticationError):
        ask(keyed.url, "Hi", model=model_id(keyed), max_tokens=4)


def test_the_emergency_notice_is_an_extra_field_whole_and_in_the_first_stream_chunk(real: Served) -> None:
    question = "A 58-year-old with crushing chest pain radiating to the left arm, sweating. What should be done first?"
    whole = ask(real.url, question, model=model_id(real), temperature=0, max_tokens=8).model_dump()
    notice = whole["emergency_notice"]
    assert notice["text"] == "This may be an emergency: call your local emergency number now."
    assert notice["matched_phrase"] and notice["red_flag"]
    _, _, chunks = streamed(real.url, question, model=model_id(real), temperature=0, max_tokens=8)
    assert chunks[0].model_dump()["emergency_notice"] == notice
    # Only the last user message is checked: an earlier emergency does not flag a benign follow-up.
    follow = client(real.url).chat.completions.create(model=model_id(real), temperature=0, max_tokens=4, messages=[
        {"role": "user", "content": question}, {"role": "assistant", "content": "Call for help."},
        {"role": "user", "content": QUESTIONS[4]}])
    assert follow.model_dump()["emergency_notice"] is None
    _, _, benign = streamed(real.url, QUESTIONS[4], model=model_id(real), temperature=0, max_tokens=4)
    assert benign[0].model_dump()["emergency_notice"] is None


# -- the raw protocol ---------------------------------------------------------------------------

def test_the_stream_is_sse_framed_and_ends_with_done(real: Served) -> None:
    body = {"model": model_id(real), "messages": [{"role": "user", "content": QUESTIONS[3]}], "stream": True,
            "max_tokens": 8, "temperature": 0}
    with raw(real.url) as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [e for e in text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    data = [e.removeprefix("data: ") for e in events if e.startswith("data: ")]
    assert data[-1] == "[DONE]" and len(data) == len(events)  # no comments or other fields in a short answer
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def png_data_uri(shade: int = 128, size: int = 32) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (shade, 255 - shade, shade // 2)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_an_image_goes_in_as_a_data_uri_and_a_follow_up_reuses_it(vision_pair, history: History) -> None:
    runtime = Runtime(Engine)
    served = start(runtime, history, ModelEntry(vision_pair.model, "tiny vision", ""), ServerConfig(port=0))
    try:
        assert served.service.served is not None and served.service.served.loaded.vision
        image = {"type": "image_url", "image_url": {"url": png_data_uri()}}
        first = [{"role": "user", "content": [{"type": "text", "text": "What is shown?"}, image]}]
        one = client(served.url).chat.completions.create(model=model_id(served), messages=first, max_tokens=4,
                                                         temperature=0)  # type: ignore[arg-type]
        follow_up = [*first, {"role": "assistant", "content": one.choices[0].message.content or ""},
                     {"role": "user", "content": "Anything else?"}]
        two = client(served.url).chat.completions.create(model=model_id(served), messages=follow_up, max_tokens=4,
                                                         temperature=0)  # type: ignore[arg-type]
        assert runtime.loaded is not None
        # The image's positions (its 4 tokens, <start_of_image> and <end_of_image>) came from the cache.
        assert two.usage.prompt_tokens_details.cached_tokens > one.usage.prompt_tokens - 4
    finally:
        served.thread.stop()
        runtime.close()


def test_a_request_naming_a_collection_gets_its_passages_and_citations(real: Served, medgemma_home: Path,
                                                                       tmp_path: Path, qapp) -> None:
    from medgemma_desktop.documents.collections import Collections
    from tests.support.document_files import GUIDE_PAGES, write_pdf

    collections = Collections()
    collections.get("guides").index([write_pdf(tmp_path / "guide.pdf", GUIDE_PAGES)])
    real.service.documents = collections  # the data folder of this test
    try:
        body = {"model": model_id(real), "max_tokens": 4, "temperature": 0, "collections": ["guides"],
                "messages": [{"role": "user", "content": "First-line drug for type 2 diabetes?"}]}
        with raw(real.url) as http:
            answer = http.post("/v1/chat/completions", json=body).json()
            cited = answer["citations"]
            assert (cited[0]["source"], cited[0]["page"]) == ("guide.pdf", 3)
            plain = http.post("/v1/chat/completions", json={**body, "collections": None}).json()
            assert plain["citations"] is None
            unknown = http.post("/v1/chat/completions", json={**body, "collections": ["nope"]})
            assert unknown.status_code == 404 and error_of(unknown)["code"] == "collection_not_found"
    finally:
        real.service.documents = None
        collections.close()


def error_of(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_hostile_and_wrong_requests_get_the_right_status_and_the_server_goes_on(real: Served) -> None:
    chat = {"model": model_id(real), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with raw(real.url) as http:
        rebound = http.post("/v1/chat/completions", json=chat, headers={"Host": "evil.example"})
        assert rebound.status_code == 403 and error_of(rebound)["code"] == "host_not_allowed"
        assert http.get("/health", headers={"Host": "evil.example:8765"}).status_code == 403
        other_site = http.post("/v1/chat/completions", json=chat, headers={"Origin": "https://evil.example"})
        assert other_site.status_code == 403
        assert not [h for h in other_site.headers if h.lower().startswith("access-control-")]
        listed = http.get("/v1/models", headers={"Origin": ORIGIN})
        assert listed.headers["access-control-allow-origin"] == ORIGIN
        assert "access-control-allow-credentials" not in listed.headers
        preflight = http.options("/v1/chat/completions", headers={"Origin": ORIGIN,
                                                                  "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "access-control-allow-origin" not in http.get("/v1/models").headers  # no Origin: no CORS headers
        malformed = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert malformed.status_code == 400 and error_of(malformed)["code"] == "invalid_json"
        wrong = http.post("/v1/chat/completions", json={**chat, "max_tokens": "many"})
        assert wrong.status_code == 400 and error_of(wrong)["param"] == "max_tokens"
        empty = http.post("/v1/chat/completions", json={**chat, "messages": []})
        assert empty.status_code == 400 and error_of(empty)["param"] == "messages"
        for url, words in (("data:image/png;base64,AAAA", "messages[0] image 1 is not an image"),
                           ("data:image/png;base64,%%%", "not valid base64"),
                           ("https://example.org/xray.png", "https URL refused"),
                           ("file:///etc/passwd", "file URL refused"),
                           (png_data_uri(), "cannot see images")):  # the 270M has no vision projector
            image = http.post("/v1/chat/completions", json={**chat, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]})
            assert image.status_code == 400 and words in error_of(image)["message"], url
        big = http.post("/v1/chat/completions", content=b"x" * (real.service.config.max_body_bytes + 1),
                        headers={"content-type": "application/json"})
        assert big.status_code == 413 and error_of(big)["code"] == "request_too_large"
        unknown = http.post("/v1/chat/completions", json={**chat, "model": "nope"})
        assert unknown.status_code == 404 and error_of(unknown)["code"] == "model_not_found"
        assert http.get("/v1/nothing-here").status_code == 404
        ignored = http.post("/v1/chat/completions", json={**chat, "some_future_field": {"x": 1}, "temperature": 0})
        assert ignored.status_code == 200 and ignored.json()["choices"][0]["message"]["role"] == "assistant"
        assert http.get("/health").json()["status"] == "ok"


def test_a_key_is_checked_from_either_header_and_health_stays_open(keyed: Served) -> None:
    chat = {"model": model_id(keyed), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with raw(keyed.url) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/v1/models").status_code == 401
        wrong = http.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {KEY}x"})
        assert wrong.status_code == 401 and error_of(wrong)["type"] == "authentication_error"
        assert http.post("/v1/chat/completions", json=chat, headers={"x-api-key": KEY}).status_code == 200
    assert client(keyed.url, KEY).chat.completions.create(model=model_id(keyed), max_tokens=2, messages=[
        {"role": "user", "content": "Hi"}]).choices[0].message.role == "assistant"


def test_unsafe_settings_are_refused_before_anything_listens() -> None:
    with pytest.raises(ServerConfigError, match="without an API key"):
        ServerConfig(host="0.0.0.0").check()
    ServerConfig(host="0.0.0.0", api_key=KEY).check()
    with pytest.raises(ServerConfigError, match="one origin"):
        ServerConfig(cors_origins=("*",)).check()
    # Bound to every address, the trusted names stay loopback ones (not '*', as in Jan's advisory).
    assert ServerConfig(host="0.0.0.0", api_key=KEY).allowed_hosts() == {"localhost", "127.0.0.1", "::1"}


# -- reasoning, history and the queue (scripted answers) --------------------------------------------

def test_reasoning_goes_in_its_own_field_whole_and_streamed(scripted: Served) -> None:
    reasoning, answer = script_reasoning(THINK_SCRIPT)
    whole = ask(scripted.url, "Fever and cough?", model=model_id(scripted))
    assert whole.choices[0].message.content == answer.strip()
    assert whole.choices[0].message.reasoning_content == reasoning.strip()  # type: ignore[attr-defined]
    content, streamed_reasoning, _ = streamed(scripted.url, "Fever and cough?", model=model_id(scripted))
    assert content == answer and streamed_reasoning == reasoning
    assert "<think>" not in content and "</think>" not in content


def test_earlier_reasoning_is_sent_back_only_when_the_setting_says_so(scripted: Served) -> None:
    messages = [{"role": "user", "content": "First?"},
                {"role": "assistant", "content": "Answer one.", "reasoning_content": "SECRET-REASONING"},
                {"role": "user", "content": "Second?"}]
    client(scripted.url).chat.completions.create(model=model_id(scripted), messages=messages)  # type: ignore[arg-type]
    assert "Answer one." in ScriptedEngine.prompts[-1] and "SECRET-REASONING" not in ScriptedEngine.prompts[-1]
    served = scripted.service.served
    assert served is not None
    scripted.service.use(served.entry, served.loaded, replace(served.settings, send_reasoning_back=True))
    try:
        client(scripted.url).chat.completions.create(model=model_id(scripted), messages=messages)  # type: ignore[arg-type]
        assert "SECRET-REASONING" in ScriptedEngine.prompts[-1]
        client(scripted.url).chat.completions.create(model=model_id(scripted), reasoning_effort="none",
                                                     messages=messages[:1])  # type: ignore[arg-type]
        assert ScriptedEngine.prompts[-1].endswith(THINK_OFF_PREFIX)
    finally:
        scripted.service.use(served.entry, served.loaded, served.settings)


def test_past_the_queue_a_request_gets_429_with_retry_after(scripted: Served) -> None:
    body = {"model": model_id(scripted), "messages": [{"role": "user", "content": "Slow?"}]}
    results: list[int] = []

    def post() -> None:
        with raw(scripted.url) as http:
            results.append(http.post("/v1/chat/completions", json=body).status_code)

    posters = [threading.Thread(target=post) for _ in range(2)]  # one answers, one waits (queue=1)
    for poster in posters:
        poster.start()
    try:
        ready = threading.Event()
        for _ in range(500):  # both admitted: polled on the service's own count, bounded
            if scripted.service.in_flight == 2:
                ready.set()
                break
            ready.wait(0.01)
        assert ready.is_set()
        with raw(scripted.url) as http:
            refused = http.post("/v1/chat/completions", json=body)
        assert refused.status_code == 429 and refused.headers["retry-after"].isdigit()
        assert error_of(refused)["type"] == "rate_limit_error"
    finally:
        for poster in posters:
            poster.join(60)
    assert results == [200, 200]


def test_the_server_keeps_no_conversation_and_logs_no_text(scripted: Served, history: History,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    before = len(history.chats())
    with caplog.at_level(logging.INFO, logger="medgemma_desktop.server"):
        ask(scripted.url, "A private question about my patient Zebedee?", model=model_id(scripted))
    assert len(history.chats()) == before
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "answered with" in logged and "Zebedee" not in logged and "influenza" not in logged


# -- concurrency and disconnects (real model) ---------------------------------------------------------

def test_eight_concurrent_streams_get_whole_answers_each_as_if_alone(real: Served) -> None:
    options = {"model": model_id(real), "temperature": 0.8, "seed": 7, "max_tokens": 16}
    alone = [streamed(real.url, q, **options)[0] for q in CROWD]
    together: dict[int, str] = {}

    def run(index: int) -> None:
        together[index] = streamed(real.url, CROWD[index], **options)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(CROWD))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert [together.get(i) for i in range(len(CROWD))] == alone
    assert len(set(alone)) == len(alone)  # eight different answers: none could stand in for another


def test_a_client_that_hangs_up_frees_the_engine_for_the_next(real: Served,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    body = {"model": model_id(real), "messages": [{"role": "user", "content": "Write a long essay on the heart."}],
            "stream": True, "max_tokens": 2000, "temperature": 0.7}
    with caplog.at_level(logging.INFO, logger="medgemma_desktop.server"):
        with raw(real.url) as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
            for number, _ in enumerate(response.iter_lines()):
                if number > 6:
                    break  # the client goes away mid-answer
        after = ask(real.url, QUESTIONS[4], model=model_id(real), temperature=0, max_tokens=4)
    assert after.choices[0].message.content is not None
    cancelled = [r.getMessage() for r in caplog.records if "cancelled" in r.getMessage()]
    assert len(cancelled) == 1
    generated = int(cancelled[0].split(" generated")[0].rsplit(" ", 1)[1])
    assert generated < 200  # stopped long before its 2000 tokens


# -- headless: `medgemma-desktop --serve` ---------------------------------------------------------------

def serve_child(*args: str, home: Path) -> subprocess.Popen[str]:
    """The entry point's code in a child with no display; it says at exit whether any Qt was imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["MEDGEMMA_HOME"] = str(home)
    code = ("import sys; from medgemma_desktop.cli import main; rc = main(sys.argv[1:]); "
            "print('qt imported' if any(m.startswith('PySide6') for m in sys.modules) else 'no qt', flush=True); "
            "sys.exit(rc)")
    return subprocess.Popen([sys.executable, "-c", code, "--serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def first_line(child: subprocess.Popen[str], timeout: float = 300) -> str:
    assert child.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            child.kill()
            pytest.fail("the server printed nothing")
    return child.stdout.readline().strip()


def test_serve_refuses_an_open_address_without_a_key(tmp_path: Path) -> None:
    child = serve_child("--host", "0.0.0.0", home=tmp_path)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 2 and "without an API key" in err and "Traceback" not in err


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_headless_answers_and_stops_cleanly_mid_stream(gemma_270m: Path, tmp_path: Path,
                                                             stop: signal.Signals) -> None:
    child = serve_child("--model", str(gemma_270m), "--port", "0", home=tmp_path)
    try:
        line = first_line(child)
        assert "no API key (loopback only)" in line, line
        url = re.search(r"(http://127\.0\.0\.1:\d+)/v1", line).group(1)  # type: ignore[union-attr]
        names = [m.id for m in client(url).models.list()]
        assert "gemma-3-270m-q4_k_m" in names or any(n.startswith("gemma-3-270m") for n in names)
        pieces = 0
        stream = client(url).chat.completions.create(model=names[0], max_tokens=2000, stream=True, messages=[
            {"role": "user", "content": "Write a long essay on the kidneys."}])
        with contextlib.suppress(httpx.HTTPError, openai.APIError):  # the server may close the stream first
            for _ in stream:
                pieces += 1
                if pieces == 5:
                    child.send_signal(stop)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "no qt" and "Traceback" not in err
    assert pieces < 300  # the answer stopped at the signal, not at its 2000 tokens


def test_with_save_history_a_conversation_becomes_a_chat(scripted: Served, tmp_path: Path) -> None:
    saved = History(tmp_path / "saved.sqlite3")
    service = ChatService(scripted.runtime, scripted.service.library, ServerConfig(port=0, save_history=True),
                          switch_models=False, save_to=saved)
    current = scripted.service.served
    assert current is not None
    service.use(current.entry, current.loaded, current.settings)
    thread = ServerThread(service)
    try:
        ask(thread.url, "Fever and cough for two days?", model=current.id)
    finally:
        thread.stop()
    [chat] = saved.chats()
    assert chat.title == "Server: Fever and cough for two days?"
    user, model = saved.messages(chat.id)
    reasoning, answer = script_reasoning(THINK_SCRIPT)
    assert (user.role, user.text) == ("user", "Fever and cough for two days?")
    assert model.role == "model" and model.text == answer and model.reasoning == reasoning
    saved.close()
