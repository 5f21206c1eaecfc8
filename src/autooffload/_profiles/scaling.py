"""A known profile scaled to an uncalibrated machine by a short probe: pure arithmetic, no I/O.

A machine with no calibrated profile and no shipped profile for its GPU model used to get the
built-in defaults alone, which left dense linear algebra on 2048x2048 matrices and heavy work on
1e7 elements on NumPy while the H200's GPU was 10-57x faster (MEASURED-H200.md), and which have no
Numba curves at all. Instead, two probes (``autooffload._probe`` measures them) scale the nearest
measured profile:

**Device side** (``GpuProbe``, at the first GPU start of a process): the reference is the shipped
GPU profile the probe is closest to (``nearest_device_reference``: the smallest mean |log ratio|
over the probe's points, so the least scaling), and each of its device curves is scaled by the
ratio of what the probe measured here to what the reference's own curve predicts at the probe's
size: the synchronized tiny call scales the fixed cost (launch latency) of every kind, the
elementwise point the work part of the memory-bound kinds, the matmul point that of the dense
kinds (matmul, solve), the copies through the transfer engine the h2d/d2h curves (per size,
log-interpolated between the probe's sizes), never faster than the pinned DMA rate the probe
measured (the link's ceiling).

**Host side** (``HostProbe``, one memory-bound NumPy pass of 4 MiB, the elementwise curve's
``a*5+b``): the Numba tier's curves come from the shipped profile whose CPU core count is closest
(``nearest_tier_reference``) and are scaled (``scale_tier``), with ``k = reference cores / usable
cores`` here: each curve's first point (the fork-join floor of a parallel loop, which grows with
the threads) times ``k ** -0.5``; the work above it times ``k`` (not for sort: Numba's np.sort
is serial) and, for the memory-bound kinds (elementwise, reduction), times this host's speed
relative to that machine (the probe against that profile's own NumPy elementwise curve at
4 MiB; the pass says nothing of arithmetic speed, so transcendental and sort keep 1).
Leave-one-out on the two shipped machines with Numba curves (16-core Xeon of the H200 box, 2-core
EPYC), predicting each one's tier curves from the other's at 16 KiB-256 MiB. With the H200's
session-19 calibration (the one shipped): elementwise and reduction within 3.6x (3.2-3.6x at
16-128 MiB, where that start's host memory was fast: 53 GB/s memcpy), transcendental within
2.1x, sort within 1.4x, but for the 2-core VM's steps below. With its session-12 calibration:
elementwise within 2.6x, transcendental within 2.7x, sort within 1.4x,
reduction within 2.7x, except at 2 and 32 MiB (elementwise 3.4-3.7x) and 2 MiB (transcendental
3.3x), where that calibration flagged most of the H200 tier's points noisy (with session 11's:
elementwise 2.9x, transcendental 2.6x, sort 1.8x, reduction 2.3x), and except where a curve has a step the other has not (two points of the
2-core VM's reduction curve, at 32 KiB and 1 MiB, 5-100x above both neighbours; Numba's sort
steps up at 16 KiB on one machine and 64 KiB on the other: 4-7x at 16-32 KiB with session 11's
curves, 3.3x with session 12's) and the 16-core
transcendental floor carried to 2 cores (8.6x at 16 KiB, 3.5x with session 11's curves; with session 6's H200 curves,
elementwise 2.5x, transcendental 2x, sort 1.4x, reduction 2.7x everywhere but the steps). Without the floor's core exponent and the split by kind, the
same check missed by up to 6.7x elsewhere too. ``tests/test_probe.py`` checks it. The decisions' learning (``_learn``) corrects what
remains, per function.

Ratios outside ``[1/RATIO_LIMIT, RATIO_LIMIT]`` mean a broken measurement, not a machine:
``ProbeRejected``, and the built-in defaults stay.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from .model import BackendTiming, Curve, Profile

MiB = 1024.0**2

# What the probes measure, at which input sizes (bytes of all array inputs, as the curves are keyed).
HOST_PROBE_BYTES = 4 * MiB  # a*5+b over two float64 vectors of 256 Ki elements
GPU_ELEMENTWISE_BYTES = 128 * MiB  # a*5+b over two float64 vectors of 8 Mi elements: work >> launch
GPU_MATMUL_N = 2048  # 2048x2048 @ 2048x2048 float64: 64 MiB of input, ~0.3 ms on an H200
GPU_COPY_BYTES = (1 * MiB, 32 * MiB)

# Kinds whose device work is dense linear algebra (the matmul point scales them); every other
# device kind is memory-bound on a GPU (the elementwise point scales it).
DENSE_KINDS = frozenset({"matmul", "solve"})
RATIO_LIMIT = 50.0
TIER = "numba"


PROBED_MARK = "probe of this GPU"  # in the source of a profile scaled by a GPU probe


def is_probed(profile: Profile) -> bool:
    """Whether ``profile`` is a reference scaled to this machine by its GPU probe."""
    return PROBED_MARK in profile.source


class ProbeRejected(ValueError):
    """The probe's numbers cannot describe a machine (a ratio beyond RATIO_LIMIT, a zero time)."""


