"""A tiny random multimodal Gemma 3 (SigLIP + projector + Gemma 3), its test image and its LoRA adapters.

The vision tower is small but real: 32x32 images in 8x8 patches (4x4 patches per side), pooled to
4 image tokens (2x2), so that the projector's pooling is really exercised. transformers' own
initialisation zeroes `mm_input_projection_weight` and every RMSNorm weight, which would make
every image embedding zero: everything is randomized here instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.tiny import gemma3_config, randomize_lora, write_json

IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")  # ids 6, 7, 8 after the turn tokens
BOI_ID, EOI_ID, IMAGE_ID = 6, 7, 8
IMAGE_SIZE, PATCH_SIZE, TOKENS_PER_IMAGE = 32, 8, 4
# Not SigLIP's 0.5s: values that show the export reads them from preprocessor_config.json.
IMAGE_MEAN = (0.48, 0.46, 0.41)
IMAGE_STD = (0.27, 0.26, 0.29)
VISION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# PEFT matches a string target_modules with re.fullmatch on the module's full name.
VISION_ONLY_TARGETS = r".*vision_tower.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"


def multimodal_config(tokens_per_image: int = TOKENS_PER_IMAGE, image_size: int = IMAGE_SIZE,
                      patch_size: int = PATCH_SIZE) -> dict[str, Any]:
    """config.json of a Gemma3ForConditionalGeneration: the tiny Gemma 3 text model and a 2-layer SigLIP."""
    text = {k: v for k, v in gemma3_config().items() if k != "architectures"}
    return {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "text_config": text,
        "vision_config": {
            "model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_channels": 3, "image_size": image_size,
            "patch_size": patch_size, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh", "vision_use_head": False,
        },
        "mm_tokens_per_image": tokens_per_image, "boi_token_index": BOI_ID, "eoi_token_index": EOI_ID,
        "image_token_index": IMAGE_ID, "initializer_range": 0.02, "torch_dtype": "float32",
    }


def preprocessor_config(tokens_per_image: int = TOKENS_PER_IMAGE, image_size: int = IMAGE_SIZE) -> dict[str, Any]:
    """preprocessor_config.json as Google's Gemma 3 releases have it, for the tiny model's sizes."""
    return {
        "image_processor_type": "Gemma3ImageProcessor", "processor_class": "Gemma3Processor",
        "do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "do_pan_and_scan": None, "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD),
        "image_seq_length": tokens_per_image, "resample": 2, "rescale_factor": 1 / 255,
        "size": {"height": image_size, "width": image_size},
    }


def make_multimodal_model(folder: Path, tokenizer: Path, seed: int = 0, **sizes: int) -> Path:
    """A random Gemma3ForConditionalGeneration saved as float32 safetensors, with tokenizer and preprocessor config."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    config_dict = multimodal_config(**sizes)
    config = Gemma3Config(**{k: v for k, v in config_dict.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).to(torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(_random_like(name, param, generator))
    model.save_pretrained(folder, safe_serialization=True)
    write_json(folder / "config.json", config_dict)
    write_json(folder / "preprocessor_config.json", preprocessor_config(
        sizes.get("tokens_per_image", TOKENS_PER_IMAGE), sizes.get("image_size", IMAGE_SIZE)))
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (folder / name).write_bytes((tokenizer / name).read_bytes())
    return folder


def _random_like(name: str, param: Any, generator: Any) -> Any:
    import torch

    noise = torch.randn(param.shape, generator=generator)
    if "vision_tower" in name and ("layer_norm" in name or "post_layernorm" in name):
        # SigLIP's LayerNorms scale by w itself (not 1 + w): keep them near one.
        return 1.0 + 0.2 * noise if name.endswith("weight") else 0.1 * noise
    if name.endswith("norm.weight"):
        return 0.3 * noise  # Gemma RMSNorms (text and mm_soft_emb_norm) scale by 1 + w
    if name.endswith("bias"):
        return 0.05 * noise
    if "embed_tokens" in name or "mm_input_projection" in name:
        return 0.3 * noise
    return 0.12 * noise


def make_multimodal_adapter(base: Path, out: Path, targets: str | Sequence[str] = "all-linear", r: int = 4,
                            alpha: float = 8, seed: int = 21, size: float = 0.5) -> Path:
    """A PEFT LoRA adapter on the multimodal model: "all-linear" (vision and language) as Google's notebook trains."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForConditionalGeneration

    model = Gemma3ForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets if isinstance(targets, str) else list(targets),
                      lora_dropout=0.0)
    peft_model = get_peft_model(model, lora)
    randomize_lora(peft_model, alpha / r, r, seed, size)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


# transformers >= 5 (and 4.52+) names -> the names of Google's MedGemma release (transformers < 4.52).
_RELEASE_NAMES = (
    (re.compile(r"^model\.vision_tower\.(?!vision_model\.)"), "vision_tower.vision_model."),
    (re.compile(r"^vision_tower\.(?!vision_model\.)"), "vision_tower.vision_model."),
    (re.compile(r"^model\.vision_tower\.vision_model\."), "vision_tower.vision_model."),
    (re.compile(r"^model\.multi_modal_projector\."), "multi_modal_projector."),
    (re.compile(r"^model\.language_model\."), "language_model.model."),
    (re.compile(r"^lm_head\."), "language_model.lm_head."),
)


def release_name(name: str) -> str:
    """A tensor (or adapter module, without PEFT's prefix) name as Google's MedGemma release spells it."""
    for pattern, replacement in _RELEASE_NAMES:
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return name


def with_release_names(source: Path, out: Path, adapter: bool = False) -> Path:
    """A copy of a model (or PEFT adapter) folder whose safetensors use the release's names."""
    from safetensors.numpy import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    prefix = "base_model.model." if adapter else ""
    for path in source.iterdir():
        if path.suffix != ".safetensors":
            (out / path.name).write_bytes(path.read_bytes())
            continue
        tensors = load_file(path)
        renamed = {prefix + release_name(k.removeprefix(prefix)): v for k, v in tensors.items()}
        save_file(renamed, out / path.name, metadata={"format": "pt"})
    if (out / "model.safetensors.index.json").is_file():
        index = json.loads((out / "model.safetensors.index.json").read_text(encoding="utf-8"))
        index["weight_map"] = {release_name(k): v for k, v in index["weight_map"].items()}
        write_json(out / "model.safetensors.index.json", index)
    return out


def fixed_image(size: int = IMAGE_SIZE, seed: int = 7) -> np.ndarray:
    """A fixed square RGB image of exactly the vision tower's size (uint8, height x width x 3): smooth
    gradients plus noise, so that every patch differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def reference_image_logits(base: Path, adapters: Sequence[Path], ids: Sequence[int | None], tail_start: int,
                           image: np.ndarray) -> np.ndarray:
    """transformers' float32 logits (PEFT merging each adapter) at positions tail_start.. of `ids`, whose None
    positions are the image's tokens; the image goes through the base's own Gemma3ImageProcessor."""
    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil

    model = Gemma3ForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    processor = Gemma3ImageProcessorPil.from_pretrained(base)
    pixels = processor(images=[Image.fromarray(image)], return_tensors="pt")["pixel_values"].to(torch.float32)
    input_ids = torch.tensor([[IMAGE_ID if i is None else i for i in ids]])
    token_type_ids = torch.tensor([[1 if i is None else 0 for i in ids]])
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixels, token_type_ids=token_type_ids).logits
    return logits[0, tail_start:].double().numpy()


def make_bnb_multimodal(base: Path, out: Path) -> Path:
    """The multimodal model loaded with bitsandbytes NF4 (double quantization) on the CPU and saved."""
    import torch
    from transformers import BitsAndBytesConfig, Gemma3ForConditionalGeneration

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    model = Gemma3ForConditionalGeneration.from_pretrained(base, quantization_config=config, device_map="cpu",
                                                           dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "preprocessor_config.json"):
        (out / name).write_bytes((base / name).read_bytes())
    return out
