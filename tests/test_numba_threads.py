"""The tier's thread count per call (backends/_numba_threads.py): one thread where the function's
own calls measured it faster, all of them elsewhere, and what trying costs, bounded.

The choice is pure bookkeeping over measured seconds, so most tests drive it with made-up times
as ``_CompiledCall`` would (``drive``); the last ones run real compiled code on this machine's cores.
"""

from __future__ import annotations

import random
import time
import sys
from pathlib import Path

import numpy as np
import pytest

from autooffload.backends import _numba_threads as nt

ONE, ALL = nt.ThreadChoice.ONE, nt.ThreadChoice.ALL


def drive(choices: nt.Choices, key, times: dict[int, float], limit: int = 16, numpy_s: float | None = None) -> int:
    """One call of bucket ``key`` whose true time is ``times[ONE or ALL]``, as ``_CompiledCall``
    runs it (``numpy_s``: NumPy's predicted time, the decision layer's); returns the thread
    setting it ran on."""
    cell = choices.cell(key)
    if cell.threads is not None:
        return cell.threads
    threads = cell.next_run(limit, choices, numpy_s)
    cell.seen += 1
    if cell.seen > 1:
        cell.add(threads, times[threads], choices)
    return threads


def test_one_thread_is_kept_where_it_is_clearly_faster():
    choices = nt.Choices()
    ran = [drive(choices, "small", {ONE: 20e-6, ALL: 60e-6}) for _ in range(10)]
    # The uncounted first call, a parallel sample, the serial build's uncounted first call, then
    # two samples of each before the 1.5x rule decides.
    assert ran[:6] == [ALL, ALL, ONE, ONE, ALL, ONE]
    assert choices.cell("small").threads == ONE
    assert ran[6:] == [ONE] * 4


def test_all_threads_are_kept_where_one_is_clearly_slower():
    choices = nt.Choices()
    ran = [drive(choices, "mid", {ONE: 160e-6, ALL: 60e-6}) for _ in range(300)]
    # An uncounted try and two samples, the second once the 1 ms floor has been outgrown.
    assert ran.count(ONE) == 3 and choices.cell("mid").threads == ALL


def test_close_times_take_three_samples_each_and_keep_the_faster():
    choices = nt.Choices()
    ran = [drive(choices, "close", {ONE: 50e-6, ALL: 55e-6}) for _ in range(12)]
    assert ran[:8] == [ALL, ALL, ONE, ONE, ALL, ONE, ALL, ONE]  # decided at the third pair
    assert choices.cell("close").threads == ONE


def test_a_large_call_is_not_tried_on_one_thread_until_the_budget_allows():
    """A 2 ms all-thread call could take 32 ms on one of 16 threads: 30 ms at risk, tried only
    once the function has run 300 ms in the tier (10%)."""
    choices = nt.Choices()
    times = {ONE: 32e-3, ALL: 2e-3}
    ran, spent, lost = [], 0.0, 0.0
    for i in range(1000):
        threads = drive(choices, "big", times)
        if threads == ONE:  # the budget held before the try: what tries lost, plus this one's worst case
            assert lost + 15 * 2e-3 <= nt.EXPLORE_FRACTION * spent + 1e-9, (i, lost, spent)
            lost += times[ONE] - times[ALL]
        if i:
            spent += times[threads]
        ran.append(threads)
    assert ran.index(ONE) >= 150  # 300 ms of the tier first
    assert ran.count(ONE) == 3 and choices.cell("big").threads == ALL  # an uncounted try and two samples


def test_a_try_is_expected_to_cost_at_most_twice_numpys_time():
    """A loop of small regions: 494 us parallel, 37 us serial, 113 us on NumPy (panel_recur at
    (50, 200) on the H200). Bounded by perfect scaling alone, the try risks 15 x 494 us and waits
    for 74 ms of tier time; expected at most 2x NumPy's time, it risks nothing and runs at once."""
    times = {ONE: 37e-6, ALL: 494e-6}
    blind = nt.Choices()
    assert [drive(blind, "loop", times) for _ in range(20)] == [ALL] * 20
    hinted = nt.Choices()
    ran = [drive(hinted, "loop", times, numpy_s=113e-6) for _ in range(8)]
    assert ran[:6] == [ALL, ALL, ONE, ONE, ALL, ONE] and hinted.cell("loop").threads == ONE
    # A large call whose serial build NumPy's time does not bound better waits as before.
    big = nt.Choices()
    ran = [drive(big, "big", {ONE: 32e-3, ALL: 2e-3}, numpy_s=30e-3) for _ in range(400)]
    assert ran.index(ONE) >= 150


