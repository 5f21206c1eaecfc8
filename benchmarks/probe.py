"""The probe of an uncalibrated machine (issue 12 item 6): how long it takes, what it scales, and
where decisions land with it, against the built-in defaults and the machine's shipped profile.

Each scenario runs in a fresh interpreter, with AUTOOFFLOAD_SHIPPED=0 (the machine looks like
one nobody calibrated) and a cache dir of its own:
  cold-kernels  an empty CuPy kernel cache too (the first-ever process on a machine)
  fresh         CuPy's kernels on disk, no cached probe (the probe runs at the GPU start)
  cached        the probe file of "fresh" kept (a later process: no probe)
Then, in this process, four heavy functions of numpy data are timed forced on NumPy and on CuPy
(median of 5, warm), beside the backend ``explain()`` picks under the built-in defaults, the
probed profile and the shipped H200 profile.

    python benchmarks/probe.py            (GPU machine; prints a table)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, time, numpy as np
t0 = time.perf_counter()
import autooffload
from autooffload import config, offload
from autooffload._profiles import resolve
from autooffload._profiles.probecache import read_probes
first = resolve.active_profile().source
@offload
def double(x):
    return x * 2.0
t1 = time.perf_counter()
with config(backend="cupy"):
    double(np.ones(1000))
t2 = time.perf_counter()
profile = resolve.active_profile()
_, probe = read_probes()
print(json.dumps({"before_gpu": first, "after_gpu": profile.source, "notes": profile.notes,
                  "probe_wall_s": None if probe is None else probe.wall_s,
                  "first_gpu_call_s": t2 - t1, "probe": None if probe is None else probe.to_json()}))
"""


def child(cache: str, kernels: str) -> dict:
    env = {**os.environ, "AUTOOFFLOAD_SHIPPED": "0", "AUTOOFFLOAD_CACHE_DIR": cache, "CUPY_CACHE_DIR": kernels}
    env.pop("AUTOOFFLOAD_PROFILE", None)
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def scenarios() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        empty_kernels = os.path.join(tmp, "kernels-empty")
        out["cold-kernels"] = child(os.path.join(tmp, "c1"), empty_kernels)
        warm_kernels = os.environ.get("CUPY_CACHE_DIR", str(Path.home() / ".cupy" / "kernel_cache"))
        child(os.path.join(tmp, "warm-up"), warm_kernels)  # CuPy's kernels of the probe on disk
        out["fresh"] = child(os.path.join(tmp, "c2"), warm_kernels)
        out["fresh-again"] = child(os.path.join(tmp, "c3"), warm_kernels)
        out["cached"] = child(os.path.join(tmp, "c3"), warm_kernels)
    return out


def main() -> None:
    results = scenarios()
    print("probe of an uncalibrated machine (AUTOOFFLOAD_SHIPPED=0), fresh interpreters:")
    for name, r in results.items():
        wall = "no probe" if name == "cached" else f"probe {r['probe_wall_s']:.3f} s"
        print(f"  {name:<13} {wall:<16} first GPU call {r['first_gpu_call_s']:.2f} s  -> {r['after_gpu']}")
    print("  " + results["fresh"]["notes"][0])
    print(json.dumps(results["fresh"]["probe"]))
    compare(results)


def compare(results: dict) -> None:
    """Heavy functions: forced NumPy and CuPy times, and explain()'s pick under three profiles."""
    import cupy as cp
    import numpy as np

    import autooffload
    from autooffload import _planner, config, explain, offload
    from autooffload._profiles import builtin_profile, load_profile, SHIPPED_PROFILES_DIR
    from autooffload._profiles.resolve import device_references
    from autooffload._profiles.scaling import GpuProbe, scaled_device_profile

    os.environ["AUTOOFFLOAD_LEARN"] = "0"
    autooffload.reload_environment()
    probed = scaled_device_profile(device_references(), GpuProbe.from_json(results["fresh"]["probe"]), cached=True)
    profiles = {"built-in": builtin_profile(), "probed": probed, "h200 shipped": load_profile(SHIPPED_PROFILES_DIR / "h200.json")}
    rng = np.random.default_rng(0)
    n = 2048
    a = rng.random((n, n)) + n * np.eye(n)
    v = rng.random(10**7)

    def solve(a, b):
        return np.linalg.solve(a, b)

    def matmul(a, b):
        return a @ b

    def chain(x):
        y = x * 5
        y = y * y
        return np.sqrt(y + y)

    def sort(x):
        return np.sort(x)

    cases = [("solve 2048", solve, (a, rng.random(n))), ("matmul 2048", matmul, (a, a)),
             ("chain 1e7", chain, (v,)), ("sort 1e7", sort, (v,))]
    print(f"\n{'function':<13} {'numpy':>9} {'cupy+copies':>12}  " + "  ".join(f"{p:>12}" for p in profiles))
    for label, fn, args in cases:
        f = offload(fn)
        times = {}
        for backend in ("numpy", "cupy"):
            with config(backend=backend):
                f(*args)
                cp.cuda.get_current_stream().synchronize()
                samples = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    f(*args)
                    cp.cuda.get_current_stream().synchronize()
                    samples.append(time.perf_counter() - t0)
            times[backend] = statistics.median(samples)
        picks = []
        for profile in profiles.values():
            _planner.active_profile = lambda profile=profile: profile
            autooffload._config.invalidate_decisions()
            picks.append(explain(f, *args).backend)
        best = min(times, key=times.get)
        print(f"{label:<13} {times['numpy'] * 1e3:>7.2f}ms {times['cupy'] * 1e3:>10.2f}ms  "
              + "  ".join(f"{p + (' ok' if p == best else ' MISS'):>12}" for p in picks))


if __name__ == "__main__":
    main()
