"""The calibration profile's file format: pydantic v2 models of curves, machine and profile.

A profile holds, per backend (the library a call can run on), how long each kind of work takes
by input bytes, and what the backend costs besides: its once-per-process warm-up, its launch
latency and, for a backend whose memory is a device's, the host<->device copies. The cost model
(_costmodel.py) reads it generically: nothing here assumes exactly two backends.

Format history (bump SCHEMA_VERSION on any change a reader of the old format would misread):
  1 (2026-11-24): first format. Curves are (nbytes, seconds) points; kinds map to CPU and GPU
     curves of device-resident work; h2d/d2h curves are those of the transfer engine in use.
  2 (2026-12-01): curves per backend. ``backends`` maps a backend name ("numpy", "cupy") to its
     memory ("host" or "device"), its kind curves, ``warmup_s`` (schema 1's ``cold_start_s``),
     ``launch_latency_s`` and, for a device backend, ``h2d``, ``d2h`` and ``transfer_engine``
     (top-level in schema 1). ``has_gpu`` is gone: a profile has GPU timings when it has a device
     backend. Schema-1 files are migrated on load (``migrate_v1_to_v2``); numbers are unchanged.
     Later (issue 14) a device backend may carry ``copy_tuning``: the copy engine's knobs chosen
     by calibration and the rates they achieved. Optional (a file without it means the engine's
     defaults), so files without it are unchanged schema 2; a reader from before it rejects a
     file with it by name (extra fields are forbidden) rather than misreading it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

SCHEMA_VERSION = 2
# The backend every call can run on and every decision compares against: it has a curve for
# every kind any other backend has.
REFERENCE_BACKEND = "numpy"

# Every number a profile states is finite (pydantic accepts NaN and infinity unless told not to).
# Seconds may be 0 (too small to count); a count or size of hardware must be > 0.
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]


class Curve(BaseModel):
    """Seconds against input bytes, measured at a few sizes.

    Between points it interpolates in log-log space; below the first point it stays at the first
    point's time (fixed costs dominate there); above the last point it extrapolates with the last
    segment's log-log slope, but never less than linear in bytes (work does not get cheaper per
    byte as it grows; matmul gets dearer).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    nbytes: list[float] = Field(min_length=1)
    seconds: list[float] = Field(min_length=1)
    # Per point: the repeats disagreed more than the sweep tolerates (see _timing.py).
    noisy: list[bool] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_points(self) -> "Curve":
        if len(self.nbytes) != len(self.seconds):
            raise ValueError(
                f"a curve needs as many seconds as sizes; got {len(self.nbytes)} sizes "
                f"and {len(self.seconds)} seconds"
            )
        if self.noisy and len(self.noisy) != len(self.nbytes):
            raise ValueError(f"noisy flags must be empty or one per point; got {len(self.noisy)} for {len(self.nbytes)} points")
        if any(b <= 0 or not math.isfinite(b) for b in self.nbytes):
            raise ValueError(f"curve sizes must be finite and > 0 bytes; got {self.nbytes}")
        if any(not (s > 0) or not math.isfinite(s) for s in self.seconds):
            raise ValueError(f"curve times must be finite and > 0 seconds; got {self.seconds}")
        if any(b2 <= b1 for b1, b2 in zip(self.nbytes, self.nbytes[1:])):
            raise ValueError(f"curve sizes must be strictly increasing; got {self.nbytes}")
        return self

    def predict(self, nbytes: float) -> float:
        """Predicted seconds for ``nbytes`` of input."""
        xs, ys = self.nbytes, self.seconds
        if nbytes <= xs[0]:
            return ys[0]
        if nbytes >= xs[-1]:
            if len(xs) == 1:
                return ys[0] * nbytes / xs[0]
            slope = math.log(ys[-1] / ys[-2]) / math.log(xs[-1] / xs[-2])
            return ys[-1] * (nbytes / xs[-1]) ** max(1.0, slope)
        i = bisect_left(xs, nbytes)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        t = math.log(nbytes / x0) / math.log(x1 / x0)
        return math.exp(math.log(y0) + t * math.log(y1 / y0))


