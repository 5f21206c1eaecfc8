"""The Numba backend: the unmodified function compiled by ``numba.njit(parallel=True)``, on every
core, or on one where the function's own calls at that size measured one faster
(``_numba_threads``: small calls, and loops of small parallel regions, up to 6x on the H200).

Host memory, like NumPy: the caller's arrays are passed as they are (C, F or strided views: Numba
types a non-contiguous array as layout 'A'), so writes into arguments land in the caller's memory
as in NumPy. ``import autooffload`` never imports Numba (``unavailable_reason()`` only looks for
the package); ``load()`` imports it (~0.5 s) when a call first needs the tier.

What it costs and wins, measured on the 2-core CI-class VM (numba 0.68.1, numpy 2.4.6, float64,
warm, medians of interleaved runs; ``benchmarks/numba_tier.py``, ``benchmarks/results/cpu-vm/numba.txt``):

    function                             n    NumPy    Numba  speedup           compile
    ---------------------------------  ---  -------  -------  -------  ----------------
    y = x*5; y = y*y; return y+y       1e6  4.64 ms  2.47 ms    1.88x            0.60 s
    x *= 5; x *= x; x += x (in place)  1e6   387 us   242 us     1.6x            0.33 s
    y = x*5; y = y*y; return y+y       1e7  59.8 ms  70.6 ms   0.847x  (same signature)
    x *= 5; x *= x; x += x (in place)  1e7  17.4 ms  14.6 ms    1.19x  (same signature)
    Black-Scholes call (3 arrays)      1e6  50.7 ms  55.6 ms   0.911x            2.57 s

A second run gave 1.88x / 1.57x / 1.20x / 1.66x / 0.93x (the VM is noisy at 1e7: its memory
bandwidth, shared by both cores, bounds both sides). On 2 cores the tier wins ~1.6-1.9x at 1e6
and little at 1e7; the Black-Scholes-like function loses (~0.9x: the helper's expressions are not
fused across the call, so each allocates its temporaries as NumPy does, on one more thread). The
issue's H200 figures (16 cores: 2-100x) are where the tier pays; the planner must rely on the
calibrated curves, not on the tier being faster by construction.

What runs here, per function (``runner``) and per argument-type signature (``signature``): see
``_numba_compile`` (compile options, helpers, caching, signature states) and ``_numba_rules``
(where Numba's results would differ from NumPy's: those calls stay on NumPy).

API for the planner and executor (all on the loaded backend object, ``backends.get("numba")``):

- ``signature(func, args, kwargs) -> Signature``: the call's signature, with ``state`` one of
  "new", "compiling", "compiled", "failed"; ``seconds`` what its compilation took (None before
  one ends); ``reason`` why it failed or may not run here. Cheap once known (a dictionary lookup
  keyed by the argument types).
- ``compile_for(func, args, kwargs) -> Signature``: compile now (or wait for the thread that is),
  then the signature, compiled or failed.
- ``compile_in_background(func, signature) -> Thread | None``: compile in a daemon thread while
  calls continue on NumPy; None if it is already compiling or done.
- ``runner(func)``: ``(callable, None, how)``; the callable compiles a new signature before
  running it (the caller waits) and raises ``NotCompiled`` for a failed one, which
  ``fallback_cause`` turns into a NumPy rerun. ``(None, None, why)`` when no call of ``func`` may
  run here (dense linear algebra, random numbers, FFT, not a Python function, ``*args``).
- ``thread_limit(n)``: a context that runs the calls inside it on at most ``n`` threads
  (``numba.set_num_threads``, which is per calling thread); ``NUMBA_NUM_THREADS`` caps it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from types import FunctionType, ModuleType
from typing import Any, Callable, Iterator

import numpy as np

from . import _numba_threads
from .base import HOST, Backend, call_context

logger = logging.getLogger("autooffload")

# What Numba compiles with NumPy's results, native byte order only (Numba rejects a byte-swapped
# array's type). In: bool, int8-64, uint8-64 (wrap-around as NumPy), float32/64, complex64/128
# (IEEE arithmetic as NumPy; dtype promotion differences are guarded per call in _numba_rules).
# Out: float16 (Numba has no half-precision arithmetic on the CPU), longdouble/clongdouble (no
# Numba type), datetime64/timedelta64 (NaT and unit rules are NumPy's alone), strings, objects and
# structured dtypes (not array-expression material: Numba compiles them only partly).
_CODES = ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8", "c8", "c16")
NUMBA_DTYPES = frozenset(np.dtype(code).newbyteorder("=") for code in _CODES)


class NotCompiled(Exception):
    """This call's argument types have no compiled version (Numba could not compile it, or its
    results would differ from NumPy's): the executor reruns it on NumPy."""


