"""The calibration sweep: measures this machine and returns a ``Profile``.

For each kind of work and each backend ("side": NumPy on the host; CuPy on the GPU, data already
on the device, synchronized), seconds by input bytes, from 1 KiB up to a cap set by free host and GPU memory and by the time
budget; host<->device copy curves through the transfer engine the library uses, after the
engine's knobs are searched for this machine (``_copytune``, ``SweepPlan.copy_search``; stored as
the device backend's ``copy_tuning``, and the curves are those of the tuned engine); the launch
latency of a tiny kernel; the cold start of a fresh process (``import cupy`` + first kernel).

Curves are keyed by the bytes of all array inputs, as ``_profiles/defaults.py`` keys them: ``a*5+b`` at n
float64 elements is 16 n bytes, ``n x n @ n x n`` is 16 n^2. Random generation has no array
input: it is keyed by the bytes it generates. Inputs are random float64 (never zeros: some
libraries shortcut them).

The sides are a mapping from backend name to what the sweep needs of it (``sweep_sides()``);
the profile stores one ``BackendTiming`` per side. The host side "numpy" sets the pace (sizes
grow while a NumPy call stays within the plan's limits); a device side is measured at each of
those sizes while it has memory; a compiled side ("numba") at each of those sizes for the kinds
it runs, warm (each kind compiled once before its first point, the compilation not timed), and
its ``warmup_s`` is the compilation of one representative function (the three-step chain) for
one signature, timed apart. What it adds to a calibration: Numba's import, four kernel
compilations (0.3-0.6 s each for such expressions on the 2-core VM; loaded from Numba's disk
cache by the next calibration) and one timed compilation, plus its points, which share each
kind's time budget with NumPy's (not yet measured end to end on a quick sweep).

Nothing here prints: progress goes to a callback. Clock, workloads, sides and plan are
injectable so tests run the whole sweep in milliseconds with exact, fake timings.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy

from . import backends
from ._costmodel import KINDS
from ._profiles import (
    REFERENCE_BACKEND,
    BackendTiming,
    CopyRate,
    CopyTuning,
    Curve,
    Memory,
    Profile,
    cuda_gpu_details,
    current_fingerprint,
    gpu_fingerprint_fields,
    package_version,
)
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
    # The copy engine's knob search (_copytune.SearchPlan by name) before the copy curves; None: skip.
    copy_search: str | None = None

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
            copy_search="quick",
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
            copy_search="default",
        )


@dataclass(frozen=True)
class SweepProgress:
    """What the sweep is doing: handed to the progress callback."""

    fraction: float  # 0..1 of the whole sweep (an estimate: kinds may stop early)
    stage: str  # "setup", a kind name, "transfers", "launch latency", "cold start", "done"
    detail: str = ""


ProgressCallback = Callable[[SweepProgress], None]


# ---------------------------------------------------------------------------------------------
# The sides: each backend behind a small interface (a test double stands in for the GPU).
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Side:
    """One backend as the sweep measures it."""

    name: str  # the backend's name in the profile
    memory: Memory  # where its arrays live: "host" or "device"
    xp: Any  # the array module the workloads run with (numpy, cupy)
    sync: Callable[[], None] | None = None  # wait for queued work; None: calls return when done
    notes: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class DeviceSide(Side):
    """A backend with memory of its own: also its copies, its free memory and its cold start."""

    memory: Memory = "device"
    sync: Callable[[], None]  # wait for the current stream
    to_device: Callable[[numpy.ndarray], Any]
    to_host: Callable[[Any], numpy.ndarray]
    transfer_engine: str
    free_bytes: Callable[[], int]
    release: Callable[[], None]  # give cached device memory back between sizes
    cold_start: Callable[[], float | None]  # seconds of a fresh process's first work here
    out_of_memory: tuple[type[BaseException], ...] = (MemoryError,)
    fingerprint: dict = field(default_factory=dict)  # Fingerprint fields measured through CUDA
    # The copy engine's knob search: (search plan name, bytes cap) -> _copytune.SearchResult,
    # after which the engine uses the chosen knobs (so the copy curves are the tuned engine's).
    # None: the engine has no knobs (CuPy's own copies).
    tune_copies: Callable[[str, int], Any] | None = None


@dataclass(kw_only=True)
class CompiledSide(Side):
    """A host backend that runs a compiled version of each workload (Numba): measured warm."""

    memory: Memory = "host"
    # kind -> the compiled kernel taking the workload's arguments without ``xp``, compiled (None:
    # this backend does not take that kind of work)
    kernel: Callable[[str], Callable | None]
    compile_s: Callable[[], float | None]  # seconds to compile one representative signature


def numpy_side() -> Side:
    """NumPy on the host: always there."""
    return Side(name="numpy", memory="host", xp=numpy)


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


def cupy_side() -> tuple[DeviceSide | None, str]:
    """CuPy on the GPU, or None and why there is none."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        return None, f"no GPU measured: CuPy cannot be imported ({type(e).__name__}: {e})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "no GPU measured: CuPy sees no CUDA device"
        cupy.cuda.Device().use()  # the calling thread's current device, never device 0 by default
    except Exception as e:
        return None, f"no GPU measured: CUDA is not usable ({type(e).__name__}: {e})"

    notes = []
    tune_copies = None
    try:
        from . import _transfer

        engine = _transfer.ENGINE_NAME

        # Copies as of memory not seen before: the profile's copy curves, and the search, are
        # of the staged engine, not of the same arrays pinned on their second copy (_pincache.py).
        def to_device(host: Any) -> Any:
            with _transfer.unpinned_copies():
                return _transfer.to_device(host)

        def to_host(dev: Any) -> Any:
            with _transfer.unpinned_copies():
                return _transfer.to_host(dev)

        def tune_copies(plan_name: str, cap: int) -> Any:
            from . import _copytune

            plan = getattr(_copytune.SearchPlan, plan_name)().capped(cap)
            with _transfer.unpinned_copies():
                result = _copytune.search(_copytune.gpu_engine(), plan)
            _transfer.apply_tuning(result.knobs, "calibration")
            return result
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
        DeviceSide(
            name="cupy",
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
            tune_copies=tune_copies,
        ),
        "",
    )


