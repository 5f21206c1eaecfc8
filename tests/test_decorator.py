"""@offload as a user meets it: wrapping, results, steering, errors, without any GPU."""

import asyncio
import contextvars
import functools
import inspect
import threading

import numpy as np
import pytest

import autooffload
from autooffload import ConfigError, GPUUnavailableError, config, explain, offload

rng = np.random.default_rng(7)


def mean_of_products(a, b):
    """Docstring kept."""
    return (a * b + a).mean()


def test_bare_and_with_options_keep_name_doc_and_signature():
    bare = offload(mean_of_products)
    opts = offload(kind="reduction", backend="numpy", pure=True)(mean_of_products)
    for f in (bare, opts):
        assert f.__name__ == "mean_of_products"
        assert f.__doc__ == "Docstring kept."
        assert inspect.signature(f) == inspect.signature(mean_of_products)
        assert f.__wrapped__ is mean_of_products


def test_result_equals_numpy_and_decision_is_recorded():
    f = offload(mean_of_products)
    a, b = rng.random(100) + 0.5, rng.random(100) + 0.5
    assert f.last_decision is None
    assert f(a, b) == mean_of_products(a, b)
    assert type(f(a, b)) is np.float64
    d = f.last_decision
    assert d.backend == "numpy" and d.host_bytes == 1600 and d.device_bytes == 0
    assert d.function == "mean_of_products" and "float64" in d.dtypes
    assert f.stats.numpy == 2 and f.stats.cupy == 0 and f.stats.decisions == 1


def test_without_cupy_large_inputs_stay_on_numpy_quietly(recwarn):
    @offload(kind="fft")
    def spectrum(x):
        return np.abs(np.fft.rfft(x))

    x = rng.random(1 << 20)
    np.testing.assert_array_equal(spectrum(x), np.abs(np.fft.rfft(x)))
    assert spectrum.last_decision.backend == "numpy"
    assert not [w for w in recwarn if issubclass(w.category, autooffload.AutoOffloadWarning)]


def test_disable_gpu_env(monkeypatch, fake_gpu):
    monkeypatch.setenv("AUTOOFFLOAD_DISABLE_GPU", "1")
    autooffload.reload_environment()
    f = offload(kind="fft")(lambda x: np.fft.fft(x))
    f(rng.random(1 << 20))
    assert f.last_decision.backend == "numpy"
    assert "AUTOOFFLOAD_DISABLE_GPU" in f.last_decision.reason
    assert fake_gpu.to_device_calls == 0


def test_forcing_cupy_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_DISABLE_GPU", "1")
    autooffload.reload_environment()
    f = offload(backend="cupy")(mean_of_products)
    with pytest.raises(GPUUnavailableError, match="forced by offload.*AUTOOFFLOAD_DISABLE_GPU=1.*backend='auto'"):
        f(rng.random(10), rng.random(10))


def test_forcing_cupy_when_cupy_missing_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    f = offload(mean_of_products)
    with config(backend="cupy"), pytest.raises(GPUUnavailableError, match=r"CuPy is not importable.*cuda12"):
        f(rng.random(10), rng.random(10))


@pytest.mark.parametrize("bad", ["gpu", "CUDA ", 3, None])
def test_bad_backend_values_are_rejected_with_the_allowed_set(bad):
    with pytest.raises(ConfigError, match="must be one of 'numpy', 'cupy', 'numba', 'auto'"):
        offload(backend=bad)(mean_of_products)
    with pytest.raises(ConfigError, match="config"):
        with config(backend=bad):
            pass


def test_bad_kind_and_non_callables():
    with pytest.raises(ConfigError, match="kind.*elementwise.*got 'fast'"):
        offload(kind="fast")(mean_of_products)
    with pytest.raises(TypeError, match="callable"):
        offload(42)
    with pytest.raises(TypeError, match="@staticmethod above @offload"):
        offload(staticmethod(mean_of_products))


def test_env_backend(monkeypatch, fake_gpu):
    monkeypatch.setenv("AUTOOFFLOAD_BACKEND", "cupy")
    autooffload.reload_environment()
    f = offload(mean_of_products)
    f(rng.random(10), rng.random(10))
    assert f.last_decision.backend == "cupy" and "AUTOOFFLOAD_BACKEND" in f.last_decision.reason
    monkeypatch.setenv("AUTOOFFLOAD_BACKEND", "quantum")
    with pytest.raises(ConfigError, match="AUTOOFFLOAD_BACKEND.*'quantum'"):
        autooffload.reload_environment()


