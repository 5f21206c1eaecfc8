"""Where one offloaded function's time went: timed runs, copies each way, reruns on NumPy.

``autooffload.report()`` reads this; nothing else does. It is written only on paths that already
pay for a measurement or a copy, never on the NumPy hot path: timing every NumPy call would cost
two clock reads and a lock per call, a third of the ~400 ns the decorator may add
(benchmarks/overhead.py, the 1.3x bar). So:

- a run is *timed* when something measures it anyway: a call the learner observes (the first
  calls of each size, exploring calls: ``_State.run_observed``) and every device run on host
  data (the executor's outcome's seconds, ``Records.ran``). Untimed calls are counted by the record keeper, so
  the report can say how many of the calls its times cover;
- copies are metered where they are made (``_arguments.Moved``), one clock pair per array, which
  is nothing beside a copy across the bus;
- reruns elsewhere (a fallback to NumPy, or a device run declined before it started) are
  counted per reason, the sentence ``last_decision.reason`` carries.

Every writer takes one lock: calls on several threads add to the same sheet, and ``x += y`` on a
float is a read and a write that a thread switch can separate.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

Bucket = tuple  # the decision cache's size bucket: (host half-octave, device half-octave)


@dataclass
class Timed:
    """Runs of one backend in one size bucket that were measured, and their seconds."""

    calls: int = 0
    seconds: float = 0.0


@dataclass
class Copies:
    """Copies in one direction: how many arrays, their bytes, the seconds they took."""

    arrays: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class CopyTotals:
    host_to_device: Copies = field(default_factory=Copies)
    device_to_host: Copies = field(default_factory=Copies)


class CopyMeter:
    """Adds the copies made for the runs of one backend to a timesheet (``_arguments.Moved``
    calls it). One per (function, backend), made once: a device run looks it up, nothing more."""

    __slots__ = ("_totals", "_lock")

    def __init__(self, totals: CopyTotals, lock: threading.Lock):
        self._totals = totals
        self._lock = lock

    def copied(self, host_to_device: bool, nbytes: int, seconds: float) -> None:
        with self._lock:
            c = self._totals.host_to_device if host_to_device else self._totals.device_to_host
            c.arrays += 1
            c.bytes += int(nbytes)
            c.seconds += seconds


class Timesheet:
    """One function's timed runs per (backend, bucket), copies per backend, reruns per reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timed: dict[tuple[str, Bucket], Timed] = {}
        self._copies: dict[str, CopyTotals] = {}
        self._meters: dict[str, CopyMeter] = {}
        self._rerun_timed = Timed()  # calls another backend ran instead of the chosen one (both runs' time)
        self._ran_instead: Counter[tuple[str, str]] = Counter()

    def timed(self, backend: str, bucket: Bucket, seconds: float) -> None:
        """A run of ``backend`` that was measured (the whole call: copies included)."""
        with self._lock:
            entry = self._timed.get((backend, bucket))
            if entry is None:
                entry = self._timed[(backend, bucket)] = Timed()
            entry.calls += 1
            entry.seconds += seconds

    def timed_rerun(self, seconds: float) -> None:
        """A measured call whose chosen backend gave way to another: its time is neither's alone
        (a fallback holds the failed attempt and the rerun)."""
        with self._lock:
            self._rerun_timed.calls += 1
            self._rerun_timed.seconds += seconds

    def ran_instead(self, backend: str, reason: str) -> None:
        """A call decided for another backend ran on ``backend``, for ``reason``."""
        with self._lock:
            self._ran_instead[(backend, reason)] += 1

    def meter(self, backend: str) -> CopyMeter:
        """Where the copies for a run of ``backend`` are added."""
        meter = self._meters.get(backend)
        if meter is None:
            with self._lock:
                totals = self._copies.setdefault(backend, CopyTotals())
                meter = self._meters.setdefault(backend, CopyMeter(totals, self._lock))
        return meter

    # -- reading (the report) --------------------------------------------------------------------
    def timed_by_bucket(self) -> dict[tuple[str, Bucket], Timed]:
        with self._lock:
            return {k: Timed(v.calls, v.seconds) for k, v in self._timed.items()}

    def copies(self) -> dict[str, CopyTotals]:
        with self._lock:
            return {
                name: CopyTotals(Copies(**vars(t.host_to_device)), Copies(**vars(t.device_to_host)))
                for name, t in self._copies.items()
            }

    def reruns(self) -> tuple[Timed, dict[tuple[str, str], int]]:
        """(the timed ones, every rerun counted per (backend that ran, reason))."""
        with self._lock:
            return Timed(self._rerun_timed.calls, self._rerun_timed.seconds), dict(self._ran_instead)
