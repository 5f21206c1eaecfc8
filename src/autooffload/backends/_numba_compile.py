"""Compiling a function with Numba, one argument-type signature at a time, never behind the caller's back.

Imported only by ``backends.numba.load()`` once Numba imported (it imports Numba at the top).

The function is compiled unmodified with ``numba.njit`` and these options:

- ``parallel=True``: array expressions are fused into one loop and spread over the cores; the
  reason the tier exists.
- ``error_model="numpy"``: float division by zero gives inf/nan as in NumPy (the default "python"
  model raises ZeroDivisionError), integer ``//`` and ``%`` by zero give 0 as in NumPy.
- ``boundscheck=True``: without it an out-of-bounds read returns whatever lies in memory
  (``x[10]`` of a 5-element array gave 1 where NumPy raises IndexError). With it Numba raises
  IndexError. Its cost, measured here (2 cores, 1e7 float64, medians of 7): the chain
  ``y = x*5; y = y*y; return y+y`` 58.9 -> 61.0 ms, a loop ``s += x[i]*x[i+1]`` 8.5 -> 8.5 ms,
  the stencil ``x[1:] - x[:-1]`` 64.0 -> 65.2 ms: within 4%.
- ``nogil=True``: the compiled code releases the GIL, so other Python threads (and other
  offloaded calls) run while it does; NumPy releases it in its loops too.
- ``cache=True``: compiled code is saved next to the source (``__pycache__``, or
  ``NUMBA_CACHE_DIR``), so the next process loads it instead of compiling. Numba invalidates an
  entry when the source file's modification time or size changes; globals are frozen into the
  code at compile time, so a changed global constant with an unchanged file is not noticed (a
  Numba limitation: touch the file). Functions without a source file (``exec``, the REPL)
  compile without the disk cache.

Helper functions the function calls by global name are compiled too: the function is compiled as
a copy whose globals map each plain Python helper to its own ``njit`` dispatcher (recursively,
lazily: a helper that is never called is never compiled). A helper Numba cannot compile makes the
signature fail, as anything else Numba cannot type does (Python objects, unsupported NumPy
functions or keyword forms).

Each signature (the argument types as Numba types them: dtype, ndim, layout C/F/A, writeable,
aligned; scalar types) goes through ``new -> compiling -> compiled | failed`` once per process.
A failure is remembered with its reason (as Numba's own ``_FunctionCompiler`` remembers failed
signatures) and logged at DEBUG: it is expected, not a warning. One compilation per signature at
a time: a second caller waits for it, or, from ``compile_in_background``, leaves it to the thread
already at work.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import types
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import numba
import numpy as np
from numba.core.registry import CPUDispatcher
from numba.np.numpy_support import as_dtype

from .._codewalk import referenced_names
from ._numba_rules import CodeFacts, code_facts, semantic_difference

logger = logging.getLogger("autooffload")
# Signatures compiling now, in any thread. A compilation holds the GIL for much of its 0.3-1.3 s:
# calls timed meanwhile measure the contention, not themselves (on the 2-core VM the percentiles'
# NumPy calls at 1e2 took 100-280 us during one, 56 us after).
_in_flight: list = []


def compiling_now() -> bool:
    return bool(_in_flight)


JIT_OPTIONS = {"parallel": True, "error_model": "numpy", "boundscheck": True, "nogil": True}
# The serial build: the same options without ``parallel``, for the calls its own measurements
# show faster on one core (``_numba_threads``). Its copies are named apart (``SERIAL_SUFFIX``):
# Numba's disk cache keys an entry by the function's name, signature and code, not its options,
# so a serial build under the same name would load the parallel one from the cache.
SERIAL_JIT_OPTIONS = {**JIT_OPTIONS, "parallel": False}
SERIAL_SUFFIX = "__autooffload_serial"
NEW, COMPILING, COMPILED, FAILED = "new", "compiling", "compiled", "failed"


@dataclass(eq=False)
class Signature:
    """One argument-type signature of one function, and where its compilation stands."""

    key: tuple
    state: str = NEW
    reason: str | None = None  # why it failed (or why it may not run on Numba)
    seconds: float | None = None  # what the compilation took, compiled or failed
    numba_types: tuple | None = None
    convert: Callable[[Any], Any] | None = None  # the result as NumPy would return it
    # The compiled overload's own entry point, called without Numba's dispatch, where ``key``
    # tells the argument types exactly (``_exactly_keyed``), and the values of the parameters
    # left out (passed to it; the compiled code ignores them: Numba's Omitted type). The
    # dispatcher types an omitted argument afresh on every call, with its default's repr: an
    # ``xp=np`` function's tier call at 1e2 took 9.0 us through it and 2.5 us through its
    # entry point on the 2-core VM (a function without defaults: 0.18 us either way).
    entry: Callable[..., Any] | None = None
    omitted: tuple = ()
    # Numba found no loop to run in parallel (``x *= 5`` in Numba 0.68: "no transformation for
    # parallel execution was possible"): the compiled code runs on one core, and the tier's
    # curves (measured on all of them) do not predict it (_planner._numba_gate).
    serial: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, state: str, seconds: float | None, reason: str | None = None) -> None:
        self.state, self.seconds, self.reason = state, seconds, reason
        self.done.set()


def _exactly_keyed(key: tuple) -> bool:
    """Whether a signature's key (``_key_of`` of each argument) fixes Numba's type of every
    argument, so that its compiled entry point may be called without Numba's dispatch: arrays
    (dtype, dimensions, layout, writeable: all of Numba's array type; aligned too), ints that fit
    64 bits, floats, complex numbers, bools, and values keyed by Numba's own type (tuples,
    enums, ...). Anything else (a NumPy scalar, keyed by its Python type, whose dtype may carry
    a unit) goes through the dispatcher, which types it exactly."""
    for k in key:
        if type(k) is tuple:
            if len(k) == 5 and isinstance(k[0], np.dtype):
                continue
            if len(k) == 2 and k[0] is int and k[1] in (0, 1):
                continue
            return False
        if k not in (float, complex, bool) and not isinstance(k, numba.types.Type):
            return False
    return True


def _key_of(a: Any) -> Any:
    """A cheap key that equals another's exactly when Numba types the two values alike."""
    t = type(a)
    if t is np.ndarray:
        flags = a.flags
        layout = "C" if flags.c_contiguous else "F" if flags.f_contiguous else "A"
        return (a.dtype, a.ndim, layout, flags.writeable, flags.aligned)
    if t is int:  # int64 if it fits, else uint64, else untypable
        return (int, 0 if -(2**63) <= a < 2**63 else 1 if 0 <= a < 2**64 else 2)
    if t in (float, complex, bool) or a is None or isinstance(a, np.generic):
        return t
    try:
        return numba.typeof(a)  # tuples, strings, ...: Numba's own type is the key
    except Exception:
        return ("untypable", t)


