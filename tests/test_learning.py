"""Decisions that learn (issue 12): on the test double's GPU path, with an injected clock.

Each test's function advances a fake clock by the time its call "takes" on the backend it ran
on (a FakeDeviceArray argument means the GPU), so the observed times are exact and the number of
calls until the decision settles is a fixed property of the rules in _learn.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from conftest import synthetic_profile
from fake_device import FakeDeviceArray

import autooffload
from autooffload import ProfileWarning, _history, _learn, explain, offload
from autooffload.backends import cupy as device

N = 125_000  # float64 elements: 1e6 bytes




def timed(clock, *, numpy_s: float, gpu_s: float):
    """A function that takes ``numpy_s`` on NumPy and ``gpu_s`` on the GPU, by the fake clock."""

    def work(x):
        clock.t += gpu_s if isinstance(x, FakeDeviceArray) else numpy_s
        return x * 2

    return offload(kind="elementwise")(work)


def median_centred(clock, *, numpy_s: float, gpu_s: float):
    """``x - median(x)``, taking ``numpy_s`` on NumPy and ``gpu_s`` on the GPU by the fake clock
    (``fake_device.FAKE_MISSING.add("median")`` makes its GPU runs fall back)."""

    def centred(x):
        clock.t += gpu_s if isinstance(x, FakeDeviceArray) else numpy_s
        return x - np.median(x)

    return offload(kind="elementwise")(centred)


def backends_over(f, calls: int) -> list[str]:
    x = np.ones(N)
    out = []
    for _ in range(calls):
        np.testing.assert_array_equal(f(x), x * 2)
        out.append(f.last_decision.backend)
    return out


@pytest.fixture
def decision_log(monkeypatch, tmp_path):
    """The path every decision is logged to (AUTOOFFLOAD_LOG) during the test."""
    path = tmp_path / "decisions.jsonl"
    monkeypatch.setenv("AUTOOFFLOAD_LOG", str(path))
    autooffload.reload_environment()
    return path


@pytest.fixture
def ready_gpu(fake_gpu):
    device.mark_gpu_ready()  # no cold start in these tests: the rules alone
    return fake_gpu


def test_a_gpu_predicted_30x_too_fast_is_left_after_three_calls_and_rechecked_rarely(ready_gpu, use_profile, clock):
    # Profile: NumPy 10 ms, GPU ~0.5 ms. Reality: GPU 15 ms (30x), NumPy 10 ms.
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=3e-10, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.015)
    seen = backends_over(f, 200)
    assert seen[:3] == ["cupy"] * 3  # the first is dropped (one-off costs), two more make it trusted
    # ...then measured again once the function has run RECHECK_AFTER_YOUNG x its 15 ms (150 ms:
    # a cell trusted on two samples), and then only every RECHECK_AFTER x (1.5 s) (a re-check is
    # one call: cold after the switch, but 15 ms less a wake-up's 1 ms cannot beat NumPy's 10 ms,
    # so it is kept)
    trace = "".join(b[0] for b in seen)
    early = seen.index("cupy", 3)
    assert 3 + 13 <= early <= 3 + 17, trace  # ~150 ms of the function's time after its last sample
    later = [i for i, b in enumerate(seen) if b == "cupy" and i > early]
    assert all(i - early >= 140 for i in later) and len(later) <= 1, trace  # then not before 1.5 s
    rechecks = 1 + len(later)
    assert seen[-1] == "numpy"
    assert f"learned from {3 + rechecks} calls" in f.last_decision.sources["cupy"]
    assert f.stats.cupy == 3 + rechecks


def test_numpy_predicted_30x_too_fast_moves_to_the_gpu_and_stays(ready_gpu, use_profile, clock):
    # Profile: NumPy 1 ms, GPU ~1.2 ms. Reality: NumPy 30 ms (an unknown library function), GPU 5 ms.
    use_profile(synthetic_profile(cpu_per_byte=1e-9, gpu_per_byte=1e-9, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.030, gpu_s=0.005)
    seen = backends_over(f, 100)
    # Uncertain (1.2 ms against 1 ms) and affordable after the first 30 ms call: the GPU is explored
    # at once; NumPy's own cell is trusted after its third call.
    settled = max(i for i, b in enumerate(seen) if b == "numpy") + 1
    assert settled <= 6 and seen.count("numpy") <= 3, seen[:10]
    assert seen[settled:] == ["cupy"] * (100 - settled)
    d = f.last_decision
    assert d.sources["numpy"] == "learned from 3 calls" and d.sources["cupy"].startswith("learned from")
    assert d.predicted_s["numpy"] == pytest.approx(0.030) and d.predicted_s["cupy"] == pytest.approx(0.005)


def test_an_uncertain_choice_is_explored_within_budget_and_then_kept(ready_gpu, use_profile, clock):
    # Profile: NumPy 10 ms, GPU ~12 ms (within 2x: uncertain). Reality: NumPy 10 ms, GPU 3 ms.
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=1.2e-8, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.003)
    seen = backends_over(f, 160)
    settled = max(i for i, b in enumerate(seen) if b == "numpy") + 1
    assert settled <= 40, seen[:60]
    assert seen[settled:] == ["cupy"] * (160 - settled)
    history = f.__autooffload__.learner.history
    # the bound in real seconds: clock.t is the time of every call, timed, sampled or not
    assert history.explored_s <= _learn.EXPLORE_FRACTION * clock.t + 0.003


def test_exploring_never_costs_more_than_its_bound_over_1000_calls(ready_gpu, use_profile, clock):
    # GPU predicted 15 ms (uncertain against NumPy's 10 ms), really 120 ms: exploring never pays.
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=1.48e-8, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.120)
    seen = backends_over(f, 1000)
    history = f.__autooffload__.learner.history
    # The bound of _learn.py: the fraction of the real time (every call's), plus one exploration's overrun.
    assert history.explored_s <= _learn.EXPLORE_FRACTION * clock.t + 0.120
    # Explored until trusted (the first dropped, two kept), then never again: a resumed
    # exploration's first call, after NumPy calls, is a switch's, but 120 ms cold cannot hide a
    # win over NumPy's 10 ms warm (COLD_EXCESS_MAX_S), so it is kept.
    assert seen.count("cupy") == 3, "".join(b[0] for b in seen)
    assert seen[-100:] == ["numpy"] * 100


def test_a_new_size_starts_from_the_functions_own_error_at_other_sizes(ready_gpu, use_profile, clock):
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=3e-10, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.015)
    backends_over(f, 10)
    d = explain(f, np.ones(4 * N))  # a bucket never run: the GPU's 30x error at the other size carries over
    assert d.backend == "numpy"
    assert d.sources["cupy"].startswith("profile, corrected x")
    far = explain(f, np.ones(1000 * N))  # 1000x the bytes: the error there says nothing here
    assert far.sources["cupy"] == "profile" and far.sources["numpy"] == "profile", far.sources


def test_a_function_the_profiles_shape_does_not_fit_is_extrapolated_from_its_own_sizes(ready_gpu, use_profile, clock):
    # A Python loop of small operations: mostly overhead, so not shaped like the profile's lines
    # (NumPy 1e-8 s/B, GPU 1e-9 s/B + copies). NumPy really takes 2 ms + 1e-10 s/B, the GPU 1 ms +
    # 1e-9 s/B. At 1e7 B the error at 1e6 B alone predicts NumPy at 21 ms against the GPU's 20 ms,
    # where NumPy takes 3 ms and the GPU 11. The errors at 1e5 and 1e6 B disagree (x2.0 and x0.21
    # on NumPy), so each backend's own two sizes are extrapolated as a fixed cost plus a cost per
    # byte. (60 calls a size leave a small budget for exploring, as calls on the C check do: with
    # the error alone the GPU ran 14 of the 20 calls at 1e7 B.)
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=1e-9, copy_per_byte=1e-10, cold_start=0.0))

    def loop(x):
        on_gpu = isinstance(x, FakeDeviceArray)
        clock.t += (1e-3 + 1e-9 * x.nbytes) if on_gpu else (2e-3 + 1e-10 * x.nbytes)
        return x * 2

    f = offload(kind="elementwise")(loop)
    for nbytes in (10**5, 10**6):
        x = np.ones(nbytes // 8)
        for _ in range(60):
            f(x)
    learner = f.__autooffload__.learner
    trusted = [k[0] for k, c in learner.history.cells.items() if c.trusted]
    assert trusted.count("numpy") == 2 and trusted.count("cupy") == 2, trusted  # both sizes, both backends
    x = np.ones(10**7 // 8)
    d = explain(f, x)
    assert d.sources["numpy"].startswith("extrapolated") and d.sources["cupy"].startswith("extrapolated"), d.sources
    # within the bucket's rounding of the truth (a bucket's bytes stand for the half-octave around them)
    assert 0.003 / 1.5 < d.predicted_s["numpy"] < 0.003 * 1.5 and 0.011 / 1.5 < d.predicted_s["cupy"] < 0.011 * 1.5, d.predicted_s
    assert d.backend == "numpy" and not d.exploring, d
    seen = []
    for _ in range(20):
        np.testing.assert_array_equal(f(x), x * 2)
        seen.append(f.last_decision.backend)
    # NumPy from the first call; the GPU, predicted within EXPLORE_WITHIN, may be explored once
    assert seen[0] == "numpy" and seen.count("cupy") <= 3 and seen[-5:] == ["numpy"] * 5, seen


def test_own_sizes_are_extrapolated_only_where_errors_far_enough_apart_disagree():
    from autooffload._costmodel import Prediction
    from autooffload._history import FunctionHistory

    def adjusted(cells: dict[int, tuple[float, float]], at: int, profile_s: float = 0.08) -> tuple[float, str]:
        learner = _learn.Learner(lambda x: x)
        learner._history = history = FunctionHistory("test")
        for bucket, (seconds, predicted) in cells.items():
            for _ in range(3):  # the first dropped, two kept: trusted
                history.add(("numpy", bucket, -1), seconds, predicted, exploring=False)
        pred, sources = learner.adjust(Prediction({"numpy": profile_s}), (at, -1))
        return pred.seconds["numpy"], sources["numpy"]

    lo, hi, at = 2**16.5, 2**20, 2**23  # the bytes buckets 33, 40 and 46 stand for
    # x2.0 at bucket 33, x0.21 at 40: a fixed cost and a cost per byte through the two
    seconds, source = adjusted({33: (2.0e-3, 1e-3), 40: (2.1e-3, 1e-2)}, 46)
    per_byte = (2.1e-3 - 2.0e-3) / (hi - lo)
    assert source.startswith("extrapolated from this function's sizes as a fixed cost and a cost per byte")
    assert seconds == pytest.approx(2.1e-3 + per_byte * (at - hi))
    # growing faster than the bytes (x1.0 then x2.0): a power line, but never above the corrected profile
    seconds, source = adjusted({33: (1e-3, 1e-3), 40: (2e-2, 1e-2)}, 46, profile_s=1.0)
    slope = math.log(20) / math.log(hi / lo)
    assert "growing as bytes^" in source and seconds == pytest.approx(2e-2 * (at / hi) ** slope)
    seconds, source = adjusted({33: (1e-3, 1e-3), 40: (2e-2, 1e-2)}, 46, profile_s=0.08)
    assert source.startswith("profile, corrected x2") and seconds == pytest.approx(0.08 * 2.0)
    # a cost that fell with size: flat from the nearer size
    seconds, source = adjusted({33: (4.0e-3, 1e-3), 40: (2.1e-3, 1e-2)}, 46)
    assert source.startswith("extrapolated") and seconds == pytest.approx(2.1e-3)
    # errors that agree (x2.0, x1.9): the profile, corrected by the nearest
    seconds, source = adjusted({33: (2.0e-3, 1e-3), 40: (1.9e-2, 1e-2)}, 46)
    assert source.startswith("profile, corrected x1.9") and seconds == pytest.approx(0.08 * 1.9)
    # sizes closer than TREND_SPAN say nothing about the shape: corrected by the nearest
    seconds, source = adjusted({39: (2.0e-3, 1e-3), 40: (2.1e-3, 1e-2)}, 46)
    assert source.startswith("profile, corrected x0.21") and seconds == pytest.approx(0.08 * 0.21)
    # below the function's sizes: corrected by the nearest (no line is carried downwards)
    seconds, source = adjusted({40: (2.0e-3, 1e-3), 46: (2.1e-3, 1e-2)}, 33)
    assert source.startswith("profile, corrected x2 ") and seconds == pytest.approx(0.08 * 2.0)
    assert _learn.carried(source) and _learn.carried("extrapolated from this function's sizes as x")


def test_learning_off_gives_the_profiles_decisions_exactly(ready_gpu, use_profile, clock, monkeypatch):
    profile = use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=3e-10, copy_per_byte=1e-10, cold_start=0.0))
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "0")
    autooffload.reload_environment()
    f = timed(clock, numpy_s=0.010, gpu_s=0.015)
    assert backends_over(f, 50) == ["cupy"] * 50
    d = f.last_decision
    assert not d.observe and not d.sources and not d.exploring
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "1")
    autooffload.reload_environment()
    use_profile(profile)
    g = timed(clock, numpy_s=0.010, gpu_s=0.015)
    first = explain(g, np.ones(N))  # learning on, nothing learned yet: the same decision
    assert (first.backend, first.reason, first.predicted_s) == (d.backend, d.reason, d.predicted_s)


def test_the_log_records_the_observed_time_beside_the_prediction(ready_gpu, use_profile, clock, decision_log):
    log = decision_log
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=3e-10, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.015)
    backends_over(f, 6)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    observed = [line for line in lines if "observed_s" in line]
    assert [(line["backend"], line["observed_s"]) for line in observed[:4]] == [
        ("cupy", pytest.approx(0.015)), ("cupy", pytest.approx(0.015)), ("cupy", pytest.approx(0.015)),
        ("numpy", pytest.approx(0.010)),
    ]
    assert all("predicted_s" in line for line in observed)


def test_an_exception_is_not_learned_from_and_writes_stay(ready_gpu, use_profile, clock):
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=3e-10, copy_per_byte=1e-10, cold_start=0.0))

    @offload(kind="elementwise")
    def fails(x):
        x[0] = 7.0
        raise ValueError("no")

    x = np.ones(N)
    with pytest.raises(ValueError):
        fails(x)
    assert x[0] == 7.0 and not fails.__autooffload__.learner.history.cells


# -- the history file ----------------------------------------------------------------------------


def test_history_is_saved_and_read_back_by_a_fresh_store(tmp_path):
    path = tmp_path / "history.json"
    first = _history.Store(lambda: path)
    cells = first.function("m:f:abc")
    for s in (0.5, 0.010, 0.011, 0.012):
        cells.add(("numpy", 40, -1), s, 0.001, exploring=False)
    first.save()
    again = _history.Store(lambda: path).function("m:f:abc")
    cell = again.cell(("numpy", 40, -1))
    assert cell.count == 4 and cell.estimate() == pytest.approx(0.011) and cell.predicted == 0.001


def test_two_stores_saving_alternately_keep_each_others_samples(tmp_path):
    path = tmp_path / "history.json"
    a, b = _history.Store(lambda: path), _history.Store(lambda: path)
    fa, fb = a.function("m:f:abc"), b.function("m:f:abc")
    for i in range(5):
        fa.add(("numpy", 40, -1), 0.01, None, exploring=False)
        fb.add(("numpy", 40, -1), 0.02, None, exploring=False)
        a.save()
        b.save()
    stored = _history.read_file(path)
    cell = _history.Cell.from_json(stored["m:f:abc"]["numpy|40|-1"])
    assert cell.count == 10


def test_two_processes_writing_at_once_lose_no_sample(tmp_path):
    path = tmp_path / "history.json"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from autooffload import _history\n"
        f"store = _history.Store(lambda: Path({str(path)!r}))\n"
        "f = store.function('m:f:abc')\n"
        "for i in range(200):\n"
        "    f.add(('numpy', 40, -1), 0.01, None, exploring=False)\n"
        "    if i % 20 == 0: store.save()\n"
        "store.save()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    cell = _history.Cell.from_json(_history.read_file(path)["m:f:abc"]["numpy|40|-1"])
    assert cell.count == 400


def test_a_corrupt_history_file_is_one_warning_and_a_fresh_start(tmp_path):
    path = tmp_path / "history.json"
    path.write_text("{ not json")
    with pytest.warns(ProfileWarning, match="not valid JSON; starting afresh|is not valid JSON"):
        history = _history.Store(lambda: path).function("m:f:abc")
    assert not history.cells
    path.write_text(json.dumps({"format": 99, "functions": {}}))
    with pytest.warns(ProfileWarning, match="not an autooffload history file"):
        _history.Store(lambda: path).function("m:f:abc")


def test_an_edited_function_starts_afresh():
    namespace: dict = {}
    exec("def f(x):\n    return x * 2\n", namespace)
    before = _history.function_key(namespace["f"])
    exec("def f(x):\n    return x * 3\n", namespace)
    assert _history.function_key(namespace["f"]) != before
    assert before.split(":")[:2] == _history.function_key(namespace["f"]).split(":")[:2]


def test_the_history_survives_a_process_restart_and_decides_at_once(tmp_path):
    profile_path = tmp_path / "profile.json"
    from autooffload._profiles import save_profile

    save_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=3e-10, copy_per_byte=1e-10, cold_start=0.0),
                 profile_path)
    here = os.path.dirname(__file__)
    code = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {here!r})\n"
        "import fake_device\n"
        "from autooffload import offload, explain\n"
        "from autooffload.backends import cupy\n"
        "cupy.set_backend_for_tests(fake_device.FakeDevice()); cupy.mark_gpu_ready()\n"
        "from autooffload import _learn\n"
        "t = [0.0]\n"
        "_learn.clock = lambda: t[0]\n"
        "def work(x):\n"
        "    t[0] += 0.015 if isinstance(x, fake_device.FakeDeviceArray) else 0.010\n"
        "    return x * 2\n"
        "f = offload(kind='elementwise')(work)\n"
        f"x = np.ones({N})\n"
        "if sys.argv[1] == 'learn':\n"
        "    for _ in range(10): f(x)\n"
        "print(explain(f, x).backend, '|', explain(f, x).sources.get('cupy'))\n"
    )
    env = {**os.environ, "AUTOOFFLOAD_CACHE_DIR": str(tmp_path / "cache"), "AUTOOFFLOAD_PROFILE": str(profile_path),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    run = lambda mode: subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True,  # noqa: E731
                                      text=True, timeout=60, check=True).stdout.strip()
    assert run("learn").startswith("numpy | learned from 3 calls")
    assert run("ask").startswith("numpy | learned from 3 calls")  # a new process: read from the file


def test_the_history_command_lists_and_forgets(ready_gpu, use_profile, clock, capsys):
    from autooffload import cli

    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=3e-10, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.015)
    backends_over(f, 8)
    _learn.STORE.save()
    assert cli.main(["history"]) == 0
    out = capsys.readouterr().out
    assert "work" in out and "cupy" in out and "numpy" in out and "chosen" in out
    assert cli.main(["history", "--clear"]) == 0
    capsys.readouterr()
    assert cli.main(["history"]) == 0
    assert "no learned history" in capsys.readouterr().out


def test_a_backend_predicted_3x_slower_but_faster_is_found_by_exploring(ready_gpu, use_profile, clock):
    # The normal-equations case of the H200 suite: GPU chosen and right about itself (~0.6 ms),
    # NumPy predicted 2 ms but really 0.33 ms. Only trying NumPy finds it.
    use_profile(synthetic_profile(cpu_per_byte=2e-9, gpu_per_byte=4e-10, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.00033, gpu_s=0.0006)
    seen = backends_over(f, 200)
    assert seen[0] == "cupy"
    settled = max(i for i, b in enumerate(seen) if b == "cupy") + 1
    assert settled <= 60, seen[:80]
    assert seen[settled:] == ["numpy"] * (200 - settled)


def test_a_cold_gpu_is_not_explored(fake_gpu, use_profile, clock):
    # Exploring a cold GPU would pay its cold start: that is the ski rental's call, not exploration's.
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=1.2e-8, copy_per_byte=1e-10, cold_start=1.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.003)
    backends_over(f, 300)
    assert f.__autooffload__.learner.history.explored_s == 0.0


def test_two_disagreeing_samples_wait_for_a_third_and_the_median_outvotes_the_outlier():
    from autooffload._history import Cell

    cell = Cell()
    for seconds in (5.0, 0.001, 0.010):  # the first is dropped; then a one-off slow sample
        cell.add(seconds, None)
    assert not cell.trusted and cell.estimate() is None
    cell.add(0.001, None)
    assert cell.trusted and cell.estimate() == 0.001
    agreeing = Cell()
    for seconds in (5.0, 0.001, 0.0012):
        agreeing.add(seconds, None)
    assert agreeing.trusted and agreeing.estimate() == pytest.approx(0.0011)


def test_the_history_is_saved_at_most_every_interval_not_on_every_64th_call(tmp_path, monkeypatch):
    # A save merges and rewrites the whole file (~36 ms for 14 functions' cells): every 64
    # observations it cost each observed call ~0.6 ms in the caller's thread.
    store = _history.Store(lambda: tmp_path / "history.json")
    history = store.function("m:f:abc")
    monkeypatch.setattr(_history, "SAVE_INTERVAL_S", 3600.0)
    for i in range(200):
        history.add(("numpy", 10, -1), 0.001, 0.001, exploring=False)
        store.observed()
    assert not (tmp_path / "history.json").exists()
    monkeypatch.setattr(_history, "SAVE_INTERVAL_S", 0.0)
    for i in range(_history.SAVE_EVERY):
        store.observed()
    assert (tmp_path / "history.json").exists()


def test_a_first_gpu_call_paying_one_off_costs_does_not_stop_exploring(ready_gpu, use_profile, clock):
    # The normal equations of the H200 suite at (12658, 79): NumPy learned 3.2 ms against a profile
    # 5x more pessimistic (16 ms: the bytes of a large solve), the GPU predicted 14 ms (over 4x the
    # NumPy time learned) but really 1.4 ms, its first call 150 ms (CuPy compiling, the solver's
    # handle). The profile being 5x off for NumPy makes the GPU worth trying; its first call is
    # charged at its prediction, so exploring goes on instead of waiting ~1500 ms of NumPy calls.
    use_profile(synthetic_profile(cpu_per_byte=1.6e-8, gpu_per_byte=1.39e-8, copy_per_byte=1e-11, cold_start=0.0))
    gpu_calls = []

    def work(x):
        on_gpu = isinstance(x, FakeDeviceArray)
        if on_gpu:
            gpu_calls.append(1)
        clock.t += (0.150 if len(gpu_calls) == 1 else 0.0014) if on_gpu else 0.0032
        return x * 2

    f = offload(kind="elementwise")(work)
    seen = backends_over(f, 120)
    settled = max(i for i, b in enumerate(seen) if b == "numpy") + 1
    assert settled <= 60, "".join(b[1] for b in seen)
    assert seen[settled:] == ["cupy"] * (120 - settled)
    history = f.__autooffload__.learner.history
    # The bound of _learn.py: the fraction, plus the first call's one-off excess, plus one misprediction.
    assert history.explored_s <= _learn.EXPLORE_FRACTION * history.observed_s + 0.014


def test_an_exploration_waiting_for_its_budget_does_not_decide_again_on_every_call(ready_gpu, use_profile, clock):
    # GPU predicted 30 ms against NumPy's 10 ms (uncertain): exploring it waits until the function
    # has run 300 ms. Meanwhile each call is observed, but the decision is made again only when the
    # budget allows the exploration (a looser test re-decided every call: +100-400 us each on the H200).
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=2.99e-8, copy_per_byte=1e-11, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.100)
    seen = backends_over(f, 25)
    assert seen == ["numpy"] * 25  # 250 ms observed: not yet affordable
    # NumPy trusted, its calls are sampled meanwhile: one learned from in DEVICE_SAMPLE_EVERY,
    # the others measured for the budget (count_measured), not every one learned from
    assert f.last_decision.observe and f.last_decision.observe_every == _learn.DEVICE_SAMPLE_EVERY
    decisions = f.stats.as_dict()["decisions"]
    assert decisions <= 4, decisions  # the first, the cell's trust (an estimate appearing), not one per call
    seen = backends_over(f, 10)
    assert "cupy" in seen  # and once affordable, the exploration does happen


def test_the_next_exploring_call_is_costed_at_its_last_sample_where_it_has_one():
    from autooffload._costmodel import Prediction
    from autooffload._history import FunctionHistory

    learner = _learn.Learner(lambda x: x)
    learner._history = history = FunctionHistory("test")
    bucket = (40, -1)
    for _ in range(11):
        history.add(("numpy", *bucket), 0.0032, 0.016, exploring=False)  # 35.2 ms observed (one dropped)
    history.add(("cupy", *bucket), 0.020, 0.004, exploring=True, expected=0.0128)  # one-off, charged its prediction
    history.add(("cupy", *bucket), 0.0014, 0.004, exploring=True)  # one real sample, not yet trusted
    # The first call's charge came down to the warm sample's: 2.8 ms explored of 56.6 ms observed.
    assert history.explored_s == pytest.approx(0.0028)
    pred = Prediction({"numpy": 0.0032, "cupy": 0.0128})
    # 2.8 ms + 12.8 ms predicted > 10% of 56.6 ms; + 1.4 ms measured is not.
    assert learner.exploration(pred, "numpy", bucket, {"numpy": "learned from 10 calls"}, {"numpy": 0.016}) == "cupy"


def test_a_first_exploring_call_is_charged_no_more_than_the_warm_call_after_it():
    from autooffload._history import FunctionHistory

    history = FunctionHistory("test")
    history.add(("cupy", 40, -1), 0.150, 0.004, exploring=True, expected=0.004)
    assert history.explored_s == pytest.approx(0.004)  # capped at the prediction
    history.add(("cupy", 40, -1), 0.002, 0.004, exploring=True)
    assert history.explored_s == pytest.approx(0.004)  # 2 ms + the first brought down to 2 ms
    history.add(("cupy", 40, -1), 0.009, 0.004, exploring=True)
    assert history.explored_s == pytest.approx(0.013)  # later calls are charged what they took
    assert history.observed_s == pytest.approx(0.161)  # observed time is never adjusted



def test_a_backend_measured_slow_on_a_noisy_start_is_checked_again_and_then_chosen(ready_gpu, use_profile, clock):
    # The GPU's calls take 19 ms for the first 1 s (another process on the card, a slow start),
    # 1 ms after; NumPy 5 ms. Trusted at 19 ms, the GPU is left; once the function has run
    # RECHECK_AFTER x 19 ms (1.9 s: ~380 NumPy calls, untimed ones counted), it is measured
    # again, found 19x faster, measured afresh and chosen. (19 ms, inside EXPLORE_WITHIN of
    # NumPy's 5: at 20, exactly 4x, the re-check hung on the last bit of NumPy's estimate, which
    # the clock's sums now move, as NumPy's contested choice is sampled.)
    use_profile(synthetic_profile(cpu_per_byte=5e-9, gpu_per_byte=6e-9, copy_per_byte=1e-12, cold_start=0.0))

    def work(x):
        if isinstance(x, FakeDeviceArray):
            clock.t += 0.019 if clock.t < 1.0 else 0.001
        else:
            clock.t += 0.005
        return x * 2

    f = offload(kind="elementwise")(work)
    seen = backends_over(f, 800)
    assert "numpy" in seen[:50]  # left after its slow samples
    switched = max(i for i, b in enumerate(seen) if b == "numpy") + 1
    assert 380 <= switched <= 560, "".join(b[0] for b in seen)  # trusted at ~0.6 s (call ~124), due 2 s later
    assert seen[switched:] == ["cupy"] * (800 - switched)
    history = f.__autooffload__.learner.history
    assert history.explored_s <= _learn.EXPLORE_FRACTION * f.__autooffload__.learner._spent() + 0.020


def test_a_contested_numpy_choice_keeps_being_sampled_and_a_slowdown_moves_it(ready_gpu, use_profile, clock):
    # NumPy 5 ms, the GPU 8 ms: NumPy chosen, the GPU within EXPLORE_WITHIN. After 1 s NumPy's
    # calls take 12 ms (the machine, the data's cache behaviour). Its contested choice is timed one
    # call in DEVICE_SAMPLE_EVERY, so its estimate follows and the GPU takes over; untimed, NumPy's
    # estimate stayed at 5 ms (the H200 suite's bessel row: NumPy learned at 182 us, measured at
    # 220-330 us by its own column later in the run).
    use_profile(synthetic_profile(cpu_per_byte=5e-9, gpu_per_byte=6e-9, copy_per_byte=1e-12, cold_start=0.0))

    def work(x):
        if isinstance(x, FakeDeviceArray):
            clock.t += 0.008
        else:
            clock.t += 0.005 if clock.t < 1.0 else 0.012
        return x * 2

    f = offload(kind="elementwise")(work)
    seen = backends_over(f, 600)
    assert seen[20:150].count("numpy") >= 120, "".join(b[0] for b in seen)  # NumPy's 5 ms wins at first
    assert seen[-100:].count("cupy") >= 95, "".join(b[0] for b in seen)  # re-checks of NumPy aside
    assert f.last_decision.predicted_s["numpy"] > 0.010  # NumPy's estimate followed its calls


def test_an_uncontested_numpy_choice_goes_back_to_the_untimed_path(ready_gpu, use_profile, clock):
    use_profile(synthetic_profile(cpu_per_byte=5e-9, gpu_per_byte=6e-9, copy_per_byte=1e-12, cold_start=0.0))
    f = timed(clock, numpy_s=0.005, gpu_s=0.050)  # the GPU 10x slower: not within EXPLORE_WITHIN
    seen = backends_over(f, 800)
    assert seen.count("cupy") >= 3  # explored, and found 10x slower
    d = f.last_decision
    assert d.backend == "numpy" and not d.observe, d


def test_a_backend_really_slower_is_rechecked_rarely(ready_gpu, use_profile, clock):
    # The GPU really takes 12 ms against NumPy's 5 (within EXPLORE_WITHIN: worth a re-check now
    # and then): re-checks come at most once per RECHECK_AFTER x its 12 ms of the function's time.
    # Each is one call: cold after the switch, but 12 ms less a wake-up's 1 ms cannot beat 5 ms, so
    # it is kept (_learn.cold_may_hide_a_win), not measured twice.
    use_profile(synthetic_profile(cpu_per_byte=5e-9, gpu_per_byte=6e-9, copy_per_byte=1e-12, cold_start=0.0))
    f = timed(clock, numpy_s=0.005, gpu_s=0.012)
    seen = backends_over(f, 3000)
    runs = [r for r in "".join("c" if b == "cupy" else "n" for b in seen).split("n") if r]
    assert all(r == "c" for r in runs), runs
    rechecks = len(runs) - 3  # the first three made the cell trusted
    spent = f.__autooffload__.learner._spent()  # observed and untimed calls' seconds
    assert 1 <= rechecks <= spent / (_learn.RECHECK_AFTER * 0.012) + 1, rechecks
    assert seen[-3:].count("numpy") >= 2  # NumPy stays the choice


def test_a_recheck_that_may_hide_a_win_is_measured_back_to_back(ready_gpu, use_profile, clock):
    # The GPU really takes 0.3 ms against NumPy's 0.25 ms: a re-check's first calls after the
    # switch may be a wake-up's or a cache refill's cost (they could hide a win), so they are
    # dropped and the re-check goes on, back to back, until a warm call is measured.
    use_profile(synthetic_profile(cpu_per_byte=1.25e-10, gpu_per_byte=1.5e-10, copy_per_byte=1e-14, cold_start=0.0))
    f = timed(clock, numpy_s=0.25e-3, gpu_s=0.3e-3)
    seen = backends_over(f, 6000)
    runs = [r for r in "".join("c" if b == "cupy" else "n" for b in seen).split("n") if r]
    k = _learn.SWITCH_COLD_CALLS
    assert len(runs) >= 3 and all(len(r) == k + 1 for r in runs[1:-1]) and len(runs[-1]) <= k + 1, runs
    assert seen[-3:].count("numpy") >= 2


def test_a_backend_predicted_slow_only_from_another_sizes_error_is_still_explored():
    # The 2-core VM's percentiles: NumPy's 8x error at 1e3 elements predicted it at 540 us at 1e4,
    # 4.2x the tier's learned 128 us; it really took 93 us. A prediction carried over from another
    # size is no reason to skip the backend; the profile's own is.
    from autooffload._costmodel import Prediction
    from autooffload._history import FunctionHistory

    learner = _learn.Learner(lambda x: x)
    learner._history = history = FunctionHistory("test")
    bucket = (33, -1)
    for _ in range(50):  # 6.4 ms run: 10% of it affords one 540 us exploration
        history.add(("numba", *bucket), 128e-6, 700e-6, exploring=False)
    pred = Prediction({"numpy": 540e-6, "numba": 128e-6})
    carried = {"numba": "learned from 49 calls", "numpy": "profile, corrected x8 by this function's history"}
    assert learner.exploration(pred, "numba", bucket, carried, {"numba": 400e-6, "numpy": 67e-6}) == "numpy"
    profile_only = {"numba": "learned from 49 calls", "numpy": "profile"}
    assert learner.exploration(pred, "numba", bucket, profile_only, {"numba": 400e-6, "numpy": 540e-6}) is None


def test_the_tier_is_not_explored_for_calls_too_short_for_it():
    # panel_recur at 1e2 on the H200: NumPy 6 us, the tier (compiled by another call) tried twice
    # at ~3 ms each; under TIER_EXPLORE_MIN_CALL_S there is too little to gain per call.
    from autooffload._costmodel import Prediction
    from autooffload._history import FunctionHistory

    learner = _learn.Learner(lambda x: x)
    learner._history = history = FunctionHistory("test")
    bucket = (10, -1)
    for _ in range(5000):  # plenty of budget
        history.add(("numpy", *bucket), 6e-6, 3e-6, exploring=False)
    sources = {"numpy": "learned from 4999 calls", "numba": "profile"}
    pred = Prediction({"numpy": 6e-6, "numba": 12e-6})
    assert learner.exploration(pred, "numpy", bucket, sources, {"numpy": 3e-6, "numba": 12e-6}) is None
    long_bucket = (30, -1)  # the same at a call of 60 us: the tier is tried
    for _ in range(5000):
        history.add(("numpy", *long_bucket), 60e-6, 30e-6, exploring=False)
    pred = Prediction({"numpy": 60e-6, "numba": 120e-6})
    assert learner.exploration(pred, "numpy", long_bucket, sources, {"numpy": 30e-6, "numba": 120e-6}) == "numba"


def test_short_calls_wait_for_no_recheck():
    # Waiting for a re-check takes a NumPy call off the C check's path: not worth it under 100 us.
    from autooffload._costmodel import Prediction
    from autooffload._history import FunctionHistory

    learner = _learn.Learner(lambda x: x)
    learner._history = history = FunctionHistory("test")
    for _ in range(3):
        history.add(("cupy", 30, -1), 60e-6, 60e-6, exploring=True)
        history.add(("cupy", 40, -1), 0.006, 0.006, exploring=True)
    assert learner.recheck_wait(Prediction({"numpy": 30e-6, "cupy": 60e-6}), "numpy", (30, -1)) == 0.0
    assert learner.recheck_wait(Prediction({"numpy": 0.003, "cupy": 0.006}), "numpy", (40, -1)) == 0.003


def test_a_trusted_gpu_choice_learns_from_one_call_in_eight_and_counts_the_rest_as_measured(ready_gpu, use_profile, clock):
    # Profile: NumPy 10 ms, GPU ~0.5 ms; reality agrees (GPU 1 ms): the GPU is chosen and trusted.
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=3e-10, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.001)
    # the dropped first, the calls after it dropped as a start's (SWITCH_COLD_CALLS: a 1 ms call
    # may hide a win against 10 ms), and two agreeing samples
    backends_over(f, 2 + _learn.SWITCH_COLD_CALLS)
    learner = f.__autooffload__.learner
    cell = learner.history.cell(("cupy", *f.last_decision.bucket))
    assert cell.trusted
    before, measured, counted = cell.count, learner._measured_s, learner._counted_s
    seen = backends_over(f, 8 * _learn.DEVICE_SAMPLE_EVERY)
    assert seen == ["cupy"] * len(seen)
    assert f.last_decision.observe and f.last_decision.observe_every == _learn.DEVICE_SAMPLE_EVERY
    assert cell.count - before == 8  # one call in DEVICE_SAMPLE_EVERY learned from...
    untimed = 8 * (_learn.DEVICE_SAMPLE_EVERY - 1)
    assert learner._measured_s - measured == pytest.approx(untimed * 0.001)  # ...the rest counted as measured
    assert learner._counted_s == counted  # (never at a prediction)


def test_cold_samples_are_dropped_unless_every_recent_one_is_cold():
    cell = _history.Cell()
    cell.add(1.0, None)  # the first: dropped as always
    for _ in range(_history.COLD_DROPS):
        cell.add(0.050, None, cold=True)  # a tier call after its threads slept
    assert cell.samples == [] and cell.count == 1 + _history.COLD_DROPS
    cell.add(0.010, None)
    cell.add(0.011, None)
    cell.add(0.050, None, cold=True)  # one cold call among warm ones: not its cost
    assert cell.samples == [0.010, 0.011] and cell.estimate() == pytest.approx(0.0105)
    for _ in range(_history.COLD_DROPS + 3):
        cell.add(0.050, None, cold=True)  # called this sparsely, the cold cost is the real one
    assert cell.samples[-3:] == [0.050] * 3


def _tier_function_observed(monkeypatch, observe_every: int):
    """A function run on the Numba tier (compiled, its threads started), past the cold calls of a
    switch, whose timed calls record only whether they were cold: (tier, state, its decision
    timed one call in ``observe_every``, its argument, the list of cold flags)."""
    from autooffload import backends

    tier = backends.get("numba")
    if tier is None:
        pytest.skip("the Numba tier is not installed here")

    @offload(backend="numba")
    def chain(x):
        return x * 2.0 + 1.0

    x = np.arange(1000.0)
    chain(x)
    state = chain.__autooffload__
    seen: list[bool] = []
    monkeypatch.setattr(state, "_observed", lambda d, seconds, raised, cold=False, disturbed=False, *, corrected, fell_back=False, **_: seen.append(cold))
    d = dataclasses.replace(chain.last_decision, observe=True, observe_every=observe_every)
    assert d.backend == "numba"
    # it took over SWITCH_COLD_CALLS runs ago, no other backend since
    state.took_over["numba"] = (state.others_ran("numba"), state.own_runs("numba") - _learn.SWITCH_COLD_CALLS)
    return tier, state, d, x, seen


def test_a_tier_call_after_its_threads_slept_is_observed_cold(monkeypatch):
    tier, state, d, x, seen = _tier_function_observed(monkeypatch, 1)
    monkeypatch.setattr(tier, "last_end", time.perf_counter() + 60.0)  # it has just run: warm
    state.run_observed(d, (x,), {})
    monkeypatch.setattr(tier, "last_end", 0.0)  # long ago: its threads are asleep
    state.run_observed(d, (x,), {})
    assert seen == [False, True]


def test_a_sampled_call_that_may_be_cold_has_the_next_call_timed_too(monkeypatch):
    # Review finding: a function called in bursts of DEVICE_SAMPLE_EVERY, each burst's first tier
    # call cold, had the same (cold) call of every burst timed: its cold samples outvoted the
    # warm ones. A cold sampled call now has the next call timed as well.
    every = _learn.DEVICE_SAMPLE_EVERY
    tier, state, d, x, timed_calls = _tier_function_observed(monkeypatch, every)
    state.unsampled = 0
    for i in range(3 * every):
        # the first call of each burst of `every` finds the tier's threads asleep
        monkeypatch.setattr(tier, "last_end", 0.0 if i % every == every - 1 else time.perf_counter() + 60.0)
        state.run_observed(d, (x,), {})
    assert timed_calls[:2] == [True, False], timed_calls  # the cold one, then the next, warm
    assert False in timed_calls[2:], timed_calls  # and warm samples keep coming


def test_a_cold_tier_sample_is_dropped_only_while_it_may_hide_a_win(monkeypatch):
    # A cold call whose warm cost (less a wake-up's) may beat the best other prediction: dropped,
    # to be measured again; one far beyond it cannot be (panel_recur at (2, 2) on the H200: ~400 us
    # on the tier against NumPy's 6 us) and is kept, so the tier is not explored again and again.
    predicted = {"numpy": 6e-6, "numba": 5e-6}
    assert _learn.cold_may_hide_a_win(40e-6, predicted, "numba")
    assert not _learn.cold_may_hide_a_win(400e-6, predicted, "numba")
    assert _learn.cold_may_hide_a_win(400e-6, {"numba": 5e-6}, "numba")  # nothing to compare with
    # A wake-up is a cost of its own: a 3 us tier call woken at 140 us may still beat NumPy's 6 us.
    assert _learn.cold_may_hide_a_win(140e-6, predicted, "numba")

    @offload
    def tiny(x):
        return x * 2.0 + 1.0

    tiny(np.arange(4.0))
    state = tiny.__autooffload__
    d = dataclasses.replace(tiny.last_decision, backend="numba", predicted_s=predicted, exploring=True)
    state.attrs["last_decision"] = d
    seen = []
    monkeypatch.setattr(state.learner, "observe", lambda *a, cold=False, **k: seen.append(cold))
    state._observed(d, 40e-6, False, cold=True, corrected=False)
    state._observed(d, 400e-6, False, cold=True, corrected=False)
    state._observed(d, 400e-6, False, cold=False, corrected=False)
    state._observed(d, 2e-3, False, cold=True, corrected=False)
    assert seen == [True, False, False, False]


def test_calls_timed_while_the_tier_compiles_teach_nothing_but_count(ready_gpu, use_profile, clock, monkeypatch):
    from autooffload import backends

    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=3e-10, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.015)
    tier_module = backends.module("numba")
    monkeypatch.setattr(tier_module, "compiling_now", lambda: True)  # another thread holds the GIL
    backends_over(f, 5)
    learner = f.__autooffload__.learner
    assert not learner.history.cells  # nothing learned from the contended calls...
    assert learner._measured_s == pytest.approx(5 * 0.015)  # ...but their measured time counts
    monkeypatch.setattr(tier_module, "compiling_now", lambda: False)
    backends_over(f, 3)
    assert learner.history.cells


def test_a_carried_over_prediction_waits_for_no_more_budget_than_four_times_the_choice():
    # The 2-core VM's percentiles at 1e4: NumPy predicted 4.1 ms from its 13x error at 1e2 (it takes
    # 0.13 ms), the tier learned at 0.43 ms. Costed at 4.1 ms, the exploration waited for 41 ms of
    # the function's time; costed at 4 x 0.43 ms it goes after ~17 ms.
    from autooffload._costmodel import Prediction
    from autooffload._history import FunctionHistory

    learner = _learn.Learner(lambda x: x)
    learner._history = history = FunctionHistory("test")
    bucket = (33, -1)
    pred = Prediction({"numpy": 4.1e-3, "numba": 0.43e-3})
    carried = {"numba": "learned from 3 calls", "numpy": "profile, corrected x13 by this function's history"}
    calls = 0
    while learner.exploration(pred, "numba", bucket, carried, {"numba": 1.0e-3, "numpy": 0.32e-3}) is None:
        history.add(("numba", *bucket), 0.43e-3, 1.0e-3, exploring=False)
        calls += 1
    assert history.observed_s >= _learn.EXPLORE_FRACTION ** -1 * _learn.EXPLORE_WITHIN * 0.43e-3 * 0.99
    assert calls <= 42, calls  # 4 x 0.43 ms within 10% of the observed time: ~40 calls, not ~95


def _doubling_called_once():
    """(an offloaded ``x * 2``, its state, the array it was called on once)."""

    @offload
    def double(x):
        return x * 2.0

    x = np.arange(8.0)
    double(x)
    return double, double.__autooffload__, x


def test_a_call_is_cold_after_another_backend_ran_not_after_calls_on_its_own(monkeypatch):
    double, state, x = _doubling_called_once()
    seen = []
    monkeypatch.setattr(state, "_observed", lambda d, seconds, raised, cold=False, disturbed=False, *, corrected, fell_back=False, **_: seen.append(cold))
    d = dataclasses.replace(double.last_decision, observe=True, observe_every=1)
    assert d.backend == "numpy"
    k = _learn.SWITCH_COLD_CALLS
    state.run_observed(d, (x,), {})  # a function's start is no switch: warm
    state.records.count_run("cupy")  # another backend ran a call (another bucket, an exploring call)
    for _ in range(k + 1):
        state.run_observed(d, (x,), {})  # the first k NumPy calls after it are cold, then warm
    state.records.count_run("cupy")
    state.run_observed(d, (x,), {})  # cold again...
    for _ in range(k):
        double(x)  # ...and NumPy calls on any path count towards the row: warm after k of them
    state.run_observed(d, (x,), {})
    assert seen == [False] + [True] * k + [False] + [True, False]


def test_a_dropped_exploring_call_is_charged_to_the_budget():
    from autooffload._history import FunctionHistory

    history = FunctionHistory("test")
    key = ("cupy", 20, -1)
    history.add(key, 1e-3, None, exploring=True, expected=1e-3)  # a cell's first: charged its expected cost
    before = history.explored_s
    cell = history.add(key, 5e-3, None, exploring=True, cold=True)  # dropped (cold), not learned from...
    assert not cell.last_kept and cell.samples == []
    assert history.explored_s == pytest.approx(before + 5e-3)  # ...but it cost what it cost


def test_a_dropped_cold_recheck_leaves_the_trusted_cell_as_it_was():
    from autooffload._history import FunctionHistory

    learner = _learn.Learner(lambda x: x)
    learner._history = FunctionHistory("test")
    learner.revisit = lambda: None
    bucket = (20, -1)
    for s in (1e-3, 10e-6, 10e-6, 10e-6):  # the first dropped, then trusted at 10 us
        learner.observe("numba", bucket, s, None, exploring=False)
    cell = learner.history.cell(("numba", *bucket))
    stamp = cell.stamp
    learner.observe("numba", bucket, 40e-6, None, exploring=True, cold=True)  # a re-check after its threads slept
    assert cell.samples == [10e-6] * 3 and cell.trusted and cell.stamp == stamp


def test_an_exploring_call_during_a_compilation_is_charged_and_decided_again(ready_gpu, use_profile, clock, monkeypatch):
    from autooffload import backends

    # GPU predicted 15 ms (uncertain against NumPy's 10 ms), really 100 ms.
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=1.48e-8, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.100)
    backends_over(f, 16)
    monkeypatch.setattr(backends.module("numba"), "compiling_now", lambda: True)  # some tier compilation runs
    after = backends_over(f, 30)
    history = f.__autooffload__.learner.history
    assert after.count("cupy") <= 3, "".join(b[0] for b in after)
    assert history.explored_s <= _learn.EXPLORE_FRACTION * f.__autooffload__.learner._spent() + 0.100


def test_the_log_has_a_line_for_every_call_of_a_sampled_decision(ready_gpu, use_profile, clock, decision_log):
    path = decision_log
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=3e-10, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.001)
    backends_over(f, 3)
    before = len(path.read_text().splitlines())
    backends_over(f, 32)
    lines = [json.loads(line) for line in path.read_text().splitlines()[before:]]
    assert len(lines) == 32
    assert sum("observed_s" in line for line in lines) == 32 // _learn.DEVICE_SAMPLE_EVERY
    # the others were measured for the budget, not learned from: their seconds say so
    assert sum(line.get("sampled_out_s") == pytest.approx(0.001) for line in lines) == 32 - 32 // _learn.DEVICE_SAMPLE_EVERY


def test_an_exploration_waiting_at_one_size_does_not_re_decide_calls_at_another(ready_gpu, use_profile, clock):
    # As above, the GPU waits to be explored at a small size; the program then calls a larger size
    # only, where the GPU is explored and kept. The small size's exploration becomes affordable
    # meanwhile: the larger size's decision stands (its untimed calls do not reset the planner).
    use_profile(synthetic_profile(cpu_per_byte=1e-9 * 1.25, gpu_per_byte=3e-9 * 1.25, copy_per_byte=1e-12, cold_start=0.0))
    f = timed(clock, numpy_s=0.001, gpu_s=0.0002)
    small, large = np.ones(N), np.ones(4 * N)
    for _ in range(10):
        f(small)
    assert f.last_decision.backend == "numpy"
    for _ in range(300):  # the GPU predicted 15 ms here: explored once the function has run 150 ms
        f(large)
    assert f.last_decision.backend == "cupy", f.last_decision
    before = f.stats.as_dict()["decisions"]
    for _ in range(400):
        f(large)
    assert f.last_decision.backend == "cupy"
    assert f.stats.as_dict()["decisions"] - before <= 4, f.stats.as_dict()


def test_a_stale_estimate_does_not_start_an_exploration_before_the_real_budget_allows(ready_gpu, use_profile, clock):
    # NumPy trusted at 3 ms by an earlier run (16 samples), its calls now take 0.3 ms; the GPU,
    # predicted and really 10 ms, is within EXPLORE_WITHIN of the 3 ms: exploring it waits for
    # budget. Its sampled-out calls count the 0.3 ms they measured: counted at the cell's 3 ms
    # (a reverted change), the GPU was explored after ~33 calls, 10 ms of real time, where the
    # bound allows it only once the function has run 100 ms.
    use_profile(synthetic_profile(cpu_per_byte=3e-9, gpu_per_byte=1e-8, copy_per_byte=1e-12, cold_start=0.0))
    f = timed(clock, numpy_s=0.0003, gpu_s=0.010)
    x = np.ones(N)
    learner = f.__autooffload__.learner
    loaded = _history.Cell()
    loaded.dropped_first, loaded.samples = True, [0.003] * 16  # as read from the history file
    learner.history.cells[("numpy", *autooffload.explain(f, x).bucket)] = loaded
    f.__autooffload__.planner.reset()  # as if loaded before the first decision (explain's is cached)
    sampled = 0
    for _ in range(400):
        f(x)
        sampled += f.last_decision.observe_every == _learn.DEVICE_SAMPLE_EVERY
        # the bound of _learn.py in real seconds (clock.t: every call's time, sampled or not)
        assert learner.history.explored_s <= _learn.EXPLORE_FRACTION * clock.t + 1e-9, clock.t
    assert sampled >= 48  # the waiting calls were sampled (until the estimate moved), not each learned from


def test_a_due_recheck_waiting_for_budget_does_not_decide_again_on_every_call(ready_gpu, use_profile, clock):
    # Size A: NumPy 1 ms, the GPU 2 ms, both trusted; size B: the GPU explored at 100 ms, which
    # spends exploring's budget. Back at A the GPU's re-check is due but waits for budget: the
    # decision stands until it is met (before: 398 decisions in 400 calls).
    use_profile(synthetic_profile(cpu_per_byte=1e-9, gpu_per_byte=1.2e-9, copy_per_byte=1e-12, cold_start=0.0))
    sizes = {125_000: (0.001, 0.002), 1_000_000: (0.008, 0.100)}

    @offload(kind="elementwise")
    def work(x):
        numpy_s, gpu_s = sizes[x.size]
        clock.t += gpu_s if isinstance(x, FakeDeviceArray) else numpy_s
        return x * 2

    a, b = np.ones(125_000), np.ones(1_000_000)
    for _ in range(300):
        work(a)
    for _ in range(200):
        work(b)
    before = work.stats.as_dict()["decisions"]
    for _ in range(400):
        work(a)
    assert work.stats.as_dict()["decisions"] - before <= 20
    history = work.__autooffload__.learner.history
    assert history.explored_s <= _learn.EXPLORE_FRACTION * clock.t + 0.100


def test_a_nested_call_of_the_function_leaves_the_outer_calls_learning_and_exploring_bounded(ready_gpu, use_profile, clock):
    # Each call calls the function once more on a tiny array, which replaces last_decision while
    # the outer call runs: the outer call still learns its cell, and an exploring one is charged
    # (before, its decision stood uncharged: every call from the 253rd on ran on a GPU 4x slower).
    use_profile(synthetic_profile(cpu_per_byte=5e-9, gpu_per_byte=6e-9, copy_per_byte=1e-12, cold_start=0.0))

    @offload(kind="elementwise")
    def outer(x, inner):
        clock.t += 0.020 if isinstance(x, FakeDeviceArray) else 0.005
        if inner:
            outer(np.ones(4), False)
        return x

    x = np.ones(125_000)
    state = outer.__autooffload__
    ran = []
    for _ in range(600):
        gpu_before = state.records.runs_by["cupy"]
        outer(x, True)
        ran.append(state.records.runs_by["cupy"] > gpu_before)
    history = state.learner.history
    assert sum(ran) <= 10, "".join("c" if r else "n" for r in ran)  # explored, found 4x slower, left
    assert not any(ran[-300:])
    assert history.explored_s <= _learn.EXPLORE_FRACTION * clock.t + 0.020
    big = [c for k, c in history.cells.items() if k[0] == "numpy" and k[1] > 30]
    assert big and big[0].trusted  # the outer calls' NumPy cell, learned despite the nested calls


def test_an_exploring_call_that_raises_is_charged_and_decided_again(ready_gpu, use_profile, clock):
    # The GPU is explored (uncertain against NumPy) and raises there, the function's own error:
    # each exploring call is charged and decided again, so it stays within exploring's bound
    # (before, the exploring decision stood uncharged and every later call raised on the GPU).
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=1.48e-8, copy_per_byte=1e-10, cold_start=0.0))

    @offload(kind="elementwise")
    def fails_on_the_gpu(x):
        if isinstance(x, FakeDeviceArray):
            clock.t += 0.120
            raise ValueError("not on the GPU")
        clock.t += 0.010
        return x * 2

    x = np.ones(N)
    raised = 0
    for _ in range(300):
        try:
            fails_on_the_gpu(x)
        except ValueError:
            raised += 1
    history = fails_on_the_gpu.__autooffload__.learner.history
    assert 1 <= raised <= 30
    assert history.explored_s == pytest.approx(raised * 0.120)  # each charged
    assert history.explored_s <= _learn.EXPLORE_FRACTION * clock.t + 0.120


def test_a_backend_whose_exploring_calls_always_fall_back_is_explored_no_more_than_the_limit(ready_gpu, use_profile, clock):
    # The GPU is uncertain against NumPy (predicted 3x slower), but it lacks a function the code
    # calls: every run there falls back to NumPy. Each exploring call is charged and decided
    # again, and after UNTAUGHT_LIMIT of them the GPU is not explored at this size (without the
    # limit a review counted 199 exploring calls and 400 decisions in 2000 calls).
    import fake_device

    fake_device.FAKE_MISSING.add("median")
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=3e-8, copy_per_byte=1e-11, cold_start=0.0))
    centred = median_centred(clock, numpy_s=0.010, gpu_s=0.001)
    x = np.arange(float(N))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's one warning
        for _ in range(2000):
            np.testing.assert_array_equal(centred(x), x - np.median(x))
    stats = centred.stats.as_dict()
    learner = centred.__autooffload__.learner
    assert stats["cupy"] + stats["fallbacks"] >= 1  # the GPU was explored...
    assert stats["decisions"] <= 20, stats  # ...a few times, not on every tenth call
    assert not [k for k in learner.history.cells if k[0] == "cupy"]  # nothing learned from the fallbacks
    assert learner.history.explored_s <= _learn.EXPLORE_FRACTION * clock.t + 0.011


def test_a_fallback_in_another_thread_does_not_stop_a_timed_call_from_learning(ready_gpu, use_profile, clock):
    # Thread B's timed call (learning NumPy at a small size) is under way while the main thread's
    # call at a large size falls back from the GPU: B's call still learns (the executor's
    # corrections are counted per thread; before, any thread's correction made every timed call
    # of the function look like a fallback).
    import threading

    import fake_device

    fake_device.FAKE_MISSING.add("median")
    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=1e-11, gpu_floor=20e-6, copy_per_byte=1e-12,
                                  cold_start=0.0))
    hold = {"until": None}

    @offload(kind="elementwise")
    def f(x):
        if x.size < 100 and hold["until"] is not None:
            hold["until"].wait(10)
        clock.t += 0.001
        return x - np.median(x) if x.size >= 100 else x * 2

    small, big = np.ones(10), np.arange(float(N))
    f(small)  # the small size's first call: decided, its sample dropped
    learner = f.__autooffload__.learner
    bucket = f.last_decision.bucket
    assert f.last_decision.backend == "numpy" and f.last_decision.observe
    before = learner.history.cell(("numpy", *bucket)).count
    release = threading.Event()
    hold["until"] = release
    other = threading.Thread(target=f, args=(small,))
    other.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(f(big), big - np.median(big))  # falls back from the GPU
    assert f.stats.as_dict()["fallbacks"] >= 1
    release.set()
    other.join(10)
    assert learner.history.cell(("numpy", *bucket)).count == before + 1


def test_a_recheck_that_falls_back_stops_rechecking_without_deciding_again_on_every_call(ready_gpu, use_profile, clock):
    # The GPU's cell is trusted (12 ms against NumPy's 5: rechecked now and then); then the GPU
    # lacks a function the code calls, so its re-checks fall back. After UNTAUGHT_LIMIT of them
    # it is neither re-checked nor waited for (a review: a due re-check that exploring skipped
    # re-decided every call, 1000 decisions in 1000 calls).
    import fake_device

    use_profile(synthetic_profile(cpu_per_byte=5e-9, gpu_per_byte=6e-9, copy_per_byte=1e-12, cold_start=0.0))
    centred = median_centred(clock, numpy_s=0.005, gpu_s=0.012)
    x = np.arange(float(N))
    for _ in range(400):
        centred(x)
    cell = centred.__autooffload__.learner.history.cell(("cupy", *centred.last_decision.bucket))
    assert cell is not None and cell.trusted
    fake_device.FAKE_MISSING.add("median")
    decisions = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            before = centred.stats.as_dict()["decisions"]
            for _ in range(1000):
                np.testing.assert_array_equal(centred(x), x - np.median(x))
            decisions.append(centred.stats.as_dict()["decisions"] - before)
    assert decisions[-1] <= 5, decisions


def test_the_functions_own_errors_on_exploring_calls_do_not_stop_exploring(ready_gpu, use_profile, clock):
    # The GPU is really 3.3x faster; the function raises its own error on its first two calls
    # there (the caller's input, a resource): they are charged, but do not count against the
    # GPU (a review: two such errors locked a faster GPU out for the rest of the process).
    use_profile(synthetic_profile(cpu_per_byte=5e-9, gpu_per_byte=6e-9, copy_per_byte=1e-12, cold_start=0.0))
    left = {"errors": 2}

    @offload(kind="elementwise")
    def work(x):
        if isinstance(x, FakeDeviceArray):
            clock.t += 0.0015
            if left["errors"]:
                left["errors"] -= 1
                raise ValueError("not now")
            return x * 2
        clock.t += 0.005
        return x * 2

    x = np.ones(N)
    seen = []
    for _ in range(600):
        try:
            work(x)
            seen.append(work.last_decision.backend)
        except ValueError:
            seen.append("raised")
    assert seen.count("raised") == 2
    assert seen[-100:] == ["cupy"] * 100


def test_a_call_that_teaches_resets_its_backends_count_of_fallbacks():
    # UNTAUGHT_LIMIT counts fallbacks in a row: a kept sample on that backend at that size clears it.
    learner = _learn.Learner(lambda x: x)
    learner._history = _history.FunctionHistory("test")
    key = ("cupy", 30, -1)
    learner.unlearned(0.001, True, untaught=("cupy", (30, -1)))
    assert learner._untaught[key] == 1
    learner.observe("numpy", (30, -1), 0.001, None, exploring=False)  # another backend: no reset
    assert learner._untaught[key] == 1
    learner.observe("cupy", (30, -1), 0.001, None, exploring=True)  # a run there that ended
    assert key not in learner._untaught


def test_a_trusted_cell_of_a_cold_gpu_is_not_waited_for_as_a_recheck(fake_gpu, use_profile, clock):
    # A new process reads a GPU cell trusted in an earlier one while its GPU is still cold (a
    # small cold start keeps it within EXPLORE_WITHIN): exploring skips a cold GPU, so a due
    # re-check wait for it re-decided almost every call (702 decisions in 1000 calls) before
    # recheck_wait skipped it too.
    use_profile(synthetic_profile(cpu_per_byte=5e-9, gpu_per_byte=6e-9, copy_per_byte=1e-12, cold_start=0.003))

    @offload(kind="elementwise")
    def work(x):
        clock.t += 0.012 if isinstance(x, FakeDeviceArray) else 0.005
        return x * 2

    x = np.ones(125_000)
    loaded = _history.Cell()
    loaded.dropped_first, loaded.samples = True, [0.012] * 5  # as read from the history file
    work.__autooffload__.learner.history.cells[("cupy", *explain(work, x).bucket)] = loaded
    work.__autooffload__.planner.reset()
    for _ in range(1000):
        work(x)
    assert work.stats.as_dict()["decisions"] <= 10, work.stats.as_dict()
    assert work.last_decision.backend == "numpy"


def test_a_tier_that_changed_its_build_has_its_cell_measured_afresh():
    """The Numba tier's preferred build changed during a call (backends/_numba_threads.py): a
    disagreeing sample restarts the cell even on a chosen backend (not only on a re-check), and a
    change in a call that taught nothing forgets the cell's samples."""
    from autooffload._history import FunctionHistory

    learner = _learn.Learner(lambda x: x)
    learner._history = FunctionHistory("test")
    learner.revisit = lambda: None
    bucket = (20, -1)
    for s in (1e-3, 400e-6, 400e-6, 400e-6):  # trusted at 400 us (the parallel build)
        learner.observe("numba", bucket, s, None, exploring=False)
    cell = learner.history.cell(("numba", *bucket))
    learner.observe("numba", bucket, 40e-6, None, exploring=False)  # not fresh: one sample of five
    assert cell.estimate() == pytest.approx(400e-6)
    learner.observe("numba", bucket, 40e-6, None, exploring=False, fresh=True)
    assert cell.samples == [40e-6] and not cell.trusted  # afresh: trusted once a second agrees
    learner.observe("numba", bucket, 41e-6, None, exploring=False)
    assert cell.estimate() == pytest.approx(40.5e-6)
    learner.measure_afresh("numba", bucket)
    assert cell.samples == [] and cell.count == 7 and cell.estimate() is None
    # A change reported by a cold call (a re-check after the tier's threads slept): its sample is
    # dropped, and so are the old way's, so the next warm call starts the cell.
    for s in (400e-6, 400e-6, 400e-6):
        learner.observe("numba", bucket, s, None, exploring=False)
    learner.observe("numba", bucket, 30e-6, None, exploring=True, cold=True, fresh=True)
    assert cell.samples == [] and not cell.last_kept
    learner.observe("numba", bucket, 41e-6, None, exploring=True)
    assert cell.samples == [41e-6]


