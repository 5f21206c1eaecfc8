"""The GPU path's plumbing through the FakeDevice test double: copies, results, writes, fallback.

Real GPU behaviour is proven by the tests marked ``gpu`` (test_decorator_gpu.py).
"""

import asyncio
import functools
import warnings
from collections import namedtuple
from dataclasses import dataclass

import numpy as np
import pytest

import fake_device
from conftest import check_plain_pick, plain_pick
from autooffload import ConfigError, GPUFallbackWarning, config, offload
from fake_device import FakeDeviceArray

rng = np.random.default_rng(11)
Pair = namedtuple("Pair", "lo hi")


@dataclass
class Summary:
    mean: object
    spread: object
    label: str


def test_results_come_back_as_numpy_with_numpy_scalar_types(on_gpu):
    @offload
    def stats(x):
        return x.mean(), np.sort(x), {"max": x.max(), "parts": [x[:2], (x[2:4],)]}, Pair(x.min(), x.max())

    x = rng.random(10)
    mean, srt, d, pair = stats(x)
    assert type(mean) is np.float64 and mean == x.mean()
    assert type(srt) is np.ndarray and np.array_equal(srt, np.sort(x))
    assert type(d["max"]) is np.float64
    assert type(d["parts"][0]) is np.ndarray and type(d["parts"][1]) is tuple
    assert type(pair) is Pair and type(pair.lo) is np.float64
    assert stats.last_decision.backend == "cupy" and stats.stats.cupy == 1


def test_dataclass_results_are_converted(on_gpu):
    f = offload(lambda x: Summary(x.mean(), x.max() - x.min(), "ok"))
    s = f(rng.random(5))
    assert type(s.mean) is np.float64 and type(s.spread) is np.float64 and s.label == "ok"


def test_inputs_are_never_modified_without_a_write(on_gpu):
    f = offload(lambda x: np.sqrt(x) * 2)
    x = rng.random((4, 5))
    before = x.copy()
    np.testing.assert_allclose(f(x), np.sqrt(before) * 2, rtol=1e-12)
    np.testing.assert_array_equal(x, before)
    assert on_gpu.to_host_calls == 1  # the result only: nothing written back


def in_place_scale(x):
    x *= 5


def set_item(x):
    x[1] = -7.5


def out_kwarg(a, b, x):
    np.add(a, b, out=x)


def sort_in_place(x):
    x.sort(axis=-1)


VIEWS = {
    "C": lambda parent: parent,
    "F": lambda parent: parent.T,  # an F-ordered array (the transpose of a C parent)
    "strided": lambda parent: parent[::2, 1::3],
    "reversed": lambda parent: parent[::-1, ::-2],
    "fortran-strided": lambda parent: parent.T[1:, ::2],
}


@pytest.mark.parametrize("layout", list(VIEWS))
@pytest.mark.parametrize("writer", [in_place_scale, set_item, sort_in_place])
def test_writes_reach_the_callers_array_for_every_layout(on_gpu, writer, layout):
    view = VIEWS[layout]
    parent = rng.random((6, 8)) + 0.1
    expected_parent = parent.copy()
    writer(view(expected_parent))  # what NumPy does, to the parent as a whole
    offload(writer)(view(parent))
    np.testing.assert_array_equal(parent, expected_parent)  # also: nothing outside the view changed


def test_out_keyword_write(on_gpu):
    a, b, x = rng.random(5), rng.random(5), np.zeros(5)
    offload(out_kwarg)(a, b, x)
    np.testing.assert_array_equal(x, a + b)


def test_returned_argument_is_the_callers_own_array(on_gpu):
    @offload
    def scale(x):
        x *= 2
        return x

    @offload
    def tail(x):
        return x[1:]

    x = rng.random(6)
    before = x.copy()
    out = scale(x)
    assert out is x and np.array_equal(x, before * 2)
    view = tail(x)
    assert np.shares_memory(view, x)
    view[0] = 42.0
    assert x[1] == 42.0


