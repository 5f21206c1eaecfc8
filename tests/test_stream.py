"""Blockwise functions (issue 15): the verdict (_blockwise.py), streamed runs on the fake device
(_stream.py), data larger than the device's free memory, and the cost model of the pipeline."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from autooffload import _costmodel, _stream, config, explain, offload
from autooffload._blockwise import Verdict, verdict
from autooffload.errors import ConfigError
from conftest import synthetic_profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from suite import black_scholes_call  # noqa: E402

G = np.ones(3)
K = 2.5


def _helper(a):
    return np.sin(a) * K


def _writer(a):
    a += 1


# -- the verdict -------------------------------------------------------------------------------
def f_arith(a, b):
    return (a * 3 - b) / 2 + abs(a) ** 2


def f_where(a, b, c):
    return np.where(a > b, a.astype(np.float32), c), -np.clip(a, 0, 1)


def f_in_place(x):
    x *= 5
    x *= x
    x += x


def f_returns_arg(x):
    x *= 2
    return x


def f_helper(a, b):
    return _helper(a) + b


def f_xp(a, xp=np):
    return xp.exp(a) + math.sqrt(2.0)


PROVEN = [f_arith, f_where, f_in_place, f_returns_arg, f_helper, f_xp, black_scholes_call, np.exp]


@pytest.mark.parametrize("func", PROVEN, ids=lambda f: f.__name__)
def test_elementwise_code_is_proven(func):
    v = verdict(func, None)
    assert v.kind == "elements" and v.source == "proven", v


def test_the_proof_knows_the_writes():
    assert verdict(f_in_place, None).written == frozenset({0})
    assert verdict(f_arith, None).written == frozenset()
    assert "writes in place into x" in verdict(f_in_place, None).reason


def r_sum(a):
    return a.sum()


def r_axis(a):
    return np.sum(a, axis=1)


def r_index(a):
    return a[1:] + 1


def r_shape(a):
    return a + a.shape[0]


def r_branch(a, k):
    if k:
        return a
    return -a


def r_matmul(a, b):
    return a @ b


def r_global_array(a):
    return a + G


def r_where_one(a):
    return np.where(a)


def r_out(a):
    return np.exp(a, out=a)


def r_reduce(a):
    return np.add.reduce(a)


def r_loop(a):
    for _ in range(3):
        a = a + 1
    return a


def r_helper_writes(a):
    return _writer(a)


def r_unknown(a):
    return sorted(a)


def r_comprehension(a):
    return [v + 1 for v in a]


def r_reshape(a):
    return a.reshape(-1)


REFUSED = {
    r_sum: ".sum", r_axis: "sum", r_index: "slicing", r_shape: ".shape", r_branch: "branch",
    r_matmul: "@", r_global_array: "global G is an array", r_where_one: "where() with 1",
    r_out: "out", r_reduce: ".reduce", r_loop: "range", r_helper_writes: "writes into its arguments",
    r_unknown: "sorted", r_comprehension: "comprehension", r_reshape: ".reshape",
}


@pytest.mark.parametrize("func", list(REFUSED), ids=lambda f: f.__name__)
def test_anything_else_is_not_proven_and_says_why(func):
    v = verdict(func, None)
    assert v.kind is None and v.source == "none"
    assert REFUSED[func] in v.reason, v.reason
    assert "blockwise=True" in v.reason


def test_declarations_win_and_bad_ones_are_refused():
    assert verdict(r_sum, True) == Verdict("elements", "declared", verdict(r_sum, True).reason)
    assert verdict(r_axis, "rows").kind == "rows"
    assert verdict(f_arith, False).kind is None and verdict(f_arith, False).source == "declared"
    with pytest.raises(ConfigError, match="True, 'rows', False or None"):
        offload(blockwise="columns")(f_arith)
    assert verdict(f_arith, None) is verdict(f_arith, None)  # cached per function


def test_the_wrapper_carries_its_verdict_and_explain_says_it(fake_gpu):
    f = offload(f_arith)
    assert f.__autooffload_blockwise__ is verdict(f_arith, None)
    g = offload(r_sum, blockwise="rows")
    assert g.__autooffload_blockwise__.kind == "rows"
    d = explain(f, np.ones(10), np.ones(10))
    assert d.blockwise.startswith("blockwise elements (proven)")
    assert explain(offload(r_sum), np.ones(10)).blockwise.startswith("not blockwise (none)")


# -- streamed == unstreamed, bit for bit, on the fake device --------------------------------
@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of ~1 KiB, so that small arrays stream in many chunks."""
    monkeypatch.setattr(_costmodel, "MIN_CHUNK_BYTES", 64)
    monkeypatch.setattr(_stream, "MIN_CHUNK_BYTES", 64)
    monkeypatch.setenv("AUTOOFFLOAD_STREAM_CHUNK", "500")