def test_a_streamed_run_is_learned_from(ready_gpu, use_profile, clock, monkeypatch):
    # The executor streams a call from its bytes, the device's free memory and whether its arrays
    # are pinned (here: always), so a bucket's calls stream alike: their time is the GPU's there.
    # They used to count as corrected runs and teach nothing (session 14's note: streamed runs
    # were never learned from), and were filed as reruns.
    monkeypatch.setenv("AUTOOFFLOAD_STREAM", "always")
    use_profile(synthetic_profile(cold_start=0.0))

    def work(x):
        clock.t += 1e-4  # per chunk on the device, per call on NumPy (by the fake clock)
        return x * 2

    f = offload(kind="elementwise", blockwise=True)(work)
    x = np.random.default_rng(3).random(4_000_000) + 0.5
    for _ in range(4):
        np.testing.assert_array_equal(f(x), x * 2)
    d = f.last_decision
    assert d.backend == "cupy" and d.streamed, d
    cell = f.__autooffload__.learner.history.cell(("cupy", *d.bucket))
    assert cell is not None and cell.samples, "the streamed runs taught nothing"
    report = f.__autooffload__.records.timesheet
    assert not report._rerun_timed.calls  # a streamed run is no rerun


def test_a_nested_calls_correction_is_its_own_not_the_outer_calls(monkeypatch):
    """A timed call whose run makes a nested, timed call of the same function that the executor
    corrects (it fell back): the correction is the nested call's alone, the outer call is filed
    as it ran, and last_decision afterwards is the outer call's (session 14's note: a nested
    call's correction was taken as the outer call's, and last_decision showed the inner call)."""

    work, state, x = _doubling_called_once()
    outer = dataclasses.replace(work.last_decision, backend="numpy", reason="outer", observe=True, observe_every=1)
    inner = dataclasses.replace(outer, backend="cupy", reason="inner")
    fell = dataclasses.replace(inner, backend="numpy", reason="fell back")
    filed = []
    monkeypatch.setattr(state, "_observed", lambda d, seconds, raised, cold=False, disturbed=False, *, corrected,
                        fell_back=False, ran=None, **_: filed.append((d.reason, corrected, fell_back, ran)))

    def inner_run(d, args, kwargs):
        state.ran_instead(fell)
        return args[0] * 2

    def outer_run(args, kwargs, has_device_args):
        with monkeypatch.context() as m:
            m.setattr(state.executor, "run", inner_run)
            state.run_observed(inner, args, kwargs)
        return args[0] * 2

    monkeypatch.setattr(state.executor, "run_numpy", outer_run)
    state.run_observed(outer, (x,), {})
    assert filed == [("inner", True, True, fell), ("outer", False, False, None)]
    assert work.last_decision is outer


