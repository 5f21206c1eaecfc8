"""Writes into arguments on the GPU path, through the FakeDevice test double: interruptions,
byte order, dtypes the device cannot hold, views of strided arguments, metadata changes.

Real GPU behaviour is proven by the tests marked ``gpu`` (test_decorator_gpu.py).
"""

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autooffload import offload

rng = np.random.default_rng(10)

LAYOUTS = {
    "C": lambda parent: parent,
    "F": lambda parent: parent.T,
    "strided": lambda parent: parent[::2, 1::3],
    "reversed": lambda parent: parent[::-1, ::-2],
}


class Interrupt(BaseException):
    """A BaseException of the user's own."""


# -- #12: writes made before a BaseException are kept --------------------------------------------
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit, Interrupt])
def test_writes_before_a_base_exception_are_kept(on_gpu, exc_type, layout):
    def write_then_stop(x):
        x[0] = -1.0
        x *= 2
        raise exc_type()

    parent = rng.random((6, 8)) + 0.5
    expected = parent.copy()
    with pytest.raises(exc_type):
        write_then_stop(LAYOUTS[layout](expected))
    f = offload(write_then_stop)
    with pytest.raises(exc_type):
        f(LAYOUTS[layout](parent))
    assert f.last_decision.backend == "cupy"
    np.testing.assert_array_equal(parent, expected)


def test_a_base_exception_frees_the_moved_copies(on_gpu, monkeypatch):
    from autooffload import _arguments

    made = []
    real_move = _arguments.Moved.move

    def recording_move(self, args, kwargs):
        made.append(self)
        return real_move(self, args, kwargs)

    monkeypatch.setattr(_arguments.Moved, "move", recording_move)

    @offload
    def stop(x):
        x += 1
        raise KeyboardInterrupt

    x = np.zeros(3)
    with pytest.raises(KeyboardInterrupt):
        stop(x)
    np.testing.assert_array_equal(x, np.ones(3))
    (moved,) = made
    assert not moved.entries and not moved.regions and moved.args == () and moved.kwargs == {}


def test_a_base_exception_in_the_numpy_run_of_device_data_keeps_writes(fake_gpu):
    from fake_device import FakeDeviceArray

    @offload(backend="numpy")
    def stop(x):
        x[1] = 7.0
        raise KeyboardInterrupt

    x = np.zeros(3).view(FakeDeviceArray)
    with pytest.raises(KeyboardInterrupt):
        stop(x)
    np.testing.assert_array_equal(x.view(np.ndarray), [0.0, 7.0, 0.0])


# -- #9: arrays in non-native byte order -----------------------------------------------------------
SWAPPED = np.dtype(">f8") if np.dtype("f8").isnative and np.little_endian else np.dtype("<f8")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_writes_into_a_non_native_array_reach_the_caller_in_its_byte_order(on_gpu, layout):
    def scale(x):
        x *= 2
        x[0] = -1.5
        return x.sum()

    parent = (rng.random((6, 8)) * 100).astype(SWAPPED)
    expected = parent.copy()
    want = scale(LAYOUTS[layout](expected))
    f = offload(scale)
    got = f(LAYOUTS[layout](parent))
    assert f.last_decision.backend == "cupy"
    assert parent.dtype == SWAPPED
    np.testing.assert_array_equal(parent, expected)
    assert got == pytest.approx(want, rel=1e-12)


def test_a_non_native_argument_returned_or_viewed_keeps_its_values(on_gpu):
    @offload
    def parts(x):
        return x, x[1:], x[::-1], x.view(np.uint8)[:8]

    x = np.arange(6.0).astype(SWAPPED)
    same, tail, backwards, raw = parts(x)
    assert same is x
    np.testing.assert_array_equal(tail, x[1:])
    np.testing.assert_array_equal(backwards, x[::-1])
    np.testing.assert_array_equal(raw, x.astype("=f8").view(np.uint8)[:8])  # the device's bytes are native


def test_overlapping_non_native_arguments_run_on_numpy(on_gpu):
    def shift(a, b):
        a[1:] += b[:-1]
        return a.sum()

    base = (rng.random(10)).astype(SWAPPED)
    expected = base.copy()
    want = shift(expected[2:], expected[:8])
    f = offload(shift)
    assert f(base[2:], base[:8]) == want
    np.testing.assert_array_equal(base, expected)
    assert f.last_decision.backend == "numpy" and "byte order" in f.last_decision.reason


# -- #10: dtypes no device holds -----------------------------------------------------------------
LONG = [d for d in (np.dtype(np.longdouble), np.dtype(np.clongdouble))
        if d not in (np.dtype(np.float64), np.dtype(np.complex128))]  # where long double is double, it is held


