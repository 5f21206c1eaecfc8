"""Host <-> device copy rates: CuPy's default, the pinned-memory limit, and autooffload's engine.

    PYTHONPATH=src python3 benchmarks/transfer.py [--machine h100] [--max-bytes 4GiB] [--sweep]

Measured side by side in one run, for sizes from 4 KiB to 4 GiB (capped by free host and GPU
memory), both directions:

* ``cupy``   ``cupy.asarray(h)`` / ``cupy.asnumpy(d)`` from / to an ordinary (pageable) array
           (its own: never one the engine has pinned);
* ``pinned`` ``cudaMemcpyAsync`` from / to a page-locked host buffer: the link's limit;
* ``engine`` ``autooffload._transfer.to_device`` / ``to_host`` from / to an ordinary array;
* ``engine out=`` ``to_host(d, out=a)`` into an existing (already touched) array: no page faults;
* ``staged`` the engine as for memory it has not seen before (``_transfer.unpinned_copies``):
  ``to_device(h)`` and ``to_host(d, out=a)`` staged through pinned buffers every time. The
  columns above are the engine as a loop meets it: from the copy of the same array that the
  tuning's ``pin_after_copies`` names (the second by default; copied that often before the
  rounds), or the second use of a kept result, its memory is pinned in place and each copy is
  one DMA (``_pincache.py``); ``staged`` is what a first copy costs;
* ``engine fresh`` ``to_host(d, out=a)`` into a new array ``a`` each call: every page of the
  result faults on first touch (a program's first result of that size).

Every call is warm (one untimed call first) and synchronized (the current stream is synchronized
after it). At each size all methods run interleaved: every round times one call of each, in the
opposite order from the round before (at least 7 rounds, or until 0.2 s per method), and the
median of each is kept, so a noisy machine's drifts hit all columns alike; the last column is
the engine's time over cupy's (below 1: faster), and the table ends with every size where the
engine was slower. Data is random, never zeros; each engine result is checked bit for bit. GB/s = 1e9 bytes / s of
payload. Device->host calls return a new host array, as ``cupy.asnumpy`` does; the engine's
comes from the memory of results already dropped when there is some (``_hostmem.py``), which
is the case from the second call on in a loop: ``engine fresh`` shows the first call.

The machine's own limit is measured in the same run: ``host_bound`` (by thread count, at the
largest size: multi-threaded memcpy pageable -> pinned, pinned -> warm pageable, pinned -> fresh
pageable, through the engine's native copy pool), and at each size the two host copies at the
engine's thread count interleaved with the other methods (``host in``: pageable -> pinned,
``host out``: pinned -> warm pageable). Every engine figure is shown against
``min(pinned DMA, host copy)`` of its row: "% of bound". The engine runs with the active
profile's copy tuning (``autooffload calibrate`` searches it; ``--default-tuning``: today's
defaults). The table ends with the monotonicity check: 64 MiB - 4 GiB, a size more than 15%
slower per byte than the next larger one is named.

Writes ``<out-dir>/<machine>/transfer.json`` (date, GPU, versions, tuning, all numbers) and
``transfer.md`` (the tables). ``--sweep`` first times the engine's paths against each other
by size (the driver's, the staged one, the workers; interleaved) and writes
``transfer-sweep.json``; ``--sequential`` measures each method's calls one after another.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from autooffload import _transfer as T  # noqa: E402
from autooffload._cores import usable_cores  # noqa: E402

KiB, MiB, GiB = 1024, 1024**2, 1024**3
SIZES = [4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB, 256 * MiB,
         1 * GiB, 4 * GiB]


def parse_bytes(s: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMG]i?B?)?\s*", s, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (e.g. 4GiB, 64MiB, 4096)")
    mult = {"": 1, "K": KiB, "M": MiB, "G": GiB}[(m.group(2) or "")[:1].upper()]
    return int(float(m.group(1)) * mult)


def fmt_size(n: int) -> str:
    for unit, m in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= m and n % m == 0:
            return f"{n // m} {unit}"
    return f"{n} B"


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "unknown"


def median_time(fn, sync, big: bool, min_total: float = 0.2, max_reps: int = 300, setup=None) -> float:
    """Median seconds of ``fn()`` + sync, after one untimed call; ``setup()`` runs untimed before each."""
    return interleaved_medians({"fn": (fn, setup)}, sync, big, min_total=min_total, max_rounds=max_reps)["fn"]


def interleaved_medians(calls: dict, sync, big: bool, min_total: float = 0.2, max_rounds: int = 400,
                        clock=time.perf_counter) -> dict:
    """Median seconds of each ``calls[name] = (fn, setup)``, measured round-robin.

    Each round times one synchronized call of every method, in the opposite order from the
    round before, so drifts of a noisy machine (other tenants, clock boost, memory ballooning)
    hit every method alike and the medians compare side by side. One untimed call of each
    first; ``setup`` (or None) runs untimed before each call. At least 7 rounds (3 when ``big``),
    then until ``min_total`` seconds per method have passed or ``max_rounds``.
    """
    names = list(calls)
    for fn, setup in calls.values():
        if setup is not None:
            setup()
        fn()
        sync()
    samples = {n: [] for n in names}
    min_rounds = 3 if big else 7
    start = clock()
    rounds = 0
    while True:
        for n in names if rounds % 2 == 0 else reversed(names):
            fn, setup = calls[n]
            if setup is not None:
                setup()
            sync()
            t0 = clock()
            fn()
            sync()
            samples[n].append(clock() - t0)
        rounds += 1
        if rounds >= max_rounds or (rounds >= min_rounds and clock() - start >= min_total * len(names)):
            break
    return {n: statistics.median(v) for n, v in samples.items()}


def random_bytes(nbytes: int, rng) -> np.ndarray:
    """Random float64 data (never zeros), nbytes long; tiled from a block of odd length so that
    a misplaced chunk would still be caught by the bit-for-bit checks."""
    n = nbytes // 8
    block = rng.random(min(n, (8 * MiB) // 8 + 4099)) + 0.5
    return np.resize(block, n)


def bits_equal(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


def host_copy_rates(nbytes: int) -> dict:
    """Diagnostics: np.copyto rate of payload with k threads, into touched and into fresh pages."""
    src = np.resize(np.arange(4099, dtype=np.float64) + 1, nbytes // 8)
    dst = np.empty_like(src)
    dst[...] = 1.0
    out = {}
    for k in (1, 2, 4, 8, 12, 16):
        if k > usable_cores():
            continue
        parts = np.array_split(np.arange(src.size), k)
        bounds = [(p[0], p[-1] + 1) for p in parts if p.size]
        with ThreadPoolExecutor(k) as ex:
            def run(d):
                list(ex.map(lambda b: np.copyto(d[b[0]:b[1]], src[b[0]:b[1]]), bounds))
            t = median_time(lambda: run(dst), lambda: None, big=True)
            tf = median_time(lambda: run(np.empty_like(src)), lambda: None, big=True)
        out[str(k)] = {"touched_GBps": nbytes / t / 1e9, "fresh_GBps": nbytes / tf / 1e9}
    # Does a fresh numpy array get transparent huge pages here?
    probe = np.empty(nbytes // 8)
    probe[...] = 1.0
    try:
        with open("/proc/self/smaps_rollup") as f:
            out["AnonHugePages_after_touching_numpy_array"] = [ln.strip() for ln in f if ln.startswith("AnonHugePages")]
        with open("/sys/kernel/mm/transparent_hugepage/defrag") as f:
            out["thp_defrag"] = f.read().strip()
    except OSError:
        pass
    return out


class Bench:
    def __init__(self, max_bytes: int):
        import cupy as cp

        self.cp = cp
        self.rng = np.random.default_rng(12345)
        self.stream = cp.cuda.get_current_stream()
        self.sync = self.stream.synchronize
        self.pinned_n = max_bytes
        self.pinned_ptr = cp.cuda.runtime.hostAlloc(max_bytes, 0)
        import ctypes

        self.pinned = np.ctypeslib.as_array((ctypes.c_uint8 * max_bytes).from_address(self.pinned_ptr))
        self.pinned[...] = 7  # touch
        self._data: dict[int, np.ndarray] = {}

    def close(self):
        self.cp.cuda.runtime.freeHost(self.pinned_ptr)

    def data(self, nbytes: int) -> np.ndarray:
        if nbytes not in self._data:
            self._data = {nbytes: random_bytes(nbytes, self.rng)}  # keep one size at a time
        return self._data[nbytes]

    def measure(self, nbytes: int, methods=("cupy", "pinned", "engine", "engine_out", "staged", "host"),
                sequential: bool = False) -> dict:
        """GB/s of each method at ``nbytes``, all calls interleaved round-robin (see
        ``interleaved_medians``), so that the columns of a row compare side by side;
        ``sequential``: each method's calls one after another instead (diagnostics: what the
        other methods' memory traffic costs the engine)."""
        cp, sync = self.cp, self.sync
        big = nbytes >= 2 * GiB
        h = self.data(nbytes)
        # Engine correctness at this size (both directions), outside the timings.
        d = T.to_device(h)
        ok = bits_equal(T.to_host(d), h)
        calls = {}  # (method, direction) -> (fn, setup)
        d_dst = dst = None
        if "cupy" in methods:
            ok = ok and bits_equal(cp.asnumpy(d), h)
            # An array of its own: the engine pins ``h`` once it is copied again (_pincache.py), and
            # cupy.asarray from that memory skips the driver's staging as no plain array does
            # (session 10: 19.7 / 35.2 GB/s at 1 / 4 MiB where plain CuPy makes 6-8).
            h_cupy = h.copy()
            calls["cupy", "h2d"] = (lambda: cp.asarray(h_cupy), None)
            calls["cupy", "d2h"] = (lambda: cp.asnumpy(d), None)
        if "pinned" in methods:
            rt, stream_ptr, pinned_ptr = cp.cuda.runtime, self.stream.ptr, self.pinned_ptr
            d_dst = cp.empty(h.size, h.dtype)
            calls["pinned", "h2d"] = (lambda: rt.memcpyAsync(d_dst.data.ptr, pinned_ptr, nbytes, 1, stream_ptr), None)
            calls["pinned", "d2h"] = (lambda: rt.memcpyAsync(pinned_ptr, d.data.ptr, nbytes, 2, stream_ptr), None)
        # The engine columns are a loop's copies: its arrays copied until the pin-down cache has
        # pinned them (at the copy the tuning's pin_after_copies names), before the rounds.
        reuse = T._tuning().pin_after_copies
        if "engine" in methods:
            for _ in range(reuse):
                T.to_device(h)
                T.to_host(d)  # a kept result block, pinned at its pin_after_copies-th use
            calls["engine", "h2d"] = (lambda: T.to_device(h), None)
            calls["engine", "d2h"] = (lambda: T.to_host(d), None)
            # Into new memory every call, whose pages fault on first touch (a program's first
            # result of that size). Not by releasing the kept results before each call: that
            # also unpinned the block the "engine" column reuses, which then paid the pinning
            # every round (24.9 GB/s at 1 GiB in session 7's run 2).
            fresh: list = []
            calls["engine_fresh", "d2h"] = (lambda: T.to_host(d, out=fresh.pop()), lambda: fresh.append(np.empty_like(h)))
        if "engine_out" in methods:
            dst = np.ones_like(h)
            for _ in range(reuse):
                T.to_host(d, out=dst)
            calls["engine_out", "d2h"] = (lambda: T.to_host(d, out=dst), None)
        sdst = hs = None
        alt_dsts: list = []
        if "staged" in methods:
            # Arrays of their own, never pinned (copied only inside unpinned_copies): as a first
            # copy meets them. h itself is pinned by the engine columns' calls.
            hs, sdst = h.copy(), np.ones_like(h)

            def staged(fn):
                def call():
                    with T.unpinned_copies():
                        return fn()
                return call

            ok = ok and bits_equal(staged(lambda: T.to_device(hs))().get(), h)
            calls["staged", "h2d"] = (staged(lambda: T.to_device(hs)), None)
            calls["staged", "d2h"] = (staged(lambda: T.to_host(d, out=sdst)), None)
            # STAGED_ALT="k=v,k=v;k=v": a twin of the staged column per spec, in the same rounds, with
            # those knobs over the tuning (swapped in for the call, as run_sweep does; knobs that size
            # the pool or the threads would make a second pool: leave those out).
            for j, spec in enumerate([x for x in os.environ.get("STAGED_ALT", "").split(";") if x.strip()], 1):
                alt = replace(T._tuning(), **{k.strip(): parse_bytes(v) for k, v in (kv.split("=") for kv in spec.split(","))})

                def under(fn, alt=alt):
                    def call():
                        base, T._TUNING = T._TUNING, alt
                        try:
                            with T.unpinned_copies():
                                return fn()
                        finally:
                            T._TUNING = base
                    return call

                adst = np.ones_like(h)
                alt_dsts.append(adst)
                ok = ok and bits_equal(under(lambda: T.to_device(hs))().get(), h)
                calls[f"staged_alt{j}", "h2d"] = (under(lambda: T.to_device(hs)), None)
                calls[f"staged_alt{j}", "d2h"] = (under(lambda adst=adst: T.to_host(d, out=adst)), None)
        if "host" in methods:
            # The host copies a staged copy cannot avoid, on the engine's threads: pageable ->
            # pinned ("h2d") and pinned -> warm pageable ("d2h"; into dst, already touched).
            warm = dst if dst is not None else np.ones_like(h)
            threads = T._tuning().threads
            src_addr, warm_addr, pinned_ptr = h.ctypes.data, warm.ctypes.data, self.pinned_ptr
            calls["host", "h2d"] = (lambda: host_memcpy(pinned_ptr, src_addr, nbytes, threads), None)
            calls["host", "d2h"] = (lambda: host_memcpy(warm_addr, pinned_ptr, nbytes, threads), None)
        if sequential:
            medians = {k: interleaved_medians({k: v}, sync, big)[k] for k, v in calls.items()}
        else:
            medians = interleaved_medians(calls, sync, big)
        if dst is not None:
            ok = ok and bits_equal(dst, h)
        if sdst is not None:
            ok = ok and bits_equal(sdst, h)
        for adst in alt_dsts:
            ok = ok and bits_equal(adst, h)
        res = {}
        for (m, direction), sec in medians.items():
            res.setdefault(m, {})[f"{direction}_s"] = sec
            res[m][f"{direction}_GBps"] = nbytes / sec / 1e9
        res["engine_bit_exact"] = bool(ok)
        if "host" in res and "pinned" in res:
            res["bound"] = {f"{dr}_GBps": min(res["pinned"][f"{dr}_GBps"], res["host"][f"{dr}_GBps"]) for dr in ("h2d", "d2h")}
        del d, d_dst, dst, sdst, hs
        cp.get_default_memory_pool().free_all_blocks()
        return res


