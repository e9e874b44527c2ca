"""The conversion report: what `medgemma-convert` read, wrote and measured, as one typed value.

The converter builds it, writes it as JSON (`--report`, and the last `--progress json` line)
and the app's Convert… dialog reads it back with `from_json`: both ends share this definition.
Reading ignores keys it does not know, so a report with more fields still reads.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


# The `quant` of the output that is a multimodal base's vision tower (its mmproj GGUF).
MMPROJ_QUANT = "mmproj"


@dataclass(frozen=True)
class OutputRecord:
    """One file written: its real contents, not just the type asked for."""

    path: str
    quant: str
    bytes: int
    sha256: str
    file_type: str
    tensor_types: dict[str, int]
    bits_per_weight: float
    parameter_count: int
    verification: dict[str, Any] | None = None  # figures against transformers, with --verify

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.verification is None:
            del data["verification"]
        return data


@dataclass(frozen=True)
class StageRecord:
    stage: str
    wall_s: float
    peak_rss_bytes: int


@dataclass(frozen=True)
class ConversionReport:
    converter: str
    inputs: dict[str, Any]  # base (id, kind, path, architecture), adapters, quants, preset, name
    outputs: tuple[OutputRecord, ...]
    warnings: tuple[str, ...] = ()
    stages: tuple[StageRecord, ...] = ()
    memory_method: str = ""
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # further sections, kept as they are

    def to_dict(self) -> dict[str, Any]:
        return {
            "converter": self.converter,
            "inputs": self.inputs,
            "outputs": [o.to_dict() for o in self.outputs],
            "warnings": list(self.warnings),
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "memory_method": self.memory_method,
            "wall_s": self.wall_s,
            **self.extra,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionReport:
        """Raises ValueError when `data` is not a report."""
        try:
            outputs = tuple(OutputRecord(**_known(OutputRecord, o)) for o in data["outputs"])
            stages = tuple(StageRecord(**_known(StageRecord, s)) for s in data.get("stages", ()))
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(
                converter=str(data["converter"]),
                inputs=dict(data.get("inputs") or {}),
                outputs=outputs,
                warnings=tuple(str(w) for w in data.get("warnings", ())),
                stages=stages,
                memory_method=str(data.get("memory_method", "")),
                wall_s=float(data.get("wall_s", 0.0)),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a conversion report: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ConversionReport:
        return cls.from_dict(json.loads(text))

    def output_paths(self) -> list[str]:
        """The text models written (an mmproj beside them is not a model to load on its own)."""
        return [o.path for o in self.outputs if o.quant != MMPROJ_QUANT]

    def mmproj_path(self) -> str | None:
        """The vision tower written beside the text models (a multimodal base), if any."""
        return next((o.path for o in self.outputs if o.quant == MMPROJ_QUANT), None)


def _known(kind: type, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    return {k: v for k, v in data.items() if k in names}
