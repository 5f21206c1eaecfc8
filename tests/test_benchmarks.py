"""CPU smoke tests of the benchmark scripts: tiny sizes, the JSON and the table have the right shape.

Without CuPy the GPU columns read "n/a". A NumPy-backed stand-in for the ``cupy`` module
(``FakeCuPy``, handed to the benchmarks only: autooffload never sees it) then runs every GPU code
path of the scripts, so a typo there fails here rather than on the GPU machine.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """A benchmark script as a module; the scripts share the one ``_bench`` module of sys.modules."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    key = f"bench_{name}"
    spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[key] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def bench():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import _bench

    return _bench


@pytest.fixture
def no_gpu(bench, monkeypatch):
    monkeypatch.setattr(bench, "_GPU", None)
    monkeypatch.setattr(bench, "GPU_UNAVAILABLE", "test: no GPU")


# -- a stand-in for cupy, built on NumPy (for the benchmarks' own GPU code paths) -------------------
class FakeArray(np.ndarray):
    def get(self, stream=None, order="C", out=None):
        host = np.array(self, copy=True).view(np.ndarray)
        if out is not None:
            np.copyto(out, host)
            return out
        return host


def _wrap(x):
    if isinstance(x, np.ndarray) and not isinstance(x, FakeArray):
        return x.view(FakeArray)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return x


def _wrapping(namespace, name):
    attr = getattr(namespace, name)
    if not callable(attr) or isinstance(attr, type):
        return attr
    return lambda *a, **k: _wrap(attr(*a, **k))


def _module(name, base):
    m = types.ModuleType(name)
    m.__getattr__ = lambda attr: _wrapping(base, attr)
    return m


class _Pool:
    def free_all_blocks(self):
        pass


def make_fake_cupy():
    cp = _module("fakecupy", np)
    cp.__version__ = "0-fake"
    cp.ndarray = FakeArray
    cp.asarray = lambda a, dtype=None: np.array(a, dtype=dtype, copy=True).view(FakeArray)
    cp.asnumpy = lambda a, out=None: FakeArray.get(a, out=out) if isinstance(a, FakeArray) else np.asarray(a)
    cp.fft = _module("fakecupy.fft", np.fft)
    cp.linalg = _module("fakecupy.linalg", np.linalg)
    stream = types.SimpleNamespace(synchronize=lambda: None)
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"Fake GPU", "totalGlobalMem": 2**30, "major": 0, "minor": 0},
        memGetInfo=lambda: (2**30, 2**30),
        driverGetVersion=lambda: 0,
        runtimeGetVersion=lambda: 0,
    )
    cp.cuda = types.SimpleNamespace(
        get_current_stream=lambda: stream,
        runtime=runtime,
        Device=lambda *a: types.SimpleNamespace(id=0, use=lambda: None),
    )
    cp.get_default_memory_pool = lambda: _Pool()
    cp.get_default_pinned_memory_pool = lambda: _Pool()
    return cp


@pytest.fixture
def fake_cupy(bench, monkeypatch):
    cp = make_fake_cupy()
    monkeypatch.setattr(bench, "_GPU", cp)
    return cp


def _args(tmp_path, *extra):
    return ["--out", str(tmp_path), "--machine", "test", "--no-plot", *extra]


def _json(tmp_path, name):
    return json.loads((tmp_path / "test" / f"{name}.json").read_text())


# -- the helpers ----------------------------------------------------------------------------------
def test_stat_table_and_formatting(bench):
    st = bench.Stat.of([3.0, 1.0, 2.0, 4.0, 5.0], loops=2)
    assert (st.median, st.min, st.max, st.n, st.loops) == (3.0, 1.0, 5.0, 5, 2)
    assert st.q1 == 2.0 and st.q3 == 4.0 and st.spread == pytest.approx(1 / 3)
    assert bench.fmt_time(2.5e-6) == "2.5 us" and bench.fmt_time(None) == "n/a"
    assert bench.fmt_n(10**6) == "1e6" and bench.fmt_x(12.345) == "12.3x"
    text = bench.table(["name", "value"], [["a", "1"], ["long name", "12345"]])
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines[1:]}) == 1  # aligned
    assert bench.decades(100, 10**4) == [100, 1000, 10000]
    assert bench.crossover([1e3, 1e4, 1e5], [0.1, 1.0, 10.0]) == pytest.approx(1e4)
    assert bench.crossover([1e3, 1e4], [0.5, 0.9]) is None
    assert bench.geomean([1.0, 4.0]) == pytest.approx(2.0)


