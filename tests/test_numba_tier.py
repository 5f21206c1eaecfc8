"""The Numba tier in the decisions (issue 13): three-way choice, background compilation, forcing.

Runs on this machine's CPU with real Numba (CI installs it with the test extra); the profile is
synthetic, with a Numba curve 3x below NumPy's, so the choice is the rule's, not the machine's.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import compiling_anywhere, synthetic_profile

import autooffload
from autooffload import BackendUnavailableError, config, explain, offload

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import numba_tier  # noqa: E402  (the seed article's chains, as benchmarked)


def _own(fn):
    """A function object of this module's own: the tier compiles per function object, and
    tests/test_numba_backend.py compiles the benchmark's; these tests start uncompiled."""
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


chain = _own(numba_tier.chain)
in_place = _own(numba_tier.chain_in_place)

numba = pytest.importorskip("numba")


@pytest.fixture(autouse=True)
def profile_alone(monkeypatch):
    """The profile's choice, not what this machine's timings teach (tests/test_learning.py does that)."""
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "0")
    autooffload.reload_environment()


def tier_profile(speedup: float = 3.0, compile_s: float = 0.5):
    from autooffload._profiles import BackendTiming, Profile

    base = synthetic_profile(has_gpu=False)
    numpy_side = base.backends["numpy"]
    faster = {k: c.model_copy(update={"seconds": [s / speedup for s in c.seconds]}) for k, c in numpy_side.kinds.items()}
    tier = BackendTiming(memory="host", kinds=faster, warmup_s=compile_s)
    return Profile(backends={"numpy": numpy_side, "numba": tier}).with_source("synthetic+numba")


