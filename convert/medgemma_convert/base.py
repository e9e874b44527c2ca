"""The base model: a local Hugging Face folder, a GGUF file, or hub:owner/name; opened lazily.

Resolving reads only headers (config, tokenizer, tensor names and shapes) so the plan can check
everything before any weights are read.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgemma_models.errors import ConversionError
from medgemma_models.gguf_info import GEMMA_ARCHITECTURES

from . import bnb, hub
from .json_input import read_json_object
from .progress import Progress, no_progress
from .safetensors_header import FLOAT_DTYPES, TensorEntry, read_model_headers
from .tensor_names import NameMap, is_norm, text_model_name
from .vocab import Vocab, load_vocab

# Hugging Face architectures and model types this converter writes (text models only).
HF_ARCHITECTURES = {"Gemma3ForCausalLM": "gemma3", "Gemma3ForConditionalGeneration": "gemma3", "Gemma2ForCausalLM": "gemma2"}
MODEL_TYPES = {"gemma3_text": "gemma3", "gemma3": "gemma3", "gemma2": "gemma2"}
# Sizes read from config.json, and the defaults the GGUF writer assumes for the optional ones.
_REQUIRED_SIZES = ("num_hidden_layers", "hidden_size", "intermediate_size")
_SIZE_DEFAULTS = {"num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256}
# Far beyond any Gemma (262,144 tokens, 1152..5376 wide): a larger size is a broken or hostile config.
_MAX_SIZE = 1 << 22
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class BaseTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order (rows, columns), after trimming
    source: str  # the tensor's name in its file
    file: Path
    norm_shift: bool = False  # add 1 (Gemma RMSNorm weights stored as w, used as 1 + w)
    rows: int | None = None  # keep only the first rows (embedding rows beyond the vocabulary)
    stored: TensorEntry | bnb.Bnb4bitEntry | None = None  # where its values are (None in a GGUF base)


@dataclass(frozen=True)
class ResolvedBase:
    kind: str  # "hf" or "gguf"
    id: str  # as given: hub repo id or path
    path: Path  # HF folder or GGUF file
    arch: str  # "gemma3" or "gemma2"
    hparams: dict[str, Any]  # text-model config (HF) or the GGUF's scalar metadata values
    tensors: tuple[BaseTensor, ...]
    vocab: Vocab | None  # None for a GGUF base: its tokenizer keys are copied as they are
    name_map: NameMap
    quantization: str | None = None  # "bnb-4bit": a bitsandbytes 4-bit checkpoint, dequantized as it is read

    @property
    def hidden_size(self) -> int:
        key = "hidden_size" if self.kind == "hf" else f"{self.arch}.embedding_length"
        return int(self.hparams[key])

    def tensor(self, name: str) -> BaseTensor | None:
        return next((t for t in self.tensors if t.name == name), None)


def resolve_base(source: str, progress: Progress = no_progress) -> ResolvedBase:
    """Find and check the base; only a hub:owner/name source is downloaded (to the hub cache)."""
    source, path = hub.locate(source, hub.BASE_FILES, "--base", progress)
    if not path.exists():
        raise ConversionError(f"base not found: {source} (a Hugging Face folder or a GGUF file){hub.download_hint(source)}")
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
    config = read_json_object(config_file)
    arch = _architecture(config, folder)
    quantization = bnb.quantization(config, folder)
    hparams = text_config(config)
    _check_supported(hparams, config_file)
    n_blocks = hparams["num_hidden_layers"]
    names = NameMap(arch, n_blocks)
    headers = read_model_headers(folder)
    _check_vocab_size(hparams, headers, names, config_file)  # before the vocabulary is allocated
    vocab = load_vocab(folder, hparams.get("vocab_size"))
    tensors = []
    for hf_name, stored in headers.items():
        if quantization is not None and bnb.is_part(hf_name):
            continue  # read with the weight it belongs to
        gguf_name = names.gguf_name(hf_name)
        if gguf_name is None:
            _check_not_a_dropped_layer(hf_name, n_blocks, stored, config_file)
            continue
        entry: TensorEntry | bnb.Bnb4bitEntry = stored
        if stored.dtype not in FLOAT_DTYPES and quantization is not None:
            entry = bnb.resolve_4bit(hf_name, stored, headers, folder)
        elif stored.dtype not in FLOAT_DTYPES:
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
    ordered = _ordered(tensors)
    _check_shapes(hparams, ordered, config_file)
    return ResolvedBase("hf", source, folder, arch, hparams, tuple(ordered), vocab, names, quantization)


_LAYERS_27B = {"gemma3_text": 62, "gemma3": 62, "gemma2": 46}


def _check_supported(hparams: dict[str, Any], config_file: Path) -> None:
    for key in (*_REQUIRED_SIZES, *_SIZE_DEFAULTS, "vocab_size"):
        if key not in hparams:
            if key in _REQUIRED_SIZES:
                raise ConversionError(f"{config_file} has no {key}")
            continue
        value = hparams[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_SIZE:
            raise ConversionError(f"{config_file}: {key} is {value!r}, not a whole number from 1 to {_MAX_SIZE:,}")
    head_dim = hparams.get("head_dim", 256)
    # llama.cpp scales attention by 1/sqrt(head_dim), except for the 27B models, which it knows by
    # their layer count, where the scale is 1/sqrt(hidden_size / heads) (Gemma's own reference does so).
    scale_dim = head_dim
    if hparams["num_hidden_layers"] == _LAYERS_27B.get(hparams.get("model_type", ""), 0):
        scale_dim = hparams["hidden_size"] // hparams["num_attention_heads"]
    scalar = hparams.get("query_pre_attn_scalar", scale_dim)
    if scalar != scale_dim:
        raise ConversionError(
            f"base in {config_file.parent} scales attention by query_pre_attn_scalar={scalar}, but llama.cpp by "
            f"{scale_dim} for a model of {hparams['num_hidden_layers']} layers; llama.cpp cannot run it"
        )


def _check_vocab_size(hparams: dict[str, Any], headers: dict[str, TensorEntry], names: NameMap, config_file: Path) -> None:
    """vocab_size sizes the vocabulary arrays: it must not exceed the embedding's rows."""
    embd = next(((hf, e) for hf, e in headers.items() if names.gguf_name(hf) == "token_embd.weight"), None)
    if embd is None:
        raise ConversionError(f"no embedding tensor (model.embed_tokens.weight) in {config_file.parent}")
    hf_name, entry = embd
    if len(entry.shape) != 2:
        raise ConversionError(f"{hf_name} in {entry.file.name} has shape {entry.shape}, not (vocabulary, hidden size)")
    vocab_size = hparams.get("vocab_size")
    if vocab_size is not None and vocab_size > entry.shape[0]:
        raise ConversionError(f"{config_file}: vocab_size is {vocab_size:,}, but {hf_name} has only {entry.shape[0]:,} rows")