def test_the_preferred_build_is_the_faster_median_so_far_and_then_the_kept_one():
    cell, choices = nt.ThreadChoice(), nt.Choices()
    assert cell.preferred() == ALL  # nothing measured: the parallel build stands for the tier
    cell.add(ALL, 400e-6, choices)
    assert cell.preferred() == ALL
    cell.add(ONE, 30e-6, choices)  # the serial build's first call: cold, not counted
    assert cell.preferred() == ALL and not cell.one
    cell.add(ONE, 40e-6, choices)
    assert cell.preferred() == ONE and cell.threads is None  # faster, not decided yet
    cell.add(ALL, 380e-6, choices)
    cell.add(ONE, 38e-6, choices)
    assert cell.threads == ONE == cell.preferred()


@pytest.mark.parametrize("hinted", [False, True])
def test_the_loss_over_many_buckets_stays_within_the_bound(hinted):
    """1000 calls over 40 buckets with random true times (one thread 0.2-20x the all-thread
    time): what the serial tries lost against the parallel build, counted here apart from the
    choice's own bookkeeping, is at most max(1 ms, 10% of the timed seconds) plus one try's
    overrun; and every decided bucket whose builds differ by 1.5x kept the faster. ``hinted``:
    with NumPy's predicted time as the try's prior, 0.2-5x the serial build's (wrong both ways)."""
    rng = random.Random(5)
    truth, numpy_s = {}, {}
    for b in range(40):
        every = 10 ** rng.uniform(-5, -2)
        truth[b] = {ALL: every, ONE: every * 10 ** rng.uniform(-0.7, 1.2)}
        numpy_s[b] = truth[b][ONE] * 10 ** rng.uniform(-0.7, 0.7) if hinted else None
    choices = nt.Choices()
    tries_lost = timed = 0.0
    seen: dict[int, int] = {}
    for _ in range(1000):
        b = rng.randrange(40)
        undecided = choices.cell(b).threads is None
        threads = drive(choices, b, truth[b], numpy_s=numpy_s[b])
        if undecided:
            seen[b] = seen.get(b, 0) + 1
            if seen[b] > 1:
                timed += truth[b][threads]
            if threads == ONE:
                tries_lost += max(0.0, truth[b][ONE] - truth[b][ALL])
    worst_try = max((15 - 1) * t[ALL] for t in truth.values())
    assert tries_lost <= max(nt.EXPLORE_FLOOR_S, nt.EXPLORE_FRACTION * timed) + worst_try
    decided = [b for b, c in choices.cells.items() if c.threads is not None]
    assert len(decided) >= 20
    for b in decided:
        t = truth[b]
        if max(t.values()) > nt.DECIDE_AT * min(t.values()):
            assert choices.cells[b].threads == (ONE if t[ONE] < t[ALL] else ALL), (b, t)


def test_buckets_are_powers_of_two_of_the_array_bytes():
    a, b = np.ones(100), np.ones(28)  # 800 + 224 bytes
    assert nt.size_bucket((a, b, 3.0, "s", (1, 2))) == (800 + 224 + 8).bit_length()
    assert nt.size_bucket((np.ones(1000),)) != nt.size_bucket((np.ones(10_000),))
    assert nt.size_bucket(()) == 0


# -- real compiled code ----------------------------------------------------------------------------
numba_mod = pytest.importorskip("numba")

from autooffload import backends  # noqa: E402
from conftest import wait_for_background_compilations  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
suite = pytest.importorskip("suite")


@pytest.fixture(scope="module")
def backend():
    b = backends.get("numba")
    assert b is not None
    return b


