"""How this process's heap hands memory back: large freed blocks go back to the system at once.

The converter allocates and frees large arrays in turn (a tensor, a quantizer's slab, a module's
weights in the reference). glibc raises its mmap threshold each time such a block is freed and then
serves later large blocks from the heap, which keeps them after they are freed: on the 270M, 130 MB
were still held when verification started, and the reference's heap grew by 160 MB over one pass.
A fixed threshold keeps each large block in a mapping of its own. Other C libraries have no such
setting (macOS, Windows) or ignore it (musl): nothing to do there.
"""

from __future__ import annotations

import ctypes

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_THRESHOLD = 1024 * 1024


def return_large_blocks() -> None:
    """Have blocks of 1 MiB or more mapped on their own and unmapped when freed (glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)