def test_same_array_twice_stays_one_array(on_gpu):
    @offload
    def f(a, b):
        a += 1
        return b.copy()  # NumPy: b is a, so b sees the += 1

    x = np.zeros(4)
    out = f(x, x)
    np.testing.assert_array_equal(out, np.ones(4))
    np.testing.assert_array_equal(x, np.ones(4))
    assert on_gpu.to_device_calls == 1


def test_overlapping_arguments_keep_their_meaning(on_gpu):
    def shift(a, b):
        a[1:] += b[:-1]
        return a.sum()

    base = rng.random(10)
    expected = base.copy()
    expected_sum = shift(expected[2:], expected[:8])
    got_sum = offload(shift)(base[2:], base[:8])
    np.testing.assert_array_equal(base, expected)
    assert got_sum == expected_sum


def test_interleaved_views_of_different_dtypes(on_gpu):
    def f(as_float, as_bytes):
        as_float[0] = 1.0
        return as_bytes[:8].copy()

    base = np.zeros(4)
    raw = base.view(np.uint8)
    expected = base.copy()
    want = f(expected, expected.view(np.uint8))
    got = offload(f)(base, raw)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(base, expected)


def test_nested_containers_of_arrays_are_moved_and_written_back(on_gpu):
    @offload
    def f(batch, opts):
        for arr in batch["arrays"]:
            arr *= opts["k"]
        return [np.sum(a) for a in batch["arrays"]]

    arrays = [rng.random(3), rng.random(4)]
    before = [a.copy() for a in arrays]
    sums = f({"arrays": arrays}, {"k": 3.0})
    for a, b in zip(arrays, before):
        np.testing.assert_allclose(a, b * 3)
    assert all(type(s) is np.float64 for s in sums)


def test_read_only_input_written_raises_like_numpy(on_gpu):
    x = rng.random(4)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        offload(in_place_scale)(x)


def test_pure_true_skips_write_detection(on_gpu):
    x = rng.random(4)
    before = x.copy()
    offload(pure=True)(in_place_scale)(x)
    np.testing.assert_array_equal(x, before)  # the promise was broken: the write is not copied back


def test_user_exception_is_raised_unchanged_and_earlier_writes_are_kept(on_gpu):
    class Boom(Exception):
        pass

    @offload
    def f(x):
        x[0] = 99.0
        raise Boom("mine")

    x = np.zeros(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GPUFallbackWarning)
        with pytest.raises(Boom, match="mine"):
            f(x)
    assert x[0] == 99.0
    assert f.stats.fallbacks == 0


def test_missing_device_function_falls_back_once_with_a_warning(on_gpu):
    fake_device.FAKE_MISSING.add("median")

    @offload
    def f(x):
        return np.median(x)

    x = rng.random(9)
    with pytest.warns(GPUFallbackWarning, match=r"f: CuPy cannot run this code.*median"):
        assert f(x) == np.median(x)
    assert f.stats.fallbacks == 1 and f.stats.numpy == 1
    assert "fell back" in f.last_decision.reason
    calls = on_gpu.to_device_calls
    with warnings.catch_warnings():
        warnings.simplefilter("error", GPUFallbackWarning)
        assert f(x) == np.median(x)  # not retried on the GPU, not warned again
    assert on_gpu.to_device_calls == calls
    assert "failed before" in f.last_decision.reason
    f(rng.random(9).astype(np.float32))  # other argument types: tried on the GPU again
    assert on_gpu.to_device_calls == calls + 1


HOST_WEIGHTS = np.arange(3.0)


def test_implicit_host_array_mix_falls_back(on_gpu):
    @offload
    def f(x):
        return x * HOST_WEIGHTS  # a host array captured from the module: TypeError on the device

    x = rng.random(3)
    with pytest.warns(GPUFallbackWarning, match="TypeError"):
        np.testing.assert_array_equal(f(x), x * HOST_WEIGHTS)


def test_fallback_keeps_writes_exactly_once(on_gpu):
    fake_device.FAKE_MISSING.add("median")

    @offload
    def f(x):
        x += 1
        return np.median(x)

    x = np.zeros(3)
    with pytest.warns(GPUFallbackWarning):
        assert f(x) == 1.0
    np.testing.assert_array_equal(x, np.ones(3))  # the failed GPU run's write is not applied too


