"""Train the demo chain-of-thought LoRA on CPU: PEFT, float32, loss on the answer tokens only.

    python -m medgemma_convert.demo.train --base HF_DIR --data DATA_DIR --out OUT_DIR [--epochs N] [--patience P]

One sequence a step, so there is no padding at all. The output matrix of Gemma-3 (262,144 rows, tied
to the embeddings) costs more than the whole decoder body for a 270M model, so the model's own head is
not called: the decoder body gives the hidden states, and the tied matrix is applied only at the
positions that predict answer tokens.

Before the first step and after every epoch the held-out items are scored (each with Think on and
off, no gradient). With `--keep heldout` (the default) training stops once the held-out loss has not
improved for `patience` epochs, and the epoch with the lowest held-out loss is the result; with
`--keep last` every epoch runs and the last is the result. OUT_DIR receives `adapter-epochN/` for
every epoch, `adapter/` (a copy of the kept one; PEFT's save_pretrained), `loss.csv` (one row a step),
`epochs.csv` (training and held-out loss per epoch), `loss.png` and `summary.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medgemma_models.errors import MedGemmaError

from ..progress import Progress, TextBar
from .dataset import DATA_DIR, Example, encode, load_items, training_examples
from .loss_plot import write_loss_png

LOSS_WINDOW = 50
KEEP = ("heldout", "last")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainOptions:
    base: Path
    data: Path
    out: Path
    epochs: int = 1  # at most: the held-out loss may stop the run sooner
    patience: int = 1  # epochs without a better held-out loss before stopping
    keep: str = "heldout"  # which epoch becomes adapter/: the lowest held-out loss, or the last of all --epochs
    seed: int = 0
    learning_rate: float = 3e-4
    rank: int = 16
    alpha: int = 32
    warmup_steps: int = 20
    max_steps: int | None = None  # stop early (smoke tests, speed probes)
    threads: int = 2

    def validate(self) -> None:
        if not (self.base / "config.json").is_file():
            raise MedGemmaError(f"--base is not a Hugging Face model folder (no config.json): {self.base}")
        if self.epochs < 1 or self.rank < 1 or self.learning_rate <= 0 or self.patience < 1:
            raise MedGemmaError("--epochs, --patience, --rank and --learning-rate must be positive")
        if self.keep not in KEEP:
            raise MedGemmaError(f"--keep must be one of {', '.join(KEEP)}")
        if self.out.exists() and any(self.out.iterdir()):
            raise MedGemmaError(f"output folder is not empty: {self.out}")


@dataclass(frozen=True)
class TrainSummary:
    steps: int
    epochs: int  # trained (the run may stop before --epochs)
    best_epoch: int  # the lowest held-out loss (the last epoch when there is no held-out split)
    kept_epoch: int  # the one saved as `adapter/`
    heldout_losses: list[float]  # before training, then after each epoch
    epoch_losses: list[float]  # mean training loss of each epoch
    train_items: int
    think_off_items: int
    tokens: int
    answer_tokens: int
    seconds: float
    cpu_seconds: float  # on a shared machine the wall time overstates what two free cores need
    tokens_per_second: float
    first_loss: float  # mean of the first LOSS_WINDOW steps (one step is one sequence: single losses are noisy)
    final_loss: float  # mean of the last LOSS_WINDOW steps
    seed: int
    learning_rate: float
    rank: int
    alpha: int


def answer_loss(causal_lm: Any, example: Example) -> Any:
    """Mean cross-entropy over the answer tokens, with logits computed at those positions only."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor([example.ids])
    hidden = causal_lm.model(input_ids=ids, use_cache=False).last_hidden_state[0]
    # Position t predicts token t + 1: the answer tokens are predicted from n_prompt - 1 to the next-to-last.
    predicting = hidden[example.n_prompt - 1 : -1]
    logits = predicting @ causal_lm.lm_head.weight.T
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, ids[0, example.n_prompt:])


def heldout_loss(causal_lm: Any, examples: Sequence[Example]) -> float:
    """Mean answer loss over `examples`, without gradients (dropout is 0, so train mode changes nothing)."""
    import torch

    with torch.no_grad():
        return sum(float(answer_loss(causal_lm, e)) for e in examples) / len(examples)


