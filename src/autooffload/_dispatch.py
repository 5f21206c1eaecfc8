"""The decorated function: decide per call, run there, keep every write, fall back safely.

``@offload`` returns a plain function (so it binds as a method for free and costs one Python
call) carrying ``last_decision``, ``stats`` and its state in ``__autooffload__``. The hot path,
for calls whose arguments are numpy arrays and scalars, sums their bytes, looks the decision up
by exact (bytes, location, config) and calls the original function: a few hundred nanoseconds.
Where the optional C extension is built, its first line asks ``_native.FastPath`` (C) whether
the call is a plain NumPy call already decided, and if so calls the function at once (~140 ns).
Everything else (containers, kwargs, device arrays, GPU runs, fallbacks) takes the slow path.
"""

from __future__ import annotations

import bisect
import dataclasses
import dis
import functools
import inspect
import itertools
import sys
import threading
import types
import weakref
from typing import Any, Callable

import numpy as np

from . import _backends, _config, _log
from ._arguments import Ineligible, NumPyWouldRaise, iter_leaves, move
from ._backends import why_not_on_device
from ._costmodel import CUPY, KINDS, NUMPY, Decision, Request, choose, predict, size_bucket
from ._kinds import describe, infer_work
from ._purity import may_write_arguments, sets_array_flags
from ._reachable import Reachable
from .errors import ConfigError, GPUFallbackWarning, GPUUnavailableError, warn_at_user_line

try:  # the optional C check of the NumPy path (see _native.c); the Python wrapper works alone
    from . import _native
except ImportError:
    _native = None

# Argument types the hot path passes over without a second look.
_PASSIVE = frozenset(
    {int, float, complex, bool, str, bytes, type(None), types.ModuleType,
     np.float64, np.float32, np.int64, np.int32, np.bool_}
)
# What the Python hot path passes over: a module argument (np passed in) goes to the general
# path, which translates it for the device; so a device call from the hot path needs no translation.
_HOT_PASSIVE = _PASSIVE - {types.ModuleType}
_EXACT_CACHE_LIMIT = 4096
# The device array type, once a call has passed one (the hot path compares types against it).
_seen_device_type: list = [None]

# Cold-start bookkeeping, process-wide (ski rental): seconds the warm GPU would have saved on
# calls that stayed on NumPy only because the GPU was not started yet.
_forgone_lock = threading.Lock()
_forgone_s = 0.0


def _count(counter: itertools.count) -> int:
    """Current value of an itertools.count without advancing it (its repr is "count(N)")."""
    return int(repr(counter)[6:-1])


def _active_profile():
    from ._profiles import active_profile

    return active_profile()


class Stats:
    """Live counters of one offloaded function (thread-safe: each count is an atomic counter)."""

    def __init__(self, state: "_State"):
        self._state = state

    @property
    def numpy(self) -> int:
        """Calls that ran on NumPy (fallbacks included)."""
        fastpath = self._state.fastpath
        return _count(self._state.numpy_calls) + (fastpath.hits if fastpath is not None else 0)

    @property
    def cupy(self) -> int:
        """Calls that ran on the GPU."""
        return _count(self._state.cupy_calls)

    @property
    def fallbacks(self) -> int:
        """GPU runs that failed and were redone on NumPy."""
        return _count(self._state.fallbacks)

    @property
    def decisions(self) -> int:
        """Decision-cache misses (the cost model or a rule was consulted)."""
        return _count(self._state.decision_count)

    @property
    def calls(self) -> int:
        return self.numpy + self.cupy

    def as_dict(self) -> dict[str, int]:
        return {"numpy": self.numpy, "cupy": self.cupy, "fallbacks": self.fallbacks, "decisions": self.decisions}

    def __repr__(self) -> str:
        return "Stats(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ")"


