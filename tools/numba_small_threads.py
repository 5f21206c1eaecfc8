"""The Numba tier's time on small calls by thread count, back to back and interleaved.

For each suite function and size named: the tier's compiled runner under
``thread_limit(t)`` for each thread count, and NumPy, medians of single calls in two settings:

* ``back to back``  the same call repeated (the tier's threads stay awake: the suite's settle loop);
* ``interleaved``   a 200 us sleep before each call (a program's other work between calls: the
                    suite's timed rounds, where the tier's threads have gone back to sleep);

beside the serial build (``njit`` without ``parallel``) and the runner as it chooses
(``_numba_threads``). Thread counts run in turn, as set_num_threads does to libgomp's team.
Session 16's run 3 timed its thread columns through the runner, so for 2-16 threads they
measured the runner's choice in a cell keyed without the limit (a review found it; fixed after
the run): only its "1 threads" column (the runner bypasses the choice at one thread) and the
serial build's are the builds themselves there.

    PYTHONPATH=src python3 tools/numba_small_threads.py black_scholes --sizes 1e2,1e3,1e4,1e5

Session 15's suite without a profile had ``black_scholes`` at 1e2 on the tier at 98 us against
NumPy's 70 (the tier's own column: 273 us, +-2216%), while the tier's cell had learned 54-73 us
back to back: this says whether fewer threads on small calls would fix the tier's fixed cost.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from suite import CASES  # noqa: E402

from autooffload import backends  # noqa: E402


def median_us(call, rounds: int, pause_s: float) -> float:
    times = []
    for _ in range(rounds):
        if pause_s:
            time.sleep(pause_s)
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("function", nargs="+")
    ap.add_argument("--sizes", default="1e2,1e3,1e4,1e5")
    ap.add_argument("--threads", default="1,2,4,8,16")
    ap.add_argument("--rounds", type=int, default=201)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tier = backends.get("numba")
    if tier is None:
        sys.exit("the Numba tier is not available here")
    counts = [min(int(t), tier.max_threads) for t in args.threads.split(",")]
    cases = {c.name: c for c in CASES}
    g = np.random.default_rng(3)
    for name in args.function:
        case = cases[name]
        compiled, _, how = tier.runner(case.fn)
        if compiled is None:
            print(f"{name}: the tier refuses it ({how})")
            continue
        for n in (int(float(s)) for s in args.sizes.split(",")):
            host = case.make(n, g)
            compiled(*host)  # compiles for these types
            build = tier.serial_compiler(case.fn)
            positional = build.positional(host, {})
            serial = build.compile(build.signature(positional))
            parallel = tier.compiler(case.fn)
            psig = parallel.signature(positional)  # compiled by the first call
            print(f"\n== {name} at {n:.0e}, threading layer {tier._threading_layer()}, "
                  f"median us of {args.rounds} calls, {args.repeats} repeats interleaved")
            for setting, pause in (("back to back", 0.0), ("interleaved", 200e-6)):
                results: dict[str, list[float]] = {}
                for _ in range(args.repeats):
                    results.setdefault("numpy", []).append(median_us(lambda: case.fn(*host), args.rounds, pause))
                    if serial.state == "compiled":
                        results.setdefault("serial build", []).append(
                            median_us(lambda: build.run(serial, positional), args.rounds, pause))
                    for t in counts:  # the parallel build itself: the runner's choice is not keyed by these limits' runs
                        with tier.thread_limit(t):
                            results.setdefault(f"{t} threads", []).append(
                                median_us(lambda: tier.launch(lambda: parallel.run(psig, positional)), args.rounds, pause))
                    results.setdefault("as chosen", []).append(median_us(lambda: compiled(*host), args.rounds, pause))
                print(f"  {setting:12s} " + "  ".join(f"{k} {statistics.median(v):.1f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
