"""The pin-down cache of the caller's arrays (_pincache.py), with stand-in pin/unpin functions.

The engine's use of it (bit-exact copies through pinned units, failures mid-copy) is tested on
the fake CuPy in test_transfer.py; on a GPU in test_transfer_gpu.py."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from autooffload import _pincache
from autooffload._pincache import PAGE, PinCache, owner_of

UNIT = 16 * PAGE  # small units, so that small arrays span several


class Pins:
    """Records what is pinned; refuses overlapping ranges as cudaHostRegister does."""

    def __init__(self, refuse: bool = False):
        self.pinned: dict[int, int] = {}
        self.calls = 0
        self.refuse = refuse
        self.lock = threading.Lock()

    def pin(self, address: int, nbytes: int) -> bool:
        with self.lock:
            self.calls += 1
            if self.refuse:
                return False
            for p, n in self.pinned.items():
                assert not (p < address + nbytes and address < p + n), "overlapping registrations"
            assert address % PAGE == 0 and nbytes % PAGE == 0, "units are whole pages"
            self.pinned[address] = nbytes
            return True

    def unpin(self, address: int) -> None:
        with self.lock:
            del self.pinned[address]


@pytest.fixture
def cache(monkeypatch):
    monkeypatch.setattr(_pincache, "UNIT_BYTES", UNIT)
    pins = Pins()
    c = PinCache(max_pinned_bytes=1 << 40)
    c.configure(pins.pin, pins.unpin, min_bytes=1)
    c.pins_ = pins
    yield c
    c.release()


def copy(cache: PinCache, a: np.ndarray) -> list:
    """What the engine does for one copy: pin what is due, then let go. Returns the segments."""
    hold = cache.hold(a)
    if hold is None:
        return []
    for seg in hold.segments:
        hold.pin(seg)
    segs = list(hold.segments)
    hold.release()
    return segs


def covered(segs, nbytes: int) -> bool:
    pos = 0
    for s in segs:
        if s.offset != pos or s.nbytes <= 0:
            return False
        pos += s.nbytes
    return pos == nbytes


def test_owner_is_the_array_that_owns_the_memory():
    a = np.ones(1000)
    assert owner_of(a) is a and owner_of(a[10:20]) is a and owner_of(a.reshape(10, 100).T) is a
    assert owner_of(np.frombuffer(bytearray(800), np.float64)) is None  # memory of a bytearray
    assert owner_of(np.asarray(memoryview(bytearray(8)))) is None


def test_an_array_is_pinned_the_second_time_it_is_copied_and_then_copied_pinned(cache):
    a = np.random.default_rng(0).random(20 * UNIT // 8)
    assert copy(cache, a) == [] and not cache.pins_.pinned  # first copy: counted only
    segs = copy(cache, a)  # second: its units are pinned, each once
    assert covered(segs, a.nbytes)
    assert all(s.pinned for s in segs if s.unit is not None)
    assert [s for s in segs if s.unit is None] == [] or all(s.nbytes < PAGE for s in segs if s.unit is None)
    calls = cache.pins_.calls
    assert cache.is_pinned(-(-a.ctypes.data // PAGE) * PAGE, (a.ctypes.data + a.nbytes) // PAGE * PAGE - -(-a.ctypes.data // PAGE) * PAGE)
    segs = copy(cache, a)  # third: all pinned already, nothing pinned anew
    assert cache.pins_.calls == calls and covered(segs, a.nbytes)
    assert cache.info()["pinned_bytes"] == sum(cache.pins_.pinned.values())


def test_units_do_not_depend_on_how_copies_are_cut(cache):
    a = np.ones(12 * UNIT // 8 + 123)
    copy(cache, a)
    copy(cache, a)  # the whole array: pinned
    pinned = dict(cache.pins_.pinned)
    for start in range(0, a.size, 1000):  # a streamed call's chunks: the same units, nothing new
        segs = copy(cache, a[start:start + 1000])
        assert covered(segs, a[start:start + 1000].nbytes)
    assert cache.pins_.pinned == pinned


def test_units_die_with_their_owner_before_its_memory_is_freed(cache):
    a = np.ones(8 * UNIT // 8)
    view = a[100:]
    copy(cache, view)
    copy(cache, view)
    assert cache.pins_.pinned
    del a, view
    gc.collect()
    assert not cache.pins_.pinned and cache.info()["owners"] == 0 and cache.info()["pinned_bytes"] == 0


def test_memory_not_numpys_own_and_small_copies_are_left_alone(cache):
    buf = bytearray(8 * UNIT)
    b = np.frombuffer(buf, np.uint8)
    for _ in range(3):
        assert cache.hold(b) is None
    cache.configure(cache.pins_.pin, cache.pins_.unpin, min_bytes=4 * UNIT)
    small = np.ones(UNIT // 8)
    for _ in range(3):
        assert cache.hold(small) is None
    assert not cache.pins_.pinned


def test_a_refused_unit_is_not_tried_again(monkeypatch):
    monkeypatch.setattr(_pincache, "UNIT_BYTES", UNIT)
    pins = Pins(refuse=True)
    c = PinCache(max_pinned_bytes=1 << 40)
    c.configure(pins.pin, pins.unpin, min_bytes=1)
    a = np.ones(4 * UNIT // 8)
    copy(c, a)
    segs = copy(c, a)
    tried = pins.calls
    assert tried > 0 and not any(s.pinned for s in segs)
    for _ in range(3):
        assert c.hold(a) is None  # nothing pinned, nothing due: the engine's way
    assert pins.calls == tried


def test_the_bound_unpins_least_recently_used_units_but_never_one_in_use(monkeypatch):
    monkeypatch.setattr(_pincache, "UNIT_BYTES", UNIT)
    pins = Pins()
    c = PinCache(max_pinned_bytes=4 * UNIT)
    c.configure(pins.pin, pins.unpin, min_bytes=1)
    a = np.ones(3 * UNIT // 8)
    b = np.ones(3 * UNIT // 8)
    copy(c, a)
    copy(c, a)
    assert c.info()["pinned_bytes"] <= 4 * UNIT and pins.pinned
    held = c.hold(a)  # a copy of `a` in flight holds its units
    assert held is not None
    copy(c, b)
    copy(c, b)  # wants room: only units not held may go
    a_lo = a.ctypes.data
    held_units = {s.unit.start for s in held.segments if s.pinned}
    assert held_units and held_units <= set(pins.pinned), "a unit in use was unpinned"
    assert c.info()["pinned_bytes"] <= 4 * UNIT and sum(pins.pinned.values()) == c.info()["pinned_bytes"]
    held.release()
    copy(c, b)
    copy(c, b)  # now `a`'s least recently used units can make room
    assert sum(pins.pinned.values()) <= 4 * UNIT
    assert any(b.ctypes.data <= p < b.ctypes.data + b.nbytes for p in pins.pinned)
    del a_lo


def test_a_pinned_array_cannot_be_resized_in_place_so_its_memory_never_moves(cache):
    a = np.ones(6 * UNIT // 8)
    copy(cache, a)
    a.resize(6 * UNIT // 8 + 1, refcheck=False)  # counted only: no weak reference yet, resizable
    a.resize(6 * UNIT // 8, refcheck=False)
    copy(cache, a)
    copy(cache, a)
    assert cache.pins_.pinned
    with pytest.raises(ValueError, match="resize"):
        a.resize(12 * UNIT // 8, refcheck=False)  # NumPy refuses: the cache's weak reference
    with pytest.raises(ValueError):
        a.resize(12 * UNIT // 8)


def test_off_unpins_everything_and_takes_no_part(cache):
    a = np.ones(4 * UNIT // 8)
    copy(cache, a)
    copy(cache, a)
    assert cache.pins_.pinned
    cache.configure(cache.pins_.pin, cache.pins_.unpin, min_bytes=0)
    assert not cache.pins_.pinned and cache.info()["pinned_bytes"] == 0
    for _ in range(3):
        assert cache.hold(a) is None


def test_threads_copying_one_array_pin_each_unit_once(cache):
    a = np.ones(40 * UNIT // 8)
    errors = []

    def work(i):
        try:
            for k in range(20):
                lo = (i * 997 + k * 4099) % (a.size - 5000)
                segs = copy(cache, a[lo:lo + 5000 + k * 300])
                assert covered(segs, (5000 + k * 300) * 8) or segs == []
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert cache.info()["pinned_bytes"] == sum(cache.pins_.pinned.values())
    assert cache.info()["pinned_units"] == len(cache.pins_.pinned)


def test_counted_owners_are_bounded_and_pinned_ones_are_kept(cache, monkeypatch):
    monkeypatch.setattr(_pincache, "MAX_COUNTED", 8)
    keep = np.ones(2 * UNIT // 8)
    copy(cache, keep)
    copy(cache, keep)
    arrays = [np.ones(2 * UNIT // 8) for _ in range(30)]
    for x in arrays:
        copy(cache, x)
    assert cache.info()["owners"] <= 8 + 1
    assert copy(cache, keep) and all(s.pinned for s in copy(cache, keep) if s.unit is not None)


def test_an_owner_dying_inside_the_caches_own_locked_code_is_unpinned_at_once(cache):
    """A garbage collection can run the owner's callback on a thread that holds the cache's
    lock: the callback takes no lock (it would deadlock) and still unpins before the free."""
    a = np.ones(4 * UNIT // 8)
    copy(cache, a)
    copy(cache, a)
    assert cache.pins_.pinned
    with cache._lock:
        del a
        gc.collect()
        assert not cache.pins_.pinned
    assert cache.info()["pinned_bytes"] == 0 and cache.info()["owners"] == 0
