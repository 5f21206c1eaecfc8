"""The calibration profile's file format: pydantic v2 models of curves, machine and profile.

Format history (bump SCHEMA_VERSION on any change a reader of the old format would misread):
  1 (2026-11-24): first format. Curves are (nbytes, seconds) points; kinds map to CPU and GPU
     curves of device-resident work; h2d/d2h curves are those of the transfer engine in use.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from datetime import datetime, timezone
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

SCHEMA_VERSION = 1

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


class KindTiming(BaseModel):
    """CPU (NumPy) and GPU (CuPy, data already on the device, synchronized) time of one kind of work."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: Curve
    gpu: Curve | None = None


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
    has_gpu: bool = False
    quick: bool = False
    # Name of the host<->device copy path the h2d/d2h curves were measured with.
    transfer_engine: str | None = None
    h2d: Curve | None = None
    d2h: Curve | None = None
    launch_latency_s: Seconds | None = None
    # CUDA context creation + `import cupy` + first kernel, paid once per process.
    cold_start_s: Seconds | None = None
    kinds: dict[str, KindTiming] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    # Where this profile came from: a file path, or "built-in". Not part of the file format.
    _source: str = PrivateAttr(default="built-in")

    @property
    def source(self) -> str:
        return self._source

    def with_source(self, source: str) -> "Profile":
        self._source = source
        return self

    @property
    def gpu_usable(self) -> bool:
        """Whether this profile can predict GPU runs at all."""
        return self.has_gpu and self.h2d is not None and self.d2h is not None and any(
            k.gpu is not None for k in self.kinds.values()
        )

