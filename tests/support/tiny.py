"""Builders for tiny random Gemma-2/Gemma-3 models, a tiny SentencePiece vocabulary and LoRA adapters.

Everything here is made from scratch in the test session (no hub): the real pipeline then runs on
these files end to end, and its output is compared with transformers + PEFT on the same weights.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

VOCAB_SIZE = 512
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]  # ids 4, 5
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_WORDS = (
    "patient fever cough chest pain shortness breath headache nausea vomiting rash fatigue dizziness "
    "blood pressure heart rate diabetes insulin glucose infection antibiotic dose tablet daily history "
    "examination diagnosis treatment symptoms acute chronic mild severe left right abdominal tenderness "
    "the a of and with for in on was is has no signs year old woman man child reports denies started "
    "days weeks hours ago after before mg ml temperature 38.5 120/80 90 72 lungs clear swelling knee"
).split()

TEST_TEXT = (
    "<start_of_turn>user\nA 45 year old woman reports fever and cough for 3 days.<end_of_turn>\n"
    "<start_of_turn>model\nThe most likely diagnosis is an acute chest infection; check blood pressure 120/80 and "
    "temperature 38.5 after treatment with an antibiotic tablet daily. Café naïve — ünïcödé ✓"
)


def corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = rng.choices(_WORDS, k=rng.randint(4, 14))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ";", ","]))
    return lines


def train_tokenizer(folder: Path, extra_tokens: Sequence[str] = ()) -> None:
    """tokenizer.model (BPE, byte fallback, no dummy prefix, identity normalizer) + tokenizer_config.json.

    `extra_tokens` are added after the turn tokens as special tokens (the image tokens of a multimodal model).
    """
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model, vocab_size=VOCAB_SIZE, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=[*TURN_TOKENS, *extra_tokens], num_threads=1, minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for i, t in enumerate([*SPECIAL, *TURN_TOKENS, *extra_tokens])}
    write_json(folder / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>", "added_tokens_decoder": decoder, "chat_template": CHAT_TEMPLATE,
        "tokenizer_class": "GemmaTokenizer", "model_max_length": 512,
    })


def gemma3_config(vocab_size: int = VOCAB_SIZE, hidden_size: int = 64, intermediate_size: int = 128) -> dict[str, Any]:
    """Six layers, so layer 5 is global (rope 1e6) and 0-4 slide over 16 tokens (rope 1e4)."""
    n_layers = 6
    return {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": n_layers, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
        "query_pre_attn_scalar": 32, "sliding_window": 16, "max_position_embeddings": 512,
        "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)],
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None,
        "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None,
        "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": [1, 5], "pad_token_id": 0,
        "tie_word_embeddings": True, "torch_dtype": "float32",
    }


def gemma2_config(vocab_size: int = VOCAB_SIZE) -> dict[str, Any]:
    """Four layers alternating sliding (16 tokens) and global attention, with Gemma-2 soft-capping."""
    n_layers = 4
    return {
        "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
        "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": n_layers, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
        "query_pre_attn_scalar": 32, "sliding_window": 16, "max_position_embeddings": 512,
        "layer_types": ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)],
        "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def make_model(folder: Path, config: dict[str, Any], tokenizer: Path, seed: int = 0) -> Path:
    """A random model saved as float32 safetensors beside a copy of the tiny tokenizer.

    Weights are larger than the usual 0.02 initialisation and norms are non-zero, so next-token
    distributions are peaked (top-1 is meaningful) and the +1 on norms is really tested.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    config_obj = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "architectures"})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_obj, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            std = 0.3 if name.endswith("norm.weight") else (0.3 if "embed_tokens" in name else 0.12)
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.save_pretrained(folder, safe_serialization=True)
    write_json(folder / "config.json", config)  # the config as a release carries it, not re-serialised
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (folder / name).write_bytes((tokenizer / name).read_bytes())
    return folder


def make_adapter(base: Path, out: Path, targets: Sequence[str] = ("q_proj", "v_proj"), r: int = 4, alpha: float = 8,
                 rslora: bool = False, seed: int = 1, size: float = 0.5, **config: Any) -> Path:
    """A PEFT LoRA adapter with random non-zero A and B, its delta about `size` of each weight's RMS."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, use_rslora=rslora, **config)
    peft_model = get_peft_model(model, lora)
    randomize_lora(peft_model, alpha / (r ** 0.5 if rslora else r), r, seed, size)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def randomize_lora(peft_model: Any, scaling: float, r: int, seed: int, size: float) -> None:
    """Random non-zero A and B in every LoRA layer, each delta about `size` of its weight's RMS."""
    import torch
    from peft.tuners.lora import LoraLayer

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                weight = module.get_base_layer().weight
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
                rms = float(weight.pow(2).mean().sqrt())
                a.copy_(torch.randn(a.shape, generator=generator))
                b.copy_(torch.randn(b.shape, generator=generator) * size * rms / (scaling * r ** 0.5))


def reference_logits(base: Path, adapters: Sequence[tuple[Path, float]], ids: Sequence[int]) -> np.ndarray:
    """Next-token logits of transformers (float32) after PEFT merges each adapter, scaled, in turn."""
    import torch

    from medgemma_convert.reference import reference_model

    with torch.no_grad():
        return reference_model(base, adapters)(torch.tensor([list(ids)])).logits[0].double().numpy()


def llama_logits(gguf_path: Path, ids: Sequence[int]) -> np.ndarray:
    """Next-token logits of llama.cpp for every position of `ids`."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=512, n_batch=512, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def kld(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(P_reference || P_other) per position, from logits."""
    from medgemma_convert.verify import log_softmax

    p_log, q_log = log_softmax(reference), log_softmax(other)
    return (np.exp(p_log) * (p_log - q_log)).sum(axis=-1)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def make_bnb_4bit(base: Path, out: Path, quant_type: str = "nf4", double_quant: bool = True) -> Path:
    """`base` loaded with bitsandbytes 4-bit quantization on the CPU and saved as transformers saves it
    (packed weights with .absmax, .quant_map, [.nested_*] and a .quant_state blob), tokenizer beside it."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
                                bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=config, device_map="cpu", dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    for path in base.iterdir():
        if path.name.startswith("tokenizer") or path.name == "special_tokens_map.json":
            (out / path.name).write_bytes(path.read_bytes())
    return out


def dequantized_logits(base: Path, adapters: Sequence[tuple[Path, float]], ids: Sequence[int]) -> np.ndarray:
    """transformers' float32 logits on a bitsandbytes checkpoint dequantized by bitsandbytes, adapters merged by PEFT."""
    import torch

    from medgemma_convert.reference import reference_model

    with torch.no_grad():
        return reference_model(base, adapters)(torch.tensor([list(ids)])).logits[0].double().numpy()
