"""The pin-down cache of the caller's arrays (_pincache.py), with stand-in pin/unpin functions.

The engine's use of it (bit-exact copies from pinned memory, failures mid-copy, views the cache
cannot see through) is tested on the fake CuPy in test_transfer.py; on a GPU in
test_transfer_gpu.py."""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from autooffload import _pincache
from autooffload._pincache import PinCache, owner_of

MiB = 1024 * 1024


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
            self.pinned[address] = nbytes
            return True

    def unpin(self, address: int) -> None:
        with self.lock:
            del self.pinned[address]  # KeyError: unpinned twice, or never pinned


def make_cache(max_pinned_bytes: int = 1 << 40, refuse: bool = False, min_bytes: int = 2 * MiB) -> PinCache:
    pins = Pins(refuse)
    c = PinCache(max_pinned_bytes=max_pinned_bytes)
    c.configure(pins.pin, pins.unpin, min_bytes=min_bytes)
    c.pins_ = pins
    return c


@pytest.fixture
def cache():
    c = make_cache()
    yield c
    c.release()


def copy(cache: PinCache, a: np.ndarray) -> bool:
    """What the engine does for one copy: pin if due, then let go. True: copied pinned."""
    hold = cache.hold(a)
    if hold is None:
        return False
    try:
        return hold.pin()
    finally:
        hold.release()


def test_the_owner_is_found_through_views_memoryviews_and_as_strided():
    a = np.ones(1000)
    assert owner_of(a) is a and owner_of(a[10:20]) is a and owner_of(a.reshape(10, 100).T) is a
    assert owner_of(np.asarray(memoryview(a[5:]))) is a
    assert owner_of(as_strided(a[3:], shape=(10,), strides=(8,))) is a
    assert owner_of(np.frombuffer(bytearray(800), np.float64)) is None  # memory of a bytearray
    assert owner_of(np.asarray(memoryview(bytearray(8)))) is None


