"""Issue 14: do first (staged) copies lose time to waking the native copy pool's threads?

    PYTHONPATH=src python3 tools/pool_spin_probe.py [--sizes 64,128,256,1024] [--rounds 9]

First copies (``_transfer.unpinned_copies``: staged through pinned buffers, as transfer.py's
``staged`` column) in and out, with the pool's threads sleeping on their condition variable at
once (today), or polling for a while first (``_parcopy.set_spin``), and with ``_parcopy.wake()``
before the copy (idle threads start polling for it: its first piece does not wait for them to be
scheduled). Between two timed calls the process sleeps 2 ms (a program's other work: the threads
are asleep again when the next copy starts). Variants interleave within each round; medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cupy as cp
import numpy as np

from autooffload import _parcopy as P
from autooffload import _transfer as T

MiB = 1 << 20
VARIANTS = {"sleep (today)": (0.0, False), "spin 100us": (100.0, False), "spin 100us + wake": (100.0, True),
            "spin 300us + wake": (300.0, True)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,128,256,1024", help="MiB")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    t = T._tuning()
    print(f"tuning: threads {t.threads}, staged ({t.staged_min / MiB:g}, {t.staged_max / MiB:g}] MiB, "
          f"{t.staged_piece_count} pieces, chunk {t.chunk_bytes / MiB:g} MiB, nontemporal in/out "
          f"{t.h2d_nontemporal}/{t.d2h_nontemporal}")
    sync = cp.cuda.get_current_stream().synchronize
    print(f"{'size':>8}  {'dir':>3}  " + "  ".join(f"{v:>20}" for v in VARIANTS))
    for mib in (int(s) for s in args.sizes.split(",")):
        n = mib * MiB
        h = np.random.default_rng(mib).random(n // 8)
        dst = np.ones_like(h)
        d = cp.asarray(h)
        times: dict[tuple[str, str], list[float]] = {}
        with T.unpinned_copies():
            for r in range(args.rounds + 1):
                for name, (spin, wake) in VARIANTS.items():
                    P.set_spin(spin)
                    for direction in ("in", "out"):
                        time.sleep(0.002)
                        if wake:
                            P.wake()
                        t0 = time.perf_counter()
                        if direction == "in":
                            out = T.to_device(h)
                        else:
                            T.to_host(d, out=dst)
                        sync()
                        dt = time.perf_counter() - t0
                        if r:  # the first round warms the pool and the buffers
                            times.setdefault((name, direction), []).append(dt)
                        if direction == "in":
                            del out
        P.set_spin(0.0)
        assert np.array_equal(dst, h), "copy out not exact"
        for direction in ("in", "out"):
            med = {v: statistics.median(times[v, direction]) for v in VARIANTS}
            base = med["sleep (today)"]
            print(f"{mib:>5} MiB  {direction:>3}  " + "  ".join(
                f"{n / med[v] / 1e9:6.1f} GB/s ({med[v] / base:4.2f})" for v in VARIANTS))
        del d
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
