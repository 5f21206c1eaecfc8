"""Kept host memory for large device->host results (src/autooffload/_hostmem.py)."""

from __future__ import annotations

import gc
import threading

import numpy as np
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
