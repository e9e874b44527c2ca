"""Hugging Face-format Gemma-3 bases and LoRA adapters built from the embedded 270M GGUF.

No hub access here, so the real 270M release is re-created from the GGUF that ships with the
project by `medgemma-convert export-hf`: the weights dequantized, the SentencePiece model rebuilt
from the GGUF vocabulary, and the JSON files written as Google's release has them. The result is
what a user would download, up to the Q4_K_M rounding of the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.support.tiny import write_json

from medgemma_models.catalog import BaseSpec, get_base

# Bump when the folder layout changes, so cached folders from older code are rebuilt.
LAYOUT_VERSION = 2

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


def release_config(spec: BaseSpec) -> dict[str, Any]:
    """config.json of a Gemma-3 text model of the catalog's shape, with the fields Google's releases carry."""
    pattern = 6  # five sliding-window layers, then one global layer
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "_sliding_window_pattern": pattern,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "final_logit_softcapping": None,
        "head_dim": spec.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "layer_types": [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(spec.n_layers)
        ],
        "max_position_embeddings": spec.context_length,
        "num_attention_heads": spec.n_heads,
        "num_hidden_layers": spec.n_layers,
        "num_key_value_heads": spec.n_kv_heads,
        "query_pre_attn_scalar": spec.head_dim,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": spec.sliding_window,
        "torch_dtype": "bfloat16",
        "use_bidirectional_attention": False,
        "use_cache": True,
        "vocab_size": spec.vocab_size,
    }


def release_config_gemma2(spec: BaseSpec, vocab_size: int) -> dict[str, Any]:
    """config.json of a Gemma-2 model of the catalog's shape, with `vocab_size` rows: Gemma-3's fields
    where the two agree, Gemma-2's own over them (soft-capping, alternating layers, one RoPE base)."""
    gemma3_only = ("_sliding_window_pattern", "rope_local_base_freq", "rope_scaling", "use_bidirectional_attention")
    config = {k: v for k, v in release_config(spec).items() if k not in gemma3_only}
    return {
        **config,
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(spec.n_layers)],
        "rope_theta": 10000.0,
        "vocab_size": vocab_size,
    }


GEMMA3_270M = "google/gemma-3-270m"
GEMMA3_1B = "google/gemma-3-1b-pt"
GEMMA2_2B = "google/gemma-2-2b"


def build_hf_base(gguf_path: Path, out: Path) -> Path:
    """Write a Google-style HF folder for the Gemma-3-270M in `gguf_path` (bf16 safetensors), with `export-hf`."""
    from medgemma_convert.export_hf import export_hf, plan_export_hf
    from medgemma_convert.options import ExportHfOptions

    out.parent.mkdir(parents=True, exist_ok=True)  # export-hf makes the folder, not its parents
    export_hf(plan_export_hf(ExportHfOptions.create(gguf_path, out, dtype="bfloat16")))
    return out


def random_gemma3(out: Path, tokenizer_from: Path, base_id: str, seed: int = 0) -> Path:
    """A randomly initialised Gemma-3 of a catalog base's shape, bf16 safetensors, with another base's tokenizer files."""
    return _random_base(out, tokenizer_from, release_config(get_base(base_id)), seed)


def random_gemma2(out: Path, tokenizer_from: Path, base_id: str, seed: int = 0) -> Path:
    """A randomly initialised Gemma-2 of a catalog base's shape, bf16 safetensors, with the tokenizer (and
    so the vocabulary size) of `tokenizer_from`: the 270M's has 262,144 tokens, Gemma-2's 256,000."""
    vocab_size = json.loads((tokenizer_from / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    return _random_base(out, tokenizer_from, release_config_gemma2(get_base(base_id), vocab_size), seed)


def _random_base(out: Path, tokenizer_from: Path, config_dict: dict[str, Any], seed: int) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(**{k: v for k, v in config_dict.items() if k != "architectures"})
    # Made in bfloat16 from the start: a 2B model in float32 would take 10 GB here.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    del model
    write_json(out / "config.json", config_dict)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_from / name, out / name)
    return out