def test_precedence_config_over_decorator_over_env(monkeypatch, fake_gpu):
    monkeypatch.setenv("AUTOOFFLOAD_BACKEND", "cupy")
    autooffload.reload_environment()
    f = offload(backend="numpy")(mean_of_products)
    a = rng.random(10)
    f(a, a)
    assert f.last_decision.backend == "numpy"
    with config(backend="cupy"):
        f(a, a)
        assert f.last_decision.backend == "cupy"
        with config(backend="auto"):
            f(a, a)
            assert "forced" not in f.last_decision.reason


def test_config_is_thread_local(fake_gpu):
    f = offload(mean_of_products)
    a = rng.random(10)
    seen = {}

    def other():
        f(a, a)
        seen["other"] = f.last_decision.backend

    with config(backend="cupy"):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        f(a, a)
        seen["this"] = f.last_decision.backend
    assert seen == {"other": "numpy", "this": "cupy"}


def _config_backend():
    return autooffload._config.current_backend()


def test_config_blocks_of_interleaved_asyncio_tasks_stay_their_own(fake_gpu):
    f = offload(mean_of_products)
    a = rng.random(10)
    seen = {}

    async def first():  # enters first, exits first
        with config(backend="cupy"):
            await asyncio.sleep(0.01)
            f(a, a)
            seen["first"] = f.last_decision.backend

    async def second():  # enters second, exits last
        await asyncio.sleep(0.001)
        with config(backend="numpy"):
            await asyncio.sleep(0.03)
            f(a, a)
            seen["second"] = f.last_decision.backend, f.last_decision.reason

    async def main():
        await asyncio.gather(first(), second())

    asyncio.run(main())
    assert seen == {"first": "cupy", "second": ("numpy", "forced by config()")}
    assert _config_backend() is None
    f(a, a)
    assert "forced" not in f.last_decision.reason


def test_a_task_created_inside_a_block_keeps_it_after_the_block_ended(fake_gpu):
    f = offload(mean_of_products)
    a = rng.random(10)
    f(a, a)
    f(a, a)  # a cached NumPy decision: the C check, where built, may answer such calls alone
    assert f.last_decision.backend == "numpy"

    async def later():
        await asyncio.sleep(0.01)
        f(a, a)
        return f.last_decision.backend

    async def main():
        with config(backend="cupy"):
            task = asyncio.create_task(later())  # asyncio copies the context into the task
        assert _config_backend() is None
        return await task

    assert asyncio.run(main()) == "cupy"
    f(a, a)
    assert f.last_decision.backend == "numpy"


def test_a_thread_gets_a_block_only_with_the_context_handed_over(fake_gpu):
    f = offload(mean_of_products)
    a = rng.random(10)
    seen = []

    def call():
        f(a, a)
        seen.append(f.last_decision.backend)

    with config(backend="cupy"):
        for target in (call, functools.partial(contextvars.copy_context().run, call)):
            t = threading.Thread(target=target)
            t.start()
            t.join()
    assert seen == ["numpy", "cupy"]


def test_nested_blocks_and_exceptions_restore_the_enclosing_block():
    with config(backend="cupy"):
        with pytest.raises(ZeroDivisionError):
            with config(backend="numpy"):
                assert _config_backend() == "numpy"
                1 / 0
        assert _config_backend() == "cupy"
        with config(backend="auto"):
            with config(backend="numpy"):
                assert _config_backend() == "numpy"
            assert _config_backend() == "auto"
        assert _config_backend() == "cupy"
    assert _config_backend() is None


def test_a_generator_suspended_inside_a_block_does_not_revive_it_later():
    def steps():
        with config(backend="numpy"):
            yield _config_backend()
        yield _config_backend()

    gen = steps()
    assert next(gen) == "numpy"
    assert _config_backend() == "numpy"  # the generator shares this context while suspended
    with config(backend="cupy"):
        assert next(gen) == "cupy"  # the generator left its block: the caller's is the innermost
        assert _config_backend() == "cupy"
    assert _config_backend() is None  # not the generator's block, which ended first
    gen.close()
    # A generator closed (or collected) while suspended inside a block leaves it too.
    gen = steps()
    next(gen)
    gen.close()
    assert _config_backend() is None


