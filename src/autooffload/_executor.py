"""The executor: runs one call as a ``Decision`` says, and reports what actually happened.

Given the decision, it moves the arguments where the chosen backend's memory is (or calls the
backend's runner directly when all the data already lives there: the device-resident lane),
runs, puts every write and the result back on the caller's side, and falls back to NumPy when
the backend cannot run the code as written. Each run ends in an ``Outcome`` (the backend that
produced the result, the fallback's cause, the seconds it took) handed to the record keeper, as
cudf.pandas's ``_fast_slow_function_call`` returns ``(result, fast)``.

Order of a device run on host data: the failure cache (argument types that failed before run on
NumPy at once), the runner (a device twin, or why there is none), the move (copies and write
snapshots; ineligible arguments run on NumPy), a snapshot of the state the run can reach
(_reachable.py), the call, then write-back, the sweep of reachable state, and the result's
conversion. On a failure CuPy signals, the reachable state is restored and the copies dropped
before NumPy reruns the function.
"""

from __future__ import annotations

import dataclasses
import dis
import time
import types
from typing import Any, Callable

import numpy as np

from . import _config, _stream, backends
from ._address import array_address
from ._arguments import Ineligible, Moved, NumPyWouldRaise, move
from ._blockwise import Verdict
from ._costmodel import Decision, stream_chunk_bytes
from ._reachable import Reachable
from ._records import Records, type_signature
from .backends import CUPY, HOST, NATIVE_DEVICE_DTYPES, NUMPY
from .backends.base import call_context
from .backends import cupy as device
from .errors import GPUFallbackWarning, warn_at_user_line

# Argument types the hot path passes over without a second look.
PASSIVE = frozenset(
    {int, float, complex, bool, str, bytes, type(None), types.ModuleType,
     np.float64, np.float32, np.int64, np.int32, np.bool_}
)