def wait_compiled(f, make_args, timeout=60.0):
    """Call until the decision says numba (the background compilation ended), or time out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f(*make_args())
        if f.last_decision.backend == "numba":
            return
        time.sleep(0.05)
    raise AssertionError(f"never moved to the tier: {f.last_decision}")


def test_compilation_runs_in_the_background_and_calls_switch_when_it_ends(use_profile):
    use_profile(tier_profile())
    f = offload(_own(chain))  # never compiled before, whatever ran earlier
    x = np.random.default_rng(0).standard_normal(10_000)
    first = f(x)
    assert f.last_decision.backend == "numpy"
    assert "compiling for the Numba tier in the background" in f.last_decision.reason
    np.testing.assert_allclose(first, chain(x), rtol=1e-12)
    wait_compiled(f, lambda: (x,))
    np.testing.assert_allclose(f(x), chain(x), rtol=1e-12)
    assert f.last_decision.backend == "numba" and "Numba predicted 3x faster than NumPy" in f.last_decision.reason
    assert f.stats.count("numba") >= 1


def test_three_predictions_are_shown_and_the_absent_gpu_is_not(use_profile):
    use_profile(tier_profile())
    d = explain(offload(chain), np.ones(1000))
    # Three elementwise operations, each 3x below NumPy's curve, compiled into one call: its
    # fixed cost (the tier curves' least point, 1 us / 3) paid once (_costmodel._whole_call).
    per_op, fixed = d.predicted_s["numpy"] / 3 / 3, 1e-6 / 3
    assert d.predicted_s["numba"] == pytest.approx(fixed + 3 * (per_op - fixed))
    assert d.predicted_s["cupy"] is None  # no GPU here: no CuPy prediction


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_the_tier_writes_in_place_as_numpy_does(use_profile, layout):
    use_profile(tier_profile())
    f = offload(in_place)
    base = np.random.default_rng(1).standard_normal((300, 400))  # strided: 150 x 133, ~240 us predicted
    make = {"C": lambda: base.copy(), "F": lambda: np.asfortranarray(base),
            "strided": lambda: base.copy()[::2, 1::3]}[layout]
    expected = make()
    in_place(expected)
    wait_compiled(f, lambda: (make(),))
    got = make()
    f(got)
    assert f.last_decision.backend == "numba"
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_forcing_the_tier_compiles_then_runs_there(use_profile):
    use_profile(tier_profile())
    f = offload(chain, backend="numba")
    x = np.arange(1000.0)
    np.testing.assert_allclose(f(x), chain(x), rtol=1e-12)
    assert f.last_decision.backend == "numba" and "forced" in f.last_decision.reason
    with config(backend="numba"):
        g = offload(chain)
        g(x)
    assert g.last_decision.backend == "numba"


def _scaled_diff(x):
    return np.diff(x) * 2.0


def _checked(x):
    if x[0] < 0.0:
        raise ValueError("x[0] must not be negative")
    return x * 2.0


def test_the_hot_paths_direct_tier_call_falls_back_and_raises_as_the_general_path_does(use_profile, recwarn):
    # After one call on the tier the hot path calls its runner directly (Executor.run_tier): argument
    # types it then refuses still run on NumPy, remembered, and the function's own error is raised.
    use_profile(tier_profile())
    f = offload(_own(_scaled_diff), backend="numba")
    x = np.arange(10.0)
    np.testing.assert_array_equal(f(x), _scaled_diff(x))
    np.testing.assert_array_equal(f(x), _scaled_diff(x))
    assert f.last_decision.backend == "numba" and f.__autooffload__.executor.tier_runner is not None
    small = np.arange(10, dtype=np.int8)  # Numba would promote `* 2.0` differently: refused
    for _ in range(2):
        np.testing.assert_array_equal(f(small), _scaled_diff(small))
        assert f.last_decision.backend == "numpy" and "cannot run these argument types" in f.last_decision.reason
    assert f.stats.as_dict()["fallbacks"] >= 1
    np.testing.assert_array_equal(f(x), _scaled_diff(x))  # the tier's own types still run there
    assert f.last_decision.backend == "numba"
    g = offload(_own(_checked), backend="numba")
    np.testing.assert_array_equal(g(x + 1.0), (x + 1.0) * 2.0)
    np.testing.assert_array_equal(g(x + 1.0), (x + 1.0) * 2.0)
    with pytest.raises(ValueError, match="must not be negative"):
        g(x - 1.0)
    assert not [w for w in recwarn if issubclass(w.category, autooffload.AutoOffloadWarning)]


def test_what_the_tier_refuses_runs_on_numpy_quietly(use_profile, recwarn):
    use_profile(tier_profile())

    @offload
    def solves(a, b):
        return np.linalg.solve(a, b) * 2  # dense linear algebra stays with NumPy's BLAS

    a, b = np.eye(3) * 2, np.ones(3)
    np.testing.assert_allclose(solves(a, b), np.ones(3))
    assert solves.last_decision.backend == "numpy"
    forced = offload(solves.__wrapped__, backend="numba")
    np.testing.assert_allclose(forced(a, b), np.ones(3))
    assert forced.last_decision.backend == "numpy" and "no Numba version" in forced.last_decision.reason
    assert not [w for w in recwarn if issubclass(w.category, autooffload.AutoOffloadWarning)]


def test_forcing_the_tier_where_numba_cannot_load_says_why(use_profile, monkeypatch):
    from autooffload.backends import numba as tier

    use_profile(tier_profile())
    monkeypatch.setattr(tier, "load", lambda: None)
    monkeypatch.setattr(tier, "unavailable_reason", lambda: "Numba is not installed (pip install 'autooffload[numba]')")
    f = offload(chain, backend="numba")
    with pytest.raises(BackendUnavailableError, match="Numba is not installed"):
        f(np.ones(10))
    auto = offload(chain)
    big = np.ones(100_000)  # long enough a call for the tier to be considered (TIER_EXPLORE_MIN_CALL_S)
    np.testing.assert_allclose(auto(big), chain(big))
    assert auto.last_decision.backend == "numpy" and "Numba tier unavailable" in auto.last_decision.reason


def test_importing_autooffload_imports_neither_numba_nor_cupy():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, autooffload; print([m for m in ('numba', 'cupy') if m in sys.modules])"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_config_threads_caps_the_tier_and_leaves_the_steering_alone(use_profile, monkeypatch):
    from autooffload import backends

    use_profile(tier_profile())
    tier = backends.get("numba")
    seen = []
    real = tier.thread_limit

    def recording(threads):
        seen.append(threads)
        return real(threads)

    monkeypatch.setattr(tier, "thread_limit", recording)
    f = offload(chain, backend="numba")
    x = np.arange(100_000.0)  # long enough a call for the tier to be considered under auto
    with config(threads=1):
        f(x)
        with config(backend="auto"):
            with config(threads=2):
                f(x)
            f(x)
    f(x)
    assert seen == [1, 2, 1]  # the last call, with no limit, runs without one
    assert f.last_decision.backend == "numba"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_config_threads_must_be_a_positive_int(bad):
    with pytest.raises(autooffload.ConfigError, match="positive int"):
        with config(threads=bad):
            pass


def test_config_needs_something_to_set():
    with pytest.raises(autooffload.ConfigError, match="backend=... or threads=..."):
        with config():
            pass


def test_show_lists_where_the_tier_beats_numpy(tmp_path, capsys):
    from autooffload import cli
    from autooffload._costmodel import tier_range
    from autooffload._profiles import save_profile

    profile = tier_profile(speedup=3.0)
    assert tier_range(profile, "elementwise") == [(1024.0, pytest.approx(2.0**40, rel=0.2))]
    assert tier_range(synthetic_profile(has_gpu=False), "elementwise") == []
    path = tmp_path / "p.json"
    save_profile(profile, path)
    assert cli.main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Numba tier: compiles in ~500 ms per argument types" in out
    assert "elementwise      from 1 KiB" in out


def test_the_tiers_measured_runs_reach_the_report(use_profile, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "1")  # learning times the tier's first calls of a size
    autooffload.reload_environment()
    use_profile(tier_profile(speedup=1000.0))  # far below what NumPy's runs here measure
    f = offload(_own(chain))
    wait_compiled(f, lambda: (np.arange(10_000.0),))
    f(np.arange(10_000.0))
    timed = f.__autooffload__.records.timesheet.timed_by_bucket()
    assert any(backend == "numba" and t.calls for (backend, _), t in timed.items()), timed


def _runs_take(monkeypatch, clock, owner, method: str, seconds):
    """Each call of ``owner.method`` advances the fake learner clock by ``seconds``."""
    real = getattr(owner, method)

    def run(self, *a, **k):
        clock.t += seconds
        return real(self, *a, **k)

    monkeypatch.setattr(owner, method, run)


def _numpy_takes(monkeypatch, clock, seconds):
    """NumPy runs advance the fake learner clock by ``seconds`` (the test's function cannot)."""
    from autooffload import _executor

    _runs_take(monkeypatch, clock, _executor.Executor, "run_numpy", seconds)


def _tier_takes(monkeypatch, clock, seconds):
    """Runs of the tier advance the fake learner clock by ``seconds`` (its compiled code cannot)."""
    from autooffload.backends import numba as tier_module

    _runs_take(monkeypatch, clock, tier_module._CompiledCall, "__call__", seconds)


def test_learning_finds_a_tier_the_profile_predicts_slower(use_profile, monkeypatch, clock):
    # The profile puts the tier at half NumPy's speed (within EXPLORE_WITHIN: uncertain); it really
    # runs 5x faster. Learning must compile the tier in the background once the function has run
    # longer than a compilation takes, explore it, and settle on it. The learner's clock is fake:
    # each run advances it by what that backend "takes" (the compiled code cannot), so the rules
    # alone decide; only the background compilation takes real time.
    numpy_s, tier_s = 0.003, 0.0006  # the profile: 3.75 ms on NumPy, 7.5 ms on the tier
    _numpy_takes(monkeypatch, clock, numpy_s)
    _tier_takes(monkeypatch, clock, tier_s)
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "1")
    autooffload.reload_environment()
    profile = use_profile(tier_profile(speedup=0.5))
    f = offload(_own(chain))
    x = np.random.default_rng(3).random(1_250_000 // 8) + 0.5  # 1.25 MB: the profile says ~3.75 ms on NumPy
    expected = chain(x)
    seen: list[str] = []
    deadline = time.monotonic() + 60
    # (Until the tier's serial build has compiled too, in the background, its calls teach nothing:
    # a compilation holds the interpreter. So "settled" waits for the tier's own learned time.)
    while time.monotonic() < deadline and not (
            seen[-20:] == ["numba"] * 20 and f.last_decision.sources["numba"].startswith("learned")):
        np.testing.assert_allclose(f(x), expected, rtol=1e-12)
        seen.append(f.last_decision.backend)
        time.sleep(0.001 if "compiling" in f.last_decision.reason or compiling_anywhere() else 0)
    assert profile.source == "synthetic+numba"
    first_numba = seen.index("numba")
    assert seen[:first_numba] == ["numpy"] * first_numba and first_numba >= 160  # 0.5 s of NumPy runs first
    assert seen[-20:] == ["numba"] * 20, (seen[:5], seen[-40:], f.last_decision)
    assert f.last_decision.sources["numba"].startswith("learned")
    history = f.__autooffload__.learner.history
    from autooffload import _learn

    # Exploring costs at most EXPLORE_FRACTION of the measured time plus one call's misprediction.
    # (Measured: the learned calls' seconds and the timed calls that taught nothing, e.g. while
    # the tier's serial build compiled in the background on a cold Numba cache: _learn's docstring.)
    measured = f.__autooffload__.learner._measured()
    assert history.explored_s <= _learn.EXPLORE_FRACTION * measured + 2 * numpy_s


def test_the_tier_takes_numpys_learned_error_until_it_has_its_own(use_profile, monkeypatch, clock):
    # A function 10x cheaper on NumPy than the profile's bytes say is most likely cheaper on the
    # tier too: the tier's prediction is corrected by NumPy's error (so it can still be worth trying).
    _numpy_takes(monkeypatch, clock, 0.000375)  # the profile predicts 3.75 ms
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "1")
    autooffload.reload_environment()
    use_profile(tier_profile(speedup=0.5))
    f = offload(_own(chain))
    x = np.random.default_rng(4).random(1_250_000 // 8) + 0.5
    for _ in range(5):
        f(x)
    d = explain(f, x)
    assert d.sources["numpy"].startswith("learned")
    assert d.sources["numba"] == "profile, corrected x0.1 by this function's numpy history"
    # (less the fixed cost its three operations pay once as one compiled call: 0.4 us of 0.75 ms)
    assert d.predicted_s["numba"] == pytest.approx(2 * d.predicted_s["numpy"], rel=1e-3)


def _call_until_no_compilation_pends(f, x) -> None:
    """Calls ``f(x)`` while a compilation runs in the background (in real time, at most 60 s),
    then once more. Any compilation, not only one for ``f``: calls timed meanwhile teach nothing
    (_dispatch.py), and an earlier test's may still run (the serial build that exploring the
    tier starts: CI's 2 cores)."""
    planner = f.__autooffload__.planner
    deadline = time.monotonic() + 60
    while (planner.compile_pending or compiling_anywhere()) and time.monotonic() < deadline:
        time.sleep(0.01)
        f(x)
    f(x)


def test_waiting_to_afford_the_tiers_compilation_times_no_call(use_profile, monkeypatch, clock):
    # The H200 suite: functions of 5-30 us stayed on the timed path while the tier waited for its
    # budget, 3-20x slower than NumPy. Waiting counts predicted seconds instead of timing calls.
    _numpy_takes(monkeypatch, clock, 0.003)
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "1")
    autooffload.reload_environment()
    use_profile(tier_profile(speedup=0.5))
    f = offload(_own(chain))
    x = np.random.default_rng(5).random(1_250_000 // 8) + 0.5
    for _ in range(20):
        f(x)
    d = f.last_decision
    assert d.backend == "numpy" and not d.observe and d.tier_wait_s == pytest.approx(0.003)
    assert f.__autooffload__.learner.waits_to_compile(d.bucket)  # what the suite's settle() asks
    observed = f.__autooffload__.learner.history.observed_s
    for _ in range(100):
        f(x)
    assert f.__autooffload__.learner.history.observed_s == observed  # not timed while waiting
    for _ in range(100):  # 0.5 s of predicted NumPy time in all: the compilation starts
        f(x)
    # No exploration starts while it runs (_learn.Learner._affordable): on a loaded 2-core
    # machine it may take seconds of real time, so wait for it, then call once more. Where it
    # ended early (Numba's disk cache), the tier has been explored already, and that exploring
    # may have started the serial build's compilation (_numba_threads), which holds exploring
    # back again: so the test asks whether the tier ran, not what the last call did (CI failed
    # on that once, and so did this machine whenever the first tier test ran before this one).
    _call_until_no_compilation_pends(f, x)
    assert f.stats.count("numba") >= 1, f.last_decision


def test_calls_too_short_for_the_tier_do_not_wait_for_it(use_profile, monkeypatch, clock):
    _numpy_takes(monkeypatch, clock, 5e-6)
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "1")
    autooffload.reload_environment()
    use_profile(tier_profile(speedup=0.5))
    f = offload(_own(chain))
    x = np.random.default_rng(6).random(1000) + 0.5
    for _ in range(20):
        f(x)
    # Back on the C check's path once nothing is observed. A compilation that an earlier test
    # started in the background may still run (CI's 2 cores, twice): calls are observed while
    # one is pending, and teach nothing, so this waits for it to end (in real time), then calls once.
    _call_until_no_compilation_pends(f, x)
    d = f.last_decision
    assert d.backend == "numpy" and not d.observe and d.tier_wait_s == 0.0
    assert f.__autooffload__.planner.fast


