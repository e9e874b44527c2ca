"""reference.py: the streamed reference equals transformers' whole model with PEFT merged, and it runs
in a child process that the converter waits for, cancels and reports on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.support.tiny import VOCAB_SIZE, reference_logits

from medgemma_convert.reference import write_logits
from medgemma_convert.verify import default_eval_text, split_chunks, verify_outputs
from medgemma_models.errors import ConversionError

ADAPTER_SETS = {
    "none": [],
    "all": [("all", 1.0)],
    "rslora+patterns": [("rslora", 0.5), ("patterns", -1.0)],
}


def _whole_model_logits(base: Path, adapters: list[tuple[Path, float]], chunks: list[list[int]]) -> np.ndarray:
    """Each chunk's logits from the model loaded whole, adapters merged (all positions but the last)."""
    return np.concatenate([reference_logits(base, adapters, chunk)[:-1] for chunk in chunks])


@pytest.mark.parametrize("adapter_set", ADAPTER_SETS)
@pytest.mark.parametrize("arch", ["gemma3", "gemma2"])
def test_the_streamed_reference_matches_the_whole_model(tiny: Any, token_ids: list[int], tmp_path: Path, arch: str,
                                                        adapter_set: str) -> None:
    """Unmerged adapters over weights read module by module, the output matrix in slices of 100 rows
    (Gemma-2's soft-capping applied to each): the same logits as the whole model with PEFT's merge."""
    adapters = [(tiny.adapter(arch, name), scale) for name, scale in ADAPTER_SETS[adapter_set]]
    chunks = split_chunks(token_ids, 40)
    assert len(chunks) >= 2
    out = tmp_path / "reference.f32"
    assert write_logits(tiny.base(arch), adapters, chunks, VOCAB_SIZE, out, slice_rows=100) is True
    streamed = np.fromfile(out, np.float32).reshape(-1, VOCAB_SIZE)
    whole = _whole_model_logits(tiny.base(arch), adapters, chunks)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=2e-4 * np.abs(whole).max())
    if adapters:  # the adapters change the logits far more than the tolerance
        without = _whole_model_logits(tiny.base(arch), [], chunks)
        assert np.abs(without - whole).max() > 100 * 2e-4 * np.abs(whole).max()


def test_a_sharded_checkpoint_is_streamed(tiny: Any, token_ids: list[int], tmp_path: Path) -> None:
    """Shards named by model.safetensors.index.json, as the Gemma-2-2B release is stored."""
    import torch
    from transformers import AutoModelForCausalLM

    base = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny.base("gemma3"), dtype=torch.float32).save_pretrained(
        base, max_shard_size="100KB")
    assert (base / "model.safetensors.index.json").is_file() and len(list(base.glob("*.safetensors"))) > 2
    _check_like_the_tiny_base(tiny, token_ids, base, tmp_path, streamed=True)


def test_a_checkpoint_with_other_names_is_loaded_whole(tiny: Any, token_ids: list[int], tmp_path: Path) -> None:
    """Weights saved from the bare decoder (no `model.` prefix) load in transformers, which adds the
    prefix, but do not match the names streaming looks for: the model is loaded whole instead, with
    the same logits."""
    from safetensors.torch import load_file, save_file

    base = _without_weights(tiny.base("gemma3"), tmp_path / "decoder-names")
    tensors = load_file(tiny.base("gemma3") / "model.safetensors")
    save_file({k.removeprefix("model."): v for k, v in tensors.items()}, base / "model.safetensors",
              metadata={"format": "pt"})
    _check_like_the_tiny_base(tiny, token_ids, base, tmp_path, streamed=False)


def _without_weights(base: Path, folder: Path) -> Path:
    """A copy of `base`'s config and tokenizer files, without its safetensors."""
    folder.mkdir()
    for item in base.iterdir():
        if item.suffix != ".safetensors":
            (folder / item.name).write_bytes(item.read_bytes())
    return folder


