"""Plan first: every input checked cheaply (headers only) before any weights are read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medgemma_models.catalog import choose_preset, get_preset
from medgemma_models.errors import ConversionError
from medgemma_models.files import check_writable

from .adapter import ResolvedAdapter, resolve_adapter
from .base import ResolvedBase, resolve_base
from .options import ConversionOptions
from .progress import Progress, no_progress
from .quantize import check_quantization
from .quants import intermediate_type, output_paths
from .mmproj import mmproj_path
from .verify import check_available
from .vision import VisionTower, resolve_vision


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
    check_quantization(options, [(t.name, t.shape) for t in base.tensors])
    vision, mmproj = _vision(options, base, outputs)
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