def _xp_parameter(func: Callable) -> tuple[int | str | None, bool]:
    """(position of a parameter named ``xp`` or "kw" if keyword-only or None, whether its default is numpy)."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None, False
    for i, p in enumerate(params):
        if p.name == "xp":
            if p.kind is p.POSITIONAL_OR_KEYWORD:
                return i, p.default is np
            if p.kind is p.KEYWORD_ONLY:
                return "kw", p.default is np
    return None, False


def _body_runs_after_return(func: Callable) -> str | None:
    """What ``func`` is if calling it only creates a generator or coroutine, else None.

    Such a body runs after the wrapper returned, too late to copy writes and results back from
    the GPU. Seen through functools.partial, bound methods, callable objects and ``__wrapped__``
    (a functools.wraps wrapper of one returns what it returns). A plain function that returns a
    generator it got elsewhere cannot be told from its code, and is not caught.
    """
    seen: set[int] = set()
    while func is not None and id(func) not in seen:
        seen.add(id(func))
        for candidate in (func, getattr(type(func), "__call__", None)):
            if inspect.isasyncgenfunction(candidate):
                return "an async generator function"
            if inspect.iscoroutinefunction(candidate):
                return "an async function"
            if inspect.isgeneratorfunction(candidate):
                return "a generator function"
        func = getattr(func, "__wrapped__", None)
    return None


class _State:
    """Everything one offloaded function keeps between calls."""

    def __init__(self, func: Callable, kind: str | None, backend: str, pure: bool):
        self.func = func
        self.name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
        if kind is None:
            self.work, _ = infer_work(func)
            self.kind_text = describe(self.work)
        else:
            if kind not in KINDS:
                raise ConfigError(f"offload(kind=...) must be one of {', '.join(KINDS)}; got {kind!r}")
            self.work, self.kind_text = ((kind, 1),), kind
        self.backend_choice = _config.check_backend(backend, "offload(backend=...)")
        # Generators and coroutines always run on NumPy (see _body_runs_after_return).
        self.runs_after_return = _body_runs_after_return(func)
        if self.runs_after_return is not None and self.backend_choice == CUPY:
            raise ConfigError(
                f"offload(backend='cupy'): {self.name} is {self.runs_after_return}, whose body runs after "
                f"the call returns, too late to copy its writes and results back from the GPU; it can "
                f"only run on NumPy: use backend='auto' or 'numpy'"
            )
        # A function that sets array flags runs on NumPy, where the flag reaches the caller's array.
        self.sets_flags = sets_array_flags(func)
        self.pure = bool(pure)
        # Whether the code can write into its arguments at all (see _purity.py): if not, calls
        # with plain array and scalar arguments skip the write detection.
        self.may_write, _ = may_write_arguments(func)
        self.xp_param, self.xp_defaults_to_numpy = _xp_parameter(func)
        # Exact decision cache. Keys: host bytes (numpy arrays and scalars only, no config block),
        # (host bytes, config backend), or (host, device, odd, config backend) for the general case.
        # GPU readiness, the profile and the environment are not in the keys: when they change,
        # _config.invalidate_decisions() resets every function's caches.
        self.exact: dict[Any, Decision] = {}
        self.buckets: dict[tuple, Decision] = {}
        # The subset of `exact` the C check may answer alone: host bytes -> a NumPy decision with
        # nothing else to do (see _native.c). Cleared with `exact`, in place (the C side holds it).
        self.fast: dict[int, Decision] = {}
        self.fastpath = None  # the _native.FastPath of the wrapper, when the extension is built
        self.inject_xp = self.xp_param is not None and not self.xp_defaults_to_numpy
        self.log_path = self._log_path()
        _config.register_decision_cache(self)
        self.numpy_calls = itertools.count()
        self.cupy_calls = itertools.count()
        self.fallbacks = itertools.count()
        self.decision_count = itertools.count()
        self.blocked: dict[tuple, str] = {}  # type signature -> why the GPU failed for it
        self.warned = False
        self.device_fns: dict[int, tuple[Any, Callable | None, Any, str]] = {}
        self.resident: tuple[Any, Callable, Any] | None = None  # (backend, device fn, twin) once one ran
        self.lock = threading.Lock()
        self.wrapper: Callable | None = None

    # -- scanning ----------------------------------------------------------------------------
    def scan(self, args: tuple, kwargs: dict) -> tuple[int, int, int, bool]:
        """(host bytes, device bytes, largest array bytes, odd) over nested args and kwargs."""
        device_type = _backends.device_array_type()
        host = dev = largest = 0
        odd = False

        def is_array(x: Any) -> bool:
            return isinstance(x, np.ndarray) or (device_type is not None and type(x) is device_type)

        for a in iter_leaves((args, kwargs), is_array):
            n = a.nbytes
            largest = max(largest, n)
            if device_type is not None and type(a) is device_type:
                dev += n
                _seen_device_type[0] = device_type  # from now on the hot path knows it too
            else:
                host += n
                if why_not_on_device(a) is not None:
                    odd = True
        return host, dev, largest, odd

    @staticmethod
    def odd_argument(args: tuple, kwargs: dict) -> str:
        """The first host array that made ``scan`` call the arguments odd, described."""
        device_type = _backends.device_array_type()
        for a in iter_leaves((args, kwargs), lambda x: isinstance(x, np.ndarray) and type(x) is not device_type):
            why = why_not_on_device(a)
            if why is not None:
                return why
        return "an argument"

    @staticmethod
    def type_signature(args: tuple, kwargs: dict) -> tuple:
        device_type = _backends.device_array_type()
        return tuple(
            (a.dtype.str, a.ndim)
            for a in iter_leaves((args, kwargs), lambda x: isinstance(x, np.ndarray) or type(x) is device_type)
        )

    # -- deciding ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop cached decisions (environment, profile or GPU state changed)."""
        with self.lock:
            self.exact.clear()
            self.fast.clear()
            self.buckets.clear()
            self.log_path = self._log_path()

    @staticmethod
    def _log_path() -> str | None:
        try:
            return _config.environment().log_path
        except ConfigError:
            return None  # a bad AUTOOFFLOAD_* value is reported by the next call's decision

    def forced(self, config_backend: str | None) -> tuple[str | None, str]:
        """(forced backend or None, where it was forced)."""
        if config_backend is not None and config_backend != "auto":
            return config_backend, "config()"
        if config_backend == "auto":
            return None, ""
        if self.backend_choice != "auto":
            return self.backend_choice, "offload(backend=...)"
        env = _config.environment().backend
        if env != "auto":
            return env, "AUTOOFFLOAD_BACKEND"
        return None, ""

    def decide_from_args(self, key, host: int, dev: int, config_backend: str | None, args: tuple, kwargs: dict) -> Decision:
        """``decide`` for the hot path, which does not track the largest array."""
        device_type = _seen_device_type[0]
        largest = max(
            (a.nbytes for a in iter_leaves((args, kwargs), lambda x: type(x) is np.ndarray or type(x) is device_type)),
            default=0,
        )
        return self.decide(key, host, dev, largest, False, config_backend, args, kwargs)

    def decide(self, key, host: int, dev: int, largest: int, odd: bool, config_backend: str | None,
               args: tuple, kwargs: dict, *, amortize: bool = True) -> Decision:
        """The decision for a call (cache miss): from the size bucket's decision, or the cost model."""
        if dev and not _backends.gpu_ready:
            _backends.mark_gpu_ready()  # the caller's device arrays mean the CUDA context exists
        ready = _backends.gpu_ready
        forced, source = self.forced(config_backend)
        bucket_key = (size_bucket(host), size_bucket(dev), odd, forced, ready)
        base = self.buckets.get(bucket_key)
        first = base is None
        if first:
            base = self._decide_bucket(host, dev, largest, odd, forced, source, ready, bucket_key, args, kwargs)
            self.buckets[bucket_key] = base
        d = base if (base.host_bytes, base.device_bytes) == (host, dev) else dataclasses.replace(
            base, host_bytes=host, device_bytes=dev
        )
        if len(self.exact) >= _EXACT_CACHE_LIMIT:
            self.exact.clear()
            self.fast.clear()
        self.exact[key] = d
        if (type(key) is int and d.backend == NUMPY and not d.warm_savings_s and self.log_path is None
                and not self.inject_xp):
            self.fast[key] = d  # a plain NumPy call: the C check may answer it alone from now on
            _log.logger.isEnabledFor(_log.DEBUG)  # fills logging's level cache, which the C check reads
        next(self.decision_count)
        if first or _log.active():
            _log.record(d, first_in_bucket=first)
        if amortize and d.warm_savings_s:
            d = self.amortize(d)
        return d

    def _decide_bucket(self, host, dev, largest, odd, forced, source, ready, bucket_key, args, kwargs) -> Decision:
        device_type = _backends.device_array_type()
        typed = list(iter_leaves((args, kwargs), lambda x: isinstance(x, (np.ndarray, np.generic)) or type(x) is device_type))
        dtypes = tuple(sorted({str(a.dtype) for a in typed}))  # NumPy scalars' dtypes included
        arrays = [a for a in typed if not isinstance(a, np.generic)]

        def make(backend: str, reason: str, pred=None, savings: float = 0.0, profile: str = "") -> Decision:
            predicted = dict(pred.seconds) if pred is not None else {}
            cold = pred.parts[CUPY].get("cold_start", 0.0) if pred is not None else 0.0
            return Decision(self.name, backend, reason, self.kind_text, host, dev, dtypes, predicted,
                            profile, bucket_key[:2], savings, cold)

        if forced == NUMPY:
            return make(NUMPY, f"forced by {source}")
        if self.runs_after_return is not None:
            if dev:
                raise TypeError(
                    f"{self.name} is {self.runs_after_return}: it runs on NumPy, and its writes could not "
                    f"be copied back to device arrays after its body ran; pass NumPy arrays, not device arrays"
                )
            return make(NUMPY, f"{self.runs_after_return}: its body runs after the call returns, too late to "
                               f"copy writes and results back from the GPU"
                               + ("; forced cupy ignored" if forced == CUPY else ""))
        if self.sets_flags is not None and not dev:
            return make(NUMPY, f"{self.sets_flags}: CuPy arrays carry no flags, so the change could not reach "
                               f"the caller's array" + ("; forced cupy ignored" if forced == CUPY else ""))
        if forced == CUPY:
            if odd:
                return make(NUMPY, f"{self.odd_argument(args, kwargs)} cannot live on the GPU; forced cupy ignored")
            if _backends.load() is None:
                raise GPUUnavailableError(
                    f"{self.name}: backend 'cupy' was forced by {source}, but the GPU cannot be used: "
                    f"{_backends.unavailable_reason()}. Use backend='auto' (or 'numpy') to run on NumPy."
                )
            return make(CUPY, f"forced by {source}")
        if odd:
            return make(NUMPY, f"{self.odd_argument(args, kwargs)} cannot live on the GPU")
        if host == 0 and dev == 0:
            return make(NUMPY, "no array arguments to size the work by")
        profile = _active_profile()
        n_dev = sum(1 for a in arrays if type(a) is device_type)
        n_host = len(arrays) - n_dev
        pred = predict(profile, Request(self.work, host, dev, largest, ready, max(n_host, 1), max(n_dev, 1)))
        why = _backends.unavailable_reason()
        if why is not None:
            return make(NUMPY, f"no GPU: {why}", pred, 0.0, profile.source)
        backend, reason, savings = choose(pred, data_on_device=dev > 0)
        if (backend == CUPY or dev) and _backends.load() is None:
            return make(NUMPY, f"no GPU: {_backends.unavailable_reason()}", pred, 0.0, profile.source)
        return make(backend, reason, pred, savings, profile.source)

    def amortize(self, d: Decision) -> Decision:
        """Send this call to the GPU once the forgone warm-GPU savings have paid for its cold start."""
        global _forgone_s
        with _forgone_lock:
            _forgone_s += d.warm_savings_s
            paid = _forgone_s >= d.cold_start_s
            if paid:
                forgone, _forgone_s = _forgone_s, 0.0
        if not paid or _backends.load() is None:
            return d
        return dataclasses.replace(
            d, backend=CUPY, warm_savings_s=0.0,
            reason=f"cold start ({d.cold_start_s:.2g} s) paid off: calls so far would have saved {forgone:.2g} s on a warm GPU",
        )

    # -- running -----------------------------------------------------------------------------
    def skip_write_detection(self, args: tuple, kwargs: dict) -> bool:
        """Promised pure, or proven unable to write and given only plain arrays and scalars."""
        if self.pure:
            return True
        if self.may_write:
            return False
        device_type = _seen_device_type[0]
        for a in (*args, *kwargs.values()):
            t = type(a)
            if not (t is np.ndarray or t is device_type or t in _PASSIVE
                    or (t is tuple and all(type(x) in _PASSIVE for x in a))):
                return False
        return True

    def call(self, args: tuple, kwargs: dict) -> Any:
        """The general path: nested containers, kwargs, device arrays, anything unusual."""
        host, dev, largest, odd = self.scan(args, kwargs)
        config_backend = _config.current_backend()
        key = (host, dev, odd, config_backend)
        d = self.exact.get(key)
        if d is None:
            d = self.decide(key, host, dev, largest, odd, config_backend, args, kwargs)
        else:
            if d.warm_savings_s:
                d = self.amortize(d)
            if _log.active():
                _log.record(d, first_in_bucket=False)
        self.wrapper.last_decision = d
        if d.backend == NUMPY and not dev:
            return self.run_numpy(args, kwargs, False)
        return self.run(d, args, kwargs)

    def with_xp(self, args: tuple, kwargs: dict, module: Any) -> tuple[tuple, dict]:
        p = self.xp_param
        if p is None or "xp" in kwargs or (p != "kw" and len(args) > p):
            return args, kwargs
        return args, {**kwargs, "xp": module}

    def run_resident(self, d: Decision, args: tuple, kwargs: dict) -> Any:
        """The GPU chosen, every array already there, no module arguments (the hot path's case):
        no copies, no write detection, no argument translation; else ``run``."""
        backend = _backends.load()
        entry = self.resident
        if entry is None or entry[0] is not backend or self.blocked:
            return self.run(d, args, kwargs)
        ok, outcome = self._call_device(entry[1], entry[2], None, args, kwargs, backend, translate=False)
        if not ok:
            return self._fail_gpu(d, outcome, None, backend, args, kwargs, True)
        next(self.cupy_calls)
        return outcome

    def run(self, d: Decision, args: tuple, kwargs: dict) -> Any:
        if d.backend == NUMPY:
            return self.run_numpy(args, kwargs, d.device_bytes > 0)
        return self.run_gpu(d, args, kwargs)

    def run_numpy(self, args: tuple, kwargs: dict, has_device_args: bool) -> Any:
        next(self.numpy_calls)
        if not has_device_args:
            args, kwargs = self.with_xp(args, kwargs, np)
            return self.func(*args, **kwargs)
        moved = move(_backends.load(), args, kwargs, to_device=False, pure=self.skip_write_detection(args, kwargs))
        args, kwargs = self.with_xp(moved.args, moved.kwargs, np)
        try:
            result = self.func(*args, **kwargs)
        except BaseException:
            moved.write_back()  # NumPy keeps writes made before an exception; so do we
            moved.discard()
            del args, kwargs
            raise
        moved.write_back()
        return moved.result(result)

    def device_callable(self, backend) -> tuple[Callable | None, Any, str]:
        entry = self.device_fns.get(id(backend))
        if entry is None or entry[0] is not backend:
            from ._rebind import Translator

            translator = getattr(backend, "_autooffload_translator", None)
            if translator is None:
                translator = Translator(backend.module_pairs())
                backend._autooffload_translator = translator
            fn, twin, how = translator.device_callable(self.func)
            entry = (backend, fn, twin, how)
            self.device_fns[id(backend)] = entry
        return entry[1], entry[2], entry[3]

    def _ran_on_numpy(self, d: Decision, reason: str) -> None:
        self.wrapper.last_decision = dataclasses.replace(d, backend=NUMPY, reason=reason)

    def run_gpu(self, d: Decision, args: tuple, kwargs: dict) -> Any:
        backend = _backends.load()
        has_device_args = d.device_bytes > 0
        if self.blocked:
            cause = self.blocked.get(self.type_signature(args, kwargs))
            if cause is not None:
                self._ran_on_numpy(d, f"the GPU failed before for these argument types ({cause})")
                return self.run_numpy(args, kwargs, has_device_args)
        fn, twin, how = self.device_callable(backend)
        if fn is None:
            self._ran_on_numpy(d, f"no GPU version: {how}")
            return self.run_numpy(args, kwargs, has_device_args)
        self.resident = (backend, fn, twin)
        moved = None
        try:
            if d.host_bytes or not d.device_bytes:
                # Host data, or no arrays at all: either way the result belongs on the host.
                moved = move(backend, args, kwargs, to_device=True, pure=self.skip_write_detection(args, kwargs))
        except Ineligible as exc:
            self._ran_on_numpy(d, str(exc))
            return self.run_numpy(args, kwargs, has_device_args)
        except Exception as exc:
            cause = backend.fallback_cause(exc)
            if cause is None:
                raise
            failure = (exc, cause)
            reach = None
        else:
            # What the run may change beyond its arrays (to undo before a fallback, to sweep after).
            reach = Reachable(args, kwargs, twin, deep=self.may_write)
            try:
                ok, outcome = self._call_device(fn, twin, moved, args, kwargs, backend)
            except BaseException:
                self._sweep(reach, moved, d)  # the function's own exception: its stores stay, on the host
                if moved is not None:
                    moved.discard()  # the traceback keeps this frame: let the copies go
                raise
            if ok:
                return self._finish_gpu(d, moved, outcome, args, kwargs, reach)
            failure = outcome
        return self._fail_gpu(d, failure, moved, backend, args, kwargs, has_device_args, reach)

    @staticmethod
    def _sweep(reach: Reachable | None, moved, d: Decision) -> None:
        """Device arrays the run stored where the caller can reach them become the caller's side's
        (for calls whose data came from the host: then results come back to the host too)."""
        if reach is not None and moved is not None and not d.device_bytes:
            reach.sweep(moved.result)

    def _fail_gpu(self, d: Decision, failure: tuple, moved, backend, args: tuple, kwargs: dict,
                  has_device_args: bool, reach: Reachable | None = None) -> Any:
        """CuPy could not run it: undo and free what the attempt did and took, then the NumPy result."""
        exc, cause = failure
        if reach is not None:
            reach.restore()
            self._sweep(reach, moved, d)  # what lies beyond the restore's reach
        if moved is not None:
            moved.discard()
        if isinstance(exc, MemoryError):
            backend.free_memory()
        return self.fall_back(d, cause, args, kwargs, has_device_args)

    def _call_device(self, fn, twin, moved, args, kwargs, backend, translate: bool = True) -> tuple[bool, Any]:
        """Run ``fn`` on the device: (True, result), or (False, (exception, cause)) when CuPy cannot run it."""
        call_args, call_kwargs = (moved.args, moved.kwargs) if moved is not None else (args, kwargs)
        if translate:
            # Arguments that are NumPy modules or functions (np passed in, or a default like
            # `module=np`, which the hot path passes on explicitly) become their device counterparts.
            to_device = backend._autooffload_translator.translate
            call_args = tuple(to_device(a) if callable(a) or isinstance(a, types.ModuleType) else a for a in call_args)
            call_kwargs = {k: to_device(v) if callable(v) or isinstance(v, types.ModuleType) else v
                           for k, v in call_kwargs.items()}
        call_args, call_kwargs = self.with_xp(call_args, call_kwargs, backend.xp)  # the caller's own serve a fallback
        if twin is not None:
            twin.refresh()
        try:
            result = fn(*call_args, **call_kwargs)
        except BaseException as exc:  # KeyboardInterrupt and SystemExit too: NumPy keeps the writes
            cause = None if _raised_by_own_code(exc, twin, backend) else backend.fallback_cause(exc)
            if cause is None:
                if moved is not None:
                    moved.write_back()  # writes made before the user's exception are kept
                if twin is not None:
                    twin.write_back_globals()  # and so are its `global` assignments
                del call_args, call_kwargs  # the traceback keeps this frame: let the copies go
                raise
            return False, (exc, cause)
        if twin is not None:
            twin.write_back_globals()
        return True, result

    def _finish_gpu(self, d: Decision, moved, result: Any, args: tuple, kwargs: dict,
                    reach: Reachable | None = None) -> Any:
        _backends.mark_gpu_ready()
        if moved is not None:
            try:
                moved.write_back()
            except NumPyWouldRaise as exc:
                # NumPy would have raised on the write or the shape: rerun there for that error.
                if reach is not None:
                    reach.restore()
                self._ran_on_numpy(d, str(exc))
                return self.run_numpy(args, kwargs, d.device_bytes > 0)
            if not d.device_bytes:
                self._sweep(reach, moved, d)
                result = moved.result(result)
        next(self.cupy_calls)
        return result

    def fall_back(self, d: Decision, cause: str, args: tuple, kwargs: dict, has_device_args: bool) -> Any:
        result = self.run_numpy(args, kwargs, has_device_args)  # NumPy's own error propagates as is
        next(self.fallbacks)
        self.blocked[self.type_signature(args, kwargs)] = cause
        self._ran_on_numpy(d, f"GPU run failed ({cause}); fell back to NumPy")
        if not self.warned:
            self.warned = True
            warn_at_user_line(
                f"{self.name}: CuPy cannot run this code as written ({cause}); returned the NumPy "
                f"result, and calls with these argument types will run on NumPy from now on",
                GPUFallbackWarning,
            )
        return result