def test_error_in_both_runs_is_numpys_error(on_gpu):
    fake_device.FAKE_MISSING.add("median")

    @offload
    def f(x):
        np.median(x)
        raise KeyError("user bug")

    with pytest.raises(KeyError, match="user bug"), warnings.catch_warnings():
        warnings.simplefilter("error", GPUFallbackWarning)
        f(np.ones(3))
    assert f.stats.fallbacks == 0


def test_out_of_memory_while_copying_falls_back(on_gpu):
    on_gpu.fail_to_device = MemoryError("out of device memory")
    f = offload(lambda x: x * 2)
    with pytest.warns(GPUFallbackWarning, match="MemoryError"):
        np.testing.assert_array_equal(f(np.ones(3)), 2 * np.ones(3))


def test_device_inputs_stay_on_device_and_results_are_device_arrays(fake_gpu):
    @offload
    def f(x):
        return x * 2, x.sum()

    x = np.arange(4.0).view(FakeDeviceArray)
    a, s = f(x)
    assert type(a) is FakeDeviceArray and type(s) is FakeDeviceArray
    assert f.last_decision.backend == "cupy" and f.last_decision.device_bytes == 32
    assert fake_gpu.to_device_calls == 0 and fake_gpu.to_host_calls == 0


def test_device_inputs_forced_to_numpy_come_back_with_writes(fake_gpu):
    @offload(backend="numpy")
    def f(x):
        x *= 3
        return x[:2] + 1, float(x.sum())

    x = np.arange(4.0).view(FakeDeviceArray)
    head, total = f(x)
    np.testing.assert_array_equal(x.view(np.ndarray), [0, 3, 6, 9])
    assert type(head) is FakeDeviceArray and total == 18.0
    assert f.stats.numpy == 1


def test_empty_and_zero_d_arrays_on_the_device_path(on_gpu):
    f = offload(lambda x: x * 2)
    out = f(np.empty((0, 3)))
    assert type(out) is np.ndarray and out.shape == (0, 3)
    assert f(np.array(3.0)) == 6.0 and type(f(np.array(3.0))) is np.float64


def test_all_device_dtypes_round_trip(on_gpu):
    f = offload(lambda x: x[::-1])
    for dt in ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"]:
        x = (rng.random(7) * 100).astype(dt)
        out = f(x)
        assert out.dtype == x.dtype and np.array_equal(out, x[::-1])


def test_no_array_arguments_give_host_results(on_gpu):
    @offload
    def draws(n, scale):
        return np.random.standard_normal(n).mean() * scale, np.zeros(n)

    mean, zeros = draws(1000, 2.0)
    assert type(mean) is np.float64 and abs(mean) < 0.5
    assert type(zeros) is np.ndarray and zeros.shape == (1000,)
    assert draws.last_decision.backend == "cupy"


SCALE = 2.0


def test_repeated_device_resident_calls_see_reassigned_globals_and_copy_nothing(fake_gpu):
    global SCALE

    @offload
    def f(x):
        return x * SCALE

    x = np.arange(4.0).view(FakeDeviceArray)
    for expected in (2.0, 2.0, 5.0, 5.0):
        SCALE = expected
        out = f(x)
        assert type(out) is FakeDeviceArray and np.array_equal(np.asarray(out), np.arange(4.0) * expected)
    SCALE = 2.0
    assert f.__autooffload__.executor.resident is not None, f.last_decision  # the later calls took the resident lane
    assert f.stats.cupy == 4 and fake_gpu.to_device_calls == 0 and fake_gpu.to_host_calls == 0


def test_device_resident_call_that_cupy_cannot_run_falls_back(fake_gpu):
    @offload
    def f(x, use_median):
        return np.median(x) if use_median else x.sum()

    x = rng.random(9).view(FakeDeviceArray)
    f(x, False)
    f(x, False)
    fake_device.FAKE_MISSING.add("median")
    with pytest.warns(GPUFallbackWarning, match="median"):
        got = f(x, True)
    assert float(np.asarray(got)) == np.median(np.asarray(x))
    assert f.stats.fallbacks == 1 and "fell back" in f.last_decision.reason