def test_a_call_too_short_for_the_tier_is_not_compiled_for_even_where_predicted_faster(use_profile, monkeypatch):
    # benchmarks/overhead.py on the 2-core VM: a 2 us function, the tier predicted a little faster,
    # ran 4-6x slower while the tier compiled for it (its calls timed, waiting for the compilation).
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "1")
    autooffload.reload_environment()
    use_profile(tier_profile(speedup=3.0))
    f = offload(_own(chain))
    x = np.ones(100)  # 800 B: the profile predicts ~2.4 us on NumPy, ~0.8 us on the tier
    for _ in range(10):
        f(x)
    d = f.last_decision
    assert d.backend == "numpy" and "compiling" not in d.reason and not d.observe, d
    assert d.predicted_s["numba"] < d.predicted_s["numpy"]  # still shown
    assert not f.__autooffload__.planner.compile_pending


def scale_in_place(x):
    x *= 5  # Numba 0.68 makes no parallel loop of this: the compiled code runs on one core


def test_a_tier_compiled_without_a_parallel_loop_is_predicted_no_faster_than_numpy(use_profile):
    use_profile(tier_profile())  # the tier's (all-core) curves 3x below NumPy's
    serial, parallel = offload(_own(scale_in_place)), offload(_own(chain))
    x = np.random.default_rng(0).standard_normal(100_000)
    with config(backend="numba"):  # compile both now
        serial(x.copy())
        parallel(x)
    y = x.copy()
    serial(y)
    np.testing.assert_array_equal(y, x * 5)
    d = serial.last_decision
    assert d.backend == "numpy" and d.predicted_s["numba"] == pytest.approx(d.predicted_s["numpy"]), d
    parallel(x)
    assert parallel.last_decision.backend == "numba"  # its loops run in parallel: the curve holds