Memory = Literal["host", "device"]
GBps = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class CopyRate(BaseModel):
    """What the tuned engine achieved at one size (GB/s = 1e9 bytes/s), and the defaults in the
    same search (``default_*``), both ways; into reused host memory out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nbytes: PositiveInt
    h2d_GBps: GBps
    d2h_GBps: GBps
    default_h2d_GBps: GBps | None = None
    default_d2h_GBps: GBps | None = None


class CopyTuning(BaseModel):
    """The copy engine's knobs for this machine, as ``autooffload calibrate`` chose them
    (``_copytune.py``), and the rates behind the choice.

    ``knobs``: field of ``_transfer._Tuning`` -> int. An engine applies the knobs it knows and
    skips others (a newer engine's), so names are not checked here, only values.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str  # the engine the knobs were searched for (its ENGINE_NAME)
    knobs: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    rates: list[CopyRate] = Field(default_factory=list)
    # Host memcpy GB/s at the best thread count: pageable -> pinned, pinned -> warm and fresh pages.
    host_bound_GBps: dict[str, GBps] = Field(default_factory=dict)
    host_bound_nbytes: PositiveInt | None = None
    pinned_GBps: dict[str, GBps] = Field(default_factory=dict)  # DMA from/to pinned memory
    search_s: Seconds | None = None
    log: list[str] = Field(default_factory=list)


class BackendTiming(BaseModel):
    """What one backend costs on this machine.

    ``kinds``: seconds of each kind of work by input bytes, with the data already in this
    backend's memory (for a device backend: device-resident and synchronized). A device
    backend also states its copies: ``h2d`` and ``d2h`` by bytes, through ``transfer_engine``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory: Memory
    kinds: dict[str, Curve] = Field(default_factory=dict)
    # Paid once per process before the first call (CUDA context + `import cupy` + first kernel).
    warmup_s: Seconds | None = None
    # A tiny call's synchronized round trip: what a chain of calls saves per synchronization.
    launch_latency_s: Seconds | None = None
    # Name of the host<->device copy path the h2d/d2h curves were measured with.
    transfer_engine: str | None = None
    h2d: Curve | None = None
    d2h: Curve | None = None
    # The copy engine's tuning for this machine (None: the engine's defaults).
    copy_tuning: CopyTuning | None = None

    @model_validator(mode="after")
    def _copies_belong_to_devices(self) -> "BackendTiming":
        if self.memory == "host" and (self.h2d is not None or self.d2h is not None or self.transfer_engine is not None
                                      or self.copy_tuning is not None):
            raise ValueError("a host backend copies nothing: h2d, d2h, transfer_engine and copy_tuning belong to a device backend")
        return self

    def can_predict(self) -> bool:
        """Whether calls on this backend can be predicted: some kind curves and, on a device,
        the copies both ways (host data has to get there and results back)."""
        return bool(self.kinds) and (self.memory == "host" or (self.h2d is not None and self.d2h is not None))


class Fingerprint(BaseModel):
    """What identifies the machine (and software) a profile was measured on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hostname: str = ""
    cpu_model: str = "unknown"
    cpu_cores: Annotated[int, Field(ge=0)] = 0  # 0: unknown
    gpu_name: str | None = None
    gpu_uuid: str | None = None
    gpu_compute_capability: str | None = None
    gpu_memory_bytes: PositiveInt | None = None
    driver_version: str | None = None
    cuda_runtime_version: str | None = None
    python_version: str = ""
    numpy_version: str = ""
    cupy_version: str | None = None
    numba_version: str | None = None
    blas: str | None = None
    blas_threads: PositiveInt | None = None


class Profile(BaseModel):
    """Everything the cost model needs to know about one machine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    autooffload_version: str = ""
    fingerprint: Fingerprint = Field(default_factory=Fingerprint)
    quick: bool = False
    backends: dict[str, BackendTiming] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    # Where this profile came from: a file path, or "built-in". Not part of the file format.
    _source: str = PrivateAttr(default="built-in")

    @property
    def source(self) -> str:
        return self._source

    def with_source(self, source: str) -> "Profile":
        self._source = source
        return self

    @model_validator(mode="after")
    def _reference_covers_every_kind(self) -> "Profile":
        if not self.backends:
            return self
        reference = self.backends.get(REFERENCE_BACKEND)
        if reference is None or reference.memory != "host":
            raise ValueError(
                f"a profile with backends has the host backend {REFERENCE_BACKEND!r} (every decision "
                f"compares against it); got {sorted(self.backends)}"
            )
        for name, timing in self.backends.items():
            if missing := sorted(timing.kinds.keys() - reference.kinds.keys()):
                raise ValueError(f"backend {name!r} has curves for {missing}, which {REFERENCE_BACKEND!r} has not")
        return self

    def backend(self, name: str) -> BackendTiming | None:
        """The timings of backend ``name``, or None when this profile has none."""
        return self.backends.get(name)

    def device_backends(self) -> dict[str, BackendTiming]:
        """The backends whose memory is a device's (CuPy's GPU), by name."""
        return {name: b for name, b in self.backends.items() if b.memory == "device"}

    def has_device_timings(self) -> bool:
        """Whether some device backend can be predicted at all (else every call stays on the host)."""
        return any(b.can_predict() for b in self.device_backends().values())

    def copy_tuning(self) -> CopyTuning | None:
        """The copy engine's tuning of the first device backend that has one (None: defaults)."""
        return next((b.copy_tuning for b in self.device_backends().values() if b.copy_tuning is not None), None)

    def kind_names(self) -> set[str]:
        """Every kind some backend has a curve for."""
        return {kind for b in self.backends.values() for kind in b.kinds}


