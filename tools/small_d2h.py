"""Small device->host copies: T.to_host against cupy.asnumpy, interleaved, and what each step costs.

    PYTHONPATH=src python3 tools/small_d2h.py

Finds where the engine's small-copy time goes (issue 4: no slower than cupy.asnumpy at any size).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import cupy as cp  # noqa: E402

from autooffload import _transfer as T  # noqa: E402

KiB = 1024


def per_call(fn, loops: int) -> float:
    t0 = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - t0) / loops


def interleaved(fns: dict, loops: int, rounds: int = 41) -> dict:
    samples = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 else list(fns)[::-1]
        for k in order:
            samples[k].append(per_call(fns[k], loops))
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    cp.asarray(np.ones(4))
    print("size     cupy.asnumpy   T.to_host   ratio")
    for nbytes in (4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1024 * KiB, 4096 * KiB):
        d = cp.asarray(np.random.default_rng(1).random(nbytes // 8) + 0.5)
        assert np.array_equal(T.to_host(d), cp.asnumpy(d))
        loops = max(5, int(2e-3 / max(nbytes / 5e9, 15e-6)))
        m = interleaved({"cupy": lambda: cp.asnumpy(d), "engine": lambda: T.to_host(d)}, loops)
        print(f"{nbytes // KiB:5d} KiB  {m['cupy'] * 1e6:9.2f} us  {m['engine'] * 1e6:8.2f} us  {m['engine'] / m['cupy']:.3f}")
    d = cp.asarray(np.random.default_rng(1).random(512) + 0.5)
    h = np.empty(512)
    stream = cp.cuda.get_current_stream()
    steps = {
        "np.empty": lambda: np.empty((512,), np.float64, "C"),
        "h.ctypes.data": lambda: h.ctypes.data,
        "h.__array_interface__ ptr": lambda: h.__array_interface__["data"][0],
        "get_current_stream": cp.cuda.get_current_stream,
        "runtime.getDevice": cp.cuda.runtime.getDevice,
        "d.device": lambda: d.device,
        "d.flags": lambda: d.flags,
        "d.data.ptr": lambda: d.data.ptr,
        "memcpy 4 KiB (sync)": lambda: cp.cuda.runtime.memcpy(h.ctypes.data, d.data.ptr, 4096, 2),
        "memcpyAsync + sync": lambda: (cp.cuda.runtime.memcpyAsync(h.ctypes.data, d.data.ptr, 4096, 2, stream.ptr), stream.synchronize()),
    }
    print("\nsteps (per call):")
    for k, v in interleaved(steps, 2000, rounds=11).items():
        print(f"  {k:28s} {v * 1e9:9.0f} ns")


if __name__ == "__main__":
    main()