def _raised_by_own_code(exc: BaseException, twin, backend) -> bool:
    """Whether ``exc`` comes from a ``raise`` statement of the function's own code (its twin or a
    helper twin): then it is the function's answer, as on NumPy, not a sign that CuPy cannot run
    the code. A TypeError raised inside CuPy or by a C function given a device array is not; nor
    is one the code raised while handling such a failure."""
    tb = exc.__traceback__
    if twin is None or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    if not twin.runs_code_in(frame.f_globals):
        return False
    if not any(ins.offset == tb.tb_lasti and ins.opname == "RAISE_VARARGS" for ins in dis.get_instructions(frame.f_code)):
        return False
    handled = exc.__cause__ or exc.__context__
    return handled is None or backend.fallback_cause(handled) is None or _raised_by_own_code(handled, twin, backend)


def _hot_path_names(state: _State, attrs: dict) -> dict[str, Any]:
    """What the hot path reads, as locals of the closure that holds it."""
    return {
        "_ao_attrs": attrs,
        "_ao_func": state.func,
        "_ao_state": state,
        "_ao_exact": state.exact,
        "_ao_config_backend_get": _config.current_backend,
        "_ao_debug_on": _log.logger.isEnabledFor,
        # logging's own per-level cache (cleared in place whenever levels change): a dict lookup
        # instead of a method call; a missing entry falls back to isEnabledFor, which fills it.
        "_ao_level_cache_get": getattr(_log.logger, "_cache", {}).get,
        "_ao_record": _log.record,
        "_ao_ndarray": np.ndarray,
        "_ao_passive": _HOT_PASSIVE,
        "_ao_numpy_calls": state.numpy_calls,
        # On NumPy, an xp parameter whose default already is numpy needs nothing injected.
        "_ao_inject_xp": state.inject_xp,
        "_ao_numpy": NUMPY,
        "_ao_cupy": CUPY,
        "_ao_general": state.call,
        "_ao_seen_device_type": _seen_device_type,
    }


