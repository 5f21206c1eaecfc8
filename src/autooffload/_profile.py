"""The calibration profile: pydantic v2 models, curves, and where profiles live.

Format history (bump SCHEMA_VERSION on any change a reader of the old format would misread):
  1 (2026-11-24): first format. Curves are (nbytes, seconds) points; kinds map to CPU and GPU
     curves of device-resident work; h2d/d2h curves are those of the transfer engine in use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import sys
import tempfile
import threading
from bisect import bisect_left
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import CalibrationError, ProfileError, ProfileWarning, warn_at_user_line

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


# ---------------------------------------------------------------------------------------------
# The machine fingerprint.
#
# Two probes. The *cheap* one reads /proc (CPU model, cores, and the NVIDIA driver's view of the
# GPUs) and never imports CuPy or touches CUDA: ``active_profile()`` runs it on the decorator's
# first decision, where importing CuPy (~0.25 s) and creating a CUDA context would be paid even
# by calls that stay on NumPy. The *full* one (calibration, `autooffload show`) adds what only
# the CUDA runtime knows. The identity fields (CPU model, cores, GPU name, GPU UUID) are always
# taken from the cheap probe when it can see them, so a profile written by the sweep matches what
# the loader sees later on the same machine.
# ---------------------------------------------------------------------------------------------

logger = logging.getLogger("autooffload")

_PROC_GPUS = Path("/proc/driver/nvidia/gpus")
_PROC_DRIVER_VERSION = Path("/proc/driver/nvidia/version")
_CUPY_DISTRIBUTIONS = ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy-rocm-6-0", "cupy-rocm-5-0")
CALIBRATE_HINT = "run `autooffload calibrate` to measure this machine"


def _normalize(text: str | None) -> str:
    return " ".join((text or "").split()).lower()


def _normalize_uuid(uuid: str | None) -> str:
    u = (uuid or "").strip().lower()
    return u.removeprefix("gpu-").replace("-", "")


def _cpu_model() -> str:
    with suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            fields: dict[str, str] = {}
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
        # x86 has "model name"; ARM has "CPU part" / "Hardware" / "Model".
        for key in ("model name", "Model", "Hardware", "cpu model", "cpu"):
            if fields.get(key):
                return fields[key]
    return platform.processor() or platform.machine() or "unknown"


def _visible_proc_gpus() -> list[tuple[str, str | None]] | None:
    """(name, uuid) of the GPUs CUDA will number 0, 1, ...; None when /proc cannot tell.

    Follows CUDA_VISIBLE_DEVICES (indices or UUIDs). Indices are taken in PCI bus order, which
    is CUDA's order for identical GPUs.
    """
    if not _PROC_GPUS.is_dir():
        return None
    gpus: list[tuple[str, str | None]] = []
    try:
        for entry in sorted(_PROC_GPUS.iterdir()):
            info: dict[str, str] = {}
            with suppress(OSError):
                for line in (entry / "information").read_text(errors="replace").splitlines():
                    key, _, value = line.partition(":")
                    info[key.strip()] = value.strip()
            name = info.get("Model")
            if name:
                uuid = info.get("GPU UUID")
                gpus.append((name, uuid if uuid and uuid.lower().startswith("gpu-") else None))
    except OSError:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    chosen: list[tuple[str, str | None]] = []
    for item in (x.strip() for x in visible.split(",")):
        if item.isdigit() and int(item) < len(gpus):
            chosen.append(gpus[int(item)])
        elif item.lower().startswith("gpu-"):
            match = [g for g in gpus if g[1] and _normalize_uuid(g[1]).startswith(_normalize_uuid(item))]
            if not match:
                break
            chosen.append(match[0])
        else:
            break  # CUDA ignores everything from the first invalid entry on
    return chosen


def _nvidia_driver_version() -> str | None:
    with suppress(OSError):
        text = _PROC_DRIVER_VERSION.read_text(errors="replace")
        # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Thu ..."
        for word in text.split():
            if word[:1].isdigit() and word.count(".") >= 1 and word.replace(".", "").isdigit():
                return word
    return None


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cupy_version(*, look_up: bool) -> str | None:
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        return getattr(cupy, "__version__", None)
    if not look_up:
        return None
    for dist in _CUPY_DISTRIBUTIONS:
        if version := _dist_version(dist):
            return version
    return None


def _blas_name() -> str | None:
    import numpy

    with suppress(Exception):
        deps = numpy.show_config(mode="dicts")["Build Dependencies"]
        return deps["blas"]["name"]
    return None


def _blas_threads() -> int | None:
    """Threads of the loaded OpenBLAS / MKL, asked through ctypes (what threadpoolctl does)."""
    import ctypes

    env = next((os.environ[v] for v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS") if os.environ.get(v)), None)
    with suppress(OSError):
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            libs = {line.split()[-1] for line in f if "blas" in line.lower() or "mkl_rt" in line.lower()}
        for lib_path in sorted(libs):
            if not lib_path.startswith("/"):
                continue
            with suppress(OSError):
                lib = ctypes.CDLL(lib_path)
                for symbol in (
                    "scipy_openblas_get_num_threads64_",
                    "scipy_openblas_get_num_threads",
                    "openblas_get_num_threads64_",
                    "openblas_get_num_threads",
                    "MKL_Get_Max_Threads",
                    "bli_thread_get_num_threads",
                ):
                    getter = getattr(lib, symbol, None)
                    if getter is not None:
                        getter.restype = ctypes.c_int
                        threads = int(getter())
                        return threads if threads > 0 else None  # an error code, not a count
    with suppress(ValueError, TypeError):
        return int(env) if env and int(env) > 0 else None
    return None


def _format_uuid(raw: object) -> str | None:
    if isinstance(raw, (bytes, bytearray)) and len(raw) == 16:
        h = raw.hex()
        return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if isinstance(raw, str) and raw:
        return raw
    return None


def cuda_gpu_details() -> dict:
    """Fingerprint fields only the CUDA runtime knows (device 0 of this process); {} without a GPU.

    Imports CuPy: only the sweep and the CLI call this, never a decorated call.
    """
    try:
        import cupy

        runtime = cupy.cuda.runtime
        if runtime.getDeviceCount() < 1:
            return {}
        device_id = cupy.cuda.Device().id
        props = runtime.getDeviceProperties(device_id)
        name = props.get("name", b"")
        name = name.decode(errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)

        def cuda_version(v: int) -> str:
            return f"{v // 1000}.{(v % 1000) // 10}"

        return {
            "gpu_name": name or None,
            "gpu_uuid": _format_uuid(props.get("uuid")),
            "gpu_compute_capability": f"{props['major']}.{props['minor']}",
            "gpu_memory_bytes": int(props["totalGlobalMem"]),
            "driver_version": _nvidia_driver_version() or f"cuda {cuda_version(runtime.driverGetVersion())}",
            "cuda_runtime_version": cuda_version(runtime.runtimeGetVersion()),
            "cupy_version": cupy.__version__,
        }
    except Exception:  # no CuPy, no driver, no device: a CPU-only fingerprint
        return {}


def _cheap_identity() -> tuple[Fingerprint, bool]:
    """This machine's identity from /proc, and whether the GPU part is known (not guessed)."""
    gpus = _visible_proc_gpus()
    gpu_known = gpus is not None
    name, uuid = (gpus[0] if gpus else (None, None))
    fp = Fingerprint(
        hostname=platform.node(),
        cpu_model=_cpu_model(),
        cpu_cores=os.cpu_count() or 0,
        gpu_name=name,
        gpu_uuid=uuid,
        driver_version=_nvidia_driver_version(),
        python_version=platform.python_version(),
        numpy_version=getattr(sys.modules.get("numpy"), "__version__", "") or (_dist_version("numpy") or ""),
        cupy_version=_cupy_version(look_up=False),
    )
    return fp, gpu_known


