"""Host <-> device copies of ordinary (pageable) NumPy arrays, near the pinned-memory limit.

Why: CUDA can only DMA from page-locked ("pinned") host memory. From an ordinary NumPy array,
``cupy.asarray`` stages the whole array through one pinned buffer with one thread and
``ndarray.get()`` lets the driver stage through its own small buffer; on the H100 machine that is
6.7 GB/s in and 3-10 GB/s out for 1 GiB, while pinned memory moves 54 / 42 GB/s
(../shared/design/MEASURED-H100.md).

How (engine ``pinned-pipeline-v4``):

* A bounded pool of pinned buffers (``_Tuning.chunk_bytes`` each, at most ``max_buffers``),
  allocated on first use with ``cudaHostAlloc``, reused across calls and threads, freed by
  ``release_pinned_pool()`` and at exit. Each buffer carries a CUDA event recorded after the
  last DMA that used it; it is handed out again only once that event has fired.
* Large arrays are cut into chunks in their own memory order (C, or F for an F-contiguous
  array; C for anything strided, gathered or scattered on the way), about one per worker.
  Each worker thread takes a whole chunk: host -> device, it copies the chunk into a pinned
  buffer (``np.copyto`` releases the GIL) and queues its DMA; device -> host, it queues the DMA
  into a pinned buffer, waits for it and copies out. So host copies of some chunks overlap the
  DMAs of others with no barrier between chunks. Host copies are the bottleneck on the H100
  machine (one thread copies ~10 GB/s, 16 threads ~39 GB/s; the link does ~54), hence many
  workers.
* DMAs are queued on the caller's *current stream* (work queued there afterwards sees the data,
  and it orders the device allocation as CuPy's pool expects). The per-thread default stream
  is the exception: its handle means another stream in each worker, so a side stream fenced by
  events stands in for it.
* Contiguous arrays of 4-64 MiB take the staged path instead: pieces of ~1/4 of the array go
  through two pinned buffers in turn on the calling thread, each piece's host copy split over
  a pool of native threads (``_parcopy.c``: a few us to hand out, against ~0.1 ms for Python
  workers) while the DMA of the previous piece runs. 1.4-2.2x the driver's path at 8-16 MiB.
* Arrays up to 4 MiB (16 MiB where the native pool is not built) skip all that:
  ``cudaMemcpyAsync`` from/to the pageable array lets the driver stage it through its own
  pinned buffers, which measured fastest there (faster than ``cupy.asarray``, which copies into
  a pinned buffer on one thread first). Strided small arrays go through one pinned buffer on
  the calling thread.
* Pinning the caller's memory in place (``cudaHostRegister``, whole or in pieces, then one DMA
  and unpinning) is a path for large contiguous arrays, off unless the tuning turns it on
  (``h2d_register_min`` / ``d2h_register_min``): on the H100 machine 11-17 GB/s in, 3-4 out at
  1 GiB; on a fast H200 start 15-21 GB/s against 41-46 staged (pinning runs at ~31 GB/s and
  unpinning at ~53, whatever the size). It can only win where host copies are slower than
  that, so calibration measures it (benchmarks/results/h200/transfer.NOTES.md).
* Measured and dropped: huge-page result mappings and
  MADV_POPULATE_WRITE prefaulting of results (no gain, or much worse; tried again as workers
  faulting a new result in while waiting for their DMA: 1 GiB 11.3 GB/s against 14.4 without,
  and slower too when the GPU was still computing: faulting a page while copying into it costs
  less than faulting it in apart).
* Device -> host into a *new* array is bounded by first-touch page faults of the result on this
  VM: 16 threads copy into fresh pages at ~22 GB/s against ~40 into touched ones. So results
  above the direct-copy size are allocated from ``_hostmem.results``, which keeps the memory of
  dropped results (already faulted in) for the next one; ``out=`` avoids the cost too.
* Memory copied again is pinned in place and kept pinned (engine v6, on by default from 1 MiB;
  16 MiB until session 10):
  the caller's own arrays once copies have moved ``pin_after_copies`` (2) times their bytes (``pin_reused_min``,
  ``_pincache.py``: the owning array's whole buffer as one registration, unpinned when it dies)
  and kept result blocks when handed out again, or when copies have moved that many times their
  result's bytes (``pin_results_min``, _hostmem.py). A copy of
  pinned memory is one DMA, no host copy. On the H200 (session 7, with the first form of the
  cache, which pinned 64 MiB units: benchmarks/results/h200-session7/transfer.md) 64 MiB-4 GiB moved in
  at 46.8-54.6 GB/s and out into the same array at 48.6-54.8, against 24.2-42.7 / 34.4-45.9
  staged (the first copy of an array); a streamed call's copies in and out then overlap
  (h200-session7/streaming.txt). Units were dropped after a review: the driver refuses a DMA that
  starts in one registration and runs past its end, which views the cache could not see
  (``as_strided``, other threads) could still send it. ``unpinned_copies()`` measures the staged
  engine (calibration does). ``AUTOOFFLOAD_PIN=0`` turns both off.

Tuning constants live in ``_TUNING`` with the measurement that chose them (the H100 machine's):
those are the defaults. ``autooffload calibrate`` searches them for the machine it runs on
(``_copytune.py``) and stores them in the profile; ``_profiles.resolve`` hands the active
profile's knobs to ``apply_tuning`` once per resolution, so a copy reads one module global as
before and a tuning change costs the copies nothing. ``benchmarks/transfer.py --sweep``
compares the paths by size. CuPy is imported lazily: importing this module never
imports CuPy, and ``release_pinned_pool()`` works without it.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import numpy as np

from . import _hostmem, _pincache
from ._address import array_address
from ._cores import usable_cores

try:  # the optional native copy pool (see _parcopy.c); without it the staged path is off
    from . import _parcopy
except ImportError:
    _parcopy = None

# v3: device->host results above the direct-copy size reuse the memory of dropped results.
# v4: 4-64 MiB staged through two pinned buffers by native copy threads; "-python" where the
# native pool is not built (then 4-64 MiB copy as in v3, and a profile should say so).
# v5: the knobs come from the active profile (`autooffload calibrate` searches them), and
# cudaHostRegister-in-place is a path for large arrays when the tuning turns it on.
# v6: memory copied again is pinned in place and kept so (the caller's arrays: _pincache.py; kept
# results: _hostmem.py), on by default from 16 MiB (from 1 MiB since session 10: same engine, a default).
ENGINE_NAME = "pinned-pipeline-v6" + ("" if _parcopy is not None else "-python")


KiB = 1024
MiB = 1024 * KiB

__all__ = ["ENGINE_NAME", "to_device", "to_host", "release_pinned_pool"]


# ---------------------------------------------------------------------------------------------
# Tuning
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tuning:
    """Knobs of the engine, chosen by ``benchmarks/transfer.py --sweep`` on the H100 machine
    (benchmarks/results/h100/transfer.*; numbers below are from there)."""

    # Worker threads; each copies whole chunks and queues the DMA of its chunk itself. Host
    # copies are the bottleneck (np.copyto: 10 GB/s on one thread, 40 on 16), and D2H into
    # fresh pages needs every core for the first-touch faults (22 GB/s on 16 threads, 16 on 8).
    threads: int = 16
    # Largest chunk, and the size of each pinned buffer of the pool. 8 MiB beat 4 and 16 MiB
    # at 1 GiB (H2D 40-42 GB/s, D2H 22-24 GB/s; 4 MiB 27-38 / 17-21; 16 MiB 34-35 / 17-20).
    chunk_bytes: int = 8 * MiB
    # Arrays are cut into ~one chunk per thread, but chunks never go below this: waking a
    # worker costs ~0.1 ms on this VM, so 16 chunks of 1 MiB moved 16 MiB in 1.9 ms, slower than
    # the driver's own path (1.1-1.3 ms) and cupy (1.2-1.7 ms).
    min_chunk_bytes: int = 4 * MiB
    # Largest chunk of the worker path, where smaller than chunk_bytes (0: chunk_bytes). The pool's
    # buffers are chunk_bytes each, which the staged path wants large (32 MiB pieces on the
    # H200), while the workers did better with 8 MiB chunks there: at 4 GiB, above staged_max, the
    # 32 MiB chunks moved 35.3 / 35.7 GB/s against 48.6 / 41.4 with 8 MiB (transfer.NOTES.md).
    worker_chunk_bytes: int = 0
    # Pinned buffers in the pool, shared by all threads: a few more than the threads, so that
    # DMAs in flight do not starve the copies (8 buffers: 36 / 17 GB/s; 16-32: 38-40 / 21-23).
    # 20 x 8 MiB = 160 MiB of pinned memory at most.
    max_buffers: int = 20
    # Above the direct thresholds (when those are lowered), and for strided arrays: at or below
    # this size, one pinned buffer on the calling thread, no workers.
    small_bytes: int = 1 * MiB
    # At or below these sizes, cudaMemcpyAsync from/to the pageable array itself: the driver
    # stages it through its own pinned buffers, pipelined, with a fast memcpy. Measured faster
    # than everything else up to 8 MiB (4 KiB: 12 / 13 us, cupy 27 / 17 us; 1 MiB: 87 / 109 us,
    # cupy 138 / 126 us; 4 MiB: 332 / 357 us, cupy 489 / 399 us). At 16 MiB it still beat the
    # pipeline of 4 MiB chunks (1.58 / 1.99 ms against 1.94 / 2.24 ms, run 3); at 32 MiB the
    # pipeline wins by far (3.1 / 7.8 ms against 5.1 / 14.0 ms). Crossover: 16-32 MiB.
    h2d_direct_max: int = 16 * MiB
    d2h_direct_max: int = 16 * MiB
    # Where the native copy pool (_parcopy.c) is built: contiguous arrays in (staged_min,
    # staged_max] go through two pinned buffers on the calling thread, each piece copied by up
    # to `threads` native threads while the DMA of the previous one runs (see _h2d_staged).
    # Sweep (GB/s in / out, interleaved; driver or workers -> staged): 4 MiB 10.9 / 9.1 ->
    # 8.9 / 10.2; 8 MiB 11.5 / 9.0 -> 12.2 / 16.2; 16 MiB 11.6 / 9.4 -> 15.8 / 20.4; 64 MiB
    # 22.4 / 18.3 -> 22.6 / 25.2; 256 MiB 35.2 / 32.0 -> 27.7 / 25.1 (the workers keep more
    # copies in flight). Below 4 MiB the driver's path wins.
    staged_min: int = 4 * MiB
    staged_max: int = 64 * MiB
    # A staged copy is cut into about this many pieces (each at most one pinned buffer): its
    # fill and drain (the first piece's host copy, the last one's DMA) are one piece each, so
    # more pieces overlap more of a mid-size copy, at a fixed cost per piece (a native pool
    # round, a DMA launch, an event). On the H200 finer was worse up to 64 MiB (64 MiB: 4 pieces
    # 17.7 / 24.2 GB/s, 8: 15.3 / 23.6, 16: 9.8 / 10.4) and no better above (transfer.NOTES.md),
    # so calibration leaves it at 4; a profile may set it (tools/transfer_diag.py --pieces).
    staged_piece_count: int = 4
    # 1: the staged path's host copies write with non-temporal stores (_parcopy.c), in: into the
    # pinned buffer, out: into the caller's memory. A DMA of pinned memory a host copy has just
    # written ran slower while its lines sat in the cores' caches (one 16 MiB DMA 0.41-0.59 ms
    # against 0.32 from memory no copy touched, tools/staged_probe.py); streaming stores also skip
    # reading the destination before writing it (a 2-thread copy of 64-256 MiB on the CPU VM:
    # 19-34 GB/s against 12-14). On the H200, first copies in with them took 11-23% less time at
    # 64-256 MiB and 4-5% more at 1 GiB; out they were mixed (staged-probe.nontemporal.txt,
    # h200-session9/staged-probe.final.txt). Off by default (measured on one machine);
    # calibration measures both (_copytune._nontemporal_choice); the shipped H200 profile sets in.
    h2d_nontemporal: int = 0
    d2h_nontemporal: int = 0
    # Smallest part of a copy that one native thread takes: 256 KiB beat 1 MiB at every size.
    min_part_bytes: int = 256 * KiB
    # Parts per native thread in a staged piece's host copy (1: one part each; parts never below
    # min_part_bytes): threads take parts as they come, so one that wakes late holds the piece
    # up by one part, not its whole share. On the H200 (benchmarks/transfer.py, session 17 runs 3
    # and 4, interleaved in the same rounds) 4 made staged first copies in / out 6-14% / 3-10%
    # and 2-4% / 6-13% faster at 64 MiB-4 GiB (1 GiB, run 4: 40.1 / 51.6 against 38.6 / 45.7
    # GB/s). The shipped H200 profile sets 4 by hand; calibration weighs 4 against 1 since
    # (_copytune._parts_choice, not yet run on the GPU); a profile without it keeps 1.
    parts_per_thread: int = 1
    # Microseconds the native pool's threads spin for the next copy once one ends, and the caller
    # for its last part, before sleeping on a condition variable (0: sleep at once). A staged
    # copy hands the pool one piece after another with gaps of tens of microseconds, and a
    # thread woken from the condition variable takes longer than that on these VMs: on the H200
    # 64 MiB out (four 16 MiB pieces) made 31.7 GB/s against 45.5 at 256 MiB (session 18). With
    # 300 us staged first copies were 3-16% faster out and 5-7% in at 16-64 MiB, within 3% from
    # 256 MiB (h200-session19/transfer.run2.md): the wake-ups are a small part of that gap.
    # Calibration weighs it (_copytune._spin_choice); the shipped H200 profile has 300.
    pool_spin_us: int = 0
    # 1: device->host results in new memory (no kept block fitted) may take the staged path too;
    # 0: they go to the workers, whose separate chunks fault their first-touch pages in faster
    # (sweep, 32 / 64 MiB into new memory: workers 14.0 / 18.6 GB/s, staged 11.9 / 12.4).
    staged_fresh: int = 0
    # Contiguous arrays of at least these many bytes (0: never) skip staging: the caller's own
    # pages are pinned in place (cudaHostRegister) for the DMA and unpinned before returning.
    # On the H100 machine pinning was slower than staging (11-17 GB/s in, 3-4 out at 1 GiB),
    # so it is off by default; on a machine whose host copies are slow (H200 starts with
    # 2-4 GB/s memcpy) it may win. `autooffload calibrate` measures it (_copytune.py).
    h2d_register_min: int = 0
    d2h_register_min: int = 0
    # Pinned in place in pieces of this many bytes (0: the whole array at once), so that pinning
    # a piece overlaps the DMA of the one before.
    register_chunk_bytes: int = 0
    # Kept result blocks (_hostmem.py) of at least this many bytes are pinned when handed out
    # again (0: never), so that copies into such results, and out of them when a loop passes a
    # result back in, are one DMA with no host copy. Pinning costs ~30 ms a GiB once per block;
    # on the H200 a loop's later copies out then ran at 53.7-54.8 GB/s against 34.6-41.8 staged
    # (transfer-pinned-results.txt), and with the caller's arrays pinned too a streamed
    # Black-Scholes at 1e8 took 59.7 ms against 167 (h200-session7/streaming.txt, h200-unpinned/).
    # From 1 MiB (session 10; 16 MiB before): results only use kept blocks above the driver's
    # direct-copy size, and there a staged copy out made 10-16 GB/s on the H200 (8 MiB: 10.8).
    # Kept blocks from this size on (below the direct size too) took a loop's new 1 / 4 MiB
    # results out at 9.6 / 26.7 GB/s against 6.2 / 11.4 (session 12, h200-session12/transfer.run4.md,
    # transfer.run2.md), but were reverted: a kept result copied back in stayed unpinned, where
    # a plain array is pinned at its second copy (the pin-down cache stops at a result's lease;
    # kept blocks in use are now counted and pinned by their pool: _hostmem.HostBlocks.copied),
    # and many small kept blocks fill the bounded free list and pinned budget large results need.
    # Since session 19 results take kept blocks from KEPT_RESULTS_MIN (4 MiB) below the direct
    # size too, while this knob is set (_kept_result).
    pin_results_min: int = 1 * MiB
    # The caller's arrays whose memory is at least this many bytes take part in the pin-down
    # cache (_pincache.py, 0: never): once copies have moved ``pin_after_copies`` times an
    # array's bytes its memory is pinned in place and stays so while it lives, so that every later copy of it is one DMA
    # with no host copy. From 1 MiB (the least the cache counts): on the H200 (session 10,
    # benchmarks/results/h200-session10/transfer-pin1m.md) a reused array then moved in at
    # 16.1 / 28.4 / 32.2 GB/s at 1 / 4 / 8 MiB and out into it at 16.3 / 29.7 / 36.9, against
    # 8.0 / 9.5 / 13.0 and 7.3 / 10.8 / 13.3 for its first copy in the same rounds (16 MiB, the
    # earlier threshold, left the driver's path and the staged one, 7-18 GB/s, to every
    # mid-size array a loop copies again: the suite's normal equations at 1e6, an 8 MB input,
    # took 1.22 ms a call on the GPU, 0.60 ms pinned).
    pin_reused_min: int = 1 * MiB
    # ...pinned at the copy that brings the bytes moved to this many times its own (2: at the
    # second whole copy), and a kept result block at its use of that number. Calibration sets it
    # from what pinning costs over what a pinned copy saves (_copytune._pin_reuse_choice: rent or
    # buy, the copy whose worst case over the sizes measured is least).
    pin_after_copies: int = 2


def _default_threads() -> int:
    return max(1, min(16, usable_cores()))


_TUNING = _Tuning(threads=_default_threads(), max_buffers=_default_threads() + 4)


def _configure(**changes: Any) -> _Tuning:
    """Change tuning knobs (benchmarks, tests). Returns the previous tuning.

    Releases the pinned pool and the worker threads so that the new sizes take effect.
    """
    global _TUNING
    names = {f.name for f in fields(_Tuning)}
    unknown = set(changes) - names
    if unknown:
        raise TypeError(f"unknown tuning knobs {sorted(unknown)}; allowed: {sorted(names)}")
    _check_knobs(changes)
    global _TUNING_SOURCE
    _TUNING_SOURCE = "configured"
    old = _TUNING
    new = replace(old, **changes)
    if new.min_chunk_bytes > new.chunk_bytes:
        new = replace(new, min_chunk_bytes=new.chunk_bytes)
    release_pinned_pool()
    _shutdown_executor()
    _TUNING = new
    _use_pinning(new)
    return old


def _tuning() -> _Tuning:
    return _TUNING


# Where the tuning in use came from: "defaults", a profile's file, or "configured" (_configure).
_TUNING_SOURCE = "defaults"
_MAX_THREADS = 64


def default_tuning() -> _Tuning:
    """Today's hand-tuned knobs, with thread counts fitted to this machine's usable cores."""
    return _Tuning(threads=_default_threads(), max_buffers=_default_threads() + 4)


def tuning_knobs() -> tuple[str, ...]:
    """Names of the knobs a profile may set (the fields of ``_Tuning``)."""
    return tuple(f.name for f in fields(_Tuning))


def apply_tuning(knobs: Any = None, source: str = "defaults") -> list[str]:
    """Use ``knobs`` (knob name -> int, e.g. a profile's copy tuning) over ``default_tuning()``;
    None or empty: the defaults. Called when the active profile is resolved (never on a copy).

    Knobs this engine does not know (a newer engine's) are skipped and returned, so an older
    engine still reads a newer profile; a value that is not an int >= 0 (>= 1 for counts and
    sizes) raises ValueError. Releases the pinned pool and the workers only when the tuning
    changes, so re-applying the same profile costs nothing.
    """
    global _TUNING, _TUNING_SOURCE
    knobs = dict(knobs or {})
    names = set(tuning_knobs())
    unknown = sorted(set(knobs) - names)
    known = {k: v for k, v in knobs.items() if k in names}
    _check_knobs(known)
    if "threads" in known:
        known["threads"] = min(known["threads"], _MAX_THREADS)
    new = replace(default_tuning(), **known)
    if new.min_chunk_bytes > new.chunk_bytes:
        new = replace(new, min_chunk_bytes=new.chunk_bytes)
    if new != _TUNING:
        old, _TUNING = _TUNING, new
        pool = _pool
        mismatched = (pool is not None and pool.buffer_bytes != new.chunk_bytes) or bool(_stale_pools)
        if mismatched or any(getattr(old, k) != getattr(new, k) for k in _RESTARTING_KNOBS):
            release_pinned_pool(keep_results=True)
            _drop_executor()
        _use_pinning(new)
    _TUNING_SOURCE = source if known else "defaults"
    return unknown


# The knobs that size the pinned pool and the worker threads: only a change of these restarts
# them (a restart re-pins 20 x 32 MiB, ~0.1 s), so that calibration's A/B of a path's knobs,
# such as h2d_nontemporal, costs the copies only; so does a pool of another size left by a copy
# that planned under an earlier tuning (_get_pool).
_RESTARTING_KNOBS = ("chunk_bytes", "max_buffers", "threads")


def tuning_source() -> str:
    return _TUNING_SOURCE


def _check_knobs(changes: dict[str, Any]) -> None:
    for k, v in changes.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"tuning knob {k} must be an int >= 0; got {v!r}")
    for k in ("chunk_bytes", "min_chunk_bytes", "max_buffers", "threads", "staged_piece_count", "parts_per_thread"):
        if k in changes and changes[k] < 1:
            raise ValueError(f"tuning knob {k} must be >= 1; got {changes[k]!r}")
    if changes.get("pool_spin_us", 0) > 100_000:
        raise ValueError(f"tuning knob pool_spin_us must be at most 100000 (0.1 s); got {changes['pool_spin_us']!r}")
    if changes.get("parts_per_thread", 1) > 64:
        raise ValueError(f"tuning knob parts_per_thread must be at most 64 (the native pool's limit); got {changes['parts_per_thread']!r}")
    if "pin_after_copies" in changes and changes["pin_after_copies"] < 2:
        raise ValueError(f"tuning knob pin_after_copies must be >= 2 (an array copied once is never pinned); "
                         f"got {changes['pin_after_copies']!r}")


# ---------------------------------------------------------------------------------------------
# Pure planning (tested on the CPU)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """A block of an array whose elements are consecutive in C order.

    ``index`` selects it from the array (ints, then one slice); it starts ``start`` elements into
    the C-ordered sequence and holds ``count`` elements.
    """

    index: tuple
    start: int
    count: int


def plan_pieces(shape: tuple[int, ...], itemsize: int, max_bytes: int) -> list[Piece]:
    """Cut the C-order element sequence of ``shape`` into basic-index blocks of <= ``max_bytes``.

    Each block is ``a[i0, ..., i(j-1), lo:hi]`` for the shallowest axis j whose sub-blocks fit,
    so blocks are at least about half of ``max_bytes`` except at the end of a row (and where
    one element is already larger than ``max_bytes``: then one element per block).
    """
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if n == 0:
        return []
    if not shape:
        return [Piece((), 0, 1)]
    max_elems = max(1, max_bytes // max(1, itemsize))
    ndim = len(shape)
    suffix = [1] * (ndim + 1)
    for k in range(ndim - 1, -1, -1):
        suffix[k] = suffix[k + 1] * shape[k]
    j = next(k for k in range(ndim) if suffix[k + 1] <= max_elems)
    inner = suffix[j + 1]
    rows = max(1, max_elems // inner)
    pieces = []
    for outer_flat, outer in enumerate(np.ndindex(*shape[:j])):
        base = outer_flat * suffix[j]
        for lo in range(0, shape[j], rows):
            hi = min(lo + rows, shape[j])
            pieces.append(Piece(tuple(outer) + (slice(lo, hi),), base + lo * inner, (hi - lo) * inner))
    return pieces


@dataclass(frozen=True)
class Chunk:
    """Consecutive pieces that fit one pinned buffer; bytes [offset, offset + nbytes)."""

    offset: int
    nbytes: int
    pieces: tuple[Piece, ...]


def group_chunks(pieces: list[Piece], itemsize: int, chunk_bytes: int) -> list[Chunk]:
    """Group consecutive pieces greedily into chunks of at most ``chunk_bytes``.

    A piece larger than ``chunk_bytes`` (possible only when one element is) gets its own chunk.
    """
    chunks: list[Chunk] = []
    cur: list[Piece] = []
    cur_off = cur_bytes = 0
    for p in pieces:
        nb = p.count * itemsize
        if cur and cur_bytes + nb > chunk_bytes:
            chunks.append(Chunk(cur_off, cur_bytes, tuple(cur)))
            cur = []
        if not cur:
            cur_off, cur_bytes = p.start * itemsize, 0
        cur.append(p)
        cur_bytes += nb
    if cur:
        chunks.append(Chunk(cur_off, cur_bytes, tuple(cur)))
    return chunks


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


_PAGE = 4096


def chunk_size_for(nbytes: int, t: _Tuning) -> int:
    """Bytes per chunk: about one chunk per worker, within [min_chunk_bytes, the workers' largest
    chunk] (``worker_chunk_bytes`` where set and smaller, else ``chunk_bytes``: one buffer)."""
    cap = min(t.worker_chunk_bytes, t.chunk_bytes) if t.worker_chunk_bytes else t.chunk_bytes
    want = _round_up(max(1, -(-nbytes // t.threads)), 64 * KiB)
    return max(min(t.min_chunk_bytes, cap), min(cap, want))


def staged_pieces(nbytes: int, t: _Tuning) -> list[tuple[int, int]]:
    """(offset, length) of the pieces of a staged copy: about ``staged_piece_count``, each
    1 MiB .. chunk_bytes (one pinned buffer), so that a piece's DMA overlaps the host copy of
    the next (smaller pieces at the ends, to shorten the pipeline's fill and drain, lost at every
    size on the H200, with plain and with non-temporal stores: transfer.NOTES.md, session 9)."""
    count = max(1, t.staged_piece_count)
    piece = min(t.chunk_bytes, max(min(MiB, t.chunk_bytes), _round_up(-(-nbytes // count), 64 * KiB)))
    return [(off, min(piece, nbytes - off)) for off in range(0, nbytes, piece)]


def plan_contiguous(base_addr: int, nbytes: int, chunk: int) -> list[Chunk]:
    """Byte-range chunks of at most ``chunk`` bytes whose inner boundaries are page-aligned
    addresses (so that chunks never share a page: cudaHostRegister needs that)."""
    chunks = []
    off = 0
    step = max(_PAGE, chunk - chunk % _PAGE)
    first = step - (base_addr % _PAGE)
    end = min(nbytes, first)
    while off < nbytes:
        chunks.append(Chunk(off, end - off, (Piece((slice(off, end),), off, end - off),)))
        off = end
        end = min(nbytes, off + step)
    return chunks


def plan_transfer(shape: tuple[int, ...], itemsize: int, contiguous: bool, t: _Tuning, base_addr: int = 0) -> list[Chunk]:
    """Chunks for copying an array of ``shape`` whose C order is the device buffer's order.

    ``contiguous``: the host side is C-contiguous too, so it is planned as flat bytes starting at
    host address ``base_addr``; otherwise as blocks of the strided host array, grouped by chunk.
    """
    nbytes = math.prod(shape) * itemsize
    if nbytes == 0:
        return []
    chunk = chunk_size_for(nbytes, t)
    if contiguous:
        return plan_contiguous(base_addr, nbytes, chunk)
    return group_chunks(plan_pieces(shape, itemsize, chunk), itemsize, chunk)


# ---------------------------------------------------------------------------------------------
# Pinned pool (the allocator and the event wait are injected, so CPU tests can use fakes)
# ---------------------------------------------------------------------------------------------
class PinnedUnavailable(RuntimeError):
    """No pinned buffer could be allocated at all; the engine falls back to pageable copies."""


class _Buffer:
    __slots__ = ("ptr", "nbytes", "array", "events", "pending", "generation", "handle")

    def __init__(self, ptr: int, nbytes: int, array: np.ndarray, handle: Any = None):
        self.ptr = ptr
        self.nbytes = nbytes
        self.array = array  # uint8 view of the pinned bytes
        self.events: dict[int, Any] = {}  # device id -> its CUDA event
        self.pending: Any = None  # event of the last DMA that touched it, not yet waited for
        self.generation = 0
        self.handle = handle


class PinnedPool:
    """At most ``max_buffers`` pinned buffers of ``buffer_bytes``, shared by all threads.

    ``acquire`` hands out a free buffer (the oldest released first, so a just-queued DMA is not
    waited for), allocates a new one while under the bound, or waits. A buffer released with a
    pending event is waited for by the next acquirer, outside the lock. ``clear`` frees the free
    buffers now and the ones in use when they come back (a generation count tells them apart).
    """

    def __init__(
        self,
        buffer_bytes: int,
        max_buffers: int,
        alloc: Callable[[int], _Buffer],
        free: Callable[[_Buffer], None],
        wait: Callable[[Any], None],
    ):
        self.buffer_bytes = buffer_bytes
        self.max_buffers = max_buffers
        self._alloc, self._free_fn, self._wait = alloc, free, wait
        self._cond = threading.Condition(threading.Lock())
        self._free: deque[_Buffer] = deque()
        self._count = 0  # allocated (free + in use)
        self._generation = 0
        self.allocations = 0  # total ever allocated (tests: reuse)

    # Accounting, for tests and diagnostics.
    @property
    def allocated(self) -> int:
        with self._cond:
            return self._count

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._count - len(self._free)

    def acquire(self, block: bool = True) -> _Buffer | None:
        with self._cond:
            while True:
                if self._free:
                    buf = self._free.popleft()
                    break
                if self._count < self.max_buffers:
                    self._count += 1
                    buf = None
                    gen = self._generation
                    break
                if not block:
                    return None
                self._cond.wait()
        if buf is None:
            try:
                buf = self._alloc(self.buffer_bytes)
            except BaseException as exc:
                with self._cond:
                    self._count -= 1
                    others = self._count
                    self._cond.notify()
                if others == 0 or not isinstance(exc, Exception):
                    if isinstance(exc, Exception):
                        raise PinnedUnavailable(f"cannot allocate {self.buffer_bytes} bytes of pinned memory: {exc}") from exc
                    raise
                # Some buffers exist: wait for one of them instead (or give up when not blocking).
                return self._acquire_existing(block)
            buf.generation = gen
            self.allocations += 1
            return buf
        self._settle(buf)
        return buf

    def _acquire_existing(self, block: bool) -> _Buffer | None:
        with self._cond:
            while not self._free:
                if not block or self._count == 0:
                    if self._count == 0:
                        raise PinnedUnavailable("no pinned buffer could be allocated")
                    return None
                self._cond.wait()
            buf = self._free.popleft()
        self._settle(buf)
        return buf

    def _settle(self, buf: _Buffer) -> None:
        ev, buf.pending = buf.pending, None
        if ev is not None:
            self._wait(ev)

    def release(self, buf: _Buffer, event: Any = None) -> None:
        """Give ``buf`` back; ``event`` fires when the last DMA queued on it has finished."""
        with self._cond:
            stale = buf.generation != self._generation
            if stale:
                self._count -= 1
            else:
                buf.pending = event
                self._free.append(buf)
            self._cond.notify()
        if stale:
            if event is not None:
                self._wait(event)
            self._free_fn(buf)

    def clear(self) -> None:
        """Free every free buffer now; buffers in use are freed when released."""
        with self._cond:
            bufs = list(self._free)
            self._free.clear()
            self._count -= len(bufs)
            self._generation += 1
            self._cond.notify_all()
        for buf in bufs:
            try:
                self._settle(buf)
            finally:
                self._free_fn(buf)


# ---------------------------------------------------------------------------------------------
# CuPy plumbing (lazy)
# ---------------------------------------------------------------------------------------------
_cupy: Any = None
_state_lock = threading.Lock()
_pool: PinnedPool | None = None
_stale_pools: dict[int, PinnedPool] = {}  # by buffer size: for copies planned before a tuning change
_executor: ThreadPoolExecutor | None = None
_atexit_registered = False

# cudaMemcpyKind and cudaHostAllocPortable (values fixed by the CUDA runtime API).
_H2D, _D2H = 1, 2
_REGISTER_PORTABLE = 1  # cudaHostRegisterPortable: pinned for every device's context
_HOST_ALLOC_PORTABLE = 1


def _cp() -> Any:
    global _cupy
    if _cupy is None:
        import cupy

        _cupy = cupy
    return _cupy


def _cuda_alloc(nbytes: int) -> _Buffer:
    cp = _cp()
    # Portable: usable as pinned memory from every device's context.
    ptr = cp.cuda.runtime.hostAlloc(nbytes, _HOST_ALLOC_PORTABLE)
    try:
        import ctypes

        arr = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
    except BaseException:
        cp.cuda.runtime.freeHost(ptr)
        raise
    return _Buffer(ptr, nbytes, arr)


def _cuda_free(buf: _Buffer) -> None:
    ptr, buf.ptr = buf.ptr, 0
    buf.array = np.empty(0, np.uint8)
    buf.events.clear()
    if ptr:
        _cp().cuda.runtime.freeHost(ptr)


def _cuda_wait(event: Any) -> None:
    event.synchronize()  # cudaEventSynchronize, releases the GIL


def _get_pool(t: _Tuning | None = None) -> PinnedPool:
    """The pool of buffers of ``t.chunk_bytes`` (``t``: the tuning the copy planned with).

    A copy that planned with a tuning replaced since (``apply_tuning`` from another thread)
    gets a pool of its own buffer size, never a smaller buffer than it planned for; such pools
    live until the next ``release_pinned_pool``."""
    global _pool, _atexit_registered
    if t is None:
        t = _TUNING
    pool = _pool
    if pool is not None and pool.buffer_bytes == t.chunk_bytes:
        return pool
    with _state_lock:
        if _pool is None:
            _pool = PinnedPool(t.chunk_bytes, t.max_buffers, _cuda_alloc, _cuda_free, _cuda_wait)
            if not _atexit_registered:
                # Registered after CuPy is imported, so it runs before CuPy's own exit hooks.
                atexit.register(release_pinned_pool)
                _atexit_registered = True
        if _pool.buffer_bytes == t.chunk_bytes:
            return _pool
        other = _stale_pools.get(t.chunk_bytes)
        if other is None:
            other = _stale_pools[t.chunk_bytes] = PinnedPool(t.chunk_bytes, t.max_buffers, _cuda_alloc, _cuda_free, _cuda_wait)
        return other


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    ex = _executor
    if ex is not None:
        return ex
    with _state_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=_TUNING.threads, thread_name_prefix="autooffload-copy")
        return _executor


def _drop_executor() -> None:
    """Forget the workers without waiting: a copy still using them holds its reference, and
    idle workers exit once the executor is collected. The next copy starts new ones."""
    global _executor
    with _state_lock:
        _executor = None


def _shutdown_executor() -> None:
    global _executor
    with _state_lock:
        ex, _executor = _executor, None
    if ex is not None:
        ex.shutdown(wait=True)


def release_pinned_pool(keep_results: bool = False) -> None:
    """Free every pinned buffer of the engine (buffers in use are freed when their copy ends),
    and the host memory kept from dropped results (see _hostmem.py) unless ``keep_results``.

    Safe at any time, from any thread, and without CuPy (then there is nothing to free).
    """
    global _pool
    if not keep_results:
        _hostmem.results.release()
        _pincache.cache.release()
    with _state_lock:
        pools = [p for p in (_pool, *_stale_pools.values()) if p is not None]
        _pool = None
        _stale_pools.clear()
    for pool in pools:
        try:
            pool.clear()
        except Exception:
            # At interpreter exit the CUDA context may already be gone; the OS frees it then.
            pass


def _after_fork_in_child() -> None:
    # The child inherits neither the worker threads nor a usable CUDA context: forget both
    # (never free the parent's pinned pointers from here).
    global _pool, _executor, _state_lock
    _pool = None
    _stale_pools.clear()
    _executor = None
    _state_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _event_for(buf: _Buffer, device_id: int) -> Any:
    ev = buf.events.get(device_id)
    if ev is None:
        ev = _cp().cuda.Event(block=False, disable_timing=True)
        buf.events[device_id] = ev
    return ev


# ---------------------------------------------------------------------------------------------
# Host-side helpers
# ---------------------------------------------------------------------------------------------
_PER_THREAD_STREAM = 2  # cudaStreamPerThread: means "this thread's stream", so never hand it to a worker
_tls = threading.local()


def _byte_view(a: np.ndarray) -> np.ndarray:
    """Flat uint8 view of a C-contiguous array (0-d included)."""
    return a.reshape(-1).view(np.uint8)


def _piece_pair(host_c: np.ndarray, flat: np.ndarray | None, buf: np.ndarray, chunk: Chunk, piece: Piece, itemsize: int):
    """(host view, pinned view) of one piece; pinned view shaped like the host view."""
    if flat is not None:  # contiguous host: pieces are byte ranges
        lo = piece.start - chunk.offset
        return flat[piece.start : piece.start + piece.count], buf[lo : lo + piece.count]
    h = host_c[piece.index]
    lo = piece.start * itemsize - chunk.offset
    p = buf[lo : lo + piece.count * itemsize].view(host_c.dtype).reshape(h.shape)
    return h, p


def _finish(futs: list) -> None:
    """Wait for every future, then raise the first error (never leave a copy running)."""
    err = None
    for f in futs:
        try:
            f.result()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            if err is None:
                err = e
    if err is not None:
        raise err


# ---------------------------------------------------------------------------------------------
# Chunked transfers: one task per chunk, run by the workers
# ---------------------------------------------------------------------------------------------
class _Job:
    """One chunked transfer, shared by its chunk tasks."""

    __slots__ = ("cp", "pool", "dev_ptr", "device_id", "host_c", "flat", "host_ptr", "itemsize", "stream", "failed")

    def __init__(self, cp: Any, dev_ptr: int, device_id: int, host_c: np.ndarray, contiguous: bool, stream: Any, t: _Tuning):
        self.cp = cp
        self.pool = _get_pool(t)
        self.dev_ptr = dev_ptr
        self.device_id = device_id
        self.host_c = host_c
        self.flat = _byte_view(host_c) if contiguous else None
        self.host_ptr = array_address(host_c) if contiguous else 0
        self.itemsize = host_c.itemsize
        self.stream = stream
        self.failed = False

    def use_device(self) -> None:
        rt = self.cp.cuda.runtime
        if rt.getDevice() != self.device_id:
            rt.setDevice(self.device_id)


def _side_stream(cp: Any, device_id: int) -> Any:
    ss = getattr(_tls, "streams", None)
    if ss is None:
        ss = _tls.streams = {}
    key = (id(cp), device_id)
    s = ss.get(key)
    if s is None:
        s = ss[key] = cp.cuda.Stream(non_blocking=True)
    return s


def _run_job(job: _Job, chunks: list[Chunk], task: Callable[[_Job, Chunk], None]) -> None:
    """Run ``task`` for every chunk: inline for one chunk, else on the workers; wait for all.

    With the per-thread default stream, whose handle means another stream in each worker, the
    DMAs go to a side stream of this thread, fenced by events against the caller's stream.
    """
    caller = job.stream
    side = None
    if caller.ptr == _PER_THREAD_STREAM and len(chunks) > 1:
        cp = job.cp
        side = _side_stream(cp, job.device_id)
        ev0 = cp.cuda.Event(block=False, disable_timing=True)
        ev0.record(caller)
        side.wait_event(ev0)
        job.stream = side
    try:
        if len(chunks) == 1:
            task(job, chunks[0])
        else:
            ex = _get_executor()
            _finish([ex.submit(task, job, ch) for ch in chunks])
    finally:
        if side is not None:
            # Also on failure: the caller's stream may reuse the device memory right away.
            ev1 = job.cp.cuda.Event(block=False, disable_timing=True)
            ev1.record(side)
            caller.wait_event(ev1)


def _copy_pieces(job: _Job, ch: Chunk, buf: np.ndarray, to_pinned: bool) -> None:
    for p in ch.pieces:
        h, b = _piece_pair(job.host_c, job.flat, buf, ch, p, job.itemsize)
        if to_pinned:
            np.copyto(b, h)  # releases the GIL for large copies
        else:
            np.copyto(h, b)


def _h2d_task(job: _Job, ch: Chunk) -> None:
    if job.failed:
        return
    try:
        job.use_device()
        pool = job.pool
        buf = pool.acquire()  # waits for the DMA that last read it
        ev = None
        try:
            _copy_pieces(job, ch, buf.array, to_pinned=True)
            job.cp.cuda.runtime.memcpyAsync(job.dev_ptr + ch.offset, buf.ptr, ch.nbytes, _H2D, job.stream.ptr)
            ev = _event_for(buf, job.device_id)
            ev.record(job.stream)
        finally:
            pool.release(buf, ev)  # reusable once the DMA has read it
    except BaseException:
        job.failed = True
        raise


def _d2h_task(job: _Job, ch: Chunk) -> None:
    if job.failed:
        return
    try:
        job.use_device()
        pool = job.pool
        buf = pool.acquire()
        ev = None
        try:
            job.cp.cuda.runtime.memcpyAsync(buf.ptr, job.dev_ptr + ch.offset, ch.nbytes, _D2H, job.stream.ptr)
            ev = _event_for(buf, job.device_id)
            ev.record(job.stream)
            ev.synchronize()
            ev = None
            _copy_pieces(job, ch, buf.array, to_pinned=False)
        finally:
            pool.release(buf, ev)
    except BaseException:
        job.failed = True
        raise


# ---------------------------------------------------------------------------------------------
# Host -> device
# ---------------------------------------------------------------------------------------------
def to_device(host: np.ndarray):
    """Copy a NumPy array to a new CuPy array on the current device.

    Same shape, dtype and values; F-contiguous result for an F-contiguous (not C-contiguous)
    source, else C-contiguous. The copy is queued on the current stream of the calling thread:
    work queued there afterwards sees the data. ``host`` is never modified and may be changed
    by the caller as soon as this returns. On failure (e.g. ``cupy.cuda.memory.OutOfMemoryError``)
    what was allocated is freed and the CuPy exception re-raised unchanged.
    """
    cp = _cp()
    src = host if type(host) is np.ndarray else np.asarray(host)
    if not src.dtype.isnative:
        src = src.astype(src.dtype.newbyteorder("="))
    if src.flags.c_contiguous:
        order, host_c, contiguous = "C", src, True
    elif src.flags.f_contiguous:
        order, host_c, contiguous = "F", src.T, True
    else:
        order, host_c, contiguous = "C", src, False
    dev = cp.empty(src.shape, dtype=src.dtype, order=order)
    nbytes = src.nbytes
    if nbytes == 0:
        return dev
    t = _TUNING
    # Before the cache is asked: a pin or unpin that begins after this makes a direct copy wait.
    _tls.generation = _pincache.cache.generation
    stream = cp.cuda.get_current_stream()
    # Only the pointer travels below, so that on failure no frame of the traceback keeps the
    # device array alive: `del dev` then really returns its memory to CuPy's pool.
    dev_ptr = dev.data.ptr
    try:
        if _results_pinned(t, contiguous, host_c, nbytes):
            _dma_host(cp, _H2D, dev_ptr, host_c, stream)  # a kept result passed back in
        elif _small_direct(contiguous, nbytes, t, t.h2d_direct_max, t.h2d_register_min, host_c):
            _h2d_direct(cp, dev_ptr, host_c, stream)
        else:
            how = _pinned_copy(cp, _H2D, dev_ptr, dev.device.id, host_c, stream, t) if contiguous else _ANY_PATH
            if how is not _COPIED:
                _h2d_path(cp, dev_ptr, dev.device.id, host_c, contiguous, nbytes, stream, t, direct=how is _ANY_PATH)
    except BaseException:
        del dev
        raise
    return dev


def _h2d_path(cp: Any, dev_ptr: int, device_id: int, host_c: np.ndarray, contiguous: bool, nbytes: int,
              stream: Any, t: _Tuning, direct: bool = True) -> None:
    """The engine's ways for pageable memory, by size and layout (see the module docstring);
    ``direct`` False: never the driver's own copy or pinning in place (the memory may be
    pinned or unpinned by another thread meanwhile)."""
    staged = contiguous and _staged(nbytes, t)
    if direct and contiguous and t.h2d_register_min and nbytes >= t.h2d_register_min:
        _register_copy(cp, dev_ptr, array_address(host_c), nbytes, _H2D, stream, t)
    elif direct and contiguous and nbytes <= t.h2d_direct_max and not staged:
        _h2d_direct(cp, dev_ptr, host_c, stream)
    else:
        try:
            if staged:
                _h2d_staged(cp, dev_ptr, device_id, array_address(host_c), nbytes, stream, t)
            elif contiguous and nbytes <= t.small_bytes and nbytes <= t.chunk_bytes:
                _h2d_small(cp, dev_ptr, device_id, _byte_view(host_c), stream, t)
            else:
                job = _Job(cp, dev_ptr, device_id, host_c, contiguous, stream, t)
                _run_job(job, plan_transfer(host_c.shape, host_c.itemsize, contiguous, t, job.host_ptr), _h2d_task)
        except PinnedUnavailable:
            # The driver's copy after all, from a copy of our own where the memory may be in
            # transition (it is never registered, so the driver's copy is synchronous).
            _h2d_direct(cp, dev_ptr, host_c if contiguous and direct else np.array(host_c, order="C"), stream)


def _pin_host(address: int, nbytes: int) -> bool:
    try:
        _cp().cuda.runtime.hostRegister(address, nbytes, _REGISTER_PORTABLE)
    except Exception:  # noqa: BLE001 - refused (locked-memory limit, already pinned): stays pageable
        return False
    return True


def _unpin_host(address: int) -> None:
    try:
        _cp().cuda.runtime.hostUnregister(address)
    except Exception:  # noqa: BLE001 - at exit the context may be gone; the OS frees it then
        pass


def _use_pinning(t: _Tuning) -> None:
    """Kept result blocks and the caller's arrays pinned on reuse as ``t`` says
    (``pin_results_min``, ``pin_reused_min``); set with the tuning, never on a copy. Imports
    nothing: CuPy only when something is pinned."""
    off = os.environ.get("AUTOOFFLOAD_PIN", "1").strip() == "0"  # the user's way out of pinning
    _hostmem.results.configure_pinning(_pin_host, _unpin_host, 0 if off else t.pin_results_min, t.pin_after_copies)
    _pincache.cache.configure(_pin_host, _unpin_host, 0 if off else t.pin_reused_min, t.pin_after_copies)


def _c_view(a: np.ndarray) -> np.ndarray | None:
    """``a``'s memory as a C-contiguous array (``a``, or its transpose where it is F-ordered),
    or None where it is not contiguous."""
    c = a if a.flags.c_contiguous else a.T if a.flags.f_contiguous else None
    return c if c is not None and c.flags.c_contiguous else None


def pinned(host: np.ndarray) -> bool:
    """Whether ``host``'s memory is pinned now, so that its copies are DMAs with no host copy: a
    kept result block, or the caller's array pinned on reuse. Contiguous
    arrays only; the stream planner asks (_executor.stream_plan)."""
    c = _c_view(host)
    if c is None:
        return False
    return _hostmem.results.is_pinned(array_address(c), c.nbytes) or _pincache.cache.covers(c)


@contextlib.contextmanager
def unpinned_copies():
    """Copies made on this thread meanwhile go as for memory never seen before: nothing is pinned
    on reuse or copied as pinned (neither the caller's arrays nor kept results). What calibration
    measures, so that a profile's copy curves stay those of the staged engine, and what the
    benchmarks show beside the default."""
    before = getattr(_tls, "unpinned", False)
    _tls.unpinned = True
    try:
        yield
    finally:
        _tls.unpinned = before


@contextlib.contextmanager
def held_pinned(arrays: list[np.ndarray]):
    """For a pipeline that queues its copies in without waiting for each (``_stream.run``):
    yields, per array, whether its memory (contiguous, native byte order) is pinned now and stays
    so until the block ends (the pin-down cache's holds on their owners; a kept result block stays
    pinned while its array lives), so that ``to_device_queued`` may copy any contiguous part of
    it. The caller waits for every copy it queued before the block ends. Inside
    ``unpinned_copies`` nothing is held. Left open: Ctrl-C between the cache's answer and the
    hold being recorded here leaks that one hold (its owner stays pinned until it dies)."""
    holds: list[Any] = []
    held = [False] * len(arrays)
    try:
        if not getattr(_tls, "unpinned", False):
            for i, a in enumerate(arrays):
                c = _c_view(a)
                if c is None or not c.dtype.isnative:
                    continue
                if _results_pinned(_TUNING, True, c, c.nbytes):
                    held[i] = True
                    continue
                hold = _pincache.cache.hold(c) if _pincache.cache.covers(c) else None
                if isinstance(hold, _pincache.Hold):
                    holds.append(hold)
                    held[i] = hold.pin()
        yield held
    finally:
        _release_all(holds)


def _release_all(holds: list[Any]) -> None:
    """Every hold let go, even through Ctrl-C inside one of them (the first interrupt or error is
    raised once all are let go: a hold skipped would keep its owner pinned until it dies)."""
    first: BaseException | None = None
    for hold in holds:
        try:
            hold.release()
        except BaseException as exc:  # noqa: BLE001 - raised below, after the rest
            first = first or exc
    if first is not None:
        raise first


def to_device_queued(host: np.ndarray):
    """``to_device`` of a contiguous part of memory a ``held_pinned`` block holds: one DMA queued
    on the current stream and not waited for (work queued there afterwards sees the data; the
    block's user waits for it before the block ends)."""
    cp = _cp()
    host_c = _c_view(host)
    if host_c is None:
        raise ValueError(f"to_device_queued copies contiguous memory; got an array of shape {host.shape} "
                         f"and strides {host.strides}")
    dev = cp.empty(host.shape, dtype=host.dtype, order="C" if host_c is host else "F")
    if host.nbytes:
        cp.cuda.runtime.memcpyAsync(dev.data.ptr, array_address(host_c), host.nbytes, _H2D,
                                    cp.cuda.get_current_stream().ptr)
    return dev


# What ``_pinned_copy`` did: the copy is done; or it is the engine's to make, by any path; or by a
# staged path only (the memory is being pinned or unpinned: see _pincache.IN_TRANSITION).
_COPIED, _ANY_PATH, _STAGED_ONLY = "copied", "any path", "staged only"


def _pinned_copy(cp: Any, kind: int, dev_ptr: int, device_id: int, host_c: np.ndarray, stream: Any, t: _Tuning) -> str:
    """The caller's C-contiguous ``host_c`` through the pin-down cache (_pincache.py), or, for
    memory of a kept result, which that cache does not take, its pool's count
    (_hostmem.HostBlocks.copied): where its memory is pinned (or this copy pins it now), one
    DMA, waited for: ``_COPIED``. Otherwise
    nothing is copied, and the answer says how the engine may: ``_ANY_PATH`` (its owner is not
    pinned; the copy was counted; also inside ``unpinned_copies``) or ``_STAGED_ONLY``."""
    hold = None
    done = False
    try:
        # Inside unpinned_copies nothing is the cache's to copy, as when it declines (a lower
        # threshold than when it pinned): then memory it has pinned is staged, never the driver's.
        unpinned = getattr(_tls, "unpinned", False)
        hold = None if unpinned else _pincache.cache.hold(host_c)
        if hold is None:
            if _pincache.cache.registered(host_c):
                return _STAGED_ONLY
            state = False if unpinned or host_c.nbytes < _pincache.COUNT_MIN_BYTES else _hostmem.results.copied(host_c)
            if state is _pincache.IN_TRANSITION:
                return _STAGED_ONLY  # a kept result another thread is pinning now
            if not state:
                return _ANY_PATH
            _dma_host(cp, kind, dev_ptr, host_c, stream)  # a kept result copied again, its block pinned now
            return _COPIED
        if hold is _pincache.IN_TRANSITION:
            return _STAGED_ONLY
        if not hold.pin():
            return _STAGED_ONLY  # refused, or no room: staged, as another thread may pin it now
        _dma_host(cp, kind, dev_ptr, host_c, stream)
        done = True
        return _COPIED
    finally:
        if isinstance(hold, _pincache.Hold):
            if not done:
                try:
                    stream.synchronize()  # no DMA may still use the owner once the hold lets it go
                except Exception:  # noqa: BLE001 - the failure already raised says more
                    pass
            hold.release()


def _small_direct(contiguous: bool, nbytes: int, t: _Tuning, direct_max: int, register_min: int,
                  host_c: np.ndarray) -> bool:
    """Whether a copy is what ``_pinned_copy`` and ``_h2d_path`` / ``_d2h_path`` come to for a
    contiguous array below the pin-down cache's counting size that the cache cannot hold (while
    it pins nothing, or where the memory is a small array's own: ``_pincache.never_pinned``): the
    driver's own copy, asked for without their layers. Inside a small call on the H200 each
    layer costs 1-3 us (tools/gpu_gaps.py 8), and to_host of 800 B took 16.5 us against
    cupy.asnumpy's 14.4 (h200-session18/gpu_gaps.parts.run3.txt). Until session 21 any array
    pinned in place sent every small copy through those layers: in the suite, once the other
    functions' large arrays were pinned, each small device call asked the cache twice
    (tools/suite_state_probe.py)."""
    return (contiguous and nbytes < _pincache.COUNT_MIN_BYTES and nbytes <= direct_max
            and (not _pincache.cache.active or _pincache.never_pinned(host_c))
            and not (register_min and nbytes >= register_min) and not _staged(nbytes, t))


# Results from this size up take kept blocks (pinned once handed out again) even where the
# driver's direct copy would move them, unless pinning is off. Why: which results are kept must
# not hang on where calibration puts the direct path's end. On the H200 the suite's pairwise
# distances at 1e6 (an 8 MB result, a loop of calls) took 410 us under @offload where 8 MB was
# above d2h_direct_max (5.6 MiB, the earlier shipped tuning) and 804 us where it was below (11.3
# MiB, the session 19 calibration), against 762 us for cupy with its copies; 1.13 ms with the
# defaults' 16 MiB (h200-session19 runs 1 and 3). Not from 1 MiB: many small kept blocks crowd
# the bounded free list and the pinned budget that large results need (session 12).
KEPT_RESULTS_MIN = 4 * MiB


def _kept_result(nbytes: int, t: _Tuning) -> bool:
    """Whether a new result of ``nbytes`` takes the memory of a kept block (_hostmem.py): above
    the direct-copy size, and from ``KEPT_RESULTS_MIN`` while results are pinned on reuse (the
    results pool's own threshold: 0 under AUTOOFFLOAD_PIN=0 or a tuning without pinning)."""
    if nbytes > t.d2h_direct_max:
        return True
    pin_min = _hostmem.results.pin_min_bytes
    return bool(pin_min) and nbytes >= max(pin_min, KEPT_RESULTS_MIN) and not getattr(_tls, "unpinned", False)


def _results_pinned(t: _Tuning, contiguous: bool, host_c: np.ndarray, nbytes: int) -> bool:
    """Whether ``host_c`` lies in a kept result block that is pinned (and pinning is not paused)."""
    return (contiguous and bool(t.pin_results_min) and host_c.base is not None  # (a result is a lease's view)
            and not getattr(_tls, "unpinned", False) and _hostmem.results.ready(array_address(host_c), nbytes))


def _dma_host(cp: Any, kind: int, dev_ptr: int, host_c: np.ndarray, stream: Any) -> None:
    """``_dma_pinned`` between ``dev_ptr`` and the pinned, contiguous ``host_c``, in ``kind``'s direction."""
    host_ptr = array_address(host_c)
    dst, src = (dev_ptr, host_ptr) if kind == _H2D else (host_ptr, dev_ptr)
    _dma_pinned(cp, dst, src, host_c.nbytes, kind, stream)


def _dma_pinned(cp: Any, dst: int, src: int, nbytes: int, kind: int, stream: Any) -> None:
    """One DMA between device memory and page-locked host memory; returns once it is done (the
    host side may then be changed or read by the caller)."""
    cp.cuda.runtime.memcpyAsync(dst, src, nbytes, kind, stream.ptr)
    stream.synchronize()


def _h2d_direct(cp: Any, dev_ptr: int, host_c: np.ndarray, stream: Any) -> None:
    # The driver stages pageable memory itself; it returns once the source has been read. From
    # pinned memory the copy is asynchronous, so then it is waited for: memory of a kept result
    # that is pinned (inside unpinned_copies), or an array another thread began to pin or unpin
    # since this copy asked the cache (to_device took the cache's generation first; memory the
    # cache had pinned, or in transition, when asked is staged: _pinned_copy). Memory pinned by
    # someone else entirely (cupyx.empty_pinned, the user's own cudaHostRegister) is not waited for.
    address, nbytes = array_address(host_c), host_c.nbytes
    cp.cuda.runtime.memcpyAsync(dev_ptr, address, nbytes, _H2D, stream.ptr)
    if (_pincache.cache.generation != getattr(_tls, "generation", -1)
            or (_hostmem.results.pinned_bytes and _hostmem.results.is_pinned(address, nbytes))):
        stream.synchronize()


def _h2d_small(cp: Any, dev_ptr: int, device_id: int, flat: np.ndarray, stream: Any, t: _Tuning) -> None:
    """One pinned buffer, one copy on this thread, one DMA on the caller's stream."""
    pool = _get_pool(t)
    buf = pool.acquire()
    ev = None
    try:
        np.copyto(buf.array[: flat.size], flat)
        cp.cuda.runtime.memcpyAsync(dev_ptr, buf.ptr, flat.size, _H2D, stream.ptr)
        ev = _event_for(buf, device_id)
        ev.record(stream)
    finally:
        pool.release(buf, ev)


def _staged(nbytes: int, t: _Tuning) -> bool:
    return _parcopy is not None and t.staged_min < nbytes <= t.staged_max


def _two_buffers(pool: PinnedPool, pieces: int) -> list[_Buffer]:
    """One buffer (waiting for it if need be), and a second when one is free or may be
    allocated: a thread never waits for a buffer while holding one, so callers cannot deadlock."""
    bufs = [pool.acquire()]
    if pieces > 1:
        try:
            second = pool.acquire(block=False)
        except BaseException:
            pool.release(bufs[0])
            raise
        if second is not None:
            bufs.append(second)
    return bufs


def _split(t: _Tuning) -> tuple[int, ...]:
    """``_parcopy.copy``'s parts-a-thread and spin arguments, passed only where they are not the
    defaults: a native module built before they existed (an editable install not rebuilt) still
    copies."""
    if t.pool_spin_us:
        return (t.parts_per_thread, t.pool_spin_us)
    return (t.parts_per_thread,) if t.parts_per_thread != 1 else ()


def _h2d_staged(cp: Any, dev_ptr: int, device_id: int, src_ptr: int, nbytes: int, stream: Any, t: _Tuning) -> None:
    """Pieces copied into two pinned buffers in turn by the native pool, each piece's DMA queued
    on the caller's stream as soon as it is in; a buffer is refilled once its DMA has read it."""
    pieces = staged_pieces(nbytes, t)
    pool = _get_pool(t)
    bufs = _two_buffers(pool, len(pieces))
    pending: list[Any] = [None] * len(bufs)
    try:
        for i, (off, n) in enumerate(pieces):
            k = i % len(bufs)
            buf = bufs[k]
            if pending[k] is not None:
                pending[k].synchronize()
                pending[k] = None
            _parcopy.copy(buf.ptr, src_ptr + off, n, t.threads, t.min_part_bytes, bool(t.h2d_nontemporal), *_split(t))
            cp.cuda.runtime.memcpyAsync(dev_ptr + off, buf.ptr, n, _H2D, stream.ptr)
            ev = _event_for(buf, device_id)
            ev.record(stream)
            pending[k] = ev
    finally:
        for buf, ev in zip(bufs, pending):
            pool.release(buf, ev)


# ---------------------------------------------------------------------------------------------
# Device -> host
# ---------------------------------------------------------------------------------------------
def to_host(dev, out: np.ndarray | None = None) -> np.ndarray:
    """Copy a CuPy array to the host; returns only when the data is there.

    Waits for pending work on the current stream, then copies. ``out=None``: a new array with
    ``dev``'s layout (C or F; a non-contiguous ``dev`` gives a C-contiguous result). ``out``
    given: same shape and dtype required; it may be any strided view and is written exactly as
    ``out[...] = dev.get()`` would; ``out`` is returned.
    """
    shape = tuple(dev.shape)
    dtype = np.dtype(dev.dtype)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"to_host: out must be a numpy.ndarray; got {type(out).__name__}")
        if tuple(out.shape) != shape or out.dtype != dtype:
            raise ValueError(
                f"to_host: out must have shape {shape} and dtype {dtype} (those of the device array); "
                f"got shape {tuple(out.shape)} and dtype {out.dtype}"
            )
        if not out.flags.writeable:
            raise ValueError("to_host: out is read-only")
    cp = _cp()
    device = dev.device
    if cp.cuda.runtime.getDevice() != device.id:
        with device:
            return _to_host(cp, dev, out, shape, dtype)
    return _to_host(cp, dev, out, shape, dtype)


def _to_host(cp: Any, dev: Any, out: np.ndarray | None, shape: tuple, dtype: np.dtype) -> np.ndarray:
    t = _TUNING
    stream = cp.cuda.get_current_stream()
    tmp = None
    flags = dev.flags
    if flags.c_contiguous:
        order, src_ptr = "C", dev.data.ptr
    elif flags.f_contiguous:
        order, src_ptr = "F", dev.data.ptr
    else:
        # One device-to-device pass (~3 TB/s) makes it contiguous; queued on the same stream.
        order, tmp = "C", cp.ascontiguousarray(dev)
        src_ptr = tmp.data.ptr
    fresh = False
    if out is None:
        if _kept_result(dtype.itemsize * math.prod(shape), t):
            # Memory already faulted in, when kept (and pinned, when kept and pinning is on).
            out = _hostmem.results.empty(shape, dtype, order, pin=not getattr(_tls, "unpinned", False))
            fresh = out.base.fresh
        else:
            out = np.empty(shape, dtype=dtype, order=order)
    if out.size == 0:
        return out
    host_c = out if order == "C" else out.T
    contiguous = host_c.flags.c_contiguous
    nbytes = host_c.nbytes
    try:
        if _results_pinned(t, contiguous, host_c, nbytes):
            _dma_host(cp, _D2H, src_ptr, host_c, stream)
        elif _small_direct(contiguous, nbytes, t, t.d2h_direct_max, t.d2h_register_min, host_c):
            _d2h_direct(cp, src_ptr, host_c, stream)
        else:
            how = _pinned_copy(cp, _D2H, src_ptr, dev.device.id, host_c, stream, t) if contiguous else _ANY_PATH
            if how is not _COPIED:
                _d2h_path(cp, src_ptr, dev.device.id, host_c, contiguous, nbytes, stream, t, fresh, direct=how is _ANY_PATH)
    except BaseException:
        del tmp  # no frame of the traceback keeps the temporary alive
        raise
    return out


def _d2h_path(cp: Any, src_ptr: int, device_id: int, host_c: np.ndarray, contiguous: bool, nbytes: int,
              stream: Any, t: _Tuning, fresh: bool, direct: bool = True) -> None:
    """The engine's ways into pageable memory, by size and layout (see the module docstring);
    ``direct`` as in ``_h2d_path``."""
    # Results in new memory: see _Tuning.staged_fresh.
    staged = contiguous and (t.staged_fresh or not fresh) and _staged(nbytes, t)
    if direct and contiguous and t.d2h_register_min and nbytes >= t.d2h_register_min:
        _register_copy(cp, src_ptr, array_address(host_c), nbytes, _D2H, stream, t)
    elif direct and contiguous and nbytes <= t.d2h_direct_max and not staged:
        _d2h_direct(cp, src_ptr, host_c, stream)
    else:
        try:
            if staged:
                _d2h_staged(cp, src_ptr, device_id, array_address(host_c), nbytes, stream, t)
            elif contiguous and nbytes <= t.small_bytes and nbytes <= t.chunk_bytes:
                _d2h_small(cp, src_ptr, _byte_view(host_c), stream, t)
            else:
                job = _Job(cp, src_ptr, device_id, host_c, contiguous, stream, t)
                _run_job(job, plan_transfer(host_c.shape, host_c.itemsize, contiguous, t, job.host_ptr), _d2h_task)
        except PinnedUnavailable:
            if contiguous and direct:
                _d2h_direct(cp, src_ptr, host_c, stream)
            else:  # into memory of our own, never registered (see _h2d_path)
                staged_copy = np.empty(host_c.shape, host_c.dtype)
                _d2h_direct(cp, src_ptr, staged_copy, stream)
                np.copyto(host_c, staged_copy)


def _d2h_direct(cp: Any, src_ptr: int, host_c: np.ndarray, stream: Any) -> None:
    if stream.ptr == 0:
        # The legacy default stream: cudaMemcpy orders itself after the queued work and returns
        # when the data is on the host, one driver call instead of copy + synchronize (what
        # cupy.asnumpy does there; the small sizes measured slower than it without this).
        cp.cuda.runtime.memcpy(array_address(host_c), src_ptr, host_c.nbytes, _D2H)
        return
    # Any other stream: copy on it, then wait for it (to pageable memory the driver usually
    # returns only once the copy is done; the synchronize makes that certain).
    cp.cuda.runtime.memcpyAsync(array_address(host_c), src_ptr, host_c.nbytes, _D2H, stream.ptr)
    stream.synchronize()


def _d2h_small(cp: Any, src_ptr: int, flat: np.ndarray, stream: Any, t: _Tuning) -> None:
    """One DMA into one pinned buffer on the caller's stream, wait, one copy out."""
    pool = _get_pool(t)
    buf = pool.acquire()
    try:
        cp.cuda.runtime.memcpyAsync(buf.ptr, src_ptr, flat.size, _D2H, stream.ptr)
        stream.synchronize()
        np.copyto(flat, buf.array[: flat.size])
    finally:
        pool.release(buf)


def _d2h_staged(cp: Any, src_ptr: int, device_id: int, dst_ptr: int, nbytes: int, stream: Any, t: _Tuning) -> None:
    """DMAs of pieces into two pinned buffers in turn on the caller's stream; each piece is
    copied out by the native pool while the DMA of the next one runs."""
    pieces = staged_pieces(nbytes, t)
    pool = _get_pool(t)
    bufs = _two_buffers(pool, len(pieces))
    pending: list[Any] = [None] * len(bufs)
    rt = cp.cuda.runtime

    def queue(i: int) -> None:
        k = i % len(bufs)
        off, n = pieces[i]
        rt.memcpyAsync(bufs[k].ptr, src_ptr + off, n, _D2H, stream.ptr)
        ev = _event_for(bufs[k], device_id)
        ev.record(stream)
        pending[k] = ev

    try:
        for i in range(min(len(bufs), len(pieces))):
            queue(i)
        for i, (off, n) in enumerate(pieces):
            k = i % len(bufs)
            pending[k].synchronize()
            pending[k] = None
            _parcopy.copy(dst_ptr + off, bufs[k].ptr, n, t.threads, t.min_part_bytes, bool(t.d2h_nontemporal), *_split(t))
            if i + len(bufs) < len(pieces):
                queue(i + len(bufs))
    finally:
        for buf, ev in zip(bufs, pending):
            pool.release(buf, ev)


# ---------------------------------------------------------------------------------------------
# Both ways: the caller's pages pinned in place
# ---------------------------------------------------------------------------------------------
def _register_copy(cp: Any, dev_ptr: int, host_ptr: int, nbytes: int, kind: int, stream: Any, t: _Tuning) -> None:
    """DMA straight from/to the caller's pageable memory, pinned in place piece by piece
    (``register_chunk_bytes``, page-aligned inner boundaries) so that pinning a piece overlaps
    the DMA of the previous one; every piece is unpinned once the stream has finished, also on
    failure. A piece that cannot be pinned (its pages are pinned already, e.g. by another
    thread copying an overlapping array, or the driver refuses) goes by the driver's own staged
    copy. Returns once the data has arrived (device->host) or the source was read (host->device).
    """
    rt = cp.cuda.runtime
    chunks = plan_contiguous(host_ptr, nbytes, t.register_chunk_bytes or nbytes)
    pinned: list[int] = []
    try:
        for ch in chunks:
            p = host_ptr + ch.offset
            try:
                rt.hostRegister(p, ch.nbytes, 0)
            except Exception:  # noqa: BLE001 - any refusal: the driver stages this piece
                pass
            else:
                pinned.append(p)
            if kind == _H2D:
                rt.memcpyAsync(dev_ptr + ch.offset, p, ch.nbytes, _H2D, stream.ptr)
            else:
                rt.memcpyAsync(p, dev_ptr + ch.offset, ch.nbytes, _D2H, stream.ptr)
        stream.synchronize()
    finally:
        if pinned:
            try:
                stream.synchronize()  # no DMA may still use a page once it is unpinned
            finally:
                for p in pinned:
                    rt.hostUnregister(p)


def pool_info() -> dict[str, int]:
    """Pinned pool accounting (diagnostics, tests): buffers allocated and in use, bytes each."""
    pool = _pool
    if pool is None:
        return {"allocated": 0, "in_use": 0, "buffer_bytes": _TUNING.chunk_bytes, "max_buffers": _TUNING.max_buffers}
    return {"allocated": pool.allocated, "in_use": pool.in_use, "buffer_bytes": pool.buffer_bytes, "max_buffers": pool.max_buffers}


_use_pinning(_TUNING)  # the defaults' pinning, also where no profile ever sets a tuning