# The hot path, written once and specialised per function: ARGSCAN sums the bytes of the
# arguments (returning to the general path for anything unusual), CALLARGS/ARGS/KWARGS pass them on.
# Its body reaches nothing by the function's name, which a parameter may shadow.
_HOT_PATH = """
def _ao_make({closure}):
    def {name}({params}):
{fastcheck}        _ao_host = _ao_dev = 0
        _ao_device_type = _ao_seen_device_type[0]
{argscan}
        _ao_config_backend = _ao_config_backend_get()
        if _ao_dev:
            _ao_key = (_ao_host, _ao_dev, False, _ao_config_backend)  # the general path's key form
        else:
            _ao_key = _ao_host if _ao_config_backend is None else (_ao_host, _ao_config_backend)
        _ao_d = _ao_exact.get(_ao_key)
        if _ao_d is None:
            _ao_d = _ao_state.decide_from_args(_ao_key, _ao_host, _ao_dev, _ao_config_backend, {args}, {kwargs})
        else:
            if _ao_d.warm_savings_s:
                _ao_d = _ao_state.amortize(_ao_d)
            _ao_debug = _ao_level_cache_get(10)
            if _ao_debug is None:
                _ao_debug = _ao_debug_on(10)
            if _ao_debug or _ao_state.log_path is not None:
                _ao_record(_ao_d, first_in_bucket=False)
        _ao_attrs["last_decision"] = _ao_d  # the wrapper's __dict__: {name} may be a parameter's name
        if _ao_d.backend is _ao_numpy and not _ao_dev:
            if _ao_inject_xp:
                return _ao_state.run_numpy({args}, {kwargs}, False)
            next(_ao_numpy_calls)
            return _ao_func({callargs})
        if _ao_dev and not _ao_host and _ao_d.backend is _ao_cupy:
            return _ao_state.run_resident(_ao_d, {args}, {kwargs})
        return _ao_state.run(_ao_d, {args}, {kwargs})
    return {name}
"""