def test_a_fallback_after_the_call_was_decided_again_counts_against_the_decision_it_tried(monkeypatch):
    """The cached decision was made for another device; the executor decided the call again for
    the device current at the run, and that run fell back: what the fallback counts against is
    the decision the run tried (session 14's note: it was counted against the original)."""

    work, state, x = _doubling_called_once()
    cached = dataclasses.replace(work.last_decision, backend="cupy", reason="for device 0", observe=True,
                                 observe_every=1, exploring=False, bucket=(20, -1))
    again = dataclasses.replace(cached, reason="for device 1", exploring=True, bucket=(21, -1))
    fell = dataclasses.replace(again, backend="numpy", reason="fell back")
    monkeypatch.setattr(state.planner, "decide", lambda *a, **k: again)
    charged = []
    real = state.learner.unlearned
    monkeypatch.setattr(state.learner, "unlearned", lambda seconds, exploring, untaught=None: (
        charged.append((exploring, untaught)), real(seconds, exploring, untaught=untaught))[1])

    def run(d, args, kwargs):
        assert state.replan(args, kwargs) is again
        state.ran_instead(fell)
        return args[0] * 2

    monkeypatch.setattr(state.executor, "run", run)
    state.run_observed(cached, (x,), {})
    assert charged == [(True, ("cupy", (21, -1)))]
    assert work.last_decision is fell


