"""Whether the seed article's in-place chain at 1e5 is settled before its timed window, on the CPU.

    PYTHONPATH=src AUTOOFFLOAD_CACHE_DIR=$(mktemp -d) python3 tools/settle_in_place_chain.py

``_bench.settle`` (what benchmarks/seed_article.py calls) until its decision is stable, then
NumPy and ``@offload`` side by side as the seed article times them (the input restored before
each call). On the H200 (session 12, benchmarks/results/h200/seed_article.txt) that row came
out 0.77x NumPy through ``@offload`` with every call on NumPy: the Numba tier was still compiling
in the background after the 40 calls settle allowed, so every call was timed to learn.
Prints the backends of the last settling calls, what ran in the timed window and the medians.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _bench as B  # noqa: E402

from autooffload import offload  # noqa: E402


def chain(x):
    x *= 5
    x *= x
    x += x


def main() -> None:
    warnings.simplefilter("ignore", RuntimeWarning)  # x *= x overflows after a few calls, as in the article
    fn_off = offload(chain)
    src = np.random.default_rng(0).uniform(0.5, 1.5, 100_000)
    x = src.copy()

    def restore():
        np.copyto(x, src)

    def call_off():
        fn_off(x)

    restore()
    call_off()
    settled = B.settle(fn_off, call_off, setup=restore)
    reason = fn_off.last_decision.reason
    print(f"settled after {len(settled)} calls, the last {settled[-3:]}: {reason[:70]}")
    before = fn_off.stats.as_dict()
    stats = B.measure_interleaved({"numpy": lambda: chain(x), "@offload": call_off}, setups={"numpy": restore, "@offload": restore},
                                  warmup={"numpy": 1, "@offload": 0})
    after = fn_off.stats.as_dict()
    ran = {k: after[k] - before[k] for k in ("numpy", "numba", "cupy") if after[k] - before[k]}
    print(f"timed window ran {ran}; medians " + ", ".join(f"{k} {v.median * 1e6:.1f} us" for k, v in stats.items())
          + f"; @offload / NumPy {stats['@offload'].median / stats['numpy'].median:.2f}")


if __name__ == "__main__":
    main()
