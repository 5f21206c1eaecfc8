"""The machine fingerprint: what identifies the machine (and software) a profile belongs to.

Two probes. The *cheap* one reads /proc (CPU model, cores, and the NVIDIA driver's view of the
GPUs) and never imports CuPy or touches CUDA: ``active_profile()`` runs it on the decorator's
first decision, where importing CuPy (~0.25 s) and creating a CUDA context would be paid even
by calls that stay on NumPy. The *full* one (calibration, `autooffload show`) adds what only
the CUDA runtime knows. The identity fields (CPU model, cores, GPU name, GPU UUID) are always
taken from the cheap probe when it can see them, so a profile written by the sweep matches what
the loader sees later on the same machine.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from contextlib import suppress
from pathlib import Path

from .._cores import usable_cores
from .model import Fingerprint

_PROC_GPUS = Path("/proc/driver/nvidia/gpus")
_PROC_DRIVER_VERSION = Path("/proc/driver/nvidia/version")
_CUPY_DISTRIBUTIONS = ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy-rocm-6-0", "cupy-rocm-5-0")



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


def blas_libraries() -> list[dict]:
    """The BLAS libraries loaded in this process, as threadpoolctl describes them.

    Each: ``internal_api`` ("openblas", "mkl", "blis", "flexiblas"), ``version``,
    ``num_threads``, ``filepath``, ``threading_layer``. threadpoolctl finds them in the
    process's loaded libraries and asks each through its own API, for more libraries than a
    hand-written probe would; imported here only (calibration, ``autooffload info``), since it
    walks the loaded libraries. NumPy must be imported first for its BLAS to be loaded.
    """
    import numpy  # noqa: F401  (loads NumPy's BLAS, so that it is found)
    from threadpoolctl import threadpool_info

    with suppress(Exception):  # a library threadpoolctl cannot query must not fail a calibration
        return [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return []


def _blas() -> tuple[str | None, int | None]:
    """(name and version, threads) of the first BLAS loaded: NumPy's own, as NumPy loads it first."""
    libraries = blas_libraries()
    if not libraries:
        return None, None
    lib = libraries[0]
    name = " ".join(str(part) for part in (lib.get("internal_api"), lib.get("version")) if part)
    threads = lib.get("num_threads")
    return name or None, threads if isinstance(threads, int) and threads > 0 else None


def cuda_gpu_details() -> dict:
    """Fingerprint fields only the CUDA runtime knows (device 0 of this process); {} without a GPU.

    Imports CuPy: only the sweep and the CLI call this, never a decorated call.
    """
    try:
        import cupy

        from ..backends.cupy import cuda_uuid

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
            "gpu_uuid": cuda_uuid(cupy, device_id) or None,
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
        cpu_cores=usable_cores(),
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
    update: dict[str, object] = {
        "numba_version": _dist_version("numba"),  # metadata only: importing numba is slow
        "cupy_version": _cupy_version(look_up=True),
    }
    update["blas"], update["blas_threads"] = _blas()
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