def current_fingerprint(*, probe_gpu: bool = True) -> Fingerprint:
    """This machine's fingerprint: identity from /proc, library versions, BLAS and its threads.

    ``probe_gpu=True`` also asks the CUDA runtime (imports CuPy) for the GPU's compute
    capability, memory and versions. The profile loader uses none of this: it compares against
    the cheap /proc identity only (see ``this_machine_mismatch``).
    """
    fp, gpu_known = _cheap_identity()
    update: dict = {
        "numba_version": _dist_version("numba"),  # metadata only: importing numba is slow
        "cupy_version": _cupy_version(look_up=True),
        "blas": _blas_name(),
        "blas_threads": _blas_threads(),
    }
    if probe_gpu:
        update.update(gpu_fingerprint_fields(fp, cuda_gpu_details()))
    return fp.model_copy(update={k: v for k, v in update.items() if v is not None})


def gpu_fingerprint_fields(identity: Fingerprint, details: dict) -> dict:
    """CUDA's GPU fields, minus the identity /proc already gave: /proc's spelling is what the
    loader compares with later, so a profile always matches the machine that measured it."""
    update = {k: v for k, v in details.items() if v is not None}
    if identity.gpu_name:
        update.pop("gpu_name", None)
    if identity.gpu_uuid:
        update.pop("gpu_uuid", None)
    return update


