"""Where a 256 KiB - 4 MiB copy out into a new array spends its time beyond cupy.asnumpy's (issue 14,
target (b)). One call of each variant per round, order reversed each round, the current stream
synchronized around each call (as benchmarks/transfer.py times them), medians:

* ``cupy``           cupy.asnumpy(d) (CuPy 14: np.empty, cudaMemcpyAsync on the current stream, synchronize)
* ``engine``         _transfer.to_host(d)
* ``engine, no cache`` to_host with _pinned_copy answering "any path" (no pin-down cache / kept-result lookups)
* ``raw memcpy``     np.empty + cudaMemcpy (what _d2h_direct calls on the legacy stream)
* ``raw async+sync`` np.empty + cudaMemcpyAsync(stream) + stream.synchronize() (what CuPy calls)

    PYTHONPATH=src python3 tools/d2h_decomp.py [--rounds 301]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import cupy as cp  # noqa: E402

from autooffload import _transfer as T  # noqa: E402
from autooffload._profiles import active_profile  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=301)
    a = ap.parse_args()
    active_profile()  # the shipped profile's copy tuning, as transfer.py runs it
    stream = cp.cuda.get_current_stream()
    rt = cp.cuda.runtime
    print(f"stream ptr {stream.ptr}; d2h_direct_max {T._tuning().d2h_direct_max}; pin_reused_min {T._tuning().pin_reused_min}")
    keep = np.ones(8 << 20)  # something pinned, as in transfer.py (its engine columns): the cache is active
    for _ in range(3):
        T.to_device(keep)
    real = T._pinned_copy

    def no_cache(d):
        T._pinned_copy = lambda *args, **kw: T._ANY_PATH
        try:
            return T.to_host(d)
        finally:
            T._pinned_copy = real

    def raw_memcpy(d):
        h = np.empty(d.shape, d.dtype)
        rt.memcpy(h.ctypes.data, d.data.ptr, d.nbytes, 2)
        return h

    def raw_async(d):
        h = np.empty(d.shape, d.dtype)
        rt.memcpyAsync(h.ctypes.data, d.data.ptr, d.nbytes, 2, stream.ptr)
        stream.synchronize()
        return h

    for n in (256 << 10, 1 << 20, 2 << 20, 4 << 20):
        d = cp.asarray(np.random.default_rng(1).random(n // 8) + 0.5)
        ref = cp.asnumpy(d)
        fns = {"cupy": lambda: cp.asnumpy(d), "engine": lambda: T.to_host(d), "engine, no cache": lambda: no_cache(d),
               "raw memcpy": lambda: raw_memcpy(d), "raw async+sync": lambda: raw_async(d)}
        for k, f in fns.items():
            assert np.array_equal(f(), ref), k
        s = {k: [] for k in fns}
        for r in range(a.rounds):
            for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                stream.synchronize()
                t0 = time.perf_counter()
                fns[k]()
                stream.synchronize()
                s[k].append(time.perf_counter() - t0)
        m = {k: statistics.median(v) * 1e6 for k, v in s.items()}
        print(f"{n >> 10:5d} KiB: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items())
              + f" us | engine/cupy {m['engine'] / m['cupy']:.3f}, memcpy/async {m['raw memcpy'] / m['raw async+sync']:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
