"""The two short probes of a machine that has no calibrated profile (``_profiles/scaling.py`` says
what their numbers scale and why).

``measure_host``: one memory-bound NumPy pass, ``a*5+b`` over 4 MiB of float64 input, the median
of 7 after one warm-up: ~1-3 ms. It runs at the first decision that needs a profile and never
imports Numba.

``measure_gpu``: on the CuPy path, after the CUDA context exists (the first GPU start): the
launch latency (an 8-element ``a*5+b``, synchronized, median of 15), one elementwise point
(``a*5+b`` over 2 x 64 MiB), one matmul point (2048 x 2048 float64), copies through the
transfer engine from and to pageable memory at 1 MiB and 32 MiB, and DMA from and to page-locked
memory at 32 MiB; each after one warm-up run, the median of 3 (15 for the launch). Inputs are
``zeros`` (a memset, no kernel to compile; the timings do not depend on the values). The whole
probe has ``GPU_PROBE_BUDGET_S``: it checks its clock after every step and gives up past it
(``ProbeFailed``), since a CUDA call cannot be interrupted. On an H200 it takes ~0.1-0.3 s
(benchmarks/results/h200/probe.txt); a first-ever run on a machine can take longer while CuPy
compiles ``a*5+b``'s kernels into its disk cache.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ._profiles.scaling import GPU_COPY_BYTES, GPU_ELEMENTWISE_BYTES, GPU_MATMUL_N, HOST_PROBE_BYTES, GpuProbe, HostProbe

GPU_PROBE_BUDGET_S = 1.0
clock: Callable[[], float] = time.perf_counter  # tests replace it


class ProbeFailed(RuntimeError):
    """The probe could not measure this machine, or took longer than its budget."""


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def measure_host() -> HostProbe:
    """Time one memory-bound NumPy pass (the elementwise curve's ``a*5+b``) on this host."""
    from ._cores import usable_cores

    n = int(HOST_PROBE_BYTES // 16)
    a, b = np.full(n, 1.5), np.full(n, 0.5)  # written once: the pages exist before the timing
    a * 5 + b
    times = []
    for _ in range(7):
        t0 = clock()
        a * 5 + b
        times.append(clock() - t0)
    seconds = _median(times)
    if not seconds > 0:
        raise ProbeFailed(f"the host's NumPy pass measured {seconds!r} s")
    return HostProbe(nbytes=float(2 * a.nbytes), seconds=seconds, cores=usable_cores())


def run_within(steps: list[tuple[str, Callable[[], Any]]], budget_s: float) -> tuple[dict[str, Any], float]:
    """Run named ``steps`` in order: (their results by name, seconds in all). ``ProbeFailed`` once
    the clock passes ``budget_s`` after a step (a CUDA call cannot be cut short, so this is checked
    between steps) or when a step raises."""
    start = clock()
    results: dict[str, Any] = {}
    for name, step in steps:
        try:
            results[name] = step()
        except ProbeFailed:
            raise
        except Exception as e:
            raise ProbeFailed(f"{name} failed ({type(e).__name__}: {e})") from e
        spent = clock() - start
        if spent > budget_s:
            raise ProbeFailed(f"exceeded its {budget_s:g} s budget ({spent:.2g} s, at {name})")
    return results, clock() - start


def measure_gpu(backend: Any, budget_s: float = GPU_PROBE_BUDGET_S) -> GpuProbe:
    """Probe the GPU of ``backend`` (the loaded CuPy backend); ``ProbeFailed`` past ``budget_s``
    or when it is not a CuPy device (a test double)."""
    from .backends.cupy import CupyBackend

    if not isinstance(backend, CupyBackend):
        raise ProbeFailed(f"the device backend is {type(backend).__name__}, not CuPy on a GPU")
    cp = backend.xp
    stream_sync = cp.cuda.get_current_stream().synchronize
    f8 = cp.float64

    def timed(fn: Callable[[], Any], repeats: int) -> float:
        fn()
        stream_sync()
        times = []
        for _ in range(repeats):
            t0 = clock()
            fn()
            stream_sync()
            times.append(clock() - t0)
        return max(_median(times), 1e-9)

    def elementwise(nbytes: float, repeats: int) -> tuple[float, float]:
        n = max(1, int(nbytes // 16))
        a, b = cp.zeros(n, f8), cp.zeros(n, f8)
        return float(2 * a.nbytes), timed(lambda: a * 5 + b, repeats)

    def matmul() -> tuple[float, float]:
        m = cp.zeros((GPU_MATMUL_N, GPU_MATMUL_N), f8)
        return float(2 * m.nbytes), timed(lambda: m @ m, 3)

    def copies(size: float) -> tuple[tuple[float, float], tuple[float, float]]:
        from ._transfer import unpinned_copies

        host = np.full(int(size // 8), 1.5)
        with unpinned_copies():  # the staged engine, as calibration measures it (_pincache.py)
            h2d = timed(lambda: backend.to_device(host), 3)
            dev = backend.to_device(host)
            return (float(host.nbytes), h2d), (float(host.nbytes), timed(lambda: backend.to_host(dev), 3))

    def pinned() -> tuple[tuple[float, float], tuple[float, float]]:
        import cupyx

        size = int(GPU_COPY_BYTES[-1] // 8)
        page_locked = cupyx.empty_pinned((size,), f8)
        page_locked[...] = 1.5
        dev = cp.empty(size, f8)
        nbytes = float(page_locked.nbytes)
        return (nbytes, timed(lambda: dev.set(page_locked), 3)), (nbytes, timed(lambda: dev.get(out=page_locked), 3))

    def name() -> str:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        raw = props.get("name", b"")
        return raw.decode(errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw)

    steps: list[tuple[str, Callable[[], Any]]] = [
        # The 8-element call first compiles a*5+b (once per machine: CuPy keeps kernels on disk).
        ("the launch latency", lambda: elementwise(128, 15)[1]),
        ("the elementwise point", lambda: elementwise(GPU_ELEMENTWISE_BYTES, 3)),
        ("the matmul point", matmul),
        *((f"the copies of {size / 2**20:g} MiB", lambda size=size: copies(size)) for size in GPU_COPY_BYTES),
        ("the pinned copies", pinned),
        ("the device name", name),
    ]
    got, wall_s = run_within(steps, budget_s)
    copied = [got[f"the copies of {size / 2**20:g} MiB"] for size in GPU_COPY_BYTES]
    from . import _transfer

    return GpuProbe(
        launch_s=got["the launch latency"], elementwise=got["the elementwise point"], matmul=got["the matmul point"],
        h2d=tuple(c[0] for c in copied), d2h=tuple(c[1] for c in copied),
        h2d_pinned=got["the pinned copies"][0], d2h_pinned=got["the pinned copies"][1],
        wall_s=wall_s, gpu_name=got["the device name"], transfer_engine=getattr(_transfer, "ENGINE_NAME", None),
    )
