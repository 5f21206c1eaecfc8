"""Where the time of one mid-size @offload GPU call goes (cProfile, 300 warm calls)."""
import cProfile
import pstats
import time

import cupy as cp
import numpy as np

from autooffload import config, offload


def fft_convolve(signal, kernel):
    n = signal.size + kernel.size - 1
    return np.fft.irfft(np.fft.rfft(signal, n) * np.fft.rfft(kernel, n), n)


rng = np.random.default_rng(0)
s, k = rng.random(10_000), rng.random(1024)
variants = {"default": offload(fft_convolve), "pure": offload(pure=True)(fft_convolve)}


def plain_cupy():
    a, b = cp.asarray(s), cp.asarray(k)
    n = a.size + b.size - 1
    return cp.asnumpy(cp.fft.irfft(cp.fft.rfft(a, n) * cp.fft.rfft(b, n), n))


def timeit(fn, n=300):
    for _ in range(20):
        fn()
    cp.cuda.get_current_stream().synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    cp.cuda.get_current_stream().synchronize()
    return (time.perf_counter() - t) / n * 1e6


with config(backend="cupy"):
    print(f"plain cupy + copies: {timeit(plain_cupy):.0f} us")
    for name, f in variants.items():
        print(f"@offload {name}: {timeit(lambda: f(s, k)):.0f} us")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        variants["default"](s, k)
    prof.disable()
pstats.Stats(prof).sort_stats("tottime").print_stats(22)
