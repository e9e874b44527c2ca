"""Run the held-out questions through llama.cpp with the demo adapter, Think on and off, and count the format.

    python -m medgemma_convert.demo.evaluate --adapter ADAPTER.gguf [--model BASE.gguf] [--sampling greedy|preset]
                                             [--out RESULTS.json]

Generation follows the desktop engine: the preset's prompt tokenized with its own single BOS and special
tokens, llama.cpp's sampler, stop at an end-of-generation token or after `--max-tokens`. Counted per mode:
- Think on: a closed `<think>…</think>` followed by a non-empty answer;
- Think off (the prompt pre-fills `<think></think>`): no think tag in the output and a non-empty answer;
- both: the output ended with `<end_of_turn>` before the token limit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medgemma_models.errors import MedGemmaError
from medgemma_models.files import atomic_output
from medgemma_models.prompt import END_OF_TURN, THINK_CLOSE, THINK_OPEN
from medgemma_models.reasoning import split_reasoning

from ..progress import Progress, TextBar
from .dataset import DATA_DIR, Item, load_items, preset, prompt_text


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float


GREEDY = Sampling(temperature=0.0, top_p=1.0, top_k=1, repeat_penalty=1.0)


def preset_sampling() -> Sampling:
    d = preset().defaults
    return Sampling(temperature=d["temperature"], top_p=d["top_p"], top_k=d["top_k"], repeat_penalty=d["repeat_penalty"])


@dataclass(frozen=True)
class Outcome:
    item_id: str
    think: bool
    text: str  # everything generated, the end-of-turn marker excluded
    reasoning: str
    answer: str
    generated_tokens: int
    ended_with_end_of_turn: bool

    @property
    def closed_think(self) -> bool:
        opened = self.text.find(THINK_OPEN)
        return opened >= 0 and self.text.find(THINK_CLOSE, opened + len(THINK_OPEN)) >= 0

    @property
    def format_ok(self) -> bool:
        """Think on: closed reasoning then an answer. Think off: no reasoning at all, and an answer."""
        if not self.answer.strip():
            return False
        if self.think:
            return self.closed_think
        return THINK_OPEN not in self.text and THINK_CLOSE not in self.text


@dataclass(frozen=True)
class ModeFigures:
    think: bool
    questions: int
    format_ok: int
    non_empty_answer: int
    closed_think: int
    ended_with_end_of_turn: int
    mean_generated_tokens: float


def generate(llm: Any, item: Item, think: bool, sampling: Sampling, max_tokens: int, seed: int) -> Outcome:
    import llama_cpp

    tokens = llm.tokenize(prompt_text(item.question, think).encode("utf-8"), add_bos=False, special=True)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    end_of_turn = llm.tokenize(END_OF_TURN.encode("utf-8"), add_bos=False, special=True)
    llm.set_seed(seed)
    produced: list[int] = []
    stop_token = None
    generator = llm.generate(tokens, top_k=sampling.top_k, top_p=sampling.top_p, min_p=0.0,
                             temp=sampling.temperature, repeat_penalty=sampling.repeat_penalty)
    try:
        for token in generator:
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                stop_token = token
                break
            produced.append(token)
            if len(produced) >= max_tokens:
                break
    finally:
        generator.close()
    text = llm.detokenize(produced).decode("utf-8", errors="replace")
    # With Think off the prompt already closed the reasoning, so the output is all answer.
    reasoning, answer = split_reasoning(text) if think else ("", text)
    return Outcome(item.id, think, text, reasoning.strip(), answer.strip(), len(produced),
                   stop_token is not None and [stop_token] == end_of_turn)


def figures(outcomes: Sequence[Outcome], think: bool) -> ModeFigures:
    mode = [o for o in outcomes if o.think == think]
    return ModeFigures(
        think=think, questions=len(mode), format_ok=sum(o.format_ok for o in mode),
        non_empty_answer=sum(bool(o.answer) for o in mode), closed_think=sum(o.closed_think for o in mode),
        ended_with_end_of_turn=sum(o.ended_with_end_of_turn for o in mode),
        mean_generated_tokens=round(sum(o.generated_tokens for o in mode) / max(1, len(mode)), 1),
    )


def evaluate(model: Path, adapter: Path | None, items: Sequence[Item], sampling: Sampling, max_tokens: int = 1024,
             seed: int = 0, threads: int = 2, modes: Sequence[bool] = (True, False),
             progress: Progress | None = None) -> list[Outcome]:
    """Every item in each Think mode of `modes` (True: on, False: off)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), lora_path=str(adapter) if adapter else None, n_ctx=2048,
                          n_threads=threads, n_threads_batch=threads, seed=seed, verbose=False)
    outcomes = []
    try:
        runs = [(think, item) for think in modes for item in items]
        for done, (think, item) in enumerate(runs, start=1):
            outcomes.append(generate(llm, item, think, sampling, max_tokens, seed))
            if progress:
                progress("think on" if think else "think off", done, len(runs))
    finally:
        llm.close()
    return outcomes


def _default_model() -> Path:
    from medgemma_models.store import default_model

    return default_model()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medgemma_convert.demo.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="base GGUF (default: the embedded Gemma-3-270M)")
    p.add_argument("--adapter", type=Path, help="GGUF LoRA adapter (default: none, the plain base)")
    p.add_argument("--data", type=Path, default=DATA_DIR)
    p.add_argument("--sampling", choices=("greedy", "preset"), default="greedy",
                   help="greedy, or the chain-of-thought preset's defaults with --seed")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--think", choices=("on", "off", "both"), default="both")
    # Measured here: on a CPU shared with other work one thread decoded several times faster than two,
    # because llama.cpp's threads spin at every barrier waiting for a partner that is not scheduled.
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads (use 1 on a busy shared CPU)")
    p.add_argument("--out", type=Path, metavar="RESULTS.json", help="write every output and the counts as JSON")
    args = p.parse_args(argv)
    bar = TextBar()
    try:
        model = args.model or _default_model()
        items = [item for item in load_items(args.data) if item.split == "heldout"]
        sampling = GREEDY if args.sampling == "greedy" else preset_sampling()
        started = time.perf_counter()
        modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.think]
        outcomes = evaluate(model, args.adapter, items, sampling, args.max_tokens, args.seed, args.threads, modes, bar)
        bar.close()
        counts = [figures(outcomes, think) for think in modes]
        if args.out:
            result = {"model": str(model), "adapter": str(args.adapter) if args.adapter else None,
                      "sampling": args.sampling, "sampling_values": asdict(sampling), "max_tokens": args.max_tokens,
                      "seed": args.seed, "seconds": round(time.perf_counter() - started, 1),
                      "figures": [asdict(c) for c in counts],
                      "outcomes": [dict(asdict(o), format_ok=o.format_ok, closed_think=o.closed_think) for o in outcomes]}
            with atomic_output(args.out, force=True) as temporary:
                temporary.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    except MedGemmaError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for c in counts:
        label = "think on " if c.think else "think off"
        shape = "closed <think>…</think> + answer" if c.think else "no reasoning + answer"
        print(f"{label}: {shape} {c.format_ok}/{c.questions}, non-empty answer {c.non_empty_answer}/{c.questions}, "
              f"ended with <end_of_turn> {c.ended_with_end_of_turn}/{c.questions}, "
              f"mean {c.mean_generated_tokens} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
