"""GPU tests of the transfer engine: bit-exact round trips, layouts, streams, threads, failures.

Marked ``gpu``; skipped where CuPy or a CUDA device is missing.
"""

from __future__ import annotations

import gc
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")
try:
    _HAVE_GPU = cp.cuda.runtime.getDeviceCount() > 0
except Exception:  # no driver, no device
    _HAVE_GPU = False
if not _HAVE_GPU:
    pytest.skip("no CUDA device", allow_module_level=True)

from autooffload import _transfer as T  # noqa: E402

MiB = 1024 * 1024

DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
          np.float16, np.float32, np.float64, np.complex64, np.complex128]


def bits(a):
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def same(a, b):
    """Same shape, dtype and bits (NaN-safe, -0.0-exact)."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(bits(a), bits(b))


def equal_values(a, b):
    """For results of arithmetic: NaN payloads may differ between CPU and GPU."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def random_array(shape, dtype, rng, order="C"):
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if dtype == np.bool_:
        a = rng.integers(0, 2, n).astype(bool)
    elif dtype.kind in "fc":
        re = rng.standard_normal(n * (2 if dtype.kind == "c" else 1))
        a = (re.view(np.complex128) if dtype.kind == "c" else re).astype(dtype)
        if n >= 4:
            a[:3] = [np.inf, -0.0, np.nan]
    else:
        a = rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8).view(dtype)
    return np.asarray(a.reshape(shape), order=order)


def layouts(rng, dtype, scale=1):
    base = random_array((37 * scale, 53 * scale), dtype, rng)
    cube = random_array((6, 7 * scale, 11 * scale), dtype, rng)
    yield "C", base, "C"
    yield "F", np.asfortranarray(base), "F"
    yield "T", base.T, "F"
    yield "steps", base[::2, 1::3], "C"
    yield "negative", base[::-1, ::-2], "C"
    yield "perm3d", cube.transpose(1, 0, 2), "C"
    yield "col", base[:, 5], "C"
    yield "1d", random_array((1001,), dtype, rng), "C"
    yield "empty", random_array((0, 5), dtype, rng), "C"
    yield "0d", random_array((), dtype, rng), "C"


def check_layout(a, expect, name):
    assert (a.flags.f_contiguous if expect == "F" else a.flags.c_contiguous), f"{name}: layout"


TUNINGS = {
    "default": {},
    "small_chunks": dict(chunk_bytes=256 * 1024, min_chunk_bytes=64 * 1024, max_buffers=3, threads=4,
                         small_bytes=16 * 1024, h2d_direct_max=0, d2h_direct_max=0, staged_max=0),
    "pinned_small": dict(h2d_direct_max=0, d2h_direct_max=0, staged_max=0),
    "direct": dict(h2d_direct_max=1 << 40, d2h_direct_max=1 << 40, staged_max=0),
    # Every contiguous array through the staged path (native copy pool), in 64 KiB pieces.
    "staged": dict(staged_min=0, staged_max=1 << 40, chunk_bytes=64 * 1024, min_chunk_bytes=64 * 1024,
                   min_part_bytes=4096),
    # Every contiguous array pinned in place (cudaHostRegister), whole or in 64 KiB pieces.
    "register": dict(h2d_register_min=1, d2h_register_min=1),
    "register_pieces": dict(h2d_register_min=1, d2h_register_min=1, register_chunk_bytes=64 * 1024),
}


@pytest.fixture
def small_chunks():
    """Tiny chunks and pool, so that modest arrays span many chunks and threads contend."""
    old = T._configure(**TUNINGS["small_chunks"])
    yield
    T._configure(**{k: getattr(old, k) for k in old.__dataclass_fields__})


@pytest.fixture(params=list(TUNINGS))
def tuning(request):
    old = T._configure(**TUNINGS[request.param]) if TUNINGS[request.param] else T._tuning()
    yield request.param
    T._configure(**{k: getattr(old, k) for k in old.__dataclass_fields__})


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_every_dtype_and_layout(dtype, tuning):
    rng = np.random.default_rng(0)
    for name, h, expect in layouts(rng, dtype, scale=3 if tuning in ("small_chunks", "staged") else 1):
        before = h.copy()
        d = T.to_device(h)
        assert isinstance(d, cp.ndarray)
        assert d.shape == h.shape and d.dtype == h.dtype, name
        check_layout(d, expect, name)
        assert same(cp.asnumpy(d), h), name
        assert same(h, before), f"{name}: source modified"
        back = T.to_host(d)
        assert isinstance(back, np.ndarray)
        check_layout(back, expect, name)
        assert same(back, h), name


