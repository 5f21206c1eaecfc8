"""Quickstart: decorate a NumPy function and watch where each call runs, and why.

    python examples/quickstart.py

Works with or without a GPU: without one (or without CuPy) every call runs on NumPy and the
decisions say so.
"""

import numpy as np

from autooffload import config, explain, offload


@offload
def score(prices, weights):
    """Volatility of a weighted portfolio's log returns."""
    r = np.diff(np.log(prices), axis=0)
    return (r * weights).sum(axis=1).std()


@offload(kind="fft")
def smooth(signal, width):
    """Moving average by FFT convolution."""
    kernel = np.ones(width) / width
    n = signal.size + width - 1
    return np.fft.irfft(np.fft.rfft(signal, n) * np.fft.rfft(kernel, n), n)[: signal.size]


def main() -> None:
    rng = np.random.default_rng(0)
    for n_days, n_assets, repeats in [(250, 10, 1), (20_000, 500, 10)]:
        prices = 100 * np.cumprod(1 + 0.01 * rng.standard_normal((n_days, n_assets)), axis=0)
        weights = rng.random(n_assets) / n_assets
        expected = score.__wrapped__(prices, weights)
        # Repeated calls: while only the one-off GPU start (~1 s) makes the GPU lose, calls stay
        # on NumPy and the time they could have saved adds up; once it exceeds the start cost,
        # the GPU is started and later calls use it.
        for i in range(repeats):
            vol = score(prices, weights)
            assert np.isclose(vol, expected, rtol=1e-9)
            print(f"score  {n_days:>6} x {n_assets:<4} call {i + 1:>2} = {vol:.6f}   {score.last_decision}")

    for n in [1_000, 4_000_000]:
        signal = rng.standard_normal(n)
        out = smooth(signal, 64)
        print(f"smooth {n:>13,}   mean {out.mean():+.2e}   {smooth.last_decision}")

    big = rng.standard_normal(8_000_000)
    print(f"\nexplain(smooth, 8e6 samples) without running it:\n  {explain(smooth, big, 64)}")
    with config(backend="numpy"):
        smooth(big, 64)
    print(f"inside config(backend='numpy'):\n  {smooth.last_decision}")
    print(f"\nstats: score {score.stats}, smooth {smooth.stats}")


if __name__ == "__main__":
    main()
