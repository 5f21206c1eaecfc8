"""Large temporaries reused in place of fresh pages: glibc keeps freed blocks up to 256 MiB.

Why: glibc serves blocks above its mmap threshold (dynamic, at most 32 MiB) with a fresh ``mmap``
and returns them to the system when freed, so every large temporary is faulted in page by page
again. On the project's 2-core VM that first touch costs more than the arithmetic: the seed
article's chain ``y = x*5; y = y*y; return y+y`` at 1e7 float64 (80 MB per array) took 56.6 ms
on the Numba tier and 37.1 ms on NumPy; with blocks up to 256 MiB kept on the heap, 8.0 ms and
16.3 ms (one process each way, warm medians of 9, 2026-12-01). The tier allocates its results
through Numba's runtime (``malloc``), which no pool of ours can reach, hence the allocator's
own knob.

What it changes: ``mallopt(M_MMAP_THRESHOLD, 256 MiB)`` and ``mallopt(M_TRIM_THRESHOLD, 512 MiB)``
for the whole process, once, when the Numba tier first loads (NumPy's own large temporaries
benefit too). The cost is memory: freed blocks below 256 MiB stay with the process for reuse
instead of going back to the system, and up to 512 MiB free at the top of the heap is kept.
``AUTOOFFLOAD_HEAP_REUSE=0`` leaves the allocator alone. Only glibc has ``mallopt``; elsewhere
nothing changes and ``reuse_large_blocks()`` says why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

MiB = 1 << 20
MMAP_THRESHOLD = 256 * MiB
TRIM_THRESHOLD = 512 * MiB
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h

_lock = threading.Lock()
_state: str | None = None  # what reuse_large_blocks() did, once it ran


def reuse_large_blocks() -> str:
    """Raise glibc's mmap and trim thresholds once per process; what was done, or why not."""
    global _state
    with _lock:
        if _state is None:
            _state = _apply()
        return _state


def _apply() -> str:
    if os.environ.get("AUTOOFFLOAD_HEAP_REUSE", "1").strip() == "0":
        return "left alone (AUTOOFFLOAD_HEAP_REUSE=0)"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "left alone (no glibc mallopt here)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "left alone (mallopt refused)"
    return f"blocks up to {MMAP_THRESHOLD // MiB} MiB reused (glibc mmap threshold raised)"