def machine_mismatch(a: Fingerprint, b: Fingerprint) -> str | None:
    """Why ``a`` and ``b`` are different machines, or None when they are the same one.

    The machine is its CPU model and core count and its GPU name and UUID; a UUID missing on
    either side is not held against it. Software versions do not count (see version_drift).
    """
    if _normalize(a.cpu_model) != _normalize(b.cpu_model):
        return f"CPU {a.cpu_model!r} is not {b.cpu_model!r}"
    if a.cpu_cores != b.cpu_cores:
        return f"{a.cpu_cores} CPU cores are not {b.cpu_cores}"
    if _normalize(a.gpu_name) != _normalize(b.gpu_name):
        return f"GPU {a.gpu_name or 'none'!r} is not {b.gpu_name or 'none'!r}"
    if a.gpu_uuid and b.gpu_uuid and _normalize_uuid(a.gpu_uuid) != _normalize_uuid(b.gpu_uuid):
        return f"GPU UUID {a.gpu_uuid} is not {b.gpu_uuid} (same model, another card)"
    return None


def same_machine(a: Fingerprint, b: Fingerprint) -> bool:
    """Whether two fingerprints describe the same machine (CPU model + cores + GPU name + UUID)."""
    return machine_mismatch(a, b) is None


def version_drift(measured: Fingerprint, now: Fingerprint) -> list[str]:
    """Software that changed since the profile was measured: a reason to recalibrate, not to refuse."""
    changes = []
    for field, label in (
        ("numpy_version", "numpy"),
        ("cupy_version", "cupy"),
        ("driver_version", "driver"),
        ("cuda_runtime_version", "CUDA runtime"),
        ("python_version", "Python"),
    ):
        old, new = getattr(measured, field), getattr(now, field)
        if old and new and old != new:
            changes.append(f"{label} {old} -> {new}")
    return changes


def machine_id(fp: Fingerprint | None = None) -> str:
    """Short hash of a machine's identity (of this machine by default): names its profile file."""
    if fp is None:
        fp, gpu_known = _cheap_identity()
        gpu = f"{_normalize(fp.gpu_name)}|{_normalize_uuid(fp.gpu_uuid)}" if gpu_known else "?"
    else:
        gpu = f"{_normalize(fp.gpu_name)}|{_normalize_uuid(fp.gpu_uuid)}"
    key = f"{_normalize(fp.cpu_model)}|{fp.cpu_cores}|{gpu}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def this_machine_mismatch(fp: Fingerprint) -> str | None:
    """Why a profile measured on ``fp`` is not this machine's, or None. Cheap: no CuPy import."""
    here, gpu_known = _cheap_identity()
    if not gpu_known:
        if "cupy" in sys.modules:
            details = cuda_gpu_details()
            here = here.model_copy(update={"gpu_name": details.get("gpu_name"), "gpu_uuid": details.get("gpu_uuid")})
        else:  # cannot see the GPU without CUDA: judge by the CPU alone
            here = here.model_copy(update={"gpu_name": fp.gpu_name, "gpu_uuid": fp.gpu_uuid})
    return machine_mismatch(fp, here)


# ---------------------------------------------------------------------------------------------
# Where profiles live.
# ---------------------------------------------------------------------------------------------

SHIPPED_PROFILES_DIR = Path(__file__).resolve().parent / "profiles"