class Executor:
    """Runs one function's calls (see the module docstring)."""

    def __init__(self, func: Callable, name: str, records: Records, report: Callable[[Decision], None], *,
                 pure: bool, may_write: bool, xp_param: int | str | None, xp_defaults_to_numpy: bool = False,
                 blockwise: Verdict | None = None, note: Callable[[Decision], None] | None = None):
        self.func = func
        self.blockwise = blockwise  # streamed runs of host data (_stream.py) when blockwise
        self.note = note  # corrects last_decision without counting a rerun (a run was streamed)
        self.name = name
        self.records = records
        self.report = report  # tells the wrapper's last_decision what really ran
        self.pure = pure
        self.may_write = may_write
        self.xp_param = xp_param
        self.xp_defaults_to_numpy = xp_defaults_to_numpy  # then host runs need no xp=np passed
        self.runners: dict[int, tuple[Any, Callable | None, Any, str]] = {}  # id(backend) -> runner
        self.tier_runner: tuple[Any, Any, Callable] | None = None  # (module, backend, runner) for run_tier
        self.resident: tuple[Any, Callable, Any] | None = None  # (backend, device fn, twin) once one ran
        # Decides a call again for the device current now (set by the function's _State): a GPU
        # decision taken from the exact cache may have been made while another device was current.
        self.replan: Callable[[tuple, dict], Decision] | None = None
        self.warned = False

    # -- what every run needs -----------------------------------------------------------------
    def skip_write_detection(self, args: tuple, kwargs: dict) -> bool:
        """Promised pure, or proven unable to write and given only plain arrays and scalars."""
        if self.pure:
            return True
        if self.may_write:
            return False
        device_type = device.seen_array_type[0]
        for a in (*args, *kwargs.values()):
            t = type(a)
            if not (t is np.ndarray or t is device_type or _passive(a)):
                return False
        return True

    def plain_call(self, args: tuple, kwargs: dict, twin: Any) -> bool:
        """Whether a device run of this host-data call may take the light path (``Moved.move_plain``,
        no ``Reachable``): code proven unable to store anything anywhere (``pure=True`` is not
        enough: it promises no writes into the arguments, while a global list may still be
        appended to, which ``Reachable`` sweeps and restores); its arrays positional, NumPy's own
        type, contiguous, native, of a device dtype, not empty and in memory of their own (no
        overlap to copy as one span); every other argument a scalar, a module or a tuple of
        scalars; and code that rebinds no global or closure variable."""
        if self.may_write:
            return False
        arrays = []
        for a in args:
            t = type(a)
            if t is np.ndarray:
                flags = a.flags
                if (not (flags.c_contiguous or flags.f_contiguous) or a.dtype not in NATIVE_DEVICE_DTYPES
                        or not a.nbytes):
                    return False
                arrays.append(a)
            elif t not in PASSIVE and not _passive(a):  # (a scalar settles it without the call)
                return False
        if kwargs and any(type(v) not in PASSIVE for v in kwargs.values()):
            return False
        if len(arrays) > 1:
            spans = sorted((array_address(a), a.nbytes) for a in arrays)
            if any(low + n > next_low for (low, n), (next_low, _) in zip(spans, spans[1:])):
                return False
        return twin is None or not twin.leaves_state()

    def with_xp(self, args: tuple, kwargs: dict, module: Any) -> tuple[tuple, dict]:
        p = self.xp_param
        if p is None or "xp" in kwargs or (p != "kw" and len(args) > p) or (module is np and self.xp_defaults_to_numpy):
            return args, kwargs
        return args, {**kwargs, "xp": module}

    def runner(self, backend) -> tuple[Callable | None, Any, str]:
        entry = self.runners.get(id(backend))
        if entry is None or entry[0] is not backend:
            entry = (backend, *backend.runner(self.func))
            self.runners[id(backend)] = entry
        return entry[1], entry[2], entry[3]

    def _ran_on_numpy(self, d: Decision, reason: str) -> None:
        self.report(dataclasses.replace(d, backend=NUMPY, reason=reason))

    # -- running -------------------------------------------------------------------------------
    def run(self, d: Decision, args: tuple, kwargs: dict) -> Any:
        """Run the call where ``d`` says; the result on the caller's side."""
        if d.backend == NUMPY:
            return self.run_numpy(args, kwargs, d.device_bytes > 0)
        backend = backends.get(d.backend)
        if backend is not None and backend.memory == HOST:
            return self.run_host(backend, d, args, kwargs)
        return self.run_device(d, args, kwargs, backend)

    def run_host(self, backend, d: Decision, args: tuple, kwargs: dict) -> Any:
        """On another host backend (the Numba tier): its runner on the caller's own arrays, so
        writes land in place as in NumPy. What it cannot run (argument types it could not compile,
        or whose results would differ from NumPy's) runs on NumPy, remembered, without a warning:
        that is expected of a compiler, not a failure of the code."""
        if d.device_bytes:
            return self.run_numpy(args, kwargs, True)  # the planner keeps device data off host tiers
        fn, _, how = self.runner(backend)
        if fn is None:
            self._ran_on_numpy(d, f"no {backend.name} version: {how}")
            return self.run_numpy(args, kwargs, False)
        if self.xp_param is None or self.xp_defaults_to_numpy:  # no xp to pass: run_tier may call it directly
            self.tier_runner = (backends.module(d.backend), backend, fn)
        call_args, call_kwargs = self.with_xp(args, kwargs, np)
        threads = _config.current_threads()
        call_context.decision = d
        try:
            if threads is None:
                result = fn(*call_args, **call_kwargs)  # no limit: no context manager (~1 us)
            else:
                with backend.thread_limit(threads):
                    result = fn(*call_args, **call_kwargs)
        except Exception as exc:
            cause = backend.fallback_cause(exc)
            if cause is None:
                raise  # the function's own error, as NumPy would raise it
            return self._host_fell_back(backend, d, args, kwargs, cause)
        finally:
            call_context.decision = None
        self.records.count_run(d.backend)
        return result

    def run_tier(self, d: Decision, args: tuple, kwargs: dict) -> Any:
        """The hot path's call on a host tier, host data only: the runner ``run_host`` resolved
        last, called straight away where it still is this backend's (the same backend object,
        no xp to pass, no thread limit in this context), else ``run``. On the 2-core VM the
        Numba tier's percentiles at 1e2 (4.0 us through the runner) took +1.6 us through
        ``run``, ~40% of the call: the tier's smallest calls are its best ones."""
        entry = self.tier_runner
        if entry is None or entry[1].name != d.backend or entry[0].load() is not entry[1] or _config.current_threads() is not None:
            return self.run(d, args, kwargs)
        call_context.decision = d
        try:
            result = entry[2](*args, **kwargs)
        except Exception as exc:
            cause = entry[1].fallback_cause(exc)
            if cause is None:
                raise  # the function's own error, as NumPy would raise it
            return self._host_fell_back(entry[1], d, args, kwargs, cause)
        finally:
            call_context.decision = None
        self.records.count_run(d.backend)
        return result

    def _host_fell_back(self, backend, d: Decision, args: tuple, kwargs: dict, cause: str) -> Any:
        """A host tier cannot run these argument types (``cause``): remembered, and the call
        runs on NumPy."""
        self.records.fell_back(type_signature(args, kwargs), d.backend, cause)
        self._ran_on_numpy(d, f"{backend.name} cannot run these argument types ({cause}); ran on NumPy")
        return self.run_numpy(args, kwargs, False)

    def run_numpy(self, args: tuple, kwargs: dict, has_device_args: bool) -> Any:
        """On NumPy: the function itself, after copying device arguments to the host if any."""
        next(self.records.calls[NUMPY])
        if not has_device_args:
            args, kwargs = self.with_xp(args, kwargs, np)
            return self.func(*args, **kwargs)
        moved = move(device.load(), args, kwargs, to_device=False, pure=self.skip_write_detection(args, kwargs),
                     meter=self.records.timesheet.meter(NUMPY))  # the copies, for autooffload.report()
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

    def run_resident(self, d: Decision, args: tuple, kwargs: dict) -> Any:
        """The device chosen and every array already in its memory, no module arguments (the hot
        path's case): the runner is called directly, with no copies, write detection or argument
        translation; else ``run``."""
        backend = device.load()
        entry = self.resident
        if entry is None or entry[0] is not backend or self.records.failures or self.elsewhere(d, backend):
            return self.run(d, args, kwargs)
        ok, outcome = self._call_device(entry[1], entry[2], None, args, kwargs, backend, translate=False)
        if not ok:
            return self._fail_device(d, outcome, None, backend, args, kwargs, True)
        self.records.count_run(CUPY)
        return outcome

    def elsewhere(self, d: Decision, backend) -> bool:
        """Whether ``d`` was decided for another device than the one current in this thread."""
        return d.device_index is not None and backend.current_device()[0] != d.device_index  # ~0.1 us

    def run_device(self, d: Decision, args: tuple, kwargs: dict, backend: Any = None) -> Any:
        """``run`` for a device backend (``backend``: ``backends.get(d.backend)``, when the caller
        has it already)."""
        if backend is None:
            backend = backends.get(d.backend)
        if self.replan is not None and self.elsewhere(d, backend):
            # Decided while another device was current (the exact cache does not key on the
            # device, to keep it off NumPy's hot path): decide for this one, from its own state.
            d = self.replan(args, kwargs)
            if d.backend != backend.name:
                return self.run(d, args, kwargs)
        has_device_args = d.device_bytes > 0
        if self.records.failures:
            cause = self.records.failure(type_signature(args, kwargs), d.backend)
            if cause is not None:
                self._ran_on_numpy(d, f"the GPU failed before for these argument types ({cause})")
                return self.run_numpy(args, kwargs, has_device_args)
        fn, twin, how = self.runner(backend)
        if fn is None:
            self._ran_on_numpy(d, f"no GPU version: {how}")
            return self.run_numpy(args, kwargs, has_device_args)
        self.resident = (backend, fn, twin)
        start = time.perf_counter()
        if (not has_device_args and d.host_bytes and self.blockwise is not None and self.blockwise.blockwise
                and (d.streamed or d.host_bytes >= _FITS_WITHOUT_ASKING or d.host_bytes >= _STREAM_PINNED_MIN_BYTES
                     or _stream.always())):
            # Else stream_plan could only say no: a call the cost model did not stream streams for
            # a look at free memory, from _FITS_WITHOUT_ASKING, or for pinned data, from
            # _STREAM_PINNED_MIN_BYTES (skipping it saves ~1 us of a small call on the CPU VM).
            streamed = self.run_streamed(d, backend, fn, twin, args, kwargs, start)
            if streamed is not _NOT_STREAMED:
                return streamed
        moved = None
        try:
            plain = not has_device_args and self.plain_call(args, kwargs, twin)
            if plain:
                moved = Moved(backend, True, True, self.records.timesheet.meter(d.backend)).move_plain(args)
                moved.kwargs = kwargs
            elif d.host_bytes or not d.device_bytes:
                # Host data, or no arrays at all: either way the result belongs on the host.
                moved = move(backend, args, kwargs, to_device=True, pure=self.skip_write_detection(args, kwargs),
                             meter=self.records.timesheet.meter(d.backend))  # the copies, for autooffload.report()
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
            # What the run may change beyond its arrays (to undo before a fallback, to sweep after):
            # nothing, for a plain call.
            reach = None if plain else Reachable(args, kwargs, twin, deep=self.may_write)
            try:
                # A plain call's arguments are arrays, scalars, tuples of scalars and modules:
                # only a module (or a keyword argument, unseen by move_plain) needs translating.
                ok, outcome = self._call_device(fn, twin, moved, args, kwargs, backend,
                                                translate=not plain or moved.modules or bool(kwargs))
            except BaseException:
                self._sweep(reach, moved, d)  # the function's own exception: its stores stay, on the host
                if moved is not None:
                    moved.discard()  # the traceback keeps this frame: let the copies go
                raise
            if ok:
                return self._finish_device(d, moved, outcome, args, kwargs, reach, start)
            failure = outcome
        return self._fail_device(d, failure, moved, backend, args, kwargs, has_device_args, reach)

    def stream_plan(self, d: Decision, backend, args: tuple, kwargs: dict) -> "_stream.Plan | str":
        """How this call streams, or why not: the cost model chose the pipeline, or
        AUTOOFFLOAD_STREAM=always, or the call's large arrays are pinned (``_pinned_enough``),
        or the call's data does not fit the device's free memory."""
        assert self.blockwise is not None
        mode = _stream.mode()
        if mode == "never":
            return "AUTOOFFLOAD_STREAM=never"
        chosen = d.streamed or mode == "always" or _pinned_enough(d, backend, args, kwargs)
        free_bytes = getattr(backend, "free_bytes", None)
        free = None
        if (chosen or d.host_bytes >= _FITS_WITHOUT_ASKING) and callable(free_bytes):
            free = free_bytes()
        # Unstreamed, the inputs, the result and about one temporary live on the device at once.
        if not chosen and (free is None or 3 * d.host_bytes < free):
            return "the cost model predicts the unstreamed run faster"
        chunk = _stream.chunk_override() or d.chunk_bytes or stream_chunk_bytes(d.host_bytes, free)
        if free is not None:
            chunk = min(chunk, stream_chunk_bytes(d.host_bytes, free))
        return _stream.plan(self.blockwise, self.func, args, kwargs, chunk, may_write=self.may_write and not self.pure)

    def run_streamed(self, d: Decision, backend, fn, twin, args: tuple, kwargs: dict, start: float) -> Any:
        """A blockwise call on host data through the device in chunks (_stream.py), or
        ``_NOT_STREAMED`` when this call cannot stream (then it runs unstreamed)."""
        plan = self.stream_plan(d, backend, args, kwargs)
        if isinstance(plan, str):
            return _NOT_STREAMED
        translate = backends.translator_for(backend).translate

        def on_device(call_args: tuple, call_kwargs: dict) -> Any:
            call_args = tuple(translate(a) if callable(a) or isinstance(a, types.ModuleType) else a for a in call_args)
            call_kwargs = {k: translate(v) if callable(v) or isinstance(v, types.ModuleType) else v
                           for k, v in call_kwargs.items()}
            call_args, call_kwargs = self.with_xp(call_args, call_kwargs, backend.xp)
            return fn(*call_args, **call_kwargs)

        def on_host(call_args: tuple, call_kwargs: dict) -> Any:
            call_args, call_kwargs = self.with_xp(call_args, call_kwargs, np)
            return self.func(*call_args, **call_kwargs)

        reach = Reachable(args, kwargs, twin, deep=self.may_write)
        if twin is not None:
            twin.refresh()
        try:
            result = _stream.run(plan, backend, on_device, args, kwargs, on_host,
                                 meter=self.records.timesheet.meter(d.backend))
        except _stream.BlockwiseBroken:
            if self.blockwise is not None and self.blockwise.source == "proven":
                reach.restore()
                return _NOT_STREAMED  # the proof was wrong about this call: run it whole
            raise
        except _stream.DeviceFailure as failure:
            exc = failure.exc
            cause = None if raised_by_own_code(exc, twin, backend) else backend.fallback_cause(exc)
            if cause is None:
                if twin is not None:
                    twin.write_back_globals()
                raise exc from None
            return self._fail_device(d, (exc, cause), None, backend, args, kwargs, False, reach)
        if twin is not None:
            twin.write_back_globals()
        device.mark_gpu_ready()
        if self.note is not None:
            self.note(dataclasses.replace(d, streamed=True, chunk_bytes=plan.chunk * _bytes_per_index(plan, args, kwargs),
                                          reason=d.reason + f"; streamed in {plan.chunks} chunks"))
        self.records.ran(d.backend, time.perf_counter() - start, d.bucket)
        return result

    @staticmethod
    def _sweep(reach: Reachable | None, moved, d: Decision) -> None:
        """Device arrays the run stored where the caller can reach them become the caller's side's
        (for calls whose data came from the host: then results come back to the host too)."""
        if reach is not None and moved is not None and not d.device_bytes:
            reach.sweep(moved.result)

    def _fail_device(self, d: Decision, failure: tuple, moved, backend, args: tuple, kwargs: dict,
                     has_device_args: bool, reach: Reachable | None = None) -> Any:
        """The backend could not run it: undo and free what the attempt did and took, then NumPy's result."""
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
            to_device = backends.translator_for(backend).translate
            call_args = tuple(to_device(a) if callable(a) or isinstance(a, types.ModuleType) else a for a in call_args)
            call_kwargs = {k: to_device(v) if callable(v) or isinstance(v, types.ModuleType) else v
                           for k, v in call_kwargs.items()}
        call_args, call_kwargs = self.with_xp(call_args, call_kwargs, backend.xp)  # the caller's own serve a fallback
        if twin is not None:
            twin.refresh()
        try:
            result = fn(*call_args, **call_kwargs)
        except BaseException as exc:  # KeyboardInterrupt and SystemExit too: NumPy keeps the writes
            cause = None if raised_by_own_code(exc, twin, backend) else backend.fallback_cause(exc)
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

    def _finish_device(self, d: Decision, moved, result: Any, args: tuple, kwargs: dict,
                       reach: Reachable | None, start: float) -> Any:
        if d.device_index is None or not device.gpu_ready or d.device_index not in device.ready_devices:
            # d.device_index is the current device (run_device decided again otherwise): marked
            # once per device, without asking the driver on every run.
            device.mark_gpu_ready()
        if moved is not None:
            if not moved.pure:  # (a pure call writes nothing back: skipped, as each layer costs on the GPU machine)
                try:
                    moved.write_back()
                except NumPyWouldRaise as exc:
                    # NumPy would have raised on the write or the shape: rerun there for that error.
                    if reach is not None:
                        reach.restore()
                    self._ran_on_numpy(d, str(exc))
                    return self.run_numpy(args, kwargs, d.device_bytes > 0)
            if not d.device_bytes:
                if reach is not None:
                    self._sweep(reach, moved, d)
                result = moved.result(result)  # the copy out synchronizes: the time below is real
                if not moved.device_idle:
                    moved.backend.synchronize()  # nothing came back to wait on: wait for the run itself
        self.records.ran(d.backend, time.perf_counter() - start if moved is not None else None, d.bucket)
        return result

    def fall_back(self, d: Decision, cause: str, args: tuple, kwargs: dict, has_device_args: bool) -> Any:
        result = self.run_numpy(args, kwargs, has_device_args)  # NumPy's own error propagates as is
        self.records.fell_back(type_signature(args, kwargs), d.backend, cause)
        self._ran_on_numpy(d, f"GPU run failed ({cause}); fell back to NumPy")
        if not self.warned:
            self.warned = True
            warn_at_user_line(
                f"{self.name}: CuPy cannot run this code as written ({cause}); returned the NumPy "
                f"result, and calls with these argument types will run on NumPy from now on",
                GPUFallbackWarning,
            )
        return result


