"""The vision tower of a multimodal Gemma 3 checkpoint (SigLIP and Gemma 3's projector), from headers only.

MedGemma 4B is a `Gemma3ForConditionalGeneration`: llama.cpp runs its language model from the text
GGUF and its vision tower from a second file, the "mmproj" GGUF (`mmproj.py` writes it). Everything
that file needs is checked here, before any weights are read: the SigLIP sizes, the image
normalisation of preprocessor_config.json, the tokens per image and every tensor's shape.

Tensor names differ by transformers version (Google's release: `vision_tower.vision_model.*`;
transformers 5: `vision_tower.*` or `model.vision_tower.*`, without `vision_model.`). They are all
brought to the release's spelling, which gguf-py's own name map (MODEL_ARCH.MMPROJ) knows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from medgemma_models.errors import ConversionError

from . import bnb
from .json_input import read_json_object
from .safetensors_header import FLOAT_DTYPES, TensorEntry, read_model_headers

_VISION_PREFIXES = ("model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.", "vision_tower.")
_PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")
_CANONICAL_VISION = "vision_tower.vision_model."
_CANONICAL_PROJECTOR = "multi_modal_projector."
# SigLIP's pooling head: Gemma 3 does not use it (llama.cpp's converter drops it too).
_UNUSED = ("vision_tower.vision_model.head.",)
_SOFT_EMB_NORM = "mm.soft_emb_norm.weight"
INPUT_PROJECTION = "mm.input_projection.weight"
_MAX_SIZE = 1 << 16


@dataclass(frozen=True)
class VisionTensor:
    name: str  # GGUF name, e.g. v.blk.0.attn_q.weight
    shape: tuple[int, ...]
    source: str  # the tensor's name in its file
    stored: TensorEntry | bnb.Bnb4bitEntry
    norm_shift: bool = False  # mm.soft_emb_norm is a Gemma RMSNorm: stored as w, used as 1 + w
    embedding: bool = False  # patch and position embeddings: kept in f32, as llama.cpp's converter does


@dataclass(frozen=True)
class VisionTower:
    folder: Path
    image_size: int
    patch_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    layer_norm_eps: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    tokens_per_image: int
    text_hidden_size: int  # the projector's output width: the text model's embedding width
    tensors: tuple[VisionTensor, ...]

    @property
    def scale_factor(self) -> int:
        """Patches per side pooled into one image token per side (4 for every Gemma 3: 64 -> 16)."""
        return (self.image_size // self.patch_size) // math.isqrt(self.tokens_per_image)

    def gguf_name(self, hf_name: str) -> str | None:
        """The mmproj GGUF name of a vision-tower or projector tensor name, in any naming scheme."""
        canonical = canonical_name(hf_name)
        if canonical is None:
            return None
        return _name_map(self.n_layers).get_name(canonical, try_suffixes=(".weight", ".bias"))

    def tensor(self, name: str) -> VisionTensor | None:
        return next((t for t in self.tensors if t.name == name), None)


def is_vision_name(hf_name: str) -> bool:
    """A vision-tower or projector tensor (or adapter module) of a multimodal checkpoint."""
    return hf_name.startswith(_VISION_PREFIXES + _PROJECTOR_PREFIXES)


def canonical_name(hf_name: str) -> str | None:
    """'model.vision_tower.encoder.layers.0.mlp.fc1.weight' -> 'vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight';
    None for a name outside the vision tower and projector."""
    for prefix in _VISION_PREFIXES:
        if hf_name.startswith(prefix):
            return _CANONICAL_VISION + hf_name[len(prefix):]
    for prefix in _PROJECTOR_PREFIXES:
        if hf_name.startswith(prefix):
            rest = hf_name[len(prefix):]
            # Gemma 3 stores its input projection as a bare parameter, `mm_input_projection_weight`.
            return _CANONICAL_PROJECTOR + (rest[: -len("_weight")] + ".weight" if rest.endswith("_weight") else rest)
    return None


def _name_map(n_layers: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, n_layers)


def resolve_vision(folder: Path, text_hidden_size: int) -> VisionTower | None:
    """The vision tower of the checkpoint in `folder`, or None for a text-only one; misfits raise ConversionError."""
    config_file = folder / "config.json"
    config = read_json_object(config_file)
    vision = config.get("vision_config")
    if vision is None:
        return None
    if not isinstance(vision, dict):
        raise ConversionError(f"{config_file}: vision_config is not an object")
    model_type = vision.get("model_type", "siglip_vision_model")
    if model_type != "siglip_vision_model":
        raise ConversionError(f"{config_file}: the vision tower is {model_type}; only Gemma 3's SigLIP can be exported")
    sizes = {key: _size(vision, key, config_file, default) for key, default in (
        ("image_size", 896), ("patch_size", 14), ("hidden_size", 1152), ("intermediate_size", 4304),
        ("num_hidden_layers", 27), ("num_attention_heads", 16))}
    eps = vision.get("layer_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ConversionError(f"{config_file}: vision_config.layer_norm_eps is {eps!r}, not a small positive number")
    preprocessor = _preprocessor(folder)
    tokens = _tokens_per_image(config, preprocessor, config_file)
    _check_pooling(sizes["image_size"], sizes["patch_size"], tokens, config_file)
    quantized = bnb.quantization(config, folder) is not None
    tensors = _tensors(folder, sizes, text_hidden_size, config_file, quantized)
    return VisionTower(
        folder=folder, image_size=sizes["image_size"], patch_size=sizes["patch_size"], hidden_size=sizes["hidden_size"],
        intermediate_size=sizes["intermediate_size"], n_layers=sizes["num_hidden_layers"],
        n_heads=sizes["num_attention_heads"], layer_norm_eps=float(eps),
        image_mean=_triple(preprocessor, "image_mean", folder), image_std=_triple(preprocessor, "image_std", folder),
        tokens_per_image=tokens, text_hidden_size=text_hidden_size, tensors=tensors,
    )


def _size(vision: dict[str, Any], key: str, config_file: Path, default: int) -> int:
    value = vision.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_SIZE:
        raise ConversionError(f"{config_file}: vision_config.{key} is {value!r}, not a whole number from 1 to {_MAX_SIZE:,}")
    return value


def _preprocessor(folder: Path) -> dict[str, Any]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise ConversionError(
            f"the multimodal base in {folder} has no preprocessor_config.json (the image normalisation the vision "
            "tower was trained with): copy it from the release, or pass --no-mmproj for the text model only"
        )
    return read_json_object(path)


def _triple(preprocessor: dict[str, Any], key: str, folder: Path) -> tuple[float, float, float]:
    value = preprocessor.get(key)
    if not isinstance(value, list) or len(value) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ConversionError(f"{folder / 'preprocessor_config.json'}: {key} is {value!r}, not three numbers (R, G, B)")
    if key == "image_std" and not all(v > 0 for v in value):
        raise ConversionError(f"{folder / 'preprocessor_config.json'}: image_std is {value!r}; each must be above 0")
    return (float(value[0]), float(value[1]), float(value[2]))


def _tokens_per_image(config: dict[str, Any], preprocessor: dict[str, Any], config_file: Path) -> int:
    """image_seq_length of the preprocessor (what llama.cpp's converter reads), which must agree with the model's."""
    model_tokens = config.get("mm_tokens_per_image", 256)
    tokens = preprocessor.get("image_seq_length", model_tokens)
    for where, value in (("preprocessor_config.json image_seq_length", tokens), ("mm_tokens_per_image", model_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_SIZE:
            raise ConversionError(f"{config_file.parent}: {where} is {value!r}, not a whole number of tokens")
    if tokens != model_tokens:
        raise ConversionError(
            f"{config_file.parent}: preprocessor_config.json gives {tokens} tokens per image, config.json {model_tokens}")
    return tokens


def _check_pooling(image_size: int, patch_size: int, tokens: int, config_file: Path) -> None:
    """Gemma 3 pools square blocks of patches into a square grid of tokens: both must come out whole."""
    if image_size % patch_size:
        raise ConversionError(f"{config_file}: vision_config.image_size {image_size} is not a multiple of patch_size {patch_size}")
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConversionError(
            f"{config_file}: {tokens} tokens per image is not a square number; Gemma 3 pools the patches into a square grid")
    patches = image_size // patch_size
    if patches % side:
        raise ConversionError(
            f"{config_file}: {tokens} tokens per image ({side} per side) do not divide the {patches} patches per side")


def _tensors(folder: Path, sizes: dict[str, int], text_hidden: int, config_file: Path,
             quantized: bool) -> tuple[VisionTensor, ...]:
    names = _name_map(sizes["num_hidden_layers"])
    hidden, ffn, patch = sizes["hidden_size"], sizes["intermediate_size"], sizes["patch_size"]
    n_patches = (sizes["image_size"] // patch) ** 2
    expected = {
        "v.patch_embd.weight": (hidden, 3, patch, patch), "v.patch_embd.bias": (hidden,),
        "v.position_embd.weight": (n_patches, hidden), "v.post_ln.weight": (hidden,), "v.post_ln.bias": (hidden,),
        INPUT_PROJECTION: (hidden, text_hidden), _SOFT_EMB_NORM: (hidden,),
    }
    for i in range(sizes["num_hidden_layers"]):
        for kind, shape in (("attn_q", (hidden, hidden)), ("attn_k", (hidden, hidden)), ("attn_v", (hidden, hidden)),
                            ("attn_out", (hidden, hidden)), ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))):
            expected[f"v.blk.{i}.{kind}.weight"] = shape
            expected[f"v.blk.{i}.{kind}.bias"] = (shape[0],)
        for norm in ("ln1", "ln2"):
            expected[f"v.blk.{i}.{norm}.weight"] = expected[f"v.blk.{i}.{norm}.bias"] = (hidden,)
    found: dict[str, VisionTensor] = {}
    headers = read_model_headers(folder)
    for hf_name, stored in headers.items():
        canonical = canonical_name(hf_name)
        if canonical is None or canonical.startswith(_UNUSED) or (quantized and bnb.is_part(hf_name)):
            continue
        entry: TensorEntry | bnb.Bnb4bitEntry = stored
        if quantized and stored.dtype not in FLOAT_DTYPES:
            entry = bnb.resolve_4bit(hf_name, stored, headers, folder)  # a bitsandbytes 4-bit vision tower
        name = names.get_name(canonical, try_suffixes=(".weight", ".bias"))
        if name is None or name not in expected:
            raise ConversionError(f"{folder}: the vision tower has {hf_name}, which llama.cpp's Gemma 3 projector does not use")
        if name in found:
            raise ConversionError(f"{folder}: {hf_name} and {found[name].source} are the same vision tensor")
        if entry.dtype not in FLOAT_DTYPES:
            raise ConversionError(f"{folder}: {hf_name} is stored as {entry.dtype}, not float32/float16/bfloat16")
        if entry.shape != expected[name]:
            what = "the text model's width" if name == INPUT_PROJECTION else "config.json's vision_config"
            raise ConversionError(
                f"{config_file}: {what} implies shape {expected[name]} for {hf_name}, but {entry.file.name} has {entry.shape}")
        found[name] = VisionTensor(name, entry.shape, hf_name, entry, norm_shift=name == _SOFT_EMB_NORM,
                                   embedding=".embeddings." in canonical)
    missing = [name for name in expected if name not in found]
    if missing:
        raise ConversionError(f"the vision tower in {folder} has no {missing[0]} tensor ({len(missing)} missing)")
    return tuple(found[name] for name in expected)
