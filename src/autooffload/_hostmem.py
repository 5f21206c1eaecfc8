"""Host memory for large device->host results, kept warm for reuse once the caller drops them.

Why: a fresh ``np.empty`` of 1 GiB is 262144 pages that the kernel faults in and zeroes on
first touch, while the copy engine writes them. On the H100 machine that held device->host into
a *new* array at 17-22 GB/s against ~27-40 into memory already touched (issue 4). A program that
offloads in a loop drops each result and asks for one of about the same size on the next call,
so the memory of a dropped result is kept, already faulted in, and handed out again.

How: a result is an ordinary NumPy array whose ``base`` is a small ``_Lease`` object holding
the block (NumPy keeps the base alive through every view of the result). When the last view
dies, the lease returns its block to the free list (through a queue: a result can die in a
garbage collection that started inside this pool's locked code, whose lock its ``__del__`` must
not wait for). Free blocks are bounded (``max_free_bytes``, an eighth of the memory the process
may use, at most 8 GiB); beyond that the largest go back to the OS.
``release()`` drops them all. Only results above the copy engine's direct-copy size use this,
and those from 4 MiB while kept blocks are pinned (``_transfer.KEPT_RESULTS_MIN``): below, the
allocator's own free lists serve.

A hand-out and give-back costs ~5.6 us of Python on the 2-core VM with the C extension built
(tools/kept_result_cost.py; 18 us while each block's address was read through ``ndarray.ctypes``,
~1 us a time, six times a round trip, a lease's bytes were counted with ``np.prod``, ~3 us, and a
pinned block handed out again took the lock to find it pinned:
benchmarks/results/cpu-vm/kept-result-cost.session12.txt).

The difference a user can see: the result's ``flags.owndata`` is False and ``result.resize()``
in place raises (as for any view); everything else is that of a NumPy array.

Pinned kept blocks (``configure_pinning``; the copy engine turns it on from its tuning,
``pin_results_min``, 1 MiB by default: every kept block): a kept block handed out again, at least that large, is page-locked once
(cudaHostRegister, ~31 GB/s of warm pages on the H200) and stays so while it is kept or in use.
A copy into a result there is one DMA (55 GB/s on the H200) and no host copy at all, where the
staged path copies every byte once more through host memory: that copy is what the streamed
pipeline's copies in and out compete for (streaming.txt: streamed 1.7-2.9x its slowest stage).
Blocks are pinned when reused: a loop's second result pays the pinning (or the result the copy
tuning's ``pin_after_copies`` names), every later one gains; and a block whose result is copied
again, in or out (``copied``: the pin-down cache of the caller's arrays stops at a result's
lease), at the copy that moves ``pin_after_copies`` (at least 2) times its bytes, the one that
made it included.
At most ``max_pinned_bytes`` are pinned; a block is unpinned before it goes back to the OS.
"""

from __future__ import annotations

import bisect
import contextlib
import operator
import os
import threading
from collections import deque
from typing import Callable

import numpy as np

from ._address import array_address
from ._cores import usable_memory
from ._pincache import IN_TRANSITION, chain_end, lock_free_soon

# Blocks are sized in whole 2 MiB steps, and a free block serves a request up to 25% (plus one
# step) smaller than itself: results of one loop reuse each other without wasting much memory.
_STEP = 2 * 1024 * 1024
_SLACK = 1.25


