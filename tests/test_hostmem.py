"""Kept host memory for large device->host results (src/autooffload/_hostmem.py)."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from autooffload._hostmem import HostBlocks

MiB = 1024 * 1024


def test_result_is_an_ordinary_array_of_the_asked_shape_dtype_and_layout():
    pool = HostBlocks(max_free_bytes=64 * MiB)
    for dtype in (np.float64, np.float32, np.int16, np.uint8, np.bool_, np.complex128):
        for shape, order in [((3, 5, 7), "C"), ((3, 5, 7), "F"), ((11,), "C"), ((0, 4), "C"), ((), "C")]:
            a = pool.empty(shape, dtype, order)
            assert type(a) is np.ndarray and a.shape == shape and a.dtype == dtype
            assert a.flags.writeable and a.flags.aligned
            assert a.flags.c_contiguous if order == "C" else a.flags.f_contiguous
            ref = np.empty(shape, dtype, order)
            if a.size:
                assert a.strides == ref.strides
            values = np.random.default_rng(1).integers(1, 100, shape).astype(dtype)
            a[...] = values
            assert np.array_equal(a, values)


def test_memory_of_a_dropped_result_is_reused_and_kept_alive_by_views():
    pool = HostBlocks(max_free_bytes=64 * MiB)
    a = pool.empty((1 << 20,), np.float64)  # 8 MiB
    address = a.ctypes.data
    view = a[::2]
    del a
    gc.collect()
    assert pool.info()["free_blocks"] == 0  # the view still uses the memory
    b = pool.empty((1 << 20,), np.float64)
    assert b.ctypes.data != address and b.base.fresh
    view[:] = 3.0  # still valid memory, not handed out twice
    assert not np.shares_memory(b, view)
    del view
    gc.collect()
    assert pool.info()["free_blocks"] == 1
    c = pool.empty((1 << 20,), np.float64)
    assert c.ctypes.data == address and pool.info()["reused"] == 1 and not c.base.fresh


def test_a_much_bigger_free_block_is_not_used_for_a_small_request():
    pool = HostBlocks(max_free_bytes=256 * MiB)
    big = pool.empty((100 * MiB,), np.uint8)
    del big
    small = pool.empty((10 * MiB,), np.uint8)
    assert pool.info()["reused"] == 0 and small.nbytes == 10 * MiB
    close = pool.empty((99 * MiB,), np.uint8)  # within the slack: reuses the 100 MiB block
    assert pool.info()["reused"] == 1 and close.nbytes == 99 * MiB


def test_free_memory_is_bounded_and_released():
    pool = HostBlocks(max_free_bytes=20 * MiB)
    arrays = [pool.empty((8 * MiB,), np.uint8) for _ in range(4)]
    del arrays
    gc.collect()
    info = pool.info()
    assert info["free_bytes"] <= 20 * MiB and info["free_blocks"] == 2
    huge = pool.empty((32 * MiB,), np.uint8)
    del huge  # bigger than the bound alone: not kept
    assert pool.info()["free_bytes"] <= 20 * MiB
    pool.release()
    assert pool.info()["free_blocks"] == 0 and pool.info()["free_bytes"] == 0


def test_threads_never_share_a_block():
    pool = HostBlocks(max_free_bytes=256 * MiB)
    errors = []

    def work(k):
        for i in range(30):
            a = pool.empty((MiB // 8,), np.float64)
            a[...] = k * 1000 + i
            if not np.all(a == k * 1000 + i):
                errors.append((k, i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert pool.info()["reused"] > 0


def test_max_free_bytes_zero_keeps_nothing():
    pool = HostBlocks(max_free_bytes=0)
    a = pool.empty((MiB,), np.uint8)
    del a
    assert pool.info()["free_blocks"] == 0


class _Pins:
    """Stand-in for cudaHostRegister/Unregister: records what is pinned."""

    def __init__(self, refuse: bool = False):
        self.pinned: dict[int, int] = {}
        self.calls = 0
        self.refuse = refuse

    def pin(self, address: int, nbytes: int) -> bool:
        self.calls += 1
        if self.refuse:
            return False
        assert address not in self.pinned
        self.pinned[address] = nbytes
        return True

    def unpin(self, address: int) -> None:
        del self.pinned[address]


def test_only_reused_blocks_are_pinned_once_and_copies_can_find_them():
    pool, pins = HostBlocks(max_free_bytes=64 * MiB), _Pins()
    pool.configure_pinning(pins.pin, pins.unpin, min_bytes=4 * MiB)
    first = pool.empty((MiB,), np.float64)  # 8 MiB, new memory: not pinned
    address = first.ctypes.data
    assert not pins.pinned and not pool.is_pinned(address, first.nbytes)
    del first
    gc.collect()
    second = pool.empty((MiB,), np.float64)  # handed out again: pinned now
    assert second.ctypes.data == address and pins.pinned == {address: second.base._block.nbytes}
    assert pool.is_pinned(address, second.nbytes) and pool.is_pinned(address + 8, 64)
    assert not pool.is_pinned(address - 8, 64) and not pool.is_pinned(address, second.base._block.nbytes + 1)
    del second
    gc.collect()
    third = pool.empty((MiB,), np.float64)
    assert third.ctypes.data == address and pins.calls == 1  # pinned once, reused pinned
    assert pool.info()["pinned_blocks"] == 1
    small = pool.empty((MiB // 8,), np.float64)  # 1 MiB: below min_bytes
    del small
    gc.collect()
    small = pool.empty((MiB // 8,), np.float64)
    assert pins.calls == 1
    del third, small
    gc.collect()
    pool.release()  # blocks going back to the OS are unpinned first
    assert not pins.pinned and pool.info()["pinned_bytes"] == 0


def test_a_kept_block_is_pinned_at_the_use_pin_after_names():
    pool, pins = HostBlocks(max_free_bytes=64 * MiB), _Pins()
    pool.configure_pinning(pins.pin, pins.unpin, min_bytes=MiB, pin_after=3)
    pinned = []
    for _ in range(4):  # allocated, handed out again (2nd use), 3rd use: pinned, 4th: still
        r = pool.empty((MiB,), np.float64)
        pinned.append(bool(pins.pinned))
        del r
        gc.collect()
    assert pinned == [False, False, True, True] and pins.calls == 1
    pool.release()
    assert not pins.pinned and not pool._uses  # a block gone back to the OS leaves no count behind


def test_is_pinned_finds_ranges_inside_any_of_many_pinned_blocks_and_nothing_across_or_between():
    pool, pins = HostBlocks(max_free_bytes=256 * MiB), _Pins()
    pool.configure_pinning(pins.pin, pins.unpin, min_bytes=MiB)
    sizes = [2, 4, 6, 2, 8, 4]  # MiB: blocks of several sizes, pinned when handed out again
    held = [pool.empty((s * MiB // 8,), np.float64) for s in sizes]
    del held
    gc.collect()
    held = [pool.empty((s * MiB // 8,), np.float64) for s in sizes]
    blocks = sorted((a.base._block.ctypes.data, a.base._block.nbytes) for a in held)
    assert sorted(pins.pinned.items()) == blocks
    for start, n in blocks:
        assert pool.is_pinned(start, n) and pool.is_pinned(start + n - 8, 8) and pool.is_pinned(start + 4096, 1)
        assert not pool.is_pinned(start, n + 1) and not pool.is_pinned(start - 1, 2)
    for (a, n), (b, _) in zip(blocks, blocks[1:]):
        if a + n < b:
            assert not pool.is_pinned(a + n, 1)  # the gap between two blocks
        assert not pool.is_pinned(a + n - 8, b - a - n + 16)  # from one block into the next
    del held
    gc.collect()
    pool.release()
    assert not pins.pinned and not any(pool.is_pinned(a, 1) for a, _ in blocks)


def test_pinning_is_bounded_refusals_are_harmless_and_dropped_blocks_are_unpinned():
    pool, pins = HostBlocks(max_free_bytes=20 * MiB), _Pins()
    pool.max_pinned_bytes = 10 * MiB
    pool.configure_pinning(pins.pin, pins.unpin, min_bytes=MiB)
    blocks = [pool.empty((8 * MiB,), np.uint8) for _ in range(2)]
    del blocks
    gc.collect()
    again = [pool.empty((8 * MiB,), np.uint8) for _ in range(2)]
    assert len(pins.pinned) == 1 and pool.pinned_bytes <= 10 * MiB  # the second would pass the bound
    del again
    gc.collect()
    assert len(pins.pinned) == 1  # kept, still pinned
    huge = pool.empty((16 * MiB,), np.uint8)
    del huge  # with the two kept 8 MiB blocks this passes the bound: the largest go, unpinned first
    gc.collect()
    assert pool.info()["free_bytes"] <= 20 * MiB
    assert all(pool.is_pinned(a, 1) for a in pins.pinned)
    back = [pool.empty((8 * MiB,), np.uint8) for _ in range(2)]  # the pinned block among them
    pool.max_free_bytes = 0  # nothing is kept now: returned blocks go back to the OS, unpinned
    del back
    gc.collect()
    assert not pins.pinned and pool.pinned_bytes == 0
    refusing = HostBlocks(max_free_bytes=64 * MiB)
    nopins = _Pins(refuse=True)
    refusing.configure_pinning(nopins.pin, nopins.unpin, min_bytes=MiB)
    a = refusing.empty((8 * MiB,), np.uint8)
    del a
    gc.collect()
    b = refusing.empty((8 * MiB,), np.uint8)
    b[...] = 7  # an ordinary result all the same
    assert nopins.calls == 1 and not refusing.is_pinned(b.ctypes.data, b.nbytes) and refusing.pinned_bytes == 0
    refusing.configure_pinning(None, None)
    del b
    gc.collect()
    c = refusing.empty((8 * MiB,), np.uint8)
    assert nopins.calls == 1 and c.nbytes == 8 * MiB  # turned off: no more attempts


def test_turning_pinning_off_unpins_kept_blocks_now_and_blocks_in_use_when_given_back():
    pool, pins = HostBlocks(max_free_bytes=64 * MiB), _Pins()
    pool.configure_pinning(pins.pin, pins.unpin, min_bytes=MiB)
    a, b = pool.empty((8 * MiB,), np.uint8), pool.empty((8 * MiB,), np.uint8)
    del a, b
    gc.collect()
    a, b = pool.empty((8 * MiB,), np.uint8), pool.empty((8 * MiB,), np.uint8)  # both pinned now
    assert len(pins.pinned) == 2
    del a
    gc.collect()
    pool.configure_pinning(None, None)  # off: the kept block is unpinned at once and stays kept
    assert len(pins.pinned) == 1 and pool.info()["free_blocks"] == 1
    del b
    gc.collect()
    assert not pins.pinned and pool.info()["free_blocks"] == 2 and pool.pinned_bytes == 0
    pool.forget_pins()  # a forked child's view: nothing registered
    assert pool.info()["pinned_blocks"] == 0


class _Box:
    pass


def test_a_result_collected_inside_the_pools_locked_code_does_not_deadlock():
    """Review finding: a result in a reference cycle, collected by a garbage collection that
    starts inside the pool's own locked code on the same thread, gives its block back later
    instead of waiting for the lock its thread holds."""
    import gc

    pool = HostBlocks()
    r = pool.empty((1 << 20,), np.float64)
    b = _Box()
    b.me = b
    b.r = r
    del r, b
    done = threading.Event()

    def work():
        gc.disable()
        try:
            with pool._lock:
                gc.collect()  # what an allocation inside the locked region may start
        finally:
            gc.enable()
        done.set()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    assert done.wait(5), "the thread hangs: __del__ waited for the lock its own thread holds"
    assert pool.info()["free_blocks"] == 1  # given back at the next locked call


def test_an_interrupt_right_after_pinning_a_block_undoes_the_registration():
    """Review finding: Ctrl-C arriving as cudaHostRegister returns must not leave the
    registration behind, untracked."""
    registered = {}

    def pin(address, n):
        registered[address] = n
        raise KeyboardInterrupt

    pool = HostBlocks()
    pool.configure_pinning(pin, lambda address: registered.pop(address, None), min_bytes=1)
    first = pool.empty((MiB,), np.float64)
    del first  # kept
    with pytest.raises(KeyboardInterrupt):
        pool.empty((MiB,), np.float64)  # handed out again: pinned, interrupted
    assert not registered and pool.info()["pinned_bytes"] == 0


def test_a_block_counts_as_pinned_until_its_unpin_returned():
    """Review finding: ``pinned_bytes`` drops only once the driver's unregister returned (the
    copy engine reads it, with ``is_pinned``, before it lets a direct copy go unwaited)."""
    seen = []
    pins = _Pins()

    def unpin(address):
        seen.append(pool.pinned_bytes)
        pins.unpin(address)

    pool = HostBlocks()
    pool.configure_pinning(pins.pin, unpin, min_bytes=1)
    first = pool.empty((MiB,), np.float64)
    del first
    second = pool.empty((MiB,), np.float64)  # pinned
    del second
    pool.release()
    assert seen and all(b > 0 for b in seen) and pool.pinned_bytes == 0


def test_blocks_returned_meanwhile_are_unpinned_and_kept_even_when_the_locked_body_raises():
    """Review finding: a block given back (pinning turned off while it was in use) is put back
    by the next locked call; should that call's body raise, the block is still unpinned and
    kept, never lost or freed pinned."""
    unpinned = []
    pool = HostBlocks(max_free_bytes=1 << 20)
    pool.configure_pinning(lambda address, n: True, unpinned.append, 1)
    block = np.empty(4096, np.uint8)
    pool._pin_block(block)
    pool.configure_pinning(None, None)  # off while the block is in use
    pool._returned.append(block)  # its result died while another thread held the lock
    with pytest.raises(KeyboardInterrupt):
        with pool._locked():
            raise KeyboardInterrupt
    assert unpinned and pool.pinned_bytes == 0 and len(pool._returned) == 1
    assert pool.info()["free_blocks"] == 1  # and into the free list at the next locked call


def test_before_a_fork_idle_kept_blocks_are_unpinned_and_pinned_again_when_handed_out(monkeypatch):
    from autooffload import _hostmem

    pool, pins = HostBlocks(max_free_bytes=64 * MiB), _Pins()
    pool.configure_pinning(pins.pin, pins.unpin, min_bytes=MiB)
    monkeypatch.setattr(_hostmem, "results", pool)
    a = pool.empty((MiB,), np.float64)
    del a
    gc.collect()
    a, b = pool.empty((MiB,), np.float64), pool.empty((MiB,), np.float64)  # a pinned (reused)
    del b
    gc.collect()
    b = pool.empty((MiB,), np.float64)  # pinned too: handed out again
    assert len(pins.pinned) == 2
    del b
    gc.collect()  # b's block is kept, idle and pinned; a's is held by a result
    _hostmem._before_fork()
    assert list(pins.pinned) == [a.base._block.ctypes.data]  # held: stays pinned
    assert pool.info()["pinned_blocks"] == 1
    b = pool.empty((MiB,), np.float64)  # the idle block handed out again: pinned again
    assert len(pins.pinned) == 2 and pool.is_pinned(b.ctypes.data, b.nbytes)
    del a, b
    gc.collect()
    pool.release()
    assert not pins.pinned


def test_a_shape_of_numpy_integers_is_counted_without_overflow():
    """int8 * int8 overflows at 128: a shape given as NumPy integers is counted in Python ints
    (found in review: a block smaller than the array made over it)."""
    pool = HostBlocks(max_free_bytes=1 << 26)
    a = pool.empty((np.int8(100), np.int8(100)), np.uint8)
    assert a.shape == (100, 100) and a.base._block.nbytes >= a.nbytes == 10_000 == a.base.nbytes
    a[...] = 7  # every byte inside the block
    assert int(a.sum()) == 70_000
