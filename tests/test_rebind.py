"""Rebinding: an unmodified NumPy function runs against the device module (FakeDevice here)."""

import types

import numpy
import numpy as np
import numpy as xnp
import numpy.fft
from numpy import linalg as la
from numpy import sin as numpy_sin
from numpy import zeros

from autooffload import config, offload
from fake_device import FakeDeviceArray

rng = np.random.default_rng(3)


def kind_of(a):
    return "device" if type(a) is FakeDeviceArray else "host"


def test_every_alias_and_imported_name_maps_to_the_device(on_gpu):
    @offload
    def f(x):
        return (
            kind_of(np.zeros(2)),
            kind_of(xnp.ones(2)),
            kind_of(numpy.empty(2)),
            kind_of(zeros(2)),
            kind_of(numpy_sin(x)),
            kind_of(la.inv(np.eye(2))),
            kind_of(numpy.fft.fft(x)),
            kind_of(np.random.random_sample(3)),
        )

    assert f(rng.random(4)) == ("device",) * 8


def test_closure_defaults_and_helpers_are_rebound(on_gpu):
    captured_np = np

    def helper(n):
        return np.zeros(n)  # a helper called by name gets a twin too

    @offload
    def f(x, module=np, *, kw_module=np):
        return kind_of(captured_np.ones(1)), kind_of(module.ones(1)), kind_of(kw_module.ones(1)), kind_of(helper(2))

    assert f(rng.random(3)) == ("device",) * 4
    assert kind_of(helper(2)) == "host"  # the original is untouched


def test_xp_parameter_receives_the_device_module(on_gpu):
    @offload
    def f(x, xp):
        return xp.__name__

    assert f(rng.random(3)) == "fake_cupy"


CALLS = 0
SCALE = 2.0


def count_calls(x):
    global CALLS
    CALLS += 1
    return x * SCALE


def test_globals_written_with_global_reach_the_module(on_gpu):
    global SCALE
    f = offload(count_calls)
    before = CALLS
    f(rng.random(2))
    f(rng.random(2))
    assert CALLS == before + 2
    SCALE = 3.0  # reassigned after decoration: the twin sees it
    try:
        np.testing.assert_array_equal(f(np.ones(2)), [3.0, 3.0])
    finally:
        SCALE = 2.0


def test_nonlocal_writes_stay_shared_with_the_enclosing_scope(on_gpu):
    count = 0

    @offload
    def f(x):
        nonlocal count
        count += 1
        return x + 1

    f(np.ones(2))
    f(np.ones(2))
    assert count == 2


def test_numpy_functions_wrapped_directly_run_as_their_counterparts(on_gpu):
    fft = offload(np.fft.fft)
    solve = offload(np.linalg.solve)
    sin = offload(np.sin)
    x = rng.random(16)
    np.testing.assert_allclose(fft(x), np.fft.fft(x), rtol=1e-12, atol=1e-12)
    a = rng.random((4, 4)) + 4 * np.eye(4)
    b = rng.random(4)
    np.testing.assert_allclose(solve(a, b), np.linalg.solve(a, b), rtol=1e-12)
    np.testing.assert_array_equal(sin(x), np.sin(x))
    assert fft.last_decision.backend == "cupy" and type(fft(x)) is np.ndarray
    assert fft.last_decision.kind == "fft" and solve.last_decision.kind == "solve"


def test_functions_of_a_third_party_module_are_rebound(on_gpu):
    lib = types.ModuleType("thirdparty_stats")
    exec(
        "import numpy as _n\n"
        "def _center(x):\n    return x - _n.mean(x)\n"
        "def zscore(x):\n    c = _center(x)\n    return c / _n.sqrt(_n.mean(c * c)), type(_n.zeros(1)).__name__\n",
        lib.__dict__,
    )
    zscore = offload(lib.zscore)
    x = rng.random(20)
    z, made = zscore(x)
    np.testing.assert_allclose(z, lib.zscore(x)[0], rtol=1e-12)
    assert made == "FakeDeviceArray"


def test_callables_without_a_device_version_run_on_numpy(on_gpu):
    class Scaler:
        def __call__(self, x):
            return x * 2

    f = offload(Scaler())
    np.testing.assert_array_equal(f(np.ones(2)), [2.0, 2.0])
    assert f.last_decision.backend == "numpy" and "no GPU version" in f.last_decision.reason


def test_twins_are_cached(on_gpu):
    @offload
    def f(x):
        return np.sum(x)

    f(np.ones(3))
    state = f.__autooffload__
    first = state.executor.runners[id(on_gpu)][1]
    f(np.ones(3))
    assert state.executor.runners[id(on_gpu)][1] is first


def test_with_config_numpy_never_touches_the_device(fake_gpu):
    @offload
    def f(x):
        return kind_of(np.zeros(1))

    with config(backend="numpy"):
        assert f(np.ones(3)) == "host"
    assert fake_gpu.to_device_calls == 0


# --- twins live exactly as long as their functions -----------------------------------------------
def _closure(k):
    def helper(x):
        return x * k

    def kernel(x):  # built per request: a closure with a helper closure of its own
        return np.sin(helper(x))

    return kernel


def _recursive_closure():
    @offload
    def halve(x, n):  # reaches its own wrapper through a closure cell
        return x if n == 0 else halve(x / 2, n - 1)

    return halve


def test_a_dropped_function_that_ran_on_the_gpu_is_collected(on_gpu):
    import gc
    import weakref

    for make in (lambda: offload(_closure(2.0)), _recursive_closure):
        wrapper = make()
        args = (np.ones(4),) if wrapper.__name__ == "kernel" else (np.ones(4), 2)
        wrapper(*args)
        assert wrapper.last_decision.backend == "cupy"
        refs = [weakref.ref(wrapper), weakref.ref(wrapper.__wrapped__)]
        del wrapper
        gc.collect()
        assert [r() for r in refs] == [None, None]


def test_memory_stays_flat_over_many_dropped_closures(on_gpu):
    import gc
    import tracemalloc

    def run(n):
        for i in range(n):
            offload(_closure(float(i)))(np.ones(4))
        gc.collect()

    run(20)  # the one-time structures (the device module's translation table)
    tracemalloc.start()
    try:
        run(10)
        before = tracemalloc.get_traced_memory()[0]
        run(200)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Each closure kept alive held ~5 kB here (its twin's copy of this module's globals).
    assert grown < 50_000, f"{grown} bytes kept by 200 dropped closures"