def _numpy_side_or_why() -> tuple[Side | None, str | None]:
    return numpy_side(), None


# What the Numba tier is timed on, per kind: the workloads above written with numpy as a global
# (Numba cannot take a module argument). Dense linear algebra, FFT and random generation are not
# there: the tier refuses them (backends/_numba_rules.py).
def _numba_elementwise(a, b):
    return a * 5 + b


def _numba_transcendental(a, b):
    return numpy.sin(a) * numpy.exp(b) + numpy.sqrt(numpy.abs(a))


def _numba_reduction(a):
    return numpy.sum(a)


def _numba_sort(a):
    return numpy.sort(a)


NUMBA_KERNELS = {"elementwise": _numba_elementwise, "transcendental": _numba_transcendental,
                 "reduction": _numba_reduction, "sort": _numba_sort}


def _numba_chain(x):
    y = x * 5
    y = y * y
    return y + y


def _quietly_compiled(numba: Any, dispatcher: Any) -> Any:
    """Compile a sweep kernel for the contiguous float64 vectors the sweep passes, so Numba's
    "parallel=True but nothing to parallelize" warning (the sort) is not printed to the user."""
    import warnings

    nargs = dispatcher.py_func.__code__.co_argcount
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", numba.NumbaWarning)
        dispatcher.compile((numba.types.float64[::1],) * nargs)
    return dispatcher


