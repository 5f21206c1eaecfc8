"""Why a staged first copy of 64-256 MiB is slower per byte than one of 1 GiB (issue 14).

    PYTHONPATH=src python3 tools/staged_probe.py [--repeats 7]

With the active profile's copy tuning (applied once; nothing is reconfigured between timed
calls: that restarts the engine's pinned pool and threads), per size, interleaved, medians:

* ``staged``            the engine's ``to_device`` of an array it has not pinned
                        (``unpinned_copies``), as a first copy meets it.
* ``host copy alone``   the native host copy of every piece into pinned memory (no DMA).
* ``DMA alone``         the DMA of every piece from pinned memory (no host copy).
* ``host copy under DMA``: the host copy alone, timed while an unrelated 2 GiB DMA from other
                        pinned memory runs: whether a DMA reading host memory slows the host copy
                        (they share the memory bus).
* ``DMA under host copy``: the DMA alone, timed while another thread host-copies 1 GiB.

* ``staged, plain stores`` / ``staged, non-temporal``: the same with the knobs
  ``h2d_nontemporal`` and ``d2h_nontemporal`` off and both on (tunings swapped in for the call:
  the pool and threads stay);
* ``out`` and its three variants: ``to_host(d, out=h)`` of an unpinned array, likewise.

Then one piece of 1-32 MiB: the native host copy, plain and non-temporal, a DMA right after
each, and a DMA of pinned memory no copy wrote, each with a line ``a + n / B`` fitted through it.

Staged near the halves' max: they overlap; near their sum: they do not. The "under" rows say
whether that is the engine's doing or the memory bus's. Also: the buffers each staged copy got.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import cupy as cp
import numpy as np

from dataclasses import replace

from autooffload import _transfer as T
from autooffload._profiles import active_profile

MiB = 1 << 20


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    active_profile()  # its copy tuning, once
    t = T._tuning()
    print(f"tuning ({T.tuning_source()}): threads {t.threads}, chunk_bytes {t.chunk_bytes >> 20} MiB, staged "
          f"{t.staged_min >> 20}-{t.staged_max >> 20} MiB in {t.staged_piece_count} pieces, min_part_bytes "
          f"{t.min_part_bytes >> 10} KiB, max_buffers {t.max_buffers}")
    sizes = [64 * MiB, 128 * MiB, 256 * MiB, 1024 * MiB]
    plain = replace(t, h2d_nontemporal=0, d2h_nontemporal=0)
    streaming_stores = replace(t, h2d_nontemporal=1, d2h_nontemporal=1)
    pinned = cp.cuda.alloc_pinned_memory(max(sizes))
    other = cp.cuda.alloc_pinned_memory(2048 * MiB)  # the unrelated DMA's and host copy's memory
    other_src = np.empty(1024 * MiB // 8)
    other_src[...] = 2.5
    dev = cp.empty(max(sizes), dtype=np.uint8)
    dev_other = cp.empty(2048 * MiB, dtype=np.uint8)
    stream, side = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    seen: list[tuple[int, int]] = []
    real_two = T._two_buffers

    def two_buffers(pool, pieces):
        bufs = real_two(pool, pieces)
        seen.append((len(bufs), pieces))
        return bufs

    T._two_buffers = two_buffers
    for n in sizes:
        h = np.empty(n // 8)
        h[...] = 1.25
        src = h.ctypes.data
        pieces = T.staged_pieces(n, t) if T._staged(n, t) else [(0, n)]

        d = cp.empty(n // 8)
        d[...] = 0.75

        def under(tuning, copy):
            def f():
                T._TUNING = tuning  # the same pool sizes and threads: nothing restarts
                try:
                    with stream, T.unpinned_copies():
                        copy()
                    stream.synchronize()
                finally:
                    T._TUNING = t
            return f

        staged = under(t, lambda: T.to_device(h))

        def host_only():
            for off, m in pieces:
                T._parcopy.copy(pinned.ptr + off, src + off, m, t.threads, t.min_part_bytes)

        def dma_only():
            for off, m in pieces:
                cp.cuda.runtime.memcpyAsync(dev.data.ptr + off, pinned.ptr + off, m, 1, stream.ptr)
            stream.synchronize()

        def timed_during(begin, work):
            """``work`` timed alone while ``begin()``'s background runs; ``begin`` returns its wait."""
            def f():
                wait = begin()
                start = time.perf_counter()
                work()
                took = time.perf_counter() - start
                wait()
                return took
            return f

        def a_dma():  # an unrelated 2 GiB DMA from other pinned memory
            cp.cuda.runtime.memcpyAsync(dev_other.data.ptr, other.ptr, 2048 * MiB, 1, side.ptr)
            return side.synchronize

        def a_host_copy():  # another thread host-copying 1 GiB
            go = threading.Event()

            def copier():
                go.set()
                T._parcopy.copy(other.ptr, other_src.ctypes.data, 1024 * MiB, t.threads, t.min_part_bytes)
            th = threading.Thread(target=copier)
            th.start()
            go.wait()
            return th.join

        fns = {"staged": staged, "staged, plain stores": under(plain, lambda: T.to_device(h)),
               "staged, non-temporal": under(streaming_stores, lambda: T.to_device(h)),
               "out": under(t, lambda: T.to_host(d, out=h)), "out, plain stores": under(plain, lambda: T.to_host(d, out=h)),
               "out, non-temporal": under(streaming_stores, lambda: T.to_host(d, out=h)),
               "host copy alone": host_only, "DMA alone": dma_only,
               "host copy under DMA": timed_during(a_dma, host_only), "DMA under host copy": timed_during(a_host_copy, dma_only)}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for f in fns.values():
            f()
        seen.clear()
        for r in range(a.repeats):
            for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
                cp.cuda.Device().synchronize()
                start = time.perf_counter()
                took = fns[k]()
                cp.cuda.Device().synchronize()
                times[k].append(took if isinstance(took, float) else time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        hc, dm = med["host copy alone"], med["DMA alone"]
        print(f"{n >> 20} MiB ({len(pieces)} pieces of {pieces[0][1] >> 20} MiB): " + ", ".join(
            f"{k} {v * 1e3:.2f} ms ({n / v / 1e9:.1f} GB/s)" for k, v in med.items()))
        print(f"   staged / (host copy + DMA) {med['staged'] / (hc + dm):.2f}, staged / max {med['staged'] / max(hc, dm):.2f}; "
              f"(buffers, pieces) of the staged copies: {sorted(set(seen))}")
    T._two_buffers = real_two
    piece_cost(t, pinned, dev, stream, a.repeats)



def piece_cost(t, pinned, dev, stream, repeats: int) -> None:
    """One piece, 1-32 MiB: the native host copy into pinned memory, plain and non-temporal, and a
    DMA of it right after each (the copy untimed), against a DMA of pinned memory no copy wrote;
    a straight line a + n / B fitted through each."""
    src = np.empty(32 * MiB // 8)
    src[...] = 1.5
    sizes = [MiB, 2 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB]

    def host(n, nt):
        T._parcopy.copy(pinned.ptr, src.ctypes.data, n, t.threads, t.min_part_bytes, nt)

    def dma(n, at=0):
        cp.cuda.runtime.memcpyAsync(dev.data.ptr, pinned.ptr + at, n, 1, stream.ptr)
        stream.synchronize()

    fns = {}  # (kind, n) -> (untimed setup or None, timed)
    for n in sizes:
        fns[("host copy", n)] = (None, lambda n=n: host(n, False))
        fns[("host copy, non-temporal", n)] = (None, lambda n=n: host(n, True))
        fns[("DMA after a host copy", n)] = (lambda n=n: host(n, False), lambda n=n: dma(n))
        fns[("DMA after a non-temporal host copy", n)] = (lambda n=n: host(n, True), lambda n=n: dma(n))
        fns[("DMA of memory no copy wrote", n)] = (None, lambda n=n: dma(n, 512 * MiB))
    times: dict = {k: [] for k in fns}
    for setup, f in fns.values():
        if setup:
            setup()
        f()
    for r in range(repeats * 3):
        for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            setup, f = fns[k]
            if setup:
                setup()
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    for kind in dict.fromkeys(k for k, _ in fns):
        xs = np.array(sizes, dtype=float)
        ys = np.array([statistics.median(times[(kind, n)]) for n in sizes])
        slope, a = np.polyfit(xs, ys, 1)
        print(f"one piece, {kind}: " + ", ".join(f"{n >> 20} MiB {y * 1e3:.3f} ms" for n, y in zip(sizes, ys))
              + f"; fit a = {a * 1e6:.0f} us + n / {1 / slope / 1e9:.1f} GB/s")

if __name__ == "__main__":
    main()
