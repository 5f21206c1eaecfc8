"""The caller's own large arrays, pinned in place once they are copied again (a pin-down cache).

Why: CUDA can only DMA from page-locked memory, so the copy engine stages a NumPy array through
pinned buffers: every byte crosses the host's memory bus once more, copied by CPU threads. On the
H200 machine that host copy, not the link, is the limit: 16 threads copy ~35-45 GB/s where the
link does 55 GB/s each way and ~95 GB/s both ways at once, and two host copies at once take as
long as one after the other (benchmarks/results/h200/transfer.NOTES.md, "copies both ways"). So
a streamed call, whose copies in and out should overlap, cost about their sum: 1.96-2.95x its
slowest stage (h200/streaming.txt, session 6). Memory that is already page-locked needs no
staging: one DMA per piece, no CPU copy, both directions at once at the link's rate.

Pinning the caller's memory costs ~31 GB/s of warm pages to pin and ~53 GB/s to unpin on the
H200 machine (about one staged copy), so pinning for one copy and unpinning after it never
wins there (``_transfer._register_copy``, off by default). Pinning once and keeping it pinned
while the array lives wins from the next copy on. That is the registration cache of MPI
libraries and UCX ("leave pinned", "rcache"), here for NumPy arrays:

* Only arrays whose base chain ends in a NumPy array that owns its memory take part (the
  *owner*; NumPy frees that memory only in the owner's deallocation, after its weak references
  are called back). Views, slices and chunks of an owner share its registrations. Memory of
  other origins (``np.frombuffer``, memory maps, results of ``_hostmem``, which pins its own)
  stays on the engine's other paths.
* Memory is pinned in *units*: the page-aligned part of the owner's buffer inside one aligned
  ``UNIT_BYTES`` window of the address space. Units do not depend on how a copy is cut, so a
  whole-array copy and a streamed call's chunks share them, and no two registrations overlap.
  A copy's bytes outside the page-aligned part (under a page at each end) go the engine's way.
* A unit is pinned the ``PIN_AFTER``-th time a copy touches it (the second): an array copied
  once is never pinned, a loop's second copy pins (at about the staged rate: pinning one unit
  overlaps the DMA of the one before) and every later copy is one DMA per unit.
* A unit stays pinned until its owner dies (unpinned in the owner's weak-reference callback,
  before NumPy frees the memory), until the bound needs room (the least recently used units no
  copy is using are unpinned first), or ``release()``. The memory cannot move meanwhile: NumPy
  refuses to ``resize`` in place an array that has a weak reference, which the cache holds on
  every owner with a pinned unit (only there: touches are counted by address and size, at most
  ``MAX_COUNTED`` owners, the least recent forgotten first). At most ``max_pinned_bytes`` are
  pinned: a quarter of physical memory (pinned pages cannot be swapped out).
* A unit the driver refuses to pin (already pinned by someone else, locked-memory limits) is not
  tried again for that owner; its bytes are staged as before.

Thread-safe: copies hold the units they use, so no unit is unpinned under a DMA; a unit being
pinned by one thread is staged by another. Imports nothing of CuPy: the engine hands in its
pin and unpin functions (``configure``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ._address import array_address

UNIT_BYTES = 64 * 1024 * 1024
PAGE = mmap.PAGESIZE
PIN_AFTER = 2
MAX_COUNTED = 4096  # owners whose touches are counted but nothing is pinned (no weak reference)


def _default_max_pinned_bytes() -> int:
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = 8 * 1024**3
    return physical // 4


def owner_of(a: np.ndarray) -> np.ndarray | None:
    """The NumPy array that owns ``a``'s memory (``a`` itself, or the end of its base chain), or
    None where that memory is not NumPy's own (a buffer, a memory map, a result lease)."""
    owner = a
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    if owner.base is not None or not owner.flags.owndata:
        return None
    return owner


@dataclass
class _Unit:
    start: int  # address
    nbytes: int
    touched: int = 0
    state: str = "seen"  # "seen", "pinning" (claimed by one copy), "pinned", "refused"
    holds: int = 0  # copies using it now (pinned units only)


@dataclass
class _Owner:
    address: int
    nbytes: int
    ref: weakref.ref | None = None  # taken when a unit is first pinned: the callback unpins
    units: dict[int, _Unit] = field(default_factory=dict)  # window index -> unit


