"""A switch that sends model loads down the GPU path on any llama.cpp build, to run the CPU fallback for real.

With MEDGEMMA_FORCE_GPU_OFFLOAD=1 the engine acts as on a GPU build (it offloads every layer) and
asks llama.cpp to spread the offloaded layers over the GPUs by tensor parallelism. A build or a
machine without a GPU refuses that ("LLAMA_SPLIT_MODE_TENSOR needs >= 1 devices"): a GPU load that
really fails inside llama.cpp, which the engine then retries on the CPU as it would after a driver
or memory failure. Meant for tests and for checking a machine; nothing sets it by default.
"""

from __future__ import annotations

import os

import llama_cpp

FORCE_OFFLOAD_ENV = "MEDGEMMA_FORCE_GPU_OFFLOAD"


def offload_forced() -> bool:
    return os.environ.get(FORCE_OFFLOAD_ENV) == "1"


def supports_gpu_offload() -> bool:
    """Whether this llama.cpp build can offload to a GPU (always, when forced)."""
    return offload_forced() or bool(llama_cpp.llama_supports_gpu_offload())


def split_mode(n_gpu_layers: int) -> int:
    """How llama.cpp spreads offloaded layers: by layer as usual; by tensor when forced."""
    if offload_forced() and n_gpu_layers > 0:
        return llama_cpp.LLAMA_SPLIT_MODE_TENSOR
    return llama_cpp.LLAMA_SPLIT_MODE_LAYER