def test_measure_loops_tiny_calls_and_syncs(bench):
    calls, syncs = [], []
    st = bench.measure(lambda: calls.append(1), sync=lambda: syncs.append(1), repeats=3, min_sample_s=0.001)
    assert st.loops > 1 and st.n == 3 and st.median > 0
    # A sync after every call (inside the timed region) and one before each sample's clock starts.
    assert len(calls) < len(syncs) <= len(calls) + 50
    both = bench.measure_interleaved({"a": lambda: None, "b": lambda: sum(range(50))}, repeats=4, min_sample_s=0.0005)
    assert set(both) == {"a", "b"} and both["a"].n == both["b"].n == 4


def test_never_zero_and_machine_slug(bench):
    a = bench.never_zero(1000)
    assert (a >= 0.5).all() and (a < 1.5).all()
    assert bench.machine_slug({"gpu_name": "NVIDIA H100 80GB HBM3"}) == "h100"
    assert bench.machine_slug({"gpu_name": "NVIDIA A100-SXM4-40GB"}) == "nvidia-a100-sxm4-40gb"
    assert bench.machine_slug({"hostname": "Box.example.org"}) == "cpu-box"
    assert bench.machine_slug({"hostname": "x"}, "My Box") == "my-box"


# -- the scripts without a GPU ----------------------------------------------------------------------
def test_seed_article_cpu(tmp_path, no_gpu):
    mod = _load("seed_article")
    out = mod.main(_args(tmp_path, "--max-elements", "1e4", "--repeats", "3", "--sample-s", "0.0005"), quiet=True)
    doc = _json(tmp_path, "seed_article")
    assert doc["partial"] is False and doc["sizes"] == [10**4] == out["sizes"]
    assert doc["machine"]["numpy"] == np.__version__ and doc["machine"]["cupy"] is None
    assert [r["experiment"] for r in doc["rows"]] == ["ones", "x*=5", "chain"]
    for r in doc["rows"]:
        assert r["times"]["numpy"]["median"] > 0 and r["times"]["offload"]["median"] > 0
        assert r["times"]["cupy_synced"] is None and r["speedup"]["cupy_synced"] is None
        assert r["offload_backend"] == "numpy"
        assert not [n for n in r["notes"] if "MISMATCH" in n or "FAILED" in n]
    text = (tmp_path / "test" / "seed_article.txt").read_text()
    assert "CuPy synced" in text and "n/a" in text and "x*=5" in text


def test_suite_cpu(tmp_path, no_gpu):
    mod = _load("suite")
    out = mod.main(_args(tmp_path, "--quick", "--max-elements", "1e3", "--repeats", "3", "--sample-s", "0.0005"),
                   quiet=True)
    doc = _json(tmp_path, "suite")
    names = {c.name for c in mod.CASES}
    assert len(names) >= 8
    assert {r["function"] for r in doc["rows"]} == names
    assert doc["sizes"] == [100, 1000]
    assert len(doc["rows"]) == 2 * len(names)
    for r in doc["rows"]:
        assert r["mismatch"] == [], r
        assert r["times"]["cupy_copies"] is None and r["picked"] == "numpy"
        assert r["times"]["numpy"]["n"] >= 3 and r["ratio"] > 0
    s = doc["summary"]
    assert s["ratio_geomean"] > 0 and s["ratio_worst"] >= s["ratio_geomean"] and s["mismatches"] == []
    assert set(doc["first_calls"]) == names
    text = (tmp_path / "test" / "suite.txt").read_text()
    assert "SUMMARY" in text and "CuPy+copies" in text
    assert out["summary"] == s
    again = mod.main(["--rescore", str(tmp_path / "test" / "suite.json")], quiet=True)
    assert again["ratio"]["ratio_geomean"] == pytest.approx(s["ratio_geomean"])
    assert again["ratio_of_medians"]["ratio_geomean"] == pytest.approx(s["by_ratio_of_medians"]["ratio_geomean"])


