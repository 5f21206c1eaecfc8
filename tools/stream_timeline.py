"""Where a streamed call's time goes (issue 15: streamed 1.36-1.51x the slowest stage at 1e8).

    PYTHONPATH=src python3 tools/stream_timeline.py [--n 1e8] [--repeats 7] [--out timeline.json]

On one pinned float64 array (``x *= 5`` in place), interleaved, medians:

* ``streamed``        ``@offload`` forced onto the GPU and streamed (AUTOOFFLOAD_STREAM=always).
* ``ideal Nst C``     the same pipeline issued from one thread with no waits at all: per chunk, on
                      stream ``i % N``, a DMA in, the kernel, a DMA out (raw ``memcpyAsync`` on
                      memory this tool registers itself), then one synchronize. What the hardware
                      gives this pipeline; the gap to ``streamed`` is ours.
* ``streamed no events``: the same without the CUDA events that time queued copies for the meter.
* ``streamed switch 0.2ms``: the same with Python's GIL switch interval at 0.2 ms (default 5 ms).
* ``H2D``, ``D2H``    one DMA of the whole array each way; ``both ways``: the two at once on two
                      streams (the link's bidirectional rate from registered memory).

Then one streamed call with CUDA events around every stage of every chunk, printed as a
timeline (ms from the first event): when each chunk's copy in, kernel and copy out ran on the
GPU, and when the host threads issued them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from seed_article import scale  # noqa: E402

from autooffload import _stream, _transfer, config, offload  # noqa: E402

H2D, D2H = 1, 2
MiB = 1 << 20


def sync() -> None:
    cp.cuda.Device().synchronize()


def registered(n: int) -> np.ndarray:
    a = np.empty(n)
    a[...] = 1.5
    cp.cuda.runtime.hostRegister(a.ctypes.data, a.nbytes, 0)
    return a


def ideal(host: np.ndarray, chunk_bytes: int, nstreams: int, bufs: dict) -> None:
    """The pipeline issued with no host waits: stream order alone keeps each slot's buffer safe."""
    streams = bufs.setdefault(("streams", nstreams), [cp.cuda.Stream(non_blocking=True) for _ in range(nstreams)])
    per = chunk_bytes // host.itemsize
    devs = bufs.setdefault(("devs", nstreams, per), [cp.empty(per) for _ in range(nstreams)])
    base = host.ctypes.data
    n = host.size
    for i, start in enumerate(range(0, n, per)):
        stop = min(n, start + per)
        s = streams[i % nstreams]
        d = devs[i % nstreams][: stop - start]
        nb = (stop - start) * host.itemsize
        cp.cuda.runtime.memcpyAsync(d.data.ptr, base + start * host.itemsize, nb, H2D, s.ptr)
        with s:
            d *= 5
        cp.cuda.runtime.memcpyAsync(base + start * host.itemsize, d.data.ptr, nb, D2H, s.ptr)
    for s in streams:
        s.synchronize()


