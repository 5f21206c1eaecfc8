"""The Numba tier against NumPy: three functions, warm, medians of interleaved runs, and compile times.

    PYTHONPATH=src python benchmarks/numba_tier.py [--out benchmarks/results/cpu-vm/numba.txt]

Each function runs unmodified: NumPy calls it as written; the tier runs the version the Numba
backend compiles for the call's argument types (``backends.get("numba").runner``, the options of
``backends/_numba_compile.py``). Compile times are the first compilation of each signature in
this process with an empty Numba disk cache (a fresh ``NUMBA_CACHE_DIR``), helpers included; the
first compilation in a process also pays Numba's own one-time setup, so the first row's compile
time is the largest. The in-place chain gets a fresh copy of its input before each sample
(outside the clock). Data: float64 in [0.5, 1.5).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="autooffload-numba-bench-")  # cold compiles

import numpy as np  # noqa: E402

import _bench as B  # noqa: E402
from suite import black_scholes_call  # noqa: E402  (called by global name: compiled as a helper)
from autooffload import backends  # noqa: E402


def chain(x):
    y = x * 5
    y = y * y
    return y + y


def chain_in_place(x):
    x *= 5
    x *= x
    x += x


def black_scholes(spot, strike, expiry):
    return black_scholes_call(spot, strike, expiry, 0.01, 0.2)


def cases():
    for n in (10**6, 10**7):
        yield "y = x*5; y = y*y; return y+y", n, chain, (B.never_zero(n, seed=1),), False
        yield "x *= 5; x *= x; x += x (in place)", n, chain_in_place, (B.never_zero(n, seed=2),), True
    n = 10**6
    spot, strike, expiry = B.never_zero(n, seed=3) * 100, B.never_zero(n, seed=4) * 100, B.never_zero(n, seed=5)
    yield "Black-Scholes call (3 arrays)", n, black_scholes, (spot, strike, expiry), False


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args(argv)
    tier = backends.get("numba")
    if tier is None:
        sys.exit(f"no Numba tier: {backends.unavailable_reason('numba')}")
    rows = []
    for name, n, func, inputs, in_place in cases():
        compiled, _, how = tier.runner(func)
        assert compiled is not None, how
        start = time.perf_counter()
        sig = tier.compile_for(func, inputs, {})
        compile_s = time.perf_counter() - start
        assert sig.state == "compiled", (name, sig.reason)
        originals = [a.copy() for a in inputs]

        def reset(inputs=inputs, originals=originals):
            for a, o in zip(inputs, originals):
                np.copyto(a, o)

        setups = {"numpy": reset, "numba": reset} if in_place else None
        stats = B.measure_interleaved(
            {"numpy": lambda f=func, a=inputs: f(*a), "numba": lambda c=compiled, a=inputs: c(*a)},
            setups=setups, warmup=2, repeats=args.repeats, min_repeats=5, min_sample_s=0.0, max_s=20.0,
        )
        t_np, t_nb = stats["numpy"].median, stats["numba"].median
        rows.append([name, B.fmt_n(n), B.fmt_time(t_np), B.fmt_time(t_nb), B.fmt_x(t_np / t_nb),
                     f"{compile_s:.2f} s" if sig.seconds and compile_s >= 0.01 else "(same signature)"])
    import numba

    head = (f"Numba tier vs NumPy, {os.cpu_count()} cores ({B.cpu_model()}), numba {numba.__version__} "
            f"({tier.max_threads} threads, layer {numba.threading_layer()}), numpy {np.__version__}, float64\n"
            f"warm medians of interleaved runs ({args.repeats} rounds); compile: first signature, empty disk cache\n\n")
    text = head + B.table(["function", "n", "NumPy", "Numba", "speedup", "compile"], rows) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
