"""The demo adapter's questions through `--ask`'s own path, Think on and off: the format and the key facts.

    python -m tests.bench.heldout_demo [--adapter ADAPTER.gguf] [--model BASE.gguf] [--sampling preset|greedy]
                                       [--split heldout|train|both] [--every N] [--seed S] [--out RESULTS.json]

(A measurement to report, like the benchmarks beside it, so it lives with the tests, which may import both
halves: it reads the dataset of `medgemma_convert.demo` and asks through `medgemma_desktop.ask`.)

Generation is the desktop app's own headless path (`medgemma_desktop.ask.Asker`, what
`medgemma-desktop --ask` runs): the preset's prompt, the engine with the adapter attached at run time,
the reasoning splitter; stop at an end-of-generation token or after `--max-tokens`. Counted per mode:
- Think on: a closed `<think>…</think>` followed by a non-empty answer;
- Think off (the prompt pre-fills `<think></think>`): no think tag in the output and a non-empty answer;
- both: the output ended with `<end_of_turn>` before the token limit;
- key-fact recall: the share of each item's `key_facts` its answer states (`dataset.key_fact_recall`),
  averaged over the items, for the training items and the held-out items apart.
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
from medgemma_models.prompt import THINK_CLOSE, THINK_OPEN
from medgemma_models.store import demo_adapter

from medgemma_convert.demo.dataset import DATA_DIR, Item, key_fact_recall, load_items, preset
from medgemma_convert.progress import Progress, TextBar


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
    split: str
    think: bool
    text: str  # everything generated, the end-of-turn marker excluded
    reasoning: str
    answer: str
    generated_tokens: int
    ended_with_end_of_turn: bool
    key_fact_recall: float | None  # None: the item has no key facts

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
    split: str
    think: bool
    questions: int
    format_ok: int
    non_empty_answer: int
    closed_think: int
    ended_with_end_of_turn: int
    mean_generated_tokens: float
    key_fact_recall: float | None  # mean over the items with key facts
    all_key_facts: int  # items whose answer states every key fact


def outcome(asker: Any, item: Item, think: bool, sampling: Sampling, max_tokens: int, seed: int) -> Outcome:
    """One question through the app's own path (`medgemma-desktop --ask`): preset, prompt, engine, splitter."""
    result = asker.ask(item.question, think, seed=seed, preset=preset().name, temperature=sampling.temperature,
                       top_p=sampling.top_p, top_k=sampling.top_k, repeat_penalty=sampling.repeat_penalty,
                       max_tokens=max_tokens)
    recall = key_fact_recall(item, result.answer) if item.key_facts else None
    return Outcome(item.id, item.split, think, result.text, result.reasoning, result.answer, result.generated_tokens,
                   result.finish_reason == "stop", recall)


def figures(outcomes: Sequence[Outcome], think: bool, split: str) -> ModeFigures:
    mode = [o for o in outcomes if o.think == think and o.split == split]
    recalls = [o.key_fact_recall for o in mode if o.key_fact_recall is not None]
    return ModeFigures(
        split=split, think=think, questions=len(mode), format_ok=sum(o.format_ok for o in mode),
        non_empty_answer=sum(bool(o.answer) for o in mode), closed_think=sum(o.closed_think for o in mode),
        ended_with_end_of_turn=sum(o.ended_with_end_of_turn for o in mode),
        mean_generated_tokens=round(sum(o.generated_tokens for o in mode) / max(1, len(mode)), 1),
        key_fact_recall=round(sum(recalls) / len(recalls), 3) if recalls else None,
        all_key_facts=sum(r == 1.0 for r in recalls),
    )


def chosen_items(items: Sequence[Item], split: str, every: int) -> list[Item]:
    """The held-out items, the training items (every `every`-th, in file order), or both."""
    heldout = [item for item in items if item.split == "heldout"]
    train = [item for item in items if item.split == "train"][::every]
    return {"heldout": heldout, "train": train, "both": train + heldout}[split]