def _check_like_the_tiny_base(tiny: Any, token_ids: list[int], base: Path, tmp_path: Path, streamed: bool) -> None:
    """`base` (the tiny Gemma-3 stored otherwise) gives the tiny base's logits, streamed or loaded whole."""
    adapters = [(tiny.adapter("gemma3", "all"), 1.0)]
    chunks = split_chunks(token_ids, 64)
    out = tmp_path / "reference.f32"
    assert write_logits(base, adapters, chunks, VOCAB_SIZE, out) is streamed
    whole = _whole_model_logits(tiny.base("gemma3"), adapters, chunks)
    np.testing.assert_allclose(np.fromfile(out, np.float32).reshape(whole.shape), whole, rtol=0,
                               atol=2e-4 * np.abs(whole).max())


def _tiny_f16(tiny: Any, tmp_path: Path) -> Path:
    out = tmp_path / "m.gguf"
    subprocess.run([sys.executable, "-m", "medgemma_convert", "--base", str(tiny.base("gemma3")), "--out", str(out),
                    "--quant", "f16", "--no-verify", "--progress", "none"], check=True, capture_output=True)
    return out  # one output: written under exactly the name asked for


def test_the_converter_never_imports_torch_to_verify(tiny: Any, tmp_path: Path) -> None:
    """The quick check runs by default; transformers and torch run only in the reference's child."""
    code = ("import sys; from medgemma_convert.cli import main; "
            "code = main(sys.argv[1:]); print('torch' in sys.modules, 'transformers' in sys.modules); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, "--base", str(tiny.base("gemma3")), "--adapter",
                             str(tiny.adapter("gemma3", "all")), "--out", str(tmp_path / "m.gguf"), "--quant", "f16",
                             "--progress", "none", "--report", str(tmp_path / "report.json")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False False"
    figures = json.loads((tmp_path / "report.json").read_text())["outputs"][0]["verification"]
    assert figures["mode"] == "quick" and figures["mean_kld"] < 1e-4


def test_a_failing_reference_is_one_clear_error(tiny: Any, tmp_path: Path) -> None:
    """A base whose weights are missing: the child fails, and the converter says so with its reason."""
    f16 = _tiny_f16(tiny, tmp_path)
    broken = _without_weights(tiny.base("gemma3"), tmp_path / "broken")
    with pytest.raises(ConversionError, match=r"the reference model \(transformers \+ PEFT\) failed: .+"):
        verify_outputs(broken, [], [f16], default_eval_text())


def _reference_children() -> list[int]:
    """Processes of ours still running the reference."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if f"PPid:\t{os.getpid()}\n" in status and b"medgemma_convert.reference" in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc to find the child")
def test_cancelling_while_the_reference_runs_stops_it_and_cleans_up(tiny: Any, tmp_path: Path) -> None:
    """A cancel raised from a progress report (SIGTERM in the CLI) while the child starts up: it is
    killed and waited for, and the temporary folder with the reference's logits is gone."""
    f16 = _tiny_f16(tiny, tmp_path)
    before = set(Path(tempfile.gettempdir()).glob("medgemma-verify-*"))
    seen: list[tuple[str, int, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        seen.append((stage, done, total))
        if stage == "verify: reference" and _reference_children():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        verify_outputs(tiny.base("gemma3"), [], [f16], default_eval_text(), progress)
    assert seen and seen[-1][0] == "verify: reference"
    assert _reference_children() == []
    assert set(Path(tempfile.gettempdir()).glob("medgemma-verify-*")) == before


def test_a_stage_that_runs_a_child_counts_the_childs_memory() -> None:
    """The report's per-stage peak: the child's peak on top of what this process held; a child
    that peaks above every earlier one shows in its stage's figure."""
    code = """
import subprocess, sys
from medgemma_convert.report import StageRecorder
recorder = StageRecorder()
with recorder.stage("a small child"):
    subprocess.run([sys.executable, "-c", ""], check=True)
with recorder.stage("a large child"):
    subprocess.run([sys.executable, "-c", "b = b'x' * (400 * 1024 * 1024)"], check=True)
print(recorder.stages[0]["peak_rss_bytes"], recorder.stages[1]["peak_rss_bytes"])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    small, large = map(int, result.stdout.split())
    assert large >= small + 300 * 1024 * 1024
