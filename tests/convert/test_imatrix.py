"""imatrix.py: llama.cpp's file formats both ways, the computation against its definition, and its use."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from medgemma_convert.imatrix import (
    OUTPUT,
    Imatrix,
    ImatrixEntry,
    imatrix_chunks,
    compute_imatrix,
    default_calibration_text,
    read_imatrix,
    text_sha256,
    write_imatrix,
)
from medgemma_convert.options import ConversionOptions
from medgemma_convert.pipeline import convert
from medgemma_convert.plan import plan
from medgemma_convert.quantize import QuantRecipe, quantize
from medgemma_convert.verify import compare_blocks, gguf_logits, split_chunks, tokenize
from medgemma_models.errors import ConversionError

TEXT = " ".join(["The patient has a fever, a cough and pain in the chest when breathing deeply."] * 12)
HF_TO_GGUF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


@pytest.fixture(scope="module")
def tiny_f32(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Gemma-3 with its all-projection LoRA merged, as an f32 GGUF."""
    out = tmp_path_factory.mktemp("imatrix") / "tiny-f32.gguf"
    convert(plan(ConversionOptions.create(base=str(tiny.base("gemma3")), out=out,
                                          adapters=[str(tiny.adapter("gemma3", "all"))], quant="f32")))
    return out


def _example() -> Imatrix:
    rng = np.random.default_rng(3)
    return Imatrix(
        entries={
            "blk.0.attn_q.weight": ImatrixEntry(rng.uniform(0, 9, (1, 64)), np.array([96.0])),
            "blk.0.ffn_down.weight": ImatrixEntry(rng.uniform(0, 9, (1, 128)), np.array([96.0])),
            # An expert tensor as llama.cpp stores it: one row of sums and one count per matrix.
            "blk.1.ffn_down_exps.weight": ImatrixEntry(rng.uniform(0, 9, (2, 128)), np.array([40.0, 0.0])),
        },
        datasets=("medical.txt",), chunk_count=3, chunk_size=32,
    )


def test_written_file_has_llama_cpp_layout_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.gguf"
    original = _example()
    write_imatrix(original, path)

    reader = gguf.GGUFReader(path)
    fields = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    assert fields == {"general.type": "imatrix", "imatrix.datasets": ["medical.txt"],
                      "imatrix.chunk_count": 3, "imatrix.chunk_size": 32}
    assert reader.fields["imatrix.chunk_count"].types == [gguf.GGUFValueType.UINT32]
    tensors = {t.name: t for t in reader.tensors}
    # As llama-imatrix: entries sorted by name, each as its in_sum2 then its counts.
    assert list(tensors) == [f"{n}{suffix}" for n in sorted(original.entries) for suffix in (".in_sum2", ".counts")]
    sums = tensors["blk.1.ffn_down_exps.weight.in_sum2"]
    counts = tensors["blk.1.ffn_down_exps.weight.counts"]
    assert sums.tensor_type == counts.tensor_type == gguf.GGMLQuantizationType.F32
    assert list(sums.shape) == [128, 2] and list(counts.shape) == [1, 2]  # ggml order: columns first

    back = read_imatrix(path)
    assert (back.datasets, back.chunk_count, back.chunk_size) == (("medical.txt",), 3, 32)
    assert back.entries.keys() == original.entries.keys()
    for name, entry in original.entries.items():
        np.testing.assert_allclose(back.entries[name].sums, entry.sums, rtol=1e-6)
        np.testing.assert_array_equal(back.entries[name].counts, entry.counts)
    importance = back.importance()["blk.1.ffn_down_exps.weight"].reshape(2, 128)
    np.testing.assert_allclose(importance[0], original.entries["blk.1.ffn_down_exps.weight"].sums[0] / 40, rtol=1e-6)
    assert (importance[1] == 1).all()  # as llama-quantize: a matrix no token reached weighs every column alike


