"""Where a call can run: backends registered by name, their modules imported when first needed.

``register_lazy(name, module)`` names the module that implements a backend (the contract is in
``base.Backend``); nothing is imported until the planner or the executor first asks for that
backend, as dask's ``Dispatch.register_lazy`` and joblib's external backends do. NumPy, CuPy and
Numba are the entries, in that order. ``import autooffload`` imports no backend library: the CuPy module
imports CuPy in its ``load()``, the Numba module Numba in its.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .base import (
    DEVICE,
    DEVICE_DTYPES,
    DEVICE_DTYPES_TEXT,
    HOST,
    NATIVE_DEVICE_DTYPES,
    Backend,
    DeviceMemory,
    bits_differ,
    device_runner,
    translator_for,
    why_not_on_device,
)

NUMPY, CUPY, NUMBA = "numpy", "cupy", "numba"

_modules: dict[str, str] = {}  # backend name -> the module implementing it


def register_lazy(name: str, module: str) -> None:
    """Register the backend ``name``, implemented by ``module`` (imported on first use)."""
    _modules[name] = module
    _imported.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered backend's name, in registration order (NumPy first)."""
    return tuple(_modules)


_imported: dict[str, ModuleType] = {}  # name -> its module once imported (get() runs on every GPU call)


def module(name: str) -> ModuleType:
    found = _imported.get(name)
    if found is not None:
        return found
    try:
        path = _modules[name]
    except KeyError:
        raise KeyError(f"no backend named {name!r}; registered: {', '.join(_modules)}") from None
    found = _imported[name] = importlib.import_module(path)
    return found


def get(name: str) -> Backend | None:
    """The backend object, loading its library on first use; None if it cannot run here."""
    return module(name).load()


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here, if known without importing its library."""
    return module(name).unavailable_reason()


register_lazy(NUMPY, "autooffload.backends.numpy")
register_lazy(CUPY, "autooffload.backends.cupy")
register_lazy(NUMBA, "autooffload.backends.numba")

__all__ = [
    "CUPY", "DEVICE", "DEVICE_DTYPES", "DEVICE_DTYPES_TEXT", "HOST", "NATIVE_DEVICE_DTYPES", "NUMBA", "NUMPY", "Backend", "DeviceMemory",
    "bits_differ", "device_runner", "get", "module", "names", "register_lazy", "translator_for",
    "unavailable_reason", "why_not_on_device",
]