def _passive(value: Any) -> bool:
    """A scalar, a module, or a tuple of scalars: an argument that holds no array and no state."""
    t = type(value)
    return t in PASSIVE or (t is tuple and all(type(x) in PASSIVE for x in value))


_NOT_STREAMED = object()
# A blockwise call on at least this much host data whose large arrays are all pinned (their
# copies are DMAs: _pincache.py) streams. From pinned memory the pipeline's copies in and out run
# at once at the link's rate: on the H200, forced streamed against the whole-array path at 1e8
# float64, x *= 5 23.3 against 32.6 ms, the chain 22.5 against 32.5, Black-Scholes 59.7 against
# 89.1; at 1e9 174 against 307 and 190 against 317 (h200-session7/streaming.txt); staged, streaming
# gained nothing or lost (0.63-1.07x, h200-unpinned/streaming.txt). Smaller calls are left to
# the cost model: the pipeline costs ~5 ms more than its copies at 1e8 whatever the chunk size
# (23-24 ms against 15 ms for the slower copy), so it would not pay much below ~0.5 GiB.
_STREAM_PINNED_MIN_BYTES = 512 * 1024 * 1024


def _pinned_enough(d: Decision, backend, args: tuple, kwargs: dict) -> bool:
    """Whether a call of ``d.host_bytes`` host data should stream because the arrays that carry
    most of it (each at least 1/16 of it) are pinned now; False where the backend cannot say."""
    if d.host_bytes < _STREAM_PINNED_MIN_BYTES:
        return False
    pinned = getattr(backend, "pinned", None)
    if pinned is None:
        return False
    large = [a for a in (*args, *kwargs.values()) if type(a) is np.ndarray and a.nbytes * 16 >= d.host_bytes]
    return bool(large) and all(pinned(a) for a in large)
# Below this much host data a call is taken to fit the device without asking its free memory
# (cudaMemGetInfo and the pool's count on every blockwise GPU call): a device with less than
# ~3x this free is full, and a call that does not fit falls back to NumPy as any other would.
_FITS_WITHOUT_ASKING = 64 * 1024 * 1024


def _bytes_per_index(plan: "_stream.Plan", args: tuple, kwargs: dict) -> int:
    total = 0
    for o in plan.operands:
        if o.split:
            a = args[o.key] if isinstance(o.key, int) else kwargs[o.key]
            total += a.nbytes // max(a.shape[o.axis], 1)
    return total


def raised_by_own_code(exc: BaseException, twin, backend) -> bool:
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
    return handled is None or backend.fallback_cause(handled) is None or raised_by_own_code(handled, twin, backend)
