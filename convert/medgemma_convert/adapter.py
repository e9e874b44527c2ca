"""A PEFT LoRA adapter: found, checked against the base, and mapped tensor by tensor onto it.

Only headers are read here; the weights are loaded by `lora.py` during the merge.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgemma_models.catalog import get_base
from medgemma_models.errors import AdapterError
from medgemma_models.files import sha256_file

from . import hub
from .base import ResolvedBase
from .json_input import read_json_object
from .options import AdapterSpec
from .progress import Progress, no_progress
from .safetensors_header import FLOAT_DTYPES, TensorEntry, read_header
from .tensor_names import text_model_name
from .vision import VisionTower, is_vision_name


_PREFIX = "base_model.model."
_A, _B = ".lora_A.weight", ".lora_B.weight"
_TIED = ("lm_head", "embed_tokens")
_CONVERT_BIN = (
    "python -c \"import torch; from safetensors.torch import save_file; "
    "save_file(torch.load('adapter_model.bin', weights_only=True), 'adapter_model.safetensors')\""
)
_PEFT_DEFAULT_R = _PEFT_DEFAULT_ALPHA = 8
# A rank_pattern / alpha_pattern key made only of these is a module path: its dots are separators.
_PLAIN_KEY = re.compile(r"[\w.]+")


@dataclass(frozen=True)
class LoraTarget:
    name: str  # GGUF name of the base tensor it changes
    module: str  # the module path in the adapter, for messages
    a: TensorEntry  # lora_A, where its bytes are
    b: TensorEntry  # lora_B
    rank: int
    alpha: float


@dataclass(frozen=True)
class ResolvedAdapter:
    id: str  # folder path as given, or hub repo id (owner/name)
    folder: Path
    weights: Path  # adapter_model.safetensors
    scale: float  # the user's multiplier (--adapter PATH:SCALE)
    r: int
    alpha: float
    rslora: bool
    sha256: str
    base_model: str | None  # base_model_name_or_path from adapter_config.json
    targets: tuple[LoraTarget, ...]  # on the text model
    vision_targets: tuple[LoraTarget, ...] = ()  # on the vision tower (merged into the mmproj), by mmproj GGUF name

    def factor(self, target: LoraTarget) -> float:
        """The multiplier of B @ A: scale * alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.scale * target.alpha / (math.sqrt(target.rank) if self.rslora else target.rank)

    def provenance(self) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256, "scale": self.scale, "r": self.r,
                "alpha": self.alpha, "rslora": self.rslora}


def resolve_adapter(
    spec: AdapterSpec, base: ResolvedBase, warnings: list[str], progress: Progress = no_progress,
    vision: VisionTower | None = None,
) -> ResolvedAdapter:
    """Find the adapter and check every tensor against the base; any misfit raises AdapterError.

    Targets on the vision tower are mapped onto `vision` (the mmproj being written); without one
    they are left out with a warning.
    """
    if not math.isfinite(spec.scale):
        raise AdapterError(f"--adapter {spec.source}: the scale {spec.scale} is not a finite number")
    source, folder = hub.locate(spec.source, hub.ADAPTER_FILES, "--adapter", progress)
    if not folder.exists():
        raise AdapterError(f"adapter not found: {source} (a PEFT folder){hub.download_hint(source)}")
    if not folder.is_dir():
        raise AdapterError(f"adapter {source} is not a folder (expected adapter_config.json + adapter_model.safetensors)")
    config = _read_config(folder)
    weights = _weights_file(folder)
    header = read_header(weights)
    _check_config(source, config, header)
    _check_base_identity(source, config.get("base_model_name_or_path"), base, warnings)
    targets, vision_targets = _map_targets(source, config, header, base, warnings, vision)
    return ResolvedAdapter(
        id=source, folder=folder, weights=weights, scale=spec.scale,
        r=config.get("r", _PEFT_DEFAULT_R), alpha=float(config.get("lora_alpha", _PEFT_DEFAULT_ALPHA)),
        rslora=config.get("use_rslora", False), sha256=sha256_file(weights),
        base_model=config.get("base_model_name_or_path"), targets=targets, vision_targets=vision_targets,
    )


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise AdapterError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    return read_json_object(path, AdapterError)


def _weights_file(folder: Path) -> Path:
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():
        return weights
    if (folder / "adapter_model.bin").is_file():
        raise AdapterError(
            f"{folder}/adapter_model.bin is a pickle, and loading a pickle can run code: refused. "
            f"Convert it once where you trust it, in that folder: {_CONVERT_BIN}"
        )
    raise AdapterError(f"missing adapter weights: {weights}")