class NumbaBackend(Backend):
    """``numba.njit(parallel=True)`` of the function, on the caller's host arrays."""

    name = "numba"
    memory = HOST
    warmup = "signature"  # a compilation per argument-type signature (cached on disk by Numba)
    dtypes = NUMBA_DTYPES

    def __init__(self, numba: ModuleType):
        from . import _numba_compile

        self.numba = numba
        self._compile = _numba_compile
        self.max_threads = numba.config.NUMBA_NUM_THREADS  # NUMBA_NUM_THREADS, else the core count
        # The "workqueue" threading layer (where neither TBB nor OpenMP is there) aborts the process
        # on concurrent parallel launches: calls are serialized until the layer is known to be safe.
        self._layer: str | None = None
        self._launch_lock = threading.Lock()
        # When compiled code last finished (perf_counter): after ~0.5 ms without work the parallel
        # threads sleep, and the next call pays their wake-up (_learn.TIER_COLD_AFTER_S).
        self.last_end = 0.0
        # The threading layer's own getter of the calling thread's limit (~0.1 us, against ~0.7
        # for numba's checked get_num_threads): every tier call reads it.
        self.get_threads: Callable[[], int] = numba.get_num_threads
        try:
            from numba.np.ufunc import parallel

            parallel._launch_threads()
            get = getattr(parallel, "_get_num_threads")
            if get() >= 1:
                self.get_threads = get
        except Exception:  # noqa: BLE001 - private: another Numba keeps the checked public getter
            pass

    # -- per function --------------------------------------------------------------------------
    def compiler(self, func: Callable):
        return self._compile.compiler_for(func, self.dtypes)

    def serial_compiler(self, func: Callable):
        """The compiler of ``func``'s serial build (``_numba_threads``)."""
        return self._compile.compiler_for(func, self.dtypes, serial=True)

    def runner(self, func: Callable) -> tuple[Callable | None, Any, str]:
        if not isinstance(func, FunctionType):
            return None, None, f"not a Python function ({type(func).__name__})"
        compiler = self.compiler(func)
        if compiler.refused is not None:
            return None, None, compiler.refused
        return _CompiledCall(self, compiler), None, "numba.njit(parallel=True) per argument types"

    def fallback_cause(self, exc: BaseException) -> str | None:
        if isinstance(exc, NotCompiled):
            return str(exc)
        if isinstance(exc, self.numba.core.errors.NumbaError):  # typing at call time, e.g. a new type
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        return None

    # -- per signature -------------------------------------------------------------------------
    def signature(self, func: Callable, args: tuple, kwargs: dict):
        compiler = self.compiler(func)
        return compiler.signature(compiler.positional(args, kwargs))

    def compile_for(self, func: Callable, args: tuple, kwargs: dict):
        compiler = self.compiler(func)
        return compiler.compile(compiler.signature(compiler.positional(args, kwargs)))

    def compile_in_background(self, func: Callable, signature) -> threading.Thread | None:
        return self.compiler(func).compile_in_background(signature)

    # -- threads -------------------------------------------------------------------------------
    @contextmanager
    def thread_limit(self, threads: int | None) -> Iterator[None]:
        """Calls in this block (in this thread) use at most ``threads`` threads (None: no limit)."""
        if threads is None:
            yield
            return
        numba = self.numba
        previous = numba.get_num_threads()
        numba.set_num_threads(max(1, min(int(threads), self.max_threads)))
        try:
            yield
        finally:
            numba.set_num_threads(previous)

    def _threading_layer(self) -> str | None:
        """The layer Numba started, or None until a parallel region has run (a function whose
        loops Numba could not parallelize starts none; asking then raises ValueError, after the
        call already ran and wrote: seen on the H200 with the in-place ``x *= 5``)."""
        try:
            return self.numba.threading_layer()
        except ValueError:
            return None

    def launch(self, run: Callable[[], Any]) -> Any:
        """Run compiled code, serialized only where the threading layer needs it."""
        if self._layer is None or self._layer == "workqueue":
            with self._launch_lock:
                try:
                    result = run()
                finally:
                    self.last_end = time.perf_counter()
                if self._layer is None:
                    self._layer = self._threading_layer()
                return result
        try:
            return run()
        finally:
            self.last_end = time.perf_counter()


