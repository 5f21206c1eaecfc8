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
_compiles_whole: set[str] = set()


def register_lazy(name: str, module: str, *, compiles_whole_function: bool = False) -> None:
    """Register the backend ``name``, implemented by ``module`` (imported on first use).
    ``compiles_whole_function``: it runs a function as one compiled call, not operation by
    operation, so the call's fixed cost is paid once (the cost model reads it: ``compiles_whole``)."""
    _modules[name] = module
    _imported.pop(name, None)
    if compiles_whole_function:
        _compiles_whole.add(name)
    else:
        _compiles_whole.discard(name)


def compiles_whole(name: str) -> bool:
    """Whether backend ``name`` runs a function as one compiled call (``register_lazy``)."""
    return name in _compiles_whole


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
register_lazy(NUMBA, "autooffload.backends.numba", compiles_whole_function=True)

__all__ = [
    "CUPY", "DEVICE", "DEVICE_DTYPES", "DEVICE_DTYPES_TEXT", "HOST", "NATIVE_DEVICE_DTYPES", "NUMBA", "NUMPY", "Backend", "DeviceMemory",
    "bits_differ", "compiles_whole", "device_runner", "get", "module", "names", "register_lazy", "translator_for",
    "unavailable_reason", "why_not_on_device",
]
