"""The optional C check of the NumPy path (src/autooffload/_native.c).

It may answer a call alone only when the Python path would reach the same answer: a plain NumPy
decision already cached for these bytes, plain arrays and scalars, no config() block, DEBUG off.
Everything else must reach the Python path, and the decorator must behave the same without it.
"""

from __future__ import annotations

import contextvars
import logging
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from autooffload import _dispatch, config, offload

native = pytest.importorskip("autooffload._native", reason="the C extension is not built here")

pytestmark = pytest.mark.skipif(_dispatch._native is None, reason="suite runs on the pure-Python wrapper")


def add(a, b):
    return a + b


def rng_array(n, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 2.0, n)


def warmed(func=add, *args):
    f = offload(func)
    args = args or (rng_array(100), rng_array(100, 1))
    f(*args)  # the Python path decides and fills the fast dict
    return f, f.__autooffload__.fastpath, args


def test_a_cached_numpy_decision_is_answered_in_c_and_counted():
    f, fp, (a, b) = warmed()
    assert fp is not None and fp.hits == 0
    calls_before = f.stats.numpy
    np.testing.assert_array_equal(f(a, b), a + b)
    assert fp.hits == 1
    assert f.stats.numpy == calls_before + 1
    assert f.last_decision.backend == "numpy" and f.last_decision.host_bytes == a.nbytes + b.nbytes


def test_stores_the_decision_of_this_call_as_last_decision():
    f, fp, (a, b) = warmed()
    big = rng_array(10_000)
    f(big, big)
    f(big, big)
    assert f.last_decision.host_bytes == 2 * big.nbytes
    f(a, b)
    assert f.last_decision.host_bytes == a.nbytes + b.nbytes
    assert fp.hits == 2


@pytest.mark.parametrize("other", [
    pytest.param(lambda a: np.memmap, id="ndarray subclass"),
    pytest.param(lambda a: [1.0, 2.0], id="list"),
    pytest.param(lambda a: {"k": a}, id="dict"),
    pytest.param(lambda a: (1, [2]), id="tuple holding a list"),
])
def test_unusual_arguments_go_to_the_python_path(other):
    f, fp, (a, b) = warmed()
    value = other(a)
    assert fp(a, value) is False
    assert fp.hits == 0


def test_an_object_array_of_the_same_bytes_gets_the_same_numpy_answer():
    f, fp, (a, b) = warmed()
    objects = b.astype(object)
    assert objects.nbytes == b.nbytes
    result = f(a, objects)
    assert result.dtype == object and np.array_equal(result, a + b)
    assert f.last_decision.backend == "numpy"


def test_scalars_and_tuples_of_scalars_are_passive():
    def scaled(a, shape, factor, name=None):
        return a.reshape(shape) * factor

    a = rng_array(100)
    f, fp, _ = warmed(scaled, a, (10, 10), 2.5)
    assert fp(a, (10, 10), 2.5) is True
    assert fp(a, (10, 10), 2.5, name="x") is True
    np.testing.assert_array_equal(f(a, (10, 10), 2.5), a.reshape(10, 10) * 2.5)


def test_a_config_block_sends_calls_of_its_own_context_to_python_only():
    f, fp, (a, b) = warmed()
    inside, release = threading.Event(), threading.Event()
    seen = []

    def hold_block():
        with config(backend="numpy"):
            seen.append(fp(a, b))
            inside.set()
            release.wait(10)

    t = threading.Thread(target=hold_block)
    t.start()
    try:
        inside.wait(10)
        assert seen == [False]
        assert fp(a, b) is True  # another thread's block is not this thread's
    finally:
        release.set()
        t.join()
    with config(backend="auto"):
        assert fp(a, b) is False
    assert fp(a, b) is True


def test_forced_backend_inside_config_is_not_bypassed(fake_gpu):
    f, fp, (a, b) = warmed()
    with config(backend="cupy"):
        f(a, b)
        assert f.last_decision.backend == "cupy"
    assert fake_gpu.to_device_calls > 0


def test_debug_logging_sends_calls_to_python(caplog):
    f, fp, (a, b) = warmed()
    assert fp(a, b) is True
    with caplog.at_level(logging.DEBUG, logger="autooffload"):
        f(a, b)
        assert fp(a, b) is False  # the level cache now says True, or was cleared
    assert any("add" in r.getMessage() for r in caplog.records)


def test_invalidated_decisions_are_gone_from_the_c_side_too():
    f, fp, (a, b) = warmed()
    assert fp(a, b) is True
    from autooffload import _config

    _config.invalidate_decisions()
    assert fp(a, b) is False
    f(a, b)
    assert fp(a, b) is True


def test_xp_injection_and_log_file_never_use_the_c_check(monkeypatch, tmp_path):
    def with_xp(a, xp=None):
        return xp.sqrt(a)

    a = rng_array(100)
    assert offload(with_xp).__autooffload__.fastpath is None
    monkeypatch.setenv("AUTOOFFLOAD_LOG", str(tmp_path / "log.jsonl"))
    import autooffload

    autooffload.reload_environment()
    f, fp, _ = warmed(add, a, a)
    f(a, a)
    assert fp.hits == 0
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2


def test_constructor_checks_its_arguments():
    var = contextvars.ContextVar("backend", default=None)
    with pytest.raises(TypeError):
        native.FastPath({}, np.ndarray, [int], None, {}, var)
    with pytest.raises(TypeError, match="level_cache"):
        native.FastPath({}, np.ndarray, (int,), [], {}, var)
    with pytest.raises(ValueError, match="at most"):
        native.FastPath({}, np.ndarray, (int,) * 33, None, {}, var)
    with pytest.raises(TypeError, match="ContextVar"):
        native.FastPath({}, np.ndarray, (int,), None, {}, "backend")


def test_the_decorator_tests_pass_on_the_pure_python_wrapper():
    """Where the extension is not built the Python wrapper does everything: same tests, same results."""
    here = os.path.dirname(__file__)
    env = {**os.environ, "AUTOOFFLOAD_TEST_PURE_PYTHON": "1"}
    files = ["test_decorator.py", "test_decisions.py", "test_logging_and_threads.py", "test_properties.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *(os.path.join(here, f) for f in files)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


@pytest.mark.parametrize("make", [
    pytest.param(lambda: np.arange(12.0), id="C"),
    pytest.param(lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)), id="F"),
    pytest.param(lambda: np.arange(24.0).reshape(4, 6)[1:, ::-2], id="negative strides"),
    pytest.param(lambda: np.array(3.5, np.float32), id="0-d"),
    pytest.param(lambda: np.empty((0, 3)), id="0-size"),
    pytest.param(lambda: np.arange(10).view(np.recarray), id="subclass"),
])
def test_array_address_is_ctypes_data(make):
    a = make()
    assert native.array_address(a) == a.ctypes.data


def test_array_address_refuses_what_is_not_an_array():
    with pytest.raises(TypeError, match="numpy.ndarray; got list"):
        native.array_address([1, 2])


def test_a_deep_recursion_through_the_decorator_runs_as_it_does_undecorated():
    # The C check only answers; the call itself stays a Python-to-Python call, which takes no C
    # stack (a version that made the call from C crashed the interpreter 30000 deep).
    code = (
        "import sys, numpy as np\n"
        "from autooffload import offload\n"
        "sys.setrecursionlimit(10**6)\n"
        "@offload\n"
        "def down(x, n):\n"
        "    return x if n == 0 else down(x, n - 1)\n"
        "x = np.ones(4)\n"
        "down(x, 0); down(x, 0)\n"
        "assert down(x, 40000) is x\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])
