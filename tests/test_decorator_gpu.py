"""@offload on a real GPU with real CuPy: results equal NumPy's, writes reach the caller.

Marked ``gpu``: skipped where CuPy or a CUDA device is missing. Run on the GPU machine
(../shared/gpu/README.md). Tolerances are stated per function: float64 throughout, so
differences come only from summation order and library algorithms (cuBLAS, cuFFT, cuSOLVER).
"""

import asyncio
import threading
import warnings

import numpy as np
import pytest
from conftest import check_plain_pick, cupy_or_skip, plain_pick

pytestmark = pytest.mark.gpu
cp = cupy_or_skip()

from autooffload import GPUFallbackWarning, config, explain, offload  # noqa: E402

rng = np.random.default_rng(2026)


# --- ten realistic NumPy functions, written as a user would -----------------------------------
def rolling_zscore(prices, window):
    c = np.cumsum(prices, axis=0)
    c2 = np.cumsum(prices * prices, axis=0)
    s = c[window:] - c[:-window]
    s2 = c2[window:] - c2[:-window]
    mean = s / window
    var = s2 / window - mean * mean
    return (prices[window:] - mean) / np.sqrt(np.maximum(var, 1e-12))


def _norm_cdf(x):
    # Abramowitz-Stegun 7.1.26 erf approximation, NumPy only.
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x) / np.sqrt(2.0))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-(x * x) / 2.0)
    return 0.5 * (1.0 + np.sign(x) * erf)


def black_scholes_call(spot, strike, vol, t, r):
    d1 = (np.log(spot / strike) + (r + 0.5 * vol * vol) * t) / (vol * np.sqrt(t))
    d2 = d1 - vol * np.sqrt(t)
    return spot * _norm_cdf(d1) - strike * np.exp(-r * t) * _norm_cdf(d2)


def portfolio_score(prices, weights):
    r = np.diff(np.log(prices), axis=0)
    return (r * weights).sum(axis=1).std()


def min_variance_weights(returns):
    cov = np.cov(returns, rowvar=False)
    ones = np.ones(cov.shape[0])
    w = np.linalg.solve(cov + 1e-6 * np.eye(cov.shape[0]), ones)
    return w / w.sum()


def fft_convolve(signal, kernel):
    n = signal.size + kernel.size - 1
    return np.fft.irfft(np.fft.rfft(signal, n) * np.fft.rfft(kernel, n), n)