def _check_config(source: str, config: dict[str, Any], header: dict[str, TensorEntry]) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"adapter {source} is {peft_type}; only LoRA adapters can be merged")
    if config.get("use_dora") or any("lora_magnitude_vector" in k for k in header):
        raise AdapterError(f"adapter {source} is a DoRA adapter (use_dora); DoRA is not supported yet")
    if config.get("modules_to_save") or any(".modules_to_save." in k for k in header):
        raise AdapterError(
            f"adapter {source} saves whole modules (modules_to_save: {config.get('modules_to_save')}); "
            "only LoRA deltas can be merged"
        )
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    tied = [t for t in targets if any(name in t for name in _TIED)]
    tied += [k for k in header if any(f".{name}." in k or k.startswith(f"{_PREFIX}{name}") for name in _TIED)]
    if tied:
        raise AdapterError(
            f"adapter {source} changes {tied[0]}; Gemma ties lm_head to embed_tokens, "
            "and adapters on them are not supported"
        )
    for key, what in (("trainable_token_indices", "trains embedding rows"), ("target_parameters", "targets raw parameters"),
                      ("layer_replication", "replicates layers")):
        if config.get(key):
            raise AdapterError(f"adapter {source} {what} ({key}); only LoRA deltas on linear layers can be merged")
    if config.get("lora_bias"):
        raise AdapterError(f"adapter {source} trains biases (lora_bias); Gemma has no biases to merge them into")
    _check_numbers(source, config)


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_numbers(source: str, config: dict[str, Any]) -> None:
    """r, lora_alpha and their per-module patterns: the merge divides by the rank and multiplies by alpha."""
    where = f"adapter {source}: adapter_config.json"
    r, alpha = config.get("r", _PEFT_DEFAULT_R), config.get("lora_alpha", _PEFT_DEFAULT_ALPHA)
    if not _is_rank(r):
        raise AdapterError(f"{where} gives r as {r!r}, not a whole number above 0")
    if not _is_finite(alpha):
        raise AdapterError(f"{where} gives lora_alpha as {alpha!r}, not a finite number")
    if not isinstance(config.get("use_rslora", False), bool):
        raise AdapterError(f"{where} gives use_rslora as {config['use_rslora']!r}, not true or false")
    for field, valid, what in (("rank_pattern", _is_rank, "a whole number above 0"), ("alpha_pattern", _is_finite, "a finite number")):
        patterns = config.get(field) or {}
        if not isinstance(patterns, dict):
            raise AdapterError(f"{where} gives {field} as {patterns!r}, not an object")
        for key, value in patterns.items():
            if not valid(value):
                raise AdapterError(f"{where} gives {field}[{key!r}] as {value!r}, not {what}")


def _check_base_identity(source: str, declared: str | None, base: ResolvedBase, warnings: list[str]) -> None:
    """Refuse an adapter made for another model; only warn when just the names differ."""
    if not declared or declared.rstrip("/") == base.id.rstrip("/"):
        return
    known = get_base(declared)
    if known is not None:
        if known.arch != base.arch or known.hidden_size != base.hidden_size:
            raise AdapterError(
                f"adapter {source} was made for {declared} ({known.arch}, hidden size {known.hidden_size}), "
                f"but the base is {base.arch} with hidden size {base.hidden_size}"
            )
        if known is get_base(base.id):
            return  # the same model under another name (e.g. its 4-bit QLoRA upload)
    warnings.append(f"adapter {source} was trained on {declared}, not {base.id}; its tensors fit, so it is merged anyway")


def _compile_patterns(source: str, config: dict[str, Any], field: str) -> list[tuple[re.Pattern[str], Any]]:
    r"""PEFT's rank_pattern / alpha_pattern keys as PEFT matches them: re.match(rf"(.*\.)?({key})$", module).

    A key made only of names and dots is a module path, matched literally (PEFT's regex reads its
    dots as any character, which no real module name can tell apart). Any other key is a regular
    expression, as in PEFT, but one that cannot compile, repeats a group or has more than two
    open-ended repeats is refused: matching those can take exponential time on a crafted config.
    """
    compiled = []
    for key, value in (config.get(field) or {}).items():
        where = f"adapter {source}: adapter_config.json {field} key {key!r}"
        plain = _PLAIN_KEY.fullmatch(key) is not None
        if not plain and (len(key) > 256 or _costly_regex(key)):
            raise AdapterError(f"{where} repeats a group or has over two open-ended repeats; write the module names out")
        try:
            compiled.append((re.compile(rf"(.*\.)?({re.escape(key) if plain else key})$"), value))
        except re.error as exc:
            raise AdapterError(f"{where} is not a valid regular expression ({exc})") from None
    return compiled


