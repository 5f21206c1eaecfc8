"""The planner: a call's shape (bytes by location, arrays, dtypes, steering) -> a ``Decision``.

One planner per offloaded function. It owns the function's decision caches: the exact cache
(host bytes, device bytes, config block) the hot path reads without calling in, the half-octave
size-bucket cache behind it, and the subset the C check of the NumPy path may answer alone. On
a miss it applies the steering rules (``config()`` > ``@offload(backend=)`` >
``AUTOOFFLOAD_BACKEND``), then the eligibility rules (dtypes, a usable GPU), then the pure cost
model (``_costmodel``). The cold-start ledger is process-wide (a CUDA context is per process) and
lives in ``COLD_START``.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np

from . import _config, _learn, _log, backends
from ._arguments import iter_leaves
from ._blockwise import Verdict
from ._costmodel import Decision, Prediction, Request, choose, predict, size_bucket
from .backends import CUPY, NUMBA, NUMPY, why_not_on_device
from .backends import cupy as device
from .errors import BackendUnavailableError, ConfigError, GPUUnavailableError

_EXACT_CACHE_LIMIT = 4096
# What a compilation for the Numba tier takes before this function has had one: 0.25-1.25 s on the
# H200 machine for the seed article's chains and Black-Scholes (MEASURED-H200.md).
TIER_COMPILE_GUESS_S = 0.5


def call_shape(args: tuple, kwargs: dict) -> tuple[int, int, int, bool]:
    """(host bytes, device bytes, largest array bytes, odd) over nested args and kwargs.

    Odd: a host array the device cannot hold (its dtype, or an ndarray subclass).
    """
    device_type = device.device_array_type()
    host = dev = largest = 0
    odd = False

    def is_array(x: Any) -> bool:
        return isinstance(x, np.ndarray) or (device_type is not None and type(x) is device_type)

    for a in iter_leaves((args, kwargs), is_array):
        n = a.nbytes
        largest = max(largest, n)
        if device_type is not None and type(a) is device_type:
            dev += n
            device.seen_array_type[0] = device_type  # from now on the hot path knows it too
        else:
            host += n
            if why_not_on_device(a) is not None:
                odd = True
    return host, dev, largest, odd


def first_odd_argument(args: tuple, kwargs: dict) -> str:
    """The first host array that made ``call_shape`` call the arguments odd, described."""
    device_type = device.device_array_type()
    for a in iter_leaves((args, kwargs), lambda x: isinstance(x, np.ndarray) and type(x) is not device_type):
        why = why_not_on_device(a)
        if why is not None:
            return why
    return "an argument"


def active_profile():
    from ._profiles import active_profile as resolved  # pydantic and the files load at the first decision

    return resolved()


class ColdStartLedger:
    """Ski rental for a backend's once-per-process start (the CUDA context).

    Calls that stay on NumPy only because the GPU is not started yet add the seconds the warm
    GPU would have saved; once those exceed the cold start, the next such call starts the GPU.
    Never worse than twice the best choice made in hindsight.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.forgone_s = 0.0

    def add(self, savings_s: float, cold_start_s: float) -> float | None:
        """Add one call's forgone savings; the total (and a fresh start) once it pays the cold start."""
        with self._lock:
            self.forgone_s += savings_s
            if self.forgone_s < cold_start_s:
                return None
            paid, self.forgone_s = self.forgone_s, 0.0
            return paid

    def reset(self) -> None:
        with self._lock:
            self.forgone_s = 0.0


COLD_START = ColdStartLedger()


