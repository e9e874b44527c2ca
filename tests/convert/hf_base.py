"""Hugging Face-format Gemma-3 bases and LoRA adapters built from the embedded 270M GGUF.

No hub access here, so the real 270M release is re-created from the GGUF that ships with the
project: transformers dequantizes the weights, the SentencePiece model is rebuilt from the GGUF
vocabulary, and the JSON files are written as Google's release has them. The result is what a
user would download, up to the Q4_K_M rounding of the weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tiny import write_json

from medgemma_models.catalog import BaseSpec, get_base

# Bump when the folder layout changes, so cached folders from older code are rebuilt.
LAYOUT_VERSION = 1

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")

# Google's Gemma-3 chat template. It starts with `{{ bos_token }}`: a converter must not let it
# add a second BOS when the runtime adds one (add_bos_token is true).
GEMMA3_CHAT_TEMPLATE = (
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

# GGUF token types (gguf.TokenType) and SentencePiece piece types share their numbers
# (NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6): they are copied as they are.
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4
_SPACE, _SP_SPACE = " ", "\u2581"


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


GEMMA3_270M = "google/gemma-3-270m"
GEMMA3_1B = "google/gemma-3-1b-pt"


def build_hf_base(gguf_path: Path, out: Path) -> Path:
    """Write a Google-style HF folder for the Gemma-3-270M in `gguf_path` (bf16 safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, GgufConfig

    out.mkdir(parents=True, exist_ok=True)
    vocab = read_gguf_vocab(gguf_path)
    config_dict = release_config(get_base(GEMMA3_270M))
    assert config_dict["vocab_size"] == len(vocab["tokens"])
    # transformers unpacks every block to float32 and undoes llama.cpp's "+1" on the norm weights.
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    # A model loaded from GGUF refuses save_pretrained: move the weights into a plain one.
    model = Gemma3ForCausalLM(Gemma3TextConfig.from_dict(config_dict))
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    del model
    write_json(out / "config.json", config_dict)
    write_tokenizer(vocab, out)
    return out


def read_gguf_vocab(gguf_path: Path) -> dict[str, Any]:
    """Tokens, scores and token types of a GGUF file (the `tokenizer.ggml.*` arrays)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    return {
        "tokens": list(reader.fields["tokenizer.ggml.tokens"].contents()),
        "scores": [float(s) for s in reader.fields["tokenizer.ggml.scores"].contents()],
        "types": [int(t) for t in reader.fields["tokenizer.ggml.token_type"].contents()],
    }


def write_tokenizer(vocab: dict[str, Any], out: Path) -> None:
    """tokenizer.model, tokenizer_config.json and friends, as in Google's Gemma-3 release."""
    tokens, types = vocab["tokens"], vocab["types"]
    (out / "tokenizer.model").write_bytes(sentencepiece_model(vocab).SerializeToString())
    # Every control token is special; user-defined ones (whitespace runs, "[multimodal]", the image
    # markers) are not. Converters read these to mark token types, as llama.cpp's does.
    added = {
        str(i): {
            "content": _sp_piece(tokens[i], types[i]),
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": types[i] == _CONTROL,
        }
        for i in range(len(tokens))
        if types[i] in (_CONTROL, _USER_DEFINED)
    }
    write_json(
        out / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "add_sep_token": False,
            "added_tokens_decoder": added,
            "bos_token": "<bos>",
            "chat_template": GEMMA3_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<eos>",
            "extra_special_tokens": {},
            "model_max_length": 1000000000000000019884624838656,
            "pad_token": "<pad>",
            "padding_side": "left",
            "sp_model_kwargs": {},
            "spaces_between_special_tokens": False,
            "tokenizer_class": "GemmaTokenizer",
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
        },
    )
    special = {"content": "", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    write_json(
        out / "special_tokens_map.json",
        {name: {**special, "content": text} for name, text in
         (("bos_token", "<bos>"), ("eos_token", "<eos>"), ("pad_token", "<pad>"), ("unk_token", "<unk>"))},
    )
    _write_tokenizer_json(out)
    write_json(
        out / "generation_config.json",
        {"bos_token_id": 2, "cache_implementation": "hybrid", "do_sample": True, "eos_token_id": [1, 106],
         "pad_token_id": 0, "top_k": 64, "top_p": 0.95},
    )


def _write_tokenizer_json(out: Path) -> None:
    # Google ships tokenizer.json beside tokenizer.model, and converters take the special token ids
    # (unknown, ...) from its added tokens: let transformers convert the SentencePiece model, as
    # Google's release was made.
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        AutoTokenizer.from_pretrained(out).save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "tokenizer.json", out / "tokenizer.json")


def sentencepiece_model(vocab: dict[str, Any]) -> Any:
    """A SentencePiece BPE ModelProto (byte fallback, identity normalizer, no dummy prefix) for a GGUF vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    tokens, scores, types = vocab["tokens"], vocab["scores"], vocab["types"]
    unk = tokens.index("<unk>")
    for i, (token, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = proto.pieces.add()
        piece.piece = _sp_piece(token, kind)
        piece.score = score
        # SentencePiece needs its unknown piece typed UNKNOWN; llama.cpp's GGUF has it as CONTROL
        # because the tokenizer config lists "<unk>" as special, and converters re-apply that.
        piece.type = _UNKNOWN if i == unk else kind
    spec = proto.trainer_spec
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = True
    spec.split_digits = True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = unk, tokens.index("<bos>"), tokens.index("<eos>"), tokens.index("<pad>")
    spec.unk_piece, spec.bos_piece, spec.eos_piece, spec.pad_piece = "<unk>", "<bos>", "<eos>", "<pad>"
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto


def _sp_piece(token: str, kind: int) -> str:
    # llama.cpp's converter writes user-defined pieces with real spaces; SentencePiece spells a space "▁".
    return token.replace(_SPACE, _SP_SPACE) if kind == _USER_DEFINED else token


def random_gemma3(out: Path, tokenizer_from: Path, base_id: str, seed: int = 0) -> Path:
    """A randomly initialised Gemma-3 of a catalog base's shape, bf16 safetensors, with another base's tokenizer files."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    out.mkdir(parents=True, exist_ok=True)
    config_dict = release_config(get_base(base_id))
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(Gemma3TextConfig.from_dict(config_dict)).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    del model
    write_json(out / "config.json", config_dict)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_from / name, out / name)
    return out
