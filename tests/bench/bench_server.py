"""The local server against `--ask`'s direct path: same model, prompt, thread count and process.

    .venv/bin/python -m tests.bench.bench_server [--model PATH] [--tokens 64] [--rounds 5] [--clients 8]

- decode: server tok/s (measured by the client, from its first to its last streamed token) over the
  `--ask` path's (the engine's own figure). Target >= 0.95.
- time to first token added by the server: client-measured TTFT minus the direct path's, median.
  Target <= 15 ms.
- 8 concurrent streaming clients: their total tok/s over one client's, target >= 0.9; and the p95
  wait in the queue (request sent → first token, minus the median single-client TTFT).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import openai

from medgemma_desktop.ask import Asker
from medgemma_desktop.events import AnswerPiece, ReasoningPiece
from medgemma_desktop.generation import GenerationRequest
from medgemma_desktop.library import ModelEntry
from medgemma_desktop.server.config import ServerConfig
from medgemma_desktop.server.openai_api import ApiMessage
from medgemma_desktop.server.serve import ServerThread
from medgemma_desktop.server.service import ChatService
from medgemma_models import store

QUESTION = "Explain in detail how the heart pumps blood through the body."


def timed_stream(api: openai.OpenAI, model: str, tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, decode tok/s after it, tokens) of one streamed answer."""
    sent = time.perf_counter()
    first = last = None
    count = 0
    for chunk in api.chat.completions.create(model=model, max_tokens=tokens, temperature=0, stream=True,
                                             stream_options={"include_usage": True},
                                             messages=[{"role": "user", "content": QUESTION}]):
        if chunk.usage is not None:  # the engine's count: a token whose text is held back sends no chunk
            count = chunk.usage.completion_tokens
        elif chunk.choices and (chunk.choices[0].delta.content or getattr(chunk.choices[0].delta,
                                                                         "reasoning_content", None)):
            now = time.perf_counter()
            first = first or now
            last = now
    assert first is not None and last is not None
    decode = (count - 1) / (last - first) if last > first else 0.0
    return first - sent, decode, count


def direct_ttft(asker: Asker, tokens: int) -> float:
    """Seconds from submitting the question to the runtime (as `--ask` does) to its first token's text."""
    settings = asker.chat_settings
    request = GenerationRequest(settings.preset_spec, [ApiMessage("user", QUESTION)],
                                replace(settings.sampling_params(), temperature=0.0, max_tokens=tokens),
                                settings.system_prompt(), settings.think_enabled, False)
    first: list[float] = []

    def on_event(event: object) -> None:
        if isinstance(event, (AnswerPiece, ReasoningPiece)) and event.text and not first:
            first.append(time.perf_counter())

    assert asker.runtime is not None
    sent = time.perf_counter()
    asker.runtime.generate(request, on_event).wait()
    return first[0] - sent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    path = args.model or store.default_model()
    with Asker(path) as asker:
        assert asker.runtime is not None and asker.runtime.loaded is not None
        service = ChatService(asker.runtime, asker.library, ServerConfig(port=0, queue=64), switch_models=False)
        service.use(ModelEntry(path, asker.title, ""), asker.runtime.loaded, asker.chat_settings)
        server = ServerThread(service)
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=600,
                            http_client=httpx.Client(trust_env=False))
        model = service.served.id  # type: ignore[union-attr]
        direct_first, direct_decode, served_ttft, served_decode = [], [], [], []
        asker.ask(QUESTION, temperature=0, max_tokens=8)  # warm-up of both paths
        timed_stream(api, model, 8)
        for _ in range(args.rounds):
            direct_decode.append(asker.ask(QUESTION, temperature=0, max_tokens=args.tokens).decode_tok_per_s)
            direct_first.append(direct_ttft(asker, args.tokens))
            ttft, decode, _ = timed_stream(api, model, args.tokens)
            served_ttft.append(ttft)
            served_decode.append(decode)

        one_start = time.perf_counter()
        _, _, one_tokens = timed_stream(api, model, args.tokens)
        one_rate = one_tokens / (time.perf_counter() - one_start)
        waits: list[float] = []
        counts: list[int] = []

        def client() -> None:
            ttft, _, n = timed_stream(api, model, args.tokens)
            waits.append(ttft)
            counts.append(n)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        crowd_start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        crowd_rate = sum(counts) / (time.perf_counter() - crowd_start)
        server.stop()
    base_ttft = statistics.median(served_ttft)
    result = {
        "model": path.name, "tokens": args.tokens, "rounds": args.rounds,
        "ask_decode_tok_per_s": round(statistics.median(direct_decode), 2),
        "server_decode_tok_per_s": round(statistics.median(served_decode), 2),
        "added_ttft_ms": round(1000 * statistics.median(s - d for s, d in zip(served_ttft, direct_first)), 1),
        "one_client_tok_per_s": round(one_rate, 2), "crowd_tok_per_s": round(crowd_rate, 2),
        "queue_wait_p95_s": round(sorted(w - base_ttft for w in waits)[int(0.95 * (len(waits) - 1))], 2),
    }
    result["decode_ratio"] = round(result["server_decode_tok_per_s"] / result["ask_decode_tok_per_s"], 3)
    result["crowd_ratio"] = round(crowd_rate / one_rate, 3)
    if args.json:
        print(json.dumps(result))
        return
    print(f"server decode {result['server_decode_tok_per_s']} tok/s vs --ask {result['ask_decode_tok_per_s']}: "
          f"ratio {result['decode_ratio']} (target >= 0.95)")
    print(f"added time to first token: {result['added_ttft_ms']} ms median (target <= 15 ms)")
    print(f"{args.clients} concurrent clients: {result['crowd_tok_per_s']} tok/s total vs one client "
          f"{result['one_client_tok_per_s']}: ratio {result['crowd_ratio']} (target >= 0.9); "
          f"p95 wait in the queue {result['queue_wait_p95_s']} s")


if __name__ == "__main__":
    main()