@pytest.fixture
def tier(backend, monkeypatch):
    """The backend, with tries always within budget (a cold first call on the 2-core CI machine
    can take 7-24 ms: 15x that is past the 1 ms floor), and no compilation left running after the
    test (a background one would make the next tests' calls untimed or slow)."""
    monkeypatch.setattr(nt, "EXPLORE_FLOOR_S", 10.0)
    yield backend
    wait_for_background_compilations(120)


def reported(fn, *args):
    """``fn(*args)``, and what the tier's runner reported of that call in ``call_context``:
    (result, aside: it ran the build that does not stand for the tier there, changed: it changed
    which build does)."""
    from autooffload.backends.base import call_context

    call_context.aside = call_context.changed = False
    result = fn(*args)
    return result, call_context.aside, call_context.changed


def _serial_ready(backend, func, args):
    """The serial build of ``func`` for ``args``' types, compiled now (the tier compiles it in the
    background at the first call that may try it)."""
    build = backend.serial_compiler(func)
    sig = build.compile(build.signature(build.positional(args, {})))
    assert sig.state == "compiled", sig.reason
    return build, sig


def test_the_serial_build_is_serial_named_apart_and_gives_numpys_result(tier):
    backend = tier
    from autooffload.backends import _numba_compile as nc

    g = np.random.default_rng(2)
    args = suite._bs(300, g)
    build, sig = _serial_ready(backend, suite.black_scholes_call, args)
    assert sig.serial and build.serial
    assert build.dispatcher.targetoptions.get("parallel") in (False, None)
    assert backend.compiler(suite.black_scholes_call).dispatcher.targetoptions.get("parallel") is True
    # Named apart: Numba's disk cache would otherwise hand the serial build the parallel one's code.
    assert build.dispatcher.py_func.__qualname__ == suite.black_scholes_call.__qualname__ + nc.SERIAL_SUFFIX
    assert nc._parallel_loops(build.dispatcher, sig.numba_types) in (0, None)
    np.testing.assert_allclose(build.run(sig, build.positional(args, {})), suite.black_scholes_call(*args),
                               rtol=1e-12, atol=1e-12)


def test_calls_through_the_choice_give_numpys_result_and_try_the_serial_build(tier):
    backend = tier
    fn, _, how = backend.runner(suite.black_scholes_call)
    assert fn is not None, how
    g = np.random.default_rng(2)
    sizes = (30, 300, 3000)
    for n in sizes:
        _serial_ready(backend, suite.black_scholes_call, suite._bs(n * 3, g))
    for n in sizes:
        args = suite._bs(n * 3, g)
        want = suite.black_scholes_call(*args)
        before = backend.numba.get_num_threads()
        for _ in range(12):
            np.testing.assert_allclose(fn(*args), want, rtol=1e-12, atol=1e-12)
        assert backend.numba.get_num_threads() == before  # the serial build needs no thread setting
    cells = list(fn.choices.cells.values())
    if backend.max_threads > 1:
        assert len(cells) == len(sizes) and all(c.one for c in cells), [(c.one, c.all) for c in cells]
        assert all(c.threads is not None for c in cells)  # decided within 12 calls (8 at most)
    _, aside, _ = reported(fn, *suite._bs(300 * 3, g))
    assert not aside  # a decided bucket is no trial
    with backend.thread_limit(1):  # nothing to choose: no new bucket
        count = len(fn.choices.cells)
        fn(*suite._bs(30_000, g))
        assert len(fn.choices.cells) == count and backend.numba.get_num_threads() == 1


