"""Decode speed of the engine's streaming path against a bare llama.cpp loop, same file, same process.

    .venv/bin/python -m tests.bench.bench_engine [--model PATH] [--tokens 128] [--rounds 3]

Target: engine / bare >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import llama_cpp
import numpy as np

from medgemma_desktop.engine import Engine
from medgemma_desktop.settings import LoadParams, SamplingParams
from medgemma_models import store
from medgemma_models.prompt import Prompt, PromptSegment

# A completion prompt on which the base model writes on without ending its turn early.
PROMPT = Prompt([PromptSegment("<bos>", marker=True),
                 PromptSegment("Chapter 3. Heart failure\n\nHeart failure is a clinical syndrome in which")])


def bare_loop(llm: llama_cpp.Llama, tokens: list[int], n: int) -> float:
    """Tokens per second of eval + argmax, nothing else."""
    llm.reset()
    llm.eval(tokens)
    n_vocab = llm.n_vocab()
    start = time.perf_counter()
    for _ in range(n):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        llm.eval([int(np.argmax(logits))])
    return n / (time.perf_counter() - start)


def engine_path(engine: Engine, n: int) -> float:
    assert engine.llm is not None
    engine.llm.reset()
    settings = SamplingParams(temperature=0.0, top_k=1, top_p=1.0, max_tokens=n)
    list(engine.stream(PROMPT, settings))  # the figures come from the engine once the stream ends
    stats = engine.last_stats
    assert stats is not None
    if stats.generated_tokens < n:
        raise SystemExit(f"the model ended after {stats.generated_tokens} tokens; use a longer-running prompt")
    return stats.decode_tok_per_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    path = args.model or store.default_model()
    engine = Engine()
    engine.load(path, LoadParams(n_ctx=1024, gpu="cpu"))
    tokens = engine.tokenize(PROMPT)
    bare, ours = [], []
    engine_path(engine, 8)  # warm-up
    for _ in range(args.rounds):
        bare.append(bare_loop(engine.llm, tokens, args.tokens))
        ours.append(engine_path(engine, args.tokens))
    result = {
        "model": path.name,
        "tokens": args.tokens,
        "bare_tok_per_s": round(statistics.median(bare), 2),
        "engine_tok_per_s": round(statistics.median(ours), 2),
    }
    result["ratio"] = round(result["engine_tok_per_s"] / result["bare_tok_per_s"], 3)
    result["target"] = ">= 0.95"
    if args.json:
        print(json.dumps(result))
    else:
        print(f"engine decode: {result['engine_tok_per_s']} tok/s, bare llama.cpp loop: {result['bare_tok_per_s']} tok/s, "
              f"ratio {result['ratio']} (target {result['target']}) over {args.tokens} tokens, median of {args.rounds}")
    engine.close()


if __name__ == "__main__":
    main()
