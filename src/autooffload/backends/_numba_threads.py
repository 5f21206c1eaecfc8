"""Where a tier call runs: the parallel build on all its threads, or the serial build on the
caller's, whichever the function's own calls at that size measured faster.

Every parallel region of a ``parallel=True`` function wakes all the tier's threads and waits for
the last of them, so a small call pays that per region, and a function with a Python loop of
small regions pays it per iteration. Measured on the H200 machine (16 cores, OpenMP layer,
``tools/numba_small_threads.py``, session 16 run 1: the parallel build with
``numba.set_num_threads``, medians of single calls with a 200 us pause before each, as a
program's other work leaves the threads asleep; NumPy / 1 thread / 16 threads, us):

    black_scholes (3 x 333)     86 /   34 /   67      rolling_vol (100)     31 /  21 /  55
    black_scholes (3 x 3333)   183 /  180 /   78      rolling_vol (1000)    51 /  42 /  73
    black_scholes (3 x 33333) 1308 / 1618 /  177      panel_recur (50, 200) 151 / 80 / 494
                                                       panel_recur (500, 200) 2107 / 1065 / 5053

So one core wins small calls by up to 2.6x and a loop of small regions at every size (6.2x at
(50, 200)), and all of them win large elementwise calls (9x at 3 x 33333). One core means the
serial build (``njit`` without ``parallel``), compiled in the background when first wanted, not
the parallel build with one thread: switching ``set_num_threads`` between 1 and 16 makes
libgomp rebuild its thread team, and in run 2 the suite's Numba column, calling the same
function on 16 threads between @offload's calls on one, took 11-22 ms a call at 3 x 333 (its
median before was 64 us; h200-session16/suite-noprofile.run2.json). Bytes alone cannot tell a
loop apart, so each compiled signature measures both builds per size bucket (a power of two of
its array bytes), on its own calls:

* the first call of a bucket on each build is not counted (pages, the pool's start, cold code);
* then the two alternate, each timed by a ``perf_counter`` pair, until their medians (of at least
  two calls each) differ by more than ``DECIDE_AT`` (1.5x) or each has ``SAMPLES`` (3) calls,
  and the faster is kept; a call during which a compilation for the tier ran (it holds the
  interpreter: a parallel call at 1e3 elements measured 5-7 ms against 14 us on the 2-core VM)
  is not a sample;
* the serial build compiles in the background at the first call that may try it (and from
  Numba's disk cache in later processes), and calls run parallel meanwhile;
* a serial call takes at most ``threads`` x the parallel time (perfect scaling), and, where the
  decision layer predicts NumPy's time for the call (``base.call_context``), is expected to take
  at most ``SERIAL_OVER_NUMPY`` (2) x that: one core running compiled code rarely loses to one core
  running NumPy's loops by more (the serial build over NumPy on the H200: 0.15-1.44x for
  black_scholes at 3 x 33-33333, rolling_vol and panel_recur at 1e2-1e5 elements;
  ``h200-session16/numba-threads.run3.txt``). A try
  is made only while the time trying has lost so far (each serial call's excess over the parallel
  median), plus the smaller of those two worst cases for the next try, stays within
  ``max(EXPLORE_FLOOR_S, EXPLORE_FRACTION x the seconds this function's timed tier calls took)``.
  Over a run, trying loses at most 1 ms or 10% of the function's measured tier time, whichever
  is larger, plus one try's overrun (at most ``threads - 1`` x the parallel time) where a call
  beats the expectation (black_scholes at 3 x 33333, 1.31 ms on NumPy and 177 us parallel, is
  tried once the function has run ~24 ms in the tier; a 1e8-element call is never run serially to
  find out that it is 16x slower). Until session 17 only the perfect-scaling case bounded a try, and
  a loop of small regions that the parallel build ran 3.3x slower than NumPy (panel_recur at
  (50, 200): 151 us on NumPy and 494 us parallel in ``numba-threads.run1.txt``, the serial build
  37 us in ``run3``) was never tried: its 7.4 ms worst
  case waited for 74 ms of tier time that the decision layer, having moved it to NumPy, never
  spent. Outside the bound: the serial build's compilation (0.3-1.3 s of a background thread
  holding the interpreter much of the time, once per signature and process, from the disk cache
  later), and tries that several threads start at once on an undecided bucket, each of which
  passes the budget before any is counted.

A decided bucket costs a dictionary lookup; a choice is not measured again in the process. The
thread limit in force (``config(threads=...)``, ``NUMBA_NUM_THREADS``) is "all", and part of a
cell's key (a choice made on 16 threads says little about 2); at 1 there is nothing to choose.
The decision layer (``_learn``) learns a bucket's tier time from the build the bucket would keep
now (``ThreadChoice.preferred``: the faster median so far, the parallel build until the serial
one has a counted sample; the kept one once decided), and nothing from a call of the other build
(the runner reports them in ``call_context.aside``), so that its estimate of the tier is always
one build's, the better one known. When the preferred build changes (``call_context.changed``),
the decision layer measures that cell afresh from the call that changed it (a timed call's; an
untimed one's goes unseen, the tier then being chosen there already): a loop the parallel build
made look 3x slower than NumPy becomes the 3x faster tier at once, not after the median of 16
old samples moves.
"""