def test_an_array_is_pinned_once_copies_moved_twice_its_bytes_and_then_copied_pinned(cache):
    a = np.random.default_rng(0).random(4 * MiB // 8)
    assert not copy(cache, a) and not cache.pins_.pinned  # first copy: counted only
    generation = cache.generation
    assert copy(cache, a)  # second: pinned, the whole buffer as one registration
    assert cache.generation > generation  # a direct copy issued meanwhile waits (_transfer._h2d_direct)
    assert cache.pins_.pinned == {a.ctypes.data: a.nbytes}
    calls = cache.pins_.calls
    assert copy(cache, a) and copy(cache, a[1000:2000 + 2 * MiB // 8])  # later copies, views too
    assert cache.pins_.calls == calls
    assert cache.covers(a) and cache.covers(a[5:]) and cache.is_pinned(a.ctypes.data + 8, 64)
    assert cache.info()["pinned_bytes"] == a.nbytes and cache.info()["active"] == 1


def test_pin_after_waits_until_the_copies_left_unpinned_have_paid_for_pinning():
    # The tuning's pin_after_copies (calibration's rent-or-buy rule): pinned at that copy.
    c = make_cache()
    c.configure(c.pins_.pin, c.pins_.unpin, min_bytes=2 * MiB, pin_after=4)
    a = np.random.default_rng(1).random(4 * MiB // 8)
    assert [copy(c, a) for _ in range(5)] == [False, False, False, True, True]
    assert c.pins_.pinned == {a.ctypes.data: a.nbytes}
    c.configure(c.pins_.pin, c.pins_.unpin, min_bytes=2 * MiB, pin_after=1)  # never at the first copy
    assert c.pin_after == 2.0
    c.release()


def test_a_streamed_pass_counts_its_bytes_not_its_chunks(cache):
    chunk = 1 * MiB // 8 + 3  # chunks of just over 1 MiB: each counted, eight of them a pass
    a = np.ones(8 * chunk)
    for start in range(0, a.size, chunk):
        assert not copy(cache, a[start:start + chunk])
    assert not cache.pins_.pinned, "one pass never pins"
    pinned_in_second_pass = [copy(cache, a[s:s + chunk]) for s in range(0, a.size, chunk)]
    assert cache.pins_.pinned and pinned_in_second_pass[-1] and not pinned_in_second_pass[0]


def test_arrays_copied_once_are_never_pinned_even_at_a_recycled_address(cache):
    addresses = set()
    for _ in range(20):
        x = np.ones(4 * MiB // 8)  # new each time; the allocator hands the same memory back
        addresses.add(x.ctypes.data)
        copy(cache, x)
        del x
    gc.collect()
    assert cache.pins_.calls == 0 and cache.info()["owners"] == 0
    assert len(addresses) < 20  # the case that matters: addresses were reused


def test_the_registration_dies_with_its_owner_before_its_memory_is_freed(cache):
    a = np.ones(4 * MiB // 8)
    view = a[100:]
    for _ in range(3):  # 2x the owner's bytes moved by the third copy of this view
        copy(cache, view)
    assert cache.pins_.pinned
    del a, view
    gc.collect()
    assert not cache.pins_.pinned and cache.info()["owners"] == 0 and cache.info()["pinned_bytes"] == 0
    assert cache.info()["active"] == 0


def test_memory_not_numpys_own_small_owners_and_small_copies_are_left_alone(cache):
    b = np.frombuffer(bytearray(8 * MiB), np.uint8)
    small_owner = np.ones(MiB // 8)  # below min_bytes (2 MiB)
    big = np.ones(4 * MiB // 8)
    for _ in range(4):
        assert cache.hold(b) is None and cache.hold(small_owner) is None
        assert cache.hold(big[:1000]) is None  # 8 KB copies: not counted
    assert not cache.pins_.pinned and cache.info()["owners"] == 0


def test_never_pinned_is_memory_the_cache_can_never_pin_and_no_kept_result():
    """never_pinned: an array below the counting size that owns its memory, or a view whose base
    chain ends at one; not a large owner's view, not memory some other object holds (a buffer, a
    kept result's lease), not a large array."""
    from autooffload import _hostmem

    never = _pincache.never_pinned
    small = np.arange(300.0)
    assert never(small) and never(small.reshape(3, 100)[1:]) and never(small[::2])
    big = np.arange(_pincache.COUNT_MIN_BYTES // 8 + 1, dtype=np.float64)
    assert not never(big) and not never(big[:10])
    assert not never(np.frombuffer(bytearray(800), dtype=np.float64))
    pool = _hostmem.HostBlocks()
    kept = pool.empty((100,), np.float64)
    assert kept.base is not None and not never(kept) and not never(kept[:10])


def test_small_copies_use_a_pinned_owner(cache):
    a = np.ones(4 * MiB // 8)
    copy(cache, a)
    copy(cache, a)
    hold = cache.hold(a[10:20])  # 80 bytes: not counted, but the owner is pinned: a DMA
    assert hold is not None and hold.pin()
    hold.release()


def test_a_refused_owner_is_not_tried_again():
    c = make_cache(refuse=True)
    a = np.ones(4 * MiB // 8)
    copy(c, a)
    assert not copy(c, a)
    tried = c.pins_.calls
    assert tried == 1 and c.info()["active"] == 0
    for _ in range(3):
        assert not copy(c, a)
    assert c.pins_.calls == tried


def test_the_bound_unpins_least_recently_used_owners_but_never_one_in_use():
    c = make_cache(max_pinned_bytes=9 * MiB)
    a, b, d = (np.ones(4 * MiB // 8) for _ in range(3))
    for x in (a, a, b, b):
        copy(c, x)
    assert set(c.pins_.pinned) == {a.ctypes.data, b.ctypes.data}
    held = c.hold(a)  # a copy of `a` in flight
    assert held is not None and held.pin()
    copy(c, d)
    assert copy(c, d)  # room: b goes (least recently used that no copy holds), a stays
    assert set(c.pins_.pinned) == {a.ctypes.data, d.ctypes.data}
    held.release()
    e = np.ones(8 * MiB // 8)  # needs 8 MiB: only a and d together make room
    copy(c, e)
    assert copy(c, e) and set(c.pins_.pinned) == {e.ctypes.data}
    assert c.info()["pinned_bytes"] == 8 * MiB == sum(c.pins_.pinned.values())
    big = np.ones(16 * MiB // 8)  # larger than the bound: refused, nothing evicted for it
    copy(c, big)
    assert not copy(c, big) and set(c.pins_.pinned) == {e.ctypes.data}


def test_no_eviction_when_it_cannot_make_room():
    c = make_cache(max_pinned_bytes=9 * MiB)
    a = np.ones(4 * MiB // 8)
    copy(c, a)
    copy(c, a)
    held = c.hold(a)
    b = np.ones(6 * MiB // 8)
    copy(c, b)
    assert not copy(c, b)  # 4 held + 6 > 9 and nothing can go: b stays staged, a untouched
    assert set(c.pins_.pinned) == {a.ctypes.data} and c.unpins == 0
    held.release()


def test_a_pinned_array_cannot_be_resized_in_place_so_its_memory_never_moves(cache):
    a = np.ones(4 * MiB // 8)
    a.resize(4 * MiB // 8 + 1, refcheck=False)  # never copied: resizable
    copy(cache, a)
    copy(cache, a)
    assert cache.pins_.pinned
    with pytest.raises(ValueError, match="resize"):
        a.resize(8 * MiB // 8, refcheck=False)  # NumPy refuses: the cache's weak reference


def test_off_unpins_what_no_copy_uses_and_the_rest_when_its_copy_ends(cache):
    a, b = np.ones(4 * MiB // 8), np.ones(4 * MiB // 8)
    for x in (a, a, b, b):
        copy(cache, x)
    held = cache.hold(a)
    cache.configure(cache.pins_.pin, cache.pins_.unpin, min_bytes=0)
    assert set(cache.pins_.pinned) == {a.ctypes.data}
    held.release()
    assert not cache.pins_.pinned and cache.info()["pinned_bytes"] == 0 and cache.info()["active"] == 0
    for _ in range(3):
        assert cache.hold(a) is None


def test_an_owner_dying_inside_the_caches_own_locked_code_is_unpinned_at_once(cache):
    """A garbage collection can run the owner's callback on a thread that holds the cache's
    lock: the callback takes no lock (it would deadlock) and still unpins before the free."""
    a = np.ones(4 * MiB // 8)
    copy(cache, a)
    copy(cache, a)
    assert cache.pins_.pinned
    with cache._lock:
        del a
        gc.collect()
        assert not cache.pins_.pinned
    assert cache.info()["pinned_bytes"] == 0 and cache.info()["owners"] == 0


def test_eviction_and_death_never_both_unpin():
    """Whoever pops the owner from the LRU unpins it: an owner evicted, then dying, is unpinned
    once (the stand-in's unpin raises KeyError on a second call)."""
    c = make_cache(max_pinned_bytes=5 * MiB)
    a, b = np.ones(4 * MiB // 8), np.ones(4 * MiB // 8)
    for x in (a, a, b, b):  # b's pinning evicts a
        copy(c, x)
    del x
    assert set(c.pins_.pinned) == {b.ctypes.data}
    del a
    gc.collect()
    del b
    gc.collect()
    assert not c.pins_.pinned and c.unpins == 2 and c.info()["pinned_bytes"] == 0


def test_threads_copying_one_array_pin_it_once(cache):
    a = np.ones(16 * MiB // 8)
    errors = []

    def work(i):
        try:
            for k in range(20):
                lo = (i * 9973 + k * 40993) % (a.size // 2)
                copy(cache, a[lo:lo + a.size // 2])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert cache.pins_.calls == 1 and cache.pins_.pinned == {a.ctypes.data: a.nbytes}
    assert cache.info()["pinned_bytes"] == a.nbytes and cache.info()["active"] == 1


class _Box:
    pass


@pytest.mark.parametrize("where", ["pin", "release"])
def test_a_collection_inside_the_caches_own_iteration_breaks_nothing(where, monkeypatch):
    """Review finding: an owner in a reference cycle, collected by a garbage collection that
    starts while the cache walks its pinned owners (evicting, releasing): its callback must not
    change what is being walked. Every collection point over the first 120 allocations is tried."""
    monkeypatch.setattr(_pincache, "COUNT_MIN_BYTES", 1)
    k = 8192  # bytes per array: small, so that 120 rounds stay quick
    gc.collect()
    for m in range(120):
        gc.disable()
        gc.collect(1)
        c = make_cache(max_pinned_bytes=(40 * k) if where == "pin" else 1 << 40, min_bytes=1)
        keep = [np.ones(k // 8) for _ in range(39)]
        b = _Box()
        b.me = b
        b.arr = np.ones(k // 8)
        for a in [b.arr] + keep:
            copy(c, a)
            copy(c, a)
        new = np.ones(k // 8)
        copy(c, new)
        del b
        gc.set_threshold(gc.get_count()[0] + m)
        gc.enable()
        try:
            copy(c, new) if where == "pin" else c.release()
        finally:
            gc.set_threshold(700, 10, 10)
            gc.enable()
            gc.collect(0)
        assert c.info()["pinned_bytes"] == sum(c.pins_.pinned.values()), m
        del keep, new
        gc.collect(0)


def test_an_interrupt_right_after_pinning_undoes_the_registration():
    """Review finding: Ctrl-C arriving as cudaHostRegister returns (the registration made) must
    not leave it behind, booked as refused."""
    registered = {}

    def pin(address, n):
        registered[address] = n
        raise KeyboardInterrupt

    def unpin(address):
        registered.pop(address, None)

    c = PinCache(1 << 40)
    c.configure(pin, unpin, 1)
    a = np.ones(4 * MiB // 8)
    for _ in range(2):
        hold = c.hold(a)
        if hold is None:
            continue
        try:
            with pytest.raises(KeyboardInterrupt):
                hold.pin()
        finally:
            hold.release()
    assert not registered and c.info()["active"] == 0 and c.info()["pinned_bytes"] == 0


@pytest.mark.parametrize("how", ["release", "death", "eviction"])
def test_while_an_owner_is_being_unpinned_it_counts_as_active(how):
    """Review finding: a direct copy waits while ``active`` > 0 or ``generation`` moved; neither
    may signal "nothing pinned" before the driver's unregister has returned."""
    seen = []
    c = make_cache(max_pinned_bytes=5 * MiB)
    real_unpin = c.pins_.unpin

    def unpin(address):
        seen.append((c.active, c.generation))
        real_unpin(address)

    c._unpin = unpin
    a = np.ones(4 * MiB // 8)
    copy(c, a)
    copy(c, a)
    generation = c.generation
    if how == "release":
        c.release()
    elif how == "death":
        del a
        gc.collect()
    else:
        b = np.ones(4 * MiB // 8)
        copy(c, b)
        copy(c, b)  # needs a's room
    assert seen and all(active > 0 and gen > generation for active, gen in seen), seen
    assert c.info()["active"] == (1 if how == "eviction" else 0)


def test_an_owner_dropped_while_being_evicted_is_freed_only_after_its_unpin():
    """Review finding: eviction keeps the owner it claimed alive until it is unpinned, so
    another thread dropping it meanwhile cannot have NumPy free memory still registered."""
    import weakref

    log = []
    held: dict = {}
    c = make_cache(max_pinned_bytes=4 * MiB)
    real_unpin = c.pins_.unpin

    def unpin(address):
        if "x" in held and address == held["addr"]:
            ref = weakref.ref(held.pop("x"))  # what another thread does now: drops the array
            log.append(ref() is None)  # freed while still registered?
        real_unpin(address)

    c._unpin = unpin
    x = np.ones(4 * MiB // 8)
    held["x"], held["addr"] = x, x.ctypes.data
    copy(c, x)
    copy(c, x)
    del x
    y = np.ones(4 * MiB // 8)
    copy(c, y)
    copy(c, y)  # needs x's room: x is evicted
    assert log == [False]
    assert c.info()["owners"] == 1 and c.pins_.pinned == {y.ctypes.data: y.nbytes}


def test_an_interrupt_while_unpinning_for_room_leaves_nothing_pinned_untracked():
    """Review finding: Ctrl-C in the first of two unpins that make room: both are unpinned, the
    room claimed for the new owner is given back, the books match the driver."""
    registered = {}

    def pin(address, n):
        registered[address] = n
        return True

    def unpin(address):
        registered.pop(address, None)
        raise KeyboardInterrupt  # handled right after the driver call returned

    c = PinCache(max_pinned_bytes=8 * MiB)
    c.configure(pin, None, 1)
    c._unpin = unpin
    a1, a2 = np.ones(4 * MiB // 8), np.ones(4 * MiB // 8)
    for a in (a1, a1, a2, a2):
        copy(c, a)
    b = np.ones(8 * MiB // 8)
    copy(c, b)
    with pytest.raises(KeyboardInterrupt):
        copy(c, b)
    assert not registered and c.info()["pinned_bytes"] == 0 and c.info()["active"] == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_inside_an_owners_callback_still_books_it():
    """Review finding: Ctrl-C as the driver's unregister returns, in an owner's callback: the
    owner is still booked as unpinned (else ``active`` stayed > 0 for good)."""
    c = make_cache()
    real_unpin = c.pins_.unpin

    def unpin(address):
        real_unpin(address)
        raise KeyboardInterrupt

    c._unpin = unpin
    a = np.ones(4 * MiB // 8)
    copy(c, a)
    copy(c, a)
    del a  # the callback runs here (Python reports its interrupt as unraisable)
    gc.collect()
    assert c.info()["active"] == 0 and c.info()["pinned_bytes"] == 0 and c.info()["owners"] == 0


def test_before_a_fork_every_owner_no_copy_uses_is_unpinned_and_pins_again_later(monkeypatch):
    # Linux before 5.9 leaves a page pinned for DMA shared copy-on-write with a forked child:
    # the parent's next write moves the parent to a new page and its later DMAs read the old one.
    from autooffload import _pincache

    c = make_cache()
    monkeypatch.setattr(_pincache, "cache", c)
    a, b = np.ones(3 * MiB // 8), np.ones(3 * MiB // 8)
    for x in (a, a, b, b):
        copy(c, x)
    assert len(c.pins_.pinned) == 2
    held = c.hold(b)  # a copy of b in flight in another thread
    _pincache._before_fork()
    assert list(c.pins_.pinned) == [b.ctypes.data]  # b's copy is using it: it stays
    held.release()
    assert not copy(c, a)  # counted again from zero
    assert copy(c, a) and a.ctypes.data in c.pins_.pinned  # pinned again at its second copy
    c.release()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_real_fork_unpins_in_the_parent_first_and_the_child_keeps_its_kept_blocks(monkeypatch):
    import gc
    import time
    import warnings

    from autooffload import _hostmem, _pincache

    c = make_cache()
    monkeypatch.setattr(_pincache, "cache", c)
    a = np.ones(3 * MiB // 8)
    copy(c, a), copy(c, a)
    assert a.ctypes.data in c.pins_.pinned
    pool, pool_pins = _hostmem.HostBlocks(max_free_bytes=64 * MiB), Pins()
    pool.configure_pinning(pool_pins.pin, pool_pins.unpin, min_bytes=MiB)
    monkeypatch.setattr(_hostmem, "results", pool)
    r = pool.empty((MiB,), np.float64)
    del r
    gc.collect()
    r = pool.empty((MiB,), np.float64)  # handed out again: pinned
    del r
    gc.collect()
    assert len(pool_pins.pinned) == 1 and pool.info()["free_blocks"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads alive
        pid = os.fork()
    if pid == 0:  # the child: its kept block is still there (unpinned by the parent before the fork)
        os._exit(0 if pool.info()["free_blocks"] == 1 and pool.info()["pinned_blocks"] == 0 else 3)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not exit")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert not c.pins_.pinned and not pool_pins.pinned  # both unpinned in the parent
    assert pool.info()["free_blocks"] == 1  # and kept


def test_a_fork_from_a_thread_that_holds_the_lock_does_not_wait_on_itself():
    # Review finding: a fork from a signal handler or a finalizer while this very thread holds
    # the cache's lock: the hook would wait for a lock only this thread can let go.
    import time

    from autooffload import _pincache

    c = make_cache()
    a = np.ones(3 * MiB // 8)
    copy(c, a), copy(c, a)
    real = _pincache.cache
    _pincache.cache = c
    try:
        with c._lock:
            start = time.monotonic()
            _pincache._before_fork()
            assert time.monotonic() - start < 5
        assert a.ctypes.data in c.pins_.pinned  # skipped: left pinned
        _pincache._before_fork()
        assert not c.pins_.pinned
    finally:
        _pincache.cache = real