@pytest.mark.skipif(not LONG, reason="long double is double on this platform")
@pytest.mark.parametrize("dtype", LONG, ids=str)
@pytest.mark.parametrize("how", ["config", "decorator", "nested"])
def test_long_double_arguments_run_on_numpy_and_say_why(fake_gpu, dtype, how):
    from autooffload import config, explain

    def double(x):
        x *= 2
        return x

    def double_first(items):
        return double(items[0])

    a = np.arange(3).astype(dtype)
    if how == "config":
        f, args = offload(double), (a,)
    elif how == "decorator":
        f, args = offload(backend="cupy")(double), (a,)
    else:
        f, args = offload(double_first), ([a],)
    with config(backend="cupy") if how != "decorator" else contextlib.nullcontext():
        d = explain(f, *args)
        out = f(*args)
    assert out is a and np.array_equal(a, np.arange(3) * 2) and a.dtype == dtype
    assert d.backend == "numpy" and f.last_decision.backend == "numpy"
    assert str(dtype) in d.reason and "forced cupy ignored" in d.reason


@pytest.mark.skipif(not LONG, reason="long double is double on this platform")
def test_a_long_double_result_of_a_numpy_run_of_device_data_stays_on_the_host(fake_gpu):
    from fake_device import FakeDeviceArray

    f = offload(backend="numpy")(lambda x: x.astype(np.longdouble) * 2)
    out = f(np.arange(3.0).view(FakeDeviceArray))
    assert type(out) is np.ndarray and out.dtype == np.longdouble and np.array_equal(out, [0, 2, 4])


def test_every_device_dtype_is_held_in_either_byte_order():
    from autooffload.backends import DEVICE_DTYPES

    held = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"]
    for code in held:
        assert np.dtype(code) in DEVICE_DTYPES and np.dtype(code).newbyteorder() in DEVICE_DTYPES
    for other in ["O", "U3", "S2", "M8[s]", "m8[s]", "V8", [("a", "f8")], (np.float64, (2,))] + LONG:
        assert np.dtype(other) not in DEVICE_DTYPES


# -- #11: views of strided arguments are views of the caller's memory -----------------------------
def _address(a):
    return a.__array_interface__["data"][0]


def _translated(original, copy, view):
    """``view`` (of ``copy``) as an array over ``original``'s memory, or None."""
    from autooffload._arguments import extent
    from autooffload._layout import translate_view

    mapped = translate_view(
        _address(view) - _address(copy), view.shape, view.strides, view.itemsize,
        dense_shape=copy.shape, dense_strides=copy.strides, target_strides=original.strides,
        element_size=original.itemsize,
    )
    if mapped is None:
        return None
    offset, strides = mapped
    low, high = extent(_address(original), original.shape, original.strides, original.itemsize)
    buffer = np.frombuffer(original.base if original.base is not None else original, np.uint8)
    start = _address(original) - _address(buffer)
    return np.ndarray(view.shape, view.dtype, buffer=buffer, offset=start + offset, strides=strides)


@st.composite
def _slices(draw, shape):
    out = []
    for n in shape:
        step = draw(st.sampled_from([1, 1, 2, 3, -1, -2]))
        a, b = sorted(draw(st.lists(st.integers(0, n), min_size=2, max_size=2)))
        out.append(slice(a, b, step) if step > 0 else slice(b - 1 if b else None, a - 1 if a else None, step))
    return tuple(out)


@st.composite
def _strided_case(draw):
    ndim = draw(st.integers(1, 3))
    base_shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from([np.float64, np.int16, np.complex128]))
    base = np.arange(np.prod(base_shape)).astype(dtype).reshape(base_shape)
    if dtype is np.complex128:
        base = base + 1j * (base + 1000)
    original = base[draw(_slices(base_shape))].transpose(draw(st.permutations(range(ndim))))
    copy = np.array(original, order=draw(st.sampled_from("CF")))
    index = draw(_slices(copy.shape))
    perm = draw(st.permutations(range(ndim)))
    kind = draw(st.sampled_from(["same", "real", "imag", "flat", "bytes"]))
    return base, original, copy, index, perm, kind


@settings(max_examples=300, deadline=None)
@given(_strided_case())
def test_a_view_of_the_copy_translates_into_the_same_view_of_the_original(case):
    base, original, copy, index, perm, kind = case
    basic = copy[index].transpose(perm)
    if kind == "same":
        view = basic
    elif kind in ("real", "imag"):
        view = getattr(basic, kind)
    elif kind == "flat":
        view = copy.reshape(-1, order="A")[index[0]] if copy.size else copy
    else:
        if not copy.size:
            return
        view = copy.view(np.uint8) if copy.flags.c_contiguous else copy.T.view(np.uint8)
        view = view.reshape(-1)[index[0]]
    if not view.size or not np.shares_memory(view, copy):
        return
    mapped = _translated(original, copy, view)
    if kind == "same" or (kind in ("real", "imag") and np.iscomplexobj(copy)):
        # Every basic-index view of the copy is that view of the original: it must be found.
        assert mapped is not None
        np.testing.assert_array_equal(mapped, getattr(original[index].transpose(perm), kind, None)
                                      if kind != "same" else original[index].transpose(perm))
    if mapped is not None:
        assert np.shares_memory(mapped, base)
        np.testing.assert_array_equal(mapped, view)  # element by element, what the copy's view holds


