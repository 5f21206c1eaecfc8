"""The device backend: CuPy, imported lazily (never at ``import autooffload``).

Everything the dispatcher does on the device goes through ``DeviceBackend`` so that CPU tests can
put a test double in its place (tests/fake_device.py). The NumPy side needs no object: it is
NumPy itself.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import ModuleType
from typing import Any

import numpy as np

from . import _config

logger = logging.getLogger("autooffload")

# The dtypes a device array holds: bool, int8-64, uint8-64, float16/32/64, complex64/128, given
# in either byte order (a copy to the device is made in native order). Not np.longdouble /
# np.clongdouble (float128, complex256), datetimes, strings, objects, structured dtypes.
_DEVICE_DTYPE_CODES = ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16")
DEVICE_DTYPES = frozenset(
    np.dtype(code).newbyteorder(order) for code in _DEVICE_DTYPE_CODES for order in ("<", ">")
)
DEVICE_DTYPES_TEXT = "bool, int8-64, uint8-64, float16/32/64, complex64/128"


def why_not_on_device(a: np.ndarray) -> str | None:
    """None if the host array ``a`` can be copied to the device as it is; else what it is."""
    if type(a) is not np.ndarray and type(a) is not np.memmap:
        return f"an array subclass ({type(a).__name__})"
    if a.dtype not in DEVICE_DTYPES:
        return f"an array of dtype {a.dtype} (the GPU holds {DEVICE_DTYPES_TEXT})"
    return None


class DeviceBackend:
    """CuPy on the current CUDA device."""

    name = "cupy"

    def __init__(self, cupy: ModuleType):
        self.xp = cupy
        self.array_type = cupy.ndarray
        from . import _transfer

        self._transfer = _transfer
        self._fallback_types = _fallback_exception_types(cupy)

    # -- copies ------------------------------------------------------------------------------
    def to_device(self, host: np.ndarray):
        return self._transfer.to_device(host)

    def to_host(self, dev, out: np.ndarray | None = None) -> np.ndarray:
        return self._transfer.to_host(dev, out=out)

    def copy(self, dev):
        return dev.copy(order="K")

    def view(self, buf, shape, dtype, offset: int, strides):
        """A view of ``buf`` (a 1-d uint8 device array) at byte ``offset`` with ``strides``."""
        return self.xp.ndarray(shape, dtype, memptr=buf.data + offset, strides=strides)

    def pointer(self, dev) -> int:
        return dev.data.ptr

    def allocation_start(self, dev) -> int:
        """Lowest address of the device allocation ``dev`` lives in."""
        return dev.data.mem.ptr

    def bytes_at(self, like, low: int, nbytes: int):
        """A 1-d uint8 device array over [low, low + nbytes), inside ``like``'s allocation."""
        return self.xp.ndarray((nbytes,), np.uint8, memptr=like.data + (low - like.data.ptr))

    def assign(self, dev, host: np.ndarray) -> None:
        """Write host values into an existing (possibly strided) device array."""
        dev[...] = self.to_device(host)

    def changed(self, pairs) -> list[bool]:
        """For each (array, snapshot): do their bits differ? One synchronization for all."""
        if not pairs:
            return []
        xp = self.xp
        flags = xp.stack([xp.any(bits_differ(a, b)) for a, b in pairs])
        return [bool(f) for f in flags.get()]

    def free_memory(self) -> None:
        """Give cached device blocks back (after an out-of-memory failure)."""
        self.xp.get_default_memory_pool().free_all_blocks()

    # -- rebinding ---------------------------------------------------------------------------
    def module_pairs(self) -> list[tuple[ModuleType, ModuleType]]:
        """(numpy-world module, its CuPy counterpart) pairs the rebinding maps."""
        return _counterpart_modules(self.xp)

    def fallback_cause(self, exc: BaseException) -> str | None:
        """A short cause if ``exc`` means "CuPy cannot run this code as written", else None."""
        if isinstance(exc, self._fallback_types):
            return f"{type(exc).__name__}: {exc}"
        if isinstance(exc, AttributeError) and _is_device_object(getattr(exc, "obj", None), self):
            return f"AttributeError: {exc} (CuPy lacks it)"
        return None


_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits_differ(a, b):
    """Elementwise "the bits differ" of two same-shaped arrays (NaN equals NaN, -0.0 != +0.0).

    Works for NumPy and CuPy arrays of any strides: same-itemsize views need no contiguity.
    """
    if a.dtype.kind == "c":
        return bits_differ(a.real, b.real) | bits_differ(a.imag, b.imag)
    uint = _UINT_OF_SIZE[a.dtype.itemsize]
    return a.view(uint) != b.view(uint)


