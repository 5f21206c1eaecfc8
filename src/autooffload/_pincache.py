"""The caller's own large arrays, pinned in place once they are copied again (a pin-down cache).

Why: CUDA can only DMA from page-locked memory, so the copy engine stages a NumPy array through
pinned buffers: every byte crosses the host's memory bus once more, copied by CPU threads. On the
H200 machine that host copy, not the link, is the limit: 16 threads copy ~35-45 GB/s where the
link does 55 GB/s each way and ~95 GB/s both ways at once, and two host copies at once take as
long as one after the other (benchmarks/results/h200/transfer.NOTES.md, "copies both ways"). So
a streamed call, whose copies in and out should overlap, cost about their sum: 2.0-3.0x its
slowest stage (h200-unpinned/streaming.txt). Memory that is already page-locked needs no
staging: one DMA, no CPU copy, both directions at once at the link's rate (h200-session7/streaming.txt:
the same calls at 1.2-1.5x their slowest stage).

Pinning the caller's memory costs ~31 GB/s of warm pages to pin and ~53 GB/s to unpin on the
H200 machine (about one staged copy), so pinning for one copy and unpinning after it never
wins there (``_transfer._register_copy``, off by default). Pinning once and keeping it pinned
while the array lives wins from the next copy on. That is the registration cache of MPI
libraries and UCX ("leave pinned", "rcache"), here for NumPy arrays:

* Only arrays whose memory belongs to a NumPy array that owns it take part (the *owner*: the end
  of the ``base`` chain, through memoryviews and ``as_strided``'s holder too). NumPy frees that
  memory only in the owner's deallocation, after its weak references are called back. Memory of
  other origins (``np.frombuffer``, memory maps, results of ``_hostmem``, which pins its own)
  stays on the engine's other paths.
* The owner's whole buffer is pinned as one registration, exactly ``[data, data + nbytes)``.
  The driver refuses a DMA that starts in a registration and runs past its end
  (cudaErrorInvalidValue, seen on the H200 with 64 MiB pieces); a copy of any part of one
  owner, by any view, lies inside its one registration, so no copy can.
* An owner is pinned once copies of at least ``COUNT_MIN_BYTES`` have moved ``pin_after``
  times its bytes (``PIN_AFTER``, 2, unless the tuning's ``pin_after_copies`` says later; never
  fewer than 2): an array copied once is never pinned, a loop's second whole copy pins by
  default (at ~31 GB/s, about a staged copy's time, once), a streamed call's chunks count by
  their bytes (its second pass pins), and sparse small copies pin only once they have moved
  that much. Where pinning costs several copies' saving, calibration moves ``pin_after`` later
  (rent or buy: ``_copytune._pin_reuse_choice``), so that an array copied only a few times does
  not pay for pinning it never uses.
  Touches are counted per owner object, with a weak reference taken at its first counted copy.
* An owner stays pinned until it dies (unpinned in its weak-reference callback, before NumPy
  frees the memory), until the bound needs room (the least recently used owners no copy is
  using are unpinned first), or ``release()``. The memory cannot move meanwhile: NumPy refuses to
  ``resize`` in place an array that has a weak reference, which the cache holds from an owner's
  first counted copy. At most ``max_pinned_bytes`` are pinned: a quarter of the memory this
  process may use (RAM, or a container's limit; pinned pages cannot be swapped out), per process.
* An owner the driver refuses to pin (pinned already by someone else, locked-memory limits) is
  not tried again; its copies are staged as before.

Every copy of a pinned owner holds it (``Hold``), so it is never unpinned under a DMA, and waits
for its DMA before returning. A copy of an owner another thread is pinning or unpinning is staged
(``IN_TRANSITION``). A copy that found its owner unpinned goes the engine's way; should another
thread begin to pin or unpin that owner meanwhile (``generation`` moves), the driver's direct
copy from it may be asynchronous, so the engine then waits for it too (``_transfer._h2d_direct``).
Left open: such an unpin may overlap that copy's DMA by the microseconds between the driver's
call and the wait (the pages stay resident; the owner is alive). Imports nothing of
CuPy: the engine hands in its pin and unpin functions (``configure``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._address import array_address
from ._cores import usable_memory

PIN_AFTER = 2.0
# ``hold`` of an owner being pinned or unpinned by another thread: its memory may be registered
# now and not in a moment (or the reverse), so the copy must not be the driver's own (whose
# asynchrony depends on that): the engine stages it through its buffers.
IN_TRANSITION = object()
COUNT_MIN_BYTES = 1024 * 1024  # smaller copies are too cheap to count (and to pay for the lookup)


def _default_max_pinned_bytes() -> int:
    return usable_memory() // 4  # the machine's RAM, or the container's limit where lower


def chain_end(a: np.ndarray) -> object:
    """The end of ``a``'s base chain, followed through memoryviews and holders such as
    ``as_strided``'s: an array with no base, or the object that holds the memory (a buffer, a
    result lease: _hostmem.py); None where the chain is longer than 64."""
    obj: object = a
    for _ in range(64):
        if isinstance(obj, np.ndarray):
            if obj.base is None:
                return obj
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            nxt = getattr(obj, "base", None)  # e.g. numpy.lib.stride_tricks.DummyArray
            if nxt is None or nxt is obj:
                return obj
            obj = nxt
    return None


def owner_of(a: np.ndarray) -> np.ndarray | None:
    """The NumPy array that owns ``a``'s memory (``a`` itself, or the end of its base chain), or
    None where that memory is not a NumPy array's own (a buffer, a memory map, a result lease)."""
    end = chain_end(a)
    return end if isinstance(end, np.ndarray) and end.flags.owndata else None


