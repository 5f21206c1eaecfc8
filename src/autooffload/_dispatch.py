"""The decorated function: one planner, one executor and one record keeper tied to a function.

``@offload`` returns a plain function (so it binds as a method for free and costs one Python
call) carrying ``last_decision``, ``stats`` and its state in ``__autooffload__``. A call's path
(ARCHITECTURE.md has the whole picture):

1. The hot path, a wrapper generated with the function's own parameters, sums the bytes of
   numpy (and device) array arguments and looks the decision up by exact (bytes, location,
   config block). Where the optional C extension is built, its first line asks
   ``_native.FastPath`` whether the call is a plain NumPy call already decided, and if so calls
   the function at once (~140 ns); the Python check costs a few hundred nanoseconds more.
2. On a miss, the planner (_planner.py) turns the call's shape into a ``Decision``.
3. A NumPy decision on host data calls the function directly; anything else goes to the
   executor (_executor.py), which moves, runs, writes back and falls back, and tells the record
   keeper (_records.py) what happened. ``Stats`` reads the record keeper.

Calls the hot path cannot scan (containers, kwargs of odd types, module arguments) take the
general path, ``_State.call``: the same three steps with a full scan of the arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import sys
import threading
import time
import types
import weakref
from typing import Any, Callable, Literal, ParamSpec, Protocol, TypeVar, overload

import numpy as np

from . import _blockwise, _config, _learn, _log, backends
from ._costmodel import KINDS, Decision
from ._executor import PASSIVE, Executor
from ._kinds import describe, infer_work
from ._naming import bound_name
from ._planner import Planner, call_shape
from ._purity import may_write_arguments
from ._records import Records, type_signature
from ._traits import body_runs_after_return, host_only_reason, xp_parameter
from .backends import CUPY, HOST, NUMBA, NUMPY
from .backends.base import call_context
from .backends import cupy as device
from .errors import ConfigError

try:  # the optional C check of the NumPy path (see _native.c); the Python wrapper works alone
    from . import _native
except ImportError:
    _native = None

# What the Python hot path passes over: a module argument (np passed in) goes to the general
# path, which translates it for the device; so a device call from the hot path needs no translation.
_HOT_PASSIVE = PASSIVE - {types.ModuleType}

# Every function decorated in this process, for autooffload.report(); weak, so that a function
# dropped by its program drops out of the report with it.
_STATES: "weakref.WeakSet[_State]" = weakref.WeakSet()


def offloaded_states() -> list["_State"]:
    """The live offloaded functions, in the order they were decorated."""
    return sorted(_STATES, key=lambda state: state.serial)


class Stats:
    """Live counters of one offloaded function, read from its record keeper."""

    def __init__(self, state: "_State"):
        self._state = state

    def count(self, backend: str) -> int:
        """Calls that ran on ``backend`` (NumPy's include fallbacks and the C check's calls)."""
        if backend == NUMPY:
            return self._state.numpy_calls()
        return self._state.records.count(backend)

    @property
    def numpy(self) -> int:
        """Calls that ran on NumPy (fallbacks included)."""
        return self.count(NUMPY)

    @property
    def cupy(self) -> int:
        """Calls that ran on the GPU."""
        return self.count(CUPY)

    @property
    def fallbacks(self) -> int:
        """GPU runs that failed and were redone on NumPy."""
        return self._state.records.snapshot()["fallbacks"]

    @property
    def decisions(self) -> int:
        """Times a decision was made afresh, not taken from the cache: the first call at each new
        size bucket, data location or ``config()`` steering, and each ``explain()`` that missed.
        Shown as ``new_decisions`` in the repr; not a count of calls."""
        return self._state.records.snapshot()["decisions"]

    @property
    def calls(self) -> int:
        return sum(self.count(name) for name in backends.names())

    def as_dict(self) -> dict[str, int]:
        return {**{name: self.count(name) for name in backends.names()},
                "fallbacks": self.fallbacks, "decisions": self.decisions}

    def _shown(self) -> dict[str, int]:
        """as_dict() with the decisions count under the name that says what it counts."""
        shown = self.as_dict()
        shown["new_decisions"] = shown.pop("decisions")
        return shown

    def __repr__(self) -> str:
        return "Stats(" + ", ".join(f"{k}={v}" for k, v in self._shown().items()) + ")"

    def _repr_html_(self) -> str:
        """A one-row table in Jupyter."""
        import html  # for Jupyter only: not paid by `import autooffload`

        shown = self._shown()
        head = "".join(f"<th>{html.escape(k)}</th>" for k in shown)
        row = "".join(f"<td>{v}</td>" for v in shown.values())
        return f"<table><tr>{head}</tr><tr>{row}</tr></table>"


_SERIALS = itertools.count()


class _Corrections:
    """The executor's corrections of one timed call: ``n`` in all, ``fell`` where another backend
    ran, ``streams`` where the run was streamed, the last one's ``decision``, and ``replanned``,
    the last decision made again for the device current at the run (the one the run tried)."""

    __slots__ = ("n", "fell", "streams", "decision", "replanned")

    def __init__(self) -> None:
        self.n = self.fell = self.streams = 0
        self.decision: Decision | None = None
        self.replanned: Decision | None = None

    def add(self, d: Decision, fell_back: bool, streamed: bool, replanned: bool) -> None:
        self.n += 1
        self.fell += fell_back
        self.streams += streamed
        self.decision = d
        if replanned:
            self.replanned = d


def _same_call(correction: Decision | None, d: Decision) -> bool:
    """Whether ``correction`` can be of the call ``d`` was made for (its data's bytes), not of an
    untimed nested call of the same function made during its run."""
    return correction is not None and correction.host_bytes == d.host_bytes and correction.device_bytes == d.device_bytes


class _State:
    """What ties one function to its planner, executor and record keeper."""

    def __init__(self, func: Callable, kind: str | None, backend: str, pure: bool,
                 blockwise: _blockwise.Declared = None):
        self.func = func
        # Whether calls may be split along the leading axis and streamed (_blockwise.py, _stream.py).
        self.blockwise = _blockwise.verdict(func, _blockwise.check_declared(blockwise))
        self.name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
        if kind is None:
            work, _ = infer_work(func)
            kind_text = describe(work)
        else:
            if kind not in KINDS:
                raise ConfigError(f"offload(kind=...) must be one of {', '.join(KINDS)}; got {kind!r}")
            work, kind_text = ((kind, 1),), kind
        backend_choice = _config.check_backend(backend, "offload(backend=...)")
        # Generators and coroutines always run on NumPy (see _traits.body_runs_after_return).
        runs_after_return = body_runs_after_return(func)
        if runs_after_return is not None and backend_choice == CUPY:
            raise ConfigError(
                f"offload(backend='cupy'): {self.name} is {runs_after_return}, whose body runs after "
                f"the call returns, too late to copy its writes and results back from the GPU; it can "
                f"only run on NumPy: use backend='auto' or 'numpy'"
            )
        xp_param, xp_defaults_to_numpy = xp_parameter(func)
        # On NumPy, an xp parameter whose default already is numpy needs nothing injected.
        self.inject_xp = xp_param is not None and not xp_defaults_to_numpy
        self.attrs: dict[str, Any] = {}  # becomes the wrapper's __dict__ (last_decision lives there)
        self.records = Records(backends.names())
        self.planner = Planner(self.name, work, kind_text, backend_choice, self.records, func=func,
                               host_only=host_only_reason(func), runs_after_return=runs_after_return)
        self.planner.fast_allowed = not self.inject_xp
        self.planner.blockwise = self.blockwise
        self.learner = _learn.Learner(func)
        self.unsampled = 0  # calls run untimed since the last timed one (Decision.observe_every)
        # Corrections of last_decision by the executor (another backend ran, the call was decided
        # again for another device, or streamed), per timed call in progress in this thread
        # (``corrections.frames``, innermost last): how a timed call tells its own run's
        # corrections from those of another call of the function, in another thread or nested in
        # its own run (an untimed nested call's still count for the timed call around it).
        self.corrections = threading.local()
        # Per backend, (the calls other backends had run when it last took over, its own run count
        # then): how soon after a switch a call comes (_learn.SWITCH_COLD_CALLS).
        self.took_over: dict[str, tuple[int, int]] = {}
        self.learner.revisit = self.planner.reset  # a measurement that changes the answer: decide again
        self.learner.compiling = lambda: backends.module(NUMBA).compiling_now()  # (never imports Numba)
        self.planner.learner = self.learner
        _config.register_decision_cache(self.planner)
        # Whether the code can write into its arguments at all (see _purity.py): if not, calls
        # with plain array and scalar arguments skip the write detection.
        may_write, _ = may_write_arguments(func)
        self.executor = Executor(func, self.name, self.records, self.ran_instead,
                                 pure=bool(pure), may_write=may_write, xp_param=xp_param,
                                 xp_defaults_to_numpy=xp_defaults_to_numpy, blockwise=self.blockwise, note=self.noted)
        self.executor.replan = self.replan
        self.fastpath = None  # the _native.FastPath of the wrapper, when the extension is built
        # The wrapper (weak: it holds this state), and the decorator's options, for the Dask path
        # (_dask.py sends the wrapper to workers, or the function and these options to decorate again).
        self.wrapper: Callable[[], Callable | None] = lambda: None
        self.options: dict[str, Any] = {"kind": kind, "backend": backend, "pure": pure, "blockwise": blockwise}
        self.serial = next(_SERIALS)
        _STATES.add(self)

    def report(self, d: Decision) -> None:
        """What ``last_decision`` says (the executor corrects it when another backend ran)."""
        self.attrs["last_decision"] = d

    def ran_instead(self, d: Decision) -> None:
        """The executor's correction: ``d.backend`` ran, not the backend decided, for ``d.reason``."""
        self._corrected(d, fell_back=True)
        self.attrs["last_decision"] = d
        self.records.timesheet.ran_instead(d.backend, d.reason)

    def _corrected(self, d: Decision, fell_back: bool = False, streamed: bool = False, replanned: bool = False) -> None:
        """One more correction (to ``d``) of the timed call in progress in this thread, if any."""
        frames = getattr(self.corrections, "frames", None)
        if frames:
            frames[-1].add(d, fell_back, streamed, replanned)

    def noted(self, d: Decision) -> None:
        """The executor's correction of a run it streamed (no other backend ran)."""
        self._corrected(d, streamed=True)
        self.attrs["last_decision"] = d

    def call(self, args: tuple, kwargs: dict) -> Any:
        """The general path: nested containers, kwargs, device arrays, anything unusual."""
        if _has_dask(args, kwargs):
            from . import _dask  # imports Dask: only when a Dask array was passed

            return _dask.call(self, args, kwargs, offload)
        host, dev, largest, odd = call_shape(args, kwargs)
        config_backend = _config.current_backend()
        key = (host, dev, odd, config_backend)
        planner = self.planner
        d = planner.exact.get(key)
        if d is None:
            d = planner.decide(key, host, dev, largest, odd, config_backend, args, kwargs)
        else:
            if d.warm_savings_s or d.tier_wait_s:
                d = planner.amortize(d)
            if _log.active():
                _log.record(d, first_in_bucket=False)
        self.report(d)
        if d.observe:
            return self.run_observed(d, args, kwargs)
        if d.backend == NUMPY and not dev:
            return self.executor.run_numpy(args, kwargs, False)
        return self.executor.run(d, args, kwargs)

    def replan(self, args: tuple, kwargs: dict) -> Decision:
        """The decision for this call on the device current now (the executor found the cached one
        made for another device); reported as ``last_decision``."""
        host, dev, largest, odd = call_shape(args, kwargs)
        config_backend = _config.current_backend()
        d = self.planner.decide((host, dev, odd, config_backend), host, dev, largest, odd, config_backend, args, kwargs)
        self._corrected(d, replanned=True)
        self.report(d)
        return d

    def numpy_calls(self) -> int:
        """Calls run on NumPy so far, the C check's included (fallbacks too)."""
        fastpath = self.fastpath
        return self.records.count(NUMPY) + (fastpath.hits if fastpath is not None else 0)

    def others_ran(self, backend: str) -> int:
        """Calls run on backends other than ``backend`` so far. A NumPy call reads one plain int;
        concurrent calls on the same backend never move it."""
        records = self.records
        if backend == NUMPY:
            return records.runs_off_numpy
        return self.numpy_calls() + records.runs_off_numpy - records.runs_by[backend]

    def own_runs(self, backend: str) -> int:
        """Calls run on ``backend`` so far."""
        return self.numpy_calls() if backend == NUMPY else self.records.runs_by[backend]

    def after_switch(self, backend: str) -> int:
        """Which call in a row on ``backend`` the next one is (1: the first since another backend
        ran), counting every call on it, on any path. A function's start is no switch: until
        another backend runs, every call is past the cold ones."""
        others, own = self.others_ran(backend), self.own_runs(backend)
        took = self.took_over.get(backend)
        if took is None or took[0] != others:
            took = (others, own - _learn.SWITCH_COLD_CALLS if took is None and others == 0 else own)
            self.took_over[backend] = took
        return own - took[1] + 1

    def run_observed(self, d: Decision, args: tuple, kwargs: dict) -> Any:
        """Run ``d`` and measure it: the whole call, including the copies and the device work it
        waited for (a device run on host data ends synchronized: Executor._finish_device). Of a
        decision learning from one call in ``observe_every``, the others only count the seconds a
        ``perf_counter`` pair measured (``_learn.Learner.count_measured``: exploring's budget
        grows with measured seconds only)."""
        if d.observe_every > 1:
            self.unsampled += 1
            if self.unsampled < d.observe_every:
                call_context.changed = False
                start = _learn.clock()
                result = self.executor.run(d, args, kwargs)
                seconds = _learn.clock() - start
                changed = d.backend == NUMBA and call_context.changed
                if changed:
                    self.learner.measure_afresh(d.backend, d.bucket)  # the tier changed its build here (_numba_threads)
                if self.learner.count_measured(seconds, d.bucket) or changed:
                    self.planner.reset()  # a wait of learning's has come, or this bucket's exploration: decide again
                if _log.active():
                    _log.record(self.attrs.get("last_decision", d), first_in_bucket=False, sampled_out_s=seconds)
                return result
            self.unsampled = 0
        tier = backends.get(NUMBA) if d.backend == NUMBA else None
        cold = tier is not None and time.perf_counter() - getattr(tier, "last_end", 0.0) > _learn.TIER_COLD_AFTER_S
        cold = self.after_switch(d.backend) <= _learn.SWITCH_COLD_CALLS or cold  # a switch's first calls
        if cold and d.observe_every > 1:
            # A sampled call that may be cold: time the next call too. A fixed one in
            # observe_every lands on the same call of each burst in a function called in bursts
            # (the tier's cold first call of every 8): its cold samples then outvote the warm ones.
            self.unsampled = d.observe_every - 1
        compiling = self.learner.compiling
        disturbed = compiling()
        # The tier running a build that does not stand for it here (a try), or changing which does:
        # a time the decision layer does not learn, or one that measures its cell afresh
        # (_numba_threads; reported per call in call_context).
        call_context.aside = call_context.changed = False
        frames = getattr(self.corrections, "frames", None)
        if frames is None:
            frames = self.corrections.frames = []
        frame = _Corrections()
        frames.append(frame)
        start = _learn.clock()
        raised = True
        try:
            if d.backend == NUMPY and not d.device_bytes:
                result = self.executor.run_numpy(args, kwargs, False)
            else:
                result = self.executor.run(d, args, kwargs)
            raised = False
            return result
        finally:
            seconds = _learn.clock() - start
            frames.pop()
            tier_ran = d.backend == NUMBA
            aside, changed = tier_ran and call_context.aside, tier_ran and call_context.changed
            # An untimed nested call of this function counts its corrections here too (it has no
            # frame); one of another call's size is not this call's: it still teaches nothing
            # here, but is neither what ran nor what last_decision says afterwards.
            last, replanned = frame.decision, frame.replanned
            own = _same_call(last, d)
            self.attrs["last_decision"] = last if own else d  # this call's, not a nested call's
            self._observed(d, seconds, raised, cold, disturbed or compiling() or aside,
                           corrected=frame.n != 0, fell_back=frame.fell != 0, fresh=changed,
                           streamed=own and frame.n == 1 and frame.streams == 1, ran=last if own else None,
                           tried=replanned if _same_call(replanned, d) else None)

    def _observed(self, d: Decision, seconds: float, raised: bool, cold: bool = False, disturbed: bool = False,
                  *, corrected: bool, fell_back: bool = False, fresh: bool = False, streamed: bool = False,
                  ran: Decision | None = None, tried: Decision | None = None) -> None:
        """File one timed call. ``cold``: a tier call after its threads slept, or one of the first
        calls on its backend after another ran (_history.COLD_DROPS, _learn.SWITCH_COLD_CALLS);
        ``disturbed``: a compilation for the tier ran meanwhile, or the tier ran the build that
        does not stand for it in this bucket (_numba_threads), so the time is counted towards
        the function's seconds but learned from nowhere (_numba_compile.compiling_now);
        ``corrected``: the executor corrected last_decision during the call (``fell_back``:
        another backend ran it); ``fresh``: the tier changed the build that stands for it in this
        bucket (``_learn.Learner.observe``); ``streamed``: the only correction said the run was
        streamed, no other backend ran: its time is the backend's here as the executor runs such
        calls (it streams from the call's bytes, the device's free memory and whether the arrays
        are pinned: a bucket's calls mostly stream alike, and a cell's median of its latest
        samples follows where free memory changes that), and is learned; ``ran``: the
        executor's last correction of this call, if any; ``tried``: the decision the executor
        made again for the device current at the run, if it did (then the run tried that one:
        what its fallback counts against, and whether it was exploring)."""
        if self.planner.compile_ended():
            self.planner.reset()  # the Numba tier compiled (or failed) these argument types: decide again
        # What ran: the executor's correction of this call where it made one; else ``d``, even where a
        # nested call of this function replaced last_decision meanwhile (then the call learned nothing
        # and, if exploring, stood uncharged: a review saw every call from the 253rd on run a GPU 4x slower).
        ran = (ran or d) if corrected else d
        # Where the time went: a device run's time is the executor's (its outcome's seconds), filed by
        # the record keeper; here the host backends' runs (NumPy, the Numba tier), and the calls
        # another backend took over (a streamed run is the device's own).
        if corrected and not streamed:
            self.records.timesheet.timed_rerun(seconds)
        elif d.backend == NUMPY or getattr(backends.get(d.backend), "memory", None) == HOST:
            self.records.timesheet.timed(d.backend, d.bucket, seconds)
        learning = _learn.enabled()
        if learning and (raised or (corrected and not streamed) or disturbed):
            # Teaches nothing (a fallback's time mixes two runs; an error's is no run's; a
            # compilation held the interpreter), but its time was the function's. An
            # exploring one is charged all the same and decided again: an exploring decision must
            # not stand uncharged. Only a fallback that ran to the end counts against exploring
            # that backend here again (the function's own errors, also those NumPy raises after
            # a correction, and a stream say nothing about the backend).
            tried = tried or d
            untaught = (tried.backend, tried.bucket) if tried.exploring and fell_back and not raised else None
            if fresh and not corrected:
                self.learner.measure_afresh(d.backend, d.bucket)
            # (charged if either decision explored: the one made for another device stays cached there)
            if self.learner.unlearned(seconds, d.exploring or tried.exploring, untaught=untaught) or fresh:
                self.planner.reset()
        elif learning:
            self.learner.observe(d.backend, d.bucket, seconds, d.profile_s.get(d.backend), exploring=d.exploring,
                                 expected=d.predicted_s.get(d.backend), fresh=fresh,
                                 cold=cold and _learn.cold_may_hide_a_win(seconds, d.predicted_s, d.backend))
        if _log.active():
            _log.record(ran, first_in_bucket=False, observed_s=seconds, raised=raised)


def _has_dask(args: tuple, kwargs: dict) -> bool:
    """Whether an argument (or an item of a list or tuple argument, which _dask.call refuses) is
    a Dask collection, told by its type's module: Dask is not imported for this."""
    for a in (*args, *kwargs.values()) if kwargs else args:
        t = type(a)
        if t.__module__.startswith("dask."):
            return True
        if (t is list or t is tuple) and any(type(x).__module__.startswith("dask.") for x in a):
            return True
    return False


def _hot_path_names(state: _State, attrs: dict) -> dict[str, Any]:
    """What the hot path reads, as locals of the closure that holds it."""
    return {
        "_ao_attrs": attrs,
        "_ao_func": state.func,
        "_ao_planner": state.planner,
        "_ao_executor": state.executor,
        "_ao_exact": state.planner.exact,
        "_ao_config_backend_get": _config.current_backend,
        "_ao_debug_on": _log.logger.isEnabledFor,
        # logging's own per-level cache (cleared in place whenever levels change): a dict lookup
        # instead of a method call; a missing entry falls back to isEnabledFor, which fills it.
        "_ao_level_cache_get": getattr(_log.logger, "_cache", {}).get,
        "_ao_record": _log.record,
        "_ao_ndarray": np.ndarray,
        "_ao_passive": _HOT_PASSIVE,
        "_ao_numpy_calls": state.records.calls[NUMPY],
        # On NumPy, an xp parameter whose default already is numpy needs nothing injected.
        "_ao_inject_xp": state.inject_xp,
        "_ao_numpy": NUMPY,
        "_ao_cupy": CUPY,
        "_ao_numba": NUMBA,
        "_ao_general": state.call,
        "_ao_observed": state.run_observed,
        "_ao_seen_device_type": device.seen_array_type,
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
            _ao_d = _ao_planner.decide_from_args(_ao_key, _ao_host, _ao_dev, _ao_config_backend, {args}, {kwargs})
        else:
            if _ao_d.warm_savings_s or _ao_d.tier_wait_s:
                _ao_d = _ao_planner.amortize(_ao_d)
            _ao_debug = _ao_level_cache_get(10)
            if _ao_debug is None:
                _ao_debug = _ao_debug_on(10)
            if _ao_debug or _ao_planner.log_path is not None:
                _ao_record(_ao_d, first_in_bucket=False)
        _ao_attrs["last_decision"] = _ao_d  # the wrapper's __dict__: {name} may be a parameter's name
        if _ao_d.observe:
            return _ao_observed(_ao_d, {args}, {kwargs})
        if _ao_d.backend is _ao_numpy and not _ao_dev:
            if _ao_inject_xp:
                return _ao_executor.run_numpy({args}, {kwargs}, False)
            next(_ao_numpy_calls)
            return _ao_func({callargs})
        if _ao_dev and not _ao_host and _ao_d.backend is _ao_cupy:
            return _ao_executor.run_resident(_ao_d, {args}, {kwargs})
        if _ao_d.backend is _ao_numba and not _ao_dev:
            return _ao_executor.run_tier(_ao_d, {args}, {kwargs})
        return _ao_executor.run(_ao_d, {args}, {kwargs})
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
    params: list[str] = []
    positional: list[str] = []
    keyword: list[str] = []
    defaults: dict[str, Any] = {}
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
    return _native.FastPath(state.planner.fast, np.ndarray, tuple(PASSIVE), level_cache, attrs, _config.backend_in_context)


def _make_offloaded(func: Callable, state: _State) -> Callable:
    attrs = state.attrs  # becomes the wrapper's __dict__; the hot path and the C check store last_decision there
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
    state.wrapper = weakref.ref(offloaded)
    offloaded.__autooffload_blockwise__ = state.blockwise
    offloaded.last_decision = None
    offloaded.stats = Stats(state)
    return offloaded


P = ParamSpec("P")
R = TypeVar("R")


class Offloaded(Protocol[P, R]):
    """What ``@offload`` returns, for type checkers: the function's own signature, plus the
    attributes the wrapper carries. At run time it is a plain function (see ``_make_offloaded``)."""

    last_decision: Decision | None
    stats: Stats
    __wrapped__: Callable[P, R]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...


@overload
def offload(func: Callable[P, R], /) -> Offloaded[P, R]: ...
@overload
def offload(
    func: None = None, /, *, kind: str | None = None, backend: str = "auto", pure: bool = False,
    blockwise: bool | Literal["rows"] | None = None,
) -> Callable[[Callable[P, R]], Offloaded[P, R]]: ...
def offload(func: Callable | None = None, /, *, kind: str | None = None, backend: str = "auto", pure: bool = False,
            blockwise: bool | Literal["rows"] | None = None) -> Any:
    """Run ``func`` on NumPy or CuPy, whichever the cost model predicts is faster for each call.

    ``kind``: the kind of work ("elementwise", "transcendental", "reduction", "sort", "fft",
    "matmul", "solve", "random", "generic"); by default it is read from the function's code.
    ``backend``: "auto" (default), or "numpy" / "cupy" to force one. ``pure=True`` promises the
    function writes into none of its arguments, which skips the write detection.
    ``blockwise``: True promises that each output element depends only on the inputs at the
    same position, "rows" that each output row depends only on the same leading-axis rows of
    the inputs; such calls on host data run on the GPU in chunks, copies overlapping compute,
    and may be larger than the GPU's memory. None (default) lets a conservative proof read
    from the code decide ("elements" only); False: never. The verdict is the wrapper's
    ``__autooffload_blockwise__`` and ``explain()`` says it.

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
            return _offload(f, kind, backend, pure, sys._getframe(1), blockwise)

        return decorate
    return _offload(func, kind, backend, pure, sys._getframe(1), blockwise)


def _offload(func: Callable, kind: str | None, backend: str, pure: bool, caller: types.FrameType,
             blockwise: _blockwise.Declared = None) -> Callable:
    if isinstance(func, (staticmethod, classmethod)):
        raise TypeError(
            f"offload expects a function; got a {type(func).__name__}: put @{type(func).__name__} above @offload"
        )
    if not callable(func):
        raise TypeError(f"offload expects a callable (a function, method or NumPy function); got {func!r}")
    existing = getattr(func, "__autooffload__", None)
    if existing is not None:
        func = existing.func  # re-decorating replaces the options instead of stacking wrappers
    offloaded = _make_offloaded(func, _State(func, kind, backend, pure, blockwise))
    binding = bound_name(caller)
    if binding is not None:
        offloaded.__module__, offloaded.__qualname__ = binding
    return offloaded


def explain(func: Callable, *args, **kwargs) -> Decision:
    """The Decision ``func(*args, **kwargs)`` would get now, without running it."""
    if isinstance(func, types.MethodType):
        args = (func.__self__, *args)
        func = func.__func__
    state = getattr(func, "__autooffload__", None)
    if state is None:
        raise TypeError(f"explain() takes a function decorated with @offload; got {func!r}")
    host, dev, largest, odd = call_shape(args, kwargs)
    config_backend = _config.current_backend()
    key = (host, dev, odd, config_backend)
    planner = state.planner
    d = planner.exact.get(key)
    if d is not None and d.device_index is not None:
        where = device.current_device()
        if where is not None and where[0] != d.device_index:
            d = None  # cached for another device than this thread's
    if d is None:
        d = planner.decide(key, host, dev, largest, odd, config_backend, args, kwargs, amortize=False)
    if d.backend != NUMPY:
        if state.records.failure(type_signature(args, kwargs), d.backend) is not None:
            return dataclasses.replace(d, backend=NUMPY, reason="the GPU failed before for these argument types")
        backend = backends.get(d.backend)
        if backend is not None:
            fn, _, how = state.executor.runner(backend)
            if fn is None:
                return dataclasses.replace(d, backend=NUMPY, reason=f"no GPU version: {how}")
    return d
