"""What a device->host copy into a kept, pinned result block costs beyond its one DMA, on the CPU.

    PYTHONPATH=src python3 tools/kept_result_cost.py
    PYTHONPATH=/path/to/other/checkout/src python3 tools/kept_result_cost.py   # A/B: alternate processes

The copy engine runs on the fake CuPy of tests/test_transfer.py (its DMA is a memmove), so what
differs between the columns is the engine's and the result pool's own Python: ``to_host(d)`` of
1 MiB into a kept block already pinned (a loop's result from its third call on), the same DMA
and synchronize written by hand, and the pool's hand-out and give-back alone
(``_hostmem.results.empty`` of a result that dies at once). On the H200 (session 12,
benchmarks/results/h200-session12/transfer.run4.md) a loop's kept results took 56-110 us more
than one DMA of their bytes at 1-16 MiB. Each figure is the fastest of 41 rounds of 2000 calls.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import test_transfer  # noqa: E402
from _bench import fastest_per_call_us  # noqa: E402

T = test_transfer.T


def main() -> None:
    fake = test_transfer.FakeCupy()
    T.release_pinned_pool()
    T._cupy = fake
    T._configure(d2h_direct_max=64 * 1024, pin_results_min=1 << 20)
    h = np.random.default_rng(0).standard_normal(1 << 17)  # 1 MiB
    d = T.to_device(h)
    for _ in range(5):
        T.to_host(d)  # the block is pinned at its second use
    kept = T.to_host(d)
    assert T._hostmem.results.is_pinned(kept.ctypes.data, h.nbytes), "the kept block is not pinned"
    del kept
    out = np.empty_like(h)
    runtime, stream, src = fake.cuda.runtime, fake.current_stream, d.data.ptr

    def by_hand():
        runtime.memcpyAsync(out.ctypes.data, src, h.nbytes, 2, stream.ptr)
        stream.synchronize()

    variants = {"to_host into a kept pinned block": lambda: T.to_host(d), "DMA + synchronize by hand": by_hand,
                "pool hand-out and give-back": lambda: T._hostmem.results.empty(h.shape, h.dtype)}
    print("  ".join(f"{k} {us:.2f} us" for k, us in fastest_per_call_us(variants).items()))


if __name__ == "__main__":
    main()