def _costly_regex(pattern: str) -> bool:
    """A quantifier on a group, or more than two unbounded repeats: backtracking that can explode."""
    unbounded, in_class, after_group, i = 0, False, False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i, after_group = i + 2, False
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c in "*+{":
            if after_group:
                return True
            if c != "{" or re.match(r"\{\d*,\}", pattern[i:]):
                unbounded += 1
        after_group = c == ")" and not in_class
        i += 1
    return unbounded > 2


def _pattern_value(patterns: list[tuple[re.Pattern[str], Any]], module: str, default: Any) -> Any:
    # As PEFT's get_pattern_key: the first key (in the file's order) that matches wins.
    return next((value for pattern, value in patterns if pattern.match(module)), default)


def _map_targets(
    source: str, config: dict[str, Any], header: dict[str, TensorEntry], base: ResolvedBase, warnings: list[str],
    vision: VisionTower | None = None,
) -> tuple[tuple[LoraTarget, ...], tuple[LoraTarget, ...]]:
    """(text-model targets, vision-tower targets) of the adapter."""
    modules: dict[str, dict[str, str]] = {}
    for key in header:
        if key.endswith(_A):
            modules.setdefault(key[: -len(_A)], {})["A"] = key
        elif key.endswith(_B):
            modules.setdefault(key[: -len(_B)], {})["B"] = key
        else:
            raise AdapterError(f"adapter {source} has tensor {key}, which is not a LoRA A/B weight")
    if not modules:
        raise AdapterError(f"adapter {source} holds no LoRA tensors")
    rank_patterns = _compile_patterns(source, config, "rank_pattern")
    alpha_patterns = _compile_patterns(source, config, "alpha_pattern")
    targets: list[LoraTarget] = []
    vision_targets: list[LoraTarget] = []
    skipped = 0
    for key_module, pair in sorted(modules.items()):
        if "A" not in pair or "B" not in pair:
            raise AdapterError(f"adapter {source} has only one of lora_A/lora_B for {key_module}")
        module = key_module.removeprefix(_PREFIX)
        on_vision = is_vision_name(module)
        if on_vision or text_model_name(module + ".weight") is None:
            if vision is None or not on_vision:
                skipped += 1  # vision-tower modules when no mmproj is written
                continue
            name = vision.gguf_name(module + ".weight")
            tensor_source, shape = _vision_tensor(vision, name)
            into = vision_targets
        else:
            name = base.name_map.gguf_name(module + ".weight")
            tensor = base.tensor(name) if name else None
            tensor_source, shape = (tensor.source, tensor.shape) if tensor is not None else (None, None)
            into = targets
        if tensor_source is None or shape is None or name is None:
            raise AdapterError(f"adapter {source} targets {module}, which the base does not have")
        if any(t.name == name for t in into):
            raise AdapterError(f"adapter {source}: {module} lands on base tensor {tensor_source} a second time")
        a, b = header[pair["A"]], header[pair["B"]]
        if a.dtype not in FLOAT_DTYPES or b.dtype not in FLOAT_DTYPES:
            raise AdapterError(f"adapter {source}: {module} is stored as {a.dtype}/{b.dtype}, not float32/float16/bfloat16")
        fits = len(shape) == 2 and len(a.shape) == 2 and len(b.shape) == 2 and a.shape[0] == b.shape[1]
        if not fits or a.shape[1] != shape[1] or b.shape[0] != shape[0]:
            raise AdapterError(
                f"adapter {source}: {module} does not fit the base: lora_A {a.shape} x lora_B {b.shape} "
                f"against base tensor {tensor_source} {shape}"
            )
        rank = _pattern_value(rank_patterns, module, config.get("r", _PEFT_DEFAULT_R))
        if a.shape[0] != rank:
            # PEFT would refuse to load it; here the scale alpha / r would silently be wrong.
            raise AdapterError(
                f"adapter {source}: {module} has rank {a.shape[0]} in adapter_model.safetensors, "
                f"but adapter_config.json gives it rank {rank}"
            )
        alpha = float(_pattern_value(alpha_patterns, module, config.get("lora_alpha", _PEFT_DEFAULT_ALPHA)))
        into.append(LoraTarget(name, module, a, b, rank, alpha))
    if skipped:
        warnings.append(
            f"adapter {source}: {skipped} vision-tower module(s) left out: only the text model is written here "
            "(llama.cpp applies no runtime adapter to an mmproj; merging the adapter into a multimodal base "
            "writes them into its mmproj)")
    return tuple(targets), tuple(vision_targets)


def _vision_tensor(vision: VisionTower, name: str | None) -> tuple[str | None, tuple[int, ...] | None]:
    tensor = vision.tensor(name) if name else None
    return (tensor.source, tensor.shape) if tensor is not None else (None, None)