# Values that compile as the same constant whether passed or left to their default.
_CONSTANT_TYPES = (types.ModuleType, int, float, complex, str, type(None))
# Defaults left out for Numba to compile as constants (its Omitted type). Numba keys an Omitted
# type by the default's type and value, across functions and in its disk cache: equal values of
# one type share one compiled constant, so a -0.0 default ran as another function's 0.0, (1, 2.0)
# as (1.0, 2), and an array default (keyed by identity) stayed at its first contents (review,
# session 11). Only defaults whose equal values are the same value are left out
# (``_safe_to_omit``: modules, strings, None, bools, ints, and objects compared by identity such
# as functions and classes); the others are passed as values, up to the first that is safe to
# leave out, and a signature that must still leave such a default out (one after an ``xp=np``
# module parameter) stays on NumPy (``signature``).


def _safe_to_omit(default: Any) -> bool:
    """Whether Numba may compile ``default`` as a constant: its equal values are the same value."""
    if default is None or isinstance(default, (types.ModuleType, str, bool, int)):
        return True
    kind = type(default)
    return kind.__eq__ is object.__eq__ and kind.__hash__ is object.__hash__


def _unsafe_omitted(omitted: tuple) -> str | None:
    """Why these defaults, left out of a call, cannot be left to Numba (``_safe_to_omit``), or None."""
    for d in omitted:
        if not _safe_to_omit(d):
            return (f"a default of {type(d).__name__} after a parameter left to Numba as a constant: Numba "
                    f"would share its compiled value with equal defaults of other functions")
    return None


