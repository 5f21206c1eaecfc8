"""The three-way choice on real sizes: NumPy, the Numba tier and the GPU, forced and automatic.

    PYTHONPATH=src python3 tools/three_way.py [--max-elements 1e8]

For the seed article's chain (``y = x*5; y = y*y; return y+y``), its in-place form and a
Black-Scholes-like function, per size: the warm median of each backend forced, then what
``@offload`` settles on (calls until its decision is stable: the Numba tier compiles in the
background, learning may explore) and its warm median. numpy data in and out; medians of
interleaved rounds; the GPU synchronized inside the timed region.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
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


def median_time(call, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def settle(f, call, limit_s: float = 20.0) -> list[str]:
    seen: list[str] = []
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s and len(seen) < 60:
        call()
        seen.append(f.last_decision.backend)
        if len(seen) >= 5 and len(set(seen[-5:])) == 1 and not f.last_decision.exploring:
            break
    return seen


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-elements", type=float, default=1e8)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    g = np.random.default_rng(0)
    print(f"{'function':<14} {'n':>6} {'numpy':>10} {'numba':>10} {'cupy':>10} {'@offload':>10} {'picked':>7} "
          f"{'settled after':>13}  x NumPy")
    for name, (fn, make) in CASES.items():
        n = 10**5
        while n <= args.max_elements:
            data = make(n, g)
            fresh = (lambda: tuple(a.copy() if isinstance(a, np.ndarray) else a for a in data)) if name == "in_place" \
                else (lambda: data)
            times = {}
            for backend in ("numpy", "numba", "cupy"):
                forced = offload(fn)
                try:
                    with config(backend=backend):
                        forced(*fresh())  # compile / warm
                        times[backend] = median_time(lambda: forced(*fresh()), args.rounds)
                except Exception as exc:  # a backend that cannot run here
                    times[backend] = None
                    print(f"  {name} {n:.0e} {backend}: {type(exc).__name__}: {exc}")
            auto = offload(fn)
            seen = settle(auto, lambda: auto(*fresh()))
            times["auto"] = median_time(lambda: auto(*fresh()), args.rounds)
            picked = auto.last_decision.backend
            stable = len(seen)
            while stable > 0 and seen[stable - 1] == picked:
                stable -= 1

            def fmt(s):
                return "-" if s is None else (f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} us")

            print(f"{name:<14} {n:>6.0e} {fmt(times['numpy']):>10} {fmt(times['numba']):>10} {fmt(times['cupy']):>10} "
                  f"{fmt(times['auto']):>10} {picked:>7} {stable:>13}  {times['numpy'] / times['auto']:.2f}x")
            n *= 10


if __name__ == "__main__":
    main(sys.argv[1:])
