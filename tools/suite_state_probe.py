"""Does a process that has run other offloaded work make small device calls slower? (issue 12)

In the H200 suite (session 21, run 1) ``bessel_i0`` at 1e2 took 151 us through ``@offload``
(its CuPy cell observed 127-144 us a call) against 99 us for CuPy + copies by hand, while
``tools/gpu_gaps.py 6``, in a fresh process, measured the same call at 109-116 us against 97.
The suite runs ``bessel_i0`` after thirteen other functions at sizes up to 1e8. This probe times
the same small calls, interleaved (20 calls a sample, synchronized after each call as the suite
does), in one process: fresh; after the suite's other functions ran through ``@offload`` at
1e2-1e6; and after a garbage collection with the pools emptied. A cProfile of ``auto`` at the
fresh and the used state shows where any difference goes.

What it found (benchmarks/results/h200-session21/state-probe.run3.txt, run4.txt): once the other
functions' large arrays were pinned in place, every small copy went through the pin-down cache's
layers, and the copy engine's lead over CuPy's own copies of bessel's 800 B fell from 31 us a call
to 2.5; with a small array's own memory skipping them (``_pincache.never_pinned``) it stayed
26-38 us. Garbage collection took no part (0-0.9 ms of each 2.5-6.3 s phase).

    PYTHONPATH=src python3 tools/suite_state_probe.py [--rounds 60]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
os.environ.pop("AUTOOFFLOAD_LOG", None)

import suite  # noqa: E402

from autooffload import _hostmem, _pincache, _transfer, offload  # noqa: E402

CELLS = [("bessel_i0", 10**2), ("bessel_i0", 10**4), ("fft_convolve", 10**4)]


def sync() -> None:
    cp.cuda.get_current_stream().synchronize()


def bare(fn, args, to_device=cp.asarray, to_host=cp.asnumpy):
    dev = [to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    return to_host(fn(*dev, xp=cp))


def variants(case, args, forced, auto) -> dict:
    fn = case.fn
    return {"bare": lambda: bare(fn, args), "bare-our-copies": lambda: bare(fn, args, _transfer.to_device, _transfer.to_host),
            "forced": lambda: forced(*args), "auto": lambda: auto(*args)}


def sample(fn, calls: int = 20) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
        sync()
    return (time.perf_counter() - start) / calls


_GC = {"s": 0.0, "full": 0, "start": 0.0}


def _gc_clock(phase: str, info: dict) -> None:
    """gc.callbacks: the time spent in collections, and the full ones."""
    if phase == "start":
        _GC["start"] = time.perf_counter()
    else:
        _GC["s"] += time.perf_counter() - _GC["start"]
        _GC["full"] += info.get("generation") == 2


def measure(label: str, setups: list, rounds: int) -> None:
    print(f"\n== {label} (us a call, medians of {rounds} interleaved samples of 20 calls)")
    _GC.update(s=0.0, full=0)
    t0 = time.perf_counter()
    for name, n, vs in setups:
        times: dict[str, list[float]] = {k: [] for k in vs}
        for f in vs.values():
            f(); sync()  # noqa: E702
        for r in range(rounds):
            for k in (list(vs) if r % 2 == 0 else list(vs)[::-1]):
                times[k].append(sample(vs[k]))
        med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        print(f"  {name:<13} {n:>7}: " + "  ".join(f"{k} {v:7.1f}" for k, v in med.items())
              + f"   forced - ours {med['forced'] - med['bare-our-copies']:+6.1f}  auto - ours {med['auto'] - med['bare-our-copies']:+6.1f}"
              + f"  auto / bare {med['auto'] / med['bare']:.2f}")
    print(f"  collections: {_GC['s'] * 1e3:.1f} ms of {time.perf_counter() - t0:.1f} s, {_GC['full']} full")


def state(label: str) -> None:
    pool, pinned = cp.get_default_memory_pool(), cp.get_default_pinned_memory_pool()
    print(f"  state {label}: pin cache {_pincache.cache.info()}; kept results {_hostmem.results.info()}; "
          f"cupy pool used {pool.used_bytes() / 2**20:.1f} MiB of {pool.total_bytes() / 2**20:.1f}, "
          f"pinned pool free blocks {pinned.n_free_blocks()}; gc counts {gc.get_count()}, objects {len(gc.get_objects())}")


def profile(label: str, fn, calls: int = 1000) -> None:
    prof = cProfile.Profile()
    for _ in range(50):
        fn()
    prof.enable()
    for _ in range(calls):
        fn()
        sync()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(40)
    print(f"\n== cProfile of auto, bessel_i0 at 1e2, {label}, {calls} calls, by own time")
    print("\n".join(out.getvalue().splitlines()[4:]))


def use_the_process(g, max_s: float, max_n: int, keep: list) -> None:
    """The suite's other functions through @offload from 1e2 to ``max_n``, 20 calls each (10
    from 1e6), as its settling and rounds leave the process: pinned arrays, kept results, pools,
    histories, and (``keep``) the decorated functions and inputs the suite's rows hold."""
    for case in suite.CASES:
        if case.name == "bessel_i0":
            continue
        f, start = offload(case.fn), time.perf_counter()
        keep.append(f)
        n = 10**2
        while n <= min(max_n, case.max_n) and time.perf_counter() - start < max_s:
            args = case.make(n, g)
            for _ in range(20 if n < 10**6 else 10):
                f(*args)
            keep.append(args)
            n *= 10
        sync()
        print(f"  used: {case.name} to {n // 10:.0e} in {time.perf_counter() - start:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--case-s", type=float, default=3.0, help="time a function may take while the process is used")
    p.add_argument("--max-n", type=float, default=1e7, help="largest size of the second use (the first stops at 1e6)")
    args = p.parse_args()
    g = np.random.default_rng(0)
    by_name = {c.name: c for c in suite.CASES}
    setups = []
    for name, n in CELLS:
        case = by_name[name]
        a = case.make(n, g)
        setups.append((name, n, variants(case, a, offload(backend="cupy")(case.fn), offload(case.fn))))
    bessel_auto = setups[0][2]["auto"]
    for _ in range(100):
        for _, _, vs in setups:
            vs["auto"]()
    measure("fresh process", setups, args.rounds)
    state("fresh")
    profile("fresh process", bessel_auto)
    gc.callbacks.append(_gc_clock)
    keep: list = []
    use_the_process(g, args.case_s, 10**6, keep)
    state("used to 1e6")
    measure("after the suite's other functions to 1e6", setups, args.rounds)
    use_the_process(g, args.case_s, int(args.max_n), keep)
    state(f"used to {args.max_n:.0e}")
    measure(f"after the suite's other functions to {args.max_n:.0e}", setups, args.rounds)
    profile(f"after the suite's other functions to {args.max_n:.0e}", bessel_auto)
    gc.disable()
    measure("the same, garbage collection off", setups, args.rounds)
    gc.enable()
    del keep[:]
    gc.collect()
    cp.get_default_memory_pool().free_all_blocks()
    _hostmem.results.release()
    _pincache.cache.release()
    state("collected")
    measure("after gc.collect(), the pools emptied and every pin released", setups, args.rounds)


if __name__ == "__main__":
    main()