class _CompiledCall:
    """The runner's callable: the function's compiled version for each call's argument types, the
    parallel build on all the threads it may use or the serial build, as its own calls measured
    faster (``_numba_threads``)."""

    __slots__ = ("backend", "compiler", "serial_build", "choices", "__wrapped__")

    def __init__(self, backend: NumbaBackend, compiler):
        self.backend = backend
        self.compiler = compiler
        self.serial_build = backend.serial_compiler(compiler.func)  # compiles nothing until asked
        self.choices = _numba_threads.Choices()
        self.__wrapped__ = compiler.func

    def __call__(self, *args, **kwargs):
        compiler = self.compiler
        positional = compiler.positional(args, kwargs)
        sig = compiler.signature(positional)
        if sig.state != "compiled":
            compiler.compile(sig)
            if sig.state != "compiled":
                raise NotCompiled(sig.reason)
        backend = self.backend
        limit = backend.get_threads()
        if sig.serial or limit == 1:
            return backend.launch(lambda: compiler.run(sig, positional))
        choice = self.choices.cell((sig.key, _numba_threads.size_bucket(positional), limit))
        threads = choice.threads
        if threads is None:
            return self._trial(choice, sig, positional, limit)
        if threads == ONE:
            serial, build = choice.serial, self.serial_build
            return backend.launch(lambda: build.run(serial, positional))
        return backend.launch(lambda: compiler.run(sig, positional))

    def _trial(self, choice, sig, positional: tuple, limit: int) -> Any:
        """A call of an undecided bucket: the build ``next_run`` names where it can run, timed."""
        backend, compiler, choices = self.backend, self.compiler, self.choices
        threads = choice.next_run(limit, choices, call_context.numpy_s())
        run = lambda: compiler.run(sig, positional)  # noqa: E731
        if threads == ONE:
            build = self.serial_build
            serial = choice.serial
            if serial is None:
                serial = choice.serial = build.signature(positional)
            if serial.state == "compiled":
                run = lambda: build.run(serial, positional)  # noqa: E731
            else:
                threads = ALL  # meanwhile: the parallel build, counted as such
                if serial.state == "failed":
                    choice.threads = ALL  # no serial build of these types: nothing to choose
                elif serial.state == "new":
                    build.compile_in_background(serial)
        choice.seen += 1
        preferred = choice.preferred()
        if choice.seen == 1:
            result = backend.launch(run)  # the bucket's first call: not counted
        else:
            compiling = backend._compile.compiling_now
            disturbed = compiling()
            start = time.perf_counter()
            result = backend.launch(run)
            seconds = time.perf_counter() - start
            if not (disturbed or compiling()):  # a compilation held the interpreter: no sample
                choice.add(threads, seconds, choices)
        now = choice.preferred()
        if now != preferred:
            call_context.changed = True  # the decision layer measures the tier here afresh
        if threads != now:
            call_context.aside = True  # not the build that stands for the tier here: teaches the decision layer nothing
        return result


ONE, ALL = _numba_threads.ThreadChoice.ONE, _numba_threads.ThreadChoice.ALL


# -- loading -----------------------------------------------------------------------------------
_lock = threading.Lock()
_backend: NumbaBackend | None = None
_unavailable: str | None = None
_NOT_INSTALLED = "Numba is not installed (pip install 'autooffload[numba]')"


def compiling_now() -> bool:
    """Whether a compilation for the tier runs now, in any thread (never imports Numba)."""
    return _backend is not None and _backend._compile.compiling_now()


def unavailable_reason() -> str | None:
    """Why the tier cannot run, if known without importing Numba; None otherwise."""
    if _backend is not None or _unavailable is not None or "numba" in sys.modules:
        return _unavailable
    import importlib.util

    return _NOT_INSTALLED if importlib.util.find_spec("numba") is None else None


def load() -> NumbaBackend | None:
    """The backend, importing Numba on first use; None (the reason kept) if it cannot be imported."""
    global _backend, _unavailable
    if _backend is not None or _unavailable is not None:
        return _backend
    with _lock:
        if _backend is None and _unavailable is None:
            try:
                import numba  # raises ImportError where NumPy is newer than this Numba supports
            except Exception as exc:
                _unavailable = f"Numba is not importable ({type(exc).__name__}: {exc}); pip install -U 'autooffload[numba]'"
                logger.info("autooffload: the Numba tier is not used: %s", _unavailable)
            else:
                _backend = NumbaBackend(numba)
                from .. import _heap

                # The tier's results come from malloc: keep large blocks faulted in (see _heap.py).
                logger.debug("autooffload: heap: %s", _heap.reuse_large_blocks())
    return _backend