@dataclass
class Segment:
    """A part of one copy, in order: ``offset`` bytes into the copied range, ``nbytes`` long."""

    offset: int
    nbytes: int
    unit: _Unit | None  # the unit it lies in (None: outside the page-aligned part)
    pinned: bool = False
    due: bool = False  # this copy claimed the unit: pin it (``Hold.pin``), then it is pinned


class Hold:
    """The segments of one copy and the units it holds; ``release()`` once the DMAs are done."""

    def __init__(self, cache: "PinCache", owner_key: tuple[int, int], segments: list[Segment]):
        self.cache = cache
        self.owner_key = owner_key
        self.segments = segments
        self._released = False

    def pin(self, seg: Segment) -> bool:
        """Pin the unit of a ``due`` segment; True if it is pinned now (else it is staged)."""
        if not seg.due:
            return seg.pinned
        seg.due = False
        seg.pinned = self.cache._pin_unit(self.owner_key, seg.unit)
        return seg.pinned

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.cache._release(self.owner_key, self.segments)


class PinCache:
    """Registrations of owners' units (see the module docstring); one per process: ``cache``."""

    def __init__(self, max_pinned_bytes: int | None = None):
        self.max_pinned_bytes = _default_max_pinned_bytes() if max_pinned_bytes is None else int(max_pinned_bytes)
        self.min_bytes = 0  # copies smaller than this do not take part; 0: off
        self._pin: Callable[[int, int], bool] | None = None
        self._unpin: Callable[[int], None] | None = None
        self._lock = threading.Lock()
        # (owner address, owner bytes) -> entry, least recent first; an entry with a pinned unit
        # holds a weak reference to its owner and leaves with it.
        self._owners: OrderedDict[tuple[int, int], _Owner] = OrderedDict()
        self._lru: OrderedDict[tuple[tuple[int, int], int], _Unit] = OrderedDict()  # pinned units, least recent first
        # Owners that died (their units unpinned already), for the bookkeeping under the lock.
        self._dead: deque[tuple[tuple[int, int], _Owner]] = deque()
        self.pinned_bytes = 0
        self.pins = 0  # units pinned so far (diagnostics, tests)
        self.unpins = 0

    @contextlib.contextmanager
    def _locked(self):
        with self._lock:
            while self._dead:  # what owners that died left behind
                key, entry = self._dead.popleft()
                if self._owners.get(key) is entry:
                    del self._owners[key]
                for k, unit in entry.units.items():
                    if self._lru.pop((key, k), None) is not None:
                        self.pinned_bytes -= unit.nbytes
            yield

    # -- setup ------------------------------------------------------------------------------
    def configure(self, pin: Callable[[int, int], bool] | None, unpin: Callable[[int], None] | None,
                  min_bytes: int) -> None:
        """Take part from ``min_bytes`` (0: off, and everything pinned is unpinned), pinning with
        ``pin(address, nbytes) -> pinned?`` and unpinning with ``unpin(address)``."""
        if min_bytes <= 0 or pin is None:
            self.release()
        with self._locked():
            self.min_bytes = int(min_bytes) if pin is not None else 0
            self._pin = pin
            self._unpin = unpin if unpin is not None else self._unpin

    def forget(self) -> None:
        """In a forked child: the parent's registrations are not this process's."""
        self._lock = threading.Lock()
        self._owners.clear()
        self._lru.clear()
        self._dead.clear()
        self.pinned_bytes = 0

    # -- a copy ------------------------------------------------------------------------------
    def hold(self, a: np.ndarray, count: bool = True) -> Hold | None:
        """The segments of a copy of the C-contiguous array ``a``, holding its pinned units, or
        None when no byte of it is pinned or due now (then the copy goes the engine's way; its
        units were counted as touched).

        Copies below ``min_bytes``, and any with ``count`` False, touch nothing: they get
        segments only where they overlap pinned units. The driver refuses a DMA that starts in
        one registration and runs past it (cudaErrorInvalidValue), so such a copy must be cut at
        unit boundaries even where the engine would have handed it to the driver whole."""
        nbytes = a.nbytes
        count = count and bool(self.min_bytes) and nbytes >= self.min_bytes
        if not count and not self._lru:
            return None  # nothing pinned anywhere: the common case of small copies costs this
        owner = owner_of(a)
        if owner is None:
            return None
        start = array_address(a)
        key = (array_address(owner), owner.nbytes)
        stale: list[_Unit] = []
        with self._locked():
            if self._pin is None and not self._lru:
                return None
            entry = self._owners.get(key)
            if entry is not None and entry.ref is not None and entry.ref() is not owner:
                stale = self._drop_owner_locked(key)  # another array at the same memory: cannot be, but safe
                entry = None
            if entry is None:
                if not count:
                    return None
                entry = self._owners[key] = _Owner(*key)
                self._forget_counted_locked()
            else:
                self._owners.move_to_end(key)
            segments = self._segments_locked(entry, key, start, nbytes, count)
            if any(s.due for s in segments) and entry.ref is None:
                entry.ref = weakref.ref(owner, self._callback(key))
        self._unpin_units(stale)
        if not any(s.pinned or s.due for s in segments):
            self._release(key, segments)
            return None
        return Hold(self, key, segments)

    def _forget_counted_locked(self) -> None:
        """Beyond MAX_COUNTED owners, forget the least recent of those with nothing pinned."""
        extra = len(self._owners) - MAX_COUNTED
        if extra <= 0:
            return
        gone = []
        for key, entry in self._owners.items():  # least recent first
            if entry.ref is None:
                gone.append(key)
                if len(gone) == extra:
                    break
        for key in gone:
            del self._owners[key]

    def _segments_locked(self, entry: _Owner, key: tuple[int, int], start: int, nbytes: int,
                         count: bool = True) -> list[Segment]:
        lo = -(-entry.address // PAGE) * PAGE  # the owner's page-aligned part
        hi = (entry.address + entry.nbytes) // PAGE * PAGE
        segments: list[Segment] = []
        pos, end = start, start + nbytes
        while pos < end:
            if pos < lo or pos >= hi:
                stop = min(end, lo) if pos < lo else end
                segments.append(Segment(pos - start, stop - pos, None))
                pos = stop
                continue
            k = pos // UNIT_BYTES
            u_lo, u_hi = max(lo, k * UNIT_BYTES), min(hi, (k + 1) * UNIT_BYTES)
            stop = min(end, u_hi)
            unit = entry.units.get(k)
            if unit is None and not count:
                segments.append(Segment(pos - start, stop - pos, None))
                pos = stop
                continue
            if unit is None:
                unit = entry.units[k] = _Unit(u_lo, u_hi - u_lo)
            if count:
                unit.touched += 1
            seg = Segment(pos - start, stop - pos, unit)
            if unit.state == "pinned":
                seg.pinned = True
                unit.holds += 1
                self._lru.move_to_end((key, k))
            elif count and unit.state == "seen" and unit.touched >= PIN_AFTER:
                unit.state = "pinning"  # claimed: another copy stages it meanwhile
                seg.due = True
            segments.append(seg)
            pos = stop
        return segments

    def _pin_unit(self, key: tuple[int, int], unit: _Unit | None) -> bool:
        assert unit is not None
        evict: list[_Unit] = []
        with self._locked():
            pin = self._pin
            if pin is None or unit.nbytes > self.max_pinned_bytes:
                unit.state = "seen" if pin is None else "refused"
                return False
            for lru_key, other in list(self._lru.items()):
                if self.pinned_bytes + unit.nbytes <= self.max_pinned_bytes:
                    break
                if other.holds == 0 and other.state == "pinned":
                    del self._lru[lru_key]
                    other.state, other.touched = "seen", 0
                    self.pinned_bytes -= other.nbytes
                    evict.append(other)
            room = self.pinned_bytes + unit.nbytes <= self.max_pinned_bytes
            if room:
                self.pinned_bytes += unit.nbytes  # claimed before pinning (outside the lock)
        self._unpin_units(evict)
        if not room:
            with self._locked():
                unit.state, unit.touched = "seen", 0
            return False
        ok = False
        try:
            ok = bool(pin(unit.start, unit.nbytes))  # ~31 GB/s on the H200: outside the lock
        finally:
            with self._locked():
                entry = self._owners.get(key)
                alive = entry is not None and entry.units.get(unit.start // UNIT_BYTES) is unit
                if ok and alive:
                    unit.state, unit.holds = "pinned", unit.holds + 1
                    self._lru[(key, unit.start // UNIT_BYTES)] = unit
                    self.pins += 1
                else:
                    self.pinned_bytes -= unit.nbytes
                    unit.state = "refused" if not ok else "seen"
        if ok and not alive:  # the owner went away while we pinned (cannot happen while a copy holds it)
            self._unpin_units([unit])
            return False
        return ok

    def _release(self, key: tuple[int, int], segments: list[Segment]) -> None:
        with self._locked():
            for seg in segments:
                if seg.pinned and seg.unit is not None:
                    seg.unit.holds -= 1
                elif seg.due and seg.unit is not None and seg.unit.state == "pinning":
                    seg.unit.state = "seen"  # claimed but never pinned (the copy failed first)

    # -- ends --------------------------------------------------------------------------------
    def _callback(self, key: tuple[int, int]) -> Callable[[weakref.ref], None]:
        def owner_died(ref: weakref.ref) -> None:
            # Runs in the owner's deallocation, before NumPy frees its memory, on whatever thread
            # dropped it, maybe inside this cache's own locked code (a garbage collection that
            # started there): so it takes no lock. No copy can be using the units (a copy holds
            # the owner), so they are unpinned here; the bookkeeping waits for the next lock.
            try:
                entry = self._owners.get(key)
                if entry is None or entry.ref is not ref:
                    return
                units = [u for u in list(entry.units.values()) if u.state == "pinned"]
                for unit in units:
                    unit.state = "gone"
                self._dead.append((key, entry))
                self._unpin_units(units)
            except Exception:  # noqa: BLE001 - interpreter exit: the process takes the pins along
                pass

        return owner_died

    def _drop_owner_locked(self, key: tuple[int, int]) -> list[_Unit]:
        entry = self._owners.pop(key, None)
        if entry is None:
            return []
        units = []
        for k, unit in entry.units.items():
            if unit.state == "pinned":
                self._lru.pop((key, k), None)
                self.pinned_bytes -= unit.nbytes
                units.append(unit)
            unit.state = "gone"
        return units

    def _unpin_units(self, units: list[_Unit]) -> None:
        unpin = self._unpin
        for unit in units:
            self.unpins += 1
            if unpin is not None:
                unpin(unit.start)

    def release(self) -> None:
        """Unpin every unit no copy is using now (and forget what was touched)."""
        with self._locked():
            units: list[_Unit] = []
            for (key, k), unit in list(self._lru.items()):
                if unit.holds == 0 and unit.state == "pinned":
                    del self._lru[(key, k)]
                    self.pinned_bytes -= unit.nbytes
                    unit.state, unit.touched = "seen", 0
                    units.append(unit)
        self._unpin_units(units)

    def covers(self, a: np.ndarray) -> bool:
        """Whether every unit of the contiguous ``a``'s page-aligned part is pinned now (no lock:
        a hint for a decision, read as the units are at this moment)."""
        if not self._lru:
            return False
        owner = owner_of(a)
        if owner is None:
            return False
        entry = self._owners.get((array_address(owner), owner.nbytes))
        if entry is None:
            return False
        start = array_address(a)
        lo, hi = -(-start // PAGE) * PAGE, (start + a.nbytes) // PAGE * PAGE
        if hi <= lo:
            return False
        for k in range(lo // UNIT_BYTES, (hi - 1) // UNIT_BYTES + 1):
            unit = entry.units.get(k)
            if unit is None or unit.state != "pinned":
                return False
        return True

    def is_pinned(self, address: int, nbytes: int) -> bool:
        """Whether [address, address + nbytes) lies in pinned units (diagnostics, tests)."""
        with self._locked():
            units = sorted((u.start, u.start + u.nbytes) for u in self._lru.values())
        pos, end = address, address + nbytes
        for lo, hi in units:
            if lo <= pos < hi:
                pos = hi
                if pos >= end:
                    return True
        return pos >= end

    def info(self) -> dict[str, int]:
        with self._locked():
            return {"owners": len(self._owners), "pinned_units": len(self._lru), "pinned_bytes": self.pinned_bytes,
                    "max_pinned_bytes": self.max_pinned_bytes, "pins": self.pins, "unpins": self.unpins,
                    "min_bytes": self.min_bytes}


cache = PinCache()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=cache.forget)
