"""What a small call on the Numba tier costs through ``@offload`` and through the tier's runner.

    PYTHONPATH=src python3 tools/tier_call_overhead.py
    PYTHONPATH=/path/to/other/checkout/src python3 tools/tier_call_overhead.py   # A/B: alternate processes

The suite's ``percentiles`` at 1e2 (``xp.percentile`` of 100 float64, an ``xp=np`` parameter):
``@offload(backend="numba")``, the tier's runner called directly (what the suite's Numba column
calls), the jitted function through Numba's dispatcher (which types the omitted ``xp`` afresh on
every call), and NumPy. Rounds interleave the variants; each figure is the fastest of 41 rounds
of 2000 calls. On the H200 (session 11) that row ran 12-18 us on the tier's column and 17-27 us
through ``@offload`` (benchmarks/results/h200-session11/suite.run4.txt and
suite-noprofile.run4.txt); in session 12, once the suite stopped synchronizing CuPy after tier
calls, 5.9-6.0 and 8.5-8.6 us (benchmarks/results/h200-session12/suite.run4.txt and
suite-noprofile.run4.txt).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import suite  # noqa: E402
from _bench import fastest_per_call_us  # noqa: E402

from autooffload import backends, offload  # noqa: E402


def main() -> None:
    import numba

    x = np.random.default_rng(0).standard_normal(100)
    tier = backends.get("numba")
    runner, _, how = tier.runner(suite.percentiles)
    assert runner is not None, how
    runner(x)  # compiles
    forced = offload(backend="numba")(suite.percentiles)
    forced(x)
    tier.compile_for(suite.percentiles, (x,), {"xp": np})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jitted = numba.njit(suite.percentiles)
        jitted(x)
    variants = {"@offload": lambda: forced(x), "tier runner": lambda: runner(x, xp=np),
                "Numba dispatcher": lambda: jitted(x), "NumPy": lambda: suite.percentiles(x)}
    assert forced.last_decision.backend == "numba", forced.last_decision.reason
    print("  ".join(f"{k} {us:.2f} us" for k, us in fastest_per_call_us(variants).items()))


if __name__ == "__main__":
    main()
