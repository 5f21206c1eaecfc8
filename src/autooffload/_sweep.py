"""The calibration sweep: measures this machine and returns a ``Profile``.

For each kind of work, NumPy (CPU) and CuPy (GPU, data already on the device, synchronized)
seconds by input bytes, from 1 KiB up to a cap set by free host and GPU memory and by the time
budget; host<->device copy curves through the transfer engine the library uses; the launch
latency of a tiny kernel; the cold start of a fresh process (``import cupy`` + first kernel).

Curves are keyed by the bytes of all array inputs, as ``_profiles/defaults.py`` keys them: ``a*5+b`` at n
float64 elements is 16 n bytes, ``n x n @ n x n`` is 16 n^2. Random generation has no array
input: it is keyed by the bytes it generates. Inputs are random float64 (never zeros: some
libraries shortcut them).

Nothing here prints: progress goes to a callback. Clock, workloads, GPU side and plan are
injectable so tests run the whole sweep in milliseconds with exact, fake timings.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy

from ._costmodel import KINDS
from ._profiles import Curve, KindTiming, Profile, current_fingerprint, gpu_fingerprint_fields, package_version
from ._timing import Clock, TimerSettings, Timing, measure
from ._units import format_bytes

KiB, MiB, GiB = 1024, 1024**2, 1024**3
SEED = 20261124
# Below this a measured median is clock resolution, not a time (a Curve needs > 0).
MIN_SECONDS = 1e-9


# ---------------------------------------------------------------------------------------------
# What is measured.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One kind of work, written once for any array module ``xp`` (numpy or cupy)."""

    kind: str
    # (xp, target input bytes, seed) -> (arguments of run, actual input bytes)
    prepare: Callable[[Any, int, int], tuple[tuple, int]]
    run: Callable[..., Any]  # run(xp, *arguments)
    working_set: float  # peak bytes allocated per input byte (inputs, temporaries, result)
    work_exponent: float = 1.0  # work grows as bytes ** this (matmul: 1.5), to predict the next point


def _random(xp: Any, shape: int | tuple[int, ...], seed: int) -> Any:
    # Uniform in [0.5, 1.5): random, never zero, safe under sqrt/log-like kernels.
    return xp.random.default_rng(seed).random(shape) + 0.5


