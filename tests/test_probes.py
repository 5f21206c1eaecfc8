"""What the broad probes (explore_args, explore_exc, explore_misc) found holding keeps holding:
on the GPU path (FakeDevice), results, writes into arguments and raised exceptions equal NumPy's
for every kind of argument, and the API's corners answer as they did."""

import tempfile
import traceback

import numpy as np
import pytest

from autooffload import config, explain, offload


def double(x):
    x *= 2
    return x


def sin(x):
    return np.sin(x)


def add_shifted(a, b):
    a += 1
    return a + b


def memmap_of_range():
    m = np.memmap(tempfile.mktemp(), dtype="f8", mode="w+", shape=(10,))
    m[:] = np.arange(10)
    return (m,)


def read_only():
    a = np.arange(5.0)
    a.flags.writeable = False
    return (a,)


def misaligned_views():
    buf = np.zeros(16, dtype=np.uint8)
    return buf[1:9].view(np.float64), buf[:8].view(np.float64)


class Sub(np.ndarray):
    pass


# (function, a maker of fresh arguments); longdouble is issue 10 #10's, left to its own tests.
PROBES = {
    "0-d": (sin, lambda: (np.array(1.5),)),
    "0-d write": (double, lambda: (np.array(1.5),)),
    "empty 2d write": (double, lambda: (np.zeros((0, 3)),)),
    "32 dims": (sin, lambda: (np.ones((1,) * 31 + (2,)),)),
    "negative strides 2d": (double, lambda: (np.arange(20.0).reshape(4, 5)[::-1, ::-2],)),
    "read-only read": (sin, read_only),
    "read-only write": (double, read_only),
    "broadcast_to": (sin, lambda: (np.broadcast_to(np.arange(3.0), (4, 3)),)),
    "memmap write": (double, memmap_of_range),
    "masked write": (double, lambda: (np.ma.masked_array(np.arange(5.0), mask=[0, 1, 0, 1, 0]),)),
    "matrix": (lambda x: x * x, lambda: (np.matrix([[1.0, 2], [3, 4]]),)),
    "subclass": (sin, lambda: (np.arange(5.0).view(Sub),)),
    "object": (lambda x: x * 2, lambda: (np.array([1, "a"], dtype=object),)),
    "structured": (lambda x: x["a"] * 2, lambda: (np.zeros(3, dtype=[("a", "f8"), ("b", "i4")]),)),
    "datetime": (lambda x: x + np.timedelta64(1, "D"), lambda: (np.array(["2020-01-01"], dtype="datetime64[D]"),)),
    "float16 write": (double, lambda: (np.arange(5, dtype=np.float16),)),
    "complex64 sin": (sin, lambda: (np.arange(5, dtype=np.complex64),)),
    "bool out=": (lambda x: np.logical_not(x, out=x), lambda: (np.array([True, False]),)),
    "int8 overflow": (double, lambda: (np.array([100, -100], dtype=np.int8),)),
    "uint64": (double, lambda: (np.array([2**63], dtype=np.uint64),)),
    "nested containers": (lambda d: np.sin(d["a"][0][1]["b"]), lambda: ({"a": [(0, {"b": np.arange(3.0)})]},)),
    "generator argument": (lambda g: sum(np.sin(x) for x in g), lambda: ((np.arange(3.0) for _ in range(2)),)),
    "overlapping": (add_shifted, lambda: (lambda x: (x[1:], x[:-1]))(np.arange(6.0))),
    "same array twice": (add_shifted, lambda: (lambda x: (x, x))(np.arange(6.0))),
    "overlapping 2d": (add_shifted, lambda: (lambda x: (x[:, 1:], x.T[1:, :].T))(np.arange(12.0).reshape(3, 4))),
    "misaligned overlap": (add_shifted, misaligned_views),
    "interleaved": (add_shifted, lambda: (lambda x: (x[::2], x[1::2]))(np.arange(10.0))),
    "python scalars": (lambda a, b: np.sin(a) + b, lambda: (1.0, 2)),
    "list of arrays": (lambda a: np.stack(a).sum(), lambda: ([np.ones(3), np.ones(3)],)),
}


def outcome(fn, args):
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def assert_same(want, got):
    if isinstance(want, Exception):
        assert type(got) is type(want) and str(got) == str(want)
        return
    assert type(got) is type(want)
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want, equal_nan=want.dtype.kind in "fc") if want.dtype.kind != "O" else (got == want).all()
    else:
        assert got == want or (got != got and want != want)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
@pytest.mark.parametrize("name", list(PROBES))
def test_gpu_path_equals_numpy(on_gpu, name):
    fn, make = PROBES[name]
    expected_args = make()
    want = outcome(fn, expected_args)
    args = make()
    got = outcome(offload(fn), args)
    assert_same(want, got)
    for before, after in zip(expected_args, args):
        if isinstance(before, np.ndarray) and before.dtype.kind in "biufc":
            np.testing.assert_array_equal(np.asarray(after), np.asarray(before))


class HelperError(Exception):
    pass


def failing_helper(x):
    raise HelperError("from helper")


@pytest.mark.parametrize("backend", ["numpy", "cupy"])
def test_exceptions_keep_type_message_and_the_users_frames(fake_gpu, backend):
    @offload
    def via_helper(x):
        return failing_helper(x)

    @offload
    def interrupted(x):
        raise KeyboardInterrupt

    @offload
    def bad_reshape(x):
        return np.reshape(x, (7, 7))

    with config(backend=backend):
        with pytest.raises(HelperError, match="from helper") as info:
            via_helper(np.arange(4.0))
        assert [f.name for f in traceback.extract_tb(info.value.__traceback__)][-2:] == ["via_helper", "failing_helper"]
        with pytest.raises(KeyboardInterrupt):
            interrupted(np.arange(4.0))
        with pytest.raises(ValueError, match=r"cannot reshape array of size 4 into shape \(7,7\)"):
            bad_reshape(np.arange(4.0))
    for f in (via_helper, interrupted, bad_reshape):
        assert f.stats.fallbacks == 0 and f.stats.calls <= 1


class Methods:
    @offload
    def method(self, x):
        return np.sin(x)

    @classmethod
    @offload
    def klass(cls, x):
        return np.sin(x)

    @staticmethod
    @offload
    def static(x):
        return np.sin(x)


def test_explain_answers_for_methods_classmethods_and_staticmethods():
    for bound in (Methods().method, Methods.klass, Methods.static):
        assert explain(bound, np.ones(3)).backend == "numpy"


def test_nested_offloaded_calls_stay_on_the_device_inside_and_return_host_arrays(on_gpu):
    @offload
    def inner(x):
        return np.cos(x)

    @offload
    def outer(x):
        return inner(x) * 2

    out = outer(np.ones(3))
    assert type(out) is np.ndarray and inner.last_decision.backend == "cupy"
    np.testing.assert_allclose(out, np.cos(np.ones(3)) * 2)
    with config(backend="numpy"):
        assert type(outer(np.ones(3))) is np.ndarray and outer.last_decision.backend == "numpy"