def numba_side() -> tuple[CompiledSide | None, str | None]:
    """The Numba tier on all cores (NUMBA_NUM_THREADS), or None and why there is none."""
    from .backends import numba as numba_backend

    backend = numba_backend.load()
    if backend is None:
        return None, f"no Numba tier measured: {numba_backend.unavailable_reason()}"
    numba = backend.numba
    from .backends._numba_compile import JIT_OPTIONS

    compiled: dict[str, Callable | None] = {}

    def kernel(kind: str) -> Callable | None:
        if kind not in compiled:
            py = NUMBA_KERNELS.get(kind)
            # cache=True: a second calibration loads the kernels instead of compiling them.
            compiled[kind] = _quietly_compiled(numba, numba.njit(cache=True, **JIT_OPTIONS)(py)) if py is not None else None
        return compiled[kind]

    def compile_s() -> float | None:
        # A fresh dispatcher without the disk cache: what a new signature costs the tier.
        fresh = types.FunctionType(_numba_chain.__code__, _numba_chain.__globals__, "_numba_chain_timed")
        dispatcher = numba.njit(**JIT_OPTIONS)(fresh)
        start = time.perf_counter()
        try:
            dispatcher.compile((numba.types.float64[::1],))
        except Exception:
            return None
        return time.perf_counter() - start

    layer = numba.config.THREADING_LAYER
    return CompiledSide(name="numba", xp=numpy, kernel=kernel, compile_s=compile_s,
                        notes=[f"numba {numba.__version__}: {backend.max_threads} threads, threading layer setting {layer!r}"]), None


# How to measure each backend the registry knows, by its name.
_SIDE_MAKERS: dict[str, Callable[[], tuple[Side | None, str | None]]] = {
    "numpy": _numpy_side_or_why,
    "cupy": cupy_side,
    "numba": numba_side,
}


