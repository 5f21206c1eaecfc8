"""The cost model: pure functions of (profile, request) -> prediction / Decision.

No I/O, no CuPy, no global state: the dispatcher owns caching and the cold-start bookkeeping, so
everything here is tested exactly with synthetic profiles.

A call on NumPy costs the CPU curve of its kind, plus, when inputs live on the device, copying
them to the host and the result back to the device. A call on CuPy costs the GPU curve, plus
copying host-resident inputs in and a host-bound result out, plus the cold start (CUDA context,
``import cupy``, first kernel) while the GPU has not been used in this process.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ._profiles import Curve, Profile
from ._units import format_bytes

NUMPY, CUPY = "numpy", "cupy"
BACKENDS = (NUMPY, CUPY)

# Bytes of result per byte of the largest input, per kind (used to predict copies of the result).
# FFT of real input returns complex: twice the bytes. A reduction returns a few scalars.
OUTPUT_RATIO: dict[str, float] = {
    "elementwise": 1.0,
    "transcendental": 1.0,
    "reduction": 0.0,
    "sort": 1.0,
    "fft": 2.0,
    "matmul": 1.0,
    "solve": 0.0,  # x of A x = b is b-sized: negligible next to A
    "random": 1.0,
    "generic": 1.0,
}
KINDS = tuple(OUTPUT_RATIO)


@dataclass(frozen=True, slots=True)
class Request:
    """What the cost model needs to know about one call.

    ``kind`` is one kind name, or a work mix ``(("fft", 1), ("elementwise", 3))``: the call's
    cost is then the sum of each kind's curve times its count (see _kinds.py).
    """

    kind: str | tuple[tuple[str, float], ...]
    host_bytes: int = 0  # bytes of numpy array inputs
    device_bytes: int = 0  # bytes of cupy array inputs
    largest_bytes: int = 0  # bytes of the largest single array input
    gpu_ready: bool = False  # the GPU was already used in this process (no cold start)
    host_arrays: int = 1  # how many numpy arrays (each copy pays the copy path's fixed latency)
    device_arrays: int = 1  # how many cupy arrays

    @property
    def work(self) -> tuple[tuple[str, float], ...]:
        return ((self.kind, 1),) if isinstance(self.kind, str) else self.kind

    @property
    def total_bytes(self) -> int:
        return self.host_bytes + self.device_bytes

    @property
    def result_on_device(self) -> bool:
        return self.device_bytes > 0


@dataclass(frozen=True, slots=True)
class Prediction:
    """Predicted seconds per backend, with the parts they are made of."""

    cpu_s: float
    gpu_s: float | None  # None: the profile cannot predict the GPU (no GPU, kind not measured)
    cpu_parts: dict[str, float] = field(default_factory=dict)
    gpu_parts: dict[str, float] = field(default_factory=dict)

    @property
    def gpu_warm_s(self) -> float | None:
        """GPU time without the one-off cold start."""
        if self.gpu_s is None:
            return None
        return self.gpu_s - self.gpu_parts.get("cold_start", 0.0)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one call runs and why. Also what ``explain()`` returns and what the log records."""

    function: str
    backend: str
    reason: str
    kind: str  # the work mix, described ("fft", "2xelementwise+transcendental")
    host_bytes: int
    device_bytes: int
    dtypes: tuple[str, ...]
    predicted_s: dict[str, float | None]
    profile: str
    bucket: tuple = ()
    # GPU seconds saved per call if the GPU were warm (>0 while only the cold start stands in the way).
    warm_savings_s: float = 0.0
    cold_start_s: float = 0.0  # the one-off GPU start cost those savings must pay back

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dtypes"] = list(self.dtypes)
        d["bucket"] = list(self.bucket)
        return d

    def __str__(self) -> str:
        def fmt(s: float | None) -> str:
            return "n/a" if s is None else f"{s * 1e3:.3g} ms"

        pred = ", ".join(f"{b} {fmt(s)}" for b, s in self.predicted_s.items())
        details = [self.kind, f"host {format_bytes(self.host_bytes)}, device {format_bytes(self.device_bytes)}"]
        if pred:
            details.append(f"predicted {pred}")
        if self.profile:
            details.append(f"profile {self.profile}")
        return f"{self.function} -> {self.backend}: {self.reason} [{'; '.join(details)}]"


def size_bucket(nbytes: int) -> int:
    """Half-octave bucket of a byte count: decisions within one bucket are shared (-1 for none)."""
    if nbytes <= 0:
        return -1
    return int(2 * math.log2(nbytes))


def _copy(curve: Curve | None, nbytes: float, arrays: int = 1) -> float:
    """Seconds to copy ``nbytes`` split over ``arrays`` arrays: each copy has a fixed latency."""
    if nbytes <= 0:
        return 0.0
    assert curve is not None
    return curve.predict(nbytes) + max(arrays - 1, 0) * curve.seconds[0]