def test_views_that_do_not_follow_the_original_are_not_translated():
    from autooffload._layout import translate_view

    original = np.arange(24.0).reshape(4, 6)[:, ::2]  # (4, 3), strides (48, 16)
    copy = np.ascontiguousarray(original)  # strides (24, 8)
    flat = copy.reshape(-1)[2:7]  # crosses from row 0 into row 1: no fixed step in the original
    assert _translated(original, copy, flat) is None
    halves = copy.view(np.float32)[:, 1:4]  # halves of two neighbouring elements, not neighbours there
    assert _translated(original, copy, halves) is None
    wide = copy.reshape(-1)[:4].view(np.complex128)  # an element of it straddles two elements
    assert _translated(original, copy, wide) is None
    assert translate_view(8, (2,), (8,), 8, dense_shape=(3,), dense_strides=(8,), target_strides=(-8,),
                          element_size=8) == (-8, (-8,))


STRIDED = {
    "a[::2]": lambda: np.arange(10.0)[::2],
    "a[::-1]": lambda: np.arange(10.0)[::-1],
    "transposed": lambda: np.arange(12.0).reshape(3, 4).T,
    "column": lambda: np.arange(12.0).reshape(3, 4)[:, 1],
    "2-d strided": lambda: np.arange(48.0).reshape(6, 8)[::2, ::-3],
}


@pytest.mark.parametrize("make", list(STRIDED.values()), ids=list(STRIDED))
def test_a_view_of_a_strided_argument_is_a_view_of_the_callers_memory(on_gpu, make):
    def head_and_back(x):
        x[0] = -5.0
        return x[:2], x[::-1], x.T

    a, ref = make(), make()
    got, want = offload(head_and_back)(a), head_and_back(ref)
    for g, w in zip(got, want):
        assert type(g) is np.ndarray and np.shares_memory(g, a)
        np.testing.assert_array_equal(g, w)
    got[0][...] = 7.0
    want[0][...] = 7.0
    np.testing.assert_array_equal(a, ref)


def test_a_view_of_a_non_native_argument_is_a_view_in_its_byte_order(on_gpu):
    parts = offload(lambda x: (x[1:], x[::-2]))
    x = np.arange(6.0).astype(SWAPPED)
    tail, back = parts(x)
    for got, want in ((tail, x[1:]), (back, x[::-2])):
        assert got.dtype == SWAPPED and np.shares_memory(got, x)
        np.testing.assert_array_equal(got, want)
    tail[0] = 42.0
    assert x[1] == 42.0


def test_a_host_view_of_strided_device_data_is_a_view_of_the_device_array(fake_gpu):
    from fake_device import FakeDeviceArray

    @offload(backend="numpy")
    def head(x):
        return x[:2]

    parent = np.arange(10.0).view(FakeDeviceArray)
    x = parent[::-2]
    out = head(x)
    assert type(out) is FakeDeviceArray and np.shares_memory(out, parent)
    np.testing.assert_array_equal(out.view(np.ndarray), [9.0, 7.0])


# -- #14: the function changes an argument's shape ------------------------------------------------
@pytest.mark.parametrize("layout", ["C", "strided 1-d"])
def test_a_shape_set_on_an_argument_reaches_the_caller_and_writes_are_kept(on_gpu, layout):
    def as_matrix(x):
        x.shape = (2, 2)
        x[1] += 10
        return x, x.sum()

    make = (lambda: np.arange(4.0)) if layout == "C" else (lambda: np.arange(8.0)[::2])
    a, ref = make(), make()
    want_x, want_sum = as_matrix(ref)
    f = offload(as_matrix)
    got_x, got_sum = f(a)
    assert f.last_decision.backend == "cupy"
    assert got_x is a and a.shape == ref.shape == (2, 2)
    np.testing.assert_array_equal(a, ref)
    assert got_sum == want_sum


def test_a_shape_the_callers_array_cannot_take_in_place_raises_as_numpy_does(on_gpu):
    def flatten(x):
        x[0, 0] = -1.0
        x.shape = (6,)  # a column slice cannot be reshaped in place; its dense copy can
        return x

    ref = np.arange(12.0).reshape(3, 4)[:, :2]
    with pytest.raises(AttributeError) as numpy_error:
        flatten(ref)
    a = np.arange(12.0).reshape(3, 4)[:, :2]
    f = offload(flatten)
    with pytest.raises(AttributeError) as offload_error:
        f(a)
    assert str(offload_error.value) == str(numpy_error.value)
    assert a.shape == (3, 2) and f.last_decision.backend == "numpy"
    np.testing.assert_array_equal(a, ref)  # the write before the error is kept, once