def test_an_untimed_nested_call_of_another_size_is_not_what_the_timed_call_ran(monkeypatch):
    """An untimed call has no frame of its own: a fallback of one nested in a timed call's run
    counts for that call (it teaches nothing), but a correction of another size is neither what
    the timed call ran nor its last_decision."""
    work, state, x = _doubling_called_once()
    outer = dataclasses.replace(work.last_decision, reason="outer", observe=True, observe_every=1)
    nested = dataclasses.replace(outer, backend="numpy", reason="nested fell back", host_bytes=outer.host_bytes * 4)
    filed = []
    monkeypatch.setattr(state, "_observed", lambda d, seconds, raised, cold=False, disturbed=False, *, corrected,
                        fell_back=False, ran=None, **_: filed.append((d.reason, corrected, fell_back, ran)))

    def outer_run(args, kwargs, has_device_args):
        state.ran_instead(nested)  # what an untimed nested call's fallback reports
        return args[0] * 2

    monkeypatch.setattr(state.executor, "run_numpy", outer_run)
    state.run_observed(outer, (x,), {})
    assert filed == [("outer", True, True, None)]
    assert work.last_decision is outer


def test_an_estimate_that_drifts_from_what_the_decision_assumed_decides_again():
    """Each sample moves a median a little: a choice made on 30 us whose calls drift to 14 us one
    step at a time (no step of 1.5x) is decided again once its estimate is 1.5x off what the
    decision assumed (``expected``), and not before (H200, session 18: a NumPy choice kept for
    8000 calls of 14 us, decided at ~25 us with an exploration waiting, each call timed)."""
    from autooffload._history import FunctionHistory

    learner = _learn.Learner(lambda x: x)
    learner._history = FunctionHistory("test")
    revisits: list[float] = []
    bucket = (20, -1)
    cell_key = ("numpy", *bucket)
    learner.revisit = lambda: revisits.append(learner.history.cell(cell_key).estimate())
    for s in (1e-3, 30e-6, 30e-6, 30e-6):  # the first dropped, then trusted at 30 us
        learner.observe("numpy", bucket, s, None, exploring=False)
    revisits.clear()
    for s in (28e-6, 26e-6, 24e-6, 23e-6, 22e-6, 21e-6):  # within 1.5x of the 30 us decided on
        learner.observe("numpy", bucket, s, None, exploring=False, expected=30e-6)
    assert revisits == []
    for s in (19e-6, 18e-6, 17e-6, 16e-6, 15e-6, 14e-6, 14e-6, 14e-6):
        learner.observe("numpy", bucket, s, None, exploring=False, expected=30e-6)
    assert revisits and revisits[0] <= 30e-6 / _learn.REVISIT_FACTOR
    steps = [a / b for a, b in zip(learner.history.cell(cell_key).samples, learner.history.cell(cell_key).samples[1:])]
    assert all(step < _learn.REVISIT_FACTOR for step in steps)  # no single step would have moved it
    revisits.clear()
    learner.observe("numpy", bucket, 14e-6, None, exploring=False, expected=14e-6)  # decided again on 14 us: settled
    assert revisits == []