def sweep_sides() -> tuple[dict[str, Side], list[str]]:
    """The sides this machine can measure, one per registered backend (``backends.names()``), and
    notes on those it cannot."""
    sides: dict[str, Side] = {}
    notes: list[str] = []
    for name in backends.names():
        maker = _SIDE_MAKERS.get(name)
        side, why_not = maker() if maker is not None else (None, f"no sweep side for backend {name!r}")
        if side is not None:
            sides[name] = side
        elif why_not:
            notes.append(why_not)
    return sides, notes


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

    ``blip_tolerance``: see ``smooth_upward_blips`` (NumPy curves; ``SPIKE_TOLERANCE`` for the others)."""
    xs: list[float] = []
    ys: list[float] = []
    noisy: list[bool] = []
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


# The GPU's and the Numba tier's curves keep what they measured, but for a point more than this
# (a fraction) slower than the next larger size: no work takes 3x longer on less data, and such a
# spike predicts the backend that much slower at its size and so keeps calls from it there (the
# H200's default calibration of session 11 measured the tier's reduction at 66 us at 4 MiB,
# 5.99 ms at 8 MiB and 210 us at 16 MiB). Smaller bumps stay: a GPU curve's steps are real.
SPIKE_TOLERANCE = 2.0


def smooth_upward_blips(xs: Sequence[float], ys: Sequence[float], noisy: Sequence[bool], tolerance: float) -> tuple[list[float], list[bool]]:
    """NumPy points slower than the next larger size by more than ``tolerance`` (a fraction):
    the same work on more data does not take less time, so such a point caught interference (or
    a state of the allocator) rather than the work. It is replaced by the log-log interpolation
    of its neighbours (capped at the next point's time) and flagged noisy. Only upward blips: on
    NumPy curves with the timer's noise tolerance (a lower NumPy time can only move a decision
    towards NumPy, the default); on the GPU's and the tier's with ``SPIKE_TOLERANCE`` only, since
    a lower time there moves decisions away from NumPy.

    From the largest size down, so that each point is compared with a neighbour already
    smoothed: in one pass upwards, two slow points in a row left the first one (session 12's H200
    calibration: the tier's transcendental curve kept 5998 us at 1 MiB between 72 us at 512 KiB
    and the 600 us put in place of a slow 2 MiB point, so the tier was predicted 29x slower there
    than at 2 MiB; the shipped profile's notes).
    """
    ys, noisy = list(ys), list(noisy) or [False] * len(xs)
    for i in range(len(xs) - 2, -1, -1):
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
    points: dict[str, list[tuple[int, Timing]]]  # by side name
    stop_reason: str = "largest planned size reached"


def _measure_kind(
    workload: Workload,
    plan: SweepPlan,
    *,
    host: Side,
    devices: Mapping[str, DeviceSide],
    host_cap: int,
    device_caps: Mapping[str, int],
    budget_s: float,
    clock: Clock,
    report: Callable[[int, str], None],
    compiled: Mapping[str, CompiledSide] = {},
) -> _KindResult:
    result = _KindResult({host.name: [], **{name: [] for name in devices}, **{name: [] for name in compiled}})
    host_points = result.points[host.name]
    start = clock()
    alive = set(devices)
    # Each compiled side's kernel for this kind, compiled before the first point (not timed).
    kernels = {name: k for name, side in compiled.items() if (k := side.kernel(workload.kind)) is not None}
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
        report(index, f"{format_bytes(target, 4)} {host.name}")
        try:
            args, nbytes = workload.prepare(host.xp, target, SEED)
            timing = measure(lambda: workload.run(host.xp, *args), sync=host.sync, settings=plan.timer, clock=clock)
        except MemoryError:
            result.stop_reason = "host out of memory"
            break
        finally:
            args = ()
        host_points.append((nbytes, timing))
        if len(host_points) >= 2:  # measured growth, kept sane, predicts the next point
            (b0, t0), (b1, t1) = host_points[-2], host_points[-1]
            if b1 > b0 and t1.median_s > 0 and t0.median_s > 0:
                slope = min(2.0, max(1.0, math.log(t1.median_s / t0.median_s) / math.log(b1 / b0)))
        previous = (target, timing.median_s)

        for name, kernel in kernels.items():
            report(index, f"{format_bytes(target, 4)} {name}")
            args, nbytes = workload.prepare(host.xp, target, SEED)
            try:
                result.points[name].append((nbytes, measure(lambda: kernel(*args), sync=None, settings=plan.timer, clock=clock)))
            finally:
                args = ()
        for name, device in devices.items():
            if name in alive and not _measure_device_point(workload, plan, device, target, device_caps[name], clock, result, report, index):
                alive.discard(name)
    return result


def _measure_device_point(
    workload: Workload,
    plan: SweepPlan,
    device: DeviceSide,
    target: int,
    cap: int,
    clock: Clock,
    result: _KindResult,
    report: Callable[[int, str], None],
    index: int,
) -> bool:
    """Measure one point of ``device`` into ``result``; False once its curve must stop."""
    if target * workload.working_set > cap:
        return False
    report(index, f"{format_bytes(target, 4)} {device.name}")
    args: tuple = ()
    try:
        args, nbytes = workload.prepare(device.xp, target, SEED)
        device.sync()
        timing = measure(lambda: workload.run(device.xp, *args), sync=device.sync, settings=plan.timer, clock=clock)
    except device.out_of_memory:
        return False
    finally:
        args = ()
        device.release()
    result.points[device.name].append((nbytes, timing))
    return True


def _measure_transfers(
    device: DeviceSide, plan: SweepPlan, *, host_cap: int, device_cap: int, clock: Clock
) -> tuple[Curve | None, Curve | None]:
    h2d: list[tuple[int, Timing]] = []
    d2h: list[tuple[int, Timing]] = []
    for size in plan.transfer_sizes:
        # Host: the source and a received copy; device: the copy and one in flight.
        if 2 * size > host_cap or 2 * size > device_cap:
            break
        host = _random(numpy, max(1, size // 8), SEED)
        try:
            h2d.append((host.nbytes, measure(lambda: device.to_device(host), sync=device.sync, settings=plan.timer, clock=clock)))
            on_device = device.to_device(host)
            device.sync()
            d2h.append((host.nbytes, measure(lambda: device.to_host(on_device), sync=device.sync, settings=plan.timer, clock=clock)))
        except device.out_of_memory:
            break
        finally:
            on_device = None
            device.release()
    return _curve(h2d), _curve(d2h)


def run_sweep(
    plan: SweepPlan | None = None,
    *,
    progress: ProgressCallback | None = None,
    clock: Clock = time.perf_counter,
    sides: Mapping[str, Side] | str = "auto",
    workloads: Mapping[str, Workload] = WORKLOADS,
    host_free_bytes: int | None = None,
) -> Profile:
    """Measure this machine and return its Profile (not saved: see ``_calibrate.calibrate``).

    ``sides="auto"`` measures what ``sweep_sides()`` finds (NumPy, and CuPy when it and a device
    are there); a mapping from backend name to ``Side`` is used as given (tests pass doubles).
    It must hold the host side "numpy", which sets the pace. ``clock``, ``workloads`` and
    ``host_free_bytes`` are for tests.
    """
    plan = plan or SweepPlan.default()
    notify = progress or (lambda p: None)
    wall_start = time.perf_counter()
    notes: list[str] = [f"{plan.name} sweep"]

    notify(SweepProgress(0.0, "setup", "fingerprint and devices"))
    if sides == "auto":
        sides, why_not = sweep_sides()
        notes.extend(why_not)
    assert not isinstance(sides, str)
    host = sides[REFERENCE_BACKEND]
    devices = {name: side for name, side in sides.items() if isinstance(side, DeviceSide)}
    compiled = {name: side for name, side in sides.items() if isinstance(side, CompiledSide)}
    fingerprint = current_fingerprint(probe_gpu=False)
    for device in devices.values():
        fingerprint = fingerprint.model_copy(update=gpu_fingerprint_fields(fingerprint, device.fingerprint))
    for side in sides.values():
        notes.extend(side.notes)

    host_cap = int((host_free_bytes if host_free_bytes is not None else free_host_bytes()) * plan.host_memory_fraction)
    device_caps = {name: int(device.free_bytes() * plan.gpu_memory_fraction) for name, device in devices.items()}
    notes.append(f"memory caps: host {format_bytes(host_cap, 4)}" + "".join(f", GPU {format_bytes(cap, 4)}" for cap in device_caps.values()))

    # Progress weights: the kinds take most of the time; each device's extras a little.
    kinds = [k for k in plan.kinds if k in workloads]
    steps = len(kinds) + 3 * len(devices)

    curves: dict[str, dict[str, Curve]] = {name: {} for name in sides}
    budget_left = plan.budget_s if devices else plan.cpu_only_budget_s
    for done, kind in enumerate(kinds):
        kind_start = clock()
        share = budget_left / (len(kinds) - done)

        def report(index: int, detail: str, done: int = done, kind: str = kind) -> None:
            within = min(1.0, index / max(1, len(plan.sizes)))
            notify(SweepProgress((done + within) / steps, kind, detail))

        result = _measure_kind(
            workloads[kind], plan, host=host, devices=devices, host_cap=host_cap, device_caps=device_caps,
            budget_s=share, clock=clock, report=report, compiled=compiled,
        )
        budget_left -= clock() - kind_start
        host_curve = _curve(result.points[host.name], blip_tolerance=plan.timer.noisy_spread)
        if host_curve is None:
            notes.append(f"{kind}: not measured ({result.stop_reason})")
            continue
        curves[host.name][kind] = host_curve
        for name in (*devices, *compiled):
            if (device_curve := _curve(result.points[name], blip_tolerance=SPIKE_TOLERANCE)) is not None:
                curves[name][kind] = device_curve
        notes.append(f"{kind}: up to {format_bytes(host_curve.nbytes[-1], 4)}; stopped: {result.stop_reason}")
    for kind, source in REUSED_KINDS.items():
        for side_curves in curves.values():
            if kind in KINDS and source in side_curves and kind not in side_curves:
                side_curves[kind] = side_curves[source]

    backends = {host.name: BackendTiming(memory=host.memory, kinds=curves[host.name])}
    for name, side in compiled.items():
        notify(SweepProgress(len(kinds) / steps, "compile time", f"{name}: one signature of a three-step chain"))
        backends[name] = BackendTiming(memory=side.memory, kinds=curves[name], warmup_s=side.compile_s())
    for step, (name, device) in zip(range(len(kinds), steps, 3), devices.items()):
        copy_tuning = None
        if plan.copy_search and device.tune_copies is not None:
            notify(SweepProgress(step / steps, "copy tuning", f"{plan.copy_search} search of {device.transfer_engine}'s knobs"))
            copy_tuning, note = _tune_copies(device, plan.copy_search, min(host_cap, device_caps[name]) // 3)
            notes.append(note)
        notify(SweepProgress(step / steps, "transfers", device.transfer_engine))
        h2d, d2h = _measure_transfers(device, plan, host_cap=host_cap, device_cap=device_caps[name], clock=clock)
        notify(SweepProgress((step + 1) / steps, "launch latency", "8-element a*5+b, synchronized"))
        launch_latency = _measure_launch_latency(device, workloads, plan, clock)
        notify(SweepProgress((step + 2) / steps, "cold start", f"fresh process: import {name} + first kernel"))
        cold_start = _median_cold_start(device, plan.cold_start_runs)
        if cold_start is None:
            notes.append("cold start not measured (the subprocess failed); the dispatcher assumes its default")
        backends[name] = BackendTiming(
            memory=device.memory, kinds=curves[name], warmup_s=cold_start, launch_latency_s=launch_latency,
            transfer_engine=device.transfer_engine, h2d=h2d, d2h=d2h, copy_tuning=copy_tuning,
        )

    noisy = sum(
        sum(c.noisy)
        for b in backends.values()
        for c in (*b.kinds.values(), b.h2d, b.d2h)
        if c is not None
    )
    if noisy:
        notes.append(f"{noisy} noisy points (spread over {plan.timer.noisy_spread:.0%}): consider recalibrating on an idle machine")
    notes.append(f"sweep wall time {time.perf_counter() - wall_start:.1f} s")
    notify(SweepProgress(1.0, "done", ""))
    return Profile(
        autooffload_version=package_version(),
        fingerprint=fingerprint,
        quick=plan.name == "quick",
        backends=backends,
        notes=notes,
    ).with_source("sweep (not saved)")


def _tune_copies(device: DeviceSide, search: str, cap: int) -> tuple[CopyTuning | None, str]:
    """The copy engine's tuning searched on ``device`` (``_copytune.search``), as the profile
    stores it, and a note; a failed search leaves the defaults and says why."""
    assert device.tune_copies is not None
    try:
        r = device.tune_copies(search, cap)
    except Exception as e:  # noqa: BLE001 - the rest of the calibration is still worth having
        return None, f"copy tuning not searched ({type(e).__name__}: {e}); the engine keeps its defaults"
    tuning = CopyTuning(
        engine=device.transfer_engine,
        knobs=r.knobs,
        rates=[CopyRate(**{k: (int(v) if k == "nbytes" else v) for k, v in row.items()}) for row in r.rates],
        host_bound_GBps={k: v for k, v in r.host_bound.get("best", {}).items() if v > 0},
        host_bound_nbytes=r.host_bound.get("nbytes"),
        pinned_GBps={k: v for k, v in r.pinned_GBps.items() if v > 0},
        search_s=r.seconds,
        log=r.log,
    )
    return tuning, f"copy tuning: {search} search {r.seconds:.1f} s"


def _measure_launch_latency(device: DeviceSide, workloads: Mapping[str, Workload], plan: SweepPlan, clock: Clock) -> float | None:
    workload = workloads.get("elementwise")
    if workload is None:
        return None
    args, _ = workload.prepare(device.xp, 128, SEED)  # 8 float64 elements per input
    device.sync()
    timing = measure(lambda: workload.run(device.xp, *args), sync=device.sync, settings=plan.timer, clock=clock)
    return max(timing.median_s, MIN_SECONDS)


def _median_cold_start(device: DeviceSide, runs: int) -> float | None:
    times = sorted(t for t in (device.cold_start() for _ in range(max(1, runs))) if t is not None and t > 0)
    return times[len(times) // 2] if times else None