def test_a_numpy_module_argument_with_device_data_runs_its_device_counterpart(fake_gpu):
    @offload
    def f(x, mod):
        return mod.sqrt(x)

    x = (rng.random(9) + 0.5).view(FakeDeviceArray)
    f(x, np)
    out = f(x, np)
    assert type(out) is FakeDeviceArray and np.allclose(np.asarray(out), np.sqrt(np.asarray(x)))


def test_device_resident_xp_function_gets_the_device_module_and_falls_back_with_numpy(fake_gpu):
    @offload
    def f(x, xp=np):
        return xp.median(x) if x.size > 5 else xp.sqrt(x)

    small = (rng.random(4) + 0.5).view(FakeDeviceArray)
    big = (rng.random(9) + 0.5).view(FakeDeviceArray)
    f(small)
    out = f(small)
    assert type(out) is FakeDeviceArray and f.__autooffload__.executor.resident is not None
    assert np.allclose(np.asarray(out), np.sqrt(np.asarray(small)))
    fake_device.FAKE_MISSING.add("median")
    with pytest.warns(GPUFallbackWarning, match="median"):
        got = f(big)
    assert float(np.asarray(got)) == np.median(np.asarray(big))


# --- functions whose body runs after the call returned: generators and coroutines ---------------
def _write_then_yield(x):
    x[0] = 99.0
    yield np.sin(x)
    yield x.sum()


async def _write_then_return(x):
    x[0] = 99.0
    return np.sin(x)


async def _write_then_yield_async(x):
    x[0] = 99.0
    yield np.sin(x)


def _drain_async_gen(agen):
    async def drain():
        return [v async for v in agen]

    return asyncio.run(drain())


class _Stepper:
    def steps(self, x):
        x[0] = 99.0
        yield np.sin(x)


_LAZY_BODIES = [
    pytest.param(_write_then_yield, list, "generator function", id="generator"),
    pytest.param(_write_then_return, asyncio.run, "async function", id="async def"),
    pytest.param(_write_then_yield_async, _drain_async_gen, "async generator function", id="async generator"),
    pytest.param(functools.partial(_write_then_yield), list, "generator function", id="partial of a generator"),
    pytest.param(_Stepper().steps, list, "generator function", id="bound generator method"),
]


def _check_like_numpy(func, consume, fake_gpu):
    expected_x = np.arange(4.0)
    expected = consume(func.__wrapped__(expected_x))
    x = np.arange(4.0)
    got = consume(func(x))
    got = got if isinstance(got, list) else [got]
    expected = expected if isinstance(expected, list) else [expected]
    np.testing.assert_array_equal(x, expected_x)  # the write reached the caller's array
    assert [type(v) for v in got] == [type(v) for v in expected]
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    assert fake_gpu.to_device_calls == 0


@pytest.mark.parametrize("body, consume, what", _LAZY_BODIES)
def test_generators_and_coroutines_run_on_numpy_when_cupy_is_forced_by_config(body, consume, what, on_gpu):
    f = offload(body)
    _check_like_numpy(f, consume, on_gpu)
    d = f.last_decision
    assert d.backend == "numpy" and what in d.reason and "forced cupy ignored" in d.reason
    assert f.stats.numpy == 1 and f.stats.cupy == 0


@pytest.mark.parametrize("body, consume, what", _LAZY_BODIES)
def test_generators_and_coroutines_stay_on_numpy_when_the_gpu_would_win(body, consume, what, fake_gpu, use_profile):
    from autooffload.backends import cupy as _backends
    from conftest import synthetic_profile

    use_profile(synthetic_profile(cold_start=0.0))
    _backends.mark_gpu_ready()
    big = np.ones(1 << 20)
    plain = offload(lambda x: np.sin(x))
    plain(big)
    assert plain.last_decision.backend == "cupy"  # the same data would go to the GPU
    fake_gpu.to_device_calls = 0
    f = offload(body)
    unstarted = f(big)  # not run: only the decision matters here
    if hasattr(unstarted, "close"):
        unstarted.close()
    assert f.last_decision.backend == "numpy" and what in f.last_decision.reason
    _check_like_numpy(f, consume, fake_gpu)