def _check_not_a_dropped_layer(hf_name: str, n_blocks: int, entry: TensorEntry, config_file: Path) -> None:
    """Weights of a layer past num_hidden_layers would be left out of the export without a word."""
    name = text_model_name(hf_name)
    layer = _LAYER.match(name) if name else None
    if layer is not None and int(layer.group(1)) >= n_blocks:
        raise ConversionError(
            f"{config_file}: num_hidden_layers is {n_blocks}, but {entry.file.name} has {hf_name} (layer {layer.group(1)})"
        )


def _check_shapes(hparams: dict[str, Any], tensors: list[BaseTensor], config_file: Path) -> None:
    """Every tensor has the shape config.json implies, and every block has the same tensors.

    llama.cpp builds the model from the config values written in the GGUF and refuses a file whose
    tensors disagree, so the disagreement is named here, before anything is written.
    """
    sizes = {**_SIZE_DEFAULTS, **{k: hparams[k] for k in (*_REQUIRED_SIZES, *_SIZE_DEFAULTS) if k in hparams}}
    hidden, ffn, head_dim = sizes["hidden_size"], sizes["intermediate_size"], sizes["head_dim"]
    q, kv = sizes["num_attention_heads"] * head_dim, sizes["num_key_value_heads"] * head_dim
    expected = {
        "attn_q": (q, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden), "attn_output": (hidden, q),
        "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn),
        "attn_q_norm": (head_dim,), "attn_k_norm": (head_dim,),
        "attn_norm": (hidden,), "post_attention_norm": (hidden,), "ffn_norm": (hidden,), "post_ffw_norm": (hidden,),
        "output_norm": (hidden,),
    }
    blocks: dict[int, set[str]] = {}
    for t in tensors:
        parts = t.name.split(".")
        kind = parts[-2]
        if parts[0] == "blk":
            blocks.setdefault(int(parts[1]), set()).add(kind)
        want = expected.get(kind)
        if t.name == "token_embd.weight":
            want = (t.shape[0], hidden)
        if want is not None and t.shape != want:
            raise ConversionError(f"{config_file} implies shape {want} for {t.source}, but {t.file.name} has {t.shape}")
    n_blocks = hparams["num_hidden_layers"]
    first = blocks.get(0, set())
    for i in range(n_blocks):
        if i not in blocks:
            raise ConversionError(f"{config_file}: num_hidden_layers is {n_blocks}, but the weights have no layer {i}")
        lacking, extra = sorted(first - blocks[i]), sorted(blocks[i] - first)
        if lacking or extra:
            what = f"no {lacking[0]} tensor in layer {i}" if lacking else f"a {extra[0]} tensor in layer {i} but not in layer 0"
            raise ConversionError(f"the weights in {config_file.parent} have {what}")


def _resolve_gguf(source: str, path: Path) -> ResolvedBase:
    import gguf
    from medgemma_models.gguf_compat import HeaderReader

    if path.suffix.lower() != ".gguf":
        raise ConversionError(f"base {path} is a file but not a .gguf model (pass a Hugging Face folder or a GGUF file)")
    try:
        # The plan needs names, shapes and scalar keys only: the fast reader skips the vocabulary's
        # items, which the export reads once with the full reader (gguf_export.write_gguf).
        reader = HeaderReader(path)
    except (ValueError, IndexError, OverflowError, UnicodeDecodeError, KeyError, TypeError, struct.error) as exc:
        raise ConversionError(f"base {path.name} is not a readable GGUF file ({exc})") from exc
    field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    arch = field.contents() if field is not None else None
    if arch not in GEMMA_ARCHITECTURES:
        raise ConversionError(f"base {path.name} is a {arch} model; only Gemma-2 and Gemma-3 text models are supported")
    hparams = {
        f.name: f.contents() for f in reader.fields.values()
        if not f.name.startswith("GGUF.") and f.types[0] != gguf.GGUFValueType.ARRAY
    }
    n_blocks = hparams.get(f"{arch}.block_count")
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or not 0 < n_blocks <= _MAX_SIZE:
        raise ConversionError(f"base {path.name}: {arch}.block_count is {n_blocks!r}, not a whole number of layers")
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