from __future__ import annotations

import threading

from .._history import median

DECIDE_AT = 1.5
SAMPLES = 3
SERIAL_OVER_NUMPY = 2.0
EXPLORE_FLOOR_S = 1e-3
EXPLORE_FRACTION = 0.10


class ThreadChoice:
    """One signature's choice in one size bucket. ``threads`` is None while it measures, else
    ``ONE`` (the serial build) or ``ALL`` (the parallel one); ``next_run`` says which to run now,
    ``add`` takes the call's time."""

    ONE, ALL = 1, 0  # ALL: the limit in force at the call (part of the cell's key)
    __slots__ = ("threads", "seen", "one_seen", "one", "all", "serial")

    def __init__(self) -> None:
        self.threads: int | None = None
        self.seen = 0  # calls of this bucket so far while undecided
        self.one_seen = 0  # of them, on the serial build (its first is not counted: cold)
        self.one: list[float] = []
        self.all: list[float] = []
        self.serial = None  # the serial build's Signature for this cell, once asked for

    def next_run(self, limit: int, budget: "Choices", numpy_s: float | None = None) -> int:
        """ONE or ALL for a call while undecided (every such call but the bucket's first is timed);
        ``numpy_s``: NumPy's predicted seconds for the call, if known (the module docstring)."""
        if self.seen == 0 or not self.all:
            return self.ALL
        if len(self.one) < SAMPLES and (len(self.one) < len(self.all) or len(self.all) >= SAMPLES):
            parallel = median(self.all)
            worst = (limit - 1) * parallel
            if numpy_s is not None and numpy_s > 0:
                worst = min(worst, max(0.0, SERIAL_OVER_NUMPY * numpy_s - parallel))
            if budget.may_try(worst):
                return self.ONE
        return self.ALL

    def preferred(self) -> int:
        """The build whose calls stand for the tier here now (the module docstring): the kept one,
        else the one with the faster median so far (the parallel build until both have one)."""
        if self.threads is not None:
            return self.threads
        if self.one and self.all and median(self.one) < median(self.all):
            return self.ONE
        return self.ALL

    def add(self, threads: int, seconds: float, budget: "Choices") -> None:
        """A timed call's seconds (not a compilation's: see ``_CompiledCall._trial``)."""
        budget.spent_s += seconds
        if threads == self.ONE:
            budget.lost_s += max(0.0, seconds - median(self.all))
            self.one_seen += 1
            if self.one_seen == 1:
                return  # the serial build's first call: its pages and code are cold
        samples = self.one if threads == self.ONE else self.all
        samples.append(seconds)
        if len(samples) > SAMPLES:
            del samples[0]  # parallel calls while the serial build waits (budget, compiling): the latest count
        if len(self.one) >= 2 and len(self.all) >= 2:  # one sample of each can be a wake-up or a page fault
            one, every = median(self.one), median(self.all)
            both = len(self.one) >= SAMPLES and len(self.all) >= SAMPLES
            if one * DECIDE_AT < every or (both and one < every):
                self.threads = self.ONE
            elif every * DECIDE_AT < one or both:
                self.threads = self.ALL


class Choices:
    """A compiled function's choices, per (signature key, size bucket, thread limit), the seconds
    its timed calls took and what serial tries lost (the budget). Threads calling at once may each
    pass ``may_try`` before any try is counted (outside the bound: the module docstring)."""

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