@pytest.mark.parametrize("body, consume, what", _LAZY_BODIES)
def test_forcing_cupy_on_a_generator_or_coroutine_is_refused_at_decoration(body, consume, what, fake_gpu):
    with pytest.raises(ConfigError, match=f"backend='cupy'.*{what}.*NumPy"):
        offload(backend="cupy")(body)


def test_forcing_cupy_by_the_environment_runs_generators_on_numpy(monkeypatch, fake_gpu):
    import autooffload

    monkeypatch.setenv("AUTOOFFLOAD_BACKEND", "cupy")
    autooffload.reload_environment()
    f = offload(_write_then_yield)
    _check_like_numpy(f, list, fake_gpu)
    assert "generator function" in f.last_decision.reason


def test_device_arrays_given_to_a_generator_are_refused_clearly(fake_gpu):
    # Its writes could not be copied back to the device arrays after the body ran.
    f = offload(_write_then_yield)
    x = np.arange(4.0).view(FakeDeviceArray)
    with pytest.raises(TypeError, match="generator function.*device arrays.*NumPy arrays"):
        f(x)
    np.testing.assert_array_equal(x.view(np.ndarray), np.arange(4.0))


# --- every kind of callable, on NumPy and on the GPU path (from the probe explore_callables.py) ---
class _Shapes:
    k = 2.0
    arr = np.arange(5.0)

    @staticmethod
    @offload
    def static(x):
        return np.sin(x)

    @classmethod
    @offload
    def klass(cls, x):
        return np.sin(x) * cls.k

    @offload
    def method(self, x):
        return np.sin(x) * self.k

    @property
    @offload
    def prop(self):
        return np.sin(self.arr)


class _Slotted:
    __slots__ = ("k",)

    def __init__(self):
        self.k = 2.0

    @offload
    def method(self, x):
        return np.sin(x) * self.k


def _outer_closure():
    k = 3.0

    def inner(x):
        return np.sin(x) * k

    return inner