def test_suite_ratio_pairs_each_round_of_offload_with_the_best_baseline_of_that_round():
    mod = _load("suite")
    # The machine's state moves between rounds: every column slower in rounds 4-7 (an H200 row).
    numpy_s = [45.8, 40.9, 40.9, 67.7, 68.0, 67.8, 67.2, 45.3, 45.5]
    offload_s = [49.4, 42.1, 59.5, 69.9, 72.4, 97.0, 70.6, 72.7, 71.8]
    numba_s = [44.7, 45.3, 46.5, 50.3, 55.9, 50.7, 52.8, 96.0, 45.3]
    times = {"numpy": {"samples": numpy_s}, "numba": {"samples": numba_s}, "cupy_copies": None,
             "offload": {"samples": offload_s}}
    per_round = sorted(o / min(a, b) for o, a, b in zip(offload_s, numpy_s, numba_s))
    assert mod.paired_ratio(times) == pytest.approx(per_round[4])  # the median of nine rounds
    assert mod.paired_ratio(times) < 1.45 < 70.6 / 45.8  # the ratio of the medians: 1.54
    assert mod.paired_ratio({"numpy": {"samples": numpy_s}, "offload": None}) is None


def test_suite_functions_agree_with_closed_forms(bench):
    mod = _load("suite")
    g = bench.rng(1)
    # Black-Scholes against put-call parity and a known value (S=K=100, T=1, r=0.05, vol=0.2: 10.4506).
    price = mod.black_scholes_call(np.array([100.0]), np.array([100.0]), np.array([1.0]), 0.05, 0.2)
    assert price[0] == pytest.approx(10.4506, abs=1e-3)
    # Rolling statistics against a direct loop.
    p = 100 * np.exp(np.cumsum(0.01 * g.standard_normal(200)))
    mean, std = mod.rolling_vol(p, 20)
    r = np.diff(np.log(p))
    assert mean[5] == pytest.approx(r[5:25].mean()) and std[5] == pytest.approx(r[5:25].std(), rel=1e-6)
    # Distances, convolution, weights.
    a, b = g.standard_normal((5, 16)), g.standard_normal((7, 16))
    assert np.allclose(mod.pairwise_distances(a, b), np.linalg.norm(a[:, None] - b[None], axis=2))
    s, k = g.standard_normal(300), g.standard_normal(40)
    assert np.allclose(mod.fft_convolve(s, k), np.convolve(s, k))
    w = mod.min_variance_weights(*mod._portfolio(1000, g))
    assert w.sum() == pytest.approx(1.0)


def test_overhead_cpu(tmp_path, no_gpu):
    mod = _load("overhead")
    mod.main(_args(tmp_path, "--rounds", "5", "--sample-s", "0.0002"), quiet=True)
    doc = _json(tmp_path, "overhead")
    cpu = [r for r in doc["rows"] if r["section"] == "cpu"]
    assert len(cpu) == len(mod.CPU_CASES) and not [r for r in doc["rows"] if r["section"] == "gpu"]
    for r in cpu:
        assert r["plain"]["n"] == r["decorated"]["n"] == 5 and r["ratio"] > 0 and r["same_result"]
    assert {r["bar"] for r in cpu} == {"<= 1.3x", "info"}
    assert doc["verdict"]["cpu_bar_met"] in (True, False) and doc["verdict"]["gpu_bar_met"] is None
    assert "device-resident part skipped" in (tmp_path / "test" / "overhead.txt").read_text()


def test_plot_written_or_skipped_with_a_note(tmp_path, bench):
    note = bench.plot_speedups(tmp_path / "p.png", {"f": {"a": ([1e3, 1e4, 1e5], [0.5, 2.0, 8.0])}}, title="t")
    if note is None:
        assert (tmp_path / "p.png").stat().st_size > 1000
    else:
        assert "matplotlib" in note


