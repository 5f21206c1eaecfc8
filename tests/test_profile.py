"""Curves (interpolation, extrapolation, validation) and crossovers from synthetic profiles."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from autooffload._costmodel import KINDS, Request, crossover, predict
from autooffload._profiles import BackendTiming, Curve, Profile

HUGE = 1e13


# ----------------------------------------------------------------------------- curves


def test_curve_hits_its_points():
    c = Curve(nbytes=[1e3, 1e6, 1e9], seconds=[1e-6, 1e-4, 1e-1])
    for b, s in zip(c.nbytes, c.seconds):
        assert c.predict(b) == pytest.approx(s, rel=1e-12)


def test_curve_interpolates_in_log_log_space():
    c = Curve(nbytes=[1e3, 1e5], seconds=[1e-6, 1e-2])
    # Halfway in log bytes is the geometric mean in seconds.
    assert c.predict(1e4) == pytest.approx(1e-4, rel=1e-12)


def test_curve_is_flat_below_its_first_point():
    c = Curve(nbytes=[1e3, 1e5], seconds=[2e-6, 1e-2])
    assert c.predict(1) == 2e-6
    assert c.predict(0) == 2e-6


def test_curve_extrapolates_at_least_linearly():
    # Sublinear last segment (fixed costs still dominate): extrapolated linearly, not flatter.
    c = Curve(nbytes=[1e3, 1e6], seconds=[1e-5, 2e-5])
    assert c.predict(1e9) == pytest.approx(2e-5 * 1e3, rel=1e-12)
    # Superlinear last segment (matmul: work ~ bytes^1.5) keeps its slope.
    m = Curve(nbytes=[1e4, 1e6], seconds=[1e-6, 1e-3])
    assert m.predict(1e8) == pytest.approx(1e-3 * 100**1.5, rel=1e-12)


def test_single_point_curve_extrapolates_linearly():
    c = Curve(nbytes=[1e6], seconds=[1e-3])
    assert c.predict(4e6) == pytest.approx(4e-3)
    assert c.predict(1e3) == 1e-3


@pytest.mark.parametrize(
    "nbytes, seconds, noisy",
    [
        ([1e3, 1e4], [1e-6], []),  # lengths differ
        ([1e4, 1e3], [1e-6, 1e-5], []),  # not increasing
        ([1e3, 1e3], [1e-6, 1e-5], []),  # repeated size
        ([0.0, 1e3], [1e-6, 1e-5], []),  # zero bytes
        ([1e3, 1e4], [0.0, 1e-5], []),  # zero seconds
        ([1e3, 1e4], [float("nan"), 1e-5], []),
        ([1e3, 1e4], [1e-6, 1e-5], [True]),  # one flag for two points
        ([], [], []),
    ],
)
def test_curve_rejects_impossible_points(nbytes, seconds, noisy):
    with pytest.raises(ValidationError):
        Curve(nbytes=nbytes, seconds=seconds, noisy=noisy)


increasing_points = st.lists(
    st.tuples(st.floats(1, 1e12), st.floats(1e-9, 1e3)), min_size=2, max_size=8, unique_by=lambda p: p[0]
).map(sorted)


@given(points=increasing_points, where=st.floats(0, 1))
def test_interpolation_stays_between_neighbouring_points(points, where):
    xs = [p[0] for p in points]
    if any(b <= a * (1 + 1e-9) for a, b in zip(xs, xs[1:])):
        return  # too close to tell apart in log space
    c = Curve(nbytes=xs, seconds=[p[1] for p in points])
    i = min(int(where * (len(xs) - 1)), len(xs) - 2)
    x = math.exp(math.log(xs[i]) + where * (math.log(xs[i + 1]) - math.log(xs[i])))
    lo, hi = sorted((c.seconds[i], c.seconds[i + 1]))
    assert lo * (1 - 1e-9) <= c.predict(x) <= hi * (1 + 1e-9)


# ----------------------------------------------------------------------------- crossovers


def linear(seconds_per_byte: float) -> Curve:
    """Exactly linear: a straight line of slope 1 in log-log space, extrapolated as one."""
    return Curve(nbytes=[1.0, HUGE], seconds=[seconds_per_byte, seconds_per_byte * HUGE])


def flat(seconds: float) -> Curve:
    return Curve(nbytes=[1.0, HUGE], seconds=[seconds, seconds])


def synthetic(cpu_per_byte=1e-9, gpu_fixed=1e-5, copy_per_byte=1e-10, kinds=KINDS, has_gpu=True) -> Profile:
    """CPU: 1 ns/byte. GPU: a flat 10 us launch floor. Copies: 10 GB/s, no fixed cost."""
    backends = {"numpy": BackendTiming(memory="host", kinds={k: linear(cpu_per_byte) for k in kinds})}
    if has_gpu:
        backends["cupy"] = BackendTiming(
            memory="device", kinds={k: flat(gpu_fixed) for k in kinds}, warmup_s=1.0,
            h2d=linear(copy_per_byte), d2h=linear(copy_per_byte),
        )
    return Profile(backends=backends)


def grid_below(n: float) -> float:
    """The crossover search grid point just below ``n`` (quarter octaves from 1 KiB)."""
    i = round(4 * math.log2(n / 1024.0))
    return int(1024.0 * 2 ** ((i - 1) / 4))


@pytest.mark.parametrize(
    "kind, location, analytic",
    [
        # Device data: NumPy pays copying the inputs out and the result back in:
        # 1 ns/B + 0.1 ns/B in + 0.1 ns/B out vs the GPU's 10 us -> 8 333 B.
        ("elementwise", "device", 1e-5 / (1e-9 + 2e-10)),
        # FFT's result is complex, twice the bytes: 1 + 0.1 + 0.2 ns/B -> 7 692 B.
        ("fft", "device", 1e-5 / (1e-9 + 3e-10)),
        # A reduction's result is a scalar: 1 + 0.1 ns/B -> 9 091 B.
        ("reduction", "device", 1e-5 / (1e-9 + 1e-10)),
        # Host data, result the size of the input: 10 us + 0.2 ns/B vs 1 ns/B -> 12 500 B.
        ("elementwise", "host", 1e-5 / (1e-9 - 2e-10)),
        # Host data, scalar result (no copy out): 10 us + 0.1 ns/B -> 11 111 B.
        ("reduction", "host", 1e-5 / (1e-9 - 1e-10)),
        # FFT returns complex, twice the bytes: 10 us + 0.3 ns/B -> 14 286 B.
        ("fft", "host", 1e-5 / (1e-9 - 3e-10)),
    ],
)
def test_crossover_matches_the_analytic_size(kind, location, analytic):
    profile = synthetic()
    at = crossover(profile, kind, location)
    assert at is not None
    assert analytic <= at < analytic * 2**0.25 + 1
    # The grid point before it still belongs to NumPy.
    before = grid_below(at)
    req = Request(kind, host_bytes=before if location == "host" else 0,
                  device_bytes=before if location == "device" else 0, largest_bytes=before, gpu_ready=True)
    seconds = predict(profile, req).seconds
    assert seconds["cupy"] >= seconds["numpy"]


def test_device_resident_data_crosses_over_earlier_than_host_data():
    profile = synthetic()
    for kind in KINDS:
        assert crossover(profile, kind, "device") <= crossover(profile, kind, "host")


def test_no_crossover_when_copies_cost_more_than_the_cpu():
    # Copies alone (2 x 0.6 ns/B) exceed the CPU's 1 ns/B: with host data the GPU never wins.
    profile = synthetic(copy_per_byte=6e-10)
    assert crossover(profile, "elementwise", "host") is None
    assert crossover(profile, "elementwise", "device") is not None


def test_no_crossover_without_gpu_timings():
    assert crossover(synthetic(has_gpu=False), "matmul", "host") is None
    cpu_only = Profile(backends={"numpy": BackendTiming(memory="host", kinds={"elementwise": linear(1e-9)})})
    assert crossover(cpu_only, "elementwise", "device") is None


def test_faster_cpu_moves_the_crossover_up():
    slow_cpu, fast_cpu = synthetic(cpu_per_byte=2e-9), synthetic(cpu_per_byte=5e-10)
    assert crossover(slow_cpu, "sort", "host") < crossover(fast_cpu, "sort", "host")


def test_unknown_kind_uses_generic_curves():
    profile = synthetic(kinds=("generic",))
    assert crossover(profile, "something-new", "device") == crossover(profile, "generic", "device")


def test_crossover_rejects_a_bad_location():
    with pytest.raises(ValueError, match="host"):
        crossover(synthetic(), "fft", "disk")