def _wraps(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


class _CallableObject:
    def __call__(self, x):
        return np.sin(x)


_A = np.arange(10.0)
_ONES = np.ones(10)
_CALLABLES = [
    ("lambda", lambda: offload(lambda x: np.sin(x)), lambda f: f(_A), np.sin(_A)),
    ("partial", lambda: offload(functools.partial(np.add, 1.0)), lambda f: f(_A), _A + 1.0),
    ("closure", lambda: offload(_outer_closure()), lambda f: f(_A), np.sin(_A) * 3.0),
    ("staticmethod", lambda: _Shapes, lambda c: c.static(_A), np.sin(_A)),
    ("classmethod", lambda: _Shapes, lambda c: c.klass(_A), np.sin(_A) * 2.0),
    ("method", _Shapes, lambda o: o.method(_A), np.sin(_A) * 2.0),
    ("property", _Shapes, lambda o: o.prop, np.sin(np.arange(5.0))),
    ("slots method", _Slotted, lambda o: o.method(_A), np.sin(_A) * 2.0),
    ("*args/**kwargs", lambda: offload(lambda *xs, **kw: sum(np.sin(x) for x in xs) + kw.get("b", 0)),
     lambda f: f(_A, _A, b=_A), 2 * np.sin(_A) + _A),
    ("keyword-only", lambda: offload(lambda x, *, scale=2.0: x * scale), lambda f: f(_A, scale=3.0), _A * 3.0),
    ("array default", lambda: offload(lambda x, w=_ONES: x * w), lambda f: f(_A), _A),
    ("functools.wraps", lambda: offload(_wraps(lambda x: np.sin(x))), lambda f: f(_A), np.sin(_A)),
    ("offload twice", lambda: offload(offload(lambda x: np.cos(x))), lambda f: f(_A), np.cos(_A)),
    ("callable object", lambda: offload(_CallableObject()), lambda f: f(_A), np.sin(_A)),
    ("ufunc", lambda: offload(np.sin), lambda f: f(_A), np.sin(_A)),
    ("ufunc.reduce", lambda: offload(np.add.reduce), lambda f: f(_A), np.add.reduce(_A)),
    ("np.vectorize", lambda: offload(np.vectorize(lambda v: v * 2)), lambda f: f(_A), _A * 2),
    ("np.fft.fft", lambda: offload(np.fft.fft), lambda f: f(_A), np.fft.fft(_A)),
    ("builtin sum", lambda: offload(sum), lambda f: f(_A), sum(_A)),
]


@pytest.mark.filterwarnings("ignore::autooffload.GPUFallbackWarning")
@pytest.mark.parametrize("mode", ["numpy", "cupy"])
@pytest.mark.parametrize("make, call, expected", [pytest.param(*c[1:], id=c[0]) for c in _CALLABLES])
def test_every_kind_of_callable_gives_numpys_result(make, call, expected, mode, fake_gpu):
    from autooffload import config

    with config(backend=mode):
        got = call(make())
    assert type(got) is type(expected)
    np.testing.assert_allclose(got, expected)


def test_the_fallback_warning_points_at_the_callers_line(fake_gpu):
    import fake_device

    fake_device.FAKE_MISSING.add("median")

    @offload
    def middle(x):
        return np.median(x)

    with config(backend="cupy"), pytest.warns(GPUFallbackWarning) as caught:
        middle(np.arange(5.0))  # the warning's line
    (warning,) = caught
    assert warning.filename == __file__
    assert "the warning's line" in open(__file__).read().splitlines()[warning.lineno - 1]


# -- the light path for plain calls (Executor.plain_call, Moved.move_plain; fixture plain_moves) ---
def test_plain_calls_give_the_callers_arrays_views_and_new_arrays(on_gpu, plain_moves):
    check_plain_pick(offload(plain_pick), rng, plain_moves)  # the fake device: NumPy's values exactly


@pytest.mark.parametrize("pick", ["itself", "view", "reversed", "other", "new", "scalar"])
def test_a_plain_calls_single_array_result_is_what_numpy_gives(on_gpu, plain_moves, pick):
    # One array as the result takes _result_leaf's short way after move_plain (the tuple above: the walk).
    fn = {"itself": lambda x, y: x, "view": lambda x, y: x[2:], "reversed": lambda x, y: x[::-1],
          "other": lambda x, y: y.T, "new": lambda x, y: x * 2.0 + y[0, 0], "scalar": lambda x, y: x.sum()}[pick]
    x, y = rng.random(8), np.asfortranarray(rng.random((3, 2)))
    expected = fn(x.copy(), y.copy())
    offloaded = offload(fn)
    got = offloaded(x, y)
    assert plain_moves == [2] and type(got) is type(expected)
    np.testing.assert_array_equal(got, expected)
    if pick == "itself":
        assert got is x
    elif pick in ("view", "reversed", "other"):
        assert np.shares_memory(got, y if pick == "other" else x)
        got[0] = -1.0  # a view of the caller's memory, as on NumPy
        assert (y.T if pick == "other" else fn(x, y))[0].flat[0] == -1.0
    elif pick == "new":
        assert not np.shares_memory(got, x) and not np.shares_memory(got, y)
        copies = offloaded.__autooffload__.records.timesheet.copies()
        assert copies["cupy"].device_to_host.arrays == 1 and copies["cupy"].host_to_device.arrays == 2


@pytest.mark.parametrize("case", ["overlap", "same-twice", "strided", "writes", "global", "closure", "list"])
def test_calls_that_are_not_plain_take_the_general_path(on_gpu, plain_moves, case):
    base = rng.random(10)
    counter = [0]

    def reads(a, b):
        return a + b

    def writes(a, b):
        a += b
        return a

    def rebinds(a, b):
        global _LAST_RESULT
        _LAST_RESULT = a + b
        return _LAST_RESULT

    def closes(a, b):
        return a + b + counter[0]

    def sums(a, b):
        return a + b[0]

    fn, args = {
        "overlap": (reads, (base[:6], base[4:])),
        "same-twice": (reads, (base, base)),
        "strided": (reads, (base[::2], base[1::2])),
        "writes": (writes, (base.copy(), base)),
        "global": (rebinds, (base, base + 1)),
        "closure": (closes, (base, base + 1)),
        "list": (sums, (base, [base + 1])),
    }[case]
    expected = fn(*(a.copy() if isinstance(a, np.ndarray) else a for a in args))
    np.testing.assert_array_equal(offload(fn)(*args), expected)
    assert plain_moves == []


def test_plain_calls_raise_the_functions_error_and_fall_back_like_others(on_gpu, plain_moves):
    @offload
    def checked(x):
        if x[0] > 2:
            raise ValueError("too large")
        return np.median(x)

    with pytest.raises(ValueError, match="too large"):
        checked(np.full(3, 5.0))
    fake_device.FAKE_MISSING.add("median")
    x = rng.random(9)
    with pytest.warns(GPUFallbackWarning, match="median"):
        assert checked(x) == np.median(x)
    assert checked.stats.fallbacks == 1 and plain_moves == [1, 1]


PURE_LOG: list = []


def test_a_pure_function_that_stores_elsewhere_takes_the_general_path(on_gpu, plain_moves):
    # pure=True promises no writes into the arguments; a global list may still be appended to,
    # and what lands there must be the caller's side's (swept), once (restored before a fallback).
    @offload(pure=True)
    def logs(x):
        PURE_LOG.append(x * 2)
        return np.median(x)

    PURE_LOG.clear()
    x = rng.random(5)
    assert logs(x) == np.median(x)
    assert type(PURE_LOG[-1]) is np.ndarray and plain_moves == []
    fake_device.FAKE_MISSING.add("median")
    PURE_LOG.clear()
    with pytest.warns(GPUFallbackWarning):
        assert logs(x) == np.median(x)
    assert len(PURE_LOG) == 1 and type(PURE_LOG[0]) is np.ndarray


def test_a_plain_call_whose_copy_fails_lets_the_first_copies_go_before_the_fallback(on_gpu, plain_moves, monkeypatch):
    import gc
    import weakref

    from autooffload._executor import Executor

    refs, alive = [], []

    @offload
    def add(a, b):
        return a + b

    rerun = Executor.run_numpy

    def run_numpy(self, *a, **kw):  # the NumPy rerun after the device attempt
        gc.collect()
        alive.append(refs[0]() is not None)
        return rerun(self, *a, **kw)

    monkeypatch.setattr(Executor, "run_numpy", run_numpy)
    real = on_gpu.to_device

    def to_device(h):
        if refs:
            raise MemoryError("out of device memory")
        d = real(h)
        refs.append(weakref.ref(d))
        return d

    monkeypatch.setattr(on_gpu, "to_device", to_device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(add(np.ones(100), np.ones(100)), np.full(100, 2.0))
    assert plain_moves == [2] and alive == [False]


def test_the_same_empty_array_twice_stays_one_array(on_gpu, plain_moves):
    @offload
    def same(a, b):
        return a is b

    e = np.empty(0)
    assert same(e, e) is True and plain_moves == []


def test_a_view_of_a_read_only_argument_is_read_only_as_in_numpy(on_gpu):
    @offload
    def tail(x):
        return x[1:]

    @offload
    def tail_of_first(x, y):
        return x[1:], y[:2]

    ro = np.arange(6.0)
    ro.flags.writeable = False
    v = tail(ro)
    assert np.shares_memory(v, ro) and not v.flags.writeable and np.array_equal(v, ro[1:])
    w = np.arange(6.0)
    a, b = tail_of_first(ro, w)
    assert not a.flags.writeable and b.flags.writeable


def test_a_library_call_with_an_xp_parameter_takes_the_light_path(on_gpu, plain_moves):
    # The suite's bessel_i0 row, whose device path cost was measured on the H200 (issue 12).
    @offload
    def bessel_weights(x, xp=np):
        return xp.i0(x) / xp.i0(xp.abs(x).max())

    x = rng.uniform(-20.0, 20.0, 1000)
    np.testing.assert_allclose(bessel_weights(x), np.i0(x) / np.i0(np.abs(x).max()), rtol=1e-15)
    assert plain_moves == [1]