@dataclass(frozen=True)
class GpuProbe:
    """What the GPU probe measured (seconds; sizes in bytes of input)."""

    launch_s: float  # an 8-element a*5+b, synchronized (what the sweep calls launch latency)
    elementwise: tuple[float, float]  # (bytes, seconds) of a*5+b, synchronized
    matmul: tuple[float, float]  # (bytes, seconds) of n x n @ n x n, synchronized
    h2d: tuple[tuple[float, float], ...]  # (bytes, seconds) through the transfer engine, pageable source
    d2h: tuple[tuple[float, float], ...]
    h2d_pinned: tuple[float, float] | None = None  # (bytes, seconds) of a DMA from page-locked memory
    d2h_pinned: tuple[float, float] | None = None
    wall_s: float = 0.0  # the probe's own time, all steps
    gpu_name: str = ""
    transfer_engine: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "GpuProbe":
        """Parsed JSON back to a GpuProbe; ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a GPU probe is a JSON object; got {type(data).__name__}")
        try:
            probe = cls(
                launch_s=_seconds(data["launch_s"]),
                elementwise=_point(data["elementwise"]),
                matmul=_point(data["matmul"]),
                h2d=tuple(_point(p) for p in data["h2d"]),
                d2h=tuple(_point(p) for p in data["d2h"]),
                h2d_pinned=None if data.get("h2d_pinned") is None else _point(data["h2d_pinned"]),
                d2h_pinned=None if data.get("d2h_pinned") is None else _point(data["d2h_pinned"]),
                wall_s=float(data.get("wall_s", 0.0)),
                gpu_name=str(data.get("gpu_name", "")),
                transfer_engine=data.get("transfer_engine"),
            )
        except KeyError as e:
            raise ValueError(f"a GPU probe needs the field {e.args[0]!r}") from None
        except TypeError as e:
            raise ValueError(f"a GPU probe field has the wrong type ({e})") from None
        if not probe.h2d or not probe.d2h:
            raise ValueError("a GPU probe needs at least one copy point each way")
        return probe


@dataclass(frozen=True)
class HostProbe:
    """One memory-bound NumPy pass on this host: ``a*5+b`` over ``nbytes`` of input."""

    nbytes: float
    seconds: float
    cores: int  # usable cores (_cores.usable_cores) when it was measured

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "HostProbe":
        if not isinstance(data, dict):
            raise ValueError(f"a host probe is a JSON object; got {type(data).__name__}")
        try:
            cores = data["cores"]
            if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
                raise ValueError(f"a host probe's cores must be a positive integer; got {cores!r}")
            nbytes, seconds = _point((data["nbytes"], data["seconds"]))
            return cls(nbytes=nbytes, seconds=seconds, cores=cores)
        except KeyError as e:
            raise ValueError(f"a host probe needs the field {e.args[0]!r}") from None


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"a probe time must be a finite number > 0; got {value!r}")
    return float(value)


def _point(value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"a probe point is [bytes, seconds]; got {value!r}")
    return _seconds(value[0]), _seconds(value[1])


def _ratio(measured: float, predicted: float, what: str) -> float:
    if not (measured > 0 and predicted > 0):
        raise ProbeRejected(f"{what}: cannot compare {measured!r} s with {predicted!r} s")
    r = measured / predicted
    if not (1 / RATIO_LIMIT <= r <= RATIO_LIMIT):
        raise ProbeRejected(f"{what} measured {measured:.3g} s where the reference predicts {predicted:.3g} s "
                            f"({r:.3g}x, beyond {RATIO_LIMIT:g}x either way): not trusted")
    return r


# ---------------------------------------------------------------------------------------------
# Scaling one curve.
# ---------------------------------------------------------------------------------------------


def scale_work(curve: Curve, fixed_ref: float, fixed_new: float, ratio: float) -> Curve:
    """``curve`` with its fixed cost ``fixed_ref`` replaced by ``fixed_new`` and the work above it
    multiplied by ``ratio``: t' = fixed_new * min(t, fixed_ref) / fixed_ref + ratio * max(t - fixed_ref, 0).

    Continuous and increasing in t, so a monotone curve stays monotone."""
    if fixed_ref <= 0 or fixed_new <= 0 or ratio <= 0:
        raise ValueError(f"fixed costs and ratio must be > 0; got {fixed_ref}, {fixed_new}, {ratio}")
    seconds = [fixed_new * min(t, fixed_ref) / fixed_ref + ratio * max(t - fixed_ref, 0.0) for t in curve.seconds]
    return Curve(nbytes=list(curve.nbytes), seconds=seconds, noisy=list(curve.noisy))


def work_ratio(measured_s: float, predicted_s: float, fixed_ref: float, fixed_new: float, what: str) -> float:
    """The ratio that makes ``scale_work`` turn ``predicted_s`` into ``measured_s`` (the work parts'
    ratio); the totals' ratio where either work part is under a tenth of its total (fixed costs
    dominate there and the difference would be noise)."""
    work_new, work_ref = measured_s - fixed_new, predicted_s - fixed_ref
    if work_new < 0.1 * measured_s or work_ref < 0.1 * predicted_s:
        return _ratio(measured_s, predicted_s, what)
    return _ratio(work_new, work_ref, what)


def _interpolated(points: Sequence[tuple[float, float]], nbytes: float) -> float:
    """A ratio at ``nbytes`` from (bytes, ratio) points: constant outside, log-linear between."""
    xs = [b for b, _ in points]
    if nbytes <= xs[0]:
        return points[0][1]
    if nbytes >= xs[-1]:
        return points[-1][1]
    i = bisect_left(xs, nbytes)
    (x0, r0), (x1, r1) = points[i - 1], points[i]
    t = math.log(nbytes / x0) / math.log(x1 / x0)
    return math.exp(math.log(r0) + t * math.log(r1 / r0))


def scale_copies(curve: Curve, measured: Iterable[tuple[float, float]], pinned: tuple[float, float] | None, what: str) -> Curve:
    """A copy curve scaled by the measured/predicted ratio at the probe's sizes (log-interpolated
    between them), and never faster than ``pinned`` (bytes, seconds): the DMA rate from page-locked
    memory is the link's ceiling, which a copy from pageable memory cannot beat."""
    ratios = sorted((b, _ratio(s, curve.predict(b), f"{what} of {b / MiB:g} MiB")) for b, s in measured)
    rate = pinned[0] / pinned[1] if pinned is not None else math.inf
    seconds = [max(t * _interpolated(ratios, b), b / rate) for b, t in zip(curve.nbytes, curve.seconds)]
    return Curve(nbytes=list(curve.nbytes), seconds=seconds, noisy=list(curve.noisy))