# First line of the hot path where the C check exists: a plain NumPy call needs nothing more.
_FAST_CHECK = """\
        if _ao_fast({callargs}):
            return _ao_func({callargs})
"""

_SCAN_ONE = """\
        _ao_t = type({arg})
        if _ao_t is _ao_ndarray:
            _ao_host += {arg}.nbytes
        elif _ao_t is _ao_device_type:
            _ao_dev += {arg}.nbytes
        elif _ao_t not in _ao_passive and not (_ao_t is tuple and all(type(_ao_x) in _ao_passive for _ao_x in {arg})):
            return _ao_general({args}, {kwargs})
"""

_SCAN_MANY = """\
        for _ao_a in (({args_tuple}) + tuple({kwargs}.values())) if {kwargs} else {args}:
            _ao_t = type(_ao_a)
            if _ao_t is _ao_ndarray:
                _ao_host += _ao_a.nbytes
            elif _ao_t is _ao_device_type:
                _ao_dev += _ao_a.nbytes
            elif _ao_t not in _ao_passive and not (_ao_t is tuple and all(type(_ao_x) in _ao_passive for _ao_x in _ao_a)):
                return _ao_general({args}, {kwargs})
"""


def _hot_path_source(func: Callable, closure: list[str]) -> tuple[str, dict[str, Any]] | None:
    """Source of a wrapper with ``func``'s own parameters (no *args packing), or None if it has
    none to copy (builtins, *args/**kwargs signatures: those get the generic wrapper)."""
    if not isinstance(func, types.FunctionType):
        return None
    try:
        parameters = list(inspect.signature(func, follow_wrapped=False).parameters.values())
    except (TypeError, ValueError):
        return None
    last_positional_only = max((i for i, p in enumerate(parameters) if p.kind is p.POSITIONAL_ONLY), default=None)
    params, positional, keyword, defaults = [], [], [], {}
    for i, p in enumerate(parameters):
        # *args/**kwargs, and an xp parameter (whether the caller gave it must stay visible), use
        # the generic wrapper.
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name.startswith("_ao_") or p.name == "xp":
            return None
        if p.kind is p.KEYWORD_ONLY and not keyword:
            params.append("*")
        text = p.name
        if p.default is not p.empty:
            defaults[f"_ao_default_{p.name}"] = p.default
            text += f"=_ao_default_{p.name}"
        params.append(text)
        if i == last_positional_only:
            params.append("/")
        (keyword if p.kind is p.KEYWORD_ONLY else positional).append(p.name)
    args = "(" + "".join(f"{n}, " for n in positional) + ")"
    callargs = ", ".join(positional + [f"{n}={n}" for n in keyword])
    kwargs = "{" + ", ".join(f"{n!r}: {n}" for n in keyword) + "}"
    source = _HOT_PATH.format(
        closure=", ".join(closure + list(defaults)),
        # A name of the closure's own (_ao_*) would shadow that closure variable in _ao_make.
        name=func.__name__ if func.__name__.isidentifier() and not func.__name__.startswith("_ao_") else "offloaded",
        params=", ".join(params),
        argscan="".join(_SCAN_ONE.format(arg=n, args=args, kwargs=kwargs) for n in positional + keyword),
        args=args,
        kwargs=kwargs,
        callargs=callargs,
        fastcheck=_FAST_CHECK.format(callargs=callargs) if "_ao_fast" in closure else "",
    )
    return source, defaults