_OUR_WARNINGS = threading.Lock()  # warnings.catch_warnings is process-wide: one compile at a time


class FunctionCompiler:
    """The compiled versions of one function, by signature."""

    def __init__(self, func: types.FunctionType, dtypes: frozenset, serial: bool = False):
        self.func = func
        self.dtypes = dtypes
        self.serial = serial  # the build without parallel=True
        self.lock = threading.Lock()
        self.signatures: dict[tuple, Signature] = {}
        self.refused = _refused_signature(func)
        if self.refused is None:
            codes: list[types.CodeType] = []
            self.dispatcher = _build_dispatcher(func, {}, codes, serial=serial)
            self.facts: CodeFacts = code_facts(codes)
            self.refused = self.facts.refused
        code = func.__code__
        self._arity = code.co_argcount
        # Parameter name -> position, for keyword arguments that are positional parameters (the
        # executor passes ``xp=np`` by keyword): placed without inspect's bind, ~5 us a call.
        self._position = {name: i for i, name in enumerate(code.co_varnames[:code.co_argcount])
                          if i >= code.co_posonlyargcount}
        # Trailing parameters' defaults: an argument left out is compiled as a constant
        # (Numba's Omitted type), which is how an ``xp=np`` module parameter compiles at all.
        self._defaults = func.__defaults__ or ()
        self._signature: inspect.Signature | None = None

    def positional(self, args: tuple, kwargs: dict) -> tuple:
        """The call's arguments as positional ones, the trailing defaulted ones left out (Numba
        compiles them as constants) from the first that is safe to leave out (``_safe_to_omit``),
        the defaults before it passed as values; a module or immutable scalar passed as its very
        default is treated as left out (the executor passes ``xp=np`` explicitly)."""
        if kwargs and len(args) <= self._arity:
            placed = self._placed(args, kwargs)
            if placed is not None:
                args, kwargs = placed, {}
        if kwargs or len(args) > self._arity:
            if self._signature is None:
                self._signature = inspect.signature(self.func)
            bound = self._signature.bind(*args, **kwargs)
            if bound.kwargs:  # a later parameter by keyword: the defaulted ones before it explicit
                bound.apply_defaults()
            args = bound.args
        first_default = self._arity - len(self._defaults)
        while args and len(args) > first_default and isinstance(args[-1], _CONSTANT_TYPES) \
                and args[-1] is self._defaults[len(args) - 1 - first_default]:
            args = args[:-1]
        n = len(args)
        while first_default <= n < self._arity and not _safe_to_omit(self._defaults[n - first_default]):
            args += (self._defaults[n - first_default],)  # passed as a value: see _safe_to_omit
            n += 1
        return args

    def _placed(self, args: tuple, kwargs: dict) -> tuple | None:
        """``args`` extended by ``kwargs`` that name positional parameters, the gaps filled with
        their defaults; None where that is not all (then inspect's bind decides, or raises)."""
        positions = [self._position.get(k, -1) for k in kwargs]
        if any(p < len(args) for p in positions):  # not a positional parameter (-1), or given twice
            return None
        last = max(positions)
        first_default = self._arity - len(self._defaults)
        out = list(args)
        for i in range(len(args), last + 1):
            name = self.func.__code__.co_varnames[i]
            if name in kwargs:
                out.append(kwargs[name])
            elif i >= first_default:
                out.append(self._defaults[i - first_default])
            else:
                return None  # a required parameter missing: bind's error, as Python's
        return tuple(out)

    def defaulted(self, args: tuple) -> tuple:
        """The values of the parameters ``args`` leaves out (their defaults)."""
        first_default = self._arity - len(self._defaults)
        return tuple(self._defaults[i - first_default] for i in range(max(len(args), first_default), self._arity))

    def signature(self, args: tuple) -> Signature:
        """The signature of positional ``args`` (created, and checked against the rules, when new)."""
        key = tuple(map(_key_of, args))
        sig = self.signatures.get(key)
        if sig is not None:
            return sig
        with self.lock:
            sig = self.signatures.get(key)
            if sig is None:
                sig = Signature(key)
                omitted = self.defaulted(args)
                why = self.refused or self._why_not(args + omitted) or _unsafe_omitted(omitted)
                if why is None:
                    try:
                        sig.omitted = omitted
                        sig.numba_types = tuple(numba.typeof(a) for a in args) + tuple(
                            numba.types.Omitted(d) for d in omitted)
                    except Exception as exc:
                        why = f"Numba cannot type an argument ({type(exc).__name__}: {_first_line(exc)})"
                if why is not None:
                    sig.finish(FAILED, None, why)
                    logger.debug("autooffload: %s does not run on Numba for these argument types: %s", _name(self.func), why)
                self.signatures[key] = sig
        return sig

    def _why_not(self, args: tuple) -> str | None:
        for a in args:
            if isinstance(a, np.ndarray):
                if type(a) is not np.ndarray:
                    return f"an array subclass ({type(a).__name__})"
                if a.dtype not in self.dtypes:
                    return f"an array of dtype {a.dtype.str} (Numba's tier takes native-order bool, ints, float32/64, complex64/128)"
        return semantic_difference(self.facts, args)

    # -- compiling -----------------------------------------------------------------------------
    def compile(self, sig: Signature) -> Signature:
        """Compile ``sig`` in this thread, or wait for the thread compiling it; it is then done."""
        if self._claim(sig):
            self._compile(sig)
        sig.done.wait()
        return sig

    def compile_in_background(self, sig: Signature) -> threading.Thread | None:
        """Start compiling ``sig`` in a daemon thread; None if it is already compiling or done."""
        if not self._claim(sig):
            return None
        thread = threading.Thread(target=self._compile, args=(sig,), name=f"autooffload-numba-{_name(self.func)}", daemon=True)
        thread.start()
        return thread

    def _claim(self, sig: Signature) -> bool:
        with self.lock:
            if sig.state != NEW:
                return False
            sig.state = COMPILING
            return True

    def _compile(self, sig: Signature) -> None:
        _in_flight.append(sig)
        try:
            self._compile_now(sig)
        finally:
            _in_flight.remove(sig)

    def _compile_now(self, sig: Signature) -> None:
        start = time.perf_counter()
        try:
            try:
                self._compile_with(self.dispatcher, sig)
            except (ImportError, AttributeError, EOFError) as exc:
                # Numba's disk cache of a file that was loaded under another module name (a test
                # runner's, a benchmark's) unpickles references to a module that does not exist
                # here: compile afresh, without the disk cache, rather than refuse the function.
                logger.debug("autooffload: %s: Numba's disk cache unusable (%s); compiling without it",
                             _name(self.func), _first_line(exc))
                self.dispatcher = _build_dispatcher(self.func, {}, [], cache=False, serial=self.serial)
                self._compile_with(self.dispatcher, sig)
            overload = self.dispatcher.overloads[sig.numba_types]
            return_type = overload.signature.return_type
            if _exactly_keyed(sig.key):
                sig.entry = overload.entry_point
            convert = _converter(return_type)
            sig.serial = self.serial or _parallel_loops(self.dispatcher, sig.numba_types) == 0
        except Exception as exc:  # TypingError, UnsupportedError, LoweringError, NotImplementedError...
            seconds = time.perf_counter() - start
            why = f"Numba cannot compile it ({type(exc).__name__}: {_first_line(exc)})"
            logger.debug("autooffload: %s for %s: %s", _name(self.func), sig.numba_types, why)
            sig.finish(FAILED, seconds, why)
            return
        sig.convert = convert
        sig.finish(COMPILED, time.perf_counter() - start)
        logger.debug("autooffload: %s compiled by Numba for %s in %.3g s", _name(self.func), sig.numba_types, sig.seconds)

    @staticmethod
    def _compile_with(dispatcher, sig: Signature) -> None:
        with _OUR_WARNINGS, warnings.catch_warnings():
            # "parallel=True but no transformation was possible" and similar: ours to decide, not the user's to read.
            warnings.simplefilter("ignore", numba.NumbaWarning)
            dispatcher.compile(sig.numba_types)

    def run(self, sig: Signature, args: tuple) -> Any:
        """Run the compiled version of ``sig`` (COMPILED) on positional ``args``, whose key was
        ``sig.key``: through its entry point where it has one and the key still holds, else
        through the dispatcher. Checked again here (~0.6 us on the 2-core VM): the call may
        have waited for a compilation or the launch lock meanwhile, and another thread may have
        reshaped an argument in place; an entry point reads an array as the type it was
        compiled for (a 6-d array through a 1-d entry point: a segmentation fault, review)."""
        entry = sig.entry
        if entry is not None and tuple(map(_key_of, args)) == sig.key:
            result = entry(*args, *sig.omitted)
        else:
            result = self.dispatcher(*args)
        return sig.convert(result) if sig.convert is not None else result


