"""The demo trainer on the tiny models: its answer-only loss, a short run, the saved adapter and the loss plot."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import pytest

from medgemma_convert.demo.dataset import Item, encode
from medgemma_convert.demo.train import PROJECTIONS, TrainOptions, answer_loss, train
from medgemma_convert.progress import no_progress

ITEMS = [
    Item("t1", "cardiology", "What lowers blood pressure?", "Diuretics reduce volume; ACE inhibitors relax vessels.",
         "A thiazide or an ACE inhibitor.", "train"),
    Item("t2", "endocrinology", "Which drug starts type 2 diabetes treatment?", "Metformin is cheap and safe.",
         "Metformin.", "heldout"),
]


def write_data(folder: Path, items: list[Item]) -> Path:
    folder.mkdir(parents=True)
    lines = [json.dumps(item.__dict__) for item in items]
    (folder / "part.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def losses_of(out: Path) -> list[float]:
    with open(out / "loss.csv", newline="", encoding="utf-8") as log:
        return [float(row["loss"]) for row in csv.DictReader(log)]


@pytest.mark.parametrize("arch", ["gemma3", "gemma2"])  # gemma2 has a final logit soft-cap
@pytest.mark.parametrize("think", [True, False])
def test_answer_loss_is_the_models_own_loss_with_the_prompt_masked(tiny, arch: str, think: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.base(arch))
    model = AutoModelForCausalLM.from_pretrained(tiny.base(arch), dtype=torch.float32)
    example = encode(tokenizer, ITEMS[0], think)
    ids = torch.tensor([example.ids])
    labels = ids.clone()
    labels[0, : example.n_prompt] = -100
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels).loss
        got = answer_loss(model, example)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_short_run_lowers_the_loss_and_saves_a_peft_adapter(tiny, tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "out"
    options = TrainOptions(base=tiny.base("gemma3"), data=write_data(tmp_path / "data", ITEMS), out=out, epochs=3,
                           learning_rate=5e-3, warmup_steps=1)
    summary = train(options, no_progress)

    losses = losses_of(out)
    assert summary.steps == len(losses) == 3  # one training item, three epochs; the held-out item is not trained on
    assert losses[2] < losses[1] < losses[0]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (16, 32, sorted(PROJECTIONS))
    with safe_open(out / "adapter" / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
        assert len(names) == 2 * len(PROJECTIONS) * 6  # lora_A and lora_B of seven projections in six layers
        assert any(weights.get_tensor(n).abs().max() > 0 for n in names if "lora_B" in n)
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    idat = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[idat - 4: idat])
    assert len(zlib.decompress(png[idat + 4: idat + 4 + length])) == height * (1 + 3 * width)
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_the_same_seed_gives_the_same_run(tiny, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data", [ITEMS[0], Item("t3", "renal", "What is dangerous in kidney failure?",
                                                         "Potassium rises.", "Hyperkalaemia.", "train")])
    runs = []
    for name in ("a", "b"):
        train(TrainOptions(base=tiny.base("gemma3"), data=data, out=tmp_path / name, epochs=2, seed=7,
                           learning_rate=5e-3, warmup_steps=1), no_progress)
        runs.append(losses_of(tmp_path / name))
    assert runs[0] == runs[1]
    assert len(runs[0]) == 4


def test_a_folder_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    from medgemma_models.errors import MedGemmaError

    with pytest.raises(MedGemmaError, match="no config.json"):
        train(TrainOptions(base=tmp_path, data=tmp_path, out=tmp_path / "out"), no_progress)


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


@pytest.mark.parametrize("keep", ["heldout", "last"])
def test_the_held_out_loss_picks_the_adapter_or_the_last_epoch_is_kept(tiny, tmp_path: Path, keep: str) -> None:
    import torch

    out = tmp_path / "out"
    # A learning rate this high overfits the one training item at once: the held-out loss rises after epoch 1.
    options = TrainOptions(base=tiny.base("gemma3"), data=write_data(tmp_path / "data", ITEMS), out=out, epochs=4,
                           learning_rate=5e-2, warmup_steps=1, patience=2, keep=keep)
    summary = train(options, no_progress)

    held = summary.heldout_losses
    assert len(held) == summary.epochs + 1  # before training, then after every epoch
    assert summary.best_epoch == 1 + held[1:].index(min(held[1:]))
    if keep == "heldout":
        # Stopped once `patience` epochs went by without a lower held-out loss, or ran all four.
        assert summary.epochs == 4 or summary.epochs - summary.best_epoch == 2
        assert summary.kept_epoch == summary.best_epoch
    else:
        assert (summary.epochs, summary.kept_epoch) == (4, 4)
    kept, other = adapter_weights(out / "adapter"), adapter_weights(out / f"adapter-epoch{summary.kept_epoch}")
    assert kept.keys() == other.keys() and all(torch.equal(kept[k], other[k]) for k in kept)
    rows = (out / "epochs.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "epoch,steps,train_loss,heldout_loss" and len(rows) == summary.epochs + 2