class Portfolio:
    def __init__(self, w):
        self.w = w

    @offload
    def value(self, prices):
        return float(np.dot(prices, self.w))

    @staticmethod
    @offload
    def total(x):
        return x.sum()


def test_methods_and_staticmethods():
    p = Portfolio(np.ones(3))
    x = np.arange(3.0)
    assert p.value(x) == 3.0
    assert Portfolio.total(x) == 3.0
    assert p.value.last_decision.backend == "numpy"
    assert p.value.stats.numpy == 1
    assert explain(p.value, x).backend == "numpy"


def test_redecorating_replaces_options_instead_of_stacking():
    f = offload(mean_of_products)
    g = offload(backend="numpy")(f)
    assert g.__wrapped__ is mean_of_products


def test_explain_does_not_run_the_function():
    calls = []

    @offload
    def f(x):
        calls.append(1)
        return x

    d = explain(f, np.ones(4))
    assert calls == [] and d.backend == "numpy" and d.host_bytes == 32
    assert "f -> numpy" in str(d)
    with pytest.raises(TypeError, match="decorated with @offload"):
        explain(mean_of_products, np.ones(3))


def test_non_array_arguments_pass_untouched():
    @offload
    def f(x, n, label, opts=None):
        return x * n, label, opts

    sentinel = object()
    out = f(np.ones(3), 2, "lbl", opts=sentinel)
    assert out[1] == "lbl" and out[2] is sentinel
    np.testing.assert_array_equal(out[0], 2 * np.ones(3))


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_odd_dtypes_and_subclasses_run_on_numpy(fake_gpu):
    f = offload(lambda x: x[::-1].copy())
    cases = [
        np.array(["a", "bc"]),
        np.array([{"k": 1}, None], dtype=object),
        np.zeros(2, dtype=[("a", "f8"), ("b", "i4")]),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.ma.masked_array([1.0, 2.0], mask=[0, 1]),
        np.matrix([[1.0, 2.0]]),
    ]
    for x in cases:
        out = f(x)
        assert type(out) is type(x)
        assert f.last_decision.backend == "numpy", x
    # Even when the GPU is forced, CuPy cannot hold these: NumPy runs them.
    with config(backend="cupy"):
        out = f(np.array([{"k": 1}, None], dtype=object))
        assert out[1] == {"k": 1} and f.last_decision.backend == "numpy"
    assert fake_gpu.to_device_calls == 0


def test_empty_and_zero_d_arrays_on_cpu():
    f = offload(lambda x: x * 2)
    assert f(np.empty((0, 3))).shape == (0, 3)
    assert f(np.float64(2.0)) == 4.0
    assert f(np.array(3.0)) == 6.0


def test_xp_parameter_gets_numpy_on_cpu():
    @offload
    def f(x, xp=None):
        return xp if isinstance(xp, str) else xp.__name__

    assert f(np.ones(3)) == "numpy"
    assert f(np.ones(3), xp="given") == "given"


def test_every_parameter_kind_is_passed_through():
    def f(a, /, b, c=2.0, *, d, e=None):
        return (a * b + c * d).sum(), e

    g = offload(f)
    a, b, d = rng.random(4), rng.random(4), rng.random(4)
    assert g(a, b, d=d) == f(a, b, d=d)
    assert g(a, b=b, c=3.0, d=d, e="x") == f(a, b=b, c=3.0, d=d, e="x")
    assert inspect.signature(g) == inspect.signature(f)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'd'"):
        g(a, b)
    with pytest.raises(TypeError, match="positional-only"):
        g(a=a, b=b, d=d)


def test_var_args_and_kwargs_functions():
    @offload
    def f(*arrays, scale=1.0, **options):
        return sum(x.sum() for x in arrays) * scale, options

    x = np.ones(3)
    assert f(x, x, scale=2.0, tag="t") == (12.0, {"tag": "t"})
    assert f.last_decision.host_bytes == 48


