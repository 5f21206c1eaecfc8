"""FakeDevice: a test double for the GPU, so CPU tests can exercise the dispatcher's plumbing.

``FakeDeviceArray`` is a distinct array type whose memory is ordinary host memory; like
``cupy.ndarray`` it refuses to mix with ``numpy.ndarray`` in ufuncs (TypeError), and NumPy
functions called on it dispatch (NEP 18) to the fake module, which can be told to lack some
functions. ``FakeDevice`` implements the CuPy backend's contract (``autooffload.backends``) and
counts the copies it makes. Nothing here says anything about real GPU behaviour: the tests
marked ``gpu`` prove that on a GPU machine.
"""

from __future__ import annotations

import ctypes
import threading
import types

import numpy as np

from autooffload.backends import DEVICE, bits_differ, device_runner


class FakeDeviceArray(np.ndarray):
    """Stands in for cupy.ndarray."""

    @property
    def flags(self):  # like cupy.ndarray.flags: no ``writeable`` (device arrays are always writeable)
        own = np.ndarray.flags.__get__(self)
        return types.SimpleNamespace(c_contiguous=own.c_contiguous, f_contiguous=own.f_contiguous,
                                     owndata=own.owndata)

    def get(self) -> np.ndarray:
        return np.array(self.view(np.ndarray), copy=True, order="K")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        outs = kwargs.get("out", ())
        for x in (*inputs, *outs):
            if type(x) is np.ndarray:
                raise TypeError(f"Unsupported type {type(x)} (FakeDevice refuses host arrays, like CuPy)")
        inputs = tuple(_unwrap(x) for x in inputs)
        if outs:
            kwargs["out"] = tuple(_unwrap(x) for x in outs)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if outs:
            return outs[0] if len(outs) == 1 else outs
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        if func.__name__ in FAKE_MISSING:
            return NotImplemented
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))


# Names the fake module lacks (a test adds to it to imitate a function CuPy does not have).
FAKE_MISSING: set[str] = set()


def _unwrap(x):
    if isinstance(x, FakeDeviceArray):
        return x.view(np.ndarray)
    if type(x) in (list, tuple):
        return type(x)(_unwrap(v) for v in x)
    if type(x) is dict:
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x):
    if type(x) is np.ndarray:
        return x.view(FakeDeviceArray)
    if isinstance(x, np.generic):
        return np.asarray(x).view(FakeDeviceArray)  # CuPy reductions return 0-d device arrays
    if type(x) in (list, tuple):
        return type(x)(_wrap(v) for v in x)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_wrap(v) for v in x))
    return x


class _FakeModule(types.ModuleType):
    """A namespace mirroring a NumPy module whose functions take and return FakeDeviceArrays."""

    def __init__(self, name: str, source: types.ModuleType):
        super().__init__(name)
        self._source = source

    def __getattr__(self, name: str):
        if name.startswith("__") or name in FAKE_MISSING:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}", name=name, obj=self)
        value = getattr(self._source, name)
        if isinstance(value, np.ufunc) or isinstance(value, type) or not callable(value):
            return value  # ufuncs dispatch through __array_ufunc__; dtypes and constants are shared

        def fake_function(*args, **kwargs):
            if name in FAKE_MISSING:
                raise AttributeError(name)
            return _wrap(value(*_unwrap(args), **_unwrap(kwargs)))

        fake_function.__name__ = name
        return fake_function


fake_cupy = _FakeModule("fake_cupy", np)
fake_cupy.ndarray = FakeDeviceArray
fake_cupy.linalg = _FakeModule("fake_cupy.linalg", np.linalg)
fake_cupy.fft = _FakeModule("fake_cupy.fft", np.fft)
fake_cupy.random = _FakeModule("fake_cupy.random", np.random)


# The dtypes cupy.ndarray accepts (its own list, cupy/_core/_dtype.pyx: '?bhilqBHILQefdFD'), in
# native byte order only; anything else raises ValueError there, as here.
_CUPY_TYPE_CHARS = "?bhilqBHILQefdFD"


def _check_device_dtype(dtype: np.dtype) -> None:
    if not dtype.isnative:
        raise ValueError(f"Unsupported dtype {dtype} with big-endian byte-order")
    if dtype.char not in _CUPY_TYPE_CHARS:
        raise ValueError(f"Unsupported dtype {dtype}")


