"""One Dask worker per GPU: a Black-Scholes-like blockwise function over host data, 1 GPU vs N.

    PYTHONPATH=src:tests python3 benchmarks/multi_gpu.py --sizes 2e8 --devices 0 --devices 0,1
    PYTHONPATH=src:tests python3 benchmarks/multi_gpu.py --sizes 2e8 --devices 0,none   # one GPU, 2 workers

Each ``--devices`` list is one cluster: a ``dask.distributed`` worker process per entry, with
``CUDA_VISIBLE_DEVICES`` set to that entry for its process ("none": no GPU, the worker runs on
NumPy), one thread each, no memory limit (the data is persisted in the workers' host memory).
Issue 17 asks for ``--sizes 2e9 --devices 0 --devices 0,1`` on the two-GPU machine: the two-GPU
cluster at least 1.6x faster than the one-GPU cluster.

Per size and cluster: the inputs (three float32 arrays, ``--chunk`` elements per block) are made
and persisted on the workers first (host memory, as a user's data would be), then
``black_scholes_like(s, k, t)`` (tests/dask_targets.py, declared ``blockwise=True``) is persisted
and waited for ``--warmup`` untimed then ``--repeat`` timed rounds (each with a slightly other
rate ``r``, so that Dask computes it afresh rather than reusing the last round's keys); the
median is the figure. Every block goes through the
offloaded function on the worker that holds it, which decides from its own profile and device
(cost model, cold start and learning as for any call). The results stay on the workers; three
blocks are fetched and compared with NumPy's (float32, rtol 1e-5: CuPy's transcendental
functions round differently in the last bits). After the timing each worker reports its last
decision: the device it names, and how many blocks ran on the GPU and on NumPy.

Writes the table and JSON under ``benchmarks/results/<machine>/multi_gpu.*``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))  # dask_targets: importable by the workers too (PYTHONPATH below)


def gpu_cluster(devices: list[str]):
    """A cluster with one single-threaded worker process per entry of ``devices`` (a
    CUDA_VISIBLE_DEVICES value; "none" hides every GPU from that worker)."""
    from distributed import Nanny, Scheduler, SpecCluster

    path = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    workers = {}
    for i, dev in enumerate(devices):
        env = {"CUDA_VISIBLE_DEVICES": "" if dev == "none" else dev, "PYTHONPATH": path,
               "OMP_NUM_THREADS": "1"}
        workers[f"w{i}-gpu{dev}"] = {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": 0, "env": env,
                                                                "silence_logs": 40}}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard": False, "dashboard_address": ":0"}},
                       silence_logs=40)


def run_one(client, n: int, chunk: int, repeat: int, warmup: int) -> dict:
    import dask.array as da
    from distributed import wait

    import dask_targets

    rs = da.random.RandomState(42)
    s = (rs.random_sample(n, chunks=chunk).astype(np.float32) * 50 + 75).persist()
    k = (rs.random_sample(n, chunks=chunk).astype(np.float32) * 50 + 75).persist()
    t = (rs.random_sample(n, chunks=chunk).astype(np.float32) + 0.25).persist()
    wait([s, k, t])
    times = []
    for i in range(-warmup, repeat):
        # Another rate per round: other task keys, so the scheduler recomputes instead of reusing.
        start = time.perf_counter()
        y = dask_targets.black_scholes_like(s, k, t, r=0.05 + 1e-4 * (i + warmup)).persist()
        wait(y)
        if i >= 0:
            times.append(time.perf_counter() - start)
        last, rate = y, 0.05 + 1e-4 * (i + warmup)
    for i in sorted({0, last.numblocks[0] // 2, last.numblocks[0] - 1}):
        got = last.blocks[i].compute()
        want = dask_targets.black_scholes_like.__wrapped__(s.blocks[i].compute(), k.blocks[i].compute(),
                                                          t.blocks[i].compute(), r=rate)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    workers = client.run(dask_targets.report, "black_scholes_like")
    del y, last, s, k, t
    return {"n": n, "chunk": chunk, "blocks": -(-n // chunk), "seconds": times, "median_s": statistics.median(times),
            "workers": {w: {"device": v["device"], "gpu_blocks": v["cupy_calls"], "numpy_blocks": v["numpy_calls"],
                            "last_backend": v["backend"]} for w, v in workers.items()}}


def parse(argv=None):
    import _bench as B

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    B.common_arguments(p)
    p.add_argument("--sizes", nargs="+", type=B.parse_count, default=[2 * 10**8], help="elements per input array")
    p.add_argument("--chunk", type=B.parse_count, default=2**25, help="elements per block (default 2**25: 128 MiB float32)")
    p.add_argument("--devices", action="append", default=None,
                   help="a cluster: comma-separated CUDA_VISIBLE_DEVICES per worker ('none': no GPU); repeatable")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds (the median is the figure)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed rounds first: imports, profile, the GPU's cold start and learning settle")
    return B.finish_args(p.parse_args(argv), argv)


def main(argv=None) -> dict:
    import _bench as B
    from distributed import Client

    args = parse(argv)
    clusters = args.devices or ["0"]
    rows = []
    for spec in clusters:
        with gpu_cluster(spec.split(",")) as cluster, Client(cluster) as client:
            for n in args.sizes:
                row = run_one(client, n, args.chunk, args.repeat, args.warmup)
                row["cluster"] = spec
                rows.append(row)
                print(f"devices {spec:>8}  n {n:.2e}  median {row['median_s']:.3f} s  ({row['blocks']} blocks)  "
                      f"{json.dumps(row['workers'])}", flush=True)
    base = {r["n"]: r["median_s"] for r in rows if r["cluster"] == clusters[0]}
    cells = []
    for r in rows:
        per = "; ".join(f"{v['device'] or 'no GPU'}: {v['gpu_blocks']} GPU / {v['numpy_blocks']} NumPy"
                        for v in r["workers"].values())
        r["speedup_vs_first"] = base[r["n"]] / r["median_s"]
        cells.append([r["cluster"], B.fmt_n(r["n"]), r["blocks"], B.fmt_time(r["median_s"]),
                      f"{r['n'] * 16 / r['median_s'] / 1e9:.1f}", B.fmt_x(r["speedup_vs_first"]), per])
    text = B.table(["CUDA_VISIBLE_DEVICES per worker", "elements", "blocks", "median", "GB/s (3 in, 1 out)",
                    f"vs {clusters[0]}", "per worker: device, blocks (all rounds)"], cells)
    print(text)
    cp = B.gpu(disabled=args.no_gpu)
    folder = B.write_results(args, "multi_gpu", B.machine_info(cp), {"rows": rows}, text)
    print(f"results: {folder}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
