"""What the user asked for, validated for form only; `plan.plan()` checks it against the inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medgemma_models.errors import ConversionError

from .quants import parse_quants


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
    verify: bool = False
    eval_text: Path | None = None
    report: Path | None = None
    force: bool = False

    @classmethod
    def create(
        cls,
        base: str,
        out: str | Path,
        adapters: list[str] | tuple[str, ...] = (),
        quant: str | None = None,
        **kwargs: object,
    ) -> ConversionOptions:
        """Build options from the strings a command line or a dialog collects."""
        out = Path(out).expanduser().absolute()
        return cls(
            base=base,
            out=out,
            adapters=tuple(AdapterSpec.parse(a) for a in adapters),
            quants=parse_quants(quant),
            **kwargs,  # type: ignore[arg-type]
        )
