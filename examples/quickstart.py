"""Quickstart: decorate NumPy functions and see where each call runs, and why.

    python examples/quickstart.py

A few seconds on a laptop. Without a GPU (or without CuPy) every call runs on NumPy and the
table says so once. On a GPU machine the large calls first stay on NumPy while the GPU's
one-off start (~1 s) is not yet paid for, then move to the GPU once the time they would have
saved covers it: the table shows that switch.
"""

import time

import numpy as np

from autooffload import config, explain, offload


@offload
def score(prices, weights):
    """Volatility of a weighted portfolio's log returns."""
    r = np.diff(np.log(prices), axis=0)
    return (r * weights).sum(axis=1).std()


@offload(kind="fft")
def smooth(signal, width):
    """Moving average by FFT convolution, at a power-of-two length (fast for any FFT library)."""
    kernel = np.ones(width) / width
    n = 1 << (signal.size + width - 2).bit_length()
    return np.fft.irfft(np.fft.rfft(signal, n) * np.fft.rfft(kernel, n), n)[: signal.size]


NO_GPU = "no GPU: "


def why(decision) -> str:
    """The decision's reason, short: the no-GPU reason is said once, below the table."""
    return "no GPU (see below)" if decision.reason.startswith(NO_GPU) else decision.reason


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []  # (function, size, calls, ran on, why, ms per call)
    no_gpu_reason = None

    def run(name, size, func, *args, repeats=1):
        """Call ``func`` ``repeats`` times; one row per run of identical decisions."""
        nonlocal no_gpu_reason
        first = 1
        last = None
        for i in range(1, repeats + 1):
            started = time.perf_counter()
            func(*args)
            ms = (time.perf_counter() - started) * 1e3
            d = func.last_decision
            if d.reason.startswith(NO_GPU):
                no_gpu_reason = d.reason[len(NO_GPU):]
            key = (d.backend, why(d))
            if key != last:
                first, last = i, key
                rows.append([name, size, f"{i}", d.backend, why(d), ms])
            else:
                rows[-1][2] = f"{first}-{i}"
                rows[-1][5] = ms  # the latest call's time

    for days, assets, repeats in [(250, 10, 1), (20_000, 500, 12)]:
        prices = 100 * np.cumprod(1 + 0.01 * rng.standard_normal((days, assets)), axis=0)
        weights = rng.random(assets) / assets
        run("score", f"{days:,} x {assets}", score, prices, weights, repeats=repeats)
    for n in [1_000, 1_000_000]:
        run("smooth", f"{n:,}", smooth, rng.standard_normal(n), 64, repeats=3)

    header = ["function", "size", "calls", "ran on", "why", "last call"]
    table = [[f, s, c, b, w, f"{ms:.2f} ms"] for f, s, c, b, w, ms in rows]
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for r in [header, *table]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(r, widths)).rstrip())

    big = rng.standard_normal(4_000_000)
    d = explain(smooth, big, 64)
    print(f"\nexplain(smooth, 4,000,000 samples), without running it: {d.backend}, {why(d)}")
    with config(backend="numpy"):
        smooth(big, 64)
    print(f"inside config(backend='numpy'): {smooth.last_decision.backend}, {why(smooth.last_decision)}")
    print("(the first call's time includes loading this machine's profile, once per process)")
    print(f"\nscore.stats  {score.stats}\n  (new_decisions: calls decided afresh, not taken from the cache)")

    if no_gpu_reason:
        print(
            f"\nWhy no GPU: {no_gpu_reason}.\n"
            "With CuPy and a CUDA GPU, large calls move to the GPU where it is predicted faster;\n"
            "`autooffload info` shows what loads here, `autooffload calibrate` measures this machine."
        )


if __name__ == "__main__":
    main()
