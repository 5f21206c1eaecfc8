"""What loads on this machine: the facts ``autooffload info`` prints (as ``numba -s`` does).

Each probe answers for itself and never raises: a user runs ``info`` precisely when something
does not load, so a failing probe reports its error as the answer. Slow or heavy imports (CuPy,
Numba, threadpoolctl) happen here only, never on ``import autooffload``. CuPy is asked through
calls that need no CUDA context (versions, device count and properties): creating one costs
~0.2-1 s and GPU memory, and would change what a user is trying to diagnose.
"""

from __future__ import annotations

import importlib
import platform
import sys
from typing import Any

from ._cores import affinity_cores, cgroup_quota, machine_cores, usable_cores


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


def extensions() -> dict[str, str]:
    """Each optional C extension: "loaded" or why not (without it the pure-Python path runs)."""
    found = {}
    for name, role in (("_native", "the NumPy path's C check"), ("_parcopy", "native copy threads")):
        try:
            importlib.import_module(f"autooffload.{name}")
            found[name] = f"loaded ({role})"
        except ImportError as e:
            found[name] = f"not built: {_error(e)}; {role} runs in Python"
    return found


def cores() -> dict[str, Any]:
    return {
        "machine": machine_cores(),
        "affinity": affinity_cores(),
        "cgroup_quota": cgroup_quota(),
        "usable": usable_cores(),
    }


def blas() -> list[dict[str, Any]]:
    from ._profiles.fingerprint import blas_libraries

    try:
        return [
            {k: lib.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer", "filepath")}
            for lib in blas_libraries()
        ]
    except ImportError as e:
        return [{"error": _error(e)}]


def cupy() -> dict[str, Any]:
    """CuPy, its CUDA runtime and driver versions and the GPUs, without creating a CUDA context."""
    from .backends import cupy as backend

    reason = backend.unavailable_reason()  # the decorator's own answer, which imports nothing
    info: dict[str, Any] = {"unavailable": reason}
    if reason is not None:  # not installed, or turned off: nothing to import
        return info
    try:
        cp = importlib.import_module("cupy")
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        info["import"] = _error(e)
        return info
    info["version"] = cp.__version__
    runtime = cp.cuda.runtime
    try:
        info["cuda_runtime"] = _cuda_version(runtime.runtimeGetVersion())
        info["cuda_driver"] = _cuda_version(runtime.driverGetVersion())
        gpus = []
        for i in range(runtime.getDeviceCount()):
            props = runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            gpus.append({"name": name, "compute": f"{props['major']}.{props['minor']}",
                         "memory_bytes": int(props["totalGlobalMem"])})
        info["gpus"] = gpus
    except Exception as e:  # no driver, no device
        info["cuda_error"] = _error(e)
    return info


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def numba() -> dict[str, Any]:
    """Numba's version and threading layer (the configured one: the one in use is only known
    after a parallel function has run)."""
    try:
        nb = importlib.import_module("numba")
    except Exception as e:
        return {"import": _error(e)}
    return {"version": nb.__version__, "threading_layer": nb.config.THREADING_LAYER,
            "threads": nb.config.NUMBA_NUM_THREADS}


def collect() -> dict[str, Any]:
    """Everything ``autooffload info`` reports, as data (also ``info --json``)."""
    import numpy as np

    from . import __version__

    return {
        "autooffload": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "numpy": np.__version__,
        "extensions": extensions(),
        "cores": cores(),
        "blas": blas(),
        "cupy": cupy(),
        "numba": numba(),
    }
