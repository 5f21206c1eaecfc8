"""What one offloaded function remembers about its own calls: counts, failures and outcomes.

The record keeper is written to by the executor (an outcome per device run and per fallback, kept
as a tuple of ``Outcome``'s fields and built into one when ``last_outcome`` is read)
and by the hot path itself (a count per NumPy call, the cheapest thing it can do), and read by
``Stats`` and by the executor (argument types that failed on a backend are not sent there again,
as numba's ``_FunctionCompiler`` keeps a failure cache keyed by argument types). Observed times
are kept from the learning issue on; today ``Outcome.seconds`` is the last device run's. The
``timesheet`` (_timesheet.py) adds up where the time went, for ``autooffload.report()``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._arguments import iter_leaves
from ._timesheet import Timesheet
from .backends import cupy as device


def counter_value(counter: itertools.count) -> int:
    """The current value of an ``itertools.count`` without advancing it.

    ``itertools.count`` is the one counter in the standard library that is incremented
    atomically at C speed by ``next()`` (~25 ns, no lock), which is why the hot path uses it.
    Its repr, ``count(N)``, is the only way to read it without advancing it that survives
    Python 3.14 (its pickling support, ``__reduce__``, is removed there).
    """
    return int(repr(counter)[6:-1])


def type_signature(args: tuple, kwargs: dict) -> tuple:
    """The key failures are remembered by: (dtype, ndim) of every array argument, nested ones too."""
    device_type = device.device_array_type()
    return tuple(
        (a.dtype.str, a.ndim)
        for a in iter_leaves((args, kwargs), lambda x: isinstance(x, np.ndarray) or type(x) is device_type)
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What actually happened to one call: where it ran and, if it fell back, why."""

    backend: str  # the backend that produced the result
    fallback_cause: str | None = None  # the chosen backend failed with this; NumPy ran instead
    seconds: float | None = None  # wall time of the run, where it was measured
    bucket: tuple | None = None  # the decision's size bucket (where the report files ``seconds``)


class Records:
    """Counts per backend, fallbacks, decisions, and failures remembered by argument types."""

    def __init__(self, backend_names: tuple[str, ...]):
        self.calls = {name: itertools.count() for name in backend_names}
        # Runs off NumPy, in plain ints (read without parsing a counter; a lost increment under
        # threads only makes one sample look cold): what tells a switch of backend (_dispatch).
        self.runs_off_numpy = 0
        self.runs_by = {name: 0 for name in backend_names}
        self.fallbacks = itertools.count()
        self.decisions = itertools.count()
        # Argument-type signature -> (backend that failed, cause). Read on every device run.
        self.failures: dict[tuple, tuple[str, str]] = {}
        self._last: tuple | None = None  # the last outcome's fields (``last_outcome``)
        self.timesheet = Timesheet()  # where the time went, for autooffload.report()

    def ran(self, backend: str, seconds: float | None, bucket: tuple | None) -> None:
        """A call the executor ran to the end on ``backend`` (NumPy runs are only counted), in
        ``seconds`` where measured. Kept as a tuple: an ``Outcome`` built on every device run
        cost ~0.5 us of a small call on the CPU VM; ``last_outcome`` builds it when asked."""
        self.count_run(backend)
        self._last = (backend, None, seconds, bucket)
        if seconds is not None and bucket is not None:
            self.timesheet.timed(backend, bucket, seconds)

    @property
    def last_outcome(self) -> Outcome | None:
        last = self._last
        return None if last is None else Outcome(*last)

    def fell_back(self, signature: tuple, backend: str, cause: str) -> None:
        """``backend`` could not run these argument types; NumPy did (and counted its run)."""
        next(self.fallbacks)
        self.failures[signature] = (backend, cause)
        self._last = ("numpy", cause, None, None)

    def failure(self, signature: tuple, backend: str) -> str | None:
        """Why ``backend`` failed before for these argument types, or None."""
        found = self.failures.get(signature)
        return found[1] if found is not None and found[0] == backend else None

    def count(self, backend: str) -> int:
        return counter_value(self.calls[backend])

    def count_run(self, backend: str) -> None:
        """One call run to the end on ``backend``."""
        next(self.calls[backend])
        if backend != "numpy":
            self.runs_off_numpy += 1
            self.runs_by[backend] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            **{name: counter_value(c) for name, c in self.calls.items()},
            "fallbacks": counter_value(self.fallbacks),
            "decisions": counter_value(self.decisions),
        }
