"""What a device-resident @offload call spends beyond the CuPy call itself (cProfile)."""
import cProfile
import pstats
import time

import cupy as cp
import numpy as np

from autooffload import offload


def f(a, b):
    return (a * b + a).sum()


g = offload(f)
a, b = cp.random.random(100), cp.random.random(100)


def per_call(fn, n=3000):
    for _ in range(200):
        fn(a, b)
    cp.cuda.get_current_stream().synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn(a, b)
    cp.cuda.get_current_stream().synchronize()
    return (time.perf_counter() - t) / n * 1e6


print(f"direct {per_call(f):.1f} us, offloaded {per_call(g):.1f} us (enqueue only, one sync at the end)")
prof = cProfile.Profile()
prof.enable()
for _ in range(3000):
    g(a, b)
prof.disable()
pstats.Stats(prof).sort_stats("tottime").print_stats(18)