def test_write_detection_compares_the_memory_as_moved(on_gpu):
    def reshape_only(x):
        x.shape = (4,)

    a = np.arange(4.0).reshape(2, 2)
    assert offload(reshape_only)(a) is None
    assert a.shape == (4,) and on_gpu.to_host_calls == 0  # nothing written: nothing copied back


# -- the write probes that held (../shared/repro/explore_writes.py), kept holding -----------------
def _same(a, b):
    if isinstance(a, np.ndarray):
        return type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True) \
            and np.array_equal(a.view(np.uint8) if a.flags.c_contiguous else a, b.view(np.uint8) if b.flags.c_contiguous else b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _view_write(x):
    x[2:5][:] = -1


def _out_into_strided_view_of_self(x):
    np.multiply(x[1::2], 2, out=x[::2])
    return x


def _in_list(items):
    items[0] *= 2
    items[1][0] = 7


def _in_dict(d):
    d["a"] += 1
    d["b"] = d["a"] * 2
    d.pop("c")


def _list_append(items):
    items.append(items[0] * 2)


def _tuple_in_list(items):
    items[0][0][:] = 5


def _nested_list_rebind(items):
    items[0][0] = items[0][0] + 1


def _nan_write(x):
    x[0] = np.nan


def _negative_zero(x):
    x[0] = -0.0


def _nan_payload(x):
    x.view(np.uint64)[0] = 0x7FF8000000000001


def _return_view_written(x):
    v = x[1:3]
    v += 10
    return v


def _keyword_only_out(x, *, out):
    out[...] = x * 2


PROBES = {
    "write through a view": (_view_write, lambda: ((np.arange(8.0),), {})),
    "out= into a strided view of itself": (_out_into_strided_view_of_self, lambda: ((np.arange(6.0),), {})),
    "arrays in a list": (_in_list, lambda: (([np.arange(3.0), np.arange(3.0)],), {})),
    "dict: write, rebind, pop": (_in_dict, lambda: (({"a": np.arange(3.0), "c": np.ones(2)},), {})),
    "list append": (_list_append, lambda: (([np.arange(3.0)],), {})),
    "array in a tuple in a list": (_tuple_in_list, lambda: (([(np.arange(3.0),)],), {})),
    "nested list item rebound": (_nested_list_rebind, lambda: (([[np.arange(3.0)]],), {})),
    "NaN over a number": (_nan_write, lambda: ((np.arange(3.0),), {})),
    "-0.0 over +0.0": (_negative_zero, lambda: ((np.zeros(3),), {})),
    "a NaN payload changed": (_nan_payload, lambda: ((np.full(3, np.nan),), {})),
    "a returned view, written": (_return_view_written, lambda: ((np.arange(5.0),), {})),
    "keyword-only out": (_keyword_only_out, lambda: ((np.arange(3.0),), {"out": np.zeros(3)})),
}


@pytest.mark.parametrize("name", list(PROBES))
def test_writes_and_results_match_numpy(on_gpu, name):
    func, make = PROBES[name]
    ref_args, ref_kwargs = make()
    want = func(*ref_args, **ref_kwargs)
    args, kwargs = make()
    f = offload(func)
    got = f(*args, **kwargs)
    assert f.last_decision.backend == "cupy"
    assert _same((args, kwargs), (ref_args, ref_kwargs))
    assert _same(got, want)


def test_a_function_that_sets_array_flags_runs_on_numpy_so_the_flag_reaches_the_caller(on_gpu):
    @offload
    def freeze(x):
        x.flags.writeable = False
        return x.sum()

    @offload
    def freeze_by_method(x):
        x.setflags(write=False)

    for f in (freeze, freeze_by_method):
        x = np.arange(3.0)
        f(x)
        assert not x.flags.writeable
        assert f.last_decision.backend == "numpy"
        assert "flags" in f.last_decision.reason and "forced cupy ignored" in f.last_decision.reason


def test_global_assignments_before_the_functions_own_exception_reach_the_module(on_gpu):
    namespace = {"np": np, "LAST": None}
    exec(
        "def f(x):\n"
        "    global LAST\n"
        "    LAST = x * 2\n"
        "    raise ValueError('after the store')\n",
        namespace,
    )
    x = np.arange(3.0)
    with pytest.raises(ValueError, match="after the store"):
        offload(namespace["f"])(x)
    assert type(namespace["LAST"]) is np.ndarray
    np.testing.assert_array_equal(namespace["LAST"], x * 2)