# ---------------------------------------------------------------------------------------------
# The device side.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceScaling:
    """The ratios a GPU probe gives against one reference profile (measured / reference)."""

    reference: str  # the reference's name ("h200")
    launch: float
    elementwise: float
    matmul: float
    h2d: tuple[tuple[float, float], ...]  # (bytes, ratio)
    d2h: tuple[tuple[float, float], ...]
    notes: list[str] = field(default_factory=list)

    def distance(self) -> float:
        """Mean |log ratio|: how far the reference is from this machine (0: the same)."""
        ratios = [self.launch, self.elementwise, self.matmul, *(r for _, r in self.h2d), *(r for _, r in self.d2h)]
        return sum(abs(math.log(r)) for r in ratios) / len(ratios)

    def describe(self) -> str:
        def copies(points: tuple[tuple[float, float], ...]) -> str:
            return "/".join(f"x{r:.2g}" for _, r in points)

        return (f"launch x{self.launch:.2g}, memory-bound work x{self.elementwise:.2g}, dense work "
                f"x{self.matmul:.2g}, copies in {copies(self.h2d)}, out {copies(self.d2h)} against {self.reference}")


def device_backend(reference: Profile) -> tuple[str, BackendTiming]:
    """The (name, timings) of ``reference``'s predictable device backend; ProbeRejected if none."""
    for name, timing in reference.device_backends().items():
        if timing.can_predict() and timing.launch_latency_s and {"elementwise", "matmul"} <= timing.kinds.keys():
            return name, timing
    raise ProbeRejected(f"profile {reference.source} has no device curves to scale")