def _generic_hot_path_source(closure: list[str]) -> str:
    """The hot path for any callable: takes *args and **kwargs."""
    return _HOT_PATH.format(
        closure=", ".join(closure), name="offloaded", params="*args, **kwargs",
        argscan=_SCAN_MANY.format(args_tuple="args", args="args", kwargs="kwargs"),
        args="args", kwargs="kwargs", callargs="*args, **kwargs",
        fastcheck=_FAST_CHECK.format(callargs="*args, **kwargs") if "_ao_fast" in closure else "",
    )


def _make_fastpath(state: _State, attrs: dict):
    """The C check for this function's NumPy path, or None (no extension, or it could not help)."""
    level_cache = getattr(_log.logger, "_cache", None)
    if _native is None or state.inject_xp or type(level_cache) is not dict:
        return None  # without logging's level cache the C side cannot tell whether DEBUG is on
    return _native.FastPath(state.fast, np.ndarray, tuple(_PASSIVE), level_cache, attrs, _config.backend_in_context)


def _make_offloaded(func: Callable, state: _State) -> Callable:
    attrs: dict[str, Any] = {}  # becomes the wrapper's __dict__; the hot path and the C check store last_decision there
    names = _hot_path_names(state, attrs)
    state.fastpath = _make_fastpath(state, attrs)
    if state.fastpath is not None:
        names["_ao_fast"] = state.fastpath
    specialised = _hot_path_source(func, list(names))
    source, defaults = specialised if specialised is not None else (_generic_hot_path_source(list(names)), {})
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<autooffload hot path of {state.name}>", "exec"), namespace)
    offloaded = namespace["_ao_make"](**names, **defaults)
    offloaded.__dict__ = attrs
    functools.update_wrapper(offloaded, func)
    offloaded.__autooffload__ = state
    offloaded.last_decision = None
    offloaded.stats = Stats(state)
    state.wrapper = offloaded
    return offloaded