def host_memcpy(dst: int, src: int, nbytes: int, threads: int) -> None:
    """memcpy between raw addresses on ``threads`` threads: the engine's native pool (what its
    staged path copies with), else np.copyto over Python threads."""
    if T._parcopy is not None:
        T._parcopy.copy(dst, src, nbytes, threads, 256 * KiB)
        return
    import ctypes

    d = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(dst))
    s_ = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(src))
    bounds = np.linspace(0, nbytes, max(1, threads) + 1).astype(int)
    with ThreadPoolExecutor(max(1, threads)) as ex:
        list(ex.map(lambda ab: np.copyto(d[ab[0]:ab[1]], s_[ab[0]:ab[1]]), zip(bounds, bounds[1:])))


def host_bound_table(bench: "Bench", nbytes: int) -> dict:
    """GB/s of host memcpy by thread count at ``nbytes`` (``_copytune.host_bound``, native pool)."""
    from autooffload import _copytune

    eng = _copytune.Engine(
        to_device=T.to_device, to_host=T.to_host, sync=bench.sync, configure=lambda k: None, defaults=dict,
        cores=usable_cores(), memcpy=(lambda dst, src, n, k: host_memcpy(dst, src, n, k)),
        alloc_pinned=lambda n: (bench.pinned[:n], lambda: None),
    )
    return _copytune.host_bound(eng, nbytes, reps=3)