def test_a_tier_already_compiled_for_the_function_is_explored_without_waiting_for_its_own_budget(
        use_profile, monkeypatch, clock):
    # The same function object compiled for the tier elsewhere (a benchmark's Numba column, a
    # forced call of another wrapper): its own wrapper tries the tier as soon as exploring is
    # affordable, not after running as long as a compilation takes (the suite's percentiles at 1e2
    # never tried a tier 3x faster than NumPy).
    _numpy_takes(monkeypatch, clock, 0.003)
    _tier_takes(monkeypatch, clock, 0.0006)
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "1")
    autooffload.reload_environment()
    use_profile(tier_profile(speedup=0.5))  # the tier predicted 2x slower than NumPy: uncertain
    fn = _own(chain)
    x = np.random.default_rng(4).random(1_250_000 // 8) + 0.5
    with config(backend="numba"):
        offload(fn)(x)  # compiled here, by another wrapper of the same function
    f = offload(fn)
    seen = []
    for _ in range(60):
        np.testing.assert_allclose(f(x), chain(x), rtol=1e-12)
        seen.append(f.last_decision.backend)
    assert "numba" in seen[:40], seen  # explored within the budget, long before 0.5 s of NumPy runs
    assert seen[-10:] == ["numba"] * 10, seen


def test_a_loop_the_parallel_build_runs_slower_than_numpy_is_learned_at_its_serial_builds_time(
        use_profile, monkeypatch, clock):
    # panel_recur at (50, 200) on the H200: 113 us on NumPy, the parallel build 494 us (it wakes
    # 16 threads per row), the serial build 37 us. The decision layer learned the tier from the
    # parallel build, moved to NumPy, and the serial build was never tried (3.0-3.6x the tier's
    # own column, session 16). Here (scaled up: 3 ms on NumPy, 12 ms parallel, 1 ms serial, on
    # the fake clock that the learner and the tier's runner both read) it must end on the tier,
    # learned at the serial build's time, within a bounded exploration.
    from autooffload import _dispatch, _learn
    from autooffload.backends import _numba_compile as nc
    from autooffload.backends import numba as tier_module

    backend = autooffload.backends.get("numba")
    if backend.max_threads < 2:
        pytest.skip("one core: nothing to choose")
    monkeypatch.setattr(backend, "get_threads", lambda: 16)  # the H200's: a try risks 15x the parallel time
    fake_time = types.SimpleNamespace(perf_counter=clock)
    monkeypatch.setattr(tier_module, "time", fake_time)
    monkeypatch.setattr(_dispatch, "time", fake_time)  # the tier's "threads slept" test reads the same clock
    numpy_s, parallel_s, serial_s = 0.003, 0.012, 0.001
    _numpy_takes(monkeypatch, clock, numpy_s)
    real_run = nc.FunctionCompiler.run

    def run(self, sig, positional):
        clock.t += serial_s if self.serial else parallel_s
        return real_run(self, sig, positional)

    monkeypatch.setattr(nc.FunctionCompiler, "run", run)
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "1")
    autooffload.reload_environment()
    use_profile(tier_profile(speedup=3.0))  # the profile: the tier 3x faster than NumPy (1.25 ms)
    f = offload(_own(chain))
    x = np.random.default_rng(8).random(1_250_000 // 8) + 0.5
    expected = chain(x)
    seen: list[str] = []
    deadline = time.monotonic() + 90

    def settled() -> bool:
        d = f.last_decision
        return (seen[-20:] == ["numba"] * 20 and d.sources["numba"].startswith("learned")
                and d.predicted_s["numba"] < 2 * serial_s)

    while time.monotonic() < deadline and not settled():
        np.testing.assert_allclose(f(x), expected, rtol=1e-12)
        seen.append(f.last_decision.backend)
        if compiling_anywhere():
            time.sleep(0.002)
    d = f.last_decision
    assert settled(), (seen[-40:], d.predicted_s, d.sources)
    assert d.predicted_s["numba"] == pytest.approx(serial_s, rel=0.01)  # the serial build's time
    assert len(seen) < 1500, len(seen)
    learner = f.__autooffload__.learner
    # Exploring (the tier's re-checks while NumPy was chosen) within its bound plus one call's misprediction.
    assert learner.history.explored_s <= _learn.EXPLORE_FRACTION * learner._measured() + parallel_s
    # The call's decision is the runner's only while it runs: a direct call of the runner later
    # (a benchmark's Numba column) reads no stale NumPy prior.
    assert tier_module.call_context.decision is None and tier_module.call_context.numpy_s() is None


def test_a_function_compiled_whole_pays_the_tiers_fixed_cost_once():
    # The shipped H200 tier's curves, one operation per point (~6 us at 1 KiB in session 19's
    # calibration, ~10-25 us in session 12's: the call and its threads' wake-up). Black-Scholes
    # is 17 operations: summed as NumPy's are, 387 us at 3 x 33 elements under session 12's
    # curves, where its parallel build ran in 9-28 us (NumPy: 30-71 us).
    from autooffload import _costmodel
    from autooffload._profiles import Profile

    path = Path(autooffload.__file__).parent / "_profiles" / "shipped" / "h200.json"
    tier = Profile.model_validate_json(path.read_text()).backend("numba")
    work = [(tier.kinds["elementwise"], 14), (tier.kinds["transcendental"], 3)]
    small = _costmodel._compute(tier, work, 792.0, whole=True)
    summed = _costmodel._compute(tier, work, 792.0)
    one_op = max(tier.kinds[k].predict(792.0) for k in ("elementwise", "transcendental"))
    assert summed > 15 * one_op and small < 2 * one_op and small < 60e-6
    big = 24e6  # 3 x 1e6 elements: the operations' own time dominates; the fixed cost is noise
    assert _costmodel._compute(tier, work, big, whole=True) == pytest.approx(_costmodel._compute(tier, work, big), rel=0.05)
    assert _costmodel._whole_call([(tier.kinds["sort"], 1)], 792.0) == pytest.approx(tier.kinds["sort"].predict(792.0))