def offload(func: Callable | None = None, *, kind: str | None = None, backend: str = "auto", pure: bool = False):
    """Run ``func`` on NumPy or CuPy, whichever the cost model predicts is faster for each call.

    ``kind``: the kind of work ("elementwise", "transcendental", "reduction", "sort", "fft",
    "matmul", "solve", "random", "generic"); by default it is read from the function's code.
    ``backend``: "auto" (default), or "numpy" / "cupy" to force one. ``pure=True`` promises the
    function writes into none of its arguments, which skips the write detection.

    Generator functions, ``async def`` functions and async generators always run on NumPy: their
    body runs after the call returned, when writes and results can no longer be copied back from
    the GPU. ``backend="cupy"`` on one is refused at once with a ConfigError (the request names
    this function and can never be met, so it is reported where it was made); a ``config()``
    block or AUTOOFFLOAD_BACKEND forcing "cupy" covers many functions, so there they run on NumPy
    and ``last_decision.reason`` says why.

    Pickling (multiprocessing): a function pickles by reference, its ``__module__`` and
    ``__qualname__``. When the result is stored under a name at a module's top level or in a
    class body (``score = offload(impl)``, ``fft = offload(np.fft.fft)``, ``@offload def f``),
    the wrapper takes that module and name, so it pickles to itself; ``__name__`` stays the
    function's own. A wrapper built elsewhere (inside a function) fails as pickle fails for it.
    """
    if func is None:
        def decorate(f: Callable) -> Callable:
            return _offload(f, kind, backend, pure, sys._getframe(1))

        return decorate
    return _offload(func, kind, backend, pure, sys._getframe(1))