def timeline(offloaded, x: np.ndarray) -> list[dict]:
    """One streamed call with events around each stage of each chunk."""
    rows: list[dict] = []
    t0 = time.perf_counter()
    origin = cp.cuda.Event()
    origin.record(cp.cuda.Stream.null)

    def stamp(kind: str, nbytes: int, fn, *a, **kw):
        s = cp.cuda.get_current_stream()
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        h0 = time.perf_counter() - t0
        e0.record(s)
        r = fn(*a, **kw)
        e1.record(s)
        rows.append({"kind": kind, "nbytes": nbytes, "host_issue": h0, "host_done": time.perf_counter() - t0,
                     "events": (e0, e1), "stream": s.ptr})
        return r

    real_timed_copy, real_run = _stream._timed_copy, _stream.run

    def timed_copy(meter, to_device, nbytes, copy, *a, **kw):
        return stamp("in" if to_device else "out", nbytes, copy, *a, **kw)

    def run(plan_, backend, call, *a, **kw):
        rows.append({"kind": "run()", "nbytes": 0, "host_issue": time.perf_counter() - t0, "host_done": 0.0,
                     "events": (origin, origin), "stream": 0})
        return real_run(plan_, backend, lambda args, kwargs: stamp("kernel", 0, call, args, kwargs), *a, **kw)

    _stream._timed_copy, _stream.run = timed_copy, run
    _stream.TIME_QUEUED_COPIES = False  # every copy in through _timed_copy, stamped here
    try:
        os.environ["AUTOOFFLOAD_STREAM"] = "always"
        with config(backend="cupy"):
            offloaded(x)
        sync()
    finally:
        _stream._timed_copy, _stream.run = real_timed_copy, real_run
        _stream.TIME_QUEUED_COPIES = True
    for r in rows:
        e0, e1 = r.pop("events")
        r["gpu_start"] = cp.cuda.get_elapsed_time(origin, e0) / 1e3
        r["gpu_end"] = cp.cuda.get_elapsed_time(origin, e1) / 1e3
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=float, default=1e8)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    n = int(a.n)
    x = np.empty(n)
    x[...] = 1.5
    offloaded = offload(scale)
    os.environ["AUTOOFFLOAD_STREAM"] = "never"
    with config(backend="cupy"):
        for _ in range(3):
            offloaded(x)  # the pin-down cache pins x on reuse
    print(f"x pinned by the cache: {_transfer.pinned(x)}")
    # First, before this tool makes streams of its own: streams share the GPU's hardware queues
    # (CUDA_DEVICE_MAX_CONNECTIONS, 8 by default), so more streams can add false dependencies.
    rows = timeline(offloaded, x)
    print(f"CUDA_DEVICE_MAX_CONNECTIONS={os.environ.get('CUDA_DEVICE_MAX_CONNECTIONS', 'unset (8)')}")
    y = registered(n)
    z = registered(n)
    da, db = cp.empty(n), cp.empty(n)
    s1, s2 = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    bufs: dict = {}

    def streamed():
        os.environ["AUTOOFFLOAD_STREAM"] = "always"
        with config(backend="cupy"):
            offloaded(x)

    def h2d():
        cp.cuda.runtime.memcpyAsync(da.data.ptr, y.ctypes.data, y.nbytes, H2D, s1.ptr)
        s1.synchronize()

    def d2h():
        cp.cuda.runtime.memcpyAsync(y.ctypes.data, db.data.ptr, y.nbytes, D2H, s2.ptr)
        s2.synchronize()

    def both():
        cp.cuda.runtime.memcpyAsync(da.data.ptr, y.ctypes.data, y.nbytes, H2D, s1.ptr)
        cp.cuda.runtime.memcpyAsync(z.ctypes.data, db.data.ptr, z.nbytes, D2H, s2.ptr)
        s1.synchronize()
        s2.synchronize()

    def streamed_switch():
        # Python's GIL switch interval is 5 ms: a copy thread woken by its DMA's end may wait
        # that long for the GIL while another thread runs Python code.
        before = sys.getswitchinterval()
        sys.setswitchinterval(2e-4)
        try:
            streamed()
        finally:
            sys.setswitchinterval(before)

    def streamed_no_events():
        _stream.TIME_QUEUED_COPIES = False
        try:
            streamed()
        finally:
            _stream.TIME_QUEUED_COPIES = True

    fns = {"streamed": streamed, "streamed no events": streamed_no_events, "streamed switch 0.2ms": streamed_switch, "H2D": h2d, "D2H": d2h, "both ways": both}
    for ns in (2, 3, 4):
        for c in (16, 32, 64, 128):
            if ns != 3 and c != 64:
                continue
            fns[f"ideal {ns}st {c}MiB"] = (lambda ns=ns, c=c: ideal(y, c * MiB, ns, bufs))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
        sync()
    for r in range(a.repeats):
        names = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in names:
            sync()
            t = time.perf_counter()
            fns[k]()
            sync()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    nbytes = x.nbytes
    print(f"n={n:.0e} float64 ({nbytes / 1e6:.0f} MB), x *= 5 in place; medians of {a.repeats}, interleaved")
    for k, v in med.items():
        print(f"  {k:18s} {v * 1e3:8.2f} ms  {nbytes / v / 1e9:6.1f} GB/s per direction")
    slowest = max(med["H2D"], med["D2H"])
    print(f"  streamed / slowest DMA {med['streamed'] / slowest:.2f}; "
          f"best ideal / slowest DMA {min(v for k, v in med.items() if k.startswith('ideal')) / slowest:.2f}")
    print("timeline of one streamed call (ms from its first event; host = when the thread issued it):")
    print(f"  {'stage':7s} {'stream':>14s} {'host issue':>10s} {'host done':>10s} {'gpu start':>10s} {'gpu end':>10s} {'MB':>6s}")
    for r in rows:
        print(f"  {r['kind']:7s} {r['stream'] % 10**14:14d} {r['host_issue'] * 1e3:10.2f} {r['host_done'] * 1e3:10.2f} "
              f"{r['gpu_start'] * 1e3:10.2f} {r['gpu_end'] * 1e3:10.2f} {r['nbytes'] / 1e6:6.1f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"n": n, "medians_s": med, "timeline": rows}, indent=1))
    for arr in (y, z):
        cp.cuda.runtime.hostUnregister(arr.ctypes.data)


if __name__ == "__main__":
    main()