def _gpu_compute(profile: Profile, work, total: float) -> float:
    """GPU seconds of a work mix: each curve point ends in a synchronization (that is how it is
    timed), but a chain of CuPy operations synchronizes once, so the round trip is counted once.
    Half the measured launch latency stands for that round trip."""
    units = sum(n for _, n in work)
    seconds = sum(n * t.gpu.predict(total) for t, n in work)
    if units > 1 and profile.launch_latency_s:
        floor = max(t.gpu.predict(total) for t, _ in work)
        seconds = max(floor, seconds - (units - 1) * 0.5 * profile.launch_latency_s)
    return seconds


def kind_timing(profile: Profile, kind: str):
    """The profile's curves for ``kind``, falling back to "generic", then "elementwise"."""
    for k in (kind, "generic", "elementwise"):
        if k in profile.kinds:
            return profile.kinds[k]
    raise KeyError(f"profile {profile.source} has no curves for kind {kind!r} nor a generic fallback")


def predict(profile: Profile, req: Request) -> Prediction:
    """Predicted seconds of ``req`` on each backend."""
    work = [(kind_timing(profile, kind), count) for kind, count in req.work]
    total = max(req.total_bytes, 1)
    out_bytes = max(OUTPUT_RATIO.get(kind, 1.0) for kind, _ in req.work) * req.largest_bytes

    cpu_parts = {"compute": sum(n * t.cpu.predict(total) for t, n in work)}
    if req.device_bytes and profile.d2h is not None and profile.h2d is not None:
        cpu_parts["copy_in"] = _copy(profile.d2h, req.device_bytes, req.device_arrays)
        cpu_parts["copy_out"] = _copy(profile.h2d, out_bytes)
        # Copying device data out first waits for the device's queue to drain: a round trip.
        cpu_parts["sync"] = profile.launch_latency_s or 0.0

    if not profile.gpu_usable or any(t.gpu is None for t, _ in work):
        return Prediction(sum(cpu_parts.values()), None, cpu_parts, {})

    gpu_parts = {"compute": _gpu_compute(profile, work, total)}
    if req.host_bytes:
        gpu_parts["copy_in"] = _copy(profile.h2d, req.host_bytes, req.host_arrays)
    if not req.result_on_device:
        gpu_parts["copy_out"] = _copy(profile.d2h, out_bytes)
    if not req.gpu_ready and profile.cold_start_s:
        gpu_parts["cold_start"] = profile.cold_start_s
    return Prediction(sum(cpu_parts.values()), sum(gpu_parts.values()), cpu_parts, gpu_parts)


# Data on the device leaves it only for a clear predicted win: at small sizes the GPU curves
# (each point one synchronized call of several operations) overstate short chains, and moving
# data off the device stalls its queue and the caller's next device work.
DEVICE_DATA_MARGIN = 2.0


def choose(pred: Prediction, *, data_on_device: bool = False) -> tuple[str, str, float]:
    """(backend, reason, warm savings) from a prediction: the cheaper backend wins.

    Warm savings are the seconds per call the GPU would save if it were already initialized; the
    dispatcher adds them up across calls and pays the cold start once they exceed it (ski rental:
    never worse than twice the best choice made in hindsight).
    """
    if pred.gpu_s is None:
        return NUMPY, "no GPU timings in the profile", 0.0
    if data_on_device and pred.gpu_s <= DEVICE_DATA_MARGIN * pred.cpu_s:
        if pred.gpu_s < pred.cpu_s:
            return CUPY, f"GPU predicted {pred.cpu_s / pred.gpu_s:.2g}x faster", 0.0
        return CUPY, f"data stays on the device: NumPy predicted only {pred.gpu_s / pred.cpu_s:.2g}x faster", 0.0
    if pred.gpu_s < pred.cpu_s:
        return CUPY, f"GPU predicted {pred.cpu_s / pred.gpu_s:.2g}x faster", 0.0
    warm = pred.gpu_warm_s
    if warm is not None and warm < pred.cpu_s:
        return NUMPY, "GPU faster only once warm; cold start not yet paid off", pred.cpu_s - warm
    return NUMPY, f"NumPy predicted {pred.gpu_s / pred.cpu_s:.2g}x faster", 0.0


def crossover(profile: Profile, kind: str, location: str, *, lo: float = 1024.0, hi: float = 2.0**40) -> float | None:
    """Smallest input size (bytes) from which the warm GPU beats NumPy for ``kind``.

    ``location`` is "host" (numpy inputs, numpy result: copies counted on the GPU side) or
    "device" (cupy inputs, cupy result: copies counted on the CPU side). None: the GPU never wins
    between ``lo`` and ``hi``. Sizes are searched on a quarter-octave grid.
    """
    if location not in ("host", "device"):
        raise ValueError(f"location must be 'host' or 'device'; got {location!r}")
    steps = int(4 * math.log2(hi / lo)) + 1
    for i in range(steps):
        n = int(lo * 2 ** (i / 4))
        req = Request(
            kind,
            host_bytes=n if location == "host" else 0,
            device_bytes=n if location == "device" else 0,
            largest_bytes=n,
            gpu_ready=True,
        )
        pred = predict(profile, req)
        if pred.gpu_s is not None and pred.gpu_s < pred.cpu_s:
            return float(n)
    return None