def tail_stats(x):
    s = np.sort(x)
    return s[: x.size // 10].mean(), np.percentile(x, [1.0, 50.0, 99.0]), np.median(x)


def pairwise_distances(a, b):
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def kmeans_step(points, centers):
    d = ((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    label = np.argmin(d, axis=1)
    new = np.stack([points[label == k].mean(axis=0) for k in range(centers.shape[0])])
    return label, new


def least_squares(x, y):
    design = np.column_stack([np.ones(x.shape[0]), x])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    return beta, np.linalg.norm(design @ beta - y)


def clip_and_scale_in_place(x, limit):
    x *= 5.0
    x[x > limit] = limit
    np.add(x, 1.0, out=x)


def gbm_terminal_mean(s0, n_paths, mu, sigma):
    z = np.random.standard_normal(n_paths)
    return (s0 * np.exp((mu - 0.5 * sigma**2) + sigma * z)).mean()


def _close(got, want, rtol, atol=0.0):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            _close(g, w, rtol, atol)
        return
    assert type(got) is type(want), (type(got), type(want))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


prices = np.cumprod(1 + 0.01 * rng.standard_normal((2000, 16)), axis=0) * 100
CASES = [
    ("rolling_zscore", rolling_zscore, (prices[:, 0].copy(), 20), 1e-7, 1e-9),
    ("black_scholes", black_scholes_call, (rng.uniform(50, 150, 100_000), 100.0, rng.uniform(0.1, 0.5, 100_000), 0.75, 0.02), 1e-12, 1e-12),
    ("portfolio_score", portfolio_score, (prices, rng.random(16)), 1e-10, 0.0),
    ("min_variance", min_variance_weights, (np.diff(np.log(prices), axis=0),), 1e-8, 1e-12),
    ("fft_convolve", fft_convolve, (rng.standard_normal(50_000), rng.standard_normal(257)), 1e-9, 1e-9),
    ("tail_stats", tail_stats, (rng.standard_normal(200_001),), 1e-10, 0.0),
    ("pairwise", pairwise_distances, (rng.random((500, 8)), rng.random((300, 8))), 1e-9, 1e-9),
    ("kmeans", kmeans_step, (rng.random((20_000, 3)), rng.random((5, 3))), 1e-10, 0.0),
    ("lstsq", least_squares, (rng.random((5000, 3)), rng.random(5000)), 1e-8, 1e-10),
    ("matmul_chain", lambda a, b: np.einsum("ij,jk->ik", a @ b, b.T), (rng.random((256, 128)), rng.random((128, 64))), 1e-10, 0.0),
]


@pytest.mark.parametrize("name,func,args,rtol,atol", CASES, ids=[c[0] for c in CASES])
def test_realistic_functions_match_numpy_on_the_gpu(name, func, args, rtol, atol):
    want = func(*args)
    f = offload(func)
    with config(backend="cupy"):
        got = f(*args)
    assert f.last_decision.backend == "cupy" and f.stats.cupy == 1 and f.stats.fallbacks == 0
    _close(got, want, rtol, atol)


def test_in_place_updates_match_numpy_for_every_layout():
    f = offload(clip_and_scale_in_place)
    views = [lambda p: p, lambda p: p.T, lambda p: p[::3, 1::2], lambda p: p[::-1, ::-2], lambda p: p.T[2:, ::3]]
    for view in views:
        parent = rng.random((64, 48))
        expected = parent.copy()
        clip_and_scale_in_place(view(expected), 3.0)
        with config(backend="cupy"):
            assert f(view(parent), 3.0) is None
        np.testing.assert_array_equal(parent, expected)
    assert f.stats.cupy == len(views)


def test_overlapping_arguments_on_the_gpu():
    def shift(a, b):
        a[1:] += b[:-1]
        return a.sum()

    base = rng.random(1000)
    expected = base.copy()
    want = shift(expected[2:], expected[:998])
    with config(backend="cupy"):
        got = offload(shift)(base[2:], base[:998])
    np.testing.assert_array_equal(base, expected)
    assert got == pytest.approx(want, rel=1e-12)


def test_results_types_scalars_and_returned_arguments():
    @offload
    def f(x):
        x *= 2
        return x, x.sum(), x[1:], {"n": x.size}

    x = rng.random(10)
    before = x.copy()
    with config(backend="cupy"):
        same, total, tail, meta = f(x)
    assert same is x and np.array_equal(x, before * 2)
    assert type(total) is np.float64 and total == pytest.approx((before * 2).sum(), rel=1e-12)
    assert np.shares_memory(tail, x) and meta == {"n": 10}


def test_device_resident_data_stays_on_the_device_and_auto_picks_the_gpu():
    f = offload(kind="fft")(lambda x: np.fft.fft(x))
    x = cp.asarray(rng.random(1 << 20))
    out = f(x)
    assert isinstance(out, cp.ndarray)
    assert f.last_decision.backend == "cupy" and f.last_decision.device_bytes == x.nbytes
    cp.testing.assert_allclose(out, cp.fft.fft(x), rtol=1e-12)
    assert explain(f, x).backend == "cupy"


def test_device_inputs_forced_to_numpy_come_back_to_the_device_with_writes():
    @offload(backend="numpy")
    def f(x):
        x += 1
        return x * 2

    x = cp.arange(5, dtype=cp.float64)
    out = f(x)
    assert isinstance(out, cp.ndarray)
    cp.testing.assert_array_equal(x, cp.arange(5) + 1.0)
    cp.testing.assert_array_equal(out, (cp.arange(5) + 1.0) * 2)


def test_numpy_callables_wrapped_directly():
    fft, solve = offload(np.fft.fft), offload(np.linalg.solve)
    a = rng.random((64, 64)) + 64 * np.eye(64)
    b = rng.random(64)
    x = rng.random(4096)
    with config(backend="cupy"):
        np.testing.assert_allclose(fft(x), np.fft.fft(x), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(solve(a, b), np.linalg.solve(a, b), rtol=1e-9)
    assert fft.stats.cupy == 1 and solve.stats.cupy == 1


HOST_WEIGHTS = np.linspace(0.5, 1.5, 1000)


def test_implicit_conversion_falls_back_with_one_warning():
    @offload
    def f(x):
        return (x * HOST_WEIGHTS).sum()

    x = rng.random(1000)
    with config(backend="cupy"):
        with pytest.warns(GPUFallbackWarning, match="TypeError"):
            assert f(x) == pytest.approx((x * HOST_WEIGHTS).sum(), rel=1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("error", GPUFallbackWarning)
            f(x)
    assert f.stats.fallbacks == 1 and f.stats.numpy == 2


def test_a_function_cupy_lacks_falls_back():
    candidates = ["real_if_close", "asarray_chkfinite", "ediff1d", "fix", "nanquantile", "trim_zeros"]
    missing = [n for n in candidates if hasattr(np, n) and not hasattr(cp, n)]
    if not missing:
        pytest.skip("this CuPy has every candidate function")
    name = missing[0]
    func = getattr(np, name)

    def g(x):
        return np.asarray(func(x)) + 0.0 if name != "nanquantile" else func(x, 0.5)

    x = rng.random(100)
    with config(backend="cupy"), pytest.warns(GPUFallbackWarning, match=name):
        np.testing.assert_array_equal(offload(g)(x), g(x))


def test_user_errors_are_raised_unchanged():
    @offload
    def f(x):
        if x.sum() > 0:
            raise ValueError("negative prices expected")
        return x

    with config(backend="cupy"), pytest.raises(ValueError, match="negative prices expected"):
        f(rng.random(10))


def test_random_generation_runs_on_the_device():
    f = offload(gbm_terminal_mean)
    with config(backend="cupy"):
        got = f(100.0, 2_000_000, 0.05, 0.2)
    assert f.stats.cupy == 1 and type(got) is np.float64
    # E[S_T] = s0 * exp(mu); standard error ~ 100 * 0.2 / sqrt(2e6) = 0.014
    assert got == pytest.approx(100.0 * np.exp(0.05), abs=0.1)


def test_every_dtype_empty_and_zero_d_round_trip():
    f = offload(lambda x: x[::-1].copy())
    with config(backend="cupy"):
        for dt in ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"]:
            x = (rng.random(33) * 100).astype(dt)
            out = f(x)
            assert type(out) is np.ndarray and out.dtype == x.dtype and np.array_equal(out, x[::-1])
        assert f(np.empty((0, 4))).shape == (0, 4)
        doubled = offload(lambda x: x * 2)(np.array(2.5))
        assert type(doubled) is np.float64 and doubled == 5.0


def test_generators_and_coroutines_run_on_numpy_with_their_writes():
    def scale_rows(m):
        for row in m:
            row *= 2.0  # a write into the caller's array, made while the caller iterates
            yield np.sin(row).sum()

    async def normalise(v):
        v /= np.linalg.norm(v)
        return np.cumsum(v)

    m, v = rng.random((64, 1024)), rng.random(1 << 16)
    m_ref, v_ref = m.copy(), v.copy()
    expected_rows, expected_sum = list(scale_rows(m_ref)), asyncio.run(normalise(v_ref))
    with config(backend="cupy"):
        rows_f, norm_f = offload(scale_rows), offload(normalise)
        rows, summed = list(rows_f(m)), asyncio.run(norm_f(v))
    assert [type(r) for r in rows] == [type(r) for r in expected_rows]
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(m, m_ref)
    assert type(summed) is np.ndarray
    np.testing.assert_array_equal(summed, expected_sum)
    np.testing.assert_array_equal(v, v_ref)
    assert rows_f.last_decision.backend == "numpy" and norm_f.last_decision.backend == "numpy"


def test_many_threads_on_the_gpu():
    f = offload(lambda x: np.sort(x)[::-1] * 2)
    errors = []

    def worker(i):
        try:
            with config(backend="cupy" if i % 2 else "auto"):
                for j in range(20):
                    x = rng.random(1000 + i * 10 + j)
                    np.testing.assert_array_equal(f(x), np.sort(x)[::-1] * 2)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:2]
    assert f.stats.calls == 160


def test_zero_d_results_are_numpy_scalars_and_zero_d_arguments_come_back_as_themselves():
    x = np.arange(3.0)
    with config(backend="cupy"):
        for fn in (lambda x: x[1], lambda x: x.sum(), lambda x: np.zeros(()) + x[0]):
            got = offload(fn)(x)
            assert type(got) is np.float64 and got == fn(x)  # CuPy's x[1] is a 0-d view of x
        zero_d = np.array(2.0)
        assert offload(lambda z: z)(zero_d) is zero_d


SWAPPED = np.dtype("f8").newbyteorder("S")  # '>f8' on a little-endian machine


def test_non_native_byte_order_arguments_are_written_back_in_their_byte_order():
    def scale(x):
        x *= 2
        x[0] = -1.5
        return x.sum()

    f = offload(scale)
    for view in (lambda p: p, lambda p: p.T, lambda p: p[::3, 1::2], lambda p: p[::-1, ::-2]):
        parent = (rng.random((64, 48)) * 100).astype(SWAPPED)
        expected = parent.copy()
        want = scale(view(expected))
        with config(backend="cupy"):
            got = f(view(parent))
        assert f.last_decision.backend == "cupy"
        assert parent.dtype == SWAPPED
        np.testing.assert_array_equal(parent, expected)
        assert got == pytest.approx(want, rel=1e-12)

    x = np.arange(6.0).astype(SWAPPED)
    with config(backend="cupy"):
        same, tail, backwards = offload(lambda x: (x, x[1:], x[::-1]))(x)
    assert same is x
    np.testing.assert_array_equal(tail, x[1:])
    np.testing.assert_array_equal(backwards, x[::-1])

    def shift(a, b):  # overlapping: copied as one byte span, which cannot change byte order
        a[1:] += b[:-1]
        return a.sum()

    base = rng.random(100).astype(SWAPPED)
    expected = base.copy()
    want = shift(expected[2:], expected[:98])
    g = offload(shift)
    with config(backend="cupy"):
        assert g(base[2:], base[:98]) == want
    np.testing.assert_array_equal(base, expected)
    assert g.last_decision.backend == "numpy" and "byte order" in g.last_decision.reason


def test_long_double_arguments_run_on_numpy_with_the_reason():
    held = [np.dtype(np.float64), np.dtype(np.complex128)]
    dtypes = [d for d in (np.dtype(np.longdouble), np.dtype(np.clongdouble)) if d not in held]
    if not dtypes:
        pytest.skip("long double is double on this platform")

    @offload
    def double(x):
        x *= 2
        return x

    for dtype in dtypes:
        a = np.arange(3).astype(dtype)
        with config(backend="cupy"):
            reason = explain(double, a).reason
            assert double(a) is a
        assert np.array_equal(a, [0, 2, 4]) and a.dtype == dtype
        assert double.last_decision.backend == "numpy"
        assert str(dtype) in reason and "forced cupy ignored" in reason


def test_a_view_of_a_strided_argument_is_a_view_of_the_callers_memory():
    def head_and_back(x):
        x[0] = -5.0
        return x[:2], x[::-1], x.T

    f = offload(head_and_back)
    for make in (lambda: np.arange(10.0)[::2], lambda: np.arange(10.0)[::-1],
                 lambda: np.arange(12.0).reshape(3, 4).T, lambda: np.arange(12.0).reshape(3, 4)[:, 1],
                 lambda: np.arange(48.0).reshape(6, 8)[::2, ::-3], lambda: np.arange(6.0).astype(SWAPPED)[::-2]):
        a, ref = make(), make()
        with config(backend="cupy"):
            got = f(a)
        want = head_and_back(ref)
        assert f.last_decision.backend == "cupy"
        for g, w in zip(got, want):
            assert type(g) is np.ndarray and np.shares_memory(g, a) and g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
        got[0][...] = 7.0
        want[0][...] = 7.0
        np.testing.assert_array_equal(a, ref)


def test_a_host_view_of_strided_device_data_is_a_view_of_the_device_array():
    @offload(backend="numpy")
    def head(x):
        return x[:2]

    parent = cp.arange(10.0)
    out = head(parent[::-2])
    assert isinstance(out, cp.ndarray) and cp.shares_memory(out, parent)
    cp.testing.assert_array_equal(out, cp.asarray([9.0, 7.0]))


def test_a_shape_set_on_an_argument_reaches_the_caller():
    def as_matrix(x):
        x.shape = (2, 2)
        x[1] += 10
        return x, x.sum()

    f = offload(as_matrix)
    for make in (lambda: np.arange(4.0), lambda: np.arange(8.0)[::2]):
        a, ref = make(), make()
        want_x, want_sum = as_matrix(ref)
        with config(backend="cupy"):
            got_x, got_sum = f(a)
        assert f.last_decision.backend == "cupy" and got_x is a and a.shape == (2, 2)
        np.testing.assert_array_equal(a, ref)
        assert got_sum == want_sum

    def flatten(x):
        x.shape = (6,)  # a column slice cannot take it in place (NumPy raises); its dense copy can

    a = np.arange(12.0).reshape(3, 4)[:, :2]
    with config(backend="cupy"), pytest.raises(AttributeError):
        offload(flatten)(a)
    assert a.shape == (3, 2)


def test_plain_calls_give_the_callers_arrays_views_and_new_arrays_on_the_gpu(plain_moves):
    # The light path (Executor.plain_call): regions made only when a result shares a copy's memory.
    # CuPy's kernels: the new array within 1e-15, the sum within 1e-14 (another summation order)
    check_plain_pick(offload(backend="cupy")(plain_pick), rng, plain_moves, rtol=1e-15, sum_rtol=1e-14)