def monotonicity(rows: list[dict], lo: int = 64 * MiB, hi: int = 4 * GiB, tolerance: float = 0.15) -> list[str]:
    """Sizes in [lo, hi] more than ``tolerance`` slower per byte than the next larger size, per
    engine column, e.g. ['256 MiB h2d: 22% slower per byte than 1 GiB']."""
    rows = sorted((r for r in rows if lo <= r["nbytes"] <= hi), key=lambda r: r["nbytes"])
    out = []
    for a, b in zip(rows, rows[1:]):
        alts = sorted(k for k in a if k.startswith("staged_alt"))
        for m, dr in (("engine", "h2d"), ("engine", "d2h"), ("engine_out", "d2h"), ("staged", "h2d"), ("staged", "d2h"),
                      *((k, x) for k in alts for x in ("h2d", "d2h"))):
            if m not in a or m not in b:
                continue
            ra, rb = a[m][f"{dr}_GBps"], b[m][f"{dr}_GBps"]
            if rb > ra * (1 + tolerance):
                out.append(f"{fmt_size(a['nbytes'])} {m} {dr}: {rb / ra - 1:.0%} slower per byte than {fmt_size(b['nbytes'])}")
    return out


def ratios(row: dict) -> dict:
    """Engine time / ``cupy`` time of one row (below 1: the engine is faster)."""
    e, c = row["engine"], row["cupy"]
    return {"h2d": e["h2d_s"] / c["h2d_s"], "d2h": e["d2h_s"] / c["d2h_s"],
            "d2h_fresh": row["engine_fresh"]["d2h_s"] / c["d2h_s"]}