def _vectors(count: int) -> Callable[[Any, int, int], tuple[tuple, int]]:
    def prepare(xp: Any, target: int, seed: int) -> tuple[tuple, int]:
        n = max(1, target // (8 * count))
        arrays = tuple(_random(xp, n, seed + i) for i in range(count))
        return arrays, 8 * n * count

    return prepare


def _square_matrices(xp: Any, target: int, seed: int) -> tuple[tuple, int]:
    n = max(2, math.isqrt(target // 16))
    return (_random(xp, (n, n), seed), _random(xp, (n, n), seed + 1)), 16 * n * n


def _linear_system(xp: Any, target: int, seed: int) -> tuple[tuple, int]:
    n = max(2, math.isqrt(target // 8))
    a = _random(xp, (n, n), seed) + n * xp.eye(n)  # diagonally dominant: well conditioned
    return (a, _random(xp, n, seed + 1)), 8 * n * n + 8 * n


def _generator(xp: Any, target: int, seed: int) -> tuple[tuple, int]:
    n = max(1, target // 8)
    return (xp.random.default_rng(seed), n), 8 * n


WORKLOADS: dict[str, Workload] = {
    w.kind: w
    for w in (
        Workload("elementwise", _vectors(2), lambda xp, a, b: a * 5 + b, working_set=2.0),
        Workload(
            "transcendental",
            _vectors(2),
            lambda xp, a, b: xp.sin(a) * xp.exp(b) + xp.sqrt(xp.abs(a)),
            working_set=3.0,
        ),
        Workload("reduction", _vectors(1), lambda xp, a: xp.sum(a), working_set=1.1),
        Workload("sort", _vectors(1), lambda xp, a: xp.sort(a), working_set=2.5, work_exponent=1.1),
        Workload("fft", _vectors(1), lambda xp, a: xp.fft.fft(a), working_set=5.0, work_exponent=1.1),
        Workload("matmul", _square_matrices, lambda xp, a, b: a @ b, working_set=1.6, work_exponent=1.5),
        Workload("solve", _linear_system, lambda xp, a, b: xp.linalg.solve(a, b), working_set=2.2, work_exponent=1.5),
        Workload("random", _generator, lambda xp, rng, n: rng.random(n), working_set=1.1),
    )
}
# Kinds the sweep measures; the others in _costmodel.KINDS reuse a measured one.
REUSED_KINDS: dict[str, str] = {"generic": "elementwise"}


# ---------------------------------------------------------------------------------------------
# How much is measured.
# ---------------------------------------------------------------------------------------------


def geometric_sizes(start: int, stop: int, factor: int) -> tuple[int, ...]:
    """start, start*factor, ... up to and including stop."""
    sizes = []
    size = start
    while size <= stop:
        sizes.append(size)
        size *= factor
    return tuple(sizes)


@dataclass(frozen=True)
class SweepPlan:
    """How far and how carefully to measure."""

    name: str
    sizes: tuple[int, ...]  # target input bytes of the kind curves, ascending
    transfer_sizes: tuple[int, ...]  # bytes of the copy curves, ascending
    timer: TimerSettings
    budget_s: float  # wall time for the kind curves, shared out among kinds as they run
    cpu_only_budget_s: float  # the same without a GPU (no crossover to find: keep it short)
    max_call_s: float  # stop growing a kind once one NumPy call takes this long
    kinds: tuple[str, ...] = tuple(WORKLOADS)
    host_memory_fraction: float = 0.25  # a point's working set may use this much free memory
    gpu_memory_fraction: float = 0.25
    cold_start_runs: int = 1

    @classmethod
    def quick(cls) -> "SweepPlan":
        """Within 60 s on the GPU machine: 4x size steps, few repeats, small budget."""
        return cls(
            name="quick",
            sizes=geometric_sizes(KiB, 256 * MiB, 4),
            transfer_sizes=geometric_sizes(4 * KiB, 256 * MiB, 4),
            timer=TimerSettings(warmup=1, repeats=5, min_repeats=3, min_sample_s=1e-3, max_point_s=0.3),
            budget_s=35.0,
            cpu_only_budget_s=12.0,
            max_call_s=0.08,
            cold_start_runs=1,
        )

    @classmethod
    def default(cls) -> "SweepPlan":
        """Within 5 minutes on the GPU machine: 2x size steps up to 4 GiB, more repeats."""
        return cls(
            name="default",
            sizes=geometric_sizes(KiB, 4 * GiB, 2),
            transfer_sizes=geometric_sizes(4 * KiB, 1 * GiB, 2),
            timer=TimerSettings(warmup=2, repeats=9, min_repeats=3, min_sample_s=5e-3, max_point_s=1.5),
            budget_s=200.0,
            cpu_only_budget_s=60.0,
            max_call_s=1.0,
            cold_start_runs=3,
        )


@dataclass(frozen=True)
class SweepProgress:
    """What the sweep is doing: handed to the progress callback."""

    fraction: float  # 0..1 of the whole sweep (an estimate: kinds may stop early)
    stage: str  # "setup", a kind name, "transfers", "launch latency", "cold start", "done"
    detail: str = ""


ProgressCallback = Callable[[SweepProgress], None]


# ---------------------------------------------------------------------------------------------
# The GPU, behind a small interface (a test double stands in for it in CPU tests).
# ---------------------------------------------------------------------------------------------


@dataclass
class GpuSide:
    xp: Any  # the array module: cupy
    sync: Callable[[], None]  # wait for the current stream
    to_device: Callable[[numpy.ndarray], Any]
    to_host: Callable[[Any], numpy.ndarray]
    transfer_engine: str
    free_bytes: Callable[[], int]
    release: Callable[[], None]  # give cached device memory back between sizes
    cold_start: Callable[[], float | None]  # seconds of a fresh process's first GPU work
    out_of_memory: tuple[type[BaseException], ...] = (MemoryError,)
    fingerprint: dict = field(default_factory=dict)  # Fingerprint fields measured through CUDA
    notes: list[str] = field(default_factory=list)


_COLD_START_CODE = """
import time
t0 = time.perf_counter()
import cupy
a = cupy.arange(1024, dtype=cupy.float64) + 0.5
(a * 5 + a).sum()
cupy.cuda.get_current_stream().synchronize()
print(time.perf_counter() - t0)
"""


def measure_cold_start(timeout_s: float = 120.0) -> float | None:
    """``import cupy`` + first kernel + sync in a fresh interpreter (its startup not counted)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _COLD_START_CODE], capture_output=True, text=True, timeout=timeout_s, check=True
        )
        return float(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


def cupy_gpu_side() -> tuple[GpuSide | None, str]:
    """The real GPU side, or None and why there is none."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        return None, f"no GPU measured: CuPy cannot be imported ({type(e).__name__}: {e})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "no GPU measured: CuPy sees no CUDA device"
        cupy.cuda.Device(0).use()
    except Exception as e:
        return None, f"no GPU measured: CUDA is not usable ({type(e).__name__}: {e})"

    from ._profiles import cuda_gpu_details

    notes = []
    try:
        from . import _transfer

        to_device, to_host, engine = _transfer.to_device, _transfer.to_host, _transfer.ENGINE_NAME
    except ImportError:
        # autooffload._transfer not there yet: measure CuPy's own pageable copies, and say so.
        to_device, to_host, engine = cupy.asarray, cupy.asnumpy, "cupy-default (fallback: autooffload._transfer missing)"
        notes.append("copy curves measured with cupy.asarray/cupy.asnumpy: autooffload._transfer was not importable")

    pool = cupy.get_default_memory_pool()

    def free_bytes() -> int:
        return int(cupy.cuda.runtime.memGetInfo()[0]) + int(pool.free_bytes())

    def sync() -> None:
        cupy.cuda.get_current_stream().synchronize()

    oom: tuple[type[BaseException], ...] = (cupy.cuda.memory.OutOfMemoryError, MemoryError)
    return (
        GpuSide(
            xp=cupy,
            sync=sync,
            to_device=to_device,
            to_host=to_host,
            transfer_engine=engine,
            free_bytes=free_bytes,
            release=pool.free_all_blocks,
            cold_start=measure_cold_start,
            out_of_memory=oom,
            fingerprint=cuda_gpu_details(),
            notes=notes,
        ),
        "",
    )


def free_host_bytes() -> int:
    """MemAvailable from /proc/meminfo (free + reclaimable cache), else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 * GiB


# ---------------------------------------------------------------------------------------------
# The sweep.
# ---------------------------------------------------------------------------------------------


def _curve(points: Sequence[tuple[int, Timing]], *, blip_tolerance: float | None = None) -> Curve | None:
    """A Curve from (bytes, timing) points; sizes that rounded to the same bytes keep the first.

    ``blip_tolerance``: see ``smooth_upward_blips`` (NumPy curves)."""
    xs, ys, noisy = [], [], []
    for nbytes, t in points:
        if xs and nbytes <= xs[-1]:
            continue
        xs.append(float(nbytes))
        ys.append(max(t.median_s, MIN_SECONDS))
        noisy.append(t.noisy)
    if not xs:
        return None
    if blip_tolerance is not None:
        ys, noisy = smooth_upward_blips(xs, ys, noisy, blip_tolerance)
    return Curve(nbytes=xs, seconds=ys, noisy=noisy if any(noisy) else [])


def smooth_upward_blips(xs: Sequence[float], ys: Sequence[float], noisy: Sequence[bool], tolerance: float) -> tuple[list[float], list[bool]]:
    """NumPy points slower than the next larger size by more than ``tolerance`` (a fraction):
    the same work on more data does not take less time, so such a point caught interference (or
    a state of the allocator) rather than the work. It is replaced by the log-log interpolation
    of its neighbours (capped at the next point's time) and flagged noisy. Only upward blips, and
    only on NumPy curves: a lower NumPy time can only move a decision towards NumPy, the default.
    """
    ys, noisy = list(ys), list(noisy) or [False] * len(xs)
    for i in range(len(xs) - 1):
        if ys[i] <= ys[i + 1] * (1.0 + tolerance):
            continue
        if i == 0:
            ys[i] = ys[i + 1]
        else:
            f = math.log(xs[i] / xs[i - 1]) / math.log(xs[i + 1] / xs[i - 1])
            ys[i] = min(ys[i + 1], math.exp(math.log(ys[i - 1]) + f * (math.log(ys[i + 1]) - math.log(ys[i - 1]))))
        noisy[i] = True
    return ys, noisy


def _predicted_point_s(call_s: float, timer: TimerSettings) -> float:
    """Rough wall time ``measure`` spends on a call of ``call_s`` (with data preparation)."""
    per_sample = max(call_s, timer.min_sample_s)
    samples = min(timer.repeats * per_sample, max(timer.max_point_s, timer.min_repeats * per_sample))
    return 1.5 * (call_s * (timer.warmup + 1) + samples)


@dataclass
class _KindResult:
    cpu: list[tuple[int, Timing]] = field(default_factory=list)
    gpu: list[tuple[int, Timing]] = field(default_factory=list)
    stop_reason: str = "largest planned size reached"


def _measure_kind(
    workload: Workload,
    plan: SweepPlan,
    *,
    gpu: GpuSide | None,
    host_cap: int,
    gpu_cap: int,
    budget_s: float,
    clock: Clock,
    report: Callable[[int, str], None],
) -> _KindResult:
    result = _KindResult()
    start = clock()
    gpu_alive = gpu is not None
    previous: tuple[int, float] | None = None  # (target bytes, NumPy seconds per call)
    slope = workload.work_exponent
    for index, target in enumerate(plan.sizes):
        if target * workload.working_set > host_cap:
            result.stop_reason = f"host memory cap ({format_bytes(host_cap, 4)} for this kind's working set)"
            break
        if previous is not None:
            prev_target, prev_s = previous
            if prev_s >= plan.max_call_s:
                result.stop_reason = f"one NumPy call took {prev_s:.3g} s (limit {plan.max_call_s} s)"
                break
            predicted_call = prev_s * (target / prev_target) ** slope
            if clock() - start + _predicted_point_s(predicted_call, plan.timer) > budget_s:
                result.stop_reason = f"time budget ({budget_s:.1f} s for this kind)"
                break
        report(index, f"{format_bytes(target, 4)} numpy")
        try:
            args, nbytes = workload.prepare(numpy, target, SEED)
            timing = measure(lambda: workload.run(numpy, *args), settings=plan.timer, clock=clock)
        except MemoryError:
            result.stop_reason = "host out of memory"
            break
        finally:
            args = ()
        result.cpu.append((nbytes, timing))
        if len(result.cpu) >= 2:  # measured growth, kept sane, predicts the next point
            (b0, t0), (b1, t1) = result.cpu[-2], result.cpu[-1]
            if b1 > b0 and t1.median_s > 0 and t0.median_s > 0:
                slope = min(2.0, max(1.0, math.log(t1.median_s / t0.median_s) / math.log(b1 / b0)))
        previous = (target, timing.median_s)

        if gpu_alive and gpu is not None:
            gpu_alive = _measure_gpu_point(workload, plan, gpu, target, gpu_cap, clock, result, report, index)
    return result


def _measure_gpu_point(
    workload: Workload,
    plan: SweepPlan,
    gpu: GpuSide,
    target: int,
    gpu_cap: int,
    clock: Clock,
    result: _KindResult,
    report: Callable[[int, str], None],
    index: int,
) -> bool:
    """Measure one GPU point into ``result``; False once the GPU curve must stop."""
    if target * workload.working_set > gpu_cap:
        return False
    report(index, f"{format_bytes(target, 4)} cupy")
    args: tuple = ()
    try:
        args, nbytes = workload.prepare(gpu.xp, target, SEED)
        gpu.sync()
        timing = measure(lambda: workload.run(gpu.xp, *args), sync=gpu.sync, settings=plan.timer, clock=clock)
    except gpu.out_of_memory:
        return False
    finally:
        args = ()
        gpu.release()
    result.gpu.append((nbytes, timing))
    return True


def _measure_transfers(
    gpu: GpuSide, plan: SweepPlan, *, host_cap: int, gpu_cap: int, clock: Clock
) -> tuple[Curve | None, Curve | None]:
    h2d: list[tuple[int, Timing]] = []
    d2h: list[tuple[int, Timing]] = []
    for size in plan.transfer_sizes:
        # Host: the source and a received copy; device: the copy and one in flight.
        if 2 * size > host_cap or 2 * size > gpu_cap:
            break
        host = _random(numpy, max(1, size // 8), SEED)
        try:
            h2d.append((host.nbytes, measure(lambda: gpu.to_device(host), sync=gpu.sync, settings=plan.timer, clock=clock)))
            device = gpu.to_device(host)
            gpu.sync()
            d2h.append((host.nbytes, measure(lambda: gpu.to_host(device), sync=gpu.sync, settings=plan.timer, clock=clock)))
        except gpu.out_of_memory:
            break
        finally:
            device = None
            gpu.release()
    return _curve(h2d), _curve(d2h)


def run_sweep(
    plan: SweepPlan | None = None,
    *,
    progress: ProgressCallback | None = None,
    clock: Clock = time.perf_counter,
    gpu: GpuSide | None | str = "auto",
    workloads: Mapping[str, Workload] = WORKLOADS,
    host_free_bytes: int | None = None,
) -> Profile:
    """Measure this machine and return its Profile (not saved: see ``_calibrate.calibrate``).

    ``gpu="auto"`` uses CuPy when it and a device are there; None measures the CPU only; a
    ``GpuSide`` is used as given (tests pass a double). ``clock``, ``workloads`` and
    ``host_free_bytes`` are for tests.
    """
    plan = plan or SweepPlan.default()
    notify = progress or (lambda p: None)
    wall_start = time.perf_counter()
    notes: list[str] = [f"{plan.name} sweep"]

    notify(SweepProgress(0.0, "setup", "fingerprint and devices"))
    if gpu == "auto":
        gpu, why_not = cupy_gpu_side()
        if why_not:
            notes.append(why_not)
    assert not isinstance(gpu, str)
    fingerprint = current_fingerprint(probe_gpu=False)
    if gpu is not None:
        fingerprint = fingerprint.model_copy(update=gpu_fingerprint_fields(fingerprint, gpu.fingerprint))
    if gpu is not None:
        notes.extend(gpu.notes)

    host_cap = int((host_free_bytes if host_free_bytes is not None else free_host_bytes()) * plan.host_memory_fraction)
    gpu_cap = int(gpu.free_bytes() * plan.gpu_memory_fraction) if gpu is not None else 0
    notes.append(f"memory caps: host {format_bytes(host_cap, 4)}" + (f", GPU {format_bytes(gpu_cap, 4)}" if gpu else ""))

    # Progress weights: the kinds take most of the time; the GPU extras a little.
    kinds = [k for k in plan.kinds if k in workloads]
    extras = 3 if gpu is not None else 0
    steps = len(kinds) + extras

    kinds_measured: dict[str, KindTiming] = {}
    budget_left = plan.budget_s if gpu is not None else plan.cpu_only_budget_s
    for done, kind in enumerate(kinds):
        kind_start = clock()
        share = budget_left / (len(kinds) - done)

        def report(index: int, detail: str, done: int = done, kind: str = kind) -> None:
            within = min(1.0, index / max(1, len(plan.sizes)))
            notify(SweepProgress((done + within) / steps, kind, detail))

        result = _measure_kind(
            workloads[kind], plan, gpu=gpu, host_cap=host_cap, gpu_cap=gpu_cap, budget_s=share, clock=clock, report=report
        )
        budget_left -= clock() - kind_start
        cpu_curve = _curve(result.cpu, blip_tolerance=plan.timer.noisy_spread)
        if cpu_curve is None:
            notes.append(f"{kind}: not measured ({result.stop_reason})")
            continue
        kinds_measured[kind] = KindTiming(cpu=cpu_curve, gpu=_curve(result.gpu))
        notes.append(f"{kind}: up to {format_bytes(cpu_curve.nbytes[-1], 4)}; stopped: {result.stop_reason}")
    for kind, source in REUSED_KINDS.items():
        if kind in KINDS and source in kinds_measured and kind not in kinds_measured:
            kinds_measured[kind] = kinds_measured[source]

    h2d = d2h = None
    launch_latency = cold_start = None
    if gpu is not None:
        step = len(kinds)
        notify(SweepProgress(step / steps, "transfers", gpu.transfer_engine))
        h2d, d2h = _measure_transfers(gpu, plan, host_cap=host_cap, gpu_cap=gpu_cap, clock=clock)
        notify(SweepProgress((step + 1) / steps, "launch latency", "8-element a*5+b, synchronized"))
        launch_latency = _measure_launch_latency(gpu, workloads, plan, clock)
        notify(SweepProgress((step + 2) / steps, "cold start", "fresh process: import cupy + first kernel"))
        cold_start = _median_cold_start(gpu, plan.cold_start_runs)
        if cold_start is None:
            notes.append("cold start not measured (the subprocess failed); the dispatcher assumes its default")

    noisy = sum(
        sum(c.noisy) for t in kinds_measured.values() for c in (t.cpu, t.gpu) if c is not None
    ) + sum(sum(c.noisy) for c in (h2d, d2h) if c is not None)
    if noisy:
        notes.append(f"{noisy} noisy points (spread over {plan.timer.noisy_spread:.0%}): consider recalibrating on an idle machine")
    notes.append(f"sweep wall time {time.perf_counter() - wall_start:.1f} s")
    notify(SweepProgress(1.0, "done", ""))
    return Profile(
        autooffload_version=package_version(),
        fingerprint=fingerprint,
        has_gpu=gpu is not None,
        quick=plan.name == "quick",
        transfer_engine=gpu.transfer_engine if gpu is not None else None,
        h2d=h2d,
        d2h=d2h,
        launch_latency_s=launch_latency,
        cold_start_s=cold_start,
        kinds=kinds_measured,
        notes=notes,
    ).with_source("sweep (not saved)")


def _measure_launch_latency(gpu: GpuSide, workloads: Mapping[str, Workload], plan: SweepPlan, clock: Clock) -> float | None:
    workload = workloads.get("elementwise")
    if workload is None:
        return None
    args, _ = workload.prepare(gpu.xp, 128, SEED)  # 8 float64 elements per input
    gpu.sync()
    timing = measure(lambda: workload.run(gpu.xp, *args), sync=gpu.sync, settings=plan.timer, clock=clock)
    return max(timing.median_s, MIN_SECONDS)


def _median_cold_start(gpu: GpuSide, runs: int) -> float | None:
    times = sorted(t for t in (gpu.cold_start() for _ in range(max(1, runs))) if t is not None and t > 0)
    return times[len(times) // 2] if times else None