def _is_device_object(obj: Any, backend: DeviceBackend) -> bool:
    if obj is None:
        return False
    if isinstance(obj, backend.array_type):
        return True
    name = getattr(obj, "__name__", "") if isinstance(obj, ModuleType) else ""
    return name == "cupy" or name.startswith(("cupy.", "cupyx"))


def _fallback_exception_types(cupy: ModuleType) -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [TypeError, NotImplementedError, MemoryError]
    for path in (
        "cuda.memory.OutOfMemoryError",
        "cuda.runtime.CUDARuntimeError",
        "cuda.driver.CUDADriverError",
        "cuda.compiler.CompileException",
        "cuda.cublas.CUBLASError",
        "cuda.cusolver.CUSOLVERError",
        "cuda.cufft.CuFFTError",
    ):
        obj: Any = cupy
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, type) and issubclass(obj, BaseException):
            types.append(obj)
    return tuple(types)


def _counterpart_modules(cupy: ModuleType) -> list[tuple[ModuleType, ModuleType]]:
    import importlib

    pairs = [(np, cupy)]
    for sub in ("linalg", "fft", "random", "lib.stride_tricks"):
        try:
            pairs.append((importlib.import_module(f"numpy.{sub}"), importlib.import_module(f"cupy.{sub}")))
        except ImportError:
            pass
    # SciPy modules map to cupyx.scipy, but only when the program already imported them.
    for sub in ("special", "fft", "linalg", "ndimage", "signal", "stats", "sparse"):
        np_side = sys.modules.get(f"scipy.{sub}")
        if np_side is None:
            continue
        try:
            pairs.append((np_side, importlib.import_module(f"cupyx.scipy.{sub}")))
        except ImportError:
            pass
    return pairs


# -- loading -----------------------------------------------------------------------------------
_lock = threading.Lock()
_backend: DeviceBackend | None = None
_unavailable: str | None = None  # why the GPU cannot be used, once known
_override: DeviceBackend | None = None  # a test double installed by tests
# True once the CUDA context exists in this process (our first GPU run, or the caller's cupy arrays).
gpu_ready = False


def set_backend_for_tests(backend: DeviceBackend | None) -> None:
    """Install a test double as the device backend (None: back to the real CuPy)."""
    global _override, _backend, _unavailable, gpu_ready, _probed
    with _lock:
        _override = backend
        _backend = None
        _unavailable = None
        _probed = False
        gpu_ready = False
    _config.invalidate_decisions()


def device_array_type() -> type | None:
    """The device array type, if the device library is already imported (never imports it)."""
    if _override is not None:
        return _override.array_type
    cp = sys.modules.get("cupy")
    return getattr(cp, "ndarray", None) if cp is not None else None


_NOT_INSTALLED = "CuPy is not installed (pip install 'autooffload[cuda12]' or 'autooffload[cuda13]')"
_probed = False


def unavailable_reason() -> str | None:
    """Why the GPU cannot be used, if that is known without importing CuPy; None otherwise."""
    global _unavailable, _probed
    if _config.environment().disable_gpu:
        return "AUTOOFFLOAD_DISABLE_GPU=1"
    if not _probed and _override is None and _backend is None:
        # Finding the package costs a directory scan, importing it 0.25 s: only the former here.
        import importlib.util

        _probed = True
        if "cupy" not in sys.modules and importlib.util.find_spec("cupy") is None:
            _unavailable = _NOT_INSTALLED
    return _unavailable


def load() -> DeviceBackend | None:
    """The device backend, importing CuPy on first use; None when there is no usable GPU."""
    global _backend, _unavailable
    if _config.environment().disable_gpu:
        return None
    if _backend is not None:
        return _backend
    if _unavailable is not None:
        return None
    with _lock:
        if _backend is not None or _unavailable is not None:
            return _backend
        if _override is not None:
            _backend = _override
            return _backend
        try:
            import cupy
        except Exception as exc:  # ImportError, or a broken CUDA install raising at import
            _unavailable = (
                f"CuPy is not importable ({type(exc).__name__}: {exc}); "
                "pip install 'autooffload[cuda12]' or 'autooffload[cuda13]'"
            )
        else:
            try:
                count = cupy.cuda.runtime.getDeviceCount()
            except Exception as exc:
                count, why = 0, f"{type(exc).__name__}: {exc}"
            else:
                why = "no CUDA device visible"
            if count > 0:
                _backend = DeviceBackend(cupy)
            else:
                _unavailable = f"no usable CUDA GPU ({why})"
        if _unavailable is not None:
            logger.info("autooffload: the GPU is not used: %s; everything runs on NumPy", _unavailable)
            _config.invalidate_decisions()
        return _backend


def mark_gpu_ready() -> None:
    global gpu_ready
    if not gpu_ready:
        gpu_ready = True
        _config.invalidate_decisions()