# -- every GPU code path of the scripts, on the NumPy-backed stand-in --------------------------------
def test_gpu_paths_on_a_stand_in(tmp_path, fake_cupy):
    seed = _load("seed_article")
    seed.main(_args(tmp_path, "--gpu-smoke"), quiet=True)
    doc = _json(tmp_path, "seed_article-gpu-smoke")
    assert doc["machine"]["gpu_name"] == "Fake GPU" and doc["sizes"] == [10**4, 10**5]
    for r in doc["rows"]:
        assert all(r["times"][c] for c in seed.COLS), r
        assert not r["notes"], r["notes"]
    seed.main(["--replot", str(tmp_path / "test" / "seed_article-gpu-smoke.json")])  # the plot from the JSON
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert (tmp_path / "test" / "seed_article-gpu-smoke.png").stat().st_size > 1000

    suite = _load("suite")
    suite.main(_args(tmp_path, "--gpu-smoke", "--functions", "black_scholes,var_es_sort,kmeans_step"), quiet=True)
    doc = _json(tmp_path, "suite-gpu-smoke")
    assert len(doc["rows"]) == 3 * 2
    for r in doc["rows"]:
        # (A wait for the tier's background compilation, its serial build's too, is a note, not a fault.)
        faults = [n for n in r["notes"] if not n.startswith("waited ")]
        assert r["times"]["cupy_copies"] and r["mismatch"] == [] and not faults, r

    over = _load("overhead")
    over.main(_args(tmp_path, "--gpu-smoke", "--rounds", "3"), quiet=True)
    doc = _json(tmp_path, "overhead-gpu-smoke")
    gpu = [r for r in doc["rows"] if r["section"] == "gpu"]
    assert len(gpu) == 2 * len(over.GPU_CASES) and all("error" not in r for r in gpu), gpu