def never_pinned(a: np.ndarray) -> bool:
    """Whether ``a``'s memory is a NumPy array's own below ``COUNT_MIN_BYTES``: an owner this cache
    never pins (it counts only copies of at least that size, and a copy moves no more than its
    owner holds). A kept result's memory is a lease's (_hostmem.py), never such an owner's."""
    owner = owner_of(a)
    return owner is not None and owner.nbytes < COUNT_MIN_BYTES


@dataclass(eq=False)
class _Owner:
    key: int  # id of the owner (its entry leaves with it)
    address: int
    nbytes: int
    ref: weakref.ref
    touched: int = 0  # bytes moved by counted copies
    # "seen", "pinning" (claimed by one copy), "pinned", "unpinning" (claimed for unpinning),
    # "refused", "gone"
    state: str = "seen"
    holds: int = 0  # copies using its registration now


class Hold:
    """One copy's use of a pinned (or due) owner; ``release()`` once the copy's DMA is done."""

    def __init__(self, cache: "PinCache", entry: _Owner, due: bool):
        self.cache = cache
        self.entry = entry
        self.due = due  # this copy claimed the owner: pin it first (``pin``)
        self._released = False

    def pin(self) -> bool:
        """Pin the owner if this copy is due to; True when its memory is pinned now."""
        if self.due:
            self.due = False
            return self.cache._pin_owner(self.entry)
        return True

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.cache._release(self.entry)