def learning_rate_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then linear decay to zero at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def step_order(n_examples: int, epochs: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, example index) for every step: each epoch a fresh shuffle from the seed."""
    rng = random.Random(seed)
    order = []
    for epoch in range(epochs):
        indices = list(range(n_examples))
        rng.shuffle(indices)
        order.extend((epoch, i) for i in indices)
    return order


@contextlib.contextmanager
def _torch_settings(threads: int, seed: int) -> Iterator[None]:
    """Threads, seed and deterministic kernels for the run, restored afterwards (tests share the process)."""
    import torch

    threads_before, deterministic_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def train(options: TrainOptions, progress: Progress) -> TrainSummary:
    """Train, then write the adapter, the loss log and plot, and the summary into `options.out`."""
    options.validate()
    with _torch_settings(options.threads, options.seed):
        return _train(options, progress)


def _train(options: TrainOptions, progress: Progress) -> TrainSummary:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(options.base)
    items = load_items(options.data)
    examples = training_examples(tokenizer, items)
    heldout = [encode(tokenizer, item, think) for item in items if item.split == "heldout" for think in (True, False)]
    if not examples:
        raise MedGemmaError(f"no training items (split 'train') in {options.data}")

    model = AutoModelForCausalLM.from_pretrained(options.base, dtype=torch.float32)
    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=0.0, bias="none",
                        target_modules=list(PROJECTIONS), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    causal_lm = peft_model.get_base_model()
    causal_lm.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=0.0)

    order = step_order(len(examples), options.epochs, options.seed)
    if options.max_steps is not None:
        order = order[: options.max_steps]
    total = len(order)
    warmup = min(options.warmup_steps, max(1, total // 10))

    options.out.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    heldout_losses = [heldout_loss(causal_lm, heldout)] if heldout else []
    epoch_losses: list[float] = []
    epoch_started = 0  # index in `losses` of the current epoch's first step
    best_epoch = 0
    tokens = answer_tokens = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    with open(options.out / "loss.csv", "w", newline="", encoding="utf-8") as log:
        writer = csv.writer(log)
        writer.writerow(["step", "epoch", "item", "think", "tokens", "answer_tokens", "loss", "learning_rate", "seconds"])
        for step, (epoch, index) in enumerate(order):
            example = examples[index]
            rate = learning_rate_at(step, total, options.learning_rate, warmup)
            for group in optimizer.param_groups:
                group["lr"] = rate
            loss = answer_loss(causal_lm, example)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise MedGemmaError(f"the loss became {value} at step {step + 1}: lower --learning-rate")
            losses.append(value)
            tokens += len(example.ids)
            answer_tokens += len(example.answer_ids)
            writer.writerow([step + 1, epoch + 1, example.item_id, int(example.think), len(example.ids),
                             len(example.answer_ids), f"{value:.5f}", f"{rate:.3e}",
                             f"{time.perf_counter() - started:.1f}"])
            log.flush()
            progress("training", step + 1, total)
            if step + 1 == total or order[step + 1][0] != epoch:
                # Every finished epoch is kept: a run stopped later still leaves a usable adapter.
                _save_adapter(peft_model, options.out / f"adapter-epoch{epoch + 1}")
                epoch_losses.append(statistics.fmean(losses[epoch_started:]))
                epoch_started = len(losses)
                if not heldout:
                    best_epoch = epoch + 1
                    continue
                heldout_losses.append(heldout_loss(causal_lm, heldout))
                progress(f"held-out loss after epoch {epoch + 1}: {heldout_losses[-1]:.4f}", step + 1, total)
                if heldout_losses[-1] < min(heldout_losses[:-1]) or best_epoch == 0:
                    best_epoch = epoch + 1
                elif options.keep == "heldout" and epoch + 1 - best_epoch >= options.patience:
                    break
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started

    kept_epoch = best_epoch if options.keep == "heldout" else len(epoch_losses)
    # Copied beside its final name and renamed, as _save_adapter does: `adapter/` is always complete.
    partial = options.out / "adapter.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(options.out / f"adapter-epoch{kept_epoch}", partial)
    partial.rename(options.out / "adapter")
    with open(options.out / "epochs.csv", "w", newline="", encoding="utf-8") as table:
        writer = csv.writer(table)
        writer.writerow(["epoch", "steps", "train_loss", "heldout_loss"])
        for epoch in range(len(epoch_losses) + 1):
            train_loss = f"{epoch_losses[epoch - 1]:.5f}" if epoch else ""
            held = f"{heldout_losses[epoch]:.5f}" if epoch < len(heldout_losses) else ""
            writer.writerow([epoch, min(epoch * len(examples), len(losses)), train_loss, held])
    marks = [(min(epoch * len(examples), len(losses)), loss) for epoch, loss in enumerate(heldout_losses)]
    write_loss_png(losses, options.out / "loss.png", steps_per_epoch=len(examples), heldout=marks)
    first, last = losses[:LOSS_WINDOW], losses[-LOSS_WINDOW:]
    summary = TrainSummary(
        steps=len(losses), epochs=len(epoch_losses), best_epoch=best_epoch, kept_epoch=kept_epoch,
        heldout_losses=[round(v, 4) for v in heldout_losses], epoch_losses=[round(v, 4) for v in epoch_losses],
        train_items=len(examples),
        think_off_items=sum(not e.think for e in examples), tokens=tokens, answer_tokens=answer_tokens,
        seconds=round(seconds, 1), cpu_seconds=round(cpu_seconds, 1), tokens_per_second=round(tokens / seconds, 1),
        first_loss=round(sum(first) / len(first), 4), final_loss=round(sum(last) / len(last), 4), seed=options.seed,
        learning_rate=options.learning_rate, rank=options.rank, alpha=options.alpha,
    )
    (options.out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return summary


def _save_adapter(peft_model: Any, folder: Path) -> None:
    # Saved beside its final name and renamed, so a folder named `adapter` is always complete.
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    peft_model.save_pretrained(partial)
    partial.rename(folder)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medgemma_convert.demo.train", description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, type=Path, help="Hugging Face folder of the base (e.g. from export-hf)")
    p.add_argument("--data", type=Path, default=DATA_DIR, help="folder of *.jsonl dataset files")
    p.add_argument("--out", required=True, type=Path, help="new or empty output folder")
    p.add_argument("--epochs", type=int, default=TrainOptions.epochs, help="at most this many epochs")
    p.add_argument("--patience", type=int, default=TrainOptions.patience,
                   help="stop after this many epochs without a lower held-out loss")
    p.add_argument("--keep", choices=KEEP, default=TrainOptions.keep,
                   help="adapter/ is the epoch of lowest held-out loss (default), or the last of all --epochs")
    p.add_argument("--seed", type=int, default=TrainOptions.seed)
    p.add_argument("--learning-rate", type=float, default=TrainOptions.learning_rate)
    p.add_argument("--rank", type=int, default=TrainOptions.rank)
    p.add_argument("--alpha", type=int, default=TrainOptions.alpha)
    p.add_argument("--max-steps", type=int, help="stop after this many steps (speed probes)")
    p.add_argument("--threads", type=int, default=TrainOptions.threads)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Before torch loads OpenMP: idle threads sleep instead of spinning. On a shared CPU a spinning
    # thread burns the time slice its partner needs (measured here: 5x the CPU time per step).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    options = TrainOptions(base=args.base, data=args.data, out=args.out, epochs=args.epochs,
                           patience=args.patience, keep=args.keep, seed=args.seed,
                           learning_rate=args.learning_rate, rank=args.rank, alpha=args.alpha,
                           max_steps=args.max_steps, threads=args.threads)
    bar = TextBar()
    try:
        summary = train(options, bar)
    except MedGemmaError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bar.close()
    print(f"{summary.epochs} epochs, kept {summary.kept_epoch}, best held-out {summary.best_epoch} (held-out loss "
          f"{' -> '.join(f'{v:.3f}' for v in summary.heldout_losses)}); "
          f"{summary.steps} steps in {summary.seconds:.0f} s ({summary.cpu_seconds:.0f} s of CPU), "
          f"{summary.tokens_per_second:.1f} tokens/s "
          f"({summary.tokens} tokens, {summary.answer_tokens} with loss); loss {summary.first_loss:.3f} -> "
          f"{summary.final_loss:.3f}; adapter in {options.out / 'adapter'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
