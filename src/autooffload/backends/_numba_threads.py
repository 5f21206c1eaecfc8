"""How many threads a tier call runs on: all it may use, or one, whichever its own calls measured faster.

Every parallel region of a ``parallel=True`` function wakes all the tier's threads and waits for
the last of them, so a small call pays that per region, and a function with a Python loop of
small regions pays it per iteration. Measured on the H200 machine (16 cores, OpenMP layer,
``tools/numba_small_threads.py``, session 16, medians of single calls with a 200 us pause before
each, as a program's other work leaves the threads asleep; NumPy / 1 thread / 16 threads, us):

    black_scholes (3 x 333)     86 /   34 /   67      rolling_vol (100)     31 /  21 /  55
    black_scholes (3 x 3333)   183 /  180 /   78      rolling_vol (1000)    51 /  42 /  73
    black_scholes (3 x 33333) 1308 / 1618 /  177      panel_recur (50, 200) 151 / 80 / 494
                                                       panel_recur (500, 200) 2107 / 1065 / 5053

So one thread wins small calls by up to 2.6x and a loop of small regions at every size (6.2x at
(50, 200)), and all threads win large elementwise calls (9x at 3 x 33333). Bytes alone cannot tell
the loop apart, so each compiled signature measures both, per size bucket (a power of two of its
array bytes), on its own calls:

* the first call of a bucket runs on all threads and is not counted (pages, the pool's start);
* then the two alternate, each timed by a ``perf_counter`` pair, until their medians differ by
  more than ``DECIDE_AT`` (1.5x) or each has ``SAMPLES`` (3) calls, and the faster is kept;
* a call on one thread takes at most ``threads`` x the all-thread time (perfect scaling), so it is
  tried only while the time trying has lost so far (each one-thread call's excess over the
  all-thread median), plus that worst case of the next try, stays within
  ``max(EXPLORE_FLOOR_S, EXPLORE_FRACTION x the seconds this function's timed tier calls took)``.
  Over a run, trying loses at most 1 ms or 10% of the function's measured tier time, whichever
  is larger, plus one try's overrun where a call scales better than linearly (black_scholes at
  3 x 33333 is tried once the function has run ~24 ms in the tier; a 1e8-element call is never
  run on one thread to find out that it is 16x slower).

A decided bucket costs a dictionary lookup, and on one thread two calls into the threading
layer (~0.3 us on the 2-core VM). The thread limit in force (``config(threads=...)``,
``NUMBA_NUM_THREADS``) is the "all"; at 1 there is nothing to choose.
"""

from __future__ import annotations

import statistics
import threading

DECIDE_AT = 1.5
SAMPLES = 3
EXPLORE_FLOOR_S = 1e-3
EXPLORE_FRACTION = 0.10


class ThreadChoice:
    """One signature's choice in one size bucket. ``threads`` is None while it measures, else
    ``ONE`` or ``ALL``; ``next_run`` says which to run now, ``add`` takes the call's time."""

    ONE, ALL = 1, 0  # ALL: the limit in force at the call
    __slots__ = ("threads", "seen", "one", "all")

    def __init__(self) -> None:
        self.threads: int | None = None
        self.seen = 0  # calls of this bucket so far, decided or not
        self.one: list[float] = []
        self.all: list[float] = []

    def next_run(self, limit: int, budget: "Choices") -> int:
        """ONE or ALL for a call while undecided (every such call but the bucket's first is timed)."""
        if self.seen == 0 or not self.all:
            return self.ALL
        if len(self.one) < SAMPLES and (len(self.one) < len(self.all) or len(self.all) >= SAMPLES):
            if budget.may_try((limit - 1) * statistics.median(self.all)):
                return self.ONE
        return self.ALL

    def add(self, threads: int, seconds: float, budget: "Choices") -> None:
        budget.spent_s += seconds
        if threads == self.ONE:
            budget.lost_s += max(0.0, seconds - statistics.median(self.all))
        samples = self.one if threads == self.ONE else self.all
        samples.append(seconds)
        if len(samples) > SAMPLES:
            del samples[0]  # all-thread calls while one thread waits for budget: the latest count
        if self.one and self.all:
            one, every = statistics.median(self.one), statistics.median(self.all)
            if one * DECIDE_AT < every or (len(self.one) >= SAMPLES and len(self.all) >= SAMPLES and one < every):
                self.threads = self.ONE
            elif every * DECIDE_AT < one or (len(self.one) >= SAMPLES and len(self.all) >= SAMPLES):
                self.threads = self.ALL


class Choices:
    """A compiled function's choices, per (signature key, size bucket), the seconds its timed calls
    took and what trying one thread lost (the budget). Races between threads only add a sample."""

    __slots__ = ("cells", "spent_s", "lost_s", "lock")

    def __init__(self) -> None:
        self.cells: dict[tuple, ThreadChoice] = {}
        self.spent_s = 0.0
        self.lost_s = 0.0
        self.lock = threading.Lock()

    def may_try(self, worst_extra_s: float) -> bool:
        return self.lost_s + worst_extra_s <= max(EXPLORE_FLOOR_S, EXPLORE_FRACTION * self.spent_s)

    def cell(self, key: tuple) -> ThreadChoice:
        c = self.cells.get(key)
        if c is None:
            with self.lock:
                c = self.cells.setdefault(key, ThreadChoice())
        return c


def size_bucket(args: tuple) -> int:
    """A power-of-two bucket of the arrays' bytes among ``args`` (NumPy arrays only: what the
    tier is given)."""
    total = 0
    for a in args:
        nbytes = getattr(a, "nbytes", None)
        if type(nbytes) is int:
            total += nbytes
    return total.bit_length()