def _offload(func: Callable, kind: str | None, backend: str, pure: bool, caller: types.FrameType) -> Callable:
    if isinstance(func, (staticmethod, classmethod)):
        raise TypeError(
            f"offload expects a function; got a {type(func).__name__}: put @{type(func).__name__} above @offload"
        )
    if not callable(func):
        raise TypeError(f"offload expects a callable (a function, method or NumPy function); got {func!r}")
    existing = getattr(func, "__autooffload__", None)
    if existing is not None:
        func = existing.func  # re-decorating replaces the options instead of stacking wrappers
    offloaded = _make_offloaded(func, _State(func, kind, backend, pure))
    binding = _bound_name(caller)
    if binding is not None:
        offloaded.__module__, offloaded.__qualname__ = binding
    return offloaded


# code object -> (offsets of its instructions, the name each stores into or None), built once per
# module or class body however many functions it offloads.
_stores_by_code: "weakref.WeakKeyDictionary[types.CodeType, tuple[list[int], list]]" = weakref.WeakKeyDictionary()


def _bound_name(frame: types.FrameType) -> tuple[str, str] | None:
    """(module, qualname) of the name the statement running in ``frame`` stores its call's result
    into, where pickle can find it again: ``name = offload(...)`` (or ``@offload``) at a module's
    top level or in a class body, or ``global name`` then ``name = ...``; else None."""
    code = frame.f_code
    table = _stores_by_code.get(code)
    if table is None:
        offsets, stores = [], []
        for ins in dis.get_instructions(code):  # inline caches are not listed
            if ins.opname != "EXTENDED_ARG":  # the prefix of a large argument, not an instruction
                offsets.append(ins.offset)
                stores.append((ins.opname, ins.argval) if ins.opname in ("STORE_NAME", "STORE_GLOBAL") else None)
        table = _stores_by_code[code] = (offsets, stores)
    offsets, stores = table
    # f_lasti is the call's offset, or (3.11) that of its last inline cache: the next listed
    # instruction is what the call's result goes to.
    i = bisect.bisect_right(offsets, frame.f_lasti)
    store = stores[i] if i < len(stores) else None
    if store is None:
        return None
    opname, name = store
    module_globals = frame.f_globals
    if opname == "STORE_GLOBAL" or frame.f_locals is module_globals:
        module = module_globals.get("__name__")
        return (module, name) if isinstance(module, str) else None
    if code.co_flags & inspect.CO_OPTIMIZED:
        return None  # a function's local: pickle cannot reach it
    namespace = frame.f_locals  # a class body: it records its own module and qualified name
    module, owner = namespace.get("__module__"), namespace.get("__qualname__")
    if not (isinstance(module, str) and isinstance(owner, str)):
        return None
    return module, f"{owner}.{name}"


def explain(func: Callable, *args, **kwargs) -> Decision:
    """The Decision ``func(*args, **kwargs)`` would get now, without running it."""
    if isinstance(func, types.MethodType):
        args = (func.__self__, *args)
        func = func.__func__
    state = getattr(func, "__autooffload__", None)
    if state is None:
        raise TypeError(f"explain() takes a function decorated with @offload; got {func!r}")
    host, dev, largest, odd = state.scan(args, kwargs)
    config_backend = _config.current_backend()
    key = (host, dev, odd, config_backend)
    d = state.exact.get(key) or state.decide(key, host, dev, largest, odd, config_backend, args, kwargs, amortize=False)
    if d.backend == CUPY:
        backend = _backends.load()
        if state.blocked and state.type_signature(args, kwargs) in state.blocked:
            return dataclasses.replace(d, backend=NUMPY, reason="the GPU failed before for these argument types")
        if backend is not None and state.device_callable(backend)[0] is None:
            return dataclasses.replace(d, backend=NUMPY, reason=f"no GPU version: {state.device_callable(backend)[2]}")
    return d
