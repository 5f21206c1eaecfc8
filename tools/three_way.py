"""The three-way choice on real sizes: NumPy, the Numba tier and the GPU, forced and automatic.

    PYTHONPATH=src python3 tools/three_way.py [--max-elements 1e8]

For the seed article's chain (``y = x*5; y = y*y; return y+y``), its in-place form and a
Black-Scholes-like function, per size: the warm median of each backend forced, then what
``@offload`` settles on (calls until its decision is stable: the Numba tier compiles in the
background, learning may explore) and its warm median. numpy data in and out; medians of
interleaved rounds; the GPU synchronized inside the timed region; the in-place chain's fresh
input copied outside it. "numpy alone" is NumPy timed in a process of its own that never loads
the Numba tier: the tier keeps large heap blocks for reuse (``_heap.py``), which speeds up NumPy's
own temporaries in the same process too, so "x NumPy" is against that plain process, what the
user's code ran at before.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _bench as B  # noqa: E402
import suite  # noqa: E402
from numba_tier import chain, chain_in_place  # noqa: E402  (the seed article's chains)

from autooffload import config, offload  # noqa: E402


CASES = {
    "chain": (chain, lambda n, g: (g.standard_normal(n),)),
    "in_place": (chain_in_place, lambda n, g: (g.standard_normal(n),)),
    "black_scholes": (suite.black_scholes_call, suite._bs),
}


def sync():
    try:
        import cupy

        cupy.cuda.get_current_stream().synchronize()
    except Exception:
        pass


def median_time(call, fresh, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        args = fresh()
        start = time.perf_counter()
        call(*args)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def numpy_alone(name: str, n: int, rounds: int) -> float:
    """NumPy's median in a fresh process that loads neither the tier nor the GPU."""
    import subprocess

    code = (f"import sys; sys.argv = ['three_way']; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import three_way as t; print(t.plain_numpy({name!r}, {n}, {rounds}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def plain_numpy(name: str, n: int, rounds: int) -> float:
    fn, make = CASES[name]
    data = make(n, np.random.default_rng(0))
    fresh = _fresh(name, data)
    fn(*fresh())
    return median_time(fn, fresh, rounds)


def _fresh(name: str, data: tuple):
    if name == "in_place":
        return lambda: tuple(a.copy() if isinstance(a, np.ndarray) else a for a in data)
    return lambda: data


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-elements", type=float, default=1e8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ",".join(CASES))
    p.add_argument("--min-elements", type=float, default=1e5)
    args = p.parse_args(argv)
    g = np.random.default_rng(0)
    print(f"{'function':<14} {'n':>6} {'numpy alone':>11} {'numpy':>10} {'numba':>10} {'cupy':>10} {'@offload':>10} "
          f"{'picked':>7} {'settled after':>13}  x NumPy")
    for name, (fn, make) in CASES.items():
        if name not in args.cases.split(","):
            continue
        n = int(args.min_elements)
        while n <= args.max_elements:
            data = make(n, g)
            fresh = _fresh(name, data)
            times = {"alone": numpy_alone(name, n, args.rounds)}
            for backend in ("numpy", "numba", "cupy"):
                forced = offload(fn)
                try:
                    with config(backend=backend):
                        forced(*fresh())  # compile / warm
                        times[backend] = median_time(forced, fresh, args.rounds)
                except Exception as exc:  # a backend that cannot run here
                    times[backend] = None
                    print(f"  {name} {n:.0e} {backend}: {type(exc).__name__}: {exc}")
            auto = offload(fn)
            seen = B.settle(auto, lambda: auto(*fresh()), same=5, max_calls=60, wait_for_compile=False)
            times["auto"] = median_time(auto, fresh, args.rounds)
            picked = auto.last_decision.backend
            stable = len(seen)
            while stable > 0 and seen[stable - 1] == picked:
                stable -= 1

            def fmt(s):
                return "-" if s is None else (f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} us")

            print(f"{name:<14} {n:>6.0e} {fmt(times['alone']):>11} {fmt(times['numpy']):>10} {fmt(times['numba']):>10} "
                  f"{fmt(times['cupy']):>10} {fmt(times['auto']):>10} {picked:>7} {stable:>13}  "
                  f"{times['alone'] / times['auto']:.2f}x", flush=True)
            n *= 10


if __name__ == "__main__":
    main(sys.argv[1:])