def cache_dir() -> Path:
    """``AUTOOFFLOAD_CACHE_DIR``, else ``platformdirs.user_cache_dir("autooffload")``."""
    explicit = os.environ.get("AUTOOFFLOAD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("autooffload"))


def default_profile_path() -> Path:
    """Where this machine's calibrated profile is kept: ``<cache dir>/profile-<machine id>.json``."""
    return cache_dir() / f"profile-{machine_id()}.json"


def profile_path() -> Path:
    """The profile file in use: ``AUTOOFFLOAD_PROFILE``, else this machine's default path."""
    explicit = os.environ.get("AUTOOFFLOAD_PROFILE")
    return Path(explicit).expanduser() if explicit else default_profile_path()


def shipped_profile_paths() -> list[Path]:
    """Profiles measured on real machines that ship inside the package (``autooffload/profiles``)."""
    if not SHIPPED_PROFILES_DIR.is_dir():
        return []
    return sorted(SHIPPED_PROFILES_DIR.glob("*.json"))


# ---------------------------------------------------------------------------------------------
# Reading and writing.
# ---------------------------------------------------------------------------------------------

LOCK_TIMEOUT_S = 60.0


def package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("autooffload")
    except metadata.PackageNotFoundError:
        return getattr(sys.modules.get("autooffload"), "__version__", "") or "0+unknown"


def _profile_error(path: Path | str, what: str) -> ProfileError:
    return ProfileError(f"profile {path}: {what}; {CALIBRATE_HINT} and write a fresh one")


def load_profile(path: str | os.PathLike) -> Profile:
    """Read and validate a profile file; ``ProfileError`` says what is wrong with it.

    Does not check that the profile is this machine's: see ``this_machine_mismatch``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _profile_error(path, "no such file") from None
    except IsADirectoryError:
        raise _profile_error(path, "is a directory, not a profile file") from None
    except OSError as e:
        raise _profile_error(path, f"cannot be read ({e.strerror or e})") from None
    if not raw.strip():
        raise _profile_error(path, "is empty (an interrupted write?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _profile_error(path, "is not UTF-8 text; the file is corrupt") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()):
            raise _profile_error(path, f"ends in the middle of the JSON ({e.msg}); the file is truncated") from None
        raise _profile_error(path, f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); the file is corrupt") from None
    except RecursionError:
        raise _profile_error(path, "has JSON arrays or objects nested too deeply to read; the file is corrupt") from None
    except ValueError as e:  # an integer longer than Python reads (sys.get_int_max_str_digits())
        raise _profile_error(path, f"cannot be read as JSON ({str(e).split(';')[0]}); the file is corrupt") from None
    if not isinstance(data, dict):
        raise _profile_error(path, f"holds a JSON {type(data).__name__}, not a profile object")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _profile_error(path, f"has no integer schema_version (got {version!r}); it is not an autooffload profile")
    if version > SCHEMA_VERSION:
        raise _profile_error(
            path,
            f"has schema_version {version}, newer than this autooffload reads ({SCHEMA_VERSION}); "
            "upgrade autooffload, or",
        )
    if version < SCHEMA_VERSION:
        raise _profile_error(path, f"has the old schema_version {version} (this autooffload reads {SCHEMA_VERSION})")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}{_given(err['input'])}" for err in e.errors()[:3]
        )
        more = f" (and {e.error_count() - 3} more)" if e.error_count() > 3 else ""
        raise _profile_error(path, f"does not match profile schema {SCHEMA_VERSION}: {problems}{more}") from None
    return profile.with_source(str(path))


def _given(value: object) -> str:
    """The offending value of a field, where it is one number or word (a curve's message lists its points)."""
    if isinstance(value, (dict, list)):
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 40 else text[:37] + '...'})"


def profile_json(profile: Profile) -> str:
    """The file format: the model as indented JSON."""
    return profile.model_dump_json(indent=1) + "\n"


