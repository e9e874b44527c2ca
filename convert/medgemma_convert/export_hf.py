"""A GGUF Gemma model as a Hugging Face folder, so a user whose only base is a GGUF can fine-tune it.

The weights are dequantized to float (lossy only in that a quantized file has already lost what it
lost), the Gemma norms get back their stored form (llama.cpp's converter adds 1), config.json is
rebuilt from the GGUF's architecture keys, and the SentencePiece model from its vocabulary.
Everything is written into OUT_DIR.partial and renamed when complete (`files.atomic_folder`).
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np

from medgemma_models.errors import ConversionError
from medgemma_models.files import atomic_folder, check_free_space, check_writable, sha256_file
from medgemma_models.report import ConversionReport, OutputRecord, StageRecord

from . import CONVERTER_ID
from .options import ExportHfOptions
from .progress import Progress, no_progress
from .report import StageRecorder
from .tensor_names import NameMap, is_norm

DTYPES = {"float32": (np.float32, "F32"), "bfloat16": (np.float32, "BF16"), "float16": (np.float16, "F16")}
_UNQUANTIZED = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}
# Defaults llama.cpp assumes when a Gemma GGUF does not say (every 6th / 2nd layer global).
_SWA_PERIOD = {"gemma3": 6, "gemma2": 2}
_HF_CLASSES = {"gemma3": ("Gemma3ForCausalLM", "gemma3_text"), "gemma2": ("Gemma2ForCausalLM", "gemma2")}
# GGUF token types and SentencePiece piece types share their numbers (NORMAL 1, UNKNOWN 2,
# CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6): they are copied as they are.
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4
_SPACE, _SP_SPACE = " ", "\u2581"
_GENERATION_DEFAULTS = {"cache_implementation": "hybrid", "do_sample": True, "top_k": 64, "top_p": 0.95}

# Google's Gemma-3 chat template, written when the GGUF carries none. It starts with
# `{{ bos_token }}`: a converter must not let it add a second BOS when the runtime adds one.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)


@dataclass(frozen=True)
class GgufVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    ids: dict[str, int]  # bos, eos, unk, pad, eot -> token id (those the file names or holds)
    add_bos: bool
    add_eos: bool
    chat_template: str | None


@dataclass(frozen=True)
class HfExportPlan:
    options: ExportHfOptions
    reader: gguf.GGUFReader
    arch: str
    vocab: GgufVocab
    config: dict[str, Any]  # config.json, without torch_dtype
    names: dict[str, str]  # GGUF tensor name -> Hugging Face name
    warnings: tuple[str, ...]
    size: int  # expected bytes of model.safetensors


def plan_export_hf(options: ExportHfOptions, progress: Progress = no_progress) -> HfExportPlan:
    """Check the GGUF (its header and tensor names) and the output folder before any tensor is read."""
    progress("plan", 0, 1)
    model, out = options.model, options.out
    reader = _open(model)
    if _field(reader, gguf.Keys.General.TYPE) == "adapter":
        raise ConversionError(f"{model.name} is a LoRA adapter, not a model: export its base instead")
    arch = str(_field(reader, gguf.Keys.General.ARCHITECTURE))
    if arch not in _HF_CLASSES:
        raise ConversionError(f"{model.name} is a {arch} model; only Gemma-2 and Gemma-3 text models can be exported")
    check_writable(out, options.force)
    warnings = []
    quantized = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in _UNQUANTIZED})
    if quantized:
        warnings.append(f"{model.name} is quantized ({', '.join(quantized)}): the exported weights are its rounded "
                        "values, not the original model's; fine-tuning on them and re-quantizing loses more quality")
    vocab = read_vocab(reader)
    if vocab.chat_template is None:
        warnings.append(f"{model.name} has no chat template: Google's Gemma template is written")
    config = hf_config(reader, arch, len(vocab.tokens), vocab.ids)
    names = _hf_names(config, arch)
    _check_tensors(reader, names)
    item = 4 if options.dtype == "float32" else 2
    size = sum(int(np.prod(t.shape)) for t in reader.tensors) * item
    check_free_space({out: size})  # the folder, to be made beside its final place
    progress("plan", 1, 1)
    return HfExportPlan(options, reader, arch, vocab, config, names, tuple(warnings), size)


def export_hf(plan: HfExportPlan, progress: Progress = no_progress) -> ConversionReport:
    """Write the folder of `plan` atomically; returns the report (its one output: model.safetensors)."""
    options, recorder = plan.options, StageRecorder()
    with recorder.stage(f"export-hf {options.dtype}"), atomic_folder(options.out, options.force) as folder:
        n_tensors = write_safetensors(plan.reader, plan.names, folder / "model.safetensors", options.dtype, progress)
        _write_json(folder / "config.json", {**plan.config, "torch_dtype": options.dtype})
        write_tokenizer(plan.vocab, folder)
    with recorder.stage("hash outputs"):
        weights = options.out / "model.safetensors"
        sha256 = sha256_file(weights)
    _, st_type = DTYPES[options.dtype]
    parameters = sum(int(np.prod(t.shape)) for t in plan.reader.tensors)
    output = OutputRecord(path=str(weights), quant=st_type.lower(), bytes=weights.stat().st_size, sha256=sha256,
                          file_type="safetensors " + st_type, tensor_types={st_type: n_tensors},
                          bits_per_weight=8.0 * plan.size / max(1, parameters), parameter_count=parameters)
    return ConversionReport(
        converter=CONVERTER_ID,
        inputs={"base": {"id": str(options.model), "kind": "gguf", "path": str(options.model), "architecture": plan.arch}},
        outputs=(output,),
        warnings=plan.warnings,
        stages=tuple(StageRecord(**stage) for stage in recorder.stages),
        memory_method=recorder.method,
        wall_s=recorder.total_wall(),
        extra={"folder": str(options.out)},
    )


def _open(model: Path) -> gguf.GGUFReader:
    if not model.is_file():
        raise ConversionError(f"no such GGUF file: {model}")
    try:
        return gguf.GGUFReader(model)
    except (ValueError, IndexError, OverflowError, UnicodeDecodeError, KeyError, TypeError, struct.error) as exc:
        raise ConversionError(f"{model.name} is not a readable GGUF file ({exc})") from exc


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def hf_config(reader: gguf.GGUFReader, arch: str, vocab_size: int, ids: dict[str, int]) -> dict[str, Any]:
    """config.json of the text model, from the GGUF's architecture keys (with llama.cpp's defaults)."""
    def key(template: str, default: Any = None) -> Any:
        return _field(reader, template.format(arch=arch), default)

    n_layers = int(key(gguf.Keys.LLM.BLOCK_COUNT))
    head_dim = int(key(gguf.Keys.Attention.KEY_LENGTH, 256))
    pattern = key(gguf.Keys.Attention.SLIDING_WINDOW_PATTERN)
    period = _SWA_PERIOD[arch]
    sliding = [bool(s) for s in pattern] if isinstance(pattern, list) else [i % period < period - 1 for i in range(n_layers)]
    hf_class, model_type = _HF_CLASSES[arch]
    config: dict[str, Any] = {
        "architectures": [hf_class],
        "model_type": model_type,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ids.get("bos", 2),
        "eos_token_id": ids.get("eos", 1),
        "pad_token_id": ids.get("pad", 0),
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": int(key(gguf.Keys.LLM.EMBEDDING_LENGTH)),
        "initializer_range": 0.02,
        "intermediate_size": int(key(gguf.Keys.LLM.FEED_FORWARD_LENGTH)),
        "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
        "max_position_embeddings": int(key(gguf.Keys.LLM.CONTEXT_LENGTH, 8192)),
        "num_attention_heads": int(key(gguf.Keys.Attention.HEAD_COUNT)),
        "num_hidden_layers": n_layers,
        "num_key_value_heads": int(key(gguf.Keys.Attention.HEAD_COUNT_KV)),
        # llama.cpp scales attention by 1/sqrt(head_dim) for Gemma; this says the same to transformers.
        "query_pre_attn_scalar": head_dim,
        # GGUF keeps float32: 1e-6 comes back as 9.99999997e-07 unless printed at float32 precision.
        "rms_norm_eps": float(str(np.float32(key(gguf.Keys.Attention.LAYERNORM_RMS_EPS, 1e-6)))),
        "sliding_window": int(key(gguf.Keys.Attention.SLIDING_WINDOW, 4096)),
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    theta = float(key(gguf.Keys.Rope.FREQ_BASE, 1_000_000.0 if arch == "gemma3" else 10_000.0))
    final_cap = key(gguf.Keys.LLM.FINAL_LOGIT_SOFTCAPPING)
    attn_cap = key(gguf.Keys.LLM.ATTN_LOGIT_SOFTCAPPING)
    if arch == "gemma3":
        config["_sliding_window_pattern"] = period
        config["rope_theta"] = theta
        config["rope_local_base_freq"] = float(key(gguf.Keys.Rope.FREQ_BASE_SWA, 10_000.0))
        factor = key(gguf.Keys.Rope.SCALING_FACTOR)
        linear = key(gguf.Keys.Rope.SCALING_TYPE) == "linear" and factor
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(factor)} if linear else None
        config["final_logit_softcapping"] = float(final_cap) if final_cap else None
        config["attn_logit_softcapping"] = float(attn_cap) if attn_cap else None
        config["use_bidirectional_attention"] = False
    else:
        config["rope_theta"] = theta
        config["final_logit_softcapping"] = float(final_cap) if final_cap else 30.0
        config["attn_logit_softcapping"] = float(attn_cap) if attn_cap else 50.0
    return dict(sorted(config.items()))


def _hf_names(config: dict[str, Any], arch: str) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face name, from the parameter names transformers gives this config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config_obj = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "architectures"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config_obj)
    name_map = NameMap(arch, int(config["num_hidden_layers"]))
    names = {}
    for hf_name in model.state_dict():
        gguf_name = name_map.gguf_name(hf_name)
        if gguf_name is not None:
            names[gguf_name] = hf_name
    return names


def _check_tensors(reader: gguf.GGUFReader, names: dict[str, str]) -> None:
    extra = sorted(t.name for t in reader.tensors if t.name not in names)
    missing = sorted(set(names) - {t.name for t in reader.tensors})
    if extra or missing:
        what = f"unexpected tensor {extra[0]}" if extra else f"no tensor {missing[0]}"
        raise ConversionError(f"the GGUF does not hold a Gemma text model of its declared shape: {what}")


def write_safetensors(reader: gguf.GGUFReader, names: dict[str, str], path: Path, dtype: str,
                      progress: Progress = no_progress) -> int:
    """Every tensor dequantized, in one safetensors file written tensor by tensor; returns the count."""
    np_type, st_type = DTYPES[dtype]
    item = 2 if st_type in ("BF16", "F16") else 4
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    order = sorted(reader.tensors, key=lambda t: names[t.name])
    for tensor in order:
        shape = [int(d) for d in reversed(tensor.shape)]
        size = int(np.prod(shape)) * item
        header[names[tensor.name]] = {"dtype": st_type, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    progress("export-hf", 0, len(order))
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for done, tensor in enumerate(order, 1):
            _write_tensor(out, _dequantized(tensor, names[tensor.name]), np_type, st_type)
            progress("export-hf", done, len(order))
    return len(order)


def _dequantized(tensor: gguf.ReaderTensor, hf_name: str) -> np.ndarray:
    shape = tuple(int(d) for d in reversed(tensor.shape))
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32, copy=False)
    if is_norm(hf_name):
        data = data - np.float32(1.0)  # llama.cpp's converter stored 1 + w; Hugging Face stores w
    return data


def _write_tensor(out: BinaryIO, data: np.ndarray, np_type: type, st_type: str) -> None:
    if st_type == "BF16":
        from .casts import f32_to_bf16

        out.write(f32_to_bf16(data).tobytes())
    else:
        out.write(np.ascontiguousarray(data, dtype=np_type).tobytes())


def read_vocab(reader: gguf.GGUFReader) -> GgufVocab:
    """The `tokenizer.ggml.*` keys of a SentencePiece-style ("llama") GGUF vocabulary."""
    model = _field(reader, gguf.Keys.Tokenizer.MODEL)
    if model != "llama":
        raise ConversionError(f"the GGUF's tokenizer is {model!r}, not the SentencePiece-style one Gemma uses")
    tokens = list(_field(reader, gguf.Keys.Tokenizer.LIST))
    ids = {}
    for name, key in (("bos", gguf.Keys.Tokenizer.BOS_ID), ("eos", gguf.Keys.Tokenizer.EOS_ID),
                      ("unk", gguf.Keys.Tokenizer.UNK_ID), ("pad", gguf.Keys.Tokenizer.PAD_ID),
                      ("eot", gguf.Keys.Tokenizer.EOT_ID)):
        value = _field(reader, key)
        if value is not None:
            ids[name] = int(value)
    for name, text in (("bos", "<bos>"), ("eos", "<eos>"), ("unk", "<unk>"), ("pad", "<pad>"), ("eot", "<end_of_turn>")):
        if name not in ids and text in tokens:
            ids[name] = tokens.index(text)
    return GgufVocab(
        tokens=tokens,
        scores=[float(s) for s in _field(reader, gguf.Keys.Tokenizer.SCORES)],
        types=[int(t) for t in _field(reader, gguf.Keys.Tokenizer.TOKEN_TYPE)],
        ids=ids,
        add_bos=bool(_field(reader, gguf.Keys.Tokenizer.ADD_BOS, True)),
        add_eos=bool(_field(reader, gguf.Keys.Tokenizer.ADD_EOS, False)),
        chat_template=_field(reader, gguf.Keys.Tokenizer.CHAT_TEMPLATE),
    )


def write_tokenizer(vocab: GgufVocab, out: Path) -> None:
    """tokenizer.model, tokenizer.json, tokenizer_config.json and friends, laid out as Google's releases."""
    tokens, types = vocab.tokens, vocab.types
    (out / "tokenizer.model").write_bytes(sentencepiece_model(vocab).SerializeToString())
    # Every control token is special; user-defined ones (whitespace runs, image markers) are not.
    # Converters read these to mark token types, as llama.cpp's does.
    added = {
        str(i): {"content": _sp_piece(tokens[i], types[i]), "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": types[i] == _CONTROL}
        for i in range(len(tokens))
        if types[i] in (_CONTROL, _USER_DEFINED)
    }
    special = {name: tokens[vocab.ids[name]] for name in ("bos", "eos", "pad", "unk") if name in vocab.ids}
    _write_json(out / "tokenizer_config.json", {
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "added_tokens_decoder": added,
        **{f"{name}_token": text for name, text in special.items()},
        "chat_template": vocab.chat_template or GEMMA_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": {},
        "model_max_length": 1000000000000000019884624838656,
        "padding_side": "left",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
        "use_default_system_prompt": False,
    })
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    _write_json(out / "special_tokens_map.json",
                {f"{name}_token": {"content": text, **entry} for name, text in special.items()})
    _write_tokenizer_json(out)
    eos = [vocab.ids[name] for name in ("eos", "eot") if name in vocab.ids]
    _write_json(out / "generation_config.json", {
        "bos_token_id": vocab.ids.get("bos"), "eos_token_id": eos, "pad_token_id": vocab.ids.get("pad"),
        **_GENERATION_DEFAULTS,
    })


