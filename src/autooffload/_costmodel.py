"""The cost model: pure functions of (profile, request) -> prediction.

No I/O, no CuPy, no global state: the dispatcher owns caching and the cold-start bookkeeping, so
everything here is tested exactly with synthetic profiles. The planner decides; this module only
predicts, and ``choose`` states the rule that turns a prediction into a backend.

Every backend is predicted the same way, from what the profile says of it (see
``_profiles/model.py``): its curve for the kind of work, plus moving the data when the backend's
memory is not where the data is (a host backend given device data copies the inputs out and the
result back, after waiting for the device's queue; a device backend given host data copies the
inputs in and a host-bound result out), plus its warm-up while it has not run in this process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from . import backends
from ._units import format_bytes
from .backends import CUPY, NUMBA, NUMPY

if TYPE_CHECKING:  # only annotations: importing _profiles at run time would load pydantic at import
    from ._profiles import BackendTiming, Curve, Profile

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
    blockwise: bool = False  # the function may be streamed through the device in chunks (_stream.py)

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
    """Predicted seconds per backend (None: the profile cannot predict it), with their parts.

    ``parts[backend]`` holds "compute", and where they apply "copy_in", "copy_out", "sync" and
    "cold_start"; it is empty for a backend that cannot be predicted.
    """

    seconds: dict[str, float | None]
    parts: dict[str, dict[str, float]] = field(default_factory=dict)
    # Device backends predicted as a pipeline of chunks (a blockwise call on host data): the
    # chunk's bytes of input. Their parts are then "pipeline" and "fill_drain" (+ "cold_start").
    streamed: dict[str, int] = field(default_factory=dict)

    def warm_s(self, backend: str) -> float | None:
        """Seconds on ``backend`` without its one-off warm-up."""
        seconds = self.seconds.get(backend)
        if seconds is None:
            return None
        return seconds - self.parts.get(backend, {}).get("cold_start", 0.0)


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
    # Where each backend's prediction came from: "profile", "learned from 12 calls", "profile,
    # corrected x3.1 by this function's history" (_learn.py); empty where nothing was predicted.
    sources: dict[str, str] = field(default_factory=dict)
    # The profile's own predictions, before learning adjusted them (what history errors are against).
    profile_s: dict[str, float | None] = field(default_factory=dict)
    observe: bool = False  # this call's time is measured (see _learn.py)...
    observe_every: int = 1  # ...or one call in this many, the others counted at their prediction
    exploring: bool = False  # the model is uncertain: this call tries another backend
    # Predicted seconds this call counts towards what learning waits for: compiling the Numba
    # tier to explore it, re-checking a backend not chosen (_learn.py). Such calls are untimed
    # but not on the C check's path.
    tier_wait_s: float = 0.0
    # A blockwise call on host data run on the GPU as a pipeline of chunks of chunk_bytes input
    # (_stream.py); blockwise: the function's verdict, described (_blockwise.py).
    streamed: bool = False
    chunk_bytes: int = 0
    blockwise: str = ""
    # The device current in the calling thread when this was decided ("cuda:1 (GPU-8f3a...)"),
    # and its index; "" / None before the device backend was loaded (nothing to name yet).
    device: str = ""
    device_index: int | None = None

    def to_dict(self) -> dict:
        # Field by field, one level of copies (the JSON log writes one per call: dataclasses.asdict's
        # deep recursion cost ~76 us of a 575 us GPU call on the H200, tools/gpu_gaps.py).
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in d.items():
            if isinstance(value, dict):
                d[name] = {k: dict(v) if isinstance(v, dict) else v for k, v in value.items()}
            elif isinstance(value, tuple):
                d[name] = list(value)
        return d

    def __repr__(self) -> str:
        """Short: where, why, how much data (``str()`` is the full log line)."""
        return (f"Decision({self.function} -> {self.backend}: {self.reason}; "
                f"{self.kind}, {format_bytes(self.host_bytes + self.device_bytes)})")

    def _repr_html_(self) -> str:
        """A two-column table in Jupyter: each field a row, predictions in milliseconds."""
        import html

        def ms(s: float | None) -> str:
            return "cannot run here" if s is None else f"{s * 1e3:.3g} ms"

        rows = [("function", self.function), ("ran on", self.backend), ("why", self.reason), ("work", self.kind),
                ("data", f"host {format_bytes(self.host_bytes)}, device {format_bytes(self.device_bytes)}"),
                *((f"predicted {b}", ms(s)) for b, s in self.predicted_s.items()), ("profile", self.profile)]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<table>{body}</table>"

    def __str__(self) -> str:
        def fmt(s: float | None) -> str:
            return "n/a" if s is None else f"{s * 1e3:.3g} ms"

        pred = ", ".join(f"{b} {fmt(s)}" + (f" ({self.sources[b]})" if self.sources.get(b, "profile") != "profile" else "")
                         for b, s in self.predicted_s.items())
        details = [self.kind, f"host {format_bytes(self.host_bytes)}, device {format_bytes(self.device_bytes)}"]
        if pred:
            details.append(f"predicted {pred}")
        if self.streamed:
            details.append(f"streamed in chunks of {format_bytes(self.chunk_bytes)}")
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


def _compute(backend: BackendTiming, work: list[tuple[Curve, float]], total: float, whole: bool = False) -> float:
    """Seconds of a work mix on ``backend``: the sum of its kinds' curves. Each point of a device
    curve ends in a synchronization (that is how it is timed), but a chain of operations
    synchronizes once, so the round trip is counted once: half the measured launch latency stands
    for it. A host backend has no launch latency and no such discount.

    ``whole``: the backend runs the function as one compiled call (the Numba tier), so what each
    of its curves' points pays once per call (the call, its threads' wake-up) is paid once, not
    once per operation: ``_whole_call``."""
    if whole:
        return _whole_call(work, total)
    units = sum(n for _, n in work)
    seconds = sum(n * curve.predict(total) for curve, n in work)
    if units > 1 and backend.launch_latency_s:
        floor = max(curve.predict(total) for curve, _ in work)
        seconds = max(floor, seconds - (units - 1) * 0.5 * backend.launch_latency_s)
    return seconds


def _whole_call(work: list[tuple[Curve, float]], total: float) -> float:
    """A function compiled whole: one fixed cost (the least time any of its kinds' curves took,
    at any size: a call of one operation on almost no data) plus each operation's time above it.
    Each curve is read as never cheaper at more bytes (a noisy small point, such as the shipped
    H200 tier's 25.4 us elementwise at 1 KiB against 13.6 us at 2 KiB, is not the cost of less
    work). Summing the curves whole, as for NumPy, predicted Black-Scholes at 3 x 33 elements
    (14 elementwise and 3 transcendental operations) at 387 us on the H200's tier, which ran it
    in 9-28 us on its parallel build and 4-17 on its serial one (NumPy: 30-71), so learning never
    explored it (suite runs of session 17: 3.65x the tier's column at 3 x 33, 2.39x at 3 x 333)."""
    fixed = min(min(curve.seconds) for curve, _ in work)
    per_op = [(_never_cheaper_at_more(curve, total), n) for curve, n in work]
    return max(max(t for t, _ in per_op), fixed + sum(n * max(0.0, t - fixed) for t, n in per_op))


def _never_cheaper_at_more(curve: Curve, nbytes: float) -> float:
    """``curve`` at ``nbytes``, at most what it measured at any larger size."""
    larger = [s for b, s in zip(curve.nbytes, curve.seconds) if b >= nbytes]
    return min([curve.predict(nbytes), *larger])


def resolve_kind(profile: Profile, kind: str) -> str:
    """The kind whose curves stand for ``kind``: itself, else "generic", else "elementwise"."""
    known = profile.kind_names()
    for k in (kind, "generic", "elementwise"):
        if k in known:
            return k
    raise KeyError(f"profile {profile.source} has no curves for kind {kind!r} nor a generic fallback")


def _data_device(profile: Profile) -> BackendTiming | None:
    """The device backend whose memory device-resident arguments live in (CuPy's, the only one)."""
    return next(iter(profile.device_backends().values()), None)


def _predict_backend(
    profile: Profile, backend: BackendTiming, req: Request, kinds: list[tuple[str, float]], total: float, out_bytes: float,
    whole: bool = False,
) -> dict[str, float] | None:
    """The parts of ``req``'s seconds on ``backend``, or None when the profile cannot predict it.

    ``kinds``: the work mix with each kind resolved on the profile (``resolve_kind``); ``whole``:
    the backend runs a function as one compiled call (``_compute``)."""
    if not backend.can_predict():
        return None
    work = [(backend.kinds.get(kind), count) for kind, count in kinds]
    if any(curve is None for curve, _ in work):
        return None
    parts = {"compute": _compute(backend, work, total, whole and backend.memory == "host")}
    if backend.memory == "host":
        device = _data_device(profile)
        if req.device_bytes and device is not None and device.d2h is not None and device.h2d is not None:
            parts["copy_in"] = _copy(device.d2h, req.device_bytes, req.device_arrays)
            parts["copy_out"] = _copy(device.h2d, out_bytes)
            # Copying device data out first waits for the device's queue to drain: a round trip.
            parts["sync"] = device.launch_latency_s or 0.0
    else:
        if req.host_bytes:
            parts["copy_in"] = _copy(backend.h2d, req.host_bytes, req.host_arrays)
        if not req.result_on_device:
            parts["copy_out"] = _copy(backend.d2h, out_bytes)
    if not req.gpu_ready and backend.warmup_s and backend.memory == "device":
        # The device's once-per-process start. A host tier's warm-up is a compilation per argument
        # types, run in the background while calls go elsewhere (_planner._numba_gate): never paid
        # by a call, so not predicted for one.
        parts["cold_start"] = backend.warmup_s
    return parts


# Streaming (_stream.py): the fewest chunks a call is streamed in (two overlap little), the
# smallest chunk (each pays a copy's fixed latency and a launch per operation), the largest.
MIN_CHUNKS = 3
MIN_CHUNK_BYTES = 4 * 2**20
MAX_CHUNK_BYTES = 256 * 2**20
# Whether a call that fits the device streams where the pipeline is predicted faster. Off: on the
# H200 (benchmarks/results/h200/streaming.txt as of commit 7ccd9fc, 1e8 float64) the pipeline ran at 2.9x its slowest
# stage, not ~1x, and slower than the whole-array path for every case measured (x *= 5 50.9 ms
# against 39.8; the chain 48.3 against 39.0; Black-Scholes 168 ms against 107), so predicting it
# faster would send calls to a slower run. Calls whose data does not fit still stream
# (_executor.stream_plan), so do large calls whose arrays are pinned (there the copies in and
# out overlap: _executor._pinned_enough), and AUTOOFFLOAD_STREAM=always forces it.
STREAM_WHEN_PREDICTED_FASTER = False


def stream_chunk_bytes(total_bytes: float, free_device_bytes: float | None = None, work_units: float = 1.0) -> int:
    """Input bytes per chunk when no profile chose them (a forced run, data too large for the
    device): 64 MiB, at most 1/8 of the call (fill and drain are one chunk each), and small
    enough that three chunks in flight with their temporaries (about one input-sized array per
    work unit, plus input and result) fit in a quarter of the free device memory."""
    target = min(64.0 * 2**20, max(MIN_CHUNK_BYTES, total_bytes / 8))
    if free_device_bytes is not None:
        target = min(target, max(MIN_CHUNK_BYTES, free_device_bytes / 4 / (3 * (2 + max(1.0, work_units)))))
    return int(target)


def streamed_parts(backend: BackendTiming, work: list[tuple[Curve, float]], in_bytes: float, out_bytes: float,
                   arrays: int) -> tuple[int, dict[str, float]] | None:
    """(chunk bytes, parts) of the fastest predicted pipeline, or None when no split gives
    MIN_CHUNKS chunks of MIN_CHUNK_BYTES. n chunks, each copied in, computed and copied out, the
    stages of different chunks overlapping, cost about n times the slowest stage ("pipeline")
    plus the other two stages once ("fill_drain": the first chunk's copy in, the last one's
    copy out). Smaller chunks shorten fill and drain but copy slower (the copy curves fall
    below ~64 MiB), so the chunk count is the one whose prediction is least."""
    if backend.h2d is None or backend.d2h is None:
        return None
    best: tuple[int, dict[str, float]] | None = None
    n = MIN_CHUNKS
    while in_bytes / n >= MIN_CHUNK_BYTES:
        chunk = in_bytes / n
        if chunk <= MAX_CHUNK_BYTES:
            stages = (_copy(backend.h2d, chunk, arrays), _compute(backend, work, chunk),
                      _copy(backend.d2h, out_bytes / n) if out_bytes else 0.0)
            slowest = max(stages)
            parts = {"pipeline": n * slowest, "fill_drain": sum(stages) - slowest}
            if best is None or sum(parts.values()) < sum(best[1].values()):
                best = (math.ceil(chunk), parts)
        n = n + max(1, n // 4)
    return best


def predict(profile: Profile, req: Request) -> Prediction:
    """Predicted seconds of ``req`` on each registered backend, in registration order.

    A profile's other backends are ignored (a newer profile may know one this version cannot
    run); a registered backend the profile has no curves for is predicted as None."""
    kinds = [(resolve_kind(profile, kind), count) for kind, count in req.work]
    total = max(req.total_bytes, 1)
    out_bytes = max(OUTPUT_RATIO.get(kind, 1.0) for kind, _ in req.work) * req.largest_bytes
    seconds: dict[str, float | None] = {}
    parts: dict[str, dict[str, float]] = {}
    streamed: dict[str, int] = {}
    for name in backends.names():
        backend = profile.backend(name)
        backend_parts = (_predict_backend(profile, backend, req, kinds, total, out_bytes, backends.compiles_whole(name))
                         if backend is not None else None)
        if (STREAM_WHEN_PREDICTED_FASTER and backend_parts is not None and backend is not None and req.blockwise and backend.memory == "device"
                and req.host_bytes and not req.device_bytes):
            # A blockwise call on host data: the pipeline of chunks, where it beats the three steps in a row.
            work = [(backend.kinds[kind], count) for kind, count in kinds]
            best = streamed_parts(backend, work, req.host_bytes, out_bytes, req.host_arrays)
            whole = sum(v for k, v in backend_parts.items() if k != "cold_start")
            if best is not None and sum(best[1].values()) < whole:
                chunk, piped = best
                if "cold_start" in backend_parts:
                    piped["cold_start"] = backend_parts["cold_start"]
                backend_parts = piped
                streamed[name] = chunk
        seconds[name] = sum(backend_parts.values()) if backend_parts is not None else None
        parts[name] = backend_parts or {}
    return Prediction(seconds, parts, streamed)


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
    host, cpu = _best_host(pred)
    label = "NumPy" if host == NUMPY else "Numba"
    gpu = pred.seconds.get(CUPY)
    if gpu is None:
        if host == NUMPY:
            return NUMPY, "no GPU timings in the profile", 0.0
        return host, f"Numba predicted {pred.seconds[NUMPY] / cpu:.2g}x faster than NumPy", 0.0
    if data_on_device and gpu <= DEVICE_DATA_MARGIN * cpu:
        if gpu < cpu:
            return CUPY, f"GPU predicted {cpu / gpu:.2g}x faster", 0.0
        return CUPY, f"data stays on the device: {label} predicted only {gpu / cpu:.2g}x faster", 0.0
    if gpu < cpu:
        return CUPY, f"GPU predicted {cpu / gpu:.2g}x faster", 0.0
    warm = pred.warm_s(CUPY)
    if warm is not None and warm < cpu:
        return host, "GPU faster only once warm; cold start not yet paid off", cpu - warm
    return host, f"{label} predicted {gpu / cpu:.2g}x faster", 0.0


def _best_host(pred: Prediction) -> tuple[str, float]:
    """The faster host backend and its seconds: NumPy, or the Numba tier where it is predicted
    faster (NumPy wins ties: it needs no compilation)."""
    cpu = pred.seconds[NUMPY]
    tier = pred.seconds.get(NUMBA)
    if tier is not None and tier < cpu:
        return NUMBA, tier
    return NUMPY, cpu


def crossover(profile: Profile, kind: str, location: str, *, lo: float = 1024.0, hi: float = 2.0**40,
              blockwise: bool = False) -> float | None:
    """Smallest input size (bytes) from which the warm GPU beats NumPy for ``kind``.

    ``location`` is "host" (numpy inputs, numpy result: copies counted on the GPU side) or
    "device" (cupy inputs, cupy result: copies counted on the CPU side). None: the GPU never wins
    between ``lo`` and ``hi``. Sizes are searched on a quarter-octave grid. ``blockwise``: the
    GPU side may be streamed (host data only), which moves host crossovers down.
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
            blockwise=blockwise,
        )
        seconds = predict(profile, req).seconds
        if seconds[CUPY] is not None and seconds[CUPY] < seconds[NUMPY]:
            return float(n)
    return None


def tier_range(profile: Profile, kind: str, tier: str = NUMBA, *, lo: float = 1024.0,
               hi: float = 2.0**40) -> list[tuple[float, float]]:
    """The input sizes (bytes, host data) where the host tier ``tier`` is predicted faster than
    NumPy for ``kind``: (smallest, largest) of each run of quarter-octave sizes; [] where it
    never is (or the profile has no curves for it). A multi-core tier often wins a middle range
    only: too small and its threads cost more than the work, too large and both are bound by
    memory bandwidth. Above a curve's last point predictions are extrapolated."""
    steps = int(4 * math.log2(hi / lo)) + 1
    runs: list[tuple[float, float]] = []
    start = last = None
    for i in range(steps):
        n = float(int(lo * 2 ** (i / 4)))
        seconds = predict(profile, Request(kind, host_bytes=int(n), largest_bytes=int(n), gpu_ready=True)).seconds
        if seconds.get(tier) is not None and seconds[tier] < seconds[NUMPY]:
            start = n if start is None else start
            last = n
        elif start is not None:
            runs.append((start, last))
            start = None
    if start is not None:
        runs.append((start, last))
    return runs
