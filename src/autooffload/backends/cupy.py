"""The CuPy backend: the GPU, with CuPy imported the first time a call needs it.

``import autooffload`` never imports CuPy: ``unavailable_reason()`` finds the package without
importing it (importing costs ~0.25 s, creating the CUDA context ~1 s), and ``load()`` imports it
on the first call sent to the GPU. Everything the executor does on the device goes through the
loaded backend object, so that CPU tests can put a test double in its place
(``set_backend_for_tests``; tests/fake_device.py).
"""

from __future__ import annotations

import logging
import sys
import threading
from types import ModuleType
from typing import Any, Callable

import numpy as np

from .. import _config
from .base import DEVICE, DEVICE_DTYPES, Backend, DeviceMemory, bits_differ, device_runner

logger = logging.getLogger("autooffload")

class CupyBackend(Backend, DeviceMemory):
    """CuPy on the current CUDA device."""

    name = "cupy"
    memory = DEVICE
    warmup = "process"  # the CUDA context and kernel loading: the cold start
    dtypes = DEVICE_DTYPES

    def __init__(self, cupy: ModuleType):
        self.xp = cupy
        self.array_type = cupy.ndarray
        from .. import _transfer

        self._transfer = _transfer
        self._fallback_types = _fallback_exception_types(cupy)
        self._get_device = cupy.cuda.runtime.getDevice
        self._uuids: dict[int, str] = {}

    # -- which device ------------------------------------------------------------------------
    def current_device(self) -> tuple[int, str]:
        """(index, UUID) of the device current in the calling thread (cudaGetDevice, ~0.1 us;
        the UUID is read once per index). Work and copies go there: CuPy allocates and queues
        on the current device, and the copy engine keeps events and side streams per device."""
        index = self._get_device()
        uuid = self._uuids.get(index)
        if uuid is None:
            uuid = self._uuids[index] = cuda_uuid(self.xp, index)
        return index, uuid

    # -- copies ------------------------------------------------------------------------------
    def to_device(self, host: np.ndarray):
        return self._transfer.to_device(host)

    def to_host(self, dev, out: np.ndarray | None = None) -> np.ndarray:
        return self._transfer.to_host(dev, out=out)

    def pinned(self, host: np.ndarray) -> bool:
        """Whether copies of ``host`` are DMAs from page-locked memory now (_transfer.pinned)."""
        return self._transfer.pinned(host)

    def held_pinned(self, arrays: list[np.ndarray]):
        """A block in which ``to_device_queued`` may copy parts of ``arrays``: yields, per array,
        whether its memory is pinned, and keeps it so (_transfer.held_pinned)."""
        return self._transfer.held_pinned(arrays)

    def to_device_queued(self, host: np.ndarray):
        """A contiguous part of memory ``held_pinned`` holds, copied by one DMA queued on the
        current stream, not waited for (_transfer.to_device_queued)."""
        return self._transfer.to_device_queued(host)

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

    def synchronize(self) -> None:
        """Wait for the current stream: a measured call's time includes the device work."""
        self.xp.cuda.get_current_stream().synchronize()

    def free_bytes(self) -> int:
        """Device bytes a call could allocate now: the driver's free memory plus the blocks
        CuPy's pool holds unused (for _stream: data larger than this is streamed)."""
        free, _ = self.xp.cuda.runtime.memGetInfo()
        return int(free) + int(self.xp.get_default_memory_pool().free_bytes())

    def free_memory(self) -> None:
        """Give cached device blocks back (after an out-of-memory failure)."""
        self.xp.get_default_memory_pool().free_all_blocks()

    # -- rebinding ---------------------------------------------------------------------------
    def module_pairs(self) -> list[tuple[ModuleType, ModuleType]]:
        """(numpy-world module, its CuPy counterpart) pairs the rebinding maps."""
        return _counterpart_modules(self.xp)

    def runner(self, func):
        return device_runner(self, func)

    def fallback_cause(self, exc: BaseException) -> str | None:
        """A short cause if ``exc`` means "CuPy cannot run this code as written", else None."""
        if isinstance(exc, self._fallback_types):
            return f"{type(exc).__name__}: {exc}"
        if isinstance(exc, AttributeError) and _is_device_object(getattr(exc, "obj", None), self):
            return f"AttributeError: {exc} (CuPy lacks it)"
        return None


def format_uuid(raw: Any) -> str:
    """CUDA's 16 UUID bytes as nvidia-smi prints them ("GPU-" and 8-4-4-4-12 hex digits); "" if
    unknown."""
    if isinstance(raw, (bytes, bytearray)) and len(raw) == 16:
        h = bytes(raw).hex()
        return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return raw if isinstance(raw, str) else ""


