"""Host <-> device copies of ordinary (pageable) NumPy arrays, near the pinned-memory limit.

Why: CUDA can only DMA from page-locked ("pinned") host memory. From an ordinary NumPy array,
``cupy.asarray`` stages the whole array through one pinned buffer with one thread and
``ndarray.get()`` lets the driver stage through its own small buffer; on the H100 machine that is
6.7 GB/s in and 3-10 GB/s out for 1 GiB, while pinned memory moves 54 / 42 GB/s
(../shared/design/MEASURED-H100.md).

How (engine ``pinned-pipeline-v1``):

* A bounded pool of pinned chunks (``_Tuning.chunk_bytes`` each, at most ``max_buffers``),
  allocated on first use with ``cudaHostAlloc``, reused across calls and threads, freed by
  ``release_pinned_pool()`` and at exit.
* Host -> device: the array is cut into chunks in its own memory order (C, or F for an
  F-contiguous array; C for anything strided, gathered on the way). Worker threads copy chunk
  i+1 into a pinned buffer (``np.copyto`` releases the GIL) while the DMA of chunk i runs. The
  DMAs are queued on the caller's *current stream*, so work queued there afterwards sees the
  data, and the caller's stream orders the device allocation exactly as ``cupy.empty`` expects.
  Each buffer carries a CUDA event recorded after its DMA; it is reused only once that event
  has fired.
* Device -> host: DMA chunk i+1 into a pinned buffer while the workers copy chunk i out to the
  destination; fresh destination pages fault on first touch inside the workers, so the faults
  are spread over the threads too.
* Small arrays skip the threads (one task on the calling thread); tiny ones, where measured
  faster, skip the pool and let the driver copy from pageable memory directly.

Tuning constants live in ``_TUNING`` with the measurement that chose them; ``benchmarks/
transfer.py --sweep`` re-measures them. CuPy is imported lazily: importing this module never
imports CuPy, and ``release_pinned_pool()`` works without it.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterator

import numpy as np

ENGINE_NAME = "pinned-pipeline-v1"

KiB = 1024
MiB = 1024 * KiB

__all__ = ["ENGINE_NAME", "to_device", "to_host", "release_pinned_pool"]


# ---------------------------------------------------------------------------------------------
# Tuning
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tuning:
    """Knobs of the engine. Defaults chosen by ``benchmarks/transfer.py --sweep`` on the H100."""

    # Largest chunk, and the size of each pinned buffer of the pool.
    chunk_bytes: int = 32 * MiB
    # Smallest chunk: arrays are cut into ~``target_chunks`` chunks so that even mid-size arrays
    # overlap host copies with DMA, but never below this (per-chunk overhead is ~20-40 us).
    min_chunk_bytes: int = 4 * MiB
    target_chunks: int = 4
    # Pinned buffers in the pool, shared by all threads, and how many one transfer keeps in
    # flight (filling/draining one while the DMA of the others runs).
    max_buffers: int = 4
    lookahead: int = 3
    # Worker threads for host copies, and the smallest piece handed to one of them.
    threads: int = 8
    min_task_bytes: int = 1 * MiB
    # At or below these sizes, let the driver copy from/to pageable memory directly (no pool).
    h2d_direct_max: int = 0
    d2h_direct_max: int = 0


def _default_threads() -> int:
    n = os.cpu_count() or 1
    return max(1, min(8, n - 1))


_TUNING = _Tuning(threads=_default_threads())


def _configure(**changes: Any) -> _Tuning:
    """Change tuning knobs (benchmarks, tests). Returns the previous tuning.

    Releases the pinned pool and the worker threads so that the new sizes take effect.
    """
    global _TUNING
    names = {f.name for f in fields(_Tuning)}
    unknown = set(changes) - names
    if unknown:
        raise TypeError(f"unknown tuning knobs {sorted(unknown)}; allowed: {sorted(names)}")
    for k, v in changes.items():
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"tuning knob {k} must be an int >= 0; got {v!r}")
    for k in ("chunk_bytes", "min_chunk_bytes", "target_chunks", "max_buffers", "lookahead", "threads", "min_task_bytes"):
        if k in changes and changes[k] < 1:
            raise ValueError(f"tuning knob {k} must be >= 1; got {changes[k]!r}")
    old = _TUNING
    new = replace(old, **changes)
    if new.min_chunk_bytes > new.chunk_bytes:
        new = replace(new, min_chunk_bytes=new.chunk_bytes)
    release_pinned_pool()
    _shutdown_executor()
    _TUNING = new
    return old


def _tuning() -> _Tuning:
    return _TUNING


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


def chunk_size_for(nbytes: int, t: _Tuning) -> int:
    """Bytes per chunk for an array of ``nbytes``: ~nbytes/target_chunks within [min, max]."""
    want = _round_up(max(1, -(-nbytes // t.target_chunks)), 4096)
    return max(min(t.min_chunk_bytes, t.chunk_bytes), min(t.chunk_bytes, want))


def task_size_for(chunk_bytes: int, t: _Tuning) -> int:
    """Bytes per host-copy task: a chunk split over the threads, never below min_task_bytes."""
    return max(t.min_task_bytes, _round_up(-(-chunk_bytes // t.threads), 4096))


def plan_transfer(shape: tuple[int, ...], itemsize: int, contiguous: bool, t: _Tuning) -> list[Chunk]:
    """Chunks for copying an array of ``shape`` whose C order is the device buffer's order.

    ``contiguous``: the host side is C-contiguous too, so it is planned as flat bytes (fewer,
    page-aligned tasks); otherwise as blocks of the strided host array.
    """
    nbytes = math.prod(shape) * itemsize
    if nbytes == 0:
        return []
    chunk = chunk_size_for(nbytes, t)
    task = min(task_size_for(chunk, t), chunk)
    if contiguous:
        return group_chunks(plan_pieces((nbytes,), 1, task), 1, chunk)
    return group_chunks(plan_pieces(shape, itemsize, task), itemsize, chunk)


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
_executor: ThreadPoolExecutor | None = None
_atexit_registered = False

# cudaMemcpyKind and cudaHostAllocPortable (values fixed by the CUDA runtime API).
_H2D, _D2H = 1, 2
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


def _get_pool() -> PinnedPool:
    global _pool, _atexit_registered
    pool = _pool
    if pool is not None:
        return pool
    with _state_lock:
        if _pool is None:
            t = _TUNING
            _pool = PinnedPool(t.chunk_bytes, t.max_buffers, _cuda_alloc, _cuda_free, _cuda_wait)
            if not _atexit_registered:
                # Registered after CuPy is imported, so it runs before CuPy's own exit hooks.
                atexit.register(release_pinned_pool)
                _atexit_registered = True
        return _pool


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    ex = _executor
    if ex is not None:
        return ex
    with _state_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=_TUNING.threads, thread_name_prefix="autooffload-copy")
        return _executor


def _shutdown_executor() -> None:
    global _executor
    with _state_lock:
        ex, _executor = _executor, None
    if ex is not None:
        ex.shutdown(wait=True)


def release_pinned_pool() -> None:
    """Free every pinned buffer of the engine (buffers in use are freed when their copy ends).

    Safe at any time, from any thread, and without CuPy (then there is nothing to free).
    """
    global _pool
    with _state_lock:
        pool, _pool = _pool, None
    if pool is not None:
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
# Host-side copy tasks
# ---------------------------------------------------------------------------------------------
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


def _start_copies(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list:
    """Queue ``np.copyto(dst, src)`` for each pair on the workers; a lone pair runs inline."""
    if len(pairs) == 1:
        np.copyto(pairs[0][0], pairs[0][1])
        return []
    ex = _get_executor()
    return [ex.submit(np.copyto, d, s) for d, s in pairs]


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
        order, host_c = "C", src
    elif src.flags.f_contiguous:
        order, host_c = "F", src.T
    else:
        order, host_c = "C", src
    dev = cp.empty(src.shape, dtype=src.dtype, order=order)
    nbytes = src.nbytes
    if nbytes == 0:
        return dev
    t = _TUNING
    stream = cp.cuda.get_current_stream()
    contiguous = host_c.flags.c_contiguous
    # Only the pointer travels below, so that on failure no frame of the traceback keeps the
    # device array alive: `del dev` then really returns its memory to CuPy's pool.
    dev_ptr, device_id = dev.data.ptr, dev.device.id
    try:
        if contiguous and nbytes <= t.h2d_direct_max:
            _h2d_direct(cp, dev_ptr, host_c, stream)
        else:
            try:
                if contiguous and nbytes <= t.min_task_bytes and nbytes <= t.chunk_bytes:
                    _h2d_small(cp, dev_ptr, device_id, _byte_view(host_c), stream)
                else:
                    _h2d_staged(cp, dev_ptr, device_id, host_c, contiguous, t, stream)
            except PinnedUnavailable:
                _h2d_direct(cp, dev_ptr, host_c if contiguous else np.ascontiguousarray(host_c), stream)
    except BaseException:
        del dev
        raise
    return dev


def _h2d_direct(cp: Any, dev_ptr: int, host_c: np.ndarray, stream: Any) -> None:
    # The driver stages pageable memory itself; it returns once the source has been read.
    cp.cuda.runtime.memcpyAsync(dev_ptr, host_c.ctypes.data, host_c.nbytes, _H2D, stream.ptr)


def _h2d_small(cp: Any, dev_ptr: int, device_id: int, flat: np.ndarray, stream: Any) -> None:
    """One pinned buffer, one copy on this thread, one DMA: no planning, no workers."""
    pool = _get_pool()
    buf = pool.acquire()
    ev = None
    try:
        np.copyto(buf.array[: flat.size], flat)
        cp.cuda.runtime.memcpyAsync(dev_ptr, buf.ptr, flat.size, _H2D, stream.ptr)
        ev = _event_for(buf, device_id)
        ev.record(stream)
    finally:
        pool.release(buf, ev)


def _h2d_staged(cp: Any, dev_ptr: int, device_id: int, host_c: np.ndarray, contiguous: bool, t: _Tuning, stream: Any) -> None:
    pool = _get_pool()
    itemsize = host_c.itemsize
    chunks = plan_transfer(host_c.shape, itemsize, contiguous, t)
    flat = _byte_view(host_c) if contiguous else None
    memcpy = cp.cuda.runtime.memcpyAsync
    filling: deque = deque()  # (chunk, buffer, futures) being filled by the workers
    nxt = 0
    try:
        while nxt < len(chunks) or filling:
            # Keep up to `lookahead` chunks filling; block for a buffer only when holding none
            # (threads sharing the bounded pool can then never deadlock).
            while nxt < len(chunks) and len(filling) < t.lookahead:
                buf = pool.acquire(block=not filling)
                if buf is None:
                    break
                ch = chunks[nxt]
                try:
                    pairs = [_piece_pair(host_c, flat, buf.array, ch, p, itemsize) for p in ch.pieces]
                    futs = _start_copies([(b, h) for h, b in pairs])
                except BaseException:
                    pool.release(buf)
                    raise
                filling.append((ch, buf, futs))
                nxt += 1
            ch, buf, futs = filling[0]
            try:
                _finish(futs)
                memcpy(dev_ptr + ch.offset, buf.ptr, ch.nbytes, _H2D, stream.ptr)
                ev = _event_for(buf, device_id)
                ev.record(stream)
            except BaseException:
                filling.popleft()
                pool.release(buf)
                raise
            filling.popleft()
            pool.release(buf, ev)
    except BaseException:
        # Let the workers finish with our buffers before anyone else gets them.
        for _, buf, futs in filling:
            try:
                _finish(futs)
            except BaseException:
                pass
            pool.release(buf)
        raise


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
    with dev.device:
        stream = cp.cuda.get_current_stream()
        tmp = None
        if dev.flags.c_contiguous:
            order, src_ptr = "C", dev.data.ptr
        elif dev.flags.f_contiguous:
            order, src_ptr = "F", dev.data.ptr
        else:
            # One device-to-device pass (~3 TB/s) makes it contiguous; queued on the same stream.
            order, tmp = "C", cp.ascontiguousarray(dev)
            src_ptr = tmp.data.ptr
        if out is None:
            out = np.empty(shape, dtype=dtype, order=order)
        if out.size == 0:
            return out
        host_c = out if order == "C" else out.T
        try:
            _d2h(cp, src_ptr, dev.device.id, host_c, _TUNING, stream)
        except BaseException:
            del tmp  # no frame of the traceback keeps the temporary alive
            raise
        return out


def _d2h(cp: Any, src_ptr: int, device_id: int, host_c: np.ndarray, t: _Tuning, stream: Any) -> None:
    contiguous = host_c.flags.c_contiguous
    nbytes = host_c.nbytes
    if contiguous and nbytes <= t.d2h_direct_max:
        _d2h_direct(cp, src_ptr, host_c, stream)
        return
    try:
        if contiguous and nbytes <= t.min_task_bytes and nbytes <= t.chunk_bytes:
            _d2h_small(cp, src_ptr, device_id, _byte_view(host_c), stream)
        else:
            _d2h_staged(cp, src_ptr, device_id, host_c, contiguous, t, stream)
    except PinnedUnavailable:
        if contiguous:
            _d2h_direct(cp, src_ptr, host_c, stream)
        else:
            tmp = np.empty(host_c.shape, host_c.dtype)
            _d2h_direct(cp, src_ptr, tmp, stream)
            np.copyto(host_c, tmp)


def _d2h_direct(cp: Any, src_ptr: int, host_c: np.ndarray, stream: Any) -> None:
    # From device to pageable memory the driver returns only once the copy is done; the
    # synchronize is cheap insurance for drivers that would not.
    cp.cuda.runtime.memcpyAsync(host_c.ctypes.data, src_ptr, host_c.nbytes, _D2H, stream.ptr)
    stream.synchronize()


def _d2h_small(cp: Any, src_ptr: int, device_id: int, flat: np.ndarray, stream: Any) -> None:
    """One DMA into one pinned buffer, wait for it, one copy out on this thread."""
    pool = _get_pool()
    buf = pool.acquire()
    ev = None
    try:
        cp.cuda.runtime.memcpyAsync(buf.ptr, src_ptr, flat.size, _D2H, stream.ptr)
        ev = _event_for(buf, device_id)
        ev.record(stream)
        ev.synchronize()
        ev = None
        np.copyto(flat, buf.array[: flat.size])
    finally:
        pool.release(buf, ev)


def _d2h_staged(cp: Any, dev_ptr: int, device_id: int, host_c: np.ndarray, contiguous: bool, t: _Tuning, stream: Any) -> None:
    pool = _get_pool()
    itemsize = host_c.itemsize
    chunks = plan_transfer(host_c.shape, itemsize, contiguous, t)
    flat = _byte_view(host_c) if contiguous else None
    memcpy = cp.cuda.runtime.memcpyAsync
    issued: deque = deque()  # (chunk, buffer, event): DMA queued into the buffer
    copying: deque = deque()  # (buffer, futures): workers copying the buffer out
    nxt = 0

    def retire_copies(keep: int) -> None:
        while len(copying) > keep:
            buf, futs = copying[0]
            try:
                _finish(futs)
            finally:
                copying.popleft()
                pool.release(buf)

    try:
        while True:
            # Queue DMAs ahead; block for a buffer only when holding none.
            while nxt < len(chunks) and len(issued) < t.lookahead:
                buf = pool.acquire(block=not issued and not copying)
                if buf is None:
                    break
                ch = chunks[nxt]
                try:
                    memcpy(buf.ptr, dev_ptr + ch.offset, ch.nbytes, _D2H, stream.ptr)
                    ev = _event_for(buf, device_id)
                    ev.record(stream)
                except BaseException:
                    pool.release(buf)
                    raise
                issued.append((ch, buf, ev))
                nxt += 1
            if not issued:
                if not copying:
                    break  # all done
                retire_copies(0)  # free our buffers, then queue more DMAs
                continue
            ch, buf, ev = issued.popleft()
            try:
                ev.synchronize()
                pairs = [_piece_pair(host_c, flat, buf.array, ch, p, itemsize) for p in ch.pieces]
                futs = _start_copies(pairs)
            except BaseException:
                pool.release(buf, ev)
                raise
            retire_copies(0)  # the previous chunk's copies (the workers are on this one now)
            copying.append((buf, futs))
        retire_copies(0)
    except BaseException:
        for buf, futs in copying:
            try:
                _finish(futs)
            except BaseException:
                pass
            pool.release(buf)
        copying.clear()
        for _, buf, ev in issued:
            pool.release(buf, ev)  # the next user waits for the DMA into it
        raise


def pool_info() -> dict[str, int]:
    """Pinned pool accounting (diagnostics, tests): buffers allocated and in use, bytes each."""
    pool = _pool
    if pool is None:
        return {"allocated": 0, "in_use": 0, "buffer_bytes": _TUNING.chunk_bytes, "max_buffers": _TUNING.max_buffers}
    return {"allocated": pool.allocated, "in_use": pool.in_use, "buffer_bytes": pool.buffer_bytes, "max_buffers": pool.max_buffers}