def _pointer(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class FakeDevice:
    """The CuPy backend's contract (``autooffload.backends.cupy.CupyBackend``), over host memory."""

    name = "fake-device"
    memory = DEVICE
    warmup = "process"
    xp = fake_cupy
    array_type = FakeDeviceArray

    def __init__(self, index: int = 0, uuid: str = "FAKE-GPU-0"):
        # The device this double is (a Dask worker's test gives each worker another one).
        self.index = index
        self.uuid = uuid
        self._thread = threading.local()
        self.to_device_calls = 0
        self.to_host_calls = 0
        self.changed_calls = 0  # write-detection comparisons
        self.fail_to_device: BaseException | None = None  # raised by the next to_device

    def to_device(self, host: np.ndarray) -> FakeDeviceArray:
        if self.fail_to_device is not None:
            exc, self.fail_to_device = self.fail_to_device, None
            raise exc
        _check_device_dtype(host.dtype.newbyteorder("="))
        self.to_device_calls += 1
        order = "F" if host.flags.f_contiguous and not host.flags.c_contiguous else "C"
        # Like the copy engine (_transfer.to_device): a device array is always in native byte order.
        return np.array(host, dtype=host.dtype.newbyteorder("="), copy=True, order=order).view(FakeDeviceArray)

    def to_host(self, dev: FakeDeviceArray, out: np.ndarray | None = None) -> np.ndarray:
        self.to_host_calls += 1
        if out is None:
            order = "F" if dev.flags.f_contiguous and not dev.flags.c_contiguous else "C"
            return np.array(dev.view(np.ndarray), copy=True, order=order)
        if out.shape != dev.shape or out.dtype != dev.dtype:  # the check of _transfer.to_host
            raise ValueError(f"out must be {dev.shape} {dev.dtype}; got {out.shape} {out.dtype}")
        out[...] = dev.view(np.ndarray)
        return out

    def copy(self, dev):
        return dev.copy(order="K")

    def view(self, buf, shape, dtype, offset, strides):
        _check_device_dtype(np.dtype(dtype))
        return np.ndarray(shape, dtype, buffer=buf.view(np.ndarray), offset=offset, strides=strides).view(
            FakeDeviceArray
        )

    def pointer(self, dev) -> int:
        return _pointer(dev)

    def allocation_start(self, dev) -> int:
        from autooffload._arguments import _host_root_start  # fake device memory is host memory

        return _host_root_start(dev)

    def bytes_at(self, like, low: int, nbytes: int):
        return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(low), dtype=np.uint8).view(FakeDeviceArray)

    def assign(self, dev, host: np.ndarray) -> None:
        dev.view(np.ndarray)[...] = host

    def changed(self, pairs) -> list[bool]:
        self.changed_calls += 1
        return [bool(bits_differ(a.view(np.ndarray), b.view(np.ndarray)).any()) for a, b in pairs]

    def synchronize(self) -> None:
        pass  # host memory: nothing is in flight

    def current_device(self) -> tuple[int, str]:
        """The device current in the calling thread: ``use(index)``'s in this thread, else this
        double's own (as cupy.cuda.Device(i).use() sets the device per thread)."""
        index = getattr(self._thread, "index", None)
        return (self.index, self.uuid) if index is None else (index, f"FAKE-GPU-{index}")

    def use(self, index: int | None) -> None:
        """Make device ``index`` current in the calling thread (None: back to this double's own)."""
        self._thread.index = index

    def free_memory(self) -> None:
        pass

    def module_pairs(self):
        return [(np, fake_cupy), (np.linalg, fake_cupy.linalg), (np.fft, fake_cupy.fft), (np.random, fake_cupy.random)]

    def runner(self, func):
        return device_runner(self, func)

    def fallback_cause(self, exc: BaseException) -> str | None:
        if isinstance(exc, (TypeError, NotImplementedError, MemoryError)):
            return f"{type(exc).__name__}: {exc}"
        if isinstance(exc, AttributeError) and isinstance(getattr(exc, "obj", None), _FakeModule):
            return f"AttributeError: {exc} (the device lacks it)"
        return None