def _default_max_free_bytes() -> int:
    return min(usable_memory() // 8, 8 * 1024**3)  # the machine's RAM, or the container's limit


class _Lease:
    """The ``base`` of a handed-out result: returns the block to its pool when the result dies."""

    __slots__ = ("__array_interface__", "_block", "_pool", "fresh", "nbytes")

    def __init__(self, block: np.ndarray, pool: "HostBlocks", shape: tuple, dtype: np.dtype, order: str, fresh: bool,
                 nbytes: int):
        self._block = block
        self._pool = pool
        self.fresh = fresh  # new memory, its pages not faulted in yet (not a kept block)
        self.nbytes = nbytes  # the result's bytes (its block may be larger)
        strides: tuple[int, ...] | None = None
        if order == "F" and len(shape) > 1:
            steps: list[int] = []
            step = dtype.itemsize
            for n in shape:
                steps.append(step)
                step *= max(n, 1)
            strides = tuple(steps)
        self.__array_interface__ = {
            "version": 3, "shape": shape, "typestr": dtype.str, "descr": dtype.descr,
            "data": (array_address(block), False), "strides": strides,
        }

    def __del__(self) -> None:
        try:
            self._pool._give_back(self._block)
        except Exception:  # interpreter shutdown: the memory goes with the process
            pass


class HostBlocks:
    """Free blocks of host memory (uint8 arrays), best fit by size; thread-safe."""

    def __init__(self, max_free_bytes: int | None = None):
        self.max_free_bytes = _default_max_free_bytes() if max_free_bytes is None else int(max_free_bytes)
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []  # ascending by size
        self._free_bytes = 0
        self.reused = 0
        self.allocated = 0
        # Pinning of reused blocks (configure_pinning): off until the copy engine turns it on.
        self._pin: Callable[[int, int], bool] | None = None
        self._unpin: Callable[[int], None] | None = None
        self.pin_min_bytes = 0
        self.pin_after = 2  # a block is pinned at this use of it (the first: its allocation)
        # Uses of each kept block so far, by address (while it is kept or in use).
        self._uses: dict[int, int] = {}
        # Bytes copies moved in or out of each block a result holds now (``copied``), by address;
        # such blocks whose pinning was refused or found no room (not tried again while held);
        # and blocks claimed for pinning whose registration is not done yet (``ready``).
        self._moved: dict[int, int] = {}
        self._declined: set[int] = set()
        self._registering: set[int] = set()
        self.max_pinned_bytes = self.max_free_bytes
        self._pinned: dict[int, int] = {}  # block address -> bytes, page-locked
        # The same as sorted (starts, ends), replaced whole under the lock at every change and
        # read without it: every copy of host data asks ``is_pinned`` (twice a call), and a
        # pool may hold many pinned blocks once results from 1 MiB are pinned.
        self._spans: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
        self.pinned_bytes = 0
        # Blocks whose result died, not yet back in the free list. A result can die in a garbage
        # collection that started inside this pool's own locked code, on this thread: its
        # ``__del__`` must not wait for the lock then, so it leaves the block here.
        self._returned: deque[np.ndarray] = deque()

    @contextlib.contextmanager
    def _locked(self):
        """The lock, with the blocks returned meanwhile put back first; those to unpin are
        unpinned after the lock is released."""
        keep: list[np.ndarray] = []
        drop: list[np.ndarray] = []
        try:
            with self._lock:
                keep, drop = self._put_back_locked()
                yield
        finally:  # also when the body raised: returned blocks are never lost, nor freed pinned
            self._unpin_then_keep(keep, drop)

    def configure_pinning(self, pin: Callable[[int, int], bool] | None, unpin: Callable[[int], None] | None,
                          min_bytes: int = 0, pin_after: int = 2) -> None:
        """Pin reused blocks of at least ``min_bytes`` with ``pin(address, nbytes) -> pinned?``
        at their ``pin_after``-th use (2: the first time one is handed out again; the copy
        tuning's ``pin_after_copies``), unpinned with ``unpin(address)`` before they go back to
        the OS; ``pin=None`` (or ``min_bytes`` 0) turns it off for blocks handed out from now on."""
        with self._locked():
            self._pin = pin if min_bytes > 0 else None
            self._unpin = unpin if unpin is not None else self._unpin  # what is pinned must stay unpinnable
            self.pin_min_bytes = int(min_bytes)
            self.pin_after = max(2, int(pin_after))
            off = self._pin is None
        if off:  # kept blocks leave the free list while they are unpinned; those in use when given back
            self.unpin_idle()

    def unpin_idle(self) -> None:
        """Unpin the kept blocks no result holds now (they leave the free list meanwhile); where
        pinning is on they are pinned again when handed out again. Also before a fork: see
        ``_before_fork``."""
        with self._locked():
            idle = [b for b in self._free if array_address(b) in self._pinned]
            self._free = [b for b in self._free if array_address(b) not in self._pinned]
            self._free_bytes -= sum(b.nbytes for b in idle)
        self._unpin_then_keep(idle, [])
        with self._locked():
            pass  # the unpinned blocks back into the free list now (a forked child forgets _returned)

    def forget_pins(self) -> None:
        """In a forked child: the parent's registrations are not this process's."""
        self._lock = threading.Lock()
        self._pinned.clear()
        self._reindex()
        self.pinned_bytes = 0
        self._returned.clear()
        self._uses.clear()
        self._moved.clear()
        self._declined.clear()
        self._registering.clear()

    def is_pinned(self, address: int, nbytes: int) -> bool:
        """Whether [address, address + nbytes) lies in one pinned block."""
        return self._pinned_block_at(address, nbytes) is not None

    def _pinned_block_at(self, address: int, nbytes: int) -> int | None:
        """The address of the pinned block [address, address + nbytes) lies in, or None (blocks
        never overlap: only the last one starting at or below ``address`` can hold it)."""
        starts, ends = self._spans
        i = bisect.bisect_right(starts, address) - 1
        return starts[i] if i >= 0 and address + nbytes <= ends[i] else None

    def _reindex(self) -> None:
        """``_spans`` from ``_pinned`` (under the lock)."""
        spans = sorted(self._pinned.items())
        self._spans = (tuple(a for a, _ in spans), tuple(a + n for a, n in spans))

    def empty(self, shape: tuple, dtype: np.dtype, order: str = "C", pin: bool = True) -> np.ndarray:
        """Like ``np.empty(shape, dtype, order)`` (C or F), from a kept block when one fits
        (pinned then, where pinning is on, unless ``pin`` is False).

        ``result.base.fresh`` tells whether the memory is new (no kept block fitted)."""
        dtype = np.dtype(dtype)
        shape = tuple(map(operator.index, shape))  # Python ints: NumPy integers would overflow below
        nbytes = dtype.itemsize
        for n in shape:
            nbytes *= n
        block = self._take(nbytes)
        fresh = block is None
        if block is None:
            block = np.empty(-(-max(nbytes, 1) // _STEP) * _STEP, np.uint8)
            with self._locked():
                self.allocated += 1
        elif pin and self._pin is not None and block.nbytes >= self.pin_min_bytes:
            address = array_address(block)
            if address not in self._pinned and self._uses.get(address, 1) >= self.pin_after:  # (checked again under the lock)
                self._pin_block(block)
        return np.asarray(_Lease(block, self, shape, dtype, order, fresh, nbytes))

    def ready(self, address: int, nbytes: int) -> bool:
        """Whether [address, address + nbytes) lies in one pinned block whose registration is done,
        so that a copy may be one DMA (``is_pinned`` also counts a block being pinned: where a
        direct copy must wait, that is the safe answer). Locks only where ``is_pinned`` holds."""
        block = self._pinned_block_at(address, nbytes)
        if block is None:
            return False
        with self._lock:
            return block in self._pinned and block not in self._registering

    def copied(self, a: np.ndarray) -> "bool | object":
        """A copy moved ``a``'s bytes (the copy engine tells, for contiguous copies from 1 MiB
        that the pin-down cache does not take, it stops at a result's lease). Where ``a`` lies in
        a kept block a result of this pool holds now, they are counted, and the block is pinned
        at the copy that brings them to ``pin_after`` (``max(2, pin_after_copies)``) times the
        result's size, the copy that made the result included: so a result the program keeps
        and copies back in (weights computed once, then passed to every call) is pinned at its
        second copy, as an array that owns its memory is (_pincache.py). A block whose pinning
        was refused or found no room within ``max_pinned_bytes`` is not tried again while that
        result holds it (nothing pinned is unpinned to make room). Returns True when the block
        is pinned and registered now (the copy may be one DMA), ``IN_TRANSITION`` while another
        thread pins it (the copy must be staged), else False."""
        if self._pin is None:
            return False
        lease = _lease_of(a)
        if lease is None or lease._pool is not self:
            return False
        block = lease._block
        if block.nbytes < self.pin_min_bytes:
            return False
        address = array_address(block)
        with self._locked():
            if address in self._registering:
                return IN_TRANSITION
            if address in self._pinned:
                return True
            if address in self._declined:
                return False
            moved = self._moved[address] = self._moved.get(address, 0) + a.nbytes
            if moved < self.pin_after * lease.nbytes:
                return False
        self._pin_block(block)
        with self._locked():
            if address in self._registering:
                return IN_TRANSITION  # another thread claimed it first
            if address in self._pinned:
                return True
            self._declined.add(address)
            return False

    def _pin_block(self, block: np.ndarray) -> None:
        address = array_address(block)
        with self._locked():
            pin = self._pin
            if pin is None or address in self._pinned or self.pinned_bytes + block.nbytes > self.max_pinned_bytes:
                return
            self._registering.add(address)  # before the span is published: see ready()
            self._pinned[address] = block.nbytes  # claimed: another thread will not pin it too
            self._reindex()
            self.pinned_bytes += block.nbytes
        ok = interrupted = False
        try:
            interrupted = True
            ok = bool(pin(address, block.nbytes))  # outside the lock: ~30 ms a GiB
            interrupted = False
        finally:
            if interrupted and self._unpin is not None:
                try:  # Ctrl-C right after the registration was made: undo it
                    self._unpin(address)
                except BaseException:  # noqa: BLE001 - nothing was registered
                    pass
            with self._locked():
                if not ok:
                    del self._pinned[address]
                    self._reindex()
                    self.pinned_bytes -= block.nbytes
                self._registering.discard(address)

    def _unpin_block(self, block: np.ndarray) -> None:
        """Unpin ``block`` if it is pinned (it is about to go back to the OS). ``pinned_bytes``
        drops only once it is unpinned: until then a direct copy from it may be asynchronous
        (the copy engine waits while any block is pinned)."""
        address = array_address(block)
        with self._locked():
            size = self._pinned.pop(address, None)  # claimed: no copy takes it as pinned now
            if size is None:
                return
            self._reindex()
            unpin = self._unpin
        try:
            if unpin is not None:
                unpin(address)
        finally:
            with self._locked():
                self.pinned_bytes -= size

    def _take(self, nbytes: int) -> np.ndarray | None:
        limit = nbytes * _SLACK + _STEP
        with self._locked():
            for i, block in enumerate(self._free):
                if block.nbytes >= nbytes:
                    if block.nbytes > limit:
                        return None  # the smallest block that fits is too big for this request
                    del self._free[i]
                    self._free_bytes -= block.nbytes
                    self.reused += 1
                    address = array_address(block)
                    self._uses[address] = self._uses.get(address, 1) + 1
                    return block
        return None

    def _give_back(self, block: np.ndarray) -> None:
        """A result died: its block goes back to the free list (now, unless the lock is held,
        by this thread in a garbage collection or by another: then at the next locked call)."""
        self._returned.append(block)
        if self._lock.acquire(blocking=False):
            try:
                keep, drop = self._put_back_locked()
            finally:
                self._lock.release()
            self._unpin_then_keep(keep, drop)

    def _put_back_locked(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Returned blocks into the free list, the largest beyond the bound dropped. Returns
        (blocks to unpin and then keep: pinning was turned off while they were in use; blocks
        to unpin, if pinned, before they go back to the OS)."""
        keep: list[np.ndarray] = []
        drop: list[np.ndarray] = []
        while self._returned:
            block = self._returned.popleft()
            address = array_address(block)
            self._moved.pop(address, None)  # counted for the result that held it
            self._declined.discard(address)
            if block.nbytes > self.max_free_bytes:
                drop.append(block)
                continue
            if self._pin is None and address in self._pinned:
                keep.append(block)  # into the free list once unpinned: never handed out pinned meanwhile
                continue
            self._free.insert(bisect.bisect_left(self._free, block.nbytes, key=_size), block)
            self._free_bytes += block.nbytes
            while self._free_bytes > self.max_free_bytes:
                drop.append(self._free.pop())  # the largest first: it costs the most to keep
                self._free_bytes -= drop[-1].nbytes
        return keep, drop

    def _unpin_then_keep(self, keep: list[np.ndarray], drop: list[np.ndarray]) -> None:
        """Unpin ``keep`` and ``drop`` (those pinned), then return ``keep`` to the free list (at
        the next locked call). An interrupt does not stop it halfway: no block may go back to
        the OS, or to a result, still pinned; it is raised once all are done."""
        interrupt: BaseException | None = None
        for block in drop:
            self._uses.pop(array_address(block), None)  # its address may serve a new block later
        for block in (*keep, *drop):
            try:
                self._unpin_block(block)
            except BaseException as exc:  # noqa: BLE001 - finish the others first
                interrupt = interrupt or exc
        self._returned.extend(keep)
        if interrupt is not None:
            raise interrupt

    def release(self) -> None:
        """Give every free block back to the OS (blocks still held by results return later)."""
        with self._locked():
            dropped, self._free = self._free, []
            self._free_bytes = 0
        self._unpin_then_keep([], dropped)

    def info(self) -> dict[str, int]:
        with self._locked():
            return {"free_blocks": len(self._free), "free_bytes": self._free_bytes,
                    "max_free_bytes": self.max_free_bytes, "reused": self.reused, "allocated": self.allocated,
                    "pinned_blocks": len(self._pinned), "pinned_bytes": self.pinned_bytes}


def _lease_of(a: np.ndarray) -> _Lease | None:
    """The lease of the kept block ``a`` lies in (``a`` a result or a view of one), or None."""
    end = chain_end(a)
    return end if type(end) is _Lease else None


def _size(block: np.ndarray) -> int:
    return block.nbytes


results = HostBlocks()


def _before_fork() -> None:
    """No idle kept block stays pinned across a fork. On Linux before 5.9 a page pinned for DMA
    stays shared copy-on-write with the child: the parent's next write moves the parent to a
    new page, and the parent's later DMAs read the old one (the stale-page problem RDMA
    libraries meet with ``ibv_fork_init``). Unpinned, the pages fork as any other; they are
    pinned again when handed out again. Blocks a result holds stay pinned (README)."""
    try:
        if not lock_free_soon(results._lock):
            return  # this very thread holds it (a fork from a signal handler or a finalizer)
        results.unpin_idle()
    except Exception:  # noqa: BLE001 - a fork must not fail for this
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=results.forget_pins)