@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_large_default_tuning(order):
    rng = np.random.default_rng(1)
    n = 48 * MiB // 8 + 7  # ~48 MiB float64, odd size: several chunks, a ragged last one
    h = random_array((n,), np.float64, rng)
    if order == "F":
        h = np.asfortranarray(h[: (n // 7) * 7].reshape(-1, 7))
    elif order == "strided":
        h = h[: (n // 7) * 7].reshape(-1, 7)[:, ::-2]
    d = T.to_device(h)
    assert same(cp.asnumpy(d), h)
    assert same(T.to_host(d), h)


def test_to_host_noncontiguous_device():
    rng = np.random.default_rng(2)
    d = cp.asarray(random_array((300, 400), np.float32, rng))
    for v in (d[::3, ::-2], d.T[::2], d[:, 7], d[5:, :][::-1]):
        r = T.to_host(v)
        assert r.flags.c_contiguous
        assert same(r, v.get())


@pytest.mark.parametrize("dev_order", ["C", "F", "strided"])
def test_to_host_into_out_views(dev_order, small_chunks):
    rng = np.random.default_rng(3)
    h = random_array((120, 90), np.complex128, rng)
    d = cp.asarray(h, order="F") if dev_order == "F" else cp.asarray(h)
    if dev_order == "strided":
        d = d[::2, ::-3]
    expect = d.get()
    s = d.shape
    outs = [
        np.empty(s, d.dtype),
        np.empty(s, d.dtype, order="F"),
        np.empty((s[0] * 2, s[1] * 3), d.dtype)[::2, ::-3],
        np.empty((s[1], s[0]), d.dtype).T,
        np.empty((s[0], s[1] + 5), d.dtype)[:, 2:-3],
    ]
    for out in outs:
        ref = out.copy()
        ref[...] = expect
        assert T.to_host(d, out=out) is out
        assert same(out, ref)


def test_to_host_out_errors():
    d = cp.arange(12.0).reshape(3, 4)
    with pytest.raises(ValueError, match=r"shape \(3, 4\) and dtype float64.*got shape \(4, 3\)"):
        T.to_host(d, out=np.empty((4, 3)))
    with pytest.raises(ValueError, match="dtype float32"):
        T.to_host(d, out=np.empty((3, 4), np.float32))
    ro = np.empty((3, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        T.to_host(d, out=ro)
    z = cp.asarray(np.float64(2.5))
    out0 = np.empty(())
    assert T.to_host(z, out=out0) is out0 and out0[()] == 2.5


def test_stream_ordering_on_user_stream():
    rng = np.random.default_rng(4)
    h = random_array((8 * MiB // 8,), np.float64, rng)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        # Queue much work before the copy out: to_host must wait for it.
        x = cp.zeros(h.size, dtype=np.float64)
        for _ in range(200):
            x += 1.0
        assert np.all(T.to_host(x) == 200.0)
        # Work queued after to_device on the current stream sees the data.
        d = T.to_device(h)
        y = d * 2.0
        assert equal_values(T.to_host(y), h * 2.0)
    s.synchronize()


@pytest.mark.parametrize("n_mib", [1, 9, 17, 40])
def test_sizes_around_the_thresholds(n_mib):
    rng = np.random.default_rng(11)
    h = random_array((n_mib * MiB // 4 + 3,), np.float32, rng)
    for v in (h, h[:-3].reshape(-1, 8).T, h[::3]):
        d = T.to_device(v)
        assert same(cp.asnumpy(d), v)
        assert same(T.to_host(d), v)
        out = np.empty(v.shape, v.dtype)
        assert same(T.to_host(d, out=out), v)


def test_per_thread_default_stream():
    rng = np.random.default_rng(12)
    h = random_array((16 * MiB // 8,), np.float64, rng)
    with cp.cuda.Stream.ptds:
        x = cp.zeros(h.size)
        for _ in range(100):
            x += 1.0
        assert np.all(T.to_host(x) == 100.0)
        d = T.to_device(h)
        y = d * 1.0 + x  # queued on the per-thread stream after to_device: must see the data
        assert equal_values(T.to_host(y), h + 100.0)


def test_source_may_change_after_to_device():
    rng = np.random.default_rng(5)
    h = random_array((64 * MiB // 8,), np.float64, rng)
    ref = h.copy()
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        d = T.to_device(h)
        h[:] = -1.0  # overwrite the source immediately after the call returns
        assert same(T.to_host(d), ref)


@pytest.mark.parametrize("tuned", [False, True])
def test_threads_each_with_own_stream(tuned):
    ctx = T._configure(**TUNINGS["small_chunks"]) if tuned else None
    errors = []
    try:
        def worker(seed):
            rng = np.random.default_rng(seed)
            try:
                s = cp.cuda.Stream(non_blocking=True)
                with s:
                    for i in range(6):
                        n = int(rng.integers(1, 6 * MiB // 8))
                        h = random_array((n,), [np.float64, np.int16, np.complex64][i % 3], rng)
                        v = h[::-3] if (seed + i) % 2 else h
                        d = T.to_device(v)
                        d2 = d + d  # work on this thread's stream
                        back = T.to_host(d)
                        assert same(back, v), (seed, i)
                        assert equal_values(T.to_host(d2), v + v), (seed, i)
            except Exception as e:  # noqa: BLE001
                errors.append((seed, repr(e)))

        ths = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
    finally:
        if ctx is not None:
            T._configure(**{k: getattr(ctx, k) for k in ctx.__dataclass_fields__})
    assert not errors, errors
    info = T.pool_info()
    assert info["in_use"] == 0 and info["allocated"] <= info["max_buffers"]


def test_pool_bounded_reused_and_released():
    T.release_pinned_pool()
    # One thread, one chunk at a time (strided source and destination, below a chunk): each copy
    # takes one buffer and gives it back, so the second copy on reuses the first buffer.
    h = np.random.default_rng(6).standard_normal((512, 128))[:, ::2]  # 256 KiB, not contiguous
    out = np.ones((512, 128))[:, ::2]
    for _ in range(5):
        T.to_host(T.to_device(h), out=out)
        assert same(out, h)
    assert T._pool.allocations == 1 and T.pool_info()["in_use"] == 0

    # Many workers: how many buffers a copy holds at once depends on thread timing, up to the
    # bound. Fill the pool to its bound, then no copy may allocate again, whatever the timing.
    big = np.random.default_rng(7).standard_normal(100 * MiB // 8)
    assert same(T.to_host(T.to_device(big)), big)
    pool = T._get_pool()
    bound = T.pool_info()["max_buffers"]
    held = [pool.acquire() for _ in range(bound)]
    assert pool.acquire(block=False) is None  # bounded
    for buf in held:
        pool.release(buf)
    assert pool.allocations == bound
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: T.to_host(T.to_device(big)), range(6)))
    assert all(same(r, big) for r in results)
    assert pool.allocations == bound  # reused across calls and threads, never reallocated
    info = T.pool_info()
    assert info["allocated"] == bound and info["in_use"] == 0
    T.release_pinned_pool()
    assert T.pool_info()["allocated"] == 0
    assert same(T.to_host(T.to_device(big)), big)  # and usable again


def test_out_of_memory_frees_and_reraises():
    mempool = cp.get_default_memory_pool()
    h = np.random.default_rng(7).standard_normal(64 * MiB // 8)
    before = h.copy()
    cp.cuda.get_current_stream().synchronize()
    gc.collect()  # arrays of earlier tests freed mid-test would shift the count
    mempool.free_all_blocks()  # a cached free block would be reused without checking the limit
    used = mempool.used_bytes()
    old_limit = mempool.get_limit()
    mempool.set_limit(size=mempool.total_bytes() + 16 * MiB)
    try:
        with pytest.raises(cp.cuda.memory.OutOfMemoryError):
            T.to_device(h)
    finally:
        mempool.set_limit(size=old_limit)
    assert mempool.used_bytes() == used
    assert same(h, before)
    assert T.pool_info()["in_use"] == 0


@pytest.mark.parametrize("direction", ["h2d", "d2h"])
@pytest.mark.parametrize("path", ["small_chunks", "staged"])
def test_failure_mid_copy_frees_and_leaves_source(direction, path, monkeypatch):
    if path == "staged" and T._parcopy is None:
        pytest.skip("the native copy pool is not built")
    # Results never pinned: a result in a pinned kept block (where a tuning keeps 4 MiB results)
    # is one DMA, with no chunk for the injected failure.
    old = T._configure(**TUNINGS[path], pin_results_min=0)
    try:
        _failure_mid_copy(direction, monkeypatch)
    finally:
        T._configure(**{k: getattr(old, k) for k in old.__dataclass_fields__})


def _failure_mid_copy(direction, monkeypatch):
    mempool = cp.get_default_memory_pool()
    h = np.random.default_rng(8).standard_normal(4 * MiB // 8)
    before = h.copy()
    d = T.to_device(h) if direction == "d2h" else None
    cp.cuda.get_current_stream().synchronize()
    used = mempool.used_bytes()
    real = T._event_for
    calls = []

    def flaky(buf, device_id):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("injected failure after 4 chunks")
        return real(buf, device_id)

    monkeypatch.setattr(T, "_event_for", flaky)
    with pytest.raises(RuntimeError, match="injected failure"):
        T.to_device(h) if direction == "h2d" else T.to_host(d)
    monkeypatch.setattr(T, "_event_for", real)
    cp.cuda.get_current_stream().synchronize()
    assert mempool.used_bytes() == used, "device memory of the failed copy not freed"
    assert T.pool_info()["in_use"] == 0
    assert same(h, before)
    assert same(T.to_host(T.to_device(h)), h)
    if d is not None:
        assert same(T.to_host(d), h)


def test_multi_device_if_present():
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one device")
    h = np.arange(1_000_000, dtype=np.int64)
    with cp.cuda.Device(1):
        d = T.to_device(h)
        assert d.device.id == 1
    assert same(T.to_host(d), h)


def test_large_results_reuse_dropped_memory_and_stay_correct():
    """Above the direct-copy size a new result gets the memory of one already dropped."""
    from autooffload import _hostmem

    _hostmem.results.release()
    rng = np.random.default_rng(7)
    n = 40 * MiB // 8
    sources = [random_array((n,), np.float64, rng) for _ in range(3)]
    devs = [T.to_device(h) for h in sources]
    first = T.to_host(devs[0])
    address = first.ctypes.data
    kept_view = first[5:]
    del first
    second = T.to_host(devs[1])  # the first result's memory is still used by kept_view
    assert second.ctypes.data != address
    assert same(second, sources[1]) and same(kept_view, sources[0][5:])
    del kept_view
    gc.collect()
    reused_before = _hostmem.results.info()["reused"]
    third = T.to_host(devs[2])
    assert third.ctypes.data == address and _hostmem.results.info()["reused"] == reused_before + 1
    assert same(third, sources[2]) and same(second, sources[1])
    f_dev = cp.asfortranarray(devs[2].reshape(-1, 8))
    del third
    back_f = T.to_host(f_dev)
    assert back_f.flags.f_contiguous and same(back_f, np.asfortranarray(sources[2].reshape(-1, 8)))
    T.release_pinned_pool()
    assert _hostmem.results.info()["free_blocks"] == 0


@pytest.mark.parametrize("direction", ["h2d", "d2h"])
def test_register_failure_mid_copy_unpins_everything(direction, monkeypatch):
    """Pinned in place in 64 KiB pieces; the 5th DMA fails: every piece pinned so far is
    unpinned (pinning the whole array again succeeds), the device memory freed, the source kept."""
    old = T._configure(**TUNINGS["register_pieces"])
    try:
        mempool = cp.get_default_memory_pool()
        h = np.random.default_rng(9).standard_normal(4 * MiB // 8)
        before = h.copy()
        d = T.to_device(h) if direction == "d2h" else None
        out = np.ones_like(h)
        cp.cuda.get_current_stream().synchronize()
        used = mempool.used_bytes()
        rt = cp.cuda.runtime
        real = rt.memcpyAsync
        calls = []

        def flaky(*args):
            calls.append(1)
            if len(calls) == 5:
                raise RuntimeError("injected DMA failure")
            return real(*args)

        monkeypatch.setattr(rt, "memcpyAsync", flaky)
        with pytest.raises(RuntimeError, match="injected DMA failure"):
            T.to_device(h) if direction == "h2d" else T.to_host(d, out=out)
        monkeypatch.setattr(rt, "memcpyAsync", real)
        cp.cuda.get_current_stream().synchronize()
        for a in (h, out):
            rt.hostRegister(a.ctypes.data, a.nbytes, 0)  # raises if a piece were still pinned
            rt.hostUnregister(a.ctypes.data)
        assert mempool.used_bytes() == used, "device memory of the failed copy not freed"
        assert same(h, before)
        assert same(T.to_host(T.to_device(h)), h)
    finally:
        T._configure(**{k: getattr(old, k) for k in old.__dataclass_fields__})


def test_kept_results_are_pinned_when_reused_and_copied_by_one_dma(monkeypatch):
    from autooffload import _hostmem

    old = T._configure(pin_results_min=4 * MiB, pin_after_copies=2)  # pinned at its second use, whatever the profile says
    dmas = []
    real = T._dma_pinned
    monkeypatch.setattr(T, "_dma_pinned", lambda cp_, dst, src, n, kind, stream: (dmas.append(kind), real(cp_, dst, src, n, kind, stream)))
    try:
        rng = np.random.default_rng(5)
        T.release_pinned_pool()  # no kept blocks from other tests
        for dtype, shape, order in [(np.float64, (4 * MiB,), "C"), (np.float32, (2048, 3000), "F")]:
            dmas.clear()
            x = random_array(shape, dtype, rng, order)
            dev = cp.asarray(x)
            first = T.to_host(dev)  # new memory: not pinned, the ordinary path
            assert same(first, x) and not dmas
            address = first.ctypes.data
            del first
            gc.collect()
            second = T.to_host(dev)  # the kept block, pinned now: one DMA into it
            assert same(second, x) and second.ctypes.data == address and dmas == [T._D2H]
            assert _hostmem.results.is_pinned(address, second.nbytes)
            back = T.to_device(second)  # a pinned result passed back in: one DMA out of it
            assert same(back.get(), x) and dmas == [T._D2H, T._H2D]
            second[...] = 0  # the caller may change it at once: the copy is done
            assert same(back.get(), x)
            del second, back
            gc.collect()
        T.release_pinned_pool()
        assert _hostmem.results.info()["pinned_bytes"] == 0
    finally:
        T._configure(**{k: getattr(old, k) for k in old.__dataclass_fields__})
        T.release_pinned_pool()


def test_reused_arrays_are_pinned_in_place_and_every_copy_stays_exact():
    """The pin-down cache (_pincache.py) on a real GPU: an array copied again is pinned in place
    as one registration (the driver then refuses to pin its pages a second time), its views and
    chunks copy from it, in both directions, through the DMA path and the driver's direct path
    (the run of session 7 whose cache pinned 64 MiB units failed here: a 7 MiB copy that started
    in one unit and ran past it, cudaErrorInvalidValue), results written into it are exact, and
    it is unpinned when it dies."""
    from numpy.lib.stride_tricks import as_strided

    from autooffload import _pincache

    old = T._configure(pin_reused_min=16 * MiB, pin_after_copies=2)  # not the profile's: pinned at the third copy
    rt = cp.cuda.runtime
    try:
        rng = np.random.default_rng(31)
        base = random_array((150 * MiB // 8 + 3,), np.float64, rng)
        h = base[5:]  # starts inside a page
        target_base = np.ones(h.size + 7)
        target = target_base[7:]
        for attempt in range(3):  # counted, counted, pinned (twice the owner's bytes moved)
            d = T.to_device(h)
            assert same(d.get(), h), attempt
            target[...] = 0.5
            assert T.to_host(d, out=target) is target and same(target, h), attempt
        assert T.pinned(h) and T.pinned(target) and _pincache.cache.covers(base)
        with pytest.raises(Exception):
            rt.hostRegister(base.ctypes.data + 4096 * 3, 4096, 0)  # already pinned, by the cache
        pinned = _pincache.cache.info()["pinned_bytes"]
        assert pinned >= base.nbytes + target_base.nbytes
        step = 7 * MiB // 8 + 1  # below the driver's direct-copy size, not on any 64 MiB edge
        for lo in range(0, h.size, step):  # a streamed call's chunks, both ways
            part = h[lo:lo + step]
            d = T.to_device(part)
            assert same(d.get(), part), lo
            target[lo:lo + step] = -1.0
            T.to_host(d, out=target[lo:lo + step])
        assert same(target, h)
        part = h[1000:1000 + step]
        for other in (np.asarray(memoryview(part)), as_strided(part)):  # views the base chain hides
            assert same(T.to_device(other).get(), part)
        # The driver's direct copy from pinned memory is asynchronous: inside unpinned_copies it
        # takes that path, and must still be done when it returns (the source changes right after).
        small = h[:MiB // 8]
        keep = small.copy()
        with T.unpinned_copies():
            for _ in range(3):
                d = T.to_device(small)
                small[...] = -2.0
                assert same(d.get(), keep)
                small[...] = keep
        assert _pincache.cache.info()["pinned_bytes"] == pinned, "chunks pinned nothing new"
        del base, h, d, part, other, target, target_base, small
        gc.collect()
        assert _pincache.cache.info()["pinned_bytes"] == 0
    finally:
        T._configure(**{k: getattr(old, k) for k in old.__dataclass_fields__})