def _write_tokenizer_json(out: Path) -> None:
    # Google ships tokenizer.json beside tokenizer.model, and converters and trainers read the
    # special token ids from it: transformers converts the SentencePiece model, as for the release.
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        AutoTokenizer.from_pretrained(out).save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "tokenizer.json", out / "tokenizer.json")


def sentencepiece_model(vocab: GgufVocab) -> Any:
    """A SentencePiece BPE ModelProto (byte fallback, identity normalizer, no dummy prefix) of the vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    unk = vocab.ids.get("unk", -1)
    for i, (token, score, kind) in enumerate(zip(vocab.tokens, vocab.scores, vocab.types)):
        piece = proto.pieces.add()
        piece.piece = _sp_piece(token, kind)
        piece.score = score
        # SentencePiece needs its unknown piece typed UNKNOWN; llama.cpp's GGUF has it as CONTROL
        # because the tokenizer config lists "<unk>" as special, and converters re-apply that.
        piece.type = _UNKNOWN if i == unk else kind
    spec = proto.trainer_spec
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = len(vocab.tokens)
    spec.byte_fallback = True
    spec.split_digits = True
    for name in ("unk", "bos", "eos", "pad"):
        if name in vocab.ids:
            setattr(spec, f"{name}_id", vocab.ids[name])
            setattr(spec, f"{name}_piece", vocab.tokens[vocab.ids[name]])
        else:
            setattr(spec, f"{name}_id", -1)
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto


def _sp_piece(token: str, kind: int) -> str:
    # llama.cpp's converter writes user-defined pieces with real spaces; SentencePiece spells a space "▁".
    return token.replace(_SPACE, _SP_SPACE) if kind == _USER_DEFINED else token


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

