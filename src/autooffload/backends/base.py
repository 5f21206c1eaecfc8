"""What a backend is: the contract every place a call can run fulfils.

A backend is one place an offloaded call can run (NumPy on one core today, CuPy on the GPU; a
Numba-compiled multi-core tier next). The planner chooses among backends by name, the executor
runs a call on one, and the record keeper counts what ran where: none of them knows how many
backends there are. Adding one is a subclass of ``Backend`` and one ``register_lazy`` line in
``autooffload.backends`` (as threadpoolctl's ``LibController`` subclasses are registered).
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Any, Callable, ClassVar, ContextManager, Final, Literal

import numpy as np

Memory = Literal["host", "device"]
HOST: Final[Memory] = "host"
DEVICE: Final[Memory] = "device"

# The dtypes a device array holds: bool, int8-64, uint8-64, float16/32/64, complex64/128, given
# in either byte order (a copy to the device is made in native order). Not np.longdouble /
# np.clongdouble (float128, complex256), datetimes, strings, objects, structured dtypes.
_DEVICE_DTYPE_CODES = ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16")
DEVICE_DTYPES = frozenset(
    np.dtype(code).newbyteorder(order) for code in _DEVICE_DTYPE_CODES for order in ("<", ">")
)
DEVICE_DTYPES_TEXT = "bool, int8-64, uint8-64, float16/32/64, complex64/128"
# Those in native byte order: what an array copied byte for byte may hold (one set lookup).
NATIVE_DEVICE_DTYPES = frozenset(d for d in DEVICE_DTYPES if d.isnative)


def why_not_on_device(a: np.ndarray) -> str | None:
    """None if the host array ``a`` can be copied to the device as it is; else what it is."""
    if type(a) is not np.ndarray and type(a) is not np.memmap:
        return f"an array subclass ({type(a).__name__})"
    if a.dtype not in DEVICE_DTYPES:
        return f"an array of dtype {a.dtype} (the GPU holds {DEVICE_DTYPES_TEXT})"
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


class Backend:
    """One place a call can run.

    Contract: a backend class defines these class attributes

    - ``name``: the name users force it by (``backend=...``, ``config(backend=...)``), the key of
      its predictions in ``Decision.predicted_s`` and of its curves in a profile;
    - ``memory``: ``"host"`` if it computes on numpy arrays in host memory, ``"device"`` if its
      arrays live in device memory (then it also implements ``DeviceMemory``);
    - ``warmup``: what it pays once before its first run: ``"none"``; ``"process"`` (a CUDA
      context and kernel loading, once per process: the cold start the planner amortizes);
      ``"signature"`` (a JIT compilation, once per argument-type signature);
    - ``dtypes``: the dtypes its arrays hold, or None for every dtype NumPy has;

    and these methods:

    - ``runner(func)``: ``(callable, twin, how)``, the callable that runs ``func`` here (the
      function itself, a device twin with NumPy names rebound, a compiled version), the twin to
      refresh before each call (or None), and how it was found; ``(None, None, why)`` when there
      is no version of ``func`` for this backend;
    - ``thread_limit(n)``: a context in which its calls use at most ``n`` threads (None: no
      limit), for ``config(threads=...)``; single-threaded backends ignore it (the default);
    - ``synchronize()``: wait for the work it queued (a device stream), so a measured call's time
      is the real one; host backends return at once (the default);
    - ``fallback_cause(exc)``: a short cause if ``exc`` means "this backend cannot run the code
      as written" (the call is then redone on NumPy and the argument types remembered), None if
      the exception is the function's own.

    A host backend's runner may read ``call_context`` (this thread's call: what the decision
    layer predicts NumPy takes for it, a prior for choosing among its own builds) and report
    there what its run stands for (``aside``, ``changed``).

    A backend's module (registered with ``register_lazy``) provides ``load()``, the backend
    object or None when it cannot run here (it may import the library), and
    ``unavailable_reason()``, which must not. Device backends also implement ``DeviceMemory``.
    """

    name: ClassVar[str]
    memory: ClassVar[Memory]
    warmup: ClassVar[Literal["none", "process", "signature"]] = "none"
    dtypes: ClassVar[frozenset | None] = None

    def runner(self, func: Callable) -> tuple[Callable | None, Any, str]:
        raise NotImplementedError

    def synchronize(self) -> None:
        return None

    def thread_limit(self, threads: int | None) -> ContextManager[None]:
        return nullcontext()

    def fallback_cause(self, exc: BaseException) -> str | None:
        return None


class CallContext(threading.local):
    """The call a host backend's runner runs now, per thread. The executor sets ``decision`` (the
    call's Decision) around the runner's call, None outside it; ``numpy_s()`` reads NumPy's
    predicted seconds from it. The runner may set ``aside`` (it ran a variant that does not stand
    for the backend here: the call's time teaches the decision layer nothing) and ``changed`` (it
    changed which variant stands for the backend here: the decision layer measures it afresh);
    the dispatcher clears both before a call it times and reads them after."""

    decision: Any = None
    aside = False
    changed = False

    def numpy_s(self) -> float | None:
        """NumPy's seconds for the call, as a prior: the lower of the decision's prediction and
        the profile's own. A NumPy prediction corrected by the tier's error inherits what makes
        the tier slow (a parallel build waking 16 threads per loop iteration), which NumPy does
        not pay: there it read 36 ms against the 3 ms NumPy took (tests/test_numba_tier.py)."""
        d = self.decision
        if d is None:
            return None
        predicted, profile = d.predicted_s.get("numpy"), d.profile_s.get("numpy")
        if predicted is None or profile is None:
            return predicted if profile is None else profile
        return min(predicted, profile)


call_context = CallContext()


class DeviceMemory:
    """Device memory operations, implemented by device backends only (and the test double).

    ``array_type`` is the device array class and ``xp`` the array module. Copies:
    ``to_device(host)``, ``to_host(dev, out=None)``; ``pinned(host)`` (optional: whether the
    host array's copies are DMAs from page-locked memory now); ``held_pinned(arrays)`` and
    ``to_device_queued(host)`` (optional, together: a block that yields, per array, whether its
    memory is pinned and keeps it so, and copies from such memory queued without a wait, for the
    streamed pipeline); ``copy(dev)``; views and addresses:
    ``view(buf, shape, dtype, offset, strides)``, ``pointer(dev)``, ``allocation_start(dev)``,
    ``bytes_at(like, low, nbytes)``; writes: ``assign(dev, host)``; write detection:
    ``changed(pairs)`` (one synchronization for all pairs); ``free_memory()`` after an
    out-of-memory failure; ``module_pairs()``, the (NumPy-world module, counterpart) pairs a
    device twin rebinds; ``current_device()``, the (index, UUID) of the device current in the
    calling thread, which decisions name and are made for.
    """

    array_type: Any
    xp: Any


def translator_for(backend) -> Any:
    """The (cached) translator from NumPy's names to ``backend``'s (see _rebind.py)."""
    translator = getattr(backend, "_autooffload_translator", None)
    if translator is None:
        from .._rebind import Translator

        translator = Translator(backend.module_pairs())
        backend._autooffload_translator = translator
    return translator


def device_runner(backend, func: Callable) -> tuple[Callable | None, Any, str]:
    """``Backend.runner`` for an array library that mirrors NumPy's API: the function's device twin."""
    return translator_for(backend).device_callable(func)
