"""GGUF LoRA adapter files for the real Gemma-3-270M, written directly with gguf-py (no torch needed).

Random low-rank deltas, large enough to change the model's answers, in llama.cpp's runtime format
(`general.type = adapter`, `<tensor>.lora_a` / `.lora_b`), with the provenance keys the converter
writes. The packaged demo adapter, when it has been trained, is `demo_adapter()`.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from medgemma_models.provenance import KEY_BASE, KEY_PRESET

GEMMA_270M = "google/gemma-3-270m"
# blk.N.attn_q.weight is [640, 1024] in ggml order (n_in, n_out), attn_v.weight [640, 256].
SHAPES_270M = {"attn_q": (640, 1024), "attn_v": (640, 256)}


def write_adapter(path: Path, *, arch: str = "gemma3", name: str = "test adapter", preset: str | None = None,
                  base: str | None = GEMMA_270M, shapes: dict[str, tuple[int, int]] = SHAPES_270M,
                  layers: int = 18, rank: int = 4, size: float = 0.08, seed: int = 0) -> Path:
    """A LoRA adapter on every layer's `shapes` tensors; `shapes` of another model make a misfit."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    if base is not None:
        writer.add_string(KEY_BASE, base)
    if preset is not None:
        writer.add_string(KEY_PRESET, preset)
    for layer in range(layers):
        for tensor, (n_in, n_out) in shapes.items():
            # numpy shapes are ggml's reversed: lora_a [n_in, r] -> (r, n_in), lora_b [r, n_out] -> (n_out, r).
            writer.add_tensor(f"blk.{layer}.{tensor}.weight.lora_a",
                              (rng.standard_normal((rank, n_in)) * size).astype(np.float32))
            writer.add_tensor(f"blk.{layer}.{tensor}.weight.lora_b",
                              (rng.standard_normal((n_out, rank)) * size).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_adapter_set(folder: Path) -> dict[str, Path]:
    """Adapters a window or `--ask` meets: one that fits the 270M (`cot`, with a preset) and three that do not."""
    return {
        "cot": write_adapter(folder / "cot.gguf", name="test cot", preset="medical-cot-270m"),
        "1b": write_adapter(folder / "wide.gguf", shapes={"attn_q": (1152, 1024)}, layers=2),
        "gemma2": write_adapter(folder / "g2.gguf", arch="gemma2", base=None, layers=2),
        "llama": write_adapter(folder / "llama.gguf", arch="llama", layers=2),
    }