def _parallel_loops(dispatcher, numba_types: tuple) -> int | None:
    """How many parallel loops Numba made of the compiled function (None: it does not say)."""
    try:
        diagnostics = dispatcher.get_metadata(numba_types).get("parfor_diagnostics")
        return len(diagnostics.initial_parfors) if diagnostics is not None else None
    except Exception:  # metadata is Numba's internals: unknown rather than wrong
        return None


def _refused_signature(func: Callable) -> str | None:
    if not isinstance(func, types.FunctionType):
        return f"not a Python function ({type(func).__name__})"
    code = func.__code__
    if code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        return "it takes *args or **kwargs"
    if code.co_kwonlyargcount:
        return "it has keyword-only parameters"
    if code.co_flags & (inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR):
        return "a generator or coroutine"
    return None


def _njit(func: types.FunctionType, cache: bool = True, serial: bool = False) -> CPUDispatcher:
    options = SERIAL_JIT_OPTIONS if serial else JIT_OPTIONS
    if not cache:
        return numba.njit(**options)(func)
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError:  # "cannot cache function ...: no locator available" (no source file)
        return numba.njit(**options)(func)


def _build_dispatcher(func: types.FunctionType, memo: dict, codes: list, cache: bool = True,
                      serial: bool = False) -> CPUDispatcher:
    """``njit`` of a copy of ``func`` whose globals map plain Python helpers to their dispatchers.

    ``codes`` collects the code objects of ``func`` and every helper it can reach (for the rules)."""
    if func in memo:
        return memo[func]
    codes.append(func.__code__)
    # A snapshot of the globals: Numba freezes globals into the compiled code anyway.
    namespace = dict(func.__globals__)
    copy = types.FunctionType(func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__qualname__ = func.__qualname__ + (SERIAL_SUFFIX if serial else "")
    copy.__module__ = func.__module__
    dispatcher = memo[func] = _njit(copy, cache, serial)
    loads, _ = referenced_names(func.__code__)
    for name in loads:
        helper = namespace.get(name)
        if isinstance(helper, types.FunctionType) and not _refused_signature(helper):
            namespace[name] = _build_dispatcher(helper, memo, codes, cache, serial)
    return dispatcher


def _converter(return_type) -> Callable[[Any], Any] | None:
    """How to turn Numba's result into NumPy's: Numba returns Python scalars where NumPy returns
    NumPy scalars (``np.sum`` gives ``np.float64``), so scalars get their NumPy type back."""
    if isinstance(return_type, (numba.types.Number, numba.types.Boolean)):
        return as_dtype(return_type).type
    if isinstance(return_type, numba.types.BaseTuple):
        parts = [_converter(t) for t in return_type.types]
        if any(parts):
            return lambda result: tuple(p(r) if p is not None else r for p, r in zip(parts, result))
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


_compilers: "weakref.WeakKeyDictionary[Callable, FunctionCompiler]" = weakref.WeakKeyDictionary()
_serial_compilers: "weakref.WeakKeyDictionary[Callable, FunctionCompiler]" = weakref.WeakKeyDictionary()
_compilers_lock = threading.Lock()


def compiler_for(func: Callable, dtypes: frozenset, serial: bool = False) -> FunctionCompiler:
    """The one FunctionCompiler of ``func`` in this process (of its serial build: ``serial``)."""
    compilers = _serial_compilers if serial else _compilers
    compiler = compilers.get(func)
    if compiler is None:
        with _compilers_lock:
            compiler = compilers.get(func)
            if compiler is None:
                compiler = compilers[func] = FunctionCompiler(func, dtypes, serial)
    return compiler
