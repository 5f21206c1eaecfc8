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


def measure_gpu(backend: Any, budget_s: float = GPU_PROBE_BUDGET_S) -> GpuProbe:
    """Probe the GPU of ``backend`` (the loaded CuPy backend); ``ProbeFailed`` past ``budget_s``
    or when it is not a CuPy device (a test double)."""
    from .backends.cupy import CupyBackend

    if not isinstance(backend, CupyBackend):
        raise ProbeFailed(f"the device backend is {type(backend).__name__}, not CuPy on a GPU")
    cp = backend.xp
    start = clock()
    stream_sync = cp.cuda.get_current_stream().synchronize

    def check(step: str) -> None:
        if clock() - start > budget_s:
            raise ProbeFailed(f"exceeded its {budget_s:g} s budget ({clock() - start:.2g} s, at {step})")

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

    f8 = cp.float64
    a, b = cp.zeros(8, f8), cp.zeros(8, f8)
    ew_fn: Callable[[], Any] = lambda: a * 5 + b  # noqa: E731
    ew_fn()  # compiles the kernels (once per machine: CuPy keeps them on disk)
    launch = timed(ew_fn, 15)
    check("the launch latency")

    n = int(GPU_ELEMENTWISE_BYTES // 16)
    a, b = cp.zeros(n, f8), cp.zeros(n, f8)
    elementwise = (float(2 * a.nbytes), timed(ew_fn, 3))
    a = b = None
    check("the elementwise point")

    m = cp.zeros((GPU_MATMUL_N, GPU_MATMUL_N), f8)
    matmul = (float(2 * m.nbytes), timed(lambda: m @ m, 3))
    m = None
    check("the matmul point")

    h2d, d2h = [], []
    for size in GPU_COPY_BYTES:
        host = np.full(int(size // 8), 1.5)
        h2d.append((float(host.nbytes), timed(lambda: backend.to_device(host), 3)))
        dev = backend.to_device(host)
        d2h.append((float(host.nbytes), timed(lambda: backend.to_host(dev), 3)))
        dev = None
        check(f"the copies of {size / 2**20:g} MiB")

    import cupyx

    size = int(GPU_COPY_BYTES[-1] // 8)
    pinned = cupyx.empty_pinned((size,), f8)
    pinned[...] = 1.5
    dev = cp.empty(size, f8)
    h2d_pinned = (float(pinned.nbytes), timed(lambda: dev.set(pinned), 3))
    d2h_pinned = (float(pinned.nbytes), timed(lambda: dev.get(out=pinned), 3))
    dev = pinned = None
    check("the pinned copies")

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props.get("name", b"")
    name = name.decode(errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)
    from . import _transfer

    return GpuProbe(
        launch_s=launch, elementwise=elementwise, matmul=matmul, h2d=tuple(h2d), d2h=tuple(d2h),
        h2d_pinned=h2d_pinned, d2h_pinned=d2h_pinned, wall_s=clock() - start, gpu_name=name,
        transfer_engine=getattr(_transfer, "ENGINE_NAME", None),
    )