def device_ratios(reference: Profile, probe: GpuProbe, name: str) -> DeviceScaling:
    """The probe's ratios against ``reference`` (named ``name``)."""
    _, device = device_backend(reference)
    assert device.launch_latency_s is not None and device.h2d is not None and device.d2h is not None
    fixed_ref, fixed_new = device.launch_latency_s, probe.launch_s
    launch = _ratio(fixed_new, fixed_ref, "the synchronized tiny call")
    ew_bytes, ew_s = probe.elementwise
    mm_bytes, mm_s = probe.matmul
    elementwise = work_ratio(ew_s, device.kinds["elementwise"].predict(ew_bytes), fixed_ref, fixed_new, "elementwise")
    matmul = work_ratio(mm_s, device.kinds["matmul"].predict(mm_bytes), fixed_ref, fixed_new, "matmul")
    h2d = tuple((b, _ratio(s, device.h2d.predict(b), f"copy in of {b / MiB:g} MiB")) for b, s in sorted(probe.h2d))
    d2h = tuple((b, _ratio(s, device.d2h.predict(b), f"copy out of {b / MiB:g} MiB")) for b, s in sorted(probe.d2h))
    return DeviceScaling(name, launch, elementwise, matmul, h2d, d2h)


def nearest_device_reference(references: Sequence[tuple[str, Profile]], probe: GpuProbe) -> tuple[str, Profile, DeviceScaling]:
    """The reference the probe is closest to (least scaling; ties: the first), with its ratios.

    A reference whose ratios are out of bounds is skipped; ProbeRejected when none is usable."""
    best: tuple[float, str, Profile, DeviceScaling] | None = None
    why: list[str] = []
    for name, reference in references:
        try:
            scaling = device_ratios(reference, probe, name)
        except ProbeRejected as e:
            why.append(f"{name}: {e}")
            continue
        if best is None or scaling.distance() < best[0]:
            best = (scaling.distance(), name, reference, scaling)
    if best is None:
        raise ProbeRejected("no reference profile fits the probe (" + ("; ".join(why) or "none shipped") + ")")
    return best[1], best[2], best[3]


def scale_device(reference: Profile, probe: GpuProbe, scaling: DeviceScaling) -> BackendTiming:
    """``reference``'s device backend scaled to the probed GPU (see the module docstring)."""
    _, device = device_backend(reference)
    assert device.launch_latency_s is not None and device.h2d is not None and device.d2h is not None
    fixed_ref, fixed_new = device.launch_latency_s, probe.launch_s
    kinds = {
        kind: scale_work(curve, fixed_ref, fixed_new, scaling.matmul if kind in DENSE_KINDS else scaling.elementwise)
        for kind, curve in device.kinds.items()
    }
    return device.model_copy(update={
        "kinds": kinds,
        "launch_latency_s": fixed_new,
        "transfer_engine": probe.transfer_engine or device.transfer_engine,
        "h2d": scale_copies(device.h2d, probe.h2d, probe.h2d_pinned, "copy in"),
        "d2h": scale_copies(device.d2h, probe.d2h, probe.d2h_pinned, "copy out"),
    })


def scaled_device_profile(references: Sequence[tuple[str, Profile]], probe: GpuProbe, *, cached: bool) -> Profile:
    """The nearest reference with its device backend scaled to the probed GPU, its source saying so.

    Its host backends are the reference's NumPy curves; a host tier's curves are left out (they
    were measured on the reference's CPU: ``with_tier`` adds this host's)."""
    name, reference, scaling = nearest_device_reference(references, probe)
    device_name, _ = device_backend(reference)
    backends = {n: t for n, t in reference.backends.items() if t.memory == "device" or n == "numpy"}
    backends[device_name] = scale_device(reference, probe, scaling)
    when = "cached probe" if cached else "probe"
    source = f"{name} scaled by a {probe.wall_s:.2g} s {when.replace('probe', PROBED_MARK)} ({probe.gpu_name or 'unnamed'})"
    return reference.model_copy(update={
        "backends": backends,
        "fingerprint": reference.fingerprint.model_copy(update={"gpu_name": probe.gpu_name or None, "gpu_uuid": None}),
        "notes": [f"probe of {probe.gpu_name or 'this GPU'} in {probe.wall_s:.2g} s: {scaling.describe()}",
                  "run `autooffload calibrate` to measure this machine"],
    }).with_source(source)


