"""The base model: a local Hugging Face folder, a hub repo id, or a GGUF file; opened lazily.

Resolving reads only headers (config, tokenizer, tensor names and shapes) so the plan can check
everything before any weights are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgemma_models.errors import ConversionError

from . import hub
from .safetensors_header import FLOAT_DTYPES, TensorEntry, read_model_headers
from .tensor_names import NameMap, is_norm
from .vocab import Vocab, load_vocab

# Hugging Face architectures and model types this converter writes (text models only).
HF_ARCHITECTURES = {"Gemma3ForCausalLM": "gemma3", "Gemma3ForConditionalGeneration": "gemma3", "Gemma2ForCausalLM": "gemma2"}
MODEL_TYPES = {"gemma3_text": "gemma3", "gemma3": "gemma3", "gemma2": "gemma2"}
GGUF_ARCHITECTURES = ("gemma3", "gemma2")


@dataclass(frozen=True)
class BaseTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order (rows, columns), after trimming
    source: str  # the tensor's name in its file
    file: Path
    norm_shift: bool = False  # add 1 (Gemma RMSNorm weights stored as w, used as 1 + w)
    rows: int | None = None  # keep only the first rows (embedding rows beyond the vocabulary)
    stored: TensorEntry | None = None  # where its bytes are in a safetensors file (None in a GGUF base)


@dataclass(frozen=True)
class ResolvedBase:
    kind: str  # "hf" or "gguf"
    id: str  # as given: hub repo id or path
    path: Path  # HF folder or GGUF file
    arch: str  # "gemma3" or "gemma2"
    hparams: dict[str, Any]  # text-model config (HF) or GGUF metadata values
    tensors: tuple[BaseTensor, ...]
    vocab: Vocab | None  # None for a GGUF base: its tokenizer keys are copied as they are
    name_map: NameMap

    @property
    def hidden_size(self) -> int:
        key = "hidden_size" if self.kind == "hf" else f"{self.arch}.embedding_length"
        return int(self.hparams[key])

    def tensor(self, name: str) -> BaseTensor | None:
        return next((t for t in self.tensors if t.name == name), None)


def resolve_base(source: str) -> ResolvedBase:
    """Find and check the base; downloads a hub repo id (cached) when it is not a local path."""
    path = Path(source).expanduser()
    if not path.exists():
        if not hub.is_repo_id(source):
            raise ConversionError(f"base not found: {source} (a Hugging Face folder, a GGUF file or a hub repo id)")
        path = hub.fetch(source, hub.BASE_FILES, "--base")
    if path.is_file():
        return _resolve_gguf(source, path)
    return _resolve_hf(source, path)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's config; a multimodal Gemma-3 config nests it under text_config."""
    if isinstance(config.get("text_config"), dict):
        return {**config, **config["text_config"]}
    return config


def _architecture(config: dict[str, Any], where: Path) -> str:
    archs = config.get("architectures") or []
    for name in archs:
        if name in HF_ARCHITECTURES:
            return HF_ARCHITECTURES[name]
    model_type = config.get("model_type")
    if not archs and model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    what = ", ".join(archs) or model_type or "unknown"
    raise ConversionError(f"base in {where} is {what}; only Gemma-2 and Gemma-3 text models are supported")


def _resolve_hf(source: str, folder: Path) -> ResolvedBase:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConversionError(f"corrupt {config_file}: {exc}") from exc
    arch = _architecture(config, folder)
    hparams = text_config(config)
    _check_supported(hparams, folder)
    vocab = load_vocab(folder, hparams.get("vocab_size"))
    n_blocks = int(hparams["num_hidden_layers"])
    names = NameMap(arch, n_blocks)
    tensors = []
    for hf_name, entry in read_model_headers(folder).items():
        gguf_name = names.gguf_name(hf_name)
        if gguf_name is None:
            continue
        if entry.dtype not in FLOAT_DTYPES:
            raise ConversionError(
                f"base in {folder} stores {hf_name} as {entry.dtype}, a quantized checkpoint (such as a "
                "bitsandbytes 4-bit one): pass the 16-bit release it was made from; LoRA merges onto float weights"
            )
        shape, rows = entry.shape, None
        if gguf_name == "token_embd.weight" and shape[0] > len(vocab.tokens):
            rows = len(vocab.tokens)  # llama.cpp's converter drops rows past the vocabulary too
            shape = (rows, *shape[1:])
        tensors.append(BaseTensor(gguf_name, shape, hf_name, entry.file, is_norm(hf_name), rows, entry))
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise ConversionError(f"no embedding tensor (model.embed_tokens.weight) in {folder}")
    if embd.shape[0] < len(vocab.tokens):
        raise ConversionError(f"the tokenizer has {len(vocab.tokens)} tokens but the embedding only {embd.shape[0]} rows")
    return ResolvedBase("hf", source, folder, arch, hparams, tuple(_ordered(tensors)), vocab, names)


def _check_supported(hparams: dict[str, Any], folder: Path) -> None:
    head_dim = hparams.get("head_dim", 256)
    scalar = hparams.get("query_pre_attn_scalar", head_dim)
    if scalar != head_dim:
        # llama.cpp scales attention by 1/sqrt(head_dim) for these model sizes.
        raise ConversionError(
            f"base in {folder} scales attention by query_pre_attn_scalar={scalar}, not head_dim={head_dim}; "
            "llama.cpp cannot run it"
        )
    for key in ("num_hidden_layers", "hidden_size"):
        if key not in hparams:
            raise ConversionError(f"config.json in {folder} has no {key}")


def _resolve_gguf(source: str, path: Path) -> ResolvedBase:
    import gguf

    if path.suffix.lower() != ".gguf":
        raise ConversionError(f"base {path} is a file but not a .gguf model (pass a Hugging Face folder or a GGUF file)")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, OverflowError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ConversionError(f"base {path.name} is not a readable GGUF file ({exc})") from exc
    field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    arch = field.contents() if field is not None else None
    if arch not in GGUF_ARCHITECTURES:
        raise ConversionError(f"base {path.name} is a {arch} model; only Gemma-2 and Gemma-3 text models are supported")
    hparams = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    n_blocks = int(hparams[f"{arch}.block_count"])
    tensors = [BaseTensor(t.name, tuple(int(d) for d in reversed(t.shape)), t.name, path) for t in reader.tensors]
    return ResolvedBase("gguf", source, path, arch, hparams, tuple(_ordered(tensors)), None, NameMap(arch, n_blocks))


def _ordered(tensors: list[BaseTensor]) -> list[BaseTensor]:
    """Embeddings, then block by block, then the final norm: a stable order for any shard layout."""
    def key(t: BaseTensor) -> tuple[int, int, str]:
        parts = t.name.split(".")
        if parts[0] == "blk":
            return (1, int(parts[1]), t.name)
        return (0 if t.name.startswith("token_embd") else 2, 0, t.name)

    return sorted(tensors, key=key)
