"""Reading LoRA weights and adding their deltas: W + scale * (alpha / r) * B @ A, in float32."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .adapter import LoraTarget, ResolvedAdapter


class AdapterWeights:
    """Opens each adapter's safetensors once and reads A/B pairs on demand (they are small)."""

    def __init__(self, adapters: tuple[ResolvedAdapter, ...]) -> None:
        from safetensors import safe_open

        self._stack = contextlib.ExitStack()
        self._files: list[Any] = [self._stack.enter_context(safe_open(str(a.weights), framework="pt")) for a in adapters]
        self.adapters = adapters
        # base tensor name -> [(adapter index, target)] in the order the adapters were given
        self.by_tensor: dict[str, list[tuple[int, LoraTarget]]] = {}
        for i, adapter in enumerate(adapters):
            for target in adapter.targets:
                self.by_tensor.setdefault(target.name, []).append((i, target))

    def targets(self, name: str) -> bool:
        return name in self.by_tensor

    def apply(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """Add every adapter's delta for base tensor `name` to `weight` (float32, in place)."""
        for i, target in self.by_tensor.get(name, ()):
            a = self._files[i].get_tensor(target.a_key).to(torch.float32)
            b = self._files[i].get_tensor(target.b_key).to(torch.float32)
            weight.addmm_(b, a, alpha=self.adapters[i].factor(target))
        return weight

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> AdapterWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