def slower_than_cupy(rows: list[dict]) -> list[str]:
    """Rows where the engine took longer than cupy (by any margin), e.g. ['8 MiB d2h 1.03x']."""
    out = []
    for r in rows:
        for k, v in ratios(r).items():
            if v > 1.0:
                out.append(f"{fmt_size(r['nbytes'])} {k} {v:.2f}x")
    return out


def machine_info(cp) -> dict:
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    rt = cp.cuda.runtime
    return {
        "gpu": name,
        "gpu_count": rt.getDeviceCount(),
        "cuda_runtime": rt.runtimeGetVersion(),
        "cuda_driver": rt.driverGetVersion(),
        "numpy": np.__version__,
        "cupy": cp.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
    }


def free_limits(cp) -> int:
    """Largest size we dare: a seventh of host memory (the engine's array, the CuPy column's own,
    results), a quarter of free GPU memory.

    MemTotal, not MemAvailable: on the lent VMs memory is ballooned in as it is used."""
    host = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    host = int(line.split()[1]) * 1024
    except OSError:
        pass
    gpu_free, _ = cp.cuda.runtime.memGetInfo()
    lim = gpu_free // 4
    if host:
        lim = min(lim, host // 7)
    return lim


SWEEP_SIZES = [256 * KiB, 1 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB, 128 * MiB, 256 * MiB, 1 * GiB]


def sweep_configs():
    """Which path pays at which size: the driver's own path, the staged path (native copy pool,
    two pinned buffers) and the worker pipeline. Only thresholds change, so the configurations
    are swapped per call and measured interleaved, side by side.

    (The sweeps of earlier engine versions, with chunk sizes, thread counts, buffer counts,
    cudaHostRegister and huge-page results, are kept as results/h100/transfer.sweep-run*.json.)
    """
    huge = 1 << 40
    return [
        ("v3 (driver <=16 MiB, workers above)", dict(staged_max=0)),
        ("direct", dict(staged_max=0, h2d_direct_max=huge, d2h_direct_max=huge)),
        ("staged everywhere", dict(staged_min=0, staged_max=huge)),
        ("staged, parts >=1 MiB", dict(staged_min=0, staged_max=huge, min_part_bytes=1 * MiB)),
        ("workers everywhere", dict(staged_max=0, h2d_direct_max=0, d2h_direct_max=0, small_bytes=0)),
        ("default, new results staged", dict(staged_fresh=1)),
        ("default", {}),
    ]


def run_sweep(bench: Bench, max_bytes: int) -> dict:
    """Engine time of each configuration by size and direction, all interleaved per size."""
    base = T._tuning()
    cp, sync = bench.cp, bench.sync
    out = {"base": asdict(base), "configs": dict(sweep_configs()), "rows": []}
    print("sweep (GB/s in / out / out into new memory):", flush=True)
    for s in [s for s in SWEEP_SIZES if s <= max_bytes]:
        h = bench.data(s)
        d = T.to_device(h)
        calls, ok = {}, True
        for name, cfg in sweep_configs():
            tuned = replace(base, **cfg)

            def under(fn, tuned=tuned):
                def call():
                    T._TUNING = tuned
                    with T.unpinned_copies():  # the paths as a first copy meets them
                        return fn()
                return call

            ok = ok and bits_equal(under(lambda: T.to_device(h))().get(), h) and bits_equal(under(lambda: T.to_host(d))(), h)
            calls[name, "h2d"] = (under(lambda: T.to_device(h)), None)
            calls[name, "d2h"] = (under(lambda: T.to_host(d)), None)
            calls[name, "d2h fresh"] = (under(lambda: T.to_host(d)), T._hostmem.results.release)
        med = interleaved_medians(calls, sync, big=s >= 2 * GiB)
        T._TUNING = base
        row = {"nbytes": s, "bit_exact": ok, "s": {f"{n} | {dr}": v for (n, dr), v in med.items()}}
        out["rows"].append(row)
        print(f"  {fmt_size(s):>8}: " + "; ".join(
            f"{n}: {s / med[n, 'h2d'] / 1e9:.1f} / {s / med[n, 'd2h'] / 1e9:.1f} / {s / med[n, 'd2h fresh'] / 1e9:.1f}"
            for n, _ in sweep_configs())
            + ("" if ok else "  WRONG"), flush=True)
        del d
        cp.get_default_memory_pool().free_all_blocks()
    return out


def table(rows: list[dict]) -> str:
    head = ("| size | H2D cupy | H2D pinned | H2D engine | D2H cupy | D2H pinned | D2H engine | D2H engine fresh | "
            "D2H engine out= | engine us in / out | engine/cupy time in / out / out fresh |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        g = lambda m, d: f"{r[m][d + '_GBps']:.2f}"  # noqa: E731
        us = f"{r['engine']['h2d_s'] * 1e6:.0f} / {r['engine']['d2h_s'] * 1e6:.0f}"
        q = ratios(r)
        lines.append(f"| {fmt_size(r['nbytes'])} | {g('cupy', 'h2d')} | {g('pinned', 'h2d')} | {g('engine', 'h2d')} | "
                     f"{g('cupy', 'd2h')} | {g('pinned', 'd2h')} | {g('engine', 'd2h')} | {g('engine_fresh', 'd2h')} | "
                     f"{g('engine_out', 'd2h')} | {us} | {q['h2d']:.2f} / {q['d2h']:.2f} / {q['d2h_fresh']:.2f} |"
                     + ("" if r["engine_bit_exact"] else " WRONG"))
    slower = slower_than_cupy(rows)
    verdict = ("\nEngine slower than cupy (time ratio > 1): " + (", ".join(slower) if slower else "nowhere") + ".\n")
    return head + "\n".join(lines) + "\n" + verdict + bound_table(rows)


def bound_table(rows: list[dict]) -> str:
    """The engine against the machine's limit of the same row: min(pinned DMA, host memcpy)."""
    rows = [r for r in rows if "bound" in r]
    if not rows:
        return ""
    head = ("\nAgainst the limit of this run: bound = min(pinned DMA, host memcpy at the engine's threads), GB/s; "
            "% = engine / bound.\n\n"
            "| size | host memcpy in / out | bound in / out | engine in / out | % of bound in / out | engine out= (% of bound) "
            "| staged in / out= | staged % of bound |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        b, e, h = r["bound"], r["engine"], r["host"]
        lines.append(f"| {fmt_size(r['nbytes'])} | {h['h2d_GBps']:.1f} / {h['d2h_GBps']:.1f} | {b['h2d_GBps']:.1f} / {b['d2h_GBps']:.1f} | "
                     f"{e['h2d_GBps']:.1f} / {e['d2h_GBps']:.1f} | {e['h2d_GBps'] / b['h2d_GBps']:.0%} / {e['d2h_GBps'] / b['d2h_GBps']:.0%} | "
                     f"{r['engine_out']['d2h_GBps']:.1f} ({r['engine_out']['d2h_GBps'] / b['d2h_GBps']:.0%}) | "
                     + (f"{r['staged']['h2d_GBps']:.1f} / {r['staged']['d2h_GBps']:.1f} | "
                        f"{r['staged']['h2d_GBps'] / b['h2d_GBps']:.0%} / {r['staged']['d2h_GBps'] / b['d2h_GBps']:.0%} |"
                        if "staged" in r else "- | - |"))
    mono = monotonicity(rows)
    return (head + "\n".join(lines) + "\n\nMonotonicity, 64 MiB - 4 GiB (no size >15% slower per byte than the next larger): "
            + ("; ".join(mono) if mono else "met") + ".\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--machine", help="results folder name (default: a slug of the GPU name)")
    ap.add_argument("--max-bytes", type=parse_bytes, default=4 * GiB, help="largest size (default 4GiB)")
    ap.add_argument("--min-bytes", type=parse_bytes, default=0, help="smallest size (default 4KiB)")
    ap.add_argument("--sequential", action="store_true",
                    help="each method's calls one after another, not interleaved (diagnostics)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--sweep", action="store_true", help="also time the engine under several tunings first")
    ap.add_argument("--no-main", action="store_true", help="with --sweep: skip the main table")
    ap.add_argument("--tune", default="", help="tuning overrides for the engine, e.g. threads=12,chunk_bytes=16MiB")
    ap.add_argument("--default-tuning", action="store_true",
                    help="the engine's defaults, not the active profile's copy tuning")
    args = ap.parse_args(argv)

    import cupy as cp

    if not args.default_tuning:
        from autooffload._profiles import active_profile

        prof = active_profile()  # resolving it hands its copy tuning to the engine
        print(f"profile {prof.source}: copy tuning {'from it' if prof.copy_tuning() else 'none (defaults)'}", flush=True)
    if args.tune:
        T._configure(**{k: (v if v.isalpha() else parse_bytes(v)) for k, v in (kv.split("=") for kv in args.tune.split(","))})
    info = machine_info(cp)
    machine = args.machine or slug(info["gpu"])
    max_bytes = min(args.max_bytes, free_limits(cp))
    sizes = [s for s in SIZES if args.min_bytes <= s <= max_bytes]
    outdir = args.out_dir / machine
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"{info['gpu']}, cupy {info['cupy']}, numpy {info['numpy']}, {info['cpu_count']} CPUs; engine {T.ENGINE_NAME} "
          f"{asdict(T._tuning())}; sizes up to {fmt_size(sizes[-1])}", flush=True)
    bench = Bench(max(sizes))
    try:
        cp.asarray(np.ones(10))  # CUDA context, kernels
        if args.sweep:
            t0 = time.time()
            diag = host_copy_rates(256 * MiB)
            print("host np.copyto GB/s by threads (into touched, into fresh pages):",
                  {k: (round(v["touched_GBps"], 1), round(v["fresh_GBps"], 1))
                   for k, v in diag.items() if isinstance(v, dict)},
                  {k: v for k, v in diag.items() if not isinstance(v, dict)}, flush=True)
            sw = run_sweep(bench, max_bytes)
            sw["host_copy"] = diag
            sw["machine"] = info
            (outdir / "transfer-sweep.json").write_text(json.dumps(sw, indent=1))
            print(f"sweep took {time.time() - t0:.0f} s", flush=True)
        if args.no_main:
            return 0
        t0 = time.time()
        bound = host_bound_table(bench, min(max(sizes), 1 * GiB))
        print(f"host memcpy GB/s by threads at {fmt_size(bound['nbytes'])} (to pinned / from pinned / from pinned into "
              f"fresh pages): " + "; ".join(f"{k}: " + " / ".join(f"{v:.1f}" for v in r.values())
                                        for k, r in bound["by_threads"].items()) + f" ({time.time() - t0:.1f} s)", flush=True)
        rows = []
        for s in sizes:
            t0 = time.time()
            r = bench.measure(s, sequential=args.sequential)
            r["nbytes"] = s
            rows.append(r)
            e, c = r["engine"], r["cupy"]
            print(f"{fmt_size(s):>8}: H2D cupy {c['h2d_GBps']:6.2f} pinned {r['pinned']['h2d_GBps']:6.2f} engine {e['h2d_GBps']:6.2f} | "
                  f"D2H cupy {c['d2h_GBps']:6.2f} pinned {r['pinned']['d2h_GBps']:6.2f} engine {e['d2h_GBps']:6.2f} "
                  f"fresh {r['engine_fresh']['d2h_GBps']:6.2f} out= {r['engine_out']['d2h_GBps']:6.2f} GB/s; engine/cupy "
                  + " ".join(f"{k} {v:.3f}" for k, v in ratios(r).items())
                  + (f"; staged {r['staged']['h2d_GBps']:.2f} / {r['staged']['d2h_GBps']:.2f}" if "staged" in r else "")
                  + "".join(f"; {k} {r[k]['h2d_GBps']:.2f} / {r[k]['d2h_GBps']:.2f}" for k in sorted(r) if k.startswith("staged_alt"))
                  + f"; bound {r['bound']['h2d_GBps']:.1f} / {r['bound']['d2h_GBps']:.1f} (host {r['host']['h2d_GBps']:.1f} / {r['host']['d2h_GBps']:.1f})"
                  + f"{'' if r['engine_bit_exact'] else '  ENGINE WRONG'} ({time.time() - t0:.1f} s)", flush=True)
    finally:
        bench.close()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc = {
        "what": "host<->device copy rates of ordinary numpy arrays: cupy default, pinned limit, autooffload engine",
        "date": date,
        "machine": machine,
        **info,
        "engine": T.ENGINE_NAME,
        "tuning": asdict(T._tuning()),
        "tuning_source": T.tuning_source(),
        "host_bound": bound,
        "monotonicity": monotonicity(rows),
        "interleaved": not args.sequential,
        "method": "warm, current stream synchronized after each call; all methods of a size interleaved round-robin "
                  "(order reversed each round), median of >=7 rounds (>=3 at >=2 GiB) or of 0.2 s per method; random float64 data; GB/s = 1e9 payload bytes/s; D2H into new host arrays "
                  "(engine: memory of dropped results reused; engine_fresh: out= a new array each call)",
        "rows": rows,
    }
    (outdir / "transfer.json").write_text(json.dumps(doc, indent=1))
    md = (f"# Transfer rates on {info['gpu']} ({machine})\n\n"
          f"{date}; cupy {info['cupy']}, numpy {info['numpy']}, CUDA runtime {info['cuda_runtime']}, driver {info['cuda_driver']}, "
          f"{info['cpu_count']} CPUs, Python {info['python']}. Engine `{T.ENGINE_NAME}`, tuning ({T.tuning_source()}) `{asdict(T._tuning())}`.\n\n"
          f"Host memcpy by threads at {fmt_size(bound['nbytes'])}, GB/s (to pinned / from pinned / from pinned into fresh pages): "
          + "; ".join(f"{k}: " + " / ".join(f"{v:.1f}" for v in r.values()) for k, r in bound["by_threads"].items()) + ".\n\n"
          f"GB/s (1e9 bytes/s of payload), median of warm, synchronized calls; the methods of a row are interleaved "
          f"round-robin, so they compare side by side; made by `benchmarks/transfer.py`.\n"
          f"`cupy` = `cupy.asarray` / `cupy.asnumpy` from/to an ordinary numpy array; `pinned` = cudaMemcpyAsync from/to "
          f"page-locked memory (the limit); `engine` = `autooffload._transfer.to_device` / `to_host` from/to an ordinary array "
          f"(D2H: a new array; above 16 MiB its memory is that of a result already dropped, as from the second call of a "
          f"loop on); `engine fresh` = `to_host(d, out=a)` into a new array `a` each call, so every page faults on "
          f"first touch (a first call, and what `cupy.asnumpy` always pays); `engine out=` = `to_host(d, out=a)` "
          f"into an existing array; `staged` = the engine as for memory not seen before (a first copy: nothing pinned on "
          f"reuse), `to_device(h)` / `to_host(d, out=a)`; the `engine` columns pin an array's memory once copied again (at the copy the tuning's `pin_after_copies` names, done before the rounds) and "
          f"keep it pinned (_pincache.py). The last column: engine time / cupy time (below 1: the engine is faster).\n\n"
          + table(rows))
    (outdir / "transfer.md").write_text(md)
    print()
    print(table(rows))
    print(f"wrote {outdir / 'transfer.json'} and transfer.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