def evaluate(model: Path, adapter: Path | None, items: Sequence[Item], sampling: Sampling, max_tokens: int = 1024,
             seed: int = 0, threads: int = 2, modes: Sequence[bool] = (True, False),
             progress: Progress | None = None) -> list[Outcome]:
    """Every item in each Think mode of `modes` (True: on, False: off)."""
    # The desktop app's headless path, so the figures are what a user of the app gets.
    from medgemma_desktop.ask import Asker
    from medgemma_desktop.generation import AdapterUse
    from medgemma_desktop.settings import LoadSettings

    outcomes = []
    adapters = [AdapterUse(adapter, 1.0)] if adapter else []
    with Asker(model, adapters, LoadSettings(n_ctx=2048, threads=threads, gpu="cpu")) as asker:
        runs = [(think, item) for think in modes for item in items]
        for done, (think, item) in enumerate(runs, start=1):
            outcomes.append(outcome(asker, item, think, sampling, max_tokens, seed))
            if progress:
                progress("think on" if think else "think off", done, len(runs))
    return outcomes


def _default_model() -> Path:
    from medgemma_models.store import default_model

    return default_model()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.heldout_demo", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="base GGUF (default: the embedded Gemma-3-270M)")
    p.add_argument("--adapter", type=Path, help="GGUF LoRA adapter (default: the shipped demo adapter)")
    p.add_argument("--no-adapter", action="store_true", help="the plain base, for comparison")
    p.add_argument("--data", type=Path, default=DATA_DIR)
    p.add_argument("--sampling", choices=("preset", "greedy"), default="preset",
                   help="greedy, or the chain-of-thought preset's defaults with --seed")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--think", choices=("on", "off", "both"), default="both")
    p.add_argument("--split", choices=("heldout", "train", "both"), default="heldout",
                   help="the held-out items, the training items, or both (figures apart)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="only every N-th training item")
    # Measured here: on a CPU shared with other work one thread decoded several times faster than two,
    # because llama.cpp's threads spin at every barrier waiting for a partner that is not scheduled.
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads (use 1 on a busy shared CPU)")
    p.add_argument("--out", type=Path, metavar="RESULTS.json", help="write every output and the counts as JSON")
    args = p.parse_args(argv)
    bar = TextBar()
    try:
        model = args.model or _default_model()
        if args.adapter is None and not args.no_adapter:
            args.adapter = demo_adapter()
        items = chosen_items(load_items(args.data), args.split, max(1, args.every))
        sampling = GREEDY if args.sampling == "greedy" else preset_sampling()
        started = time.perf_counter()
        modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.think]
        outcomes = evaluate(model, args.adapter, items, sampling, args.max_tokens, args.seed, args.threads, modes, bar)
        bar.close()
        splits = [split for split in ("train", "heldout") if any(item.split == split for item in items)]
        counts = [figures(outcomes, think, split) for split in splits for think in modes]
        if args.out:
            result = {"model": str(model), "adapter": str(args.adapter) if args.adapter else None,
                      "sampling": args.sampling, "sampling_values": asdict(sampling), "max_tokens": args.max_tokens,
                      "seed": args.seed, "split": args.split, "every": args.every, "seconds": round(time.perf_counter() - started, 1),
                      "figures": [asdict(c) for c in counts],
                      "outcomes": [dict(asdict(o), format_ok=o.format_ok, closed_think=o.closed_think) for o in outcomes]}
            with atomic_output(args.out, force=True) as temporary:
                temporary.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    except MedGemmaError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for c in counts:
        label = f"{c.split:7} " + ("think on " if c.think else "think off")
        shape = "closed <think>…</think> + answer" if c.think else "no reasoning + answer"
        print(f"{label}: {shape} {c.format_ok}/{c.questions}, non-empty answer {c.non_empty_answer}/{c.questions}, "
              f"ended with <end_of_turn> {c.ended_with_end_of_turn}/{c.questions}, "
              f"mean {c.mean_generated_tokens} tokens"
              + (f", key-fact recall {c.key_fact_recall:.2f} (all facts in {c.all_key_facts})"
                 if c.key_fact_recall is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