def save_profile(profile: Profile, path: str | os.PathLike | None = None) -> Path:
    """Write ``profile`` to ``path`` (default: ``profile_path()``) atomically; returns the path.

    A temp file in the same folder is written, fsynced and moved over the target with
    ``os.replace``, so a reader sees the old file or the new one, never half of one, even if
    this process dies mid-write. Writers also take ``<path>.lock`` (filelock: an OS lock,
    released if the holder dies, and portable beyond POSIX), so concurrent calibrations write
    one after the other.
    """
    from filelock import FileLock, Timeout

    target = Path(path).expanduser() if path is not None else profile_path()
    data = profile_json(profile).encode("utf-8")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock", timeout=LOCK_TIMEOUT_S):
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)  # mkstemp makes 0600; a profile is not a secret
                os.replace(tmp, target)
            except BaseException:
                with suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_dir(target.parent)
    except Timeout:
        raise CalibrationError(f"cannot save profile {target}: {target}.lock held for over {LOCK_TIMEOUT_S:.0f} s") from None
    except OSError as e:
        raise CalibrationError(f"cannot save profile {target}: {e.strerror or e}") from None
    return target


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where directories cannot be opened."""
    with suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# The profile the decorator uses.
# ---------------------------------------------------------------------------------------------

_active: Profile | None = None
_active_lock = threading.Lock()


def active_profile() -> Profile:
    """The profile decisions use; resolved once, then cached. Never raises.

    Order: ``AUTOOFFLOAD_PROFILE`` (an explicit choice: used even if measured elsewhere) ->
    this machine's calibrated profile -> a shipped profile for this GPU model -> the built-in
    defaults. A file found but unusable gives one ``ProfileWarning`` (file, what is wrong, the
    fix); using the built-in defaults gives one INFO line on logger "autooffload".
    """
    profile = _active
    if profile is None:
        profile = _resolve_active_profile_once()
    return profile


def _resolve_active_profile_once() -> Profile:
    global _active
    with _active_lock:
        if _active is None:
            _active = _resolve_active_profile()
        return _active


def reset_active_profile() -> None:
    """Forget the cached active profile (after a calibration, or between tests).

    Decisions cached from the old profile are dropped too.
    """
    global _active
    with _active_lock:
        _active = None
    from . import _config

    _config.invalidate_decisions()


def _warn_unused(message: str) -> None:
    warn_at_user_line(f"autooffload: {message}; falling back to the next profile in line", ProfileWarning)


def _try_load(path: Path) -> Profile | None:
    try:
        return load_profile(path)
    except ProfileError as e:
        _warn_unused(str(e))
        return None


def _resolve_active_profile() -> Profile:
    from ._defaults import builtin_profile

    try:
        explicit = os.environ.get("AUTOOFFLOAD_PROFILE")
        if explicit:
            profile = _try_load(Path(explicit).expanduser())
            if profile is not None:
                if mismatch := this_machine_mismatch(profile.fingerprint):
                    logger.info("using AUTOOFFLOAD_PROFILE=%s although it was measured on another machine (%s)", explicit, mismatch)
                return profile

        path = default_profile_path()
        if path.exists() or path.is_symlink():
            profile = _try_load(path)
            if profile is not None:
                mismatch = this_machine_mismatch(profile.fingerprint)
                if mismatch is None:
                    _log_version_drift(profile)
                    return profile
                _warn_unused(
                    f"profile {path} was measured on another machine ({mismatch}) and is not used; {CALIBRATE_HINT}"
                )

        shipped = shipped_profile_for_this_gpu()
        if shipped is not None:
            logger.info(
                "using the shipped profile %s for %s; %s for numbers of its own",
                shipped.source, shipped.fingerprint.gpu_name, CALIBRATE_HINT,
            )
            return shipped

        logger.info("no calibrated profile for this machine (looked for %s); using built-in defaults; %s", path, CALIBRATE_HINT)
        return builtin_profile()
    except Exception as e:  # a profile problem must never break a user's call
        warn_at_user_line(f"autooffload: could not resolve a profile ({e!r}); using built-in defaults", ProfileWarning)
        return builtin_profile()


def _current_transfer_engine() -> str | None:
    try:
        from . import _transfer  # cheap: it imports CuPy only when copying
    except ImportError:
        return None
    return getattr(_transfer, "ENGINE_NAME", None)


def software_drift(profile: Profile) -> list[str]:
    """What changed on this machine since ``profile`` was measured: versions and the copy engine."""
    here, _ = _cheap_identity()
    changes = version_drift(profile.fingerprint, here)
    engine = _current_transfer_engine()
    if profile.has_gpu and profile.transfer_engine and engine and profile.transfer_engine != engine:
        changes.append(f"copy engine {profile.transfer_engine} -> {engine}")
    return changes


def _log_version_drift(profile: Profile) -> None:
    if changes := software_drift(profile):
        logger.info("profile %s was measured with other software (%s); consider `autooffload calibrate`", profile.source, ", ".join(changes))


def shipped_profile_for_this_gpu() -> Profile | None:
    """The shipped profile measured on this machine's GPU model (best CPU match first), or None."""
    here, gpu_known = _cheap_identity()
    if not gpu_known or not here.gpu_name:
        return None
    candidates = []
    for path in shipped_profile_paths():
        profile = _try_load(path)
        if profile is not None and profile.has_gpu and _normalize(profile.fingerprint.gpu_name) == _normalize(here.gpu_name):
            fp = profile.fingerprint
            closeness = (_normalize(fp.cpu_model) == _normalize(here.cpu_model), -abs(fp.cpu_cores - here.cpu_cores), profile.created)
            candidates.append((closeness, path.name, profile))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[:2])[2]
