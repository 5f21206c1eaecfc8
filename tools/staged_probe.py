"""Why a staged first copy of 64-256 MiB is slower per byte than one of 1 GiB (issue 14).

    PYTHONPATH=src python3 tools/staged_probe.py [--repeats 7]

Per size, interleaved, medians, inside ``unpinned_copies`` (a first copy: nothing pinned on
reuse): the engine's staged ``to_device`` as tuned, and with 8 and 16 pieces; its two halves
alone (the native host copy of every piece into pinned memory; the DMA of every piece from it);
and how many pinned buffers and pieces each staged copy had. Staged time near the halves'
sum means they did not overlap (one buffer, or the host memory bus shared by both); near
their max means they did.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cupy as cp
import numpy as np

from autooffload import _transfer as T

MiB = 1 << 20


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    sizes = [64 * MiB, 256 * MiB, 1024 * MiB]
    pinned = cp.cuda.alloc_pinned_memory(max(sizes))
    dev = cp.empty(max(sizes), dtype=np.uint8)
    stream = cp.cuda.get_current_stream()
    seen: list[tuple[int, int]] = []
    real_two = T._two_buffers

    def two_buffers(pool, pieces):
        bufs = real_two(pool, pieces)
        seen.append((len(bufs), pieces))
        return bufs

    T._two_buffers = two_buffers
    base = T._tuning()
    print(f"tuning: threads {base.threads}, chunk_bytes {base.chunk_bytes >> 20} MiB, staged_piece_count "
          f"{base.staged_piece_count}, min_part_bytes {base.min_part_bytes >> 10} KiB, max_buffers {base.max_buffers}")
    for n in sizes:
        h = np.empty(n // 8)
        h[...] = 1.25
        src = h.ctypes.data
        pieces = T.staged_pieces(n, base)

        def staged(count=None):
            def f():
                if count is not None:
                    T._configure(staged_piece_count=count)
                try:
                    with T.unpinned_copies():
                        T.to_device(h)
                    stream.synchronize()
                finally:
                    if count is not None:
                        T._configure(staged_piece_count=base.staged_piece_count)
            return f

        def host_only():
            for off, m in pieces:
                T._parcopy.copy(pinned.ptr + off, src + off, m, base.threads, base.min_part_bytes)

        def dma_only():
            for off, m in pieces:
                cp.cuda.runtime.memcpyAsync(dev.data.ptr + off, pinned.ptr + off, m, 1, stream.ptr)
            stream.synchronize()

        fns = {"staged": staged(), "staged 8 pieces": staged(8), "staged 16 pieces": staged(16),
               "host copy alone": host_only, "DMA alone": dma_only}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for f in fns.values():
            f()
        seen.clear()
        for r in range(a.repeats):
            for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
                cp.cuda.Device().synchronize()
                t = time.perf_counter()
                fns[k]()
                cp.cuda.Device().synchronize()
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        hc, dm = med["host copy alone"], med["DMA alone"]
        print(f"{n >> 20} MiB ({len(pieces)} pieces of {pieces[0][1] >> 20} MiB): " + ", ".join(
            f"{k} {v * 1e3:.2f} ms ({n / v / 1e9:.1f} GB/s)" for k, v in med.items()))
        print(f"   staged / (host copy + DMA) {med['staged'] / (hc + dm):.2f}, staged / max {med['staged'] / max(hc, dm):.2f}; "
              f"buffers per staged copy (buffers, pieces): {sorted(set(seen))}")
    T._two_buffers = real_two


if __name__ == "__main__":
    main()