def test_reads_files_as_llama_imatrix_writes_them(tmp_path: Path) -> None:
    """A GGUF made as tools/imatrix/imatrix.cpp makes it (gguf_init_empty: no architecture), and the older .dat."""
    sums = np.arange(1, 65, dtype=np.float32)
    path = tmp_path / "theirs.gguf"
    writer = gguf.GGUFWriter(path, arch="unused")
    writer.kv_data[0].clear()  # their file starts from an empty context
    writer.add_string("general.type", "imatrix")
    writer.add_array("imatrix.datasets", ["wiki.train.raw"])
    writer.add_uint32("imatrix.chunk_count", 10)
    writer.add_uint32("imatrix.chunk_size", 512)
    writer.add_tensor("blk.0.attn_k.weight.in_sum2", sums.reshape(1, 64))
    writer.add_tensor("blk.0.attn_k.weight.counts", np.array([[5120.0]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    theirs = read_imatrix(path)
    assert theirs.datasets == ("wiki.train.raw",) and theirs.chunk_count == 10 and theirs.tokens == 5120
    np.testing.assert_allclose(theirs.importance()["blk.0.attn_k.weight"], sums / 5120, rtol=1e-6)

    # Legacy: n_entries; per entry name length, name, ncall, nval, values = sum / tokens * ncall;
    # then the chunk count and the dataset name.
    name = b"blk.0.attn_k.weight"
    legacy = tmp_path / "theirs.dat"
    legacy.write_bytes(struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 10, 64)
                       + (sums / 5120 * 10).astype("<f4").tobytes() + struct.pack("<ii", 10, 14) + b"wiki.train.raw")
    old = read_imatrix(legacy)
    assert old.datasets == ("wiki.train.raw",) and old.chunk_count == 10
    np.testing.assert_allclose(old.importance()["blk.0.attn_k.weight"], sums / 5120, rtol=1e-6)


def test_not_an_imatrix_is_refused(tmp_path: Path, tiny_f32: Path) -> None:
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x00" * 16)
    with pytest.raises(ConversionError, match="junk.dat"):
        read_imatrix(junk)
    with pytest.raises(ConversionError, match="not 'imatrix'"):
        read_imatrix(tiny_f32)  # a model, not an imatrix


def test_computed_sums_are_the_squared_inputs_of_every_matrix(tiny, tiny_f32: Path) -> None:
    """The definition, checked with transformers: per linear layer, the sum over tokens of x**2 per input column."""
    import torch

    from medgemma_convert.reference import reference_model

    chunk_tokens = 64
    computed = compute_imatrix(tiny_f32, [("text", TEXT)], chunk_tokens=chunk_tokens)
    ids, _ = tokenize(tiny_f32, TEXT)
    chunks = imatrix_chunks(ids[1:], ids[0], chunk_tokens)  # as compute_imatrix cuts the text: BOS first in each
    assert computed.chunk_count == len(chunks) >= 2

    model = reference_model(tiny.base("gemma3"), [(tiny.adapter("gemma3", "all"), 1.0)])
    expected: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def add(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            expected[name] = expected.get(name, 0) + (x * x).sum(0)
        return add

    for module_name, module in model.named_modules():
        parts = module_name.split(".")
        if parts[-1] in HF_TO_GGUF and "layers" in parts:
            module.register_forward_pre_hook(hook(f"blk.{parts[parts.index('layers') + 1]}.{HF_TO_GGUF[parts[-1]]}.weight"))
    model.lm_head.register_forward_pre_hook(hook(OUTPUT))
    with torch.inference_mode():
        for chunk in chunks:
            model(input_ids=torch.tensor([chunk]), use_cache=False)

    assert computed.entries.keys() == expected.keys()
    for name, sums in expected.items():
        entry = computed.entries[name]
        assert entry.counts.tolist() == [sum(len(c) for c in chunks)], name
        np.testing.assert_allclose(entry.sums[0], sums.numpy(), rtol=2e-3, err_msg=name)


def _kld(reference: Path, output: Path) -> float:
    ids, n_vocab = tokenize(reference, TEXT)
    chunks = split_chunks(ids, 256)
    logits = [block for block in gguf_logits(reference, chunks)]
    pairs = zip(logits, gguf_logits(output, chunks))
    return compare_blocks(pairs, chunks).mean_kld


def test_imatrix_reaches_the_quantizer(tiny_f32: Path, tmp_path: Path) -> None:
    """Q4_0 rounding weighted by the imatrix: a different file, and output closer to the unquantized model."""
    importance = compute_imatrix(tiny_f32, [("text", TEXT)], chunk_tokens=64).importance()
    recipe = QuantRecipe("LLAMA_FTYPE_MOSTLY_Q4_0", output_type="q4_0", embedding_type="q4_0")
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    quantize(tiny_f32, plain, recipe)
    quantize(tiny_f32, weighted, recipe, imatrix=importance)
    assert plain.read_bytes() != weighted.read_bytes()
    assert _kld(tiny_f32, weighted) < _kld(tiny_f32, plain)


def test_cli_imatrix_auto_is_recorded_saved_and_shown(tiny, tmp_path: Path) -> None:
    out, saved = tmp_path / "m.gguf", tmp_path / "m.imatrix.gguf"
    args = ["--base", str(tiny.base("gemma3")), "--out", str(out), "--quant", "q4_0", "--imatrix", "auto",
            "--save-imatrix", str(saved), "--no-verify", "--progress", "none"]
    result = subprocess.run([sys.executable, "-m", "medgemma_convert", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

    record = json.loads(gguf.GGUFReader(out).fields["medgemma.imatrix"].contents())
    matrix = read_imatrix(saved)
    assert record == {"source": "auto", "datasets": ["medgemma:calibration_medical.txt"],
                      "sha256": text_sha256(default_calibration_text()), "tokens": matrix.tokens,
                      "chunks": matrix.chunk_count}
    assert matrix.tokens > 1000 and matrix.chunk_count >= 2
    shown = subprocess.run([sys.executable, "-m", "medgemma_convert", "inspect", str(out)], capture_output=True, text=True)
    assert shown.returncode == 0 and "imatrix" in shown.stdout and record["sha256"] in shown.stdout

    # Our file, given back as --imatrix FILE (as to llama-quantize), is recorded by name and hash.
    again = tmp_path / "again.gguf"
    result = subprocess.run([sys.executable, "-m", "medgemma_convert", *args[:3], str(again), "--quant", "q4_0",
                             "--imatrix", str(saved), "--no-verify", "--progress", "none"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    record = json.loads(gguf.GGUFReader(again).fields["medgemma.imatrix"].contents())
    assert record["source"] == saved.name and record["tokens"] == matrix.tokens


def test_imatrix_for_another_model_is_refused_before_any_work(tiny, tmp_path: Path) -> None:
    other = tmp_path / "other.gguf"
    write_imatrix(Imatrix({"blk.0.attn_q.weight": ImatrixEntry(np.ones((1, 640)), np.array([10.0]))}), other)
    options = ConversionOptions.create(base=str(tiny.base("gemma3")), out=tmp_path / "m.gguf", quant="q4_0",
                                       imatrix=str(other))
    with pytest.raises(ConversionError, match="another model: it has 640 columns for blk.0.attn_q.weight, which has 64"):
        plan(options)
    assert not list(tmp_path.glob("m*"))
