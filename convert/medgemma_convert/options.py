"""What the user asked for, validated for form only; `plan.plan()` checks it against the inputs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgemma_models.errors import ConversionError
from medgemma_models.quants import TENSOR_TYPES

from .quants import UNQUANTIZED, parse_quants


@dataclass(frozen=True)
class AdapterSpec:
    source: str  # a PEFT folder or a hub repo id
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> AdapterSpec:
        """'path/to/adapter' or 'path/to/adapter:0.5' (the last ':' starts the scale if it is a number)."""
        if not text:
            raise ConversionError("empty --adapter value")
        source, _, tail = text.rpartition(":")
        scale = _number(tail) if source else None
        # A ':' followed by something else belongs to the path itself.
        return cls(source, scale) if scale is not None else cls(text, 1.0)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class ConversionOptions:
    base: str
    out: Path
    adapters: tuple[AdapterSpec, ...] = ()
    quants: tuple[str, ...] = ("f16",)
    preset: str | None = None
    name: str | None = None
    license: str | None = None
    # "quick", "full" or "none". The command line (and so the app) asks for "quick" unless told
    # otherwise; a library caller opts in, as the check needs torch and transformers.
    verify: str = "none"
    eval_text: Path | None = None
    imatrix: str | None = None  # "auto" (computed on the shipped medical text) or an imatrix file
    calibration_text: Path | None = None  # added to the shipped text for --imatrix auto
    save_imatrix: Path | None = None  # where to keep the imatrix computed, in llama.cpp's format
    output_type: str | None = None  # ggml type names, e.g. "q4_0"
    embedding_type: str | None = None
    tensor_types: tuple[tuple[str, str], ...] = ()  # (regex on GGUF tensor names, type)
    report: Path | None = None
    force: bool = False
    # A multimodal base's vision tower as an mmproj GGUF beside the text model (False: --no-mmproj).
    mmproj: bool = True
    mmproj_type: str = "f16"
    mmproj_out: Path | None = None  # default: mmproj-<output name> beside the text model

    @classmethod
    def create(
        cls,
        base: str,
        out: str | Path,
        adapters: list[str] | tuple[str, ...] = (),
        quant: str | None = None,
        tensor_types: list[str] | tuple[str, ...] = (),
        **kwargs: object,
    ) -> ConversionOptions:
        """Build options from the strings a command line or a dialog collects; the command line's
        flags are these parameters' names (`--eval-text` is `eval_text`), so the two cannot drift."""
        out = Path(out).expanduser().absolute()
        for name in _PATHS:
            if kwargs.get(name) is not None:
                kwargs[name] = Path(kwargs[name]).expanduser().absolute()  # type: ignore[arg-type]
        if kwargs.get("imatrix") not in (None, "auto"):
            kwargs["imatrix"] = str(Path(str(kwargs["imatrix"])).expanduser().absolute())
        options = cls(
            base=base,
            out=out,
            adapters=tuple(AdapterSpec.parse(a) for a in adapters),
            quants=parse_quants(quant),
            tensor_types=tuple(parse_tensor_type(t) for t in tensor_types),
            **kwargs,  # type: ignore[arg-type]
        )
        options.check()
        return options

    def check(self) -> None:
        """Refuse combinations that are wrong whatever the inputs."""
        if self.mmproj_type not in MMPROJ_TYPES:
            raise ConversionError(f"--mmproj-type: unknown type {self.mmproj_type!r}; valid: {', '.join(MMPROJ_TYPES)}")
        if not self.mmproj and self.mmproj_out is not None:
            raise ConversionError("--mmproj-out and --no-mmproj contradict each other")
        if self.verify not in VERIFY_MODES:
            raise ConversionError(f"unknown verification {self.verify!r}; valid: {', '.join(VERIFY_MODES)}")
        for flag, value in (("--output-type", self.output_type), ("--embedding-type", self.embedding_type)):
            if value is not None:
                check_type_name(value, flag)
        if self.calibration_text is not None and self.imatrix != "auto":
            raise ConversionError("--calibration-text is used by --imatrix auto only")
        if self.save_imatrix is not None and self.imatrix is None:
            raise ConversionError("--save-imatrix needs --imatrix")
        quantized = [q for q in self.quants if q not in UNQUANTIZED]
        asked = self.imatrix or self.output_type or self.embedding_type or self.tensor_types
        if asked and not quantized:
            raise ConversionError("--imatrix and the tensor type options apply to quantized outputs; none was asked for")


@dataclass(frozen=True)
class LoraOptions:
    """`medgemma-convert lora`: PEFT adapters written as one runtime adapter GGUF, unmerged."""

    base: str
    adapters: tuple[AdapterSpec, ...]
    out: Path
    out_type: str = "f16"
    verify: bool = False
    eval_text: Path | None = None
    preset: str | None = None
    name: str | None = None
    force: bool = False

    @classmethod
    def create(cls, base: str, adapters: list[str] | tuple[str, ...], out: str | Path, **kwargs: Any) -> LoraOptions:
        """Options from the strings a command line collects ('DIR' or 'DIR:SCALE' adapters)."""
        if kwargs.get("eval_text") is not None:
            kwargs["eval_text"] = Path(kwargs["eval_text"]).expanduser().absolute()
        options = cls(base=base, adapters=tuple(AdapterSpec.parse(a) for a in adapters),
                      out=Path(out).expanduser().absolute(), **kwargs)
        options.check()
        return options

    def check(self) -> None:
        if self.out_type not in LORA_TYPES:
            raise ConversionError(f"unknown adapter type {self.out_type!r}; valid: {', '.join(LORA_TYPES)}")
        if not self.adapters:
            raise ConversionError("no --adapter given: an adapter file needs at least one PEFT LoRA adapter")


@dataclass(frozen=True)
class ExportHfOptions:
    """`medgemma-convert export-hf`: a GGUF model written as a Hugging Face folder."""

    model: Path
    out: Path
    dtype: str = "float32"
    force: bool = False

    @classmethod
    def create(cls, model: str | Path, out: str | Path, **kwargs: Any) -> ExportHfOptions:
        options = cls(model=Path(model).expanduser().absolute(), out=Path(out).expanduser().absolute(), **kwargs)
        options.check()
        return options

    def check(self) -> None:
        if self.dtype not in HF_DTYPES:
            raise ConversionError(f"unknown dtype {self.dtype}; choose one of {', '.join(HF_DTYPES)}")


_PATHS = ("eval_text", "calibration_text", "save_imatrix", "report", "mmproj_out")
VERIFY_MODES = ("quick", "full", "none")
LORA_TYPES = ("f32", "f16", "q8_0")
HF_DTYPES = ("float32", "bfloat16", "float16")
MMPROJ_TYPES = ("f32", "f16", "bf16", "q8_0")


def check_type_name(name: str, flag: str) -> str:
    if name not in TENSOR_TYPES:
        raise ConversionError(f"{flag}: unknown tensor type {name!r}; valid: {', '.join(TENSOR_TYPES)}")
    return name


def parse_tensor_type(text: str) -> tuple[str, str]:
    """'ffn_down=q8_0' -> ('ffn_down', 'q8_0'): a regex on GGUF tensor names, then a type after the last '='."""
    pattern, sep, name = text.rpartition("=")
    if not sep or not pattern:
        raise ConversionError(f"--tensor-type {text!r}: expected REGEX=TYPE, e.g. 'ffn_down=q8_0'")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConversionError(f"--tensor-type {text!r}: the pattern is not a regular expression ({exc})") from None
    return pattern, check_type_name(name.strip().lower(), "--tensor-type")
