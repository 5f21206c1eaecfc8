"""Timers done right: warm-up, synchronization, loops for tiny work, median, outliers, noise.

What one sample measures: ``loops`` back-to-back calls of ``fn`` each followed by ``sync()``,
read with ``clock`` before and after, divided by ``loops``. For GPU work ``sync`` waits for the
stream, so a sample is the time of finished calls, never that of queued launches (a bare clock
around an asynchronous call measures nothing). Syncing after *every* call, not once per loop,
is deliberate: a dispatched call waits for its result, so pipelined throughput would flatter the
GPU at small sizes.

Tiny operations are looped until one sample lasts ``min_sample_s`` (as pyperf does), so the
clock's resolution and its own cost stay negligible. Samples beyond ``median +- outlier_k * MAD``
are rejected; a point whose remaining spread (MAD / median) exceeds ``noisy_spread``, or that
lost too many samples, is flagged noisy.

The clock is injectable: tests pass a fake clock that the fake work advances, so every figure is
exact.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """How hard to try for one measured point."""

    warmup: int = 1  # untimed calls first: the first CuPy call compiles kernels
    repeats: int = 5  # samples wanted
    min_repeats: int = 3  # samples kept even when the point's time budget is spent
    min_sample_s: float = 2e-3  # loop tiny calls until one sample lasts this long
    max_loops: int = 1_000_000
    max_point_s: float = 1.0  # stop taking samples once a point has used this much time
    outlier_k: float = 5.0  # reject samples beyond median +- k * MAD
    noisy_spread: float = 0.10  # MAD / median above this marks the point noisy
    max_rejected_fraction: float = 0.25  # more rejected than this also marks it noisy


@dataclass(frozen=True, slots=True)
class Timing:
    """The outcome of timing one operation: seconds per call."""

    median_s: float
    mad_s: float  # median absolute deviation of the kept samples
    samples: tuple[float, ...]  # seconds per call of each kept sample
    rejected: int  # samples dropped as outliers
    loops: int  # calls per sample
    noisy: bool

    @property
    def spread(self) -> float:
        """MAD relative to the median (0 when every kept sample agrees)."""
        return self.mad_s / self.median_s if self.median_s > 0 else 0.0


def median_absolute_deviation(values: list[float] | tuple[float, ...]) -> float:
    med = statistics.median(values)
    return statistics.median(abs(v - med) for v in values)


def reject_outliers(samples: list[float], k: float) -> tuple[list[float], int]:
    """Samples within ``median +- k * MAD`` and how many were dropped.

    The tolerance never falls below 1% of the median, so a MAD of zero (samples that mostly
    agree exactly) does not turn the tiniest jitter into an outlier.
    """
    if len(samples) < 3:
        return list(samples), 0
    med = statistics.median(samples)
    tolerance = max(k * median_absolute_deviation(samples), 0.01 * abs(med))
    kept = [s for s in samples if abs(s - med) <= tolerance]
    return kept, len(samples) - len(kept)


def summarize(samples: list[float], loops: int, settings: TimerSettings) -> Timing:
    """A Timing from raw per-call samples: outliers out, median, MAD, noisy flag."""
    if not samples:
        raise ValueError("cannot summarize zero samples")
    kept, rejected = reject_outliers(samples, settings.outlier_k)
    med = statistics.median(kept)
    mad = median_absolute_deviation(kept)
    noisy = (med > 0 and mad / med > settings.noisy_spread) or (
        rejected > settings.max_rejected_fraction * len(samples)
    )
    return Timing(med, mad, tuple(kept), rejected, loops, bool(noisy))


def _no_sync() -> None:
    return None


def measure(
    fn: Callable[[], object],
    *,
    sync: Callable[[], object] | None = None,
    settings: TimerSettings = TimerSettings(),
    clock: Clock = time.perf_counter,
) -> Timing:
    """Time ``fn()`` (+ ``sync()`` after each call): seconds per call, robustly.

    Steps: ``settings.warmup`` untimed calls; then the loop count doubles (or jumps, from the
    time seen) until one sample of ``loops`` calls lasts ``min_sample_s``, those trial samples
    counting as more warm-up; then ``repeats`` samples, fewer (never below ``min_repeats``) once
    the point has used ``max_point_s``.
    """
    sync = sync or _no_sync

    def run(loops: int) -> float:
        t0 = clock()
        for _ in range(loops):
            fn()
            sync()
        return clock() - t0

    start = clock()
    for _ in range(settings.warmup):
        fn()
        sync()

    loops = 1
    elapsed = run(loops)
    while elapsed < settings.min_sample_s and loops < settings.max_loops:
        if elapsed <= 0:
            grow = 10 * loops
        else:
            # Aim a little past the target so one more trial usually suffices.
            grow = math.ceil(loops * 1.2 * settings.min_sample_s / elapsed)
        loops = min(settings.max_loops, max(2 * loops, grow))
        elapsed = run(loops)

    # The sample that ended the loop search is a fair sample: keep it (saves a slow call).
    samples = [elapsed / loops]
    while len(samples) < settings.repeats:
        if len(samples) >= settings.min_repeats and clock() - start >= settings.max_point_s:
            break
        samples.append(run(loops) / loops)
    return summarize(samples, loops, settings)


class FakeClock:
    """A clock that only moves when told to: fake work calls ``advance``. For exact tests."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
