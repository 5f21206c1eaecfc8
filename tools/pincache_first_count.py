"""What the pin-down cache's first count of a new array costs (``PinCache.hold``), on the CPU.

    PYTHONPATH=src python3 tools/pincache_first_count.py
    PYTHONPATH=/path/to/other/checkout/src python3 tools/pincache_first_count.py   # A/B: alternate processes

Every copy of 1 MiB or more asks the cache; an array copied for the first time gets an owner
entry and a weak reference, which its death clears. ``to_host(d, out=np.empty_like(h))`` of
1 MiB, as a program's first result of a size, ran 1.03-1.08x CuPy's time on the H200 (session
12); on the 2-core VM this count was ~3.5 us of the engine's ~7.7 us over the same DMA by hand
(fake CuPy, session 12).
Prints the fastest of 5 repeats of 20000 (a new array, its count, its death), then cProfile.
"""

from __future__ import annotations

import cProfile
import pstats
import timeit

import numpy as np

from autooffload import _pincache


def main() -> None:
    cache = _pincache.PinCache()
    cache.configure(lambda address, n: True, lambda address: None, 1 << 20, 2)  # pins nothing here: one count each
    like = np.empty(1 << 17)  # 1 MiB

    def one() -> None:
        cache.hold(np.empty_like(like))

    for _ in range(100):
        one()
    best = min(timeit.repeat(one, number=20000, repeat=5)) / 20000 * 1e6
    alone = min(timeit.repeat(lambda: np.empty_like(like), number=20000, repeat=5)) / 20000 * 1e6
    print(f"hold of a new array: {best:.2f} us (np.empty_like alone {alone:.2f} us)")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(20000):
        one()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
