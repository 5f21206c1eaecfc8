"""Timers: exact figures with a fake clock that only the fake work advances."""

from __future__ import annotations

import itertools

import pytest

from autooffload._timing import FakeClock, TimerSettings, measure, reject_outliers, summarize

# Powers of two: sums and quotients of these are exact in binary floating point.
SLOW = 2.0**-6  # 15.6 ms
TINY = 2.0**-20  # ~1 us


def work(clock: FakeClock, costs):
    """A fake operation whose n-th call costs costs[n] (the last one repeats)."""
    costs = iter(itertools.chain(costs, itertools.repeat(costs[-1])))
    calls = []

    def fn():
        cost = next(costs)
        clock.advance(cost)
        calls.append(cost)

    fn.calls = calls
    return fn


def test_slow_operation_is_timed_once_per_sample_and_exactly():
    clock = FakeClock()
    settings = TimerSettings(warmup=1, repeats=5, min_sample_s=2.0**-10, max_point_s=100)
    t = measure(work(clock, [SLOW]), settings=settings, clock=clock)
    assert t.loops == 1
    assert t.median_s == SLOW
    assert t.samples == (SLOW,) * 5
    assert t.mad_s == 0 and t.rejected == 0 and not t.noisy


def test_tiny_operation_is_looped_until_a_sample_lasts_min_sample():
    clock = FakeClock()
    settings = TimerSettings(warmup=1, repeats=3, min_sample_s=2.0**-10, max_point_s=100)
    t = measure(work(clock, [TINY]), settings=settings, clock=clock)
    assert t.loops * TINY >= settings.min_sample_s
    assert t.median_s == TINY
    assert len(t.samples) == 3


def test_warmup_calls_are_not_counted():
    # First call compiles a kernel (1 s); later calls are fast.
    clock = FakeClock()
    t = measure(work(clock, [1.0, SLOW]), settings=TimerSettings(warmup=1, repeats=5, min_sample_s=0), clock=clock)
    assert t.median_s == SLOW and t.rejected == 0


def test_sync_runs_after_every_call():
    clock = FakeClock()
    fn = work(clock, [SLOW])
    syncs = []
    # The fake GPU: the call returns at once and the sync pays for it.
    measure(fn, sync=lambda: syncs.append(1), settings=TimerSettings(repeats=4, min_sample_s=0), clock=clock)
    assert len(syncs) == len(fn.calls)


def test_asynchronous_work_is_charged_through_sync():
    clock = FakeClock()
    pending = []

    def launch():  # returns immediately, like a CuPy kernel launch
        pending.append(SLOW)

    def sync():
        clock.advance(sum(pending))
        pending.clear()

    t = measure(launch, sync=sync, settings=TimerSettings(repeats=3, min_sample_s=0), clock=clock)
    assert t.median_s == SLOW


def test_outliers_are_rejected():
    clock = FakeClock()
    costs = [SLOW, SLOW, SLOW, 100 * SLOW, SLOW, SLOW, SLOW]  # one sample hit by a hiccup
    t = measure(work(clock, costs), settings=TimerSettings(warmup=1, repeats=6, min_sample_s=0, max_point_s=100), clock=clock)
    assert t.rejected == 1
    assert t.median_s == SLOW
    assert not t.noisy


def test_spread_marks_a_point_noisy():
    clock = FakeClock()
    costs = [SLOW] + [f * SLOW for f in (1.0, 1.25, 1.5, 1.75, 2.0)]  # a steady drift, no outlier
    t = measure(work(clock, costs), settings=TimerSettings(warmup=1, repeats=5, min_sample_s=0, max_point_s=100), clock=clock)
    assert t.rejected == 0
    assert t.median_s == 1.5 * SLOW
    assert t.spread == pytest.approx(0.25 / 1.5)
    assert t.noisy


def test_bimodal_samples_mark_a_point_noisy():
    clock = FakeClock()
    costs = [SLOW] + [SLOW, 2 * SLOW] * 4
    t = measure(work(clock, costs), settings=TimerSettings(warmup=1, repeats=7, min_sample_s=0, max_point_s=100), clock=clock)
    assert t.noisy


def test_point_budget_cuts_repeats_but_keeps_the_minimum():
    clock = FakeClock()
    settings = TimerSettings(warmup=1, repeats=9, min_repeats=3, min_sample_s=0, max_point_s=2.5)
    t = measure(work(clock, [1.0]), settings=settings, clock=clock)
    assert len(t.samples) == 3
    assert t.median_s == 1.0


def test_a_clock_that_never_moves_cannot_loop_forever():
    clock = FakeClock()
    t = measure(lambda: None, settings=TimerSettings(repeats=3, min_sample_s=1e-3, max_loops=1000), clock=clock)
    assert t.loops == 1000
    assert t.median_s == 0.0


def test_reject_outliers_tolerates_exact_ties_and_small_jitter():
    kept, rejected = reject_outliers([1.0, 1.0, 1.0, 1.005], k=5)
    assert rejected == 0 and len(kept) == 4
    kept, rejected = reject_outliers([1.0, 1.0, 1.0, 1.5], k=5)
    assert rejected == 1
    # Fewer than three samples: nothing to judge against.
    assert reject_outliers([1.0, 9.0], k=5) == ([1.0, 9.0], 0)


def test_too_many_rejections_mark_noisy():
    settings = TimerSettings(max_rejected_fraction=0.25)
    t = summarize([1.0, 1.0, 1.0, 1.0, 1.0, 50.0, 60.0], 1, settings)
    assert t.rejected == 2 and t.noisy


def test_summarize_needs_samples():
    with pytest.raises(ValueError):
        summarize([], 1, TimerSettings())
