"""Reading LoRA weights and adding their deltas: W + scale * (alpha / r) * B @ A, in float32."""

from __future__ import annotations

import numpy as np

from .adapter import LoraTarget, ResolvedAdapter


class AdapterWeights:
    """Reads adapters' A/B pairs on demand (they are small), where planning found them."""

    def __init__(self, adapters: tuple[ResolvedAdapter, ...]) -> None:
        self.adapters = adapters
        # base tensor name -> [(adapter index, target)] in the order the adapters were given
        self.by_tensor: dict[str, list[tuple[int, LoraTarget]]] = {}
        for i, adapter in enumerate(adapters):
            for target in adapter.targets:
                self.by_tensor.setdefault(target.name, []).append((i, target))

    def targets(self, name: str) -> bool:
        return name in self.by_tensor

    def apply(self, name: str, weight: np.ndarray) -> np.ndarray:
        """Add every adapter's delta for base tensor `name` to `weight` (float32, in place)."""
        for i, target in self.by_tensor.get(name, ()):
            b = target.b.read_rows() * np.float32(self.adapters[i].factor(target))
            weight += b @ target.a.read_rows()
        return weight
