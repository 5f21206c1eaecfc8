"""GPU-path gaps of issue 12, measured on the GPU machine (one run, interleaved).

    PYTHONPATH=src python3 tools/gpu_gaps.py [1] ... [8]     # parts 1-4 by default

1. ``auto`` against ``config(backend="cupy")`` on the same calls (item 8: in one suite run a ridge
   regression on a 1e5 x 256 input and a pairwise distance with a 6000 x 6000 result ran 2.5-3.5x
   slower under ``auto``, which chose CuPy). Settled first, then rounds interleaved: auto, forced,
   bare CuPy + copies; medians, and the observed time ``auto`` logged per call.
2. Where a small library call's device path goes (the suite's ``bessel_i0`` at 1e3-1e4: @offload
   on CuPy ~250 us against ~115 us for CuPy + copies by hand): the same interleaving, then cProfile
   of the forced @offload calls.
3. The same path variant by variant (the light path for plain calls on and off, ``auto`` settled;
   bessel at 1e2-1e4, percentiles at 1e4, x*2+1) and the driver calls every variant makes;
   cProfile of ``auto``.
4. Sparse device calls (without a profile the H200 suite kept fft_convolve at 1e4 and var_es_sort
   at 1e5 on NumPy, 1.56-1.74x slower than CuPy + copies, after exploring CuPy 4-7 times): CuPy +
   copies back to back against the same call after NumPy calls or an idle pause, as an exploring
   call finds the GPU; then ``auto`` with no profile and the CuPy times its log observed.
5. (``result_copy_gap``), 6. (``marginal_costs``) and 8. (``building_blocks``): see their docstrings.
7. The GPU's warm-up after seconds of NumPy-only calls (session 11: without a profile the suite's
   ``asian_mc`` at (396, 252) took 990, 789, 785, 674, 605, 454 ... 416 us on its first GPU calls
   and was learned at ~1 ms, so NumPy's 620 us won): each of the first 30 calls in a row, CuPy +
   copies by hand, after 2 s of NumPy calls, 5 times; the SM clock (nvidia-smi) before and after.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
LOG = Path(tempfile.mkdtemp()) / "decisions.jsonl"
os.environ["AUTOOFFLOAD_LOG"] = str(LOG)

import suite  # noqa: E402

from autooffload import config, offload  # noqa: E402


def ridge(X, y, lam=1e-3, xp=np):
    gram = X.T @ X + lam * xp.eye(X.shape[1])
    return xp.linalg.solve(gram, X.T @ y)


def sync():
    cp.cuda.get_current_stream().synchronize()


def once(fn) -> float:
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved(variants: dict, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn(); sync()  # noqa: E702  warm
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(once(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def bare(fn, args, to_device=cp.asarray, to_host=cp.asnumpy):
    dev = [to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    out = fn(*dev, xp=cp) if "xp" in fn.__code__.co_varnames else fn(*dev)
    return to_host(out)


def main() -> None:
    parts = sys.argv[1:] or ["1", "2", "3", "4"]
    g = np.random.default_rng(0)
    if "1" in parts:
        auto_vs_forced(g)
    if "2" in parts:
        device_path(g)
    if "3" in parts:
        device_path_parts(g)
    if "4" in parts:
        sparse_device_calls(g)
    if "5" in parts:
        result_copy_gap(g)
    if "6" in parts:
        marginal_costs(g)
    if "7" in parts:
        warm_up_after_numpy(g)
    if "8" in parts:
        building_blocks(g)


def auto_vs_forced(g) -> None:
    X, y = g.standard_normal((100_000, 256)), g.standard_normal(100_000)
    pts = g.standard_normal((6000, 16))
    print("1. auto vs forced cupy (ms, medians of 15 interleaved rounds, after settling)")
    for name, fn, args in [("ridge 1e5x256", ridge, (X, y)), ("pairwise 6000x6000", suite.pairwise_distances, (pts, pts))]:
        auto, forced = offload(fn), offload(fn)
        seen = []
        for _ in range(30):
            auto(*args); sync()  # noqa: E702
            seen.append(auto.last_decision.backend)
        with config(backend="cupy"):
            forced(*args)

        def run_forced(forced=forced, args=args):
            with config(backend="cupy"):
                forced(*args)

        t = interleaved({"auto": lambda: auto(*args), "forced": run_forced, "bare": lambda: bare(fn, args)}, 15)
        print(f"  {name:<20} auto {t['auto'] * 1e3:8.2f}  forced {t['forced'] * 1e3:8.2f}  bare {t['bare'] * 1e3:8.2f}  "
              f"auto/forced {t['auto'] / t['forced']:.2f}  picked {auto.last_decision.backend} (first 30: {''.join(b[1] for b in seen)})")
    records = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()]
    for fname in ("ridge", "pairwise_distances"):
        obs = [(r.get("backend"), r.get("observed_s")) for r in records if r.get("function", "").endswith(fname) and r.get("observed_s")]
        print(f"  log {fname}: {len(obs)} observed calls; last 10: " + ", ".join(f"{b}:{s * 1e3:.1f}" for b, s in obs[-10:]))



def device_path(g) -> None:
    # Unlogged, as a user's calls are (writing the JSON log costs ~20 us a call by itself).
    import autooffload

    os.environ.pop("AUTOOFFLOAD_LOG", None)
    autooffload.reload_environment()
    print("\n2. a small library call's device path (us, medians of 200 interleaved rounds)")
    for n in (1000, 10_000):
        x = g.uniform(-20.0, 20.0, n)
        forced, pure = offload(suite.bessel_weights), offload(pure=True)(suite.bessel_weights)

        def call(f, x=x):
            with config(backend="cupy"):
                f(x)

        t = interleaved({"bare": lambda: bare(suite.bessel_weights, (x,)), "forced": lambda: call(forced),
                         "pure": lambda: call(pure), "numpy": lambda: suite.bessel_weights(x)}, 200)
        print(f"  bessel_weights n={n}: " + "  ".join(f"{k} {v * 1e6:.0f}" for k, v in t.items()))
    x = g.uniform(-20.0, 20.0, 1000)
    forced = offload(suite.bessel_weights)
    prof = cProfile.Profile()
    with config(backend="cupy"):
        for _ in range(20):
            forced(x)
        prof.enable()
        for _ in range(500):
            forced(x)
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(40)


def device_path_parts(g) -> None:
    """3. The small-call device path, variant by variant: bare CuPy + copies, @offload forced by
    the decorator (no config block), the same with the light path for plain calls turned off,
    ``auto`` settled on the GPU, and the driver calls every variant makes."""
    import autooffload
    from autooffload import _transfer

    os.environ.pop("AUTOOFFLOAD_LOG", None)
    autooffload.reload_environment()
    print("\n3. device path by variant (us, medians of 300 interleaved rounds, each synchronized)")
    for name, fn, n in [("bessel", suite.bessel_weights, 100), ("bessel", suite.bessel_weights, 1000),
                        ("bessel", suite.bessel_weights, 10_000),
                        # session 17: @offload on CuPy 356 us against CuPy + copies' 215 (shipped suite, run 4)
                        ("percentiles", suite.percentiles, 10_000),
                        ("x*2+1", lambda x: x * 2 + 1, 100)]:
        x = g.uniform(-20.0, 20.0, n)
        forced = offload(backend="cupy")(fn)
        heavy = offload(backend="cupy")(fn)
        heavy.__autooffload__.executor.plain_call = lambda *a: False
        auto = offload(fn)
        for _ in range(60):
            auto(x); sync()  # noqa: E702
        variants = {"bare": lambda: bare(fn, (x,)), "bare-our-copies": lambda: bare(fn, (x,), _transfer.to_device, _transfer.to_host),
                    "forced": lambda: forced(x), "forced-general": lambda: heavy(x),
                    "auto": lambda: auto(x), "numpy": lambda: fn(x)}
        t = interleaved(variants, 300)
        print(f"  {name} n={n}, one call a sample: " + "  ".join(f"{k} {v * 1e6:.1f}" for k, v in t.items())
              + f"   auto picked {auto.last_decision.backend}, observe={auto.last_decision.observe}, stats {auto.stats.as_dict()}")
        t = interleaved({k: (lambda f=f: [f() for _ in range(100)]) for k, f in variants.items()}, 15)
        print(f"  {name} n={n}, 100 calls a sample (as the suite times): "
              + "  ".join(f"{k} {v * 1e4:.1f}" for k, v in t.items()))
    x = g.uniform(-1, 1, 100)
    d = cp.asarray(x)
    s = cp.cuda.get_current_stream()
    prims = {"stream.synchronize (idle)": lambda: s.synchronize(), "cupy.empty(100)": lambda: cp.empty(100),
             "cupy.asarray(800 B)": lambda: cp.asarray(x), "cupy.asnumpy(800 B)": lambda: cp.asnumpy(d),
             "_transfer.to_device(800 B)": lambda: _transfer.to_device(x), "_transfer.to_host(800 B)": lambda: _transfer.to_host(d),
             "x*2+1 on device (enqueue)": lambda: d * 2 + 1}
    t = interleaved(prims, 500)
    print("  driver and copy primitives: " + "  ".join(f"{k} {v * 1e6:.1f}" for k, v in t.items()))
    x = g.uniform(-20.0, 20.0, 10_000)
    auto = offload(suite.bessel_weights)
    for _ in range(60):
        auto(x)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(500):
        auto(x)
    prof.disable()
    print("  cProfile of auto (bessel n=10000), by cumulative time:")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(45)


def sparse_device_calls(g) -> None:
    """4. Is a GPU call between NumPy calls (an exploring one) slower than back to back?"""
    print("\n4. sparse device calls (us, medians of 25; CuPy + copies by hand unless named)")
    cases = [("fft_convolve", 10**4), ("var_es_sort", 10**5), ("asian_mc", 10**5)]
    for name, n in cases:
        case = next(c for c in suite.CASES if c.name == name)
        args = case.make(n, g)
        gpu = lambda: bare(case.fn, args)  # noqa: E731
        cpu = lambda: case.fn(*args)  # noqa: E731
        gpu(); sync()  # noqa: E702  (plans, kernels)
        times: dict[str, list[float]] = {"back to back": [], "after 20 numpy calls": [], "after 1 ms idle": [],
                                         "after 10 ms idle": [], "after 100 ms idle": [], "numpy": []}
        for _ in range(25):
            gpu(); sync()  # noqa: E702
            times["back to back"].append(once(gpu))
            for _ in range(20):
                cpu()
            times["after 20 numpy calls"].append(once(gpu))
            for pause in (1e-3, 10e-3, 100e-3):
                time.sleep(pause)
                times[f"after {pause * 1e3:.0f} ms idle"].append(once(gpu))
            times["numpy"].append(once(cpu))
        print(f"  {name} n={n:g}: " + "  ".join(f"{k} {statistics.median(v) * 1e6:.0f}" for k, v in times.items()))
    # What auto observes for the same calls (with no profile: run with AUTOOFFLOAD_SHIPPED=0).
    import autooffload

    os.environ["AUTOOFFLOAD_LOG"] = str(LOG)
    autooffload.reload_environment()
    start = len(LOG.read_text().splitlines()) if LOG.exists() else 0
    for name, n in cases:
        case = next(c for c in suite.CASES if c.name == name)
        args = case.make(n, g)
        auto = offload(case.fn)
        for _ in range(3000):
            auto(*args)
        print(f"  auto ({os.environ.get('AUTOOFFLOAD_SHIPPED') == '0' and 'no profile' or 'shipped profile'}), {name} n={n:g}: stats {auto.stats.as_dict()}, last: {auto.last_decision.reason[:120]}")
    records = [json.loads(line) for line in LOG.read_text().splitlines()[start:] if line.strip()]
    for name, _ in cases:
        fn = next(c for c in suite.CASES if c.name == name).fn.__name__
        obs = [(r.get("backend"), r.get("exploring"), r.get("observed_s")) for r in records
               if r.get("function", "").endswith(fn) and r.get("observed_s") and r.get("backend") == "cupy"]
        print(f"  log {name}: cupy observed (us, exploring marked *): "
              + ", ".join(f"{s * 1e6:.0f}{'*' if e else ''}" for _, e, s in obs[:20]))


def result_copy_gap(g) -> None:
    """5. The suite's pairwise_dist at 1e6 ((1000, 16) x (1000, 16) -> (1000, 1000), an 8 MB result):
    @offload on CuPy 1.85 ms against 1.13 ms for CuPy + copies by hand (sessions 6-7). Where the
    0.7 ms goes: compute alone, the result's copy out by CuPy and by the engine (into a new array
    and into a reused one), then cProfile of the forced calls."""
    from autooffload import _transfer

    pts = g.standard_normal((1000, 16))
    fn = suite.pairwise_distances
    forced, auto = offload(fn), offload(fn)
    for _ in range(20):
        auto(pts, pts)
    sync()
    dpts = cp.asarray(pts)
    dres = fn(dpts, dpts, xp=cp)
    reused = np.empty((1000, 1000))

    def run_forced():
        with config(backend="cupy"):
            forced(pts, pts)

    t = interleaved({
        "auto": lambda: auto(pts, pts),
        "forced": run_forced,
        "bare": lambda: bare(fn, (pts, pts)),
        "bare engine": lambda: bare(fn, (pts, pts), _transfer.to_device, _transfer.to_host),
        "compute only": lambda: fn(dpts, dpts, xp=cp),
        "d2h cupy new": lambda: cp.asnumpy(dres),
        "d2h engine new": lambda: _transfer.to_host(dres),
        "d2h engine reused": lambda: _transfer.to_host(dres, out=reused),
        "h2d engine": lambda: _transfer.to_device(pts),
    }, 60)
    print("\n5. pairwise_dist (1000,16)x(1000,16) -> 8 MB result (us, medians of 60 interleaved rounds)")
    print("  " + "  ".join(f"{k} {v * 1e6:.0f}" for k, v in t.items()) + f"  (auto picked {auto.last_decision.backend})")
    print(f"  auto decision: {auto.last_decision}")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(50):
        run_forced()
        sync()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def marginal_costs(g) -> None:
    """6. What each piece of the small-call device path costs on the GPU: @offload forced onto
    CuPy (bessel at 1e2, the suite's worst row) with one piece at a time replaced by its bare
    minimum, interleaved, 20 calls a sample as the suite times. The replacements keep results
    right for this call (plain arguments, a new result) and exist only for the measurement."""
    import autooffload
    from autooffload import _arguments, _transfer
    from autooffload.backends import cupy as cupy_backend

    os.environ.pop("AUTOOFFLOAD_LOG", None)
    autooffload.reload_environment()
    x = g.uniform(-20.0, 20.0, 100)
    fn = suite.bessel_weights
    forced = offload(backend="cupy")(fn)
    auto = offload(fn)
    ex = forced.__autooffload__.executor
    M = _arguments.Moved
    twin = ex.runner(cupy_backend.load())[1]
    patches = {
        "meter off (no sync, no clock)": (M, "_metered", lambda self, h2d, n, copy, *a, **k: copy(*a, **k)),
        "no result-view search": (M, "_view_of_original", lambda self, x, p: None),
        "records.ran: count only": (ex.records, "ran", lambda backend, *rest: ex.records.count_run(backend)),
        "mark_gpu_ready no-op": (cupy_backend, "mark_gpu_ready", lambda: None),
        "plain_call -> True": (ex, "plain_call", lambda *a: True),
        "twin.refresh no-op": (twin, "refresh", lambda: None) if twin is not None else None,
        "pin cache not asked": (_transfer, "_pinned_copy", lambda *a: _transfer._ANY_PATH),
        "kept results not asked": (_transfer, "_results_pinned", lambda *a: False),
    }
    for _ in range(60):
        auto(x)
    variants = {"bare": lambda: bare(fn, (x,)),
                "bare-our-copies": lambda: bare(fn, (x,), _transfer.to_device, _transfer.to_host),
                "forced": lambda: forced(x), "auto": lambda: auto(x)}

    def with_patch(p):
        obj, attr, new = p

        def run():
            old = getattr(obj, attr)
            setattr(obj, attr, new)
            try:
                for _ in range(20):
                    forced(x)
            finally:
                setattr(obj, attr, old)
        return run

    samples = {k: (lambda f=f: [f() for _ in range(20)]) for k, f in variants.items()}
    samples.update({k: with_patch(p) for k, p in patches.items() if p is not None})
    t = interleaved(samples, 150)
    base = t["forced"]
    print("\n6. marginal costs of the device path, bessel at 1e2 (us a call, medians of 150 interleaved samples of 20 calls)")
    for k, v in t.items():
        print(f"  {k:<32} {v / 20 * 1e6:7.1f}   forced minus this: {(base - v) / 20 * 1e6:+6.1f}")


def building_blocks(g) -> None:
    """8. What the pieces of a small device call cost on this machine, each alone: in a tight loop
    of 50 (caches warm), and once right after a forced @offload call of bessel at 1e2 (as inside
    a small call, after the driver's and CuPy's code ran). On the H200 the device path's pieces
    cost ~3.5x what the same Python costs on the CPU VM (gpu_gaps 6 against a fake-device run):
    this says whether the interpreter is slower there or its caches are cold inside a call."""
    from autooffload import _arguments, _hostmem, _pincache, _transfer
    from autooffload.backends import cupy as cupy_backend

    x = g.uniform(-20.0, 20.0, 100)
    d = cp.asarray(x)
    s = cp.cuda.get_current_stream()
    fn = suite.bessel_weights
    forced = offload(backend="cupy")(fn)
    forced(x)
    ex = forced.__autooffload__.executor
    backend = cupy_backend.load()
    twin = ex.runner(backend)[1]
    meter = ex.records.timesheet.meter("cupy")
    address = x.ctypes.data
    blocks = {
        "python: 20 local adds": lambda: sum((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)),
        "executor.plain_call": lambda: ex.plain_call((x,), {}, twin),
        "twin.refresh": (lambda: twin.refresh()) if twin is not None else (lambda: None),
        "Moved(...)": lambda: _arguments.Moved(backend, True, True, meter),
        "records.ran": lambda: ex.records.ran("cupy", 1e-4, (0, 0)),
        "meter.copied": lambda: meter.copied(True, 800, 1e-5),
        "pincache.hold (800 B)": lambda: _pincache.cache.hold(x),
        "results.ready (800 B)": lambda: _hostmem.results.ready(address, 800),
        "np.empty(100)": lambda: np.empty(100),
        "cp.empty(100)": lambda: cp.empty(100),
        "get_current_stream": lambda: cp.cuda.get_current_stream(),
        "runtime.getDevice": lambda: cp.cuda.runtime.getDevice(),
        "dev.device.id": lambda: d.device.id,
        "dev.data.ptr": lambda: d.data.ptr,
        "stream.synchronize (idle)": lambda: s.synchronize(),
        "_transfer.to_device(800 B)": lambda: _transfer.to_device(x),
        "_transfer.to_host(800 B)": lambda: _transfer.to_host(d),
    }
    loop = {k: (lambda f=f: [f() for _ in range(50)]) for k, f in blocks.items()}
    tight = interleaved(loop, 60)
    after: dict[str, list[float]] = {k: [] for k in blocks}
    for _ in range(300):
        for k, f in blocks.items():
            forced(x)
            start = time.perf_counter()
            f()
            after[k].append(time.perf_counter() - start)
    print("\n8. building blocks of a small device call (us a call: tight loop of 50, medians of 60; "
          "once after a forced bessel call at 1e2, medians of 300)")
    for k in blocks:
        print(f"  {k:<30} {tight[k] / 50 * 1e6:7.2f} {statistics.median(after[k]) * 1e6:8.2f}")


def _sm_clock() -> str:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,pstate", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception as e:  # noqa: BLE001 - a diagnostic: say why, go on
        out = f"nvidia-smi: {type(e).__name__}"
    return out


def warm_up_after_numpy(g) -> None:
    """7. How the first GPU calls after seconds of NumPy-only work ramp down, call by call."""
    print("\n7. warm-up after 2 s of NumPy calls (us: median over 5 repeats of the k-th GPU call in a row)")
    for name, n in (("asian_mc", 10**5), ("bessel_i0", 10**2)):
        case = next(c for c in suite.CASES if c.name == name)
        args = case.make(n, g)
        gpu = lambda: bare(case.fn, args)  # noqa: E731
        cpu = lambda: case.fn(*args)  # noqa: E731
        gpu(); sync()  # noqa: E702  (plans, kernels)
        runs: list[list[float]] = []
        clocks = []
        for _ in range(5):
            end = time.perf_counter() + 2.0
            while time.perf_counter() < end:
                cpu()
            clocks.append(("idle", _sm_clock()))
            runs.append([once(gpu) for _ in range(30)])
            clocks.append(("after 30", _sm_clock()))
        per_call = [statistics.median(r[k] for r in runs) * 1e6 for k in range(30)]
        numpy_s = statistics.median(once(cpu) for _ in range(25)) * 1e6
        print(f"  {name} n={n:g}: numpy {numpy_s:.0f}; gpu calls 1-30: " + " ".join(f"{t:.0f}" for t in per_call))
        print(f"    SM clock, mem clock, pstate: " + "; ".join(f"{k} {v}" for k, v in clocks[:4]))


if __name__ == "__main__":
    main()