def cuda_uuid(cupy: ModuleType, index: int) -> str:
    """The UUID of CUDA device ``index`` as nvidia-smi prints it, "" where nothing can tell.

    CuPy's ``getDeviceProperties(i)["uuid"]`` converts the 16 bytes as a C string, so it stops
    at the first zero byte: on the H200 machine one start's GPU gave fewer than 16 bytes (a
    UUID holds a zero byte about one time in 16). Then the driver is asked itself
    (``cuDeviceGetUuid``, 16 bytes whatever they hold). With no zero byte among them the
    conversion reads on into the next field (the LUID, zero on Linux, not on Windows): the
    first 16 bytes are the UUID."""
    try:
        raw = cupy.cuda.runtime.getDeviceProperties(index).get("uuid")
    except Exception:  # an old runtime without the field
        raw = None
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw[:16]) if len(raw) >= 16 else _driver_uuid(index)
    return format_uuid(raw)


def _driver_uuid(index: int) -> bytes | None:
    """Device ``index``'s 16 UUID bytes from the CUDA driver library (ctypes; the device
    numbered as the runtime numbers it, CUDA_VISIBLE_DEVICES applied), or None."""
    import ctypes

    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
        get_uuid = getattr(lib, "cuDeviceGetUuid_v2", None) or lib.cuDeviceGetUuid
        dev = ctypes.c_int()
        buf = ctypes.create_string_buffer(16)
        if lib.cuInit(0) != 0 or lib.cuDeviceGet(ctypes.byref(dev), index) != 0 or get_uuid(buf, dev) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return buf.raw


def _is_device_object(obj: Any, backend: CupyBackend) -> bool:
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
_backend: CupyBackend | None = None
_unavailable: str | None = None  # why the GPU cannot be used, once known
_override: CupyBackend | None = None  # a test double installed by tests
# True once a CUDA context exists in this process (our first GPU run, or the caller's cupy arrays);
# ready_devices says on which devices (a context is per device; None: a device not known then).
gpu_ready = False
ready_devices: set[int | None] = set()
# The device array type, once a call has passed one: the hot path compares types against it
# without asking (a list, so the generated wrappers hold it and see it change).
seen_array_type: list = [None]


def set_backend_for_tests(backend: CupyBackend | None) -> None:
    """Install a test double as the device backend (None: back to the real CuPy)."""
    global _override, _backend, _unavailable, gpu_ready, _probed
    with _lock:
        _override = backend
        _backend = None
        _unavailable = None
        _probed = False
        gpu_ready = False
        ready_devices.clear()
    _config.invalidate_decisions()


def current_device() -> tuple[int, str] | None:
    """(index, UUID) of the calling thread's current device, once the device backend is loaded
    (never loads it: before the first GPU decision there is nothing to name)."""
    backend = _backend
    ask = getattr(backend, "current_device", None)  # test doubles may not name a device
    return None if ask is None else ask()


def device_label(where: tuple[int, str] | None) -> str:
    """How a Decision names a device: "cuda:1 (GPU-8f3a...)"."""
    if where is None:
        return ""
    index, uuid = where
    return f"cuda:{index} ({uuid})" if uuid else f"cuda:{index}"


def is_ready(index: int | None) -> bool:
    """Whether the device ``index`` (None: the current one, unknown) has its context already."""
    return gpu_ready and (index in ready_devices or None in ready_devices)


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


def load() -> CupyBackend | None:
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
                _backend = CupyBackend(cupy)
            else:
                _unavailable = f"no usable CUDA GPU ({why})"
        if _unavailable is not None:
            logger.info("autooffload: the GPU is not used: %s; everything runs on NumPy", _unavailable)
            _config.invalidate_decisions()
        return _backend


# Called once when the GPU starts in this process (mark_gpu_ready): the profile's GPU probe
# (_profiles/resolve.py) registers here, so that this module imports nothing of the profiles.
_start_hooks: list[Callable[[], None]] = []


def on_start(hook: Callable[[], None]) -> None:
    """Call ``hook()`` at each GPU start of this process (the first GPU run, or the caller's first
    device arrays), before cached decisions are dropped. A hook must not raise."""
    if hook not in _start_hooks:
        _start_hooks.append(hook)


def mark_gpu_ready() -> None:
    """The current device's context exists (after a run there, or the caller's device arrays)."""
    global gpu_ready
    where = current_device()
    index = None if where is None else where[0]
    if not gpu_ready or index not in ready_devices:
        gpu_ready = True
        ready_devices.add(index)
        for hook in list(_start_hooks):
            try:
                hook()
            except Exception:  # a hook must never fail the call that started the GPU
                logger.exception("autooffload: a GPU start hook failed")
        _config.invalidate_decisions()