# ---------------------------------------------------------------------------------------------
# The host tier.
# ---------------------------------------------------------------------------------------------


def nearest_tier_reference(references: Sequence[tuple[str, Profile]], cores: int, cpu_model: str = "") -> tuple[str, Profile] | None:
    """The reference with Numba curves whose CPU is nearest: core count (in ratio) first, then the
    same CPU vendor (first word of the model), then the first listed. None when none has them."""
    vendor = (cpu_model.split() or [""])[0].lower()
    best: tuple[tuple[float, int], str, Profile] | None = None
    for name, reference in references:
        tier = reference.backend(TIER)
        if tier is None or not tier.kinds or reference.backend("numpy") is None:
            continue
        ref_cores = reference.fingerprint.cpu_cores or 1
        ref_vendor = (reference.fingerprint.cpu_model.split() or [""])[0].lower()
        key = (abs(math.log(ref_cores / max(cores, 1))), 0 if ref_vendor == vendor else 1)
        if best is None or key < best[0]:
            best = (key, name, reference)
    return None if best is None else (best[1], best[2])


def host_speed(reference: Profile, probe: HostProbe) -> float:
    """This host's time for the probe's NumPy pass over ``reference``'s (its NumPy elementwise curve)."""
    numpy = reference.backend("numpy")
    if numpy is None or "elementwise" not in numpy.kinds:
        raise ProbeRejected(f"profile {reference.source} has no NumPy elementwise curve to compare the host with")
    return _ratio(probe.seconds, numpy.kinds["elementwise"].predict(probe.nbytes), "the host's NumPy pass")


# Kinds of the tier bound by memory bandwidth (the host probe's pass measures that speed; the
# others' arithmetic it does not), and the kinds Numba runs on one thread (np.sort is serial).
TIER_MEMORY_BOUND = frozenset({"elementwise", "reduction", "generic"})
TIER_SERIAL = frozenset({"sort"})


def scale_tier(tier: BackendTiming, host_ratio: float, core_ratio: float) -> BackendTiming:
    """A host tier's curves moved to another host (``core_ratio``: the reference's cores over this
    host's): each curve's first point (the fork-join floor of a parallel loop, which grows with
    the threads) times ``core_ratio ** -0.5``; the work above it times ``core_ratio`` unless the
    kind is serial, and times ``host_ratio`` where it is memory-bound."""
    kinds = {}
    for kind, curve in tier.kinds.items():
        factor = (host_ratio if kind in TIER_MEMORY_BOUND else 1.0) * (1.0 if kind in TIER_SERIAL else core_ratio)
        floor = curve.seconds[0]
        kinds[kind] = scale_work(curve, floor, floor * core_ratio**-0.5, factor)
    return tier.model_copy(update={"kinds": kinds})


def with_tier(profile: Profile, references: Sequence[tuple[str, Profile]], probe: HostProbe, cpu_model: str = "") -> Profile:
    """``profile`` with the nearest reference's Numba curves scaled to this host, its source saying
    so; ``profile`` itself where it has a tier's curves already or no reference has any."""
    if profile.backend(TIER) is not None:
        return profile
    nearest = nearest_tier_reference(references, probe.cores, cpu_model)
    if nearest is None:
        return profile
    name, reference = nearest
    tier = reference.backend(TIER)
    assert tier is not None
    ref_cores = reference.fingerprint.cpu_cores or probe.cores
    speed = host_speed(reference, probe)
    scaled = scale_tier(tier, speed, ref_cores / probe.cores)
    # Every kind of any backend must be one the reference backend (NumPy) has a curve for.
    numpy_kinds = profile.backends["numpy"].kinds.keys() if "numpy" in profile.backends else set()
    scaled = scaled.model_copy(update={"kinds": {k: c for k, c in scaled.kinds.items() if k in numpy_kinds}})
    if not scaled.kinds:
        return profile
    note = (f"numba tier: {name}'s curves ({ref_cores} cores) scaled to {probe.cores} cores and this host's "
            f"memory speed (x{speed:.2g})")
    return profile.model_copy(update={
        "backends": {**profile.backends, TIER: scaled},
        "notes": [*profile.notes, note],
    }).with_source(f"{profile.source}; {note}")
