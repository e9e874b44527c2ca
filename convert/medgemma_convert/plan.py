"""Plan first: every input checked cheaply (headers only) before any weights are read.

Each command has its options (options.py, checked for form) and a plan (checked against the real
inputs, with the outputs' sizes against the free disk space); only then is anything written. The
plan of `export-hf` is in export_hf.py, beside the GGUF reading it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
from medgemma_models.catalog import choose_preset, get_preset
from medgemma_models.errors import ConversionError
from medgemma_models.files import check_free_space, check_writable

from .adapter import ResolvedAdapter, resolve_adapter
from .base import ResolvedBase, resolve_base
from .gguf_export import tensor_nbytes
from .mmproj import mmproj_path, tensor_type
from .options import ConversionOptions, LoraOptions
from .progress import Progress, no_progress
from .quantize import QuantRecipe, check_quantization
from .quants import intermediate_type, output_paths
from .space import metadata_bytes, peak_bytes, quantized_bytes, unquantized_bytes
from .verify import check_available
from .vision import VisionTower, resolve_vision

if TYPE_CHECKING:
    from .imatrix import Imatrix


@dataclass(frozen=True)
class ConversionPlan:
    options: ConversionOptions
    base: ResolvedBase
    adapters: tuple[ResolvedAdapter, ...]
    outputs: dict[str, Path]  # quant name -> final path, in the order asked for
    intermediate: str  # the unquantized type our writer produces ("f32", "f16" or "bf16")
    preset: str | None
    name: str
    warnings: tuple[str, ...]
    vision: VisionTower | None = None  # a multimodal base's vision tower, written to `mmproj`
    mmproj: Path | None = None
    recipes: dict[str, QuantRecipe] = field(default_factory=dict)  # quantized output -> llama.cpp recipe
    imatrix: Imatrix | None = None  # the --imatrix FILE, read once while planning
    sizes: dict[Path, int] = field(default_factory=dict)  # every file to be written -> its expected bytes
    peak_bytes: int = 0  # expected peak resident memory


def plan(options: ConversionOptions, progress: Progress = no_progress) -> ConversionPlan:
    """Validate options against the real inputs; raises a MedGemmaError naming the first problem.

    Reports stage "plan" after each input (and "download ..." while one is fetched), so that a
    cancel is honoured while planning too.
    """
    steps = 1 + len(options.adapters)
    progress("plan", 0, steps)
    outputs = output_paths(options.out, options.quants)
    for path in outputs.values():
        check_writable(path, options.force)
    if options.report is not None:
        check_writable(options.report, options.force)
    if options.eval_text is not None and not options.eval_text.is_file():
        raise ConversionError(f"evaluation text not found: {options.eval_text}")
    warnings: list[str] = []
    base = resolve_base(options.base, progress)
    shapes = [(t.name, t.shape) for t in base.tensors]
    recipes, imatrix = check_quantization(options, shapes)
    vision, mmproj = _vision(options, base, outputs)
    sizes = _sizes(options, shapes, recipes, outputs, vision, mmproj)
    check_free_space(sizes)
    if options.verify != "none":
        check_available()
    progress("plan", 1, steps)
    if base.quantization is not None:
        from .bnb import describe

        warnings.append(f"the base {base.path.name} is a bitsandbytes 4-bit checkpoint ({describe(base.hparams)}): its "
                        "weights are dequantized exactly, but 4-bit rounding already lost quality that the 16-bit "
                        "release has; a QLoRA adapter merges onto the very weights it was trained against")
    if base.kind == "gguf":
        warnings.append(f"the base {base.path.name} is a GGUF file: its weights are dequantized, and requantizing them "
                        "loses quality; the original Hugging Face folder gives better results")
    resolved: list[ResolvedAdapter] = []
    for spec in options.adapters:
        resolved.append(resolve_adapter(spec, base, warnings, progress, vision))
        progress("plan", 1 + len(resolved), steps)
    adapters = tuple(resolved)
    return ConversionPlan(
        options=options,
        base=base,
        adapters=adapters,
        outputs=outputs,
        intermediate=intermediate_type(options.quants),
        preset=_preset(options, base, adapters),
        name=options.name or _default_name(base, adapters),
        warnings=tuple(warnings),
        vision=vision,
        mmproj=mmproj,
        recipes=recipes,
        imatrix=imatrix,
        sizes=sizes,
        peak_bytes=peak_bytes(shapes, quantized=bool(recipes)),
    )


def _sizes(options: ConversionOptions, shapes: list[tuple[str, tuple[int, ...]]], recipes: dict[str, QuantRecipe],
           outputs: dict[str, Path], vision: VisionTower | None, mmproj: Path | None) -> dict[Path, int]:
    """Each file the conversion writes, temporary ones included, with its expected size."""
    vocab = next((shape[0] for name, shape in shapes if name == "token_embd.weight"), 0)
    sizes = {path: (quantized_bytes(shapes, quant, recipes[quant], vocab) if quant in recipes
                    else unquantized_bytes(shapes, quant, vocab)) for quant, path in outputs.items()}
    intermediate = intermediate_type(options.quants)
    if intermediate not in outputs:  # the temporary unquantized source of the quantizer
        sizes[options.out.with_name(f"{options.out.name}.{intermediate}")] = unquantized_bytes(shapes, intermediate, vocab)
    if any(recipe.untied for recipe in recipes.values()):
        sizes[options.out.with_name(f"{options.out.name}.untied")] = unquantized_bytes(shapes, intermediate, vocab) * 2
    if vision is not None and mmproj is not None:
        sizes[mmproj] = metadata_bytes(0, len(vision.tensors)) + sum(tensor_nbytes(t.shape, tensor_type(t, options.mmproj_type))
                                                for t in vision.tensors)
    return sizes


# q8_0 as f16: lora_b's rows (rank values) are too short for its blocks, and stay in f16.
_LORA_TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
               "q8_0": gguf.GGMLQuantizationType.F16}


@dataclass(frozen=True)
class LoraPlan:
    options: LoraOptions
    base: ResolvedBase
    adapters: tuple[ResolvedAdapter, ...]
    alpha: float  # adapter.lora.alpha of the file
    preset: str | None
    name: str
    warnings: tuple[str, ...]
    size: int  # the adapter file's expected bytes


def plan_lora(options: LoraOptions, progress: Progress = no_progress) -> LoraPlan:
    """Check the base and every adapter (headers only), with the same refusals as a merged export."""
    steps = 1 + len(options.adapters)
    progress("plan", 0, steps)
    check_writable(options.out, options.force)
    if options.eval_text is not None and not options.eval_text.is_file():
        raise ConversionError(f"evaluation text not found: {options.eval_text}")
    if options.verify:
        check_available()
    warnings: list[str] = []
    base = resolve_base(options.base, progress)
    progress("plan", 1, steps)
    resolved: list[ResolvedAdapter] = []
    for spec in options.adapters:
        resolved.append(resolve_adapter(spec, base, warnings, progress))
        progress("plan", 1 + len(resolved), steps)
    adapters = tuple(resolved)
    pairs = [(t.rank, t.a.shape[-1] + t.b.shape[0]) for a in adapters for t in a.targets]
    size = metadata_bytes(0, 2 * len(pairs)) + sum(tensor_nbytes(shape, _LORA_TYPES[options.out_type]) for shape in pairs)
    check_free_space({options.out: size})
    conversion = ConversionOptions(base=options.base, out=options.out, adapters=options.adapters, preset=options.preset)
    return LoraPlan(
        options=options,
        base=base,
        adapters=adapters,
        # The first adapter's alpha, so that a plain adapter is written as llama.cpp's converter writes it.
        alpha=adapters[0].alpha,
        preset=_preset(conversion, base, adapters),
        name=options.name or _default_name(base, adapters),
        warnings=tuple(warnings),
        size=size,
    )


def _vision(options: ConversionOptions, base: ResolvedBase, outputs: dict[str, Path]) -> tuple[VisionTower | None, Path | None]:
    """The vision tower to write as an mmproj, and where; (None, None) for a text-only base or --no-mmproj."""
    if not options.mmproj:
        return None, None
    vision = resolve_vision(base.path, base.hidden_size) if base.kind == "hf" else None
    if vision is None:
        if options.mmproj_out is not None:
            raise ConversionError(f"--mmproj-out: the base {base.id} has no vision tower (it is a text-only model)")
        return None, None
    path = mmproj_path(options.out, options.mmproj_out)
    if path in outputs.values():
        raise ConversionError(f"--mmproj-out {path} is also a text model output")
    check_writable(path, options.force)
    return vision, path


def _preset(options: ConversionOptions, base: ResolvedBase, adapters: tuple[ResolvedAdapter, ...]) -> str | None:
    if options.preset is not None:
        try:
            return get_preset(options.preset).name
        except KeyError as exc:
            raise ConversionError(str(exc.args[0])) from None
    found = choose_preset([a.id for a in adapters], base.id, adapter_bases=[a.base_model for a in adapters[:1] if a.base_model])
    return found.name if found else None


def _default_name(base: ResolvedBase, adapters: tuple[ResolvedAdapter, ...]) -> str:
    source = adapters[-1].id if adapters else base.id
    return Path(source.rstrip("/")).name.removesuffix(".gguf") or "model"
