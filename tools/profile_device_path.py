"""What a device-resident @offload call spends beyond the CuPy call itself: the floors of the
overhead benchmark's two device rows, plain and decorated, interleaved (``_bench.fastest_per_call_us``:
enqueue only, one synchronization per round), then cProfile of each decorated row.

    PYTHONPATH=src python3 tools/profile_device_path.py [--rows 12]

Session 14's H200 runs had ``(a * b + a).sum()`` at +11-12 us over its plain call and
``np.sqrt(a * b + a)`` at +3-5 us, while the fake device on the 2-core VM shows the opposite
order (+2.7 / +4.2 us): this says where the GPU's difference is.
"""
import argparse
import cProfile
import pstats
import sys
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _bench import fastest_per_call_us  # noqa: E402

from autooffload import offload  # noqa: E402


def summed(a, b):
    return (a * b + a).sum()


def rooted(a, b):
    return np.sqrt(a * b + a)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=12)
    args = ap.parse_args()
    a, b = cp.random.random(100) + 1.0, cp.random.random(100) + 1.0
    decorated = {"sum": offload(summed), "sqrt": offload(rooted)}
    variants = {}
    for name, fn in (("sum", summed), ("sqrt", rooted)):
        variants[f"plain {name}"] = lambda fn=fn: fn(a, b)  # np.sqrt on cupy arrays: CuPy's __array_ufunc__, as the benchmark's
        variants[f"@offload {name}"] = lambda g=decorated[name]: g(a, b)
    for g in decorated.values():
        g(a, b)
        print(g.__name__, g.last_decision.backend, "|", g.last_decision.reason, "| observe", g.last_decision.observe)
    best = fastest_per_call_us(variants, rounds=21, calls=1000)
    cp.cuda.get_current_stream().synchronize()
    print("  ".join(f"{k} {v:.2f} us" for k, v in best.items()))
    for name in ("sum", "sqrt"):
        print(f"overhead {name}: {best[f'@offload {name}'] - best[f'plain {name}']:+.2f} us")
    for name, g in decorated.items():
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(3000):
            g(a, b)
        prof.disable()
        cp.cuda.get_current_stream().synchronize()
        print(f"\n== cProfile, 3000 calls of @offload {name}")
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.rows)


if __name__ == "__main__":
    main()