# ---------------------------------------------------------------------------------------------
# Older formats, read by migrating them to this one.
# ---------------------------------------------------------------------------------------------

# Schema 1's fields that schema 2 keeps on the device backend.
_V1_DEVICE_FIELDS = {
    "cold_start_s": "warmup_s",
    "launch_latency_s": "launch_latency_s",
    "transfer_engine": "transfer_engine",
    "h2d": "h2d",
    "d2h": "d2h",
}


def migrate_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 profile (parsed JSON) as schema 2; a pure function: ``data`` is not changed.

    The CPU curves become backend "numpy" (host memory); the GPU curves and the top-level GPU
    fields become backend "cupy" (device memory), which exists when the file has any GPU field.
    Schema 1 ignored the GPU curves of a profile with ``has_gpu`` false, so they are left out;
    its copy curves and launch latency still priced moving device data to NumPy, so they stay.
    Malformed input is passed on as it is, for validation to name the field: a kind entry with
    keys other than cpu/gpu, a non-boolean ``has_gpu``.
    """
    out = {k: v for k, v in data.items() if k not in _V1_DEVICE_FIELDS and k not in ("kinds", "has_gpu")}
    out["schema_version"] = 2
    has_gpu = data.get("has_gpu", False)
    if not isinstance(has_gpu, bool):
        out["has_gpu"] = has_gpu  # rejected as not part of schema 2, with its value in the message
    kinds = data.get("kinds", {})
    splittable = isinstance(kinds, dict) and all(isinstance(t, dict) and t.keys() <= {"cpu", "gpu"} for t in kinds.values())
    host_kinds = {k: t.get("cpu") for k, t in kinds.items()} if splittable else kinds
    backends: dict[str, Any] = {REFERENCE_BACKEND: {"memory": "host", "kinds": host_kinds}}
    device = {new: data[old] for old, new in _V1_DEVICE_FIELDS.items() if data.get(old) is not None}
    if has_gpu is True or device:
        device_kinds = {k: t["gpu"] for k, t in kinds.items() if t.get("gpu") is not None} if splittable else {}
        backends["cupy"] = {"memory": "device", "kinds": device_kinds if has_gpu is True else {}, **device}
    out["backends"] = backends
    return out


# schema version -> the function that reads it as the next version
MIGRATIONS = {1: migrate_v1_to_v2}


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (parsed JSON of schema ``data["schema_version"]``) migrated to SCHEMA_VERSION.

    The caller checks that the version is an int no newer than SCHEMA_VERSION; a version with no
    migration raises KeyError."""
    while data["schema_version"] < SCHEMA_VERSION:
        data = MIGRATIONS[data["schema_version"]](data)
    return data
