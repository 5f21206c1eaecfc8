"""Properties: for any view and any in-place operation, the caller's memory ends as NumPy leaves it.

Runs the GPU path through the FakeDevice test double (tests/fake_device.py).
"""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autooffload import config, offload

DTYPES = [np.float64, np.float32, np.int32, np.int8, np.uint16, np.complex64, np.bool_]


def scale(x):
    x *= 3


def set_first(x):
    x[(0,) * x.ndim] = 1


def sort_last(x):
    x.sort(axis=-1)


def add_out(x):
    np.add(x, x, out=x)


def fill_from_other(x, y):
    # Reads y while writing x: meaningful only if overlap is preserved.
    x[...] = y.max()  # same dtype as x: no overflow, and every element of y is read
    return y.copy()


OPS = [scale, set_first, sort_last, add_out]


@st.composite
def parent_and_view(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 6)) for _ in range(ndim))
    dtype = draw(st.sampled_from(DTYPES))
    slices = []
    for n in shape:
        step = draw(st.sampled_from([1, 2, -1, -2, 3]))
        start = draw(st.integers(0, n - 1))
        slices.append(slice(start, None, step))
    transpose = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return shape, dtype, tuple(slices), transpose, seed


def make(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 50, size=shape)  # never zero
    if np.dtype(dtype).kind == "c":
        return (values + 1j * rng.integers(1, 50, size=shape)).astype(dtype)
    return values.astype(dtype)


def view_of(parent, slices, transpose):
    v = parent[slices]
    return v.T if transpose else v


settings_ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def outcome(func, *args):
    """(result, None) or (None, exception type) of a call."""
    try:
        return func(*args), None
    except Exception as exc:  # e.g. x *= 3 on bool, max of an empty view: NumPy refuses, so must we
        return None, type(exc)


def same_as_numpy(func, parent, make_args):
    """Run ``func`` plainly on a copy of ``parent`` and offloaded (fake GPU) on ``parent`` itself."""
    expected = parent.copy()
    want, want_error = outcome(func, *make_args(expected))
    with config(backend="cupy"):
        got, error = outcome(offload(func), *make_args(parent))
    assert error is want_error
    np.testing.assert_array_equal(parent, expected)
    if want is not None:
        np.testing.assert_array_equal(got, want)


@settings_
@given(case=parent_and_view(), op=st.sampled_from(OPS))
def test_any_view_any_write(fake_gpu, case, op):
    shape, dtype, slices, transpose, seed = case
    same_as_numpy(op, make(shape, dtype, seed), lambda p: (view_of(p, slices, transpose),))


@settings_
@given(a=parent_and_view(), b=parent_and_view())
def test_overlapping_views_keep_numpy_semantics(fake_gpu, a, b):
    shape, dtype, slices, transpose, seed = a
    other = tuple(b[2][i] if i < len(b[2]) else s for i, s in enumerate(slices))
    same_as_numpy(
        fill_from_other, make(shape, dtype, seed), lambda p: (view_of(p, slices, transpose), p[other])
    )
