"""GPU tests of streamed blockwise calls (issue 15): the real CuPy streams, copies and memory.

Marked ``gpu``; skipped where CuPy or a CUDA device is missing.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import cupy_or_skip

pytestmark = pytest.mark.gpu

cp = cupy_or_skip()

from autooffload import _costmodel, _stream, config, offload  # noqa: E402

GiB = 1024**3


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 64 KiB, so that small arrays stream in many chunks."""
    monkeypatch.setattr(_costmodel, "MIN_CHUNK_BYTES", 1024)
    monkeypatch.setattr(_stream, "MIN_CHUNK_BYTES", 1024)
    monkeypatch.setenv("AUTOOFFLOAD_STREAM_CHUNK", str(64 * 1024))


def _run(f, args, mode, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", mode)
    with config(backend="cupy"):
        return f(*args), f.last_decision


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32, np.complex128])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_streamed_equals_unstreamed_on_the_gpu(dtype, layout, small_chunks, monkeypatch):
    rng = np.random.default_rng(3)
    base = (rng.random((600, 90)) * 9 + 1).astype(dtype)
    if dtype == np.complex128:
        base = base + 1j * base[::-1]
    x = {"C": base, "F": np.asfortranarray(base), "strided": base[::2, ::3]}[layout]
    row = x[:1] + 1

    @offload
    def f(a, b):
        return a * 3 + b - (a > 2)

    @offload
    def g(a):
        a *= 3
        a += 1

    whole, d_whole = _run(f, (x, row), "never", monkeypatch)
    streamed, d_streamed = _run(f, (x, row), "always", monkeypatch)
    assert not d_whole.streamed and d_streamed.streamed, (d_whole, d_streamed)
    assert streamed.dtype == whole.dtype and np.array_equal(streamed, whole)
    y1, y2 = x.copy(order="K"), x.copy(order="K")
    _run(g, (y1,), "never", monkeypatch)
    _run(g, (y2,), "always", monkeypatch)
    assert g.last_decision.streamed and np.array_equal(y1, y2)


def test_input_twice_the_free_memory_streams_with_numpys_result(monkeypatch):
    """Most of the card is taken first with one CuPy allocation (``cp.empty`` of all but 4 GiB of
    the free memory, held for the test), so the call's 8.6 GB input is ~2x the free memory: an
    unstreamed run could not even hold its input. It streams, equals NumPy, and beats NumPy."""
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    free, _ = cp.cuda.runtime.memGetInfo()
    leave = 4 * GiB
    if free < leave + GiB:
        pytest.skip("less than 5 GiB free on the device")
    hog = cp.empty(free - leave, dtype=np.uint8)  # noqa: F841 (held: the memory others cannot use)
    try:
        left = cp.cuda.runtime.memGetInfo()[0] + pool.free_bytes()
        n = int(2 * left / 8)  # float64: twice the free memory
        x = np.empty(n)
        x[...] = 0.75
        x[::3] = 1.5
        ref = x.copy()

        @offload
        def chain(a):
            a *= 5
            a *= a
            a += a

        monkeypatch.setenv("AUTOOFFLOAD_STREAM", "auto")
        t0 = time.perf_counter()
        chain.__wrapped__(ref)
        numpy_s = time.perf_counter() - t0
        with config(backend="cupy"):
            t0 = time.perf_counter()
            chain(x)
            gpu_s = time.perf_counter() - t0
        d = chain.last_decision
        print(f"\n{x.nbytes / GiB:.1f} GiB input, {left / GiB:.1f} GiB free: NumPy {numpy_s:.2f} s, "
              f"streamed {gpu_s:.2f} s ({numpy_s / gpu_s:.2f}x); {d}")
        assert d.backend == "cupy" and d.streamed, d
        assert chain.stats.fallbacks == 0
        assert np.array_equal(x, ref)
        assert gpu_s < numpy_s
    finally:
        del hog
        pool.free_all_blocks()


def test_a_streamed_call_on_pinned_memory_queues_its_copies_and_reports_their_time(monkeypatch):
    """Copies in from pinned memory are queued without a wait (backend.held_pinned); the result
    is exact, and report() charges them the time they kept the link busy: a rate between 2 GB/s
    and twice the H200's 55 GB/s pinned DMA, never the microseconds it took to queue them."""
    import autooffload
    from autooffload import _pincache, _transfer

    n = 32 * 1024 * 1024  # 256 MiB of float64: above pin_reused_min, pinned at its second copy
    x = np.empty(n)
    x[...] = 1.5
    x[::7] = 2.5

    @offload
    def scale_pinned_streamed(a):
        a *= 5

    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    monkeypatch.setenv("AUTOOFFLOAD_STREAM_CHUNK", str(32 * 1024 * 1024))
    # Pinned at the second copy whatever the active profile's pin_after_copies says (resolved
    # first: resolving it applies its copy tuning).
    from autooffload._profiles import active_profile

    active_profile()
    monkeypatch.setattr(_pincache.cache, "pin_after", 2.0)
    queued = []
    real = _transfer.to_device_queued
    monkeypatch.setattr(_transfer, "to_device_queued", lambda h: queued.append(h.nbytes) or real(h))
    expected = x.copy()
    with config(backend="cupy"):
        for _ in range(2):  # copies of twice x's bytes pin it
            scale_pinned_streamed(x)
            expected *= 5
        assert _transfer.pinned(x)
        queued.clear()
        scale_pinned_streamed(x)  # every copy in queued
        expected *= 5
    assert scale_pinned_streamed.last_decision.streamed and np.array_equal(x, expected)
    assert sum(queued) == x.nbytes, queued
    line = next(f for f in autooffload.report().as_dict()["functions"] if f["function"].endswith("scale_pinned_streamed"))
    h2d = line["backends"]["cupy"]["host_to_device"]
    rate = h2d["bytes"] / h2d["seconds"] / 1e9
    assert h2d["bytes"] == 3 * x.nbytes and 2.0 < rate < 110.0, h2d