class PinCache:
    """Registrations of owners (see the module docstring); one per process: ``cache``."""

    def __init__(self, max_pinned_bytes: int | None = None):
        self.max_pinned_bytes = _default_max_pinned_bytes() if max_pinned_bytes is None else int(max_pinned_bytes)
        self.min_bytes = 0  # owners smaller than this do not take part; 0: off
        self.pin_after = PIN_AFTER  # pinned once counted copies moved this many times its bytes
        self._pin: Callable[[int, int], bool] | None = None
        self._unpin: Callable[[int], None] | None = None
        self._lock = threading.Lock()
        self._owners: dict[int, _Owner] = {}  # id(owner) -> entry, while the owner lives
        # Pinned owners. Whoever pops an owner from ``_pinned`` unpins it (a dict pop is atomic):
        # eviction or release under the lock, or an owner's lock-free callback. ``_pinned`` is
        # never iterated (the callback may change it in a garbage collection anywhere);
        # ``_lru``, the same owners least recently used first, changes only under the lock.
        self._pinned: dict[int, _Owner] = {}
        self._lru: OrderedDict[int, _Owner] = OrderedDict()
        self._dead: deque[tuple[int, _Owner, int]] = deque()  # (key, entry, bytes it unpinned)
        self.pinned_bytes = 0
        self.active = 0  # owners pinned, being pinned or being unpinned
        # Bumped whenever an owner is claimed for pinning, pinned or claimed for unpinning: a
        # direct copy that saw it change while it was issued waits (it may be asynchronous).
        self.generation = 0
        self.pins = 0  # owners pinned so far (diagnostics, tests)
        self.unpins = 0

    def _bury_dead(self) -> None:
        """First thing under the lock: what owners that died left behind (their callback unpinned
        them). Each locked region is ``with self._lock:`` then this: contextlib's generator form
        of the two made a first count of a new array 3.9-6.3 us on the 2-core VM against 2.7-3.6
        (benchmarks/results/cpu-vm/pincache-first-count.session12.txt), and every copy of 1 MiB
        or more takes the lock; a context manager written in Python instead could be left
        holding the lock by a Ctrl-C between its acquire and its try, and after a fork in a
        locked region would release the child's new lock (found in review)."""
        while self._dead:
            key, entry, unpinned = self._dead.popleft()
            if self._owners.get(key) is entry:
                del self._owners[key]
            if self._lru.get(key) is entry:
                del self._lru[key]
            if unpinned:
                self.pinned_bytes -= unpinned
                self.active -= 1

    # -- setup ------------------------------------------------------------------------------
    def configure(self, pin: Callable[[int, int], bool] | None, unpin: Callable[[int], None] | None,
                  min_bytes: int, pin_after: float = PIN_AFTER) -> None:
        """Take part from owners of ``min_bytes`` (0: off, and everything not in use is unpinned;
        what is in use is unpinned when its copy ends), pinning with ``pin(address, nbytes) ->
        pinned?`` once copies moved ``pin_after`` (at least 2) times an owner's bytes, and
        unpinning with ``unpin(address)``."""
        with self._lock:
            self._bury_dead()
            self.min_bytes = int(min_bytes) if pin is not None and min_bytes > 0 else 0
            self.pin_after = max(PIN_AFTER, float(pin_after))
            self._pin = pin
            self._unpin = unpin if unpin is not None else self._unpin
        if not self.min_bytes:
            self.release()

    def forget(self) -> None:
        """In a forked child: the parent's registrations are not this process's."""
        self._lock = threading.Lock()
        self._owners.clear()
        self._pinned.clear()
        self._lru.clear()
        self._dead.clear()
        self.pinned_bytes = 0
        self.active = 0

    # -- a copy ------------------------------------------------------------------------------
    def hold(self, a: np.ndarray) -> Hold | object | None:
        """A copy of the contiguous array ``a``: a hold on its owner when the owner is pinned, or
        due to be pinned by this copy; ``IN_TRANSITION`` while another thread pins or unpins it
        (the copy is staged); else None (the copy goes the engine's way, counted)."""
        nbytes = a.nbytes
        count = bool(self.min_bytes) and nbytes >= COUNT_MIN_BYTES
        if not count and not self.active:
            return None  # a small copy, nothing pinned or in transition: the common case costs this
        owner = owner_of(a)
        if owner is None or owner.nbytes < max(self.min_bytes, 1):
            return None
        key = id(owner)
        with self._lock:
            self._bury_dead()
            entry = self._owners.get(key)
            if entry is not None and entry.ref() is not owner:
                entry = None  # a dead owner's id, reused before its callback was buried: cannot be
            if entry is None:
                if not count or self._pin is None:
                    return None
                entry = self._owners[key] = _Owner(key, array_address(owner), owner.nbytes,
                                                   weakref.ref(owner, self._callback(key)))
            if entry.state == "pinned":
                entry.holds += 1
                if self._lru.get(key) is entry:
                    self._lru.move_to_end(key)
                return Hold(self, entry, due=False)
            if entry.state in ("pinning", "unpinning"):
                return IN_TRANSITION
            if not count or self._pin is None:
                return None
            entry.touched += nbytes
            if entry.state == "seen" and entry.touched >= self.pin_after * entry.nbytes:
                entry.state = "pinning"  # claimed: other copies stage meanwhile
                self.generation += 1
                entry.holds += 1
                self.active += 1
                return Hold(self, entry, due=True)
        return None

    def _pin_owner(self, entry: _Owner) -> bool:
        evict: list[tuple[_Owner, object]] = []  # (owner's entry, the owner: alive until unpinned)
        with self._lock:
            self._bury_dead()
            pin = self._pin
            room = self.max_pinned_bytes - self.pinned_bytes
            if pin is not None and entry.nbytes <= self.max_pinned_bytes and room < entry.nbytes:
                candidates = [(k, o) for k, o in self._lru.items() if o.holds == 0 and o.state == "pinned"]
                if room + sum(o.nbytes for _, o in candidates) >= entry.nbytes:  # else evict nothing
                    for k, o in candidates:
                        if room >= entry.nbytes:
                            break
                        alive = o.ref()  # held until it is unpinned: it cannot be freed before
                        if alive is not None and self._pinned.pop(k, None) is o:  # claimed: not its callback's
                            self.generation += 1
                            del self._lru[k]
                            o.state = "unpinning"
                            self.pinned_bytes -= o.nbytes
                            room += o.nbytes
                            evict.append((o, alive))
                        del alive
            ok_to_try = pin is not None and room >= entry.nbytes
            if ok_to_try:
                self.pinned_bytes += entry.nbytes  # claimed before pinning (outside the lock)
            else:
                entry.state, entry.touched = ("refused" if pin is not None and entry.nbytes > self.max_pinned_bytes
                                              else "seen"), 0
                self.active -= 1
        try:
            self._unpin_all(evict)
        except BaseException:  # Ctrl-C while unpinning what made room: give the claimed room back
            if ok_to_try:
                with self._lock:
                    self._bury_dead()
                    self.pinned_bytes -= entry.nbytes
                    self.active -= 1
                    entry.state = "seen"
            raise
        finally:
            evict.clear()  # the owners may go now
        if not ok_to_try:
            return False
        assert pin is not None
        ok = interrupted = False
        try:
            interrupted = True
            ok = bool(pin(entry.address, entry.nbytes))  # ~31 GB/s on the H200: outside the lock
            interrupted = False
        finally:
            if interrupted and self._unpin is not None:
                # Ctrl-C (or any exception) right after the registration was made: undo it.
                try:
                    self._unpin(entry.address)
                except BaseException:  # noqa: BLE001 - nothing was registered
                    pass
            with self._lock:
                self._bury_dead()
                if ok and entry.state == "pinning":
                    self.generation += 1
                    entry.state = "pinned"
                    self._lru[entry.key] = entry
                    self._pinned[entry.key] = entry
                    self.pins += 1
                else:
                    self.pinned_bytes -= entry.nbytes
                    self.active -= 1
                    if entry.state == "pinning":
                        entry.state = "refused"
        return ok

    def _release(self, entry: _Owner) -> None:
        unpin_now = False
        with self._lock:
            self._bury_dead()
            entry.holds -= 1
            if entry.state == "pinning" and entry.holds == 0:  # claimed but never pinned (the copy failed first)
                entry.state = "seen"
                self.active -= 1
            if not self.min_bytes and entry.holds == 0 and entry.state == "pinned":
                if self._pinned.pop(entry.key, None) is entry:  # turned off while in use: unpinned now
                    self.generation += 1
                    del self._lru[entry.key]
                    entry.state = "unpinning"
                    self.pinned_bytes -= entry.nbytes
                    unpin_now = True
        if unpin_now:
            self._unpin_all([entry])

    # -- ends --------------------------------------------------------------------------------
    def _callback(self, key: int) -> Callable[[weakref.ref], None]:
        def owner_died(ref: weakref.ref) -> None:
            # Runs in the owner's deallocation, before NumPy frees its memory, on whatever thread
            # dropped it, maybe inside this cache's own locked code (a garbage collection that
            # started there): so it takes no lock. No copy can be using the registration (a copy
            # holds the owner); the bookkeeping waits for the next lock.
            try:
                entry = self._owners.get(key)
                if entry is None or entry.ref is not ref:
                    return
                entry.state = "gone"
                mine = self._pinned.pop(key, None) is entry  # atomic: eviction cannot unpin it too
                if mine:
                    self.generation += 1
                try:
                    if mine and self._unpin is not None:
                        self.unpins += 1
                        self._unpin(entry.address)
                finally:
                    # After the unpin (also when Ctrl-C cut it): until the bookkeeping, ``active``
                    # stays > 0 and direct copies wait.
                    self._dead.append((key, entry, entry.nbytes if mine else 0))
            except Exception:  # noqa: BLE001 - interpreter exit: the process takes the pins along
                pass

        return owner_died

    def _unpin_all(self, entries: list) -> None:
        """Unpin owners claimed from ``_pinned`` (entries, or (entry, owner) pairs that keep the
        owners alive meanwhile); ``active`` drops only once they are unpinned (until then a direct
        copy from their memory may be asynchronous: it must wait). An interrupt does not stop it
        halfway: no owner may stay pinned untracked; it is raised once all are done."""
        if not entries:
            return
        unpin = self._unpin
        interrupt: BaseException | None = None
        for item in entries:
            entry = item[0] if isinstance(item, tuple) else item
            try:
                if unpin is not None:
                    unpin(entry.address)
            except BaseException as exc:  # noqa: BLE001 - finish the others first
                interrupt = interrupt or exc
        with self._lock:
            self._bury_dead()
            self.unpins += len(entries)
            self.active -= len(entries)
            for item in entries:
                entry = item[0] if isinstance(item, tuple) else item
                if entry.state == "unpinning":
                    entry.state, entry.touched = "seen", 0  # counts afresh from here
        if interrupt is not None:
            raise interrupt

    def release(self) -> None:
        """Unpin every owner no copy is using now; they start counting again."""
        evict: list[tuple[_Owner, object]] = []  # the owners kept alive until unpinned
        with self._lock:
            self._bury_dead()
            for key, entry in list(self._lru.items()):
                alive = entry.ref()
                if alive is not None and entry.holds == 0 and self._pinned.pop(key, None) is entry:
                    self.generation += 1
                    del self._lru[key]
                    entry.state = "unpinning"
                    self.pinned_bytes -= entry.nbytes
                    evict.append((entry, alive))
                del alive
        try:
            self._unpin_all(evict)
        finally:
            evict.clear()

    # -- questions ---------------------------------------------------------------------------
    def _state(self, a: np.ndarray) -> str | None:
        """The state of ``a``'s owner's entry, None where it has none (no lock: as things are at
        this moment; a pin or unpin beginning after it moves ``generation``)."""
        owner = owner_of(a)
        entry = self._owners.get(id(owner)) if owner is not None else None
        return entry.state if entry is not None and entry.ref() is owner else None

    def registered(self, a: np.ndarray) -> bool:
        """Whether ``a``'s memory is pinned by the cache now, or about to be or stop being."""
        return bool(self.active) and self._state(a) in ("pinned", "pinning", "unpinning")

    def covers(self, a: np.ndarray) -> bool:
        """Whether ``a``'s memory is pinned now (a hint for a decision)."""
        return bool(self._pinned) and self._state(a) == "pinned"

    def is_pinned(self, address: int, nbytes: int) -> bool:
        """Whether [address, address + nbytes) lies in one pinned owner (diagnostics, tests)."""
        with self._lock:
            self._bury_dead()
            return any(e.address <= address and address + nbytes <= e.address + e.nbytes
                       for e in self._lru.values() if e.state == "pinned")

    def info(self) -> dict[str, int]:
        with self._lock:
            self._bury_dead()
            return {"owners": len(self._owners), "pinned_owners": len(self._lru), "pinned_bytes": self.pinned_bytes,
                    "max_pinned_bytes": self.max_pinned_bytes, "pins": self.pins, "unpins": self.unpins,
                    "active": self.active, "min_bytes": self.min_bytes}


cache = PinCache()


def lock_free_soon(lock: threading.Lock, timeout_s: float = 0.5) -> bool:
    """Whether ``lock`` could be taken within ``timeout_s`` (taken and let go at once)."""
    if not lock.acquire(timeout=timeout_s):
        return False
    lock.release()
    return True


def _before_fork() -> None:
    """Unpin every owner no copy is using before a fork, so that no page of the caller's
    arrays is pinned while the child shares it copy-on-write (on Linux before 5.9 the parent's
    next write to such a page moved the parent to a new page and left the pinned one to the
    child, so later DMAs of that array read stale data; see _hostmem._before_fork). The owners
    count again from zero and are pinned again at their next copies. An owner a copy in another
    thread is using stays pinned. Skipped where the lock stays taken (a fork from a signal
    handler or a finalizer while this very thread holds it would wait on itself)."""
    try:
        if not lock_free_soon(cache._lock):
            return
        cache.release()
    except Exception:  # noqa: BLE001 - a fork must not fail for this
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=cache.forget)