def test_no_exploration_starts_while_a_compilation_runs_and_it_follows_once_it_ends(ready_gpu, use_profile, clock,
                                                                                     monkeypatch):
    """A call timed while the Numba tier compiles teaches nothing (``disturbed``), so exploring then
    would spend budget for no sample: the GPU, predicted 1.5x slower than NumPy but 2.5x faster,
    is not tried while a compilation runs, and is tried and chosen once it has ended."""
    from autooffload import backends

    use_profile(synthetic_profile(cpu_per_byte=1e-8, gpu_per_byte=1.48e-8, copy_per_byte=1e-10, cold_start=0.0))
    f = timed(clock, numpy_s=0.010, gpu_s=0.004)
    compiling = [True]
    monkeypatch.setattr(backends.module("numba"), "compiling_now", lambda: compiling[0])
    during = backends_over(f, 40)  # the budget for one exploration is there after ~15 calls
    f.__autooffload__.planner.reset()  # decided again (a GPU start, a config change) while it compiles
    during += backends_over(f, 40)
    assert "cupy" not in during
    decisions = f.stats.as_dict()["decisions"]
    assert decisions <= 4, decisions  # waiting for the compilation is no storm of decisions
    compiling[0] = False
    after = backends_over(f, 80)
    assert after[-10:] == ["cupy"] * 10, "".join(b[0] for b in after)