def test_the_serial_build_compiles_in_the_background_at_the_first_call_that_may_try_it(tier):
    backend = tier
    def _softplus_sum(x):
        return np.log1p(np.exp(x)) * 0.5 + x

    if backend.max_threads < 2:
        pytest.skip("one core: nothing to choose")
    fn, _, _ = backend.runner(_softplus_sum)
    x = np.random.default_rng(4).uniform(-1, 1, 300)
    np.testing.assert_allclose(fn(x), _softplus_sum(x), rtol=1e-12)  # compiles the parallel build: not counted
    cell = next(iter(fn.choices.cells.values()))
    assert cell.serial is None
    asides = []
    for _ in range(2):  # a parallel sample; then a call that would try serial: starts its build
        result, aside, _ = reported(fn, x)
        np.testing.assert_allclose(result, _softplus_sum(x), rtol=1e-12)
        asides.append(aside)
    assert cell.serial is not None and cell.serial.state in ("compiling", "compiled")
    # Parallel meanwhile, learnable; the call the compilation started in is no sample (it held the interpreter).
    assert not cell.one and len(cell.all) == 1 and asides == [False, False]
    assert cell.serial.done.wait(120) and cell.serial.state == "compiled"
    result, aside, _ = reported(fn, x)  # the serial build's cold first call
    np.testing.assert_allclose(result, _softplus_sum(x), rtol=1e-12)
    assert cell.one_seen == 1 and not cell.one and aside  # not the build that stands for the tier
    for _ in range(8):
        np.testing.assert_allclose(fn(x), _softplus_sum(x), rtol=1e-12)
    assert cell.one


class _FakeTime:
    """``time`` for the tier's runner: ``perf_counter`` reads a clock that only runs advance."""

    def __init__(self):
        self.t = 0.0

    def perf_counter(self):
        return self.t


def test_trials_and_switches_follow_the_build_that_stands_for_the_tier(tier, monkeypatch):
    """With scripted times (the parallel build 494 us, the serial one 37 us), each call's build
    against the bucket's preferred one: calls of the other build are trials (the decision layer
    learns nothing from them), and the call that makes the serial build preferred is a switch."""
    from autooffload.backends import _numba_compile as nc
    from autooffload.backends import numba as tier_module

    if tier.max_threads < 2:
        pytest.skip("one core: nothing to choose")
    fake = _FakeTime()
    monkeypatch.setattr(tier_module, "time", fake)
    real_run = nc.FunctionCompiler.run

    def run(self, sig, positional):
        fake.t += 37e-6 if self.serial else 494e-6
        return real_run(self, sig, positional)

    monkeypatch.setattr(nc.FunctionCompiler, "run", run)
    fn, _, _ = tier.runner(suite.black_scholes_call)
    args = suite._bs(900, np.random.default_rng(11))
    want = suite.black_scholes_call(*args)
    _serial_ready(tier, suite.black_scholes_call, args)
    monkeypatch.setattr(tier_module.call_context, "numpy_s", lambda: 113e-6)
    steps = []
    for _ in range(7):
        result, aside, changed = reported(fn, *args)
        np.testing.assert_allclose(result, want, rtol=1e-12, atol=1e-12)
        cell = next(iter(fn.choices.cells.values()))
        steps.append((len(cell.one), len(cell.all), int(aside), int(changed)))
    # (serial samples, parallel samples, trial, switch) after each call:
    assert steps == [
        (0, 0, 0, 0),  # the bucket's first call, parallel, uncounted: the parallel build stands for the tier
        (0, 1, 0, 0),  # a parallel sample
        (0, 1, 1, 0),  # the serial build's cold first call: a trial
        (1, 1, 0, 1),  # its first sample, faster: it stands for the tier now (a switch), learnable
        (1, 2, 1, 0),  # a parallel sample: a trial
        (2, 2, 0, 0),  # decided: serial
        (2, 2, 0, 0),
    ], steps
    assert cell.threads == ONE


def test_a_sample_is_not_taken_while_a_compilation_runs(tier, monkeypatch):
    """A call timed while another compilation held the interpreter is no sample of either build."""
    fn, _, _ = tier.runner(suite.black_scholes_call)
    args = suite._bs(600, np.random.default_rng(9))
    fn(*args)  # the bucket's first call (and the parallel build's compilation)
    cell = fn.choices.cells[next(iter(fn.choices.cells))]
    with monkeypatch.context() as m:
        m.setattr(tier._compile, "compiling_now", lambda: True)
        for _ in range(5):
            fn(*args)
    assert not cell.one and not cell.all and cell.threads is None
