"""CPU tests of the transfer engine: planning, pool accounting, and the pipelines on a fake CuPy.

The fake stands in for the GPU: "device memory" is host memory, memcpyAsync is a memmove and
events are no-ops. That proves the chunking, ordering, layouts, threading and failure cleanup of
the engine; real DMA, streams and events are proven by tests/test_transfer_gpu.py on a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autooffload import _transfer as T

KiB = 1024
MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Import hygiene
# ---------------------------------------------------------------------------------------------
def test_import_does_not_import_cupy():
    code = (
        "import sys; import autooffload._transfer as t; "
        "assert 'cupy' not in sys.modules, 'cupy imported'; "
        "t.release_pinned_pool(); assert 'cupy' not in sys.modules; "
        "assert isinstance(t.ENGINE_NAME, str) and t.ENGINE_NAME; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


@pytest.mark.parametrize("env, expected", [({}, 1024 * 1024), ({"AUTOOFFLOAD_PIN": "0"}, 0)])
def test_pinning_on_reuse_is_on_from_the_start_unless_the_user_turns_it_off(env, expected):
    """Without any profile's tuning the defaults pin on reuse; AUTOOFFLOAD_PIN=0 turns both
    kinds off (the caller's arrays and kept results)."""
    import os

    code = ("import autooffload._transfer as t; "
            "print(t._pincache.cache.min_bytes, t._hostmem.results.pin_min_bytes if t._hostmem.results._pin else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, **env, "AUTOOFFLOAD_PIN": env.get("AUTOOFFLOAD_PIN", "1")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(expected), str(expected)]


def test_release_without_cupy_is_safe():
    T.release_pinned_pool()
    T.release_pinned_pool()


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------
def _check_pieces(shape, itemsize, max_bytes):
    pieces = T.plan_pieces(shape, itemsize, max_bytes)
    n = int(np.prod(shape))
    idx = np.arange(n).reshape(shape)
    pos = 0
    for p in pieces:
        assert p.start == pos
        got = idx[p.index].ravel()
        assert np.array_equal(got, np.arange(p.start, p.start + p.count))
        assert p.count * itemsize <= max(max_bytes, itemsize)
        pos += p.count
    assert pos == n
    return pieces


@given(
    shape=st.lists(st.integers(0, 7), min_size=0, max_size=4).map(tuple),
    itemsize=st.sampled_from([1, 2, 4, 8, 16]),
    max_bytes=st.integers(1, 600),
)
@settings(max_examples=300, deadline=None)
def test_plan_pieces_covers_c_order_exactly(shape, itemsize, max_bytes):
    _check_pieces(shape, itemsize, max_bytes)


def test_plan_pieces_sizes_are_reasonable():
    # (3, 100000, 2) float64, 1 MiB pieces: split along axis 1, few pieces.
    pieces = _check_pieces((3, 100000, 2), 8, MiB)
    assert len(pieces) == 6
    # Big 1-d: exactly ceil(n / max).
    pieces = T.plan_pieces((10 * MiB + 5,), 1, MiB)
    assert len(pieces) == 11 and pieces[-1].count == 5
    assert T.plan_pieces((0, 5), 8, 64) == []
    assert T.plan_pieces((), 8, 64) == [T.Piece((), 0, 1)]


@given(
    sizes=st.lists(st.integers(1, 50), min_size=0, max_size=40),
    chunk=st.integers(50, 200),
)
def test_group_chunks(sizes, chunk):
    pieces, start = [], 0
    for s in sizes:
        pieces.append(T.Piece((slice(start, start + s),), start, s))
        start += s
    chunks = T.group_chunks(pieces, 1, chunk)
    assert [p for c in chunks for p in c.pieces] == pieces
    off = 0
    for c in chunks:
        assert c.offset == off and c.nbytes == sum(p.count for p in c.pieces) <= chunk
        off += c.nbytes
    assert off == start


def test_chunk_sizes_and_contiguous_plan():
    t = T._Tuning(chunk_bytes=8 * MiB, min_chunk_bytes=MiB, threads=16)
    assert T.chunk_size_for(1024, t) == MiB
    assert T.chunk_size_for(32 * MiB, t) == 2 * MiB
    assert T.chunk_size_for(1 << 30, t) == 8 * MiB
    chunks = T.plan_transfer((1 << 30,), 1, True, t)
    assert len(chunks) == 128 and all(len(c.pieces) == 1 for c in chunks)
    assert T.plan_transfer((1000,), 8, True, t)[0].nbytes == 8000
    assert T.plan_transfer((0, 3), 8, False, t) == []


@given(base=st.integers(0, 1 << 20), nbytes=st.integers(1, 200_000), chunk=st.integers(1, 70_000))
def test_plan_contiguous_page_aligned(base, nbytes, chunk):
    chunks = T.plan_contiguous(base, nbytes, chunk)
    off = 0
    for i, c in enumerate(chunks):
        assert c.offset == off and c.nbytes > 0
        assert c.pieces == (T.Piece((slice(off, off + c.nbytes),), off, c.nbytes),)
        if i > 0:
            assert (base + c.offset) % 4096 == 0  # inner boundaries on page boundaries
        assert c.nbytes <= max(4096, chunk - chunk % 4096)
        off += c.nbytes
    assert off == nbytes


def test_configure_validates_and_restores():
    with pytest.raises(TypeError, match="unknown tuning knobs"):
        T._configure(bogus=1)
    with pytest.raises(ValueError, match="chunk_bytes"):
        T._configure(chunk_bytes=0)
    with pytest.raises(ValueError, match="threads"):
        T._configure(threads=-1)
    old = T._configure(threads=3)
    try:
        assert T._tuning().threads == 3
    finally:
        T._configure(**{f: getattr(old, f) for f in old.__dataclass_fields__})
    assert T._tuning() == old


# ---------------------------------------------------------------------------------------------
# Pool accounting
# ---------------------------------------------------------------------------------------------
class FakeEvent:
    def __init__(self):
        self.waited = 0

    def synchronize(self):
        self.waited += 1


class PoolHarness:
    def __init__(self, fail_after=None):
        self.live = set()
        self.n_alloc = 0
        self.fail_after = fail_after
        self.lock = threading.Lock()

    def alloc(self, n):
        with self.lock:
            if self.fail_after is not None and self.n_alloc >= self.fail_after:
                raise MemoryError("no pinned memory")
            self.n_alloc += 1
            arr = np.zeros(n, np.uint8)
            buf = T._Buffer(arr.ctypes.data, n, arr)
            self.live.add(id(buf))
            return buf

    def free(self, buf):
        with self.lock:
            self.live.remove(id(buf))

    def pool(self, max_buffers=3, nbytes=64):
        return T.PinnedPool(nbytes, max_buffers, self.alloc, self.free, lambda ev: ev.synchronize())


def test_pool_bounded_reused_fifo():
    h = PoolHarness()
    pool = h.pool(max_buffers=3)
    a, b, c = (pool.acquire() for _ in range(3))
    assert pool.allocated == 3 and pool.in_use == 3
    assert pool.acquire(block=False) is None
    pool.release(a)
    pool.release(b)
    assert pool.acquire() is a  # oldest released first
    pool.release(a)
    pool.release(c)
    for _ in range(100):
        x = pool.acquire()
        pool.release(x)
    assert h.n_alloc == 3 and pool.allocations == 3
    assert pool.in_use == 0


def test_pool_waits_pending_event_on_reuse():
    h = PoolHarness()
    pool = h.pool(max_buffers=1)
    buf = pool.acquire()
    ev = FakeEvent()
    pool.release(buf, ev)
    assert ev.waited == 0  # release never blocks
    assert pool.acquire() is buf
    assert ev.waited == 1
    pool.release(buf)


def test_pool_blocks_until_release():
    h = PoolHarness()
    pool = h.pool(max_buffers=1)
    buf = pool.acquire()
    got = []
    th = threading.Thread(target=lambda: got.append(pool.acquire()))
    th.start()
    time.sleep(0.05)
    assert not got
    pool.release(buf)
    th.join(5)
    assert got == [buf]


def test_pool_clear_frees_now_and_on_release():
    h = PoolHarness()
    pool = h.pool(max_buffers=3)
    a, b = pool.acquire(), pool.acquire()
    ev = FakeEvent()
    pool.release(a, ev)
    pool.clear()
    assert ev.waited == 1  # a pending DMA is waited for before its buffer is freed
    assert len(h.live) == 1 and pool.allocated == 1
    pool.release(b)  # stale generation: freed, not pooled
    assert not h.live and pool.allocated == 0
    c = pool.acquire()
    assert pool.allocated == 1 and h.n_alloc == 3
    pool.release(c)


def test_pool_alloc_failure():
    h = PoolHarness(fail_after=0)
    pool = h.pool()
    with pytest.raises(T.PinnedUnavailable):
        pool.acquire()
    assert pool.allocated == 0
    h2 = PoolHarness(fail_after=1)
    pool2 = h2.pool(max_buffers=3)
    a = pool2.acquire()
    assert pool2.acquire(block=False) is None  # could not grow; does not raise
    threading.Timer(0.05, pool2.release, args=(a,)).start()
    assert pool2.acquire() is a  # waited for the existing one instead
    pool2.release(a)


def _in_threads(target, count: int, timeout: float | None = None) -> list[threading.Thread]:
    """``target(i)`` for each i in range(count), each on a thread of its own, all started before
    any is joined; the threads, joined (each for at most ``timeout``)."""
    ths = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(timeout)
    return ths


def test_pool_thread_safety():
    h = PoolHarness()
    pool = h.pool(max_buffers=4)
    peak = [0]
    lock = threading.Lock()
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                held = [pool.acquire()]
                for _ in range(int(rng.integers(0, 3))):
                    x = pool.acquire(block=False)
                    if x is not None:
                        held.append(x)
                with lock:
                    peak[0] = max(peak[0], pool.allocated)
                for x in held:
                    pool.release(x, FakeEvent() if rng.random() < 0.5 else None)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    _in_threads(worker, 8)
    assert not errors
    assert peak[0] <= 4 and h.n_alloc <= 4 and pool.in_use == 0


# ---------------------------------------------------------------------------------------------
# The engine on a fake CuPy
# ---------------------------------------------------------------------------------------------
class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous


class _Ptr:
    def __init__(self, ptr):
        self.ptr = ptr


class _Device:
    id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeDevArray:
    """'Device' array: a host array the engine may only reach through pointers."""

    def __init__(self, a):
        self._a = a
        self.shape, self.dtype, self.size, self.nbytes = a.shape, a.dtype, a.size, a.nbytes
        self.flags = _Flags(a)
        self.data = _Ptr(a.ctypes.data)
        self.device = _Device()

    def get(self):
        return self._a.copy(order="K")

    def __getitem__(self, idx):
        return FakeDevArray(self._a[idx])

    @property
    def T(self):
        return FakeDevArray(self._a.T)


class FakeStream:
    ptr = 0
    fake = None  # the FakeCupy in use: its DMAs from registered memory wait for a synchronize

    def synchronize(self):
        if self.fake is not None:
            self.fake.flush(self.ptr)

    def wait_event(self, ev):
        pass


class FakeCupy:
    class OutOfMemoryError(MemoryError):
        pass

    def __init__(self):
        fake = self
        self.pinned = {}
        self.memcpys = []
        self.fail_memcpy_at = None
        self.oom = False
        self.live_dev = 0
        self.registered = {}
        self.n_registered = 0
        self.allocations: list[np.ndarray] = []
        self.lock = threading.Lock()
        # Like the driver: a DMA to or from registered (pinned) memory is asynchronous, it runs
        # at the stream's next synchronization (here), while one from pageable memory is done
        # when the call returns. Code that forgets to wait reads stale data in the tests.
        self.queued: dict[int, list] = {}
        self.flush_lock = threading.Lock()
        FakeStream.fake = self

        class Event:
            def __init__(self, block=False, disable_timing=False):
                pass

            def record(self, stream=None):
                pass

            def synchronize(self):
                fake.flush(None)

        class Runtime:
            @staticmethod
            def hostAlloc(n, flags):
                buf = np.empty(n, np.uint8)
                fake.pinned[buf.ctypes.data] = buf
                return buf.ctypes.data

            @staticmethod
            def freeHost(ptr):
                del fake.pinned[ptr]

            @staticmethod
            def getDevice():
                return 0

            @staticmethod
            def setDevice(i):
                assert i == 0

            @staticmethod
            def hostRegister(ptr, n, flags):
                with fake.lock:
                    for p, m in fake.registered.items():
                        if p < ptr + n and ptr < p + m:
                            raise RuntimeError("cudaErrorHostMemoryAlreadyRegistered")
                    fake.registered[ptr] = n
                    fake.n_registered += 1

            @staticmethod
            def hostUnregister(ptr):
                with fake.lock:
                    del fake.registered[ptr]

            @staticmethod
            def memcpyAsync(dst, src, n, kind, stream):
                host = src if kind == 1 else dst
                with fake.lock:
                    for p, m in fake.registered.items():
                        # Like the driver (seen on the H200): a DMA that starts in a registration
                        # may not run past its end.
                        if p <= host < p + m < host + n:
                            raise RuntimeError("cudaErrorInvalidValue: a DMA across a registration's edge")
                fake.memcpys.append((kind, n))
                if fake.fail_memcpy_at is not None and len(fake.memcpys) >= fake.fail_memcpy_at:
                    raise RuntimeError("injected DMA failure")
                with fake.lock:
                    pinned = any(p <= host and host + n <= p + m for p, m in fake.registered.items())
                    if pinned:
                        fake.queued.setdefault(stream, []).append((dst, src, n))
                if not pinned:
                    ctypes.memmove(dst, src, n)

            @staticmethod
            def memcpy(dst, src, n, kind):  # the synchronous copy on the legacy default stream
                Runtime.memcpyAsync(dst, src, n, kind, 0)
                fake.flush(0)

        class Stream(FakeStream):
            def __init__(self, non_blocking=False):
                self.ptr = 1000 + id(self) % 1000

            def wait_event(self, ev):
                pass

        class Cuda:
            runtime = Runtime
            get_current_stream = staticmethod(lambda: fake.current_stream)

        Cuda.Event = Event
        Cuda.Stream = Stream
        self.cuda = Cuda
        self.current_stream = FakeStream()

    def flush(self, stream):
        """Run the DMAs queued on ``stream`` (None: on every stream); a second thread's
        synchronize waits until they ran, as a stream's does."""
        with self.flush_lock:
            with self.lock:
                keys = list(self.queued) if stream is None else [stream]
                runs = [d for k in keys for d in self.queued.pop(k, [])]
            for dst, src, n in runs:
                ctypes.memmove(dst, src, n)

    def empty(self, shape, dtype, order="C"):
        if self.oom:
            raise FakeCupy.OutOfMemoryError("out of memory")
        # Poisoned, never zeros: unwritten bytes show.
        a = np.empty(shape, dtype, order=order)
        if a.size:
            (a.T if order == "F" else a).reshape(-1).view(np.uint8)[...] = 0xA5
        # Never freed while the fake lives: CuPy's pool frees in stream order, so a DMA still
        # queued into dropped device memory runs into memory that is still the pool's.
        self.allocations.append(a)
        return FakeDevArray(a)

    def ascontiguousarray(self, d):
        return FakeDevArray(np.ascontiguousarray(d._a))


@pytest.fixture
def fake(monkeypatch):
    """The engine on the fake CuPy, with small chunks so that arrays span many of them."""
    f = FakeCupy()
    T.release_pinned_pool()
    monkeypatch.setattr(T, "_cupy", f)
    old = T._configure(chunk_bytes=64 * 1024, min_chunk_bytes=16 * 1024, max_buffers=3, threads=4, small_bytes=4096,
                       h2d_direct_max=0, d2h_direct_max=0, staged_max=0)
    yield f
    T._configure(**{k: getattr(old, k) for k in old.__dataclass_fields__})
    assert not f.pinned, "pinned buffers leaked"


# On top of the fake fixture's tuning: every contiguous array on the staged path.
STAGED_TUNING = dict(staged_min=0, staged_max=1 << 40, min_part_bytes=4096)


def bits(a):
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def same(a, b):
    """Same shape, dtype and bits (NaN-safe)."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(bits(a), bits(b))


DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
          np.float16, np.float32, np.float64, np.complex64, np.complex128]


def random_array(shape, dtype, rng, order="C"):
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if dtype == np.bool_:
        a = rng.integers(0, 2, n).astype(bool)
    else:
        raw = rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8)
        a = raw.view(dtype)
        if dtype.kind in "fc":  # random bits make NaN payloads; keep values ordinary, plus specials
            a = rng.standard_normal(n * (2 if dtype.kind == "c" else 1)).astype(
                np.float64).view(np.complex128 if dtype.kind == "c" else np.float64).astype(dtype)
            if n >= 4:
                a[:3] = [np.inf, -0.0, np.nan]
    return np.asarray(a.reshape(shape), order=order)


def layouts(rng, dtype, big=False):
    s = 3 if big else 1
    base = random_array((37 * s, 53 * s), dtype, rng)
    cube = random_array((6, 7 * s, 11 * s), dtype, rng)
    yield "C", base, "C"
    yield "F", np.asfortranarray(base), "F"
    yield "T", base.T, "F"
    yield "steps", base[::2, 1::3], "C"
    yield "negative", base[::-1, ::-2], "C"
    yield "perm3d", cube.transpose(1, 0, 2), "C"
    yield "col", base[:, 5], "C"
    yield "empty", random_array((0, 5), dtype, rng), "C"
    yield "0d", random_array((), dtype, rng), "C"


def _check_layout(d_like, expect):
    if expect == "F":
        assert d_like.flags.f_contiguous
    else:
        assert d_like.flags.c_contiguous


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_fake(fake, dtype):
    rng = np.random.default_rng(0)
    for name, h, expect in layouts(rng, dtype, big=True):
        before = h.copy()
        d = T.to_device(h)
        assert d.shape == h.shape and d.dtype == h.dtype, name
        _check_layout(d, expect)
        assert same(d.get(), h), name
        assert same(h, before), f"{name}: source modified"
        back = T.to_host(d)
        _check_layout(back, expect)
        assert same(back, h), name


def test_large_multichunk_fake(fake):
    rng = np.random.default_rng(1)
    h = random_array((1 << 20) + 13, np.float64, rng)  # ~8 MiB, odd size, 100+ chunks
    d = T.to_device(h)
    assert same(d.get(), h)
    assert same(T.to_host(d), h)
    big = random_array((300, 1001), np.int32, rng)
    for v in (big[::-1, ::2], big.T[::3], np.asfortranarray(big)):
        assert same(T.to_device(v).get(), v)
    n_chunks = len([m for m in fake.memcpys if m[0] == 1])
    assert n_chunks > 100
    assert T.pool_info()["allocated"] <= 3 and T.pool_info()["in_use"] == 0


def test_to_host_out_fake(fake):
    rng = np.random.default_rng(2)
    h = random_array((64, 96), np.complex64, rng)
    for d in (T.to_device(h), T.to_device(np.asfortranarray(h)), FakeDevArray(h[::2, ::-1].copy()[::1])):
        expect = d.get()
        for out in (np.empty(h.shape if d.shape == h.shape else d.shape, h.dtype),
                    np.empty(d.shape, h.dtype, order="F"),
                    np.empty((d.shape[0] * 2, d.shape[1] * 3), h.dtype)[::2, ::-3],
                    np.empty((d.shape[1], d.shape[0]), h.dtype).T):
            out_ref = out.copy()
            out_ref[...] = expect
            r = T.to_host(d, out=out)
            assert r is out
            assert same(out, out_ref)
    # Non-contiguous device array: C-contiguous result.
    dv = T.to_device(h)[::3, ::-2]
    r = T.to_host(dv)
    assert r.flags.c_contiguous and same(r, dv.get())


def test_to_host_out_errors(fake):
    d = T.to_device(np.arange(12.0).reshape(3, 4))
    with pytest.raises(ValueError, match=r"shape \(3, 4\) and dtype float64.*got shape \(4, 3\) and dtype float64"):
        T.to_host(d, out=np.empty((4, 3)))
    with pytest.raises(ValueError, match="got shape \\(3, 4\\) and dtype float32"):
        T.to_host(d, out=np.empty((3, 4), np.float32))
    ro = np.empty((3, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        T.to_host(d, out=ro)
    with pytest.raises(TypeError):
        T.to_host(d, out=[[0] * 4] * 3)


def test_direct_paths_fake(fake):
    T._configure(h2d_direct_max=1 << 40, d2h_direct_max=1 << 40)
    rng = np.random.default_rng(3)
    cases = list(layouts(rng, np.float32))
    contiguous = [c for c in cases if c[1].flags.c_contiguous or c[1].flags.f_contiguous]
    for name, h, expect in contiguous:
        d = T.to_device(h)
        assert same(d.get(), h), name
        assert same(T.to_host(d), h), name
    assert T.pool_info()["allocated"] == 0  # contiguous arrays never touched the pool
    for name, h, expect in cases:  # strided ones are gathered through it
        assert same(T.to_device(h).get(), h), name


def _no_pinned_memory(fake, monkeypatch) -> None:
    """cudaHostAlloc fails from now on: the engine has no pinned buffer to stage through."""
    def no_pinned(n, flags):
        raise RuntimeError("cudaErrorMemoryAllocation")

    monkeypatch.setattr(fake.cuda.runtime, "hostAlloc", staticmethod(no_pinned))


def test_pinned_unavailable_falls_back(fake, monkeypatch):
    _no_pinned_memory(fake, monkeypatch)
    rng = np.random.default_rng(4)
    h = random_array((300, 301), np.float64, rng)
    for v in (h, h[::2], h.T):
        d = T.to_device(v)
        assert same(d.get(), v)
        assert same(T.to_host(d), v)
        out = np.empty((v.shape[1], v.shape[0])).T
        assert same(T.to_host(d, out=out), v)


def test_threads_fake(fake):
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(5):
                h = random_array((int(rng.integers(1000, 300_000)),), np.float64, rng)
                v = h[::2] if seed % 2 else h
                d = T.to_device(v)
                back = T.to_host(d)
                assert same(back, v)
        except Exception as e:
            errors.append(e)

    _in_threads(worker, 8)
    assert not errors, errors
    assert T.pool_info()["allocated"] <= 3 and T.pool_info()["in_use"] == 0


def _copy_failing_at(fake, h, direction: str, at: int):
    """Copy ``h`` to the device ("h2d") or back from a device copy of it ("d2h") with the fake's
    DMA number ``at`` failing; the failure must reach the caller. Returns that device copy (None
    for "h2d")."""
    d = T.to_device(h) if direction == "d2h" else None
    fake.memcpys.clear()
    fake.fail_memcpy_at = at
    try:
        with pytest.raises(RuntimeError, match="injected DMA failure"):
            T.to_device(h) if direction == "h2d" else T.to_host(d)
    finally:
        fake.fail_memcpy_at = None
    return d


@pytest.mark.parametrize("direction", ["h2d", "d2h"])
@pytest.mark.parametrize("at", [1, 3, 7])
@pytest.mark.parametrize("path", ["workers", "staged"])
def test_failure_mid_copy_cleans_up(fake, direction, at, path):
    if path == "staged":
        if T._parcopy is None:
            pytest.skip("the optional C extension is not built")
        T._configure(**STAGED_TUNING)  # every contiguous array staged, in 64 KiB pieces
    rng = np.random.default_rng(5)
    h = random_array((200_000,), np.float64, rng)
    before = h.copy()
    d = _copy_failing_at(fake, h, direction, at)
    assert same(h, before)
    assert T.pool_info()["in_use"] == 0
    assert same(T.to_device(h).get(), h)
    if d is not None:
        assert same(T.to_host(d), h)


def test_worker_failure_cleans_up(fake, monkeypatch):
    rng = np.random.default_rng(6)
    h = random_array((200_000,), np.float64, rng)
    calls = itertools.count()
    real = np.copyto

    def flaky(dst, src, *a, **k):
        if next(calls) == 5:
            raise MemoryError("injected copy failure")
        return real(dst, src, *a, **k)

    monkeypatch.setattr(T.np, "copyto", flaky)
    with pytest.raises(MemoryError, match="injected copy failure"):
        T.to_device(h)
    assert T.pool_info()["in_use"] == 0
    monkeypatch.setattr(T.np, "copyto", real)
    assert same(T.to_device(h).get(), h)


def test_oom_reraised_unchanged(fake):
    fake.oom = True
    with pytest.raises(FakeCupy.OutOfMemoryError):
        T.to_device(np.ones(10))
    assert T.pool_info()["in_use"] == 0


def test_release_pool_while_in_use(fake):
    h = np.arange(100_000, dtype=np.float64)
    T.to_device(h)
    assert T.pool_info()["allocated"] > 0
    T.release_pinned_pool()
    assert not fake.pinned and T.pool_info()["allocated"] == 0
    assert same(T.to_device(h).get(), h)


def test_one_thread_one_buffer_fake(fake):
    T._configure(threads=1, max_buffers=1)
    rng = np.random.default_rng(7)
    for dtype in (np.float64, np.int8, np.complex64):
        for name, h, expect in layouts(rng, dtype, big=True):
            d = T.to_device(h)
            assert same(d.get(), h), name
            back = T.to_host(d)
            _check_layout(back, expect)
            assert same(back, h), name
    big = random_array((500_001,), np.float64, rng)
    assert same(T.to_host(T.to_device(big)), big)


def test_default_tuning_fake(fake):
    T._configure(**{k: getattr(T._Tuning(), k) for k in ("chunk_bytes", "min_chunk_bytes", "small_bytes", "h2d_direct_max", "d2h_direct_max")})
    rng = np.random.default_rng(8)
    direct_max = T._Tuning().h2d_direct_max
    for n in (10, 1 << 20, direct_max // 8, direct_max // 8 + 3, (40 << 20) // 8 + 5):
        h = random_array((n,), np.float64, rng)
        fake.memcpys.clear()
        d = T.to_device(h)
        assert same(d.get(), h)
        assert same(T.to_host(d), h)
        if n * 8 <= direct_max:
            assert len(fake.memcpys) == 2  # one each way: the driver's path
        else:
            assert len(fake.memcpys) > 4


def test_per_thread_stream_uses_side_stream(fake):
    fake.current_stream = type("PTDS", (FakeStream,), {"ptr": 2})()
    h = np.arange(300_000, dtype=np.float64)
    d = T.to_device(h)
    assert same(d.get(), h)
    assert same(T.to_host(d), h)


# ---------------------------------------------------------------------------------------------
# The staged path: two pinned buffers on the calling thread, host copies by the native pool
# ---------------------------------------------------------------------------------------------
needs_parcopy = pytest.mark.skipif(T._parcopy is None, reason="the optional C extension is not built")


@pytest.fixture
def staged(fake):
    """The fake engine with every contiguous array on the staged path, in 64 KiB pieces."""
    T._configure(**STAGED_TUNING)
    return fake


def test_staged_pieces_cover_the_array_in_order():
    t = T._Tuning()
    for n in (1, MiB, MiB + 1, 3 * MiB + 5, 8 * MiB, 33 * MiB, 1 << 30):
        pieces = T.staged_pieces(n, t)
        assert pieces[0][0] == 0 and sum(k for _, k in pieces) == n
        assert all(a + k == b for (a, k), (b, _) in zip(pieces, pieces[1:]))
        assert all(k <= t.chunk_bytes for _, k in pieces)
        if n >= 4 * MiB:
            assert len(pieces) >= 4  # a piece's DMA overlaps the next piece's copy


@pytest.mark.parametrize("count", [1, 4, 8, 16])
def test_staged_piece_count_cuts_mid_sizes_finer_within_the_buffer_and_1_mib(count):
    t = T._Tuning(chunk_bytes=32 * MiB, staged_piece_count=count)
    for n in (8 * MiB, 64 * MiB, 256 * MiB, 1 << 30):
        pieces = T.staged_pieces(n, t)
        assert sum(k for _, k in pieces) == n
        size = pieces[0][1]
        assert MiB <= size <= 32 * MiB
        # about `count` pieces, unless a piece would exceed one buffer or go below 1 MiB
        assert len(pieces) == -(-n // min(32 * MiB, max(MiB, -(-n // count))))


@needs_parcopy
@pytest.mark.parametrize("n", [65536 * 12 + 5, 1_000_003])
def test_staged_copies_with_non_temporal_stores_round_trip_exactly(staged, n):
    T._configure(chunk_bytes=256 * KiB, h2d_nontemporal=1, d2h_nontemporal=1)
    rng = np.random.default_rng(n)
    h = random_array((n,), np.uint8, rng)
    d = T.to_device(h)
    assert same(d.get(), h)
    out = np.full_like(h, 7)
    assert same(T.to_host(d, out=out), h) and same(out, h)
    f = np.asfortranarray(random_array((300, 201), np.float64, rng))
    back = T.to_host(T.to_device(f))
    assert same(back, f) and back.flags.f_contiguous
    assert T.pool_info()["in_use"] == 0


def test_a_piece_count_below_one_is_refused():
    with pytest.raises(ValueError, match="staged_piece_count"):
        T.apply_tuning({"staged_piece_count": 0})


@needs_parcopy
@pytest.mark.parametrize("n", [1, 4095, 65536, 65536 * 4 + 8, 1_000_003])
def test_staged_round_trips_exactly(staged, n):
    rng = np.random.default_rng(n)
    h = random_array((n,), np.uint8, rng)
    staged.memcpys.clear()
    d = T.to_device(h)
    assert same(d.get(), h)
    assert len(staged.memcpys) == -(-n // (64 * 1024))  # one DMA per piece
    assert same(T.to_host(d), h)
    f = np.asfortranarray(random_array((300, 201), np.float64, rng))
    back = T.to_host(T.to_device(f))
    assert same(back, f) and back.flags.f_contiguous
    assert T.pool_info()["in_use"] == 0


@needs_parcopy
def test_staged_with_one_buffer_and_from_many_threads(staged):
    T._configure(max_buffers=1)  # the second buffer is never there: one buffer in turn
    rng = np.random.default_rng(11)
    h = random_array((100_000,), np.float64, rng)
    assert same(T.to_host(T.to_device(h)), h)
    T._configure(max_buffers=2)  # four threads, two buffers: none may wait holding one
    errors = []

    def run(seed):
        a = random_array((int(np.random.default_rng(seed).integers(10_000, 90_000)),), np.float64, np.random.default_rng(seed))
        for _ in range(10):
            if not same(T.to_host(T.to_device(a)), a):
                errors.append(seed)

    ths = _in_threads(run, 4, timeout=60)
    assert not any(th.is_alive() for th in ths), "deadlock"
    assert not errors and T.pool_info()["in_use"] == 0


def test_without_the_native_pool_the_staged_path_is_off(fake, monkeypatch):
    monkeypatch.setattr(T, "_parcopy", None)
    T._configure(staged_min=0, staged_max=1 << 40)
    h = random_array((100_000,), np.float64, np.random.default_rng(13))
    assert not T._staged(h.nbytes, T._tuning())
    assert same(T.to_host(T.to_device(h)), h)  # (the staged path would call None.copy)


@needs_parcopy
def test_results_in_new_memory_go_to_the_workers_unless_told(staged, monkeypatch):
    T._configure(d2h_direct_max=0, pin_results_min=0)  # every result from the kept-memory allocator, never pinned
    h = random_array((200_000,), np.float64, np.random.default_rng(14))
    d = T.to_device(h)
    used = []
    real = T._d2h_staged
    monkeypatch.setattr(T, "_d2h_staged", lambda *a: used.append(1) or real(*a))
    T._hostmem.results.release()
    assert same(T.to_host(d), h) and used == []  # new memory: the workers
    assert same(T.to_host(d), h) and used == [1]  # the kept block of the result just dropped
    T._hostmem.results.release()
    T._configure(staged_fresh=1)
    assert same(T.to_host(d), h) and used == [1, 1]


def test_results_from_four_mib_take_kept_blocks_below_the_direct_size_while_pinned_on_reuse(fake, monkeypatch):
    # Which results are kept must not hang on where calibration ends the driver's direct path.
    T._configure(d2h_direct_max=64 * MiB, pin_results_min=1 * MiB, pin_after_copies=2)
    T._hostmem.results.release()
    rng = np.random.default_rng(15)
    small = random_array((T.KEPT_RESULTS_MIN // 8 - 1,), np.float64, rng)  # just below: plain memory
    big = random_array((T.KEPT_RESULTS_MIN // 8,), np.float64, rng)
    ds, db = T.to_device(small), T.to_device(big)
    r = T.to_host(ds)
    assert same(r, small) and r.flags.owndata
    addresses = []
    for _ in range(3):  # a loop's results: the same kept block, pinned once handed out again
        r = T.to_host(db)
        assert same(r, big) and not r.flags.owndata and isinstance(r.base, T._hostmem._Lease)
        addresses.append(r.ctypes.data)
        del r
    assert len(set(addresses)) == 1 and T._hostmem.results.info()["pinned_blocks"] >= 1
    T._hostmem.results.release()
    T._configure(pin_results_min=0)  # pinning off: only above the direct size, as before
    r = T.to_host(db)
    assert same(r, big) and r.flags.owndata
    with T.unpinned_copies():  # a first copy, as benchmarks time it: plain memory
        T._configure(pin_results_min=1 * MiB)
        assert T.to_host(db).flags.owndata
    monkeypatch.setenv("AUTOOFFLOAD_PIN", "0")  # the user's way out of pinning: no kept blocks below the direct size
    T._configure(pin_results_min=2 * MiB)
    r = T.to_host(db)
    assert same(r, big) and r.flags.owndata


# ---------------------------------------------------------------------------------------------
# Pinning the caller's memory in place (cudaHostRegister), issue 14
# ---------------------------------------------------------------------------------------------
# Pinning on reuse off: these tests count the ranges the register path pins and unpins by itself
# (kept result blocks, pinned from 1 MiB by default, stay pinned while kept).
REGISTER_TUNINGS = {"whole": dict(h2d_register_min=1, d2h_register_min=1, pin_results_min=0, pin_reused_min=0),
                    "pieces": dict(h2d_register_min=1, d2h_register_min=1, register_chunk_bytes=16 * 1024,
                                   pin_results_min=0, pin_reused_min=0)}


@pytest.mark.parametrize("how", list(REGISTER_TUNINGS))
@pytest.mark.parametrize("dtype", [np.float64, np.int8, np.complex64, np.bool_])
def test_register_round_trips_every_layout(fake, how, dtype):
    T._configure(**REGISTER_TUNINGS[how])
    rng = np.random.default_rng(11)
    for name, h, expect in layouts(rng, dtype, big=True):
        d = T.to_device(h)
        assert same(d.get(), h), name
        back = T.to_host(d)
        _check_layout(back, expect)
        assert same(back, h), name
        out = np.zeros_like(h)
        assert T.to_host(d, out=out) is out and same(out, h), name
    assert fake.n_registered > 0 and not fake.registered, "every pinned range is unpinned"


@pytest.mark.parametrize("direction", ["h2d", "d2h"])
@pytest.mark.parametrize("at", [1, 3])
def test_register_failure_mid_copy_unpins_what_it_pinned(fake, direction, at):
    T._configure(**REGISTER_TUNINGS["pieces"])
    rng = np.random.default_rng(12)
    h = random_array((100_000,), np.float64, rng)
    before = h.copy()
    _copy_failing_at(fake, h, direction, at)
    assert not fake.registered and same(h, before)
    assert same(T.to_host(T.to_device(h)), h)


def test_register_falls_back_to_the_driver_where_pages_are_pinned_already(fake):
    """Another thread pinning an overlapping array: those pieces go by the driver's copy."""
    T._configure(**REGISTER_TUNINGS["pieces"])
    rng = np.random.default_rng(13)
    h = random_array((100_000,), np.float64, rng)
    fake.cuda.runtime.hostRegister(h.ctypes.data + 40_000, 8, 0)  # a range inside h, held elsewhere
    try:
        assert same(T.to_device(h).get(), h)
        assert same(T.to_host(T.to_device(h)), h)
    finally:
        fake.cuda.runtime.hostUnregister(h.ctypes.data + 40_000)
    assert not fake.registered


def test_register_from_many_threads_at_once(fake):
    T._configure(**REGISTER_TUNINGS["pieces"])
    shared = random_array((200_000,), np.float64, np.random.default_rng(14))
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(4):
                h = shared if seed % 2 else random_array((int(rng.integers(1000, 100_000)),), np.float64, rng)
                assert same(T.to_host(T.to_device(h)), h)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    _in_threads(worker, 6)
    assert not errors, errors
    assert not fake.registered


def test_a_copy_planned_before_a_tuning_change_gets_buffers_of_its_own_size(fake):
    """apply_tuning from another thread mid-copy: a copy that planned with 64 KiB chunks never
    gets the new, smaller buffers (its pool is kept apart until the next release)."""
    old = T._tuning()
    T._configure(chunk_bytes=16 * 1024, min_chunk_bytes=16 * 1024)
    pool = T._get_pool(old)
    assert pool.buffer_bytes == old.chunk_bytes and T._get_pool().buffer_bytes == 16 * 1024
    assert T._get_pool(old) is pool
    T.release_pinned_pool()
    assert not fake.pinned


# ---------------------------------------------------------------------------------------------
# The caller's arrays pinned on reuse (_pincache.py): owners of 4 KiB or more, copies counted
# from 4 KiB; the fake refuses a DMA that starts in a registration and runs past it, as the driver
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def pin_reused(fake, monkeypatch):
    monkeypatch.setattr(T._pincache, "COUNT_MIN_BYTES", 4096)
    T._configure(pin_reused_min=4096, pin_results_min=0)
    yield fake
    T._pincache.cache.release()
    assert not fake.registered, "pinned memory outlived the test"
    assert T._pincache.cache.info()["active"] == 0


def _pin(h):
    for _ in range(2):
        T.to_device(h)
    assert T.pinned(h)


@pytest.mark.parametrize("dtype", [np.float64, np.int8, np.complex64, np.bool_, np.float16])
def test_reused_arrays_are_pinned_and_every_layout_round_trips_bit_exact(pin_reused, dtype):
    rng = np.random.default_rng(21)
    for name, h, expect in layouts(rng, dtype, big=True):
        for attempt in range(3):  # counted, pinned, copied pinned
            d = T.to_device(h)
            assert same(d.get(), h), (name, attempt)
            out = np.zeros_like(h)
            assert T.to_host(d, out=out) is out and same(out, h), (name, attempt)
            back = T.to_host(d)
            _check_layout(back, expect)
            assert same(back, h), (name, attempt)
        owner = T._pincache.owner_of(h)
        counted = (h.flags.c_contiguous or h.flags.f_contiguous) and h.nbytes >= 4096
        if counted and owner is not None and 3 * h.nbytes >= 2 * owner.nbytes:
            assert T.pinned(h), f"{name}: copies moved twice its memory's bytes: pinned"
        elif not (h.flags.c_contiguous or h.flags.f_contiguous):
            assert not T.pinned(h), f"{name}: a strided array's copies are staged"
    assert T._pincache.cache.info()["pinned_bytes"] == sum(pin_reused.registered.values())


def test_a_kept_result_copied_again_is_pinned_at_the_copy_pin_after_names(fake):
    """The pin-down cache stops at a result's lease (_pincache.owner_of), so a result the program
    keeps and copies back in is counted by its pool instead: pinned at the copy that brings the
    bytes moved to pin_after times its size (the copy that made it included), then one DMA a
    copy. Not with result pinning off, nor inside unpinned_copies."""
    T._configure(pin_results_min=1 << 20, pin_after_copies=2)
    T._hostmem.results.release()
    h = random_array((300_000,), np.float64, np.random.default_rng(23))  # 2.4 MB: a kept block
    r = T.to_host(T.to_device(h))
    assert type(r.base).__name__ == "_Lease" and not T.pinned(r)
    with T.unpinned_copies():
        assert same(T.to_device(r).get(), h)
    assert not T.pinned(r)  # not counted there
    d = T.to_device(r)  # the second copy of its bytes: pinned, and this copy is one DMA
    assert same(d.get(), h) and T.pinned(r) and fake.memcpys[-1] == (T._H2D, r.nbytes)
    view = r[1000:200_000]  # a part of it, through a view: one DMA from the pinned block
    assert same(T.to_device(view).get(), h[1000:200_000]) and fake.memcpys[-1] == (T._H2D, view.nbytes)
    out = T.to_host(T.to_device(h[::-1].copy()), out=r)
    assert out is r and same(r, h[::-1]) and fake.memcpys[-1] == (T._D2H, r.nbytes)
    del r, view, out
    T._configure(pin_results_min=0)  # pinning of results off: counted no more
    r = T.to_host(T.to_device(h))
    for _ in range(3):
        T.to_device(r)
    assert not T.pinned(r)
    del r
    T._hostmem.results.release()
    T._pincache.cache.release()  # h itself, copied in again and again
    assert not fake.registered, "a kept block stayed pinned after release"


def test_a_kept_result_refused_pinning_is_not_tried_again_while_held(fake):
    T._configure(pin_results_min=1 << 20, pin_after_copies=2)
    pool = T._hostmem.results
    pool.release()
    h = random_array((300_000,), np.float64, np.random.default_rng(24))
    r = T.to_host(T.to_device(h))
    block = r.base._block
    fake.registered[block.ctypes.data] = block.nbytes  # registered by someone else: the pin is refused
    attempts = []
    real = pool._pin
    pool._pin = lambda address, n: attempts.append(address) or real(address, n)
    try:
        for _ in range(5):
            assert same(T.to_device(r).get(), h)
    finally:
        pool._pin = real
        del fake.registered[block.ctypes.data]
    assert len(attempts) == 1 and not T.pinned(r)
    del r
    pool.release()
    T._pincache.cache.release()


def test_a_copy_of_a_kept_result_being_pinned_by_another_thread_is_staged(fake):
    """While one thread registers a result's block, another thread's copy of it must not be one
    DMA: the registration may still fail (here: a piece of it pinned in place by a third copy,
    with the register path on), and a DMA over unregistered memory crossing that piece's edge is
    refused by the driver (found in review)."""
    T._configure(pin_results_min=1 << 20, pin_after_copies=2, h2d_register_min=1 << 20, register_chunk_bytes=1 << 20)
    pool = T._hostmem.results
    pool.release()
    h = random_array((600_000,), np.float64, np.random.default_rng(25))
    r = T.to_host(T.to_device(h))
    block = r.base._block.ctypes.data
    piece = T.plan_contiguous(block, r.nbytes, 1 << 20)[0]
    fake.registered[block + piece.offset] = piece.nbytes  # a third copy's piece, pinned in place now
    go, entered = threading.Event(), threading.Event()
    real = pool._pin
    pool._pin = lambda address, n: (entered.set(), go.wait(), real(address, n))[2]
    results = {}
    pinning = threading.Thread(target=lambda: results.setdefault("pinning", T.to_device(r)))
    pinning.start()
    entered.wait()
    try:
        assert same(T.to_device(r).get(), h)  # staged meanwhile
    finally:
        go.set()
        pinning.join()
        pool._pin = real
        del fake.registered[block + piece.offset]
    assert same(results["pinning"].get(), h) and not T.pinned(r)  # its pin refused: the piece overlaps
    del r
    pool.release()
    T._pincache.cache.release()


def test_a_pinned_copy_is_one_dma_and_uses_no_staging_buffer(pin_reused, monkeypatch):
    fake = pin_reused
    h = random_array((300_000,), np.float64, np.random.default_rng(22))
    _pin(h)
    out = np.zeros_like(h)
    T.to_host(T.to_device(h), out=out)
    T.to_host(T.to_device(h), out=out)  # out pinned too now
    assert T.pinned(out)

    def no_pool(*a, **k):
        raise AssertionError("a pinned copy took a staging buffer")

    monkeypatch.setattr(T, "_get_pool", no_pool)
    start = len(fake.memcpys)
    d = T.to_device(h)
    out[...] = 0.5
    T.to_host(d, out=out)
    assert fake.memcpys[start:] == [(1, h.nbytes), (2, h.nbytes)]
    assert same(d.get(), h) and same(out, h)


def test_chunks_and_views_of_a_pinned_array_copy_from_its_registration(pin_reused):
    fake = pin_reused
    h = random_array((400, 1000), np.float64, np.random.default_rng(23))
    _pin(h)
    registered = dict(fake.registered)
    for start in range(0, 400, 37):  # a streamed call's row chunks, copied in and written back
        part = h[start:start + 37]
        d = T.to_device(part)
        assert same(d.get(), part)
        target = np.zeros_like(part)
        T.to_host(d, out=target)
        assert same(target, part)
        T.to_host(d, out=h[start:start + 37])  # in place, as a streamed write-back
    assert fake.registered == registered


@pytest.mark.parametrize("wrap", ["as_strided", "memoryview"])
@pytest.mark.parametrize("direct", [False, True])
def test_views_the_base_chain_hides_copy_safely_from_pinned_memory(pin_reused, wrap, direct):
    """Review finding: an array over a pinned array's memory whose base chain does not end at it
    (as_strided, memoryview) must never reach the driver as a DMA across a registration's edge."""
    from numpy.lib.stride_tricks import as_strided

    if direct:
        T._configure(h2d_direct_max=1 << 30, d2h_direct_max=1 << 30)
    h = random_array((400_000,), np.float64, np.random.default_rng(24))
    _pin(h)
    part = h[5000:25_000]
    other = as_strided(part) if wrap == "as_strided" else np.asarray(memoryview(part))
    assert other.flags.c_contiguous and np.shares_memory(other, h)
    for _ in range(3):
        d = T.to_device(other)
        assert same(d.get(), part)
        T.to_host(T.to_device(part.copy() * 2), out=other)
        assert same(part, other)


def test_small_copies_skip_the_caches_layers_unless_they_may_lie_in_pinned_memory(pin_reused, monkeypatch):
    """_small_direct: below the cache's counting size and with nothing pinned in place, the
    driver's copy without _pinned_copy's layers; once an array is pinned, a small view of it
    goes through the cache again (it must not reach the driver as a plain pageable copy), while
    a small array owning its memory still skips it (the cache never pins such an owner)."""
    fake = pin_reused
    T._configure(h2d_direct_max=1 << 20, d2h_direct_max=1 << 20)
    asked = []
    real = T._pinned_copy
    monkeypatch.setattr(T, "_pinned_copy", lambda *a: asked.append(a[1]) or real(*a))
    small = random_array((300,), np.float64, np.random.default_rng(25))  # 2400 B, below 4096
    out = np.zeros_like(small)
    T.to_host(T.to_device(small), out=out)
    assert same(out, small) and asked == [] and fake.registered == {}
    h = random_array((100_000,), np.float64, np.random.default_rng(26))
    _pin(h)
    asked.clear()
    view = h[1000:1300]
    before = view.copy()
    d = T.to_device(view)
    T.to_host(T.to_device(small), out=view)  # (not asked for the unrelated small array)
    assert same(d.get(), before) and same(view, small) and asked == [1, 2]
    asked.clear()
    assert same(T.to_host(T.to_device(small)), small) and asked == []


def test_pinned_memory_is_unpinned_when_its_array_dies(pin_reused):
    fake = pin_reused
    h = random_array((200_000,), np.float64, np.random.default_rng(25))
    for _ in range(3):
        T.to_device(h[1000:])
    assert fake.registered
    del h
    import gc

    gc.collect()
    assert not fake.registered and T._pincache.cache.info()["pinned_bytes"] == 0


def test_unpinned_copies_pin_nothing_and_stage_pinned_memory(pin_reused):
    fake = pin_reused
    h = random_array((200_000,), np.float64, np.random.default_rng(26))
    with T.unpinned_copies():
        for _ in range(3):
            d = T.to_device(h)
            assert same(T.to_host(d), h)
    assert not fake.registered
    _pin(h)
    start = len(fake.memcpys)
    with T.unpinned_copies():
        assert same(T.to_device(h).get(), h)
    assert (1, h.nbytes) not in fake.memcpys[start:], "staged, in pieces, not one DMA"


@pytest.mark.parametrize("direction", ["h2d", "d2h"])
def test_failure_mid_pinned_copy_lets_the_array_go(pin_reused, direction):
    fake = pin_reused
    h = random_array((200_000,), np.float64, np.random.default_rng(27))
    before = h.copy()
    for _ in range(2):
        T.to_host(T.to_device(h), out=h)  # pinned both ways
    assert T.pinned(h) and same(h, before)
    _copy_failing_at(fake, h, direction, 1)
    assert same(h, before) or direction == "d2h"
    T._pincache.cache.release()  # were it still held by the failed copy, it would stay pinned
    assert not fake.registered
    assert same(T.to_host(T.to_device(before)), before)


def test_memory_pinned_elsewhere_is_staged(pin_reused):
    """Memory the caller pinned itself: the driver refuses our registration, the copies stage."""
    fake = pin_reused
    h = random_array((100_000,), np.float64, np.random.default_rng(28))
    fake.cuda.runtime.hostRegister(h.ctypes.data + 8192, 4096, 0)
    try:
        for _ in range(4):
            assert same(T.to_host(T.to_device(h)), h)
        assert not T.pinned(h)
    finally:
        fake.cuda.runtime.hostUnregister(h.ctypes.data + 8192)


def test_small_copies_of_a_pinned_array_are_dmas_from_it(pin_reused):
    fake = pin_reused
    T._configure(h2d_direct_max=1 << 30, d2h_direct_max=1 << 30)
    h = random_array((400_000,), np.float64, np.random.default_rng(29))
    _pin(h)
    out = np.zeros_like(h)
    for lo in range(0, h.size, 311):  # 2.5 KB pieces: not counted, copied from the registration
        part = h[lo:lo + 311]
        d = T.to_device(part)
        assert same(d.get(), part), lo
        T.to_host(d, out=out[lo:lo + 311])
    assert same(out, h)


def test_pinned_copies_from_many_threads_at_once(pin_reused):
    fake = pin_reused
    T._configure(h2d_direct_max=64 * 1024, d2h_direct_max=64 * 1024)  # small pieces go to the driver
    shared = random_array((300_000,), np.float64, np.random.default_rng(30))
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(8):
                lo = int(rng.integers(0, 200_000))
                part = shared[lo:lo + int(rng.integers(1000, 100_000))]
                d = T.to_device(part)
                assert same(d.get(), part)
                out = np.empty_like(part)
                assert same(T.to_host(d, out=out), part)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    _in_threads(worker, 8)
    assert not errors, errors
    assert T.pinned(shared), "the shared array was copied far more than twice its bytes"
    assert T._pincache.cache.info()["pinned_bytes"] == sum(fake.registered.values())


def test_pinned_says_whether_an_arrays_memory_is_pinned(pin_reused):
    h = random_array((300, 1000), np.float64, np.random.default_rng(31))
    f = np.asfortranarray(random_array((300, 1000), np.float64, np.random.default_rng(32)))
    assert not T.pinned(h) and not T.pinned(f)
    _pin(h)
    _pin(f)
    assert T.pinned(h[10:200])
    assert not T.pinned(h[:, ::2])  # strided: its copies are staged
    assert not T.pinned(np.ones_like(h))
    T._pincache.cache.release()
    assert not T.pinned(h)


@pytest.mark.parametrize("path", ["pinned", "direct"])
def test_copies_from_pinned_memory_are_done_when_they_return(pin_reused, path):
    """From pinned memory the driver's DMAs are asynchronous (the fake defers them to the next
    synchronize, as the driver does): to_device may return only once the source was read, since
    the caller may change it right after, and to_host only once the data is there. "pinned": the
    cache's own DMA; "direct": the driver's direct copy of a pinned array, as inside
    unpinned_copies or when another thread pinned it after this copy looked (review finding)."""
    T._configure(h2d_direct_max=1 << 30, d2h_direct_max=1 << 30)
    h = random_array((200_000,), np.float64, np.random.default_rng(33))
    before = h.copy()
    _pin(h)
    out = np.zeros_like(h)
    for _ in range(3):
        T.to_host(T.to_device(h), out=out)
    assert T.pinned(out)
    context = T.unpinned_copies() if path == "direct" else contextlib.nullcontext()
    with context:
        d = T.to_device(h)
        h[...] = -1.0  # the caller changes its array as soon as the copy returned
        out[...] = 0.0
        T.to_host(d, out=out)
        assert same(out, before), "a DMA was still pending when the copy returned"


@contextlib.contextmanager
def _release_under_way(cache, monkeypatch):
    """Another thread's release() of the cache, held inside its first unregister call: the
    arrays it claimed are being unpinned for as long as the block runs."""
    claimed, go = threading.Event(), threading.Event()
    real_unpin = cache._unpin

    def unpin(address):
        claimed.set()
        go.wait(5)
        real_unpin(address)

    monkeypatch.setattr(cache, "_unpin", unpin)
    releaser = threading.Thread(target=cache.release)
    releaser.start()
    try:
        assert claimed.wait(5)
        yield
    finally:
        go.set()
        releaser.join(5)


def test_a_copy_while_another_thread_unpins_is_staged_and_done_when_it_returns(pin_reused, monkeypatch):
    """Review finding: another thread claimed the array for unpinning (release) and has not
    finished; a copy meanwhile must not be the driver's direct one (asynchronous from memory
    still registered, and unregistered under it): it is staged, and done when it returns."""
    fake = pin_reused
    T._configure(h2d_direct_max=1 << 30, d2h_direct_max=1 << 30)
    cache = T._pincache.cache
    h = random_array((200_000,), np.float64, np.random.default_rng(34))
    before = h.copy()
    _pin(h)
    with _release_under_way(cache, monkeypatch):
        start = len(fake.memcpys)
        d = T.to_device(h)  # while the release has claimed it: staged, not one DMA
        assert (1, h.nbytes) not in fake.memcpys[start:]
        small = T.to_device(h[:200])  # too small to count: staged too, not the driver's copy
        h[...] = -1.0
        assert same(small.get(), before[:200]), "a deferred DMA from registered memory"
        fake.flush(None)
        assert same(d.get(), before)
    assert not T.pinned(h)


def test_a_direct_copy_waits_when_a_pin_or_unpin_began_while_it_was_issued(pin_reused, monkeypatch):
    """_h2d_direct's generation check: memory registered when the driver's copy was issued (the
    DMA is then asynchronous) and unregistered before the copy looked at ``active``: it must
    still wait, since the caller may change its array right after."""
    fake = pin_reused
    T._configure(h2d_direct_max=1 << 30, d2h_direct_max=1 << 30)
    cache = T._pincache.cache
    h = random_array((20_000,), np.float64, np.random.default_rng(35))  # never pinned by the cache
    before = h.copy()
    rt = fake.cuda.runtime
    real = rt.memcpyAsync

    def memcpy_then_unpinned_elsewhere(*a):
        rt.hostRegister(h.ctypes.data, h.nbytes, 0)  # pinned at the moment of the copy...
        real(*a)  # ...so the DMA is deferred, as the driver's asynchronous one
        rt.hostUnregister(h.ctypes.data)  # ...and unpinned by the time the copy looks
        cache.generation += 1  # what the cache does when it pins or claims an array

    monkeypatch.setattr(rt, "memcpyAsync", staticmethod(memcpy_then_unpinned_elsewhere))
    with T.unpinned_copies():  # the driver's direct path, whatever the cache knows
        d = T.to_device(h)
    monkeypatch.setattr(rt, "memcpyAsync", staticmethod(real))
    assert cache.active == 0
    h[...] = -1.0
    fake.flush(None)
    assert same(d.get(), before)


def test_an_array_pinned_under_a_lower_threshold_is_still_waited_for(pin_reused):
    """Review finding: a profile's tuning may raise pin_reused_min while arrays pinned under the
    old one stay pinned; their copies, no longer the cache's, are the driver's direct ones from
    registered memory (asynchronous) and must still be waited for."""
    fake = pin_reused
    T._configure(h2d_direct_max=1 << 30, d2h_direct_max=1 << 30)
    h = random_array((200_000,), np.float64, np.random.default_rng(36))
    before = h.copy()
    _pin(h)
    T._pincache.cache.configure(T._pin_host, T._unpin_host, 1 << 30)  # what a new tuning does
    assert T.pinned(h)
    d = T.to_device(h[:1000])
    h[...] = -1.0
    fake.flush(None)
    assert same(d.get(), before[:1000])


@pytest.mark.parametrize("small", [False, True])
def test_with_no_pinned_memory_to_stage_through_an_array_in_transition_is_still_safe(pin_reused, monkeypatch, small):
    """Review finding: an array another thread is unpinning, and no pinned staging buffer to be
    had (cudaHostAlloc fails): the fallback copies from a copy of its own, never the driver's
    asynchronous copy of memory being unregistered."""
    fake = pin_reused
    T._configure(h2d_direct_max=1 << 30, d2h_direct_max=1 << 30)
    cache = T._pincache.cache
    h = random_array((200_000,), np.float64, np.random.default_rng(37))
    before = h.copy()
    _pin(h)
    T.release_pinned_pool(keep_results=True)  # no pinned staging buffers exist
    _no_pinned_memory(fake, monkeypatch)
    with _release_under_way(cache, monkeypatch):
        src = h[:200] if small else h
        d = T.to_device(src)
        h[...] = -1.0
        fake.flush(None)
        assert same(d.get(), before[:src.size])


def test_an_array_pinned_under_a_lower_threshold_and_being_unpinned_is_staged(pin_reused, monkeypatch):
    """Review finding: after a new tuning raised pin_reused_min, an array the cache pinned is no
    longer its to copy; while another thread unpins it, its copy is staged all the same."""
    fake = pin_reused
    T._configure(h2d_direct_max=1 << 30, d2h_direct_max=1 << 30)
    cache = T._pincache.cache
    h = random_array((200_000,), np.float64, np.random.default_rng(38))
    _pin(h)
    cache.configure(T._pin_host, T._unpin_host, 1 << 30)
    with _release_under_way(cache, monkeypatch):
        start = len(fake.memcpys)
        assert same(T.to_device(h).get(), h)
        assert (1, h.nbytes) not in fake.memcpys[start:]


@pytest.mark.parametrize("layout", ["F", "strided"])
def test_the_fallback_for_memory_in_transition_keeps_every_layout(pin_reused, monkeypatch, layout):
    fake = pin_reused
    T._configure(h2d_direct_max=1 << 30, d2h_direct_max=1 << 30)
    cache = T._pincache.cache
    base = np.asfortranarray(random_array((400, 500), np.float64, np.random.default_rng(39)))
    src = base if layout == "F" else base[:, ::2]
    before = src.copy()
    _pin(base)
    T.release_pinned_pool(keep_results=True)  # no pinned staging buffers exist
    _no_pinned_memory(fake, monkeypatch)
    with _release_under_way(cache, monkeypatch):
        d = T.to_device(src)
        base[...] = -1.0
        fake.flush(None)
        assert same(d.get(), before)


def test_held_pinned_memory_stays_pinned_for_queued_copies_until_the_block_ends(pin_reused):
    """The streamed pipeline's queued copies in (_stream.run): held_pinned holds the owners it
    answers True for, for the whole block, so a release meanwhile leaves them pinned; a queued
    copy is one DMA the block's user waits for (the fake driver runs it at the synchronize);
    memory that is not pinned, strided or byte-swapped is answered False, with nothing held for
    it, and the others of the same call are held all the same."""
    fake = pin_reused
    cache = T._pincache.cache
    rng = np.random.default_rng(35)
    h, g = random_array((200_000,), np.float64, rng), random_array((300, 400), np.float64, rng)
    before_h, before_g = h.copy(), g.copy()
    _pin(h)
    _pin(g)
    with T.held_pinned([h, g]) as held:
        assert held == [True, True]
        cache.release()  # another thread's release: held owners are not unpinned
        assert T.pinned(h) and T.pinned(g)
        start = len(fake.memcpys)
        d1, d2 = T.to_device_queued(h[50_000:150_000]), T.to_device_queued(g[100:200])
        assert fake.memcpys[start:] == [(1, 800_000), (1, 320_000)], "one DMA each"
        fake.flush(None)  # the pipeline's synchronize
        assert same(d1.get(), before_h[50_000:150_000]) and same(d2.get(), before_g[100:200])
        with pytest.raises(ValueError, match="contiguous"):
            T.to_device_queued(g[:, ::2])
    assert cache.info()["active"] == 2
    cache.release()
    assert not T.pinned(h) and not T.pinned(g), "the holds ended with the block"
    fresh = random_array((200_000,), np.float64, rng)
    for refused in ([h], [fresh], [g[:, ::2]], [g.astype(">f8")]):
        with T.held_pinned(refused) as held:
            assert held == [False]
        assert cache.info()["active"] == 0, "nothing is held after a refusal"
    _pin(h)
    with T.unpinned_copies(), T.held_pinned([h]) as held:
        assert held == [False]
    with T.held_pinned([fresh, h]) as held:  # fresh refused, h held all the same
        assert held == [False, True]
        cache.release()
        assert T.pinned(h)
    cache.release()
    assert not T.pinned(h)


# -- the streamed pipeline (_stream.run) on the engine over the fake CuPy: queued copies in ------
def _stream_on_fake_engine(fake, monkeypatch, to_host_gate=None):
    """(_stream, a backend of the engine on the fake CuPy with per-thread current streams,
    a list that gets, each time an owner's last hold ends, whether DMAs were still queued)."""
    from autooffload import _stream

    tls = threading.local()
    made = []

    class Stream(type(fake.cuda.Stream())):
        def __init__(self, non_blocking=False):
            self.ptr = 5000 + len(made)
            made.append(self)

        def __enter__(self):
            tls.__dict__.setdefault("stack", []).append(self)
            return self

        def __exit__(self, *exc):
            tls.stack.pop()
            return False

    default = fake.current_stream
    fake.cuda.Stream = Stream
    fake.cuda.get_current_stream = staticmethod(lambda: (getattr(tls, "stack", None) or [default])[-1])
    fake.cuda.Device = lambda i=0: _Device()
    monkeypatch.setattr(_stream, "_STREAMS", {})
    releases: list[bool] = []
    real_release = T._pincache.Hold.release

    def release(self):
        if self.entry.holds == 1:  # the owner's last hold ends
            releases.append(any(fake.queued.values()))
        real_release(self)

    monkeypatch.setattr(T._pincache.Hold, "release", release)

    class Backend:
        xp = type("xp", (), {"cuda": fake.cuda})
        to_device = staticmethod(T.to_device)
        held_pinned = staticmethod(T.held_pinned)
        to_device_queued = staticmethod(T.to_device_queued)

        @staticmethod
        def to_host(dev, out=None):
            if to_host_gate is not None:
                to_host_gate.wait()
            return T.to_host(dev, out=out)

    return _stream, Backend(), releases


def test_the_pipeline_waits_for_its_queued_copies_before_its_holds_end(pin_reused, monkeypatch):
    """Review finding (the fake device has no streams, so no other test saw it): the pipeline's
    copies in from held memory are queued, not waited for; its holds may end only after every
    stream is synchronized (the fake driver runs a queued DMA at its stream's synchronize)."""
    fake = pin_reused
    _stream, backend, releases = _stream_on_fake_engine(fake, monkeypatch)
    h = np.arange(200_000, dtype=np.float64)
    _pin(h)
    plan = _stream.Plan("elements", 0, h.size, 20_000, h.shape, "C", (_stream.Operand(0, True, 0),), ())
    seen = []
    _stream.run(plan, backend, lambda a, k: seen.append(a[0]) and None, (h,), {}, lambda a, k: None)
    assert len(seen) == 10 and releases, "the queued path ran, under one hold"
    assert not any(releases), "a hold ended while queued DMAs from its memory were still pending"


def _three_written_chunks(_stream):
    """A pinned array of three chunks and a plan that writes each chunk back into it."""
    h = np.arange(60_000, dtype=np.float64)
    _pin(h)
    return h, _stream.Plan("elements", 0, h.size, 20_000, h.shape, "C", (_stream.Operand(0, True, 0),), (0,))


@pytest.mark.parametrize("work_on_device", [False, True])
def test_ctrl_c_while_the_pipeline_drains_still_waits_for_every_copy(pin_reused, monkeypatch, work_on_device):
    """Review finding: Ctrl-C while the calling thread waits for the last chunks skipped the
    streams' synchronize and left the unloader writing into the caller's array after the
    interrupt reached the caller. Now the interrupt is raised once everything is waited for."""
    import signal

    fake = pin_reused
    gate = threading.Event()
    _stream, backend, releases = _stream_on_fake_engine(fake, monkeypatch, to_host_gate=gate)
    h, plan = _three_written_chunks(_stream)
    calls = []

    def negate(a, k):  # the 'kernel', in stream order after the chunk's copy in
        calls.append(1)
        fake.flush(fake.cuda.get_current_stream().ptr)
        a[0]._a *= -1

    def interrupt_when_all_queued():
        while len(calls) < 3:
            time.sleep(0.01)
        time.sleep(0.3)  # the calling thread waits for the unloader now
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(0.3)
        gate.set()  # the unloader goes on: a run that waits for it returns after this

    threading.Thread(target=interrupt_when_all_queued, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        _stream.run(plan, backend, negate if work_on_device else (lambda a, k: calls.append(1)), (h,), {},
                    lambda a, k: None)
    pending_at_raise = any(fake.queued.values())
    before = h.copy()
    time.sleep(0.6)
    if not work_on_device:
        assert not pending_at_raise and not any(releases), "the hold ended with queued DMAs pending"
    assert np.array_equal(h, before), "the unloader kept writing into the caller's array after Ctrl-C"


def test_ctrl_c_during_the_drain_wins_over_a_failure_at_a_later_chunk(pin_reused, monkeypatch):
    """Second review finding: a device error at chunk 1, then Ctrl-C while the pipeline waits for
    chunk 0's copy out. The interrupt was dropped and the rest of the call ran on NumPy."""
    import signal

    fake = pin_reused
    gate = threading.Event()
    _stream, backend, _ = _stream_on_fake_engine(fake, monkeypatch, to_host_gate=gate)
    h, plan = _three_written_chunks(_stream)
    calls, host_calls = [], []

    def call(a, k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device error at chunk 1")

    def interrupt():
        while len(calls) < 2:
            time.sleep(0.01)
        time.sleep(0.3)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(0.3)
        gate.set()

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        _stream.run(plan, backend, call, (h,), {}, lambda a, k: host_calls.append(1))
    assert not host_calls


def test_a_device_error_at_the_drain_of_a_call_with_nothing_to_copy_out_is_raised(pin_reused, monkeypatch):
    """Second review finding: a function with no results and no writes has no copy out to see a
    device error; the drain's synchronize does, and it was dropped (every chunk counted as
    committed). It is raised."""
    fake = pin_reused
    _stream, backend, _ = _stream_on_fake_engine(fake, monkeypatch)
    h = np.arange(60_000, dtype=np.float64)
    _pin(h)
    plan = _stream.Plan("elements", 0, h.size, 20_000, h.shape, "C", (_stream.Operand(0, True, 0),), ())
    failing = type(fake.cuda.Stream())

    def synchronize(self):
        fake.flush(self.ptr)
        if self.ptr >= 5000:  # the pipeline's streams
            raise RuntimeError("cudaErrorIllegalAddress")

    monkeypatch.setattr(failing, "synchronize", synchronize)
    with pytest.raises(RuntimeError, match="IllegalAddress"):
        _stream.run(plan, backend, lambda a, k: None, (h,), {}, lambda a, k: None)


def test_every_hold_is_let_go_even_when_one_release_is_interrupted(pin_reused, monkeypatch):
    """Review finding: Ctrl-C inside one hold's release skipped the others', which kept their
    owners pinned until they died. The interrupt is raised once all are let go."""
    cache = T._pincache.cache
    rng = np.random.default_rng(36)
    arrays = [random_array((100_000,), np.float64, rng) for _ in range(3)]
    for a in arrays:
        _pin(a)
    real = T._pincache.Hold.release
    interrupted = []

    def release(self):
        if not interrupted:
            interrupted.append(1)
            real(self)
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(T._pincache.Hold, "release", release)
    with pytest.raises(KeyboardInterrupt):
        with T.held_pinned(arrays) as held:
            assert held == [True] * 3
    monkeypatch.setattr(T._pincache.Hold, "release", real)
    cache.release()
    assert not any(T.pinned(a) for a in arrays), "a hold outlived the block"