class Planner:
    """Decisions for one function (see the module docstring)."""

    def __init__(self, name: str, work, kind_text: str, backend_choice: str, records, *, func=None,
                 host_only: str | None = None, runs_after_return: str | None = None):
        self.name = name
        self.func = func  # what the Numba tier compiles
        self.work = work
        self.kind_text = kind_text
        self.backend_choice = backend_choice
        self.records = records
        # Why this function can only run on NumPy whatever the steering (see _traits.py): its body
        # runs after the call returns (a generator or coroutine), or it sets array flags.
        self.runs_after_return = runs_after_return
        self.host_only = host_only
        self.learner: _learn.Learner | None = None  # set by the function's _State
        self.compile_pending: list = []  # Numba signatures compiling in the background
        self.last_compile_s: float | None = None  # what this function's last compilation for the tier took
        self.tier_seen = False  # the gate loaded the tier for this function (so Numba is imported)
        # Exact decision cache. Keys: host bytes (numpy arrays and scalars only, no config block),
        # (host bytes, config backend), or (host, device, odd, config backend) for the general case.
        # GPU readiness, the profile and the environment are not in the keys: when they change,
        # _config.invalidate_decisions() resets every function's caches.
        self.exact: dict[Any, Decision] = {}
        self.buckets: dict[tuple, Decision] = {}
        # The subset of `exact` the C check may answer alone: host bytes -> a NumPy decision with
        # nothing else to do (see _native.c). Cleared with `exact`, in place (the C side holds it).
        self.fast: dict[int, Decision] = {}
        self.fast_allowed = True  # False where a NumPy call has more to do (an injected xp)
        self.log_path = self._log_path()
        self.lock = threading.Lock()
        self.blockwise: Verdict | None = None  # set by the function's _State (_blockwise.py)

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
        device_type = device.seen_array_type[0]
        largest = max(
            (a.nbytes for a in iter_leaves((args, kwargs), lambda x: type(x) is np.ndarray or type(x) is device_type)),
            default=0,
        )
        return self.decide(key, host, dev, largest, False, config_backend, args, kwargs)

    def decide(self, key, host: int, dev: int, largest: int, odd: bool, config_backend: str | None,
               args: tuple, kwargs: dict, *, amortize: bool = True) -> Decision:
        """The decision for a call (cache miss): from the size bucket's decision, or the cost model."""
        where = device.current_device()  # the calling thread's device (None: GPU not loaded yet)
        index = None if where is None else where[0]
        if dev and not device.is_ready(index):
            device.mark_gpu_ready()  # the caller's device arrays mean the CUDA context exists
        ready = device.is_ready(index)
        forced, source = self.forced(config_backend)
        # The device is part of the bucket: each device's decisions are its own (warm or cold,
        # named in the Decision); GPU runs check it (Executor.run_device), NumPy calls need not.
        bucket_key = (size_bucket(host), size_bucket(dev), odd, forced, ready, index)
        base = self.buckets.get(bucket_key)
        first = base is None
        if first:
            base = self._decide_bucket(host, dev, largest, odd, forced, source, bucket_key, args, kwargs)
            self.buckets[bucket_key] = base
        d = base if (base.host_bytes, base.device_bytes) == (host, dev) else dataclasses.replace(
            base, host_bytes=host, device_bytes=dev
        )
        if len(self.exact) >= _EXACT_CACHE_LIMIT:
            self.exact.clear()
            self.fast.clear()
        self.exact[key] = d
        if (type(key) is int and d.backend == NUMPY and not d.warm_savings_s and not d.tier_wait_s and not d.observe
                and self.log_path is None and self.fast_allowed):
            self.fast[key] = d  # a plain NumPy call: the C check may answer it alone from now on
            _log.logger.isEnabledFor(_log.DEBUG)  # fills logging's level cache, which the C check reads
        next(self.records.decisions)
        if first or _log.active():
            _log.record(d, first_in_bucket=first)
        if amortize and (d.warm_savings_s or d.tier_wait_s):
            d = self.amortize(d)
        return d

    def _decide_bucket(self, host, dev, largest, odd, forced, source, bucket_key, args, kwargs) -> Decision:
        device_type = device.device_array_type()
        typed = list(iter_leaves((args, kwargs), lambda x: isinstance(x, (np.ndarray, np.generic)) or type(x) is device_type))
        dtypes = tuple(sorted({str(a.dtype) for a in typed}))  # NumPy scalars' dtypes included
        arrays = [a for a in typed if not isinstance(a, np.generic)]
        ready = bucket_key[4]
        blockwise = self.blockwise is not None and self.blockwise.blockwise and not dev
        verdict_text = self.blockwise.describe() if self.blockwise is not None else ""

        def make(backend: str, reason: str, pred=None, savings: float = 0.0, profile: str = "", **learned) -> Decision:
            predicted = dict(pred.seconds) if pred is not None else {}
            cold = pred.parts.get(CUPY, {}).get("cold_start", 0.0) if pred is not None else 0.0
            chunk = pred.streamed.get(CUPY, 0) if pred is not None and backend == CUPY else 0
            where = device.current_device()  # loaded by now if the GPU was considered
            return Decision(self.name, backend, reason, self.kind_text, host, dev, dtypes, predicted,
                            profile, bucket_key[:2], savings, cold, **learned, streamed=chunk > 0,
                            chunk_bytes=chunk, blockwise=verdict_text,
                            device=device.device_label(where), device_index=None if where is None else where[0])

        ignored = "; forced cupy ignored" if forced == CUPY else ""
        if forced == NUMBA:
            return self._forced_numba(make, source, dev, odd, args, kwargs)
        if forced not in (None, NUMPY, CUPY):
            raise ConfigError(f"{self.name}: backend {forced!r} (forced by {source}) is registered, but the "
                              f"planner has no rules for it yet; use 'numpy', 'cupy' or 'auto'")
        if forced == NUMPY:
            return make(NUMPY, f"forced by {source}")
        if self.runs_after_return is not None:
            if dev:
                raise TypeError(
                    f"{self.name} is {self.runs_after_return}: it runs on NumPy, and its writes could not "
                    f"be copied back to device arrays after its body ran; pass NumPy arrays, not device arrays"
                )
            return make(NUMPY, f"{self.runs_after_return}: its body runs after the call returns, too late to "
                               f"copy writes and results back from the GPU" + ignored)
        if self.host_only is not None and not dev:
            return make(NUMPY, self.host_only + ignored)
        if forced == CUPY:
            if odd:
                return make(NUMPY, f"{first_odd_argument(args, kwargs)} cannot live on the GPU" + ignored)
            if device.load() is None:
                raise GPUUnavailableError(
                    f"{self.name}: backend 'cupy' was forced by {source}, but the GPU cannot be used: "
                    f"{device.unavailable_reason()}. Use backend='auto' (or 'numpy') to run on NumPy."
                )
            return make(CUPY, f"forced by {source}")
        if odd:
            return make(NUMPY, f"{first_odd_argument(args, kwargs)} cannot live on the GPU")
        if host == 0 and dev == 0:
            return make(NUMPY, "no array arguments to size the work by")
        profile = active_profile()  # looked up per call: tests replace it
        n_dev = sum(1 for a in arrays if type(a) is device_type)
        n_host = len(arrays) - n_dev
        pred = predict(profile, Request(self.work, host, dev, largest, ready, max(n_host, 1), max(n_dev, 1), blockwise))
        why = device.unavailable_reason()
        if why is not None:
            pred = _without(pred, CUPY)  # no prediction shown for a backend that cannot run here
        bucket = bucket_key[:2]
        learner = self.learner if self.learner is not None and _learn.enabled() else None
        if sum(s is not None for s in pred.seconds.values()) < 2:
            learner = None  # one backend to choose from: nothing to learn
        profile_s = dict(pred.seconds)
        sources: dict[str, str] = {}
        if learner is not None:
            pred, sources = learner.adjust(pred, bucket)
        shown = pred  # what the decision reports: every backend's prediction
        pred, tier_note, tier_wait = self._numba_gate(pred, dev, args, kwargs, learner, bucket)
        if "serial" in pred.parts.get(NUMBA, {}):  # the tier's code has no parallel loop: shown as predicted
            shown = Prediction({**shown.seconds, NUMBA: pred.seconds[NUMBA]}, {**shown.parts, NUMBA: pred.parts[NUMBA]},
                               shown.streamed)
            sources = {**sources, NUMBA: "NumPy's prediction: Numba made no parallel loop of it (one core)"}
        backend, reason, savings = choose(pred, data_on_device=dev > 0)
        if why is not None and backend == NUMPY:
            reason = f"no GPU: {why}"
        reason += tier_note
        exploring = False
        if learner is not None and not dev:  # device-resident calls are not timed (see _learn.py)
            other = learner.exploration(pred, backend, bucket, sources, profile_s)
            if other is not None:
                reason = (f"exploring {other}: predicted {pred.seconds[other] * 1e3:.3g} ms against "
                          f"{pred.seconds[backend] * 1e3:.3g} ms on {backend}, from {sources.get(other, 'the profile')}")
                backend, savings, exploring = other, 0.0, True
        if (backend == CUPY or dev) and device.load() is None:
            return make(NUMPY, f"no GPU: {device.unavailable_reason()}", shown, 0.0, profile.source)
        waiting = bool(self.compile_pending) and not dev  # calls check whether the compilation ended
        if learner is None:
            return make(backend, reason, shown, savings, profile.source, observe=waiting)
        tier_wait = 0.0 if exploring else tier_wait  # the gate gives none for device data
        if not exploring and not dev:
            tier_wait = max(tier_wait, learner.recheck_wait(pred, backend, bucket))
        every = 1 if waiting or exploring else learner.observation_interval(backend, bucket, backend == CUPY, pred)
        return make(backend, reason, shown, savings, profile.source, sources=sources, profile_s=profile_s,
                    observe=not dev and every > 0, observe_every=max(every, 1), exploring=exploring, tier_wait_s=tier_wait)

    # -- the Numba tier ---------------------------------------------------------------------------
    def _forced_numba(self, make, source: str, dev: int, odd: bool, args: tuple, kwargs: dict) -> Decision:
        ignored = "; forced numba ignored"
        if dev:
            return make(NUMPY, "device arrays: the Numba tier runs on host memory" + ignored)
        if odd:
            return make(NUMPY, f"{first_odd_argument(args, kwargs)} cannot be compiled by Numba" + ignored)
        tier = backends.get(NUMBA)
        if tier is None:
            raise BackendUnavailableError(
                f"{self.name}: backend 'numba' was forced by {source}, but Numba cannot be used: "
                f"{backends.unavailable_reason(NUMBA)}. Use backend='auto' (or 'numpy') to run on NumPy."
            )
        fn, _, how = tier.runner(self.func)
        if fn is None:
            return make(NUMPY, f"no Numba version: {how}" + ignored)
        return make(NUMBA, f"forced by {source}")

    def _numba_gate(self, pred: Prediction, dev: int, args: tuple, kwargs: dict,
                    learner: "_learn.Learner | None" = None, bucket: tuple[int, int] = (0, 0)) -> tuple[Prediction, str, float]:
        """``pred`` without the Numba tier unless this call's argument types are compiled for it;
        a note for the reason; and what each call counts towards the tier's compilation while
        it waits for its budget (``Decision.tier_wait_s``, 0.0 when it does not wait).

        Compilation never stalls a call: where the tier is predicted fastest, or is worth
        exploring (``_learn.Learner.compile_to_explore``: learning is on, the tier is predicted
        within ``EXPLORE_WITHIN`` of the best and unmeasured here, and the function has already run
        longer than a compilation takes), and these argument types are not compiled yet, their
        compilation starts in a background thread and calls go elsewhere meanwhile; the planner
        decides again once it ended (``compile_pending``). A compiled tier stays in the
        prediction, so exploration can try it. Numba is imported only here, when one of those
        holds.
        """
        tier_s = pred.seconds.get(NUMBA)
        if tier_s is None:
            return pred, "", 0.0
        if dev:
            return _without(pred, NUMBA), "", 0.0
        others = [s for n, s in pred.seconds.items() if n != NUMBA and s is not None]
        # Calls this short are not worth a compilation (nor its wait on the timed path): see
        # _learn.TIER_EXPLORE_MIN_CALL_S; a tier compiled already stays in the running.
        worth = not others or min(others) >= _learn.TIER_EXPLORE_MIN_CALL_S
        fastest = worth and (not others or tier_s < min(others))
        explore, wait_s = False, 0.0
        if not fastest and learner is not None:
            explore, wait_s = learner.compile_to_explore(pred, bucket, self._compile_estimate_s())
        if not (fastest or explore or self.tier_seen or _tier_loaded()):
            return _without(pred, NUMBA), "", wait_s
        tier = backends.get(NUMBA)
        self.tier_seen = True
        if tier is None:
            return _without(pred, NUMBA), f"; Numba tier unavailable ({backends.unavailable_reason(NUMBA)})", wait_s
        fn, _, how = tier.runner(self.func)
        if fn is None:
            return _without(pred, NUMBA), "", wait_s  # dense linear algebra, random, FFT...: not the tier's (DEBUG)
        signature = tier.signature(self.func, args, kwargs)
        if signature.state == "compiled":
            if signature.serial:
                return self._serial_tier(pred, learner, bucket), "", wait_s  # its own curve: see below
            return pred, "", wait_s  # compiled: the tier stays in the running, for the choice and for exploring
        if not (fastest or explore):
            return _without(pred, NUMBA), "", wait_s
        if signature.state == "failed":
            _log.logger.debug("%s: not on the Numba tier for these argument types: %s", self.name, signature.reason)
            return _without(pred, NUMBA), "", wait_s
        if tier.compile_in_background(self.func, signature) is not None or signature.state == "compiling":
            self.compile_pending.append(signature)
        why = "in the background" if fastest else "in the background, to explore it"
        return _without(pred, NUMBA), f"; compiling for the Numba tier {why}", wait_s

    @staticmethod
    def _serial_tier(pred: Prediction, learner: "_learn.Learner | None", bucket: tuple[int, int]) -> Prediction:
        """A tier compiled without a parallel loop runs on one core, as NumPy does: predicted no
        faster than NumPy until its own calls are measured (the streaming benchmark's ``x *= 5``
        on 1e8 elements chose it at the tier's all-core speed and ran at NumPy's, 90 ms, while
        the GPU took 53 ms)."""
        numpy_s = pred.seconds.get(NUMPY)
        tier_s = pred.seconds.get(NUMBA)
        cell = learner.history.cell((NUMBA, *bucket)) if learner is not None else None
        if numpy_s is None or tier_s is None or tier_s >= numpy_s or (cell is not None and cell.trusted):
            return pred
        seconds = {**pred.seconds, NUMBA: numpy_s}
        parts = {**pred.parts, NUMBA: {"serial": numpy_s}}
        return Prediction(seconds, parts, pred.streamed)

    def _compile_estimate_s(self) -> float:
        """What a compilation for the tier is expected to take: this function's last one, else
        ``TIER_COMPILE_GUESS_S`` (0.25-1.25 s measured for one-line chains to Black-Scholes)."""
        return self.last_compile_s if self.last_compile_s is not None else TIER_COMPILE_GUESS_S

    def compile_ended(self) -> bool:
        """Whether a background compilation this planner waits for has ended (then: decide again)."""
        pending = self.compile_pending
        if pending and any(s.state in ("compiled", "failed") for s in pending):
            ended = [s.seconds for s in pending if s.state in ("compiled", "failed") and s.seconds is not None]
            self.last_compile_s = ended[-1] if ended else self.last_compile_s
            self.compile_pending = [s for s in pending if s.state not in ("compiled", "failed")]
            return True
        return False

    def amortize(self, d: Decision) -> Decision:
        """Send this call to the GPU once the forgone warm-GPU savings have paid for its cold start;
        count it towards what learning waits for (the tier's compilation, a re-check: then decide
        again)."""
        if d.tier_wait_s:
            # An observed call counts its measured time (Learner.observe); an untimed one its prediction.
            if not d.observe and self.learner is not None and self.learner.count_untimed(d.tier_wait_s):
                self.reset()
            if not d.warm_savings_s:
                return d
        forgone = COLD_START.add(d.warm_savings_s, d.cold_start_s)
        if forgone is None or device.load() is None:
            return d
        where = device.current_device()
        return dataclasses.replace(
            d, backend=CUPY, warm_savings_s=0.0,
            device=device.device_label(where), device_index=None if where is None else where[0],
            reason=f"cold start ({d.cold_start_s:.2g} s) paid off: calls so far would have saved {forgone:.2g} s on a warm GPU",
        )


def _tier_loaded() -> bool:
    """Whether the Numba tier is loaded in this process already (then asking whether these
    argument types are compiled costs nothing: another decorated function, or a compilation
    of the same function object elsewhere, may have compiled them; the suite's percentiles at
    1e2 never tried a tier compiled and 3x faster than NumPy, because this function had not
    itself asked for it)."""
    return getattr(backends.module(NUMBA), "_backend", None) is not None


def _without(pred: Prediction, name: str) -> Prediction:
    """``pred`` with backend ``name`` unpredicted (it cannot take this call now)."""
    seconds = dict(pred.seconds)
    seconds[name] = None
    parts = dict(pred.parts)
    parts[name] = {}
    return Prediction(seconds, parts, {k: v for k, v in pred.streamed.items() if k != name})