def _both(f, make_args, monkeypatch):
    """(unstreamed result and args, streamed result and args), each on fresh arguments, forced on the device."""
    out = []
    for mode in ("never", "always"):
        monkeypatch.setenv("AUTOOFFLOAD_STREAM", mode)
        args = make_args()
        with config(backend="cupy"):
            result = f(*args)
        out.append((result, args, f.last_decision))
    assert not out[0][2].streamed and out[1][2].streamed, (out[0][2], out[1][2])
    return out


def _same(a, b):
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is b
    a, b = np.asarray(a), np.asarray(b)
    return (a.shape == b.shape and a.dtype == b.dtype
            and np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)))


DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
          np.float16, np.float32, np.float64, np.complex64, np.complex128]


def _data(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(shape) * 7 + 1  # non-zero, positive
    if np.dtype(dtype).kind == "c":
        a = a + 1j * (rng.random(shape) + 0.5)
    if np.dtype(dtype).kind == "b":
        return rng.random(shape) > 0.5
    return a.astype(dtype)


LAYOUTS = {
    "C": lambda a: a,
    "F": np.asfortranarray,
    "strided": lambda a: a[::2, 1::3],
    "reversed": lambda a: a[::-1],
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_streamed_equals_unstreamed_for_every_dtype_and_layout(dtype, layout, fake_gpu, small_chunks, monkeypatch):
    def make():
        base = LAYOUTS[layout](_data(dtype, (600, 30)))
        return base, base[:1].copy(), (3 if np.dtype(dtype).kind in "iub" else 1.5)

    if np.dtype(dtype).kind == "b":
        f = offload(lambda a, row, k: (a & row) | ~a, blockwise=True)
    else:
        f = offload(lambda a, row, k: a * k + row - (a > row))
    (whole, _, _), (streamed, _, d) = _both(f, make, monkeypatch)
    assert _same(whole, streamed)
    assert streamed.flags.f_contiguous == whole.flags.f_contiguous
    assert d.reason.endswith("chunks")


@pytest.mark.parametrize("dtype", [d for d in DTYPES if np.dtype(d).kind in "iufc"], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_in_place_writes_are_exact(dtype, layout, fake_gpu, small_chunks, monkeypatch):
    def make():
        return (LAYOUTS[layout](_data(dtype, (600, 30), seed=1)),)

    f = offload(f_in_place)
    (r1, (x1,), _), (r2, (x2,), _) = _both(f, make, monkeypatch)
    assert r1 is None and r2 is None
    assert _same(x1, x2)
    ref = make()[0]
    f_in_place(ref)
    assert _same(x2, ref)


def test_a_returned_argument_is_the_callers_array(fake_gpu, small_chunks, monkeypatch):
    f = offload(f_returns_arg)
    (_, _, _), (streamed, (x,), _) = _both(f, lambda: (_data(np.float64, (500,)),), monkeypatch)
    assert streamed is x


def test_tuples_keywords_scalars_and_broadcast_operands(fake_gpu, small_chunks, monkeypatch):
    f = offload(f_where)
    (w, _, _), (s, _, _) = _both(f, lambda: (_data(np.float64, (300, 7)), _data(np.float64, (7,), 2), 0.5), monkeypatch)
    assert _same(w, s)
    g = offload(f_helper)
    (w, _, _), (s, _, _) = _both(g, lambda: (_data(np.float32, (3000,)), np.float32(2)), monkeypatch)
    assert _same(w, s)
    bs = offload(black_scholes_call)
    (w, _, _), (s, _, d) = _both(bs, lambda: (_data(np.float64, (5000,), 3), _data(np.float64, (5000,), 4),
                                              _data(np.float64, (5000,), 5) / 7, 0.01, 0.2), monkeypatch)
    assert _same(w, s)
    fake_gpu.to_device_calls = 0
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    h = offload(lambda a, col: a + col, blockwise=True)
    with config(backend="cupy"):
        h(_data(np.float64, (400, 10)), _data(np.float64, (400, 1)))  # the column splits with the rows
    assert h.last_decision.streamed


def test_broadcast_operands_are_copied_once(fake_gpu, small_chunks, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    f = offload(f_arith)
    a, row = _data(np.float64, (400, 10)), _data(np.float64, (1, 10))
    with config(backend="cupy"):
        r = f(a, row)
    chunks = int(f.last_decision.reason.split("streamed in ")[1].split()[0])
    assert chunks > 3
    assert fake_gpu.to_device_calls == chunks + 1  # a's chunks, and the row once
    assert _same(r, f_arith(a, row))


def test_rows_declared(fake_gpu, small_chunks, monkeypatch):
    f = offload(lambda a: (a * a).sum(axis=1), blockwise="rows")
    (w, _, _), (s, _, _) = _both(f, lambda: (_data(np.float64, (400, 9)),), monkeypatch)
    assert _same(w, s) and s.shape == (400,)


def test_a_broken_promise_is_a_clear_error(fake_gpu, small_chunks, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    f = offload(lambda a: a.sum(), blockwise=True)
    with config(backend="cupy"), pytest.raises(_stream.BlockwiseBroken, match="shaped like the chunk"):
        f(_data(np.float64, (400,)))


def test_what_cannot_stream_runs_whole(fake_gpu, small_chunks, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    f = offload(f_arith)
    a = _data(np.float64, (400, 10))
    with config(backend="cupy"):
        r = f(a, a[:, :1].T[:, :1])  # (1, 1): broadcast, fine
        assert f.last_decision.streamed
        r = f(a, [1.0] * 10)  # a list: not streamed
        assert not f.last_decision.streamed and _same(r, f_arith(a, np.array([1.0] * 10)))
    g = offload(lambda a, b: a.__iadd__(b), blockwise=True)  # declared, may write, read-only input
    ro = _data(np.float64, (400,))
    ro.flags.writeable = False
    plan = _stream.plan(g.__autooffload_blockwise__, g, (ro, ro), {}, 1000, may_write=True)
    assert isinstance(plan, str) and "read-only" in plan
    x = _data(np.float64, (400,))
    plan = _stream.plan(verdict(f_in_place, None), f_in_place, (x,), {}, 1000, may_write=True)
    assert not isinstance(plan, str) and plan.written == (0,)
    plan = _stream.plan(verdict(f_arith, None), f_arith, (x, x[::-1]), {}, 1000, may_write=False)
    assert not isinstance(plan, str) and plan.written == ()
    plan = _stream.plan(verdict(f_returns_arg, None), f_returns_arg, (x,), {}, 10**9, may_write=True)
    assert isinstance(plan, str) and "fewer than" in plan


def test_a_device_failure_at_a_later_chunk_finishes_on_numpy(fake_gpu, small_chunks, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    calls = []

    def flaky(x):
        calls.append(type(x).__name__)
        if len(calls) == 3 and type(x).__name__ == "FakeDeviceArray":
            raise NotImplementedError("the device lacks it")  # a cause the fake device falls back on
        x *= 3
        x += 1

    f = offload(flaky, blockwise=True)
    x = _data(np.float64, (4000,))
    ref = x.copy()
    ref *= 3
    ref += 1
    with config(backend="cupy"):
        f(x)
    assert np.array_equal(x, ref)
    assert "ndarray" in calls  # the rest ran on NumPy


def test_a_device_failure_at_the_first_chunk_falls_back_whole(fake_gpu, small_chunks, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    f = offload(lambda a: np.exp(a) + 1, blockwise=True)
    import fake_device

    fake_device.FAKE_MISSING.add("exp")
    monkeypatch.setattr(fake_device.fake_cupy, "exp", None, raising=False)
    a = _data(np.float64, (4000,))
    with config(backend="cupy"), pytest.warns(Warning):
        r = f(a)
    assert np.array_equal(r, np.exp(a) + 1)


def test_the_functions_own_error_propagates(fake_gpu, small_chunks, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")

    def bad(a):
        raise ValueError("mine")

    f = offload(bad, blockwise=True)
    with config(backend="cupy"), pytest.raises(ValueError, match="mine"):
        f(_data(np.float64, (4000,)))


# -- larger than the device's free memory ---------------------------------------------------
def test_data_larger_than_free_device_memory_streams(fake_gpu, monkeypatch):
    monkeypatch.setattr(_costmodel, "MIN_CHUNK_BYTES", 64)
    monkeypatch.setattr(_stream, "MIN_CHUNK_BYTES", 64)
    fake_gpu.free_bytes = lambda: 20_000  # bytes: the call's 80 KB input is 4x that
    from autooffload import _executor

    monkeypatch.setattr(_executor, "_FITS_WITHOUT_ASKING", 0)  # so small a device is asked at every size
    f = offload(f_in_place)
    x = _data(np.float64, (10_000,))
    ref = x.copy()
    f_in_place(ref)
    with config(backend="cupy"):
        f(x)
    assert f.last_decision.streamed and np.array_equal(x, ref)
    g = offload(r_sum)  # not blockwise: runs whole, as before
    with config(backend="cupy"):
        g(x)
    assert not g.last_decision.streamed


def test_stream_settings_are_checked(monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "sometimes")
    with pytest.raises(ConfigError, match="auto, always or never"):
        _stream.mode()
    monkeypatch.setenv("AUTOOFFLOAD_STREAM_CHUNK", "-3")
    with pytest.raises(ConfigError, match="positive number of bytes"):
        _stream.chunk_override()


# -- the cost model of the pipeline -----------------------------------------------------------
@pytest.fixture
def stream_when_faster(monkeypatch):
    """The pipeline's prediction in the choice (off by default: see _costmodel.STREAM_WHEN_PREDICTED_FASTER)."""
    monkeypatch.setattr(_costmodel, "STREAM_WHEN_PREDICTED_FASTER", True)


def test_by_default_a_call_that_fits_is_not_streamed_even_if_predicted_faster():
    profile = synthetic_profile(gpu_per_byte=2e-11, copy_per_byte=1e-10, copy_floor=1e-5)
    n = 2**30
    req = _costmodel.Request("elementwise", host_bytes=n, largest_bytes=n, gpu_ready=True, blockwise=True)
    assert not _costmodel.predict(profile, req).streamed


@pytest.mark.usefixtures("stream_when_faster")
def test_a_streamed_call_is_predicted_as_its_slowest_stage_plus_fill_and_drain():
    profile = synthetic_profile(gpu_per_byte=2e-11, copy_per_byte=1e-10, copy_floor=1e-5)
    n = 2**30
    whole = _costmodel.predict(profile, _costmodel.Request("elementwise", host_bytes=n, largest_bytes=n, gpu_ready=True))
    piped = _costmodel.predict(profile, _costmodel.Request("elementwise", host_bytes=n, largest_bytes=n,
                                                           gpu_ready=True, blockwise=True))
    chunk = piped.streamed["cupy"]
    k = math.ceil(n / chunk)
    copy = profile.backend("cupy").h2d.predict(n / k)
    parts = piped.parts["cupy"]
    assert parts["pipeline"] == pytest.approx(k * copy)  # the copies are the slowest stage
    assert parts["fill_drain"] == pytest.approx(copy + profile.backend("cupy").kinds["elementwise"].predict(n / k))
    assert piped.seconds["cupy"] < 0.6 * whole.seconds["cupy"]  # in + compute + out, against ~one copy
    assert not _costmodel.predict(profile, _costmodel.Request("elementwise", host_bytes=n, device_bytes=n,
                                                              largest_bytes=n, blockwise=True)).streamed


@pytest.mark.usefixtures("stream_when_faster")
def test_host_crossovers_of_blockwise_work_move_down():
    # NumPy at 1.5e-10 s/B beats copying in and out one after the other (2e-10 s/B), never a
    # pipeline whose copies in and out overlap (~1e-10 s/B).
    profile = synthetic_profile(cpu_per_byte=1.5e-10, gpu_per_byte=2e-11, copy_per_byte=1e-10, copy_floor=1e-5)
    assert _costmodel.crossover(profile, "elementwise", "host") is None
    streamed = _costmodel.crossover(profile, "elementwise", "host", blockwise=True)
    assert streamed is not None and streamed < 2**30


@pytest.mark.usefixtures("stream_when_faster")
def test_the_planner_decides_a_streamed_run(fake_gpu, use_profile, monkeypatch):
    use_profile(synthetic_profile(cpu_per_byte=2.5e-10, gpu_per_byte=2e-11, copy_per_byte=1e-10, copy_floor=1e-5,
                                  cold_start=0.0))
    monkeypatch.setattr(_costmodel, "MIN_CHUNK_BYTES", 1024)
    monkeypatch.setattr(_stream, "MIN_CHUNK_BYTES", 1024)
    f = offload(f_arith)
    a = _data(np.float64, (100_000,))
    from autooffload.backends import cupy as device

    device.mark_gpu_ready()
    d = explain(f, a, a)
    assert d.backend == "cupy" and d.streamed and d.chunk_bytes > 0, d
    r = f(a, a)
    assert f.last_decision.streamed and _same(r, f_arith(a, a))
    assert "streamed in chunks of" in str(f.last_decision)


def test_small_calls_do_not_ask_the_device_for_its_free_memory(fake_gpu, monkeypatch):
    # cudaMemGetInfo on every blockwise GPU call is a cost no small call needs (_executor._FITS_WITHOUT_ASKING).
    asked = []
    fake_gpu.free_bytes = lambda: asked.append(1) or 1 << 40
    f = offload(f_in_place)
    x = _data(np.float64, (10_000,))
    with config(backend="cupy"):
        f(x)
    assert not asked and not f.last_decision.streamed


def test_a_large_call_on_pinned_memory_streams_and_one_on_pageable_memory_does_not(fake_gpu, monkeypatch):
    """_executor._pinned_enough: from pinned memory the pipeline's copies overlap (H200: 1.4-1.8x
    the whole-array path), staged they do not; so a large blockwise call streams where the arrays
    that carry its data are pinned, and runs whole where any of them is not."""
    from autooffload import _executor

    monkeypatch.setattr(_costmodel, "MIN_CHUNK_BYTES", 64)
    monkeypatch.setattr(_stream, "MIN_CHUNK_BYTES", 64)
    monkeypatch.setattr(_executor, "_STREAM_PINNED_MIN_BYTES", 50_000)
    pinned_ids: set[int] = set()
    fake_gpu.pinned = lambda a: id(a) in pinned_ids or (a.base is not None and id(a.base) in pinned_ids)
    f = offload(f_in_place)
    x = _data(np.float64, (10_000,))  # 80 KB: above the (lowered) bar
    ref = x.copy()
    f_in_place(ref)
    with config(backend="cupy"):
        f(x)
    assert not f.last_decision.streamed  # pageable: whole
    pinned_ids.add(id(x))
    f_in_place(ref)
    with config(backend="cupy"):
        f(x)
    assert f.last_decision.streamed and np.array_equal(x, ref)  # pinned: streamed, writes exact
    small = _data(np.float64, (1_000,))  # 8 KB: below the bar, pinned or not
    pinned_ids.add(id(small))
    with config(backend="cupy"):
        f(small)
    assert not f.last_decision.streamed
    del fake_gpu.pinned
    with config(backend="cupy"):
        f(x)
    assert not f.last_decision.streamed  # a backend that cannot say: whole


# -- copies in queued from pinned memory (backend.held_pinned, to_device_queued) -----------------
def _queued_backend(fake_gpu, monkeypatch, held: bool):
    """The fake device with the pinned-memory pair; a log of what it was asked, in order."""
    import contextlib

    log: list[str] = []

    @contextlib.contextmanager
    def held_pinned(arrays):
        log.append(f"hold {len(arrays)}")
        try:
            yield [held] * len(arrays)
        finally:
            log.append("release")

    def to_device_queued(host):
        assert host.flags.c_contiguous or host.flags.f_contiguous, "only contiguous memory is queued"
        log.append("queued")
        return real_to_device(host)

    def to_device(host):
        log.append("in")
        return real_to_device(host)

    def to_host(dev, out=None):
        log.append("out")
        return real_to_host(dev, out=out)

    real_to_device, real_to_host = fake_gpu.to_device, fake_gpu.to_host
    for name, value in [("held_pinned", held_pinned), ("to_device_queued", to_device_queued),
                        ("to_device", to_device), ("to_host", to_host)]:
        monkeypatch.setattr(fake_gpu, name, value, raising=False)
    return log


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_copies_in_from_held_pinned_memory_are_queued_and_the_hold_outlives_every_copy(layout, fake_gpu, small_chunks,
                                                                                       monkeypatch):
    log = _queued_backend(fake_gpu, monkeypatch, held=True)
    f = offload(lambda a, row, k: a * k + row - (a > row))
    a = LAYOUTS[layout](_data(np.float64, (600, 30)))
    row = a[:1].copy()
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    with config(backend="cupy"):
        got = f(a, row, 1.5)
    assert f.last_decision.streamed
    assert _same(got, a * 1.5 + row - (a > row))
    body = log[next(i for i, e in enumerate(log) if e.startswith("hold")):]
    assert body[-1] == "release" and body.count("release") == 1, "one hold, ended after every copy out"
    contiguous_chunks = layout in ("C", "F")
    assert ("queued" in body) == contiguous_chunks and ("in" in body) != contiguous_chunks, body
    chunks, split = body.count("out"), int(body[0].split()[1])  # one result per chunk; a (and row, for F)
    assert chunks > 2 and body.count("queued") + body.count("in") == chunks * split


def test_without_held_pinned_memory_copies_go_through_the_engine(fake_gpu, small_chunks, monkeypatch):
    log = _queued_backend(fake_gpu, monkeypatch, held=False)
    f = offload(f_in_place)
    x = _data(np.float64, (4000,))
    ref = x.copy()
    f_in_place(ref)
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    with config(backend="cupy"):
        f(x)
    assert f.last_decision.streamed and np.array_equal(x, ref)
    assert "queued" not in log and log.count("in") > 2 and log[-1] == "release"


def test_ctrl_c_at_a_later_chunk_is_not_finished_on_numpy(fake_gpu, small_chunks, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    calls = []

    def interrupted(x):
        calls.append(type(x).__name__)
        if len(calls) == 3:
            raise KeyboardInterrupt
        x *= 3

    f = offload(interrupted, blockwise=True)
    x = _data(np.float64, (4000,))
    with config(backend="cupy"), pytest.raises(KeyboardInterrupt):
        f(x)
    assert "ndarray" not in calls


def test_each_split_argument_is_queued_or_copied_on_its_own(fake_gpu, small_chunks, monkeypatch):
    """Review finding: one argument that is not pinned (a small one, say) must not send the
    pinned others through the staged engine; held_pinned answers per argument."""
    import contextlib

    log = _queued_backend(fake_gpu, monkeypatch, held=True)

    @contextlib.contextmanager
    def first_only(arrays):
        log.append(f"hold {len(arrays)}")
        yield [True] + [False] * (len(arrays) - 1)
        log.append("release")

    monkeypatch.setattr(fake_gpu, "held_pinned", first_only, raising=False)
    f = offload(lambda a, b: a * b + 1.0)
    a, b = _data(np.float64, (600, 30)), _data(np.float64, (600, 30), seed=3)
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    with config(backend="cupy"):
        got = f(a, b)
    assert _same(got, a * b + 1.0)
    chunks = log.count("out")
    assert chunks > 2 and log.count("queued") == chunks and log.count("in") == chunks, log


def test_queued_copies_are_charged_the_time_they_kept_the_link_busy():
    """The copy meter of a streamed call: copies queued back to back on several streams start
    their events at once but their DMAs in turn (or together); each is charged only what it
    added to the time the copies in kept the link busy, so their sum is that time. Spans come
    in the order they were queued, not of their start; one nests in another."""
    charged = []
    meter = type("Meter", (), {"copied": lambda self, to_device, n, s: charged.append((to_device, n, s))})()
    spans = {1: (5.0, 6.0), 2: (0.1, 3.0), 3: (0.0, 2.0), 4: (5.5, 5.8), 5: (5.9, 7.0)}  # ms from the origin
    cuda = type("Cuda", (), {"get_elapsed_time": staticmethod(lambda origin, ev: spans[ev[0]][ev[1]])})
    _stream._meter_queued(meter, cuda, [((k, 0), (k, 1), 100 * k) for k in spans])
    assert [n for _, n, _ in charged] == [300, 200, 100, 400, 500]  # by start
    assert [round(s * 1e3, 6) for _, _, s in charged] == [2.0, 1.0, 1.0, 0.0, 1.0]  # sum 5 ms: the union
    assert all(to_device for to_device, _, _ in charged)


def test_a_drain_waits_through_ctrl_c_but_not_forever():
    """_wait_through_interrupts: a step cut short by Ctrl-C runs again; an interrupt is kept over
    an error; the third interrupt gives up (a device that never finishes must not make the
    process unkillable), and the steps after it are not run."""
    ran = []

    def flaky(times):
        left = [times]

        def step():
            ran.append(times)
            if left[0]:
                left[0] -= 1
                raise KeyboardInterrupt
        return step

    def error():
        ran.append("error")
        raise RuntimeError("device")

    got = _stream._wait_through_interrupts([error, flaky(2), lambda: ran.append("last")])
    assert isinstance(got, KeyboardInterrupt) and ran == ["error", 2, 2, 2, "last"]
    ran.clear()
    got = _stream._wait_through_interrupts([flaky(10), lambda: ran.append("last")])
    assert isinstance(got, KeyboardInterrupt) and ran == [10, 10, 10]
    ran.clear()
    got = _stream._wait_through_interrupts([error, error])
    assert isinstance(got, RuntimeError) and ran == ["error", "error"]
    assert _stream._wait_through_interrupts([lambda: None]) is None