# --- benchmarks/transfer.py: the pure parts (its GPU run is on the GPU machine) ---------------
class _FakeClock:
    """A clock that each timed call advances by that call's own duration."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_transfer_interleaved_rounds_alternate_order_and_take_medians():
    transfer = _load("transfer")
    clock = _FakeClock()
    order, setups = [], []

    def call(name, dur):
        def fn():
            order.append(name)
            clock.now += dur
        return fn

    calls = {"a": (call("a", 2.0), None), "b": (call("b", 3.0), lambda: setups.append("b")), "c": (call("c", 5.0), None)}
    med = transfer.interleaved_medians(calls, sync=lambda: None, big=False, min_total=0.0, clock=clock)
    assert med == {"a": 2.0, "b": 3.0, "c": 5.0}
    warm, timed = order[:3], order[3:]
    assert warm == ["a", "b", "c"]
    assert len(timed) == 7 * 3  # the minimum of 7 rounds
    rounds = [timed[i : i + 3] for i in range(0, len(timed), 3)]
    assert rounds[0] == ["a", "b", "c"] and rounds[1] == ["c", "b", "a"] and rounds[2] == rounds[0]
    assert setups.count("b") == 1 + 7  # before the warm call and before every timed one


def test_transfer_interleaved_runs_until_min_total_per_method():
    transfer = _load("transfer")
    clock = _FakeClock()

    def fn():
        clock.now += 0.01

    med = transfer.interleaved_medians({"x": (fn, None), "y": (fn, None)}, lambda: None, big=True, min_total=0.5, clock=clock)
    assert med == pytest.approx({"x": 0.01, "y": 0.01})
    # 0.5 s per method = 1.0 s of calls of 0.01 s: 100 calls, 50 rounds (not the minimum of 3).
    assert abs(clock.now - (0.02 + 1.0)) < 0.011


def test_transfer_table_ratios_and_verdict():
    transfer = _load("transfer")

    def row(nbytes, cupy, engine, fresh):
        def m(h2d, d2h):
            return {"h2d_s": h2d, "d2h_s": d2h, "h2d_GBps": nbytes / h2d / 1e9, "d2h_GBps": nbytes / d2h / 1e9}
        return {"nbytes": nbytes, "cupy": m(*cupy), "pinned": m(1e-4, 1e-4), "engine": m(*engine),
                "engine_fresh": {"d2h_s": fresh, "d2h_GBps": nbytes / fresh / 1e9},
                "engine_out": {"d2h_s": engine[1], "d2h_GBps": nbytes / engine[1] / 1e9}, "engine_bit_exact": True}

    rows = [row(4096, (2e-5, 2e-5), (1e-5, 1.9e-5), 1.9e-5), row(8 * 1024**2, (1e-3, 1e-3), (5e-4, 1.1e-3), 1.2e-3)]
    assert transfer.ratios(rows[0]) == {"h2d": 0.5, "d2h": 0.95, "d2h_fresh": 0.95}
    assert transfer.slower_than_cupy(rows) == ["8 MiB d2h 1.10x", "8 MiB d2h_fresh 1.20x"]
    md = transfer.table(rows)
    assert "| 0.50 / 0.95 / 0.95 |" in md and "| 0.50 / 1.10 / 1.20 |" in md
    assert "slower than cupy (time ratio > 1): 8 MiB d2h 1.10x, 8 MiB d2h_fresh 1.20x." in md
    assert "nowhere" in transfer.table(rows[:1])


def test_suite_budget_leaves_compilation_out_and_scales_the_last_row():
    mod = _load("suite")
    row = {"n": 100, "times": {"numpy": {"median": 1e-3}, "numba": {"median": 2e-3}, "cupy_copies": None},
           "make_s": 0.01, "compile_s": 6.0}
    used, predicted = mod.budget_use([row], 1000, elapsed_s=7.0)
    assert used == pytest.approx(1.0)  # the 6 s of compiling are not charged to the share
    assert predicted == pytest.approx(10 * (4 * 3e-3 + 0.01))
    row2 = dict(row, n=1000, compile_s=0.0, times={"numpy": {"median": 1e-2}})
    used, predicted = mod.budget_use([row, row2], 10_000, elapsed_s=8.0)
    assert used == pytest.approx(2.0) and predicted == pytest.approx(10 * (4 * 1e-2 + 0.01))


def test_suite_settles_only_once_nothing_is_left_to_learn():
    mod = _load("suite")
    d = types.SimpleNamespace
    assert mod.learning(d(exploring=True, observe=True, observe_every=1))
    assert mod.learning(d(exploring=False, observe=True, observe_every=1))  # not yet trusted here
    assert not mod.learning(d(exploring=False, observe=True, observe_every=8))  # a trusted GPU cell, sampled
    assert not mod.learning(d(exploring=False, observe=False, observe_every=0))  # trusted NumPy: the hot path
    assert not mod.learning(d(exploring=False, observe=False, observe_every=1))  # AUTOOFFLOAD_LEARN=0
    waiting = types.SimpleNamespace(waits_to_compile=lambda bucket: bucket == (20, -1))  # the tier's compilation
    assert mod.learning(d(exploring=False, observe=False, observe_every=0, bucket=(20, -1)), waiting)
    assert not mod.learning(d(exploring=False, observe=False, observe_every=0, bucket=(22, -1)), waiting)
    # four NumPy calls still learning, then a switch, then four settled ones
    script = [d(backend="numpy", exploring=False, observe=True, observe_every=1)] * 4 + \
        [d(backend="numba", exploring=True, observe=True, observe_every=1)] + \
        [d(backend="numpy", exploring=False, observe=False, observe_every=0)] * 10
    fn = types.SimpleNamespace(last_decision=script[0])
    calls = iter(script[1:])

    def call():
        fn.last_decision = next(calls)

    row: dict = {}
    mod.settle(fn, call, row)
    assert row["settle"]["calls"] == 9 and row["settle"]["settled_after"] == 5 and row["settle"]["settled"]


def test_interleaved_loop_count_survives_one_slow_first_call(bench):
    calls = []

    def hiccup_first():
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.05)  # a collection, a save: once

    stats = bench.measure_interleaved({"f": hiccup_first}, warmup=0, repeats=3, min_sample_s=0.005)
    assert stats["f"].loops > 10 and stats["f"].median < 0.001