def test_arguments_that_are_numpy_modules_or_functions_follow_the_backend(on_gpu):
    from fake_device import FakeDeviceArray

    @offload
    def apply(x, fn, module=np):
        return type(fn(x)) is FakeDeviceArray, module.__name__

    assert apply(rng.random(3), np.cumsum) == (True, "fake_cupy")
    assert apply(rng.random(3), np.cumsum, np) == (True, "fake_cupy")


def test_a_bad_environment_value_fails_calls_not_decoration(monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_BACKEND", "gpu-please")
    autooffload._config._env = None
    f = offload(mean_of_products)  # importing a module of decorated functions still works
    with pytest.raises(ConfigError, match="AUTOOFFLOAD_BACKEND must be one of"):
        f(rng.random(3), rng.random(3))


def test_a_parameter_named_like_its_function_is_just_an_argument(fake_gpu):
    # The generated wrapper once stored last_decision through its own name, which such a
    # parameter shadows: every call raised, or set the attribute on the caller's object.
    def signal(signal):
        return np.abs(signal).max()

    class Box:
        pass

    def box(box, x):
        return x * 2

    x = np.arange(-3.0, 2.0)
    for wrapped in (offload(signal), offload(backend="cupy")(signal)):
        assert wrapped(x) == 3.0
        assert wrapped.last_decision.host_bytes == x.nbytes
    smooth = offload(lambda offloaded: offloaded * 2)  # a lambda's wrapper is named "offloaded"
    np.testing.assert_array_equal(smooth(x), x * 2)
    assert smooth.last_decision.backend == "numpy"
    b = Box()
    np.testing.assert_array_equal(offload(box)(b, x), x * 2)
    assert vars(b) == {}
    # Names of the wrapper's own closure variables, as parameters or as the function's name.
    def _ao_func(_ao_exact, offloaded):
        return _ao_exact + offloaded

    def _ao_exact(x):
        return x + 1.0

    for weird in (offload(_ao_func), offload(_ao_exact)):
        for _ in range(2):  # deciding, then the cached decision
            args = (x, 1.0) if weird.__name__ == "_ao_func" else (x,)
            np.testing.assert_array_equal(weird(*args), x + 1.0)
            assert weird.last_decision.host_bytes == x.nbytes


# --- pickling: functions are pickled by reference (module + __qualname__) --------------------------
def test_every_module_level_form_pickles_to_itself():
    import pickle

    import pickle_targets as t

    x = np.linspace(0.0, 1.0, 8)
    for f in (t.decorated, t.score, t.fft, t.scaled, t.Model.m):
        assert pickle.loads(pickle.dumps(f)) is f
    assert pickle.loads(pickle.dumps(t.score)) is t.score and t.score.__qualname__ == "score"
    assert t.score.__module__ == "pickle_targets" and t.score.__name__ == "_score_impl"
    assert t.fft.__module__ == "pickle_targets" and t.Model.m.__qualname__ == "Model.m"
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(t.fft))(x), np.fft.fft(x))
    assert pickle.loads(pickle.dumps(t.Model().m))(x) == 1.0
    with pytest.raises(pickle.PicklingError, match="not the same object"):
        pickle.dumps(t.built_in_a_function())
    import copy  # as the probe explore_pickle.py found: copies are the function itself

    assert copy.copy(t.score) is t.score and copy.deepcopy({"f": t.score})["f"] is t.score


def test_a_multiprocessing_pool_maps_offloaded_functions():
    import multiprocessing

    import pickle_targets as t

    xs = [np.arange(4.0), np.arange(6.0)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(t.score, xs) == [np.cos(x).sum() for x in xs]
        fft = pool.map(t.fft, xs)
    for got, x in zip(fft, xs):
        np.testing.assert_array_equal(got, np.fft.fft(x))


def test_decision_caches_stay_bounded_over_many_distinct_sizes(monkeypatch):
    # From the probe mem_growth.py: the exact cache is cleared at its limit, buckets are few.
    from autooffload import _planner

    monkeypatch.setattr(_planner, "_EXACT_CACHE_LIMIT", 64)
    f = offload(lambda x: np.sum(x))
    for n in range(1000):
        f(np.empty(n, dtype=np.uint8))
        f([np.empty(n % 50, dtype=np.uint8)])  # the general path's keys
    planner = f.__autooffload__.planner
    assert len(planner.exact) <= 64 and len(planner.fast) <= 64
    assert len(planner.buckets) < 40
