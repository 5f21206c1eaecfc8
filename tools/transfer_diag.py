"""Why is the copy engine slower per byte at 256 MiB - 1 GiB than at 4 GiB on the H200 machine?

    PYTHONPATH=src python3 tools/transfer_diag.py [--out transfer-diag.json] [--max-bytes 4GiB]
    PYTHONPATH=src python3 tools/transfer_diag.py --pieces [--profile h200.json]   # only the piece-count table
    PYTHONPATH=src python3 tools/transfer_diag.py --pinned-results                 # only pinned kept results

Measures, in one process on the GPU machine (issue 14; written up in
benchmarks/results/h200/transfer.NOTES.md):

* the machine: NUMA nodes and the GPU's node, transparent huge pages, memory (balloon), cores;
* host memcpy by size and thread count (the engine's native pool): pageable -> pinned, pinned ->
  warm pageable, pinned -> fresh pageable, with the minor page faults each costs;
* pinned DMA by size (the link);
* the engine by size, default knobs: its first call after the pool and workers are dropped
  (pool allocation, worker start-up) against warm calls, and page faults per call;
* the engine's knobs one at a time at each size: pinned pool size (max_buffers), chunk size,
  threads, and pinning the caller's array in place (cudaHostRegister) with what pinning costs;
* ``--both-ways``: only the copies in and out at the same time (two threads, two streams), as
  a streamed call runs them, against each alone: engine, host memcpy and pinned DMA (issue 15:
  the streamed pipeline measured 2.9x its slowest stage timed alone);
* ``--pinned-results``: only kept result blocks pinned on reuse (``pin_results_min``) against the
  staged path: a loop's calls one by one, a result passed back in, a copy in and out at once;
* ``--pieces``: only the staged path's piece count (4 / 8 / 16) on top of a profile's copy
  tuning (the shipped one of this machine by default), 8 MiB - 4 GiB, with 4 GiB staged too
  (the tuning sends it to the workers) - the monotonicity target of issue 14.

Each table's variants are timed interleaved (round-robin, median), so one machine state hits
all alike. Prints tables; writes everything as JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from autooffload import _transfer as T  # noqa: E402
from autooffload._cores import usable_cores  # noqa: E402

KiB, MiB, GiB = 1024, 1024**2, 1024**3


def sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception as e:  # noqa: BLE001
        return f"({e})"


def read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        return f"({e.strerror})"


def machine(cp) -> dict:
    pci = cp.cuda.runtime.getDeviceProperties(0)
    bus = "%04x:%02x:%02x.0" % (pci.get("pciDomainID", 0), pci.get("pciBusID", 0), pci.get("pciDeviceID", 0))
    return {
        "lscpu": sh("lscpu | grep -Ei 'model name|socket|numa|core|thread|L3|L2'"),
        "nodes": sh("ls /sys/devices/system/node | grep node"),
        "node_meminfo": sh("grep -h MemTotal /sys/devices/system/node/node*/meminfo"),
        "gpu_pci": bus,
        "gpu_numa_node": read(f"/sys/bus/pci/devices/{bus}/numa_node"),
        "nvidia_smi_topo": sh("nvidia-smi topo -m 2>&1 | head -5"),
        "thp_enabled": read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "thp_defrag": read("/sys/kernel/mm/transparent_hugepage/defrag"),
        "meminfo": sh("grep -E 'MemTotal|MemFree|MemAvailable|AnonHugePages|Hugepagesize' /proc/meminfo"),
        "balloon": sh("ls /sys/bus/virtio/drivers 2>/dev/null; lsmod 2>/dev/null | grep -i balloon"),
        "cores": {"os": os.cpu_count(), "usable": usable_cores()},
        "kernel": platform.release(),
        "iommu": sh("ls /sys/class/iommu 2>/dev/null | head -3; dmesg 2>/dev/null | grep -i -m2 iommu"),
    }


def minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(calls: dict, sync, rounds: int) -> dict:
    """Median seconds and median minor faults per call of each ``calls[name] = (fn, setup)``."""
    for fn, setup in calls.values():
        if setup:
            setup()
        fn()
        sync()
    t = {n: [] for n in calls}
    f = {n: [] for n in calls}
    names = list(calls)
    for r in range(rounds):
        for n in names if r % 2 == 0 else reversed(names):
            fn, setup = calls[n]
            if setup:
                setup()
            sync()
            f0, t0 = minflt(), time.perf_counter()
            fn()
            sync()
            t[n].append(time.perf_counter() - t0)
            f[n].append(minflt() - f0)
    return {n: {"s": statistics.median(t[n]), "faults": statistics.median(f[n])} for n in names}


def use_profile_tuning(profile: Path) -> None:
    """The engine on the copy tuning of ``profile`` (a profile JSON file)."""
    knobs = json.loads(profile.read_text())["backends"]["cupy"]["copy_tuning"]["knobs"]
    T.apply_tuning(knobs, source=str(profile))


def copies_under(variants: dict, h, d) -> dict:
    """``interleaved``'s calls: the engine's copy of ``h`` in and of ``d`` out under each tuning of
    ``variants`` (swapped in per call; buffers of another size come from their own pool), each as
    a first copy (``unpinned_copies``): ``h`` is copied again and again, and the pin-down cache
    would pin it at its second copy (from 1 MiB since session 10), timing the DMA alone."""
    calls = {}
    for name, tun in variants.items():
        def under(fn, tun=tun):
            def call():
                T._TUNING = tun
                with T.unpinned_copies():
                    return fn()
            return call
        calls[f"{name}|h2d"] = (under(lambda: T.to_device(h)), None)
        calls[f"{name}|d2h"] = (under(lambda: T.to_host(d)), None)
    return calls


def both_ways(cp, args) -> int:
    """Seconds of a copy in alone, out alone, and both at once (threads, own streams): what a
    streamed call's stages share. Engine (profile's tuning), host memcpy (16 threads each way),
    pinned DMA. Interleaved per size."""
    import threading

    use_profile_tuning(args.profile)
    sizes = [s for s in (64 * MiB, 256 * MiB, 1 * GiB) if s <= args.max_bytes]
    big = sizes[-1]
    src_all = np.resize(np.random.default_rng(1).random(MiB // 8 + 4099) + 0.5, big // 8)
    warm_all = np.ones(big // 8)
    dev_in, dev_out = cp.asarray(src_all), cp.asarray(src_all)
    pin_a = np.ctypeslib.as_array((ctypes.c_uint8 * big).from_address(cp.cuda.runtime.hostAlloc(big, 0)))
    pin_b = np.ctypeslib.as_array((ctypes.c_uint8 * big).from_address(cp.cuda.runtime.hostAlloc(big, 0)))
    pin_a[...] = 1
    pin_b[...] = 2
    streams = [cp.cuda.Stream(non_blocking=True) for _ in range(2)]
    cores = usable_cores()

    def sync():
        for st in streams:
            st.synchronize()
        cp.cuda.get_current_stream().synchronize()

    def at_once(f, g):
        def run():
            t = threading.Thread(target=f)
            t.start()
            g()
            t.join()
        return run

    doc: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(cp), "both_ways": {}}
    print("# ms: in alone / out alone / both at once (sum of the two alone) -- engine, host memcpy, pinned DMA", flush=True)
    for n in sizes:
        h, dv_in, dv_out = src_all[: n // 8], dev_in[: n // 8], dev_out[: n // 8]

        def eng_in():
            with streams[0]:
                T.to_device(h)
            streams[0].synchronize()

        def eng_out():
            with streams[1]:
                T.to_host(dv_out)
            streams[1].synchronize()

        def mem_in():
            T._parcopy.copy(pin_a.ctypes.data, h.ctypes.data, n, cores, 256 * KiB)

        def mem_out():
            T._parcopy.copy(warm_all.ctypes.data, pin_b.ctypes.data, n, cores, 256 * KiB)

        def dma_in():
            cp.cuda.runtime.memcpyAsync(dv_in.data.ptr, pin_a.ctypes.data, n, 1, streams[0].ptr)
            streams[0].synchronize()

        def dma_out():
            cp.cuda.runtime.memcpyAsync(pin_b.ctypes.data, dv_out.data.ptr, n, 2, streams[1].ptr)
            streams[1].synchronize()

        calls = {}
        for name, (f, g) in {"engine": (eng_in, eng_out), "memcpy": (mem_in, mem_out), "dma": (dma_in, dma_out)}.items():
            calls[f"{name} in"] = (f, None)
            calls[f"{name} out"] = (g, None)
            calls[f"{name} both"] = (at_once(f, g), None)
        r = interleaved(calls, sync, 7 if n < GiB else 4)
        doc["both_ways"][n] = r
        print(f"{n // MiB:>5} MiB: " + "; ".join(
            f"{name} {r[f'{name} in']['s'] * 1e3:.2f} / {r[f'{name} out']['s'] * 1e3:.2f} / {r[f'{name} both']['s'] * 1e3:.2f} "
            f"({(r[f'{name} in']['s'] + r[f'{name} out']['s']) * 1e3:.2f})" for name in ("engine", "memcpy", "dma")), flush=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str))
    return 0


def piece_counts(cp, args) -> int:
    """GB/s in / out of the engine with a profile's copy tuning, the staged path cut into 4, 8
    or 16 pieces; and at 4 GiB staged instead of the workers. Interleaved per size."""
    from dataclasses import replace

    use_profile_tuning(args.profile)
    base = T._tuning()
    sizes = [s for s in (8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB, 128 * MiB, 256 * MiB, 1 * GiB, 4 * GiB) if s <= args.max_bytes]
    variants = {"tuned": base}
    for k in (8, 16):
        variants[f"{k} pieces"] = replace(base, staged_piece_count=k)
    variants["staged to 8 GiB"] = replace(base, staged_max=8 * GiB)
    variants["staged to 8 GiB, 16 pieces"] = replace(base, staged_max=8 * GiB, staged_piece_count=16)
    stream = cp.cuda.get_current_stream()
    sync = stream.synchronize
    src_all = np.resize(np.random.default_rng(1).random(MiB // 8 + 4099) + 0.5, sizes[-1] // 8)
    dev_all = cp.asarray(src_all)
    doc: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(cp), "engine": T.ENGINE_NAME,
                 "profile": str(args.profile), "base": asdict(base), "pieces": {}}
    print(f"# engine GB/s in / out (warm result memory), {args.profile.name}'s copy tuning, by staged piece count", flush=True)
    for n in sizes:
        r = interleaved(copies_under(variants, src_all[: n // 8], dev_all[: n // 8]), sync, 7 if n < GiB else 3)
        T._TUNING = base
        doc["pieces"][n] = r
        print(f"{n // MiB:>5} MiB: " + "; ".join(
            f"{name} {n / r[f'{name}|h2d']['s'] / 1e9:.1f} / {n / r[f'{name}|d2h']['s'] / 1e9:.1f}" for name in variants), flush=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str))
    return 0


def pinned_results(cp, args) -> int:
    """Kept result blocks pinned on reuse (``pin_results_min``) against the staged path: a loop
    of device->host copies into dropped-and-reused results, per call (the first into new memory,
    the second pins the kept block, then steady), the steady result passed back in, and a copy in
    and a copy out at once (what a streamed call's stages share). Interleaved per size."""
    import threading
    from dataclasses import replace

    from autooffload import _hostmem

    use_profile_tuning(args.profile)
    base = T._tuning()
    variants = {"staged": replace(base, pin_results_min=0), "pinned": replace(base, pin_results_min=1)}
    sizes = [s for s in (64 * MiB, 256 * MiB, 1 * GiB) if s <= args.max_bytes]
    src_all = np.resize(np.random.default_rng(1).random(MiB // 8 + 4099) + 0.5, sizes[-1] // 8)
    dev_all = cp.asarray(src_all)
    streams = [cp.cuda.Stream(non_blocking=True) for _ in range(2)]
    doc: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(cp), "engine": T.ENGINE_NAME,
                 "profile": str(args.profile), "pinned_results": {}}
    print("# GB/s: loop of results (call 1 new memory, call 2 reuses, calls 3-6 steady) / steady result back in / "
          "in and out at once (ms)", flush=True)
    for n in sizes:
        h, d = src_all[: n // 8], dev_all[: n // 8]
        got: dict = {name: {"calls": [[] for _ in range(6)], "back": [], "both": []} for name in variants}
        for _ in range(3):
            for name, tun in variants.items():
                T._TUNING = tun
                T._use_pinning(tun)
                T.release_pinned_pool()
                for i in range(6):
                    t0 = time.perf_counter()
                    r = T.to_host(d)
                    cp.cuda.get_current_stream().synchronize()
                    got[name]["calls"][i].append(time.perf_counter() - t0)
                    if i < 5:
                        del r
                t0 = time.perf_counter()
                T.to_device(r)
                cp.cuda.get_current_stream().synchronize()
                got[name]["back"].append(time.perf_counter() - t0)
                out_block = r
                del r

                def copy_out(out_block=out_block):
                    with streams[1]:
                        T.to_host(d, out=out_block)
                    streams[1].synchronize()

                t0 = time.perf_counter()
                worker = threading.Thread(target=copy_out)
                worker.start()
                with streams[0]:
                    T.to_device(h)
                streams[0].synchronize()
                worker.join()
                got[name]["both"].append(time.perf_counter() - t0)
                del out_block
        T._TUNING = base
        T._use_pinning(base)
        T.release_pinned_pool()
        row = {name: {"calls_s": [statistics.median(c) for c in g["calls"]], "back_s": statistics.median(g["back"]),
                      "both_s": statistics.median(g["both"])} for name, g in got.items()}
        doc["pinned_results"][n] = row
        print(f"{n // MiB:>5} MiB: " + "; ".join(
            f"{name} " + " ".join(f"{n / s / 1e9:.1f}" for s in r["calls_s"][:2]) + f" {n / statistics.median(r['calls_s'][2:]) / 1e9:.1f}"
            f" / {n / r['back_s'] / 1e9:.1f} / {r['both_s'] * 1e3:.1f}" for name, r in row.items()), flush=True)
    doc["pinned_after"] = _hostmem.results.info()
    args.out.write_text(json.dumps(doc, indent=1, default=str))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("transfer-diag.json"))
    ap.add_argument("--max-bytes", type=lambda s: int(float(s[:-3]) * {"GiB": GiB, "MiB": MiB}[s[-3:]]) if s[-3:] in ("GiB", "MiB") else int(s), default=4 * GiB)
    ap.add_argument("--pieces", action="store_true", help="only the staged piece-count table")
    ap.add_argument("--both-ways", action="store_true", help="only: copies in and out at once against one at a time")
    ap.add_argument("--pinned-results", action="store_true", help="only: kept result blocks pinned on reuse against staged")
    ap.add_argument("--profile", type=Path, default=ROOT / "src/autooffload/_profiles/shipped/h200.json",
                    help="whose copy tuning --pieces starts from")
    args = ap.parse_args(argv)
    import cupy as cp

    if args.pieces:
        return piece_counts(cp, args)
    if args.both_ways:
        return both_ways(cp, args)
    if args.pinned_results:
        return pinned_results(cp, args)

    doc: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(cp), "engine": T.ENGINE_NAME,
                 "default_tuning": asdict(T._tuning())}
    print(json.dumps(doc["machine"], indent=1), flush=True)
    sizes = [s for s in (16 * MiB, 64 * MiB, 256 * MiB, 1 * GiB, 4 * GiB) if s <= args.max_bytes]
    big = sizes[-1]
    stream = cp.cuda.get_current_stream()
    sync = stream.synchronize
    t_alloc = time.perf_counter()
    pinned_ptr = cp.cuda.runtime.hostAlloc(big, 0)
    doc["hostAlloc_s"] = {"bytes": big, "s": time.perf_counter() - t_alloc}
    pinned = np.ctypeslib.as_array((ctypes.c_uint8 * big).from_address(pinned_ptr))
    pinned[...] = 3
    src_all = np.resize(np.random.default_rng(1).random(MiB // 8 + 4099) + 0.5, big // 8)
    warm_all = np.ones(big // 8)
    dev_all = cp.asarray(src_all)
    threads_list = sorted({min(k, usable_cores()) for k in (4, 16)})
    par = T._parcopy

    def memcpy(dst, src, n, k):
        par.copy(dst, src, n, k, 256 * KiB)

    def fresh_copy(n, k):
        a = np.empty(n, np.uint8)  # held until the copy is done: new pages, faulted in by it
        memcpy(a.ctypes.data, pinned_ptr, n, k)

    try:
        # 1. Host memcpy by size and threads; DMA by size.
        print("\n# host memcpy GB/s (to pinned / from pinned warm / from pinned fresh) [faults per call], and pinned DMA", flush=True)
        doc["host"] = {}
        for n in sizes:
            calls = {}
            for k in threads_list:
                calls[f"to_pinned {k}"] = (lambda k=k, n=n: memcpy(pinned_ptr, src_all.ctypes.data, n, k), None)
                calls[f"from_pinned {k}"] = (lambda k=k, n=n: memcpy(warm_all.ctypes.data, pinned_ptr, n, k), None)
                calls[f"fresh {k}"] = (lambda k=k, n=n: fresh_copy(n, k), None)
            calls["dma h2d"] = (lambda n=n: cp.cuda.runtime.memcpyAsync(dev_all.data.ptr, pinned_ptr, n, 1, stream.ptr), None)
            calls["dma d2h"] = (lambda n=n: cp.cuda.runtime.memcpyAsync(pinned_ptr, dev_all.data.ptr, n, 2, stream.ptr), None)
            r = interleaved(calls, sync, 5 if n < GiB else 2)
            doc["host"][n] = r
            print(f"{n // MiB:>5} MiB: " + "; ".join(
                f"{k} thr {n / r[f'to_pinned {k}']['s'] / 1e9:.1f} / {n / r[f'from_pinned {k}']['s'] / 1e9:.1f} / "
                f"{n / r[f'fresh {k}']['s'] / 1e9:.1f} [{r[f'fresh {k}']['faults']:.0f}]" for k in threads_list)
                + f"; DMA {n / r['dma h2d']['s'] / 1e9:.1f} / {n / r['dma d2h']['s'] / 1e9:.1f}", flush=True)

        # 2. Engine, default knobs: first call (pool and workers dropped) vs warm.
        print("\n# engine, default knobs: first call after dropping pool+workers vs warm median (GB/s) [faults]", flush=True)
        doc["first_vs_warm"] = {}
        for n in sizes:
            h = src_all[: n // 8]
            d = dev_all[: n // 8]
            res = {}
            for direction, fn in (("h2d", lambda: T.to_device(h)), ("d2h", lambda: T.to_host(d))):
                T.release_pinned_pool()
                T._shutdown_executor()
                sync()
                f0, t0 = minflt(), time.perf_counter()
                fn()
                sync()
                first = (time.perf_counter() - t0, minflt() - f0)
                r = interleaved({"w": (fn, None)}, sync, 5 if n < GiB else 3)["w"]
                res[direction] = {"first_s": first[0], "first_faults": first[1], "warm_s": r["s"], "warm_faults": r["faults"]}
            doc["first_vs_warm"][n] = res
            print(f"{n // MiB:>5} MiB: in first {n / res['h2d']['first_s'] / 1e9:.1f} [{res['h2d']['first_faults']:.0f}] warm "
                  f"{n / res['h2d']['warm_s'] / 1e9:.1f} [{res['h2d']['warm_faults']:.0f}]; out first {n / res['d2h']['first_s'] / 1e9:.1f} "
                  f"[{res['d2h']['first_faults']:.0f}] warm {n / res['d2h']['warm_s'] / 1e9:.1f} [{res['d2h']['warm_faults']:.0f}]", flush=True)

        # 3. Knobs one at a time, interleaved per size (the tuning is swapped per call; buffers
        # of a different size come from their own pool, see _transfer._get_pool).
        base = T._tuning()
        from dataclasses import replace

        variants = {
            "default": base,
            "buffers 64": replace(base, max_buffers=64),
            "chunk 32M": replace(base, chunk_bytes=32 * MiB),
            "chunk 32M buffers 40": replace(base, chunk_bytes=32 * MiB, max_buffers=40),
            "threads 8": replace(base, threads=8, max_buffers=12),
            "staged 32M pieces": replace(base, staged_min=0, staged_max=1 << 50, chunk_bytes=32 * MiB),
            "register whole": replace(base, h2d_register_min=1, d2h_register_min=1),
            "register 64M pieces": replace(base, h2d_register_min=1, d2h_register_min=1, register_chunk_bytes=64 * MiB),
        }
        print("\n# engine knobs, GB/s in / out (warm result memory) [faults per call out]", flush=True)
        doc["knobs"] = {}
        for n in sizes[1:]:
            r = interleaved(copies_under(variants, src_all[: n // 8], dev_all[: n // 8]), sync, 5 if n < GiB else 2)
            T._TUNING = base
            doc["knobs"][n] = r
            print(f"{n // MiB:>5} MiB: " + "; ".join(
                f"{name} {n / r[f'{name}|h2d']['s'] / 1e9:.1f} / {n / r[f'{name}|d2h']['s'] / 1e9:.1f} [{r[f'{name}|d2h']['faults']:.0f}]"
                for name in variants), flush=True)

        # 4. What pinning in place costs: cudaHostRegister + cudaHostUnregister of warm pages.
        print("\n# cudaHostRegister + Unregister of warm pageable memory", flush=True)
        doc["register"] = {}
        for n in sizes:
            addr = warm_all.ctypes.data
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                cp.cuda.runtime.hostRegister(addr, n, 0)
                t1 = time.perf_counter()
                cp.cuda.runtime.hostUnregister(addr)
                ts.append((t1 - t0, time.perf_counter() - t1))
            reg = statistics.median(t[0] for t in ts)
            unreg = statistics.median(t[1] for t in ts)
            doc["register"][n] = {"register_s": reg, "unregister_s": unreg}
            print(f"{n // MiB:>5} MiB: register {reg * 1e3:.1f} ms ({n / reg / 1e9:.1f} GB/s), unregister {unreg * 1e3:.1f} ms", flush=True)
    finally:
        T._TUNING = T.default_tuning()
        T.release_pinned_pool()
        cp.cuda.runtime.freeHost(pinned_ptr)
    args.out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
