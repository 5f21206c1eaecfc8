"""Decisions that learn: a function's own measured times correct the profile's predictions.

The profile predicts from curves per kind of work; a function whose work its code does not show
(a Python loop of small operations, a library function of unknown kind, a shape the byte count
hides) can be predicted 10-50x wrong. Each offloaded function therefore keeps its observed
times (``_history``) and, per backend and size bucket, its decisions use:

1. **what it measured there**, once the cell is trusted (two samples after the dropped first):
   "learned from N calls";
2. else **its neighbouring sizes**: a least-squares line in log-log space through its trusted
   cells of that backend and data location (as StarPU's regression models fit ``a*n^b``), used
   only between the smallest and largest size it has seen, slope clamped to [0, 2];
3. else **the profile, corrected** by the function's own error there: the observed/predicted
   ratio of its nearest trusted cell on that backend, within ``CORRECT_WITHIN`` (64x) the bytes
   (a function 30x slower on the GPU than predicted at one size is not 30x cheaper at the next);
   but above its sizes, where its error there and at a size at least ``TREND_SPAN`` (4x) smaller
   disagree, the profile's curve is not its shape (Python overhead, a cache step it does not
   take) and its own two sizes are **extrapolated** instead, as a fixed cost plus a cost per
   byte, never above the corrected profile (``_own_line``);
4. else, for a host backend (NumPy, the Numba tier), **the profile corrected by the other host
   backend's learned error** at this size (same work, same memory: a function 10x cheaper on NumPy
   than its bytes say is most likely cheaper on the tier too);
5. else the profile.

**The Numba tier is explored too.** A tier not yet compiled for the call's argument types cannot
be tried; where it is uncertain (within ``EXPLORE_WITHIN`` of the best) and the function has run
longer than a compilation takes (``compile_to_explore``), its compilation starts in a background
thread (the caller never waits), and once compiled it is explored like any other backend.

**Exploration with bounded regret.** When the model is uncertain (the best alternative is
predicted within ``EXPLORE_WITHIN`` (4x) of the choice, or the profile is that far wrong for the
choice here: its prediction was corrected, or its learned time is off the profile's by more than
that factor, so the others' predictions are suspect too) and the alternative has not been
measured at this size, one call runs there instead ("exploring"), and again until its cell is
trusted, but only while the exploring calls' charged seconds, plus the predicted seconds of the
next one (its last sample at this size, where it has one), stay within ``EXPLORE_FRACTION`` of
the seconds the function was measured to run in this process (its observed calls, and the
sampled-out calls of a sampled decision, each timed by a ``perf_counter`` pair but not learned
from: ``count_measured``), and no compilation for the Numba tier runs (a call timed meanwhile
teaches nothing; the exploration waits for it to end as for budget). Never predicted seconds: an estimate can be stale (a cell trusted at
3 ms whose calls now take 0.3 ms), and counted at it, untimed calls would let exploring spend
far more than its fraction of the real time (a review of a reverted change: explored at call 14
where the real budget allowed it at call 126). A
cell's first exploring call is charged at most what it was predicted to take, and once the
cell's next exploring call is measured, at most that (``_history.FunctionHistory.add``): its
excess is the one-off cost any move to that backend pays once (CuPy compiling kernels for
these shapes, a solver's workspace), which would otherwise stop exploring for ten times as
long (on the H200 the normal equations at (12658, 79) took 37.9 ms on their first GPU call
and 1.3-1.8 ms after, against 4.2 ms on NumPy: charged in full, the GPU stayed unexplored).
So over any run, exploring costs at most ``EXPLORE_FRACTION`` x the observed time, plus the
one-off excess of each explored cell's first call, plus one exploration's overrun: its call's
misprediction (it may take longer than predicted) and up to ``_history.COLD_DROPS`` calls after
it, back to back without a budget check, where cold samples were dropped
(``SWITCH_COLD_CALLS``). An exploring call that teaches nothing (it raised, or another backend
ran it) is charged all the same and decided again (``_dispatch._State._observed``), and after
``UNTAUGHT_LIMIT`` fallbacks in a row that backend is not explored at that size again. Writes,
results and fallback behave exactly as on any other call: exploring only changes the backend.

**Re-checks.** A trusted cell of a backend not chosen is measured again, as an exploring call
within the same budget, once the function has run ``RECHECK_AFTER`` (100) times its estimate
since that cell's last sample, and only while it is within ``EXPLORE_WITHIN`` of the choice and
the choice takes at least ``RECHECK_MIN_CALL_S`` (100 us): a machine start, another process on
the GPU or a noisy minute can make a few samples wrong, and a trusted cell is otherwise never
measured again (on the H200 the seed article's chain at 1e6 once
settled on the GPU at 1.24 ms while the Numba tier, forced, took 80 us). A re-check that
disagrees with the estimate by more than ``_history.AGREE`` restarts the cell from that sample,
and exploring continues until it is trusted again. A re-check is one call, or
``SWITCH_COLD_CALLS`` + 1 where the first ones after the switch are cold and may hide a win
(``cold_may_hide_a_win``): re-checks of one cell then take at most 3 calls' estimates in each
``RECHECK_AFTER`` of them, plus the cold calls' excess (up to ``COLD_EXCESS_MAX_S`` each). A cell
trusted on its first two samples is re-checked sooner, after ``RECHECK_AFTER_YOUNG`` (10) times
its estimate: a GPU's first calls after seconds of NumPy-only work can run 5x their warm time (on
the H200 without a profile, pairwise_dist at (1000, 16) was trusted on the GPU at 9.1 ms from
calls of 10.1 and 8.2 ms, took 1.7 ms warm, and NumPy's 6.1 ms kept the row at 4.4x for all 34 of
its timed calls, h200-session16/suite-noprofile.run2.json). That re-check gives the cell its third
sample, so it is the only early one until the cell restarts.

**What is observed.** Calls whose decision says ``observe`` (learning is on, the data is on the
host, and the chosen backend is not yet trusted there, or exploration waits for budget there,
or the call runs on a device backend) are timed with a ``perf_counter`` pair around the whole
call. Once the chosen cell is trusted, one call in ``DEVICE_SAMPLE_EVERY`` is learned from; the
others only add their measured seconds to the function's (``count_measured``: two clock reads,
not the history's bookkeeping, which cost ~3.6 us of a 7 us tier call on the H200 while a GPU
exploration waited for budget through every call: percentiles at 1e2, 1.52x, session 13). A device
run on host data ends in the copy out (or a stream synchronization where nothing is copied out),
so the time includes the device work it waited for. Once a bucket is trusted and certain, its
NumPy calls go back to the untimed hot path and the C check, unless another backend contests
the choice (``_contested``: then it is sampled, as on a device). Calls on the untimed hot path
count their predicted seconds only towards what learning waits for that is no exploring (the
tier's compilation, the time of a re-check: ``count_untimed``). Calls on device-resident data
are not timed (that would add a synchronization); their
decisions use the profile.

**Deciding again.** The planner decides a bucket again when an observed call moves its
estimate by ``REVISIT_FACTOR`` (1.5x) in one step, or leaves it that far from what the decision
was made with (a drift of small steps: ``observe``'s ``expected``), when an exploration waiting
there becomes affordable, after an exploring call, and when a wait (the tier's compilation, a
re-check) is met.

``AUTOOFFLOAD_LEARN=0`` turns all of this off: the profile alone decides, as before.
"""

from __future__ import annotations

import atexit
import math
import time
from typing import TYPE_CHECKING, Callable

from . import _config
from ._costmodel import Prediction
from ._history import AGREE, Cell, FunctionHistory, Store, function_key

if TYPE_CHECKING:
    from pathlib import Path

NUMPY_NAME, NUMBA_NAME = "numpy", "numba"  # the two host backends (backends/ would import too much here)
EXPLORE_FRACTION = 0.10  # of a function's observed seconds, at most, spent exploring
# Predictions closer than this factor are uncertain. On the H200 suite a factor of 2 left the
# normal equations at (1265, 79) on a GPU measured at 0.61 ms while NumPy, predicted 2.0 ms by
# the profile (the bytes of a 316x316 solve), took 0.33 ms: a 3.3x misprediction of the
# backend not chosen is only found by trying it.
EXPLORE_WITHIN = 4.0
# Calls predicted below this are not worth compiling the tier for, to explore it or because it is
# predicted faster: its parallel start-up alone is 3-10 us (the shipped profiles' Numba floors),
# a compilation (0.3-1.3 s) would need 10^4-10^5 such calls to pay back, and until it ends their
# calls are timed (+9 us each on the 2-core VM: benchmarks/overhead.py measured 4-6x on 2 us
# functions while the tier compiled for them). Nor is a tier compiled already (by a longer call
# of the function) explored for them (``Learner.exploration``).
TIER_EXPLORE_MIN_CALL_S = 20e-6
# A function's error at one size corrects the profile at sizes at most this many times larger or
# smaller. Farther away the error says little: a tiny call's time is mostly fixed overhead, which
# does not scale with the work (on the 2-core VM, panel_recur's NumPy error of x2.7 at 32 bytes,
# carried to 8 KB, predicted 41 us where it took 10-13, and the tier ran 56 calls at 20-30 us).
# Sizes 10x apart, as a loop over growing inputs or the suite's steps, still inform each other.
CORRECT_WITHIN = 64.0
# ...unless, above its sizes, two of them at least this many times apart had profile errors that
# disagree by more than AGREE: the profile's curve is then not the function's shape, and the
# function's own two sizes are extrapolated instead, as a fixed cost plus a cost per byte (StarPU's
# a + b*n) where they allow one, never above the corrected profile (``_own_line``). On the H200
# the curves have steps (L3, the 300 MiB cache) that a Python loop of small operations does not
# take: without a profile, column_disp took 2.2 ms at 1e5 elements and 5.4 ms at 1e6, and the
# 1e6 error alone predicted NumPy at 158 ms at 1e7, where it took 41 ms (the GPU ran the row at
# 1.57x; h200-session14/suite-noprofile.runC.json); with the shipped profile panel_recur took
# 0.24 / 2.4 ms at 1e4 / 1e5 (x6 / x17 the profile's 0.039 / 0.144 ms: explain() with learning
# off), NumPy was predicted 185 ms at 1e6 and took 25 ms, and the tier ran the row at 53 ms
# (2.15x; h200-session15/suite.run1.json). The two sizes' line predicts ~37 and ~24 ms.
TREND_SPAN = 4.0
REVISIT_FACTOR = 1.5  # an estimate that moved by this factor makes the planner decide again
RECHECK_AFTER = 100.0  # a trusted cell not chosen is measured again after this many times its estimate
RECHECK_AFTER_YOUNG = 10.0  # ...or this many, for a cell trusted on its first two samples (docstring)
# ...for calls predicted at least this long: waiting for a re-check takes a NumPy call off the C
# check's path (+5 us on the 2-core VM: Black-Scholes at 1e2, 24 us, ran 20% slower).
RECHECK_MIN_CALL_S = 100e-6
# A trusted device cell (a contested host choice: _contested; a trusted one whose bucket waits to
# explore) learns from one call in this many: learning from each cost ~10 us of a ~100 us small
# GPU call on the H200 (the history's estimate, its bookkeeping); the others only count the
# seconds a perf_counter pair measured (count_measured).
DEVICE_SAMPLE_EVERY = 8
# A Numba tier call this long after the tier last ran is cold: its threads slept (OpenMP's spin
# ends after ~0.3-1 ms on the 2-core VM: percentiles at 1e2 took 16 us back to back, 17 us after
# 0.3 ms, 41 us after 1 ms, 155 us after 10 ms). Such samples are dropped (_history.COLD_DROPS).
TIER_COLD_AFTER_S = 0.5e-3
# ...but only while it may hide a win: its warm cost, the cold one less the most a wake-up or a
# cache refill adds, could still beat the best other backend's prediction. That excess is up to
# COLD_EXCESS_S whatever the call (155 us cold against 16 us warm after a 10 ms sleep on the
# 2-core VM, 38 against 10 us on the H200), up to COLD_SHARE of a longer call, and never more
# than COLD_EXCESS_MAX_S (the most measured: +650 us on a 1 ms Black-Scholes call right after
# NumPy calls, 2-core VM, session 6), so a long GPU or tier call is not measured twice for it.
# Else the sample is kept: on the H200 without a profile, panel_recur at (2, 2) explored the tier
# 4 times at ~400 us against NumPy's 6 us (row 3.04x NumPy,
# benchmarks/results/h200-noprofile/suite.txt, session 6) before the cold drops ran out.
COLD_EXCESS_S = 0.2e-3
COLD_SHARE = 0.9
COLD_EXCESS_MAX_S = 1e-3
# The first calls on a backend after calls on another (an exploring call, a re-check, the first
# call back) are cold the same way, threads or not: on the 2-core VM the tier's percentiles at
# 1e3 took 34-98 us right after 20 NumPy calls, then 25-47, then 24 (back to back: 24), and a
# NumPy call after tier calls pays alike. Each exploring call being such a call, a backend was
# learned 2-4x slower than it runs once chosen, and the suite kept NumPy at 38 us against the
# tier's 23 (session 6). So the first SWITCH_COLD_CALLS samples in a row are dropped too (same
# rules), and the exploring decision, not revisited, runs the next call there again, back to
# back. With one call dropped the 2-core VM still learned that row's tier at 45-47 us (its second
# call's time) and kept NumPy at 39 us; 0 turns this off.
SWITCH_COLD_CALLS = 2
# Exploring calls of a backend at a size that fell back to NumPy, in a row (a call there that
# teaches resets the count), before that backend is no longer explored or re-checked there: each
# is charged and decided again, and without a limit a GPU that always falls back was explored on
# every tenth call, re-deciding each time (a review: 199 of 2000 calls, 400 decisions). Errors
# of the function's own and streamed runs do not count: they say nothing about the backend.
UNTAUGHT_LIMIT = 2
clock = time.perf_counter  # tests replace it


def history_path() -> Path | None:
    """This machine's history file under the cache dir (one per machine, like its profile)."""
    try:
        from ._profiles import cache_dir, machine_id

        return cache_dir() / f"history-{machine_id()}.json"
    except Exception:  # no usable cache dir: learn in memory only
        return None


STORE = Store(history_path)


def enabled() -> bool:
    try:
        return _config.environment().learn
    except Exception:
        return False


def _bucket_bytes(bucket: tuple[int, int]) -> float:
    """Representative bytes of a (host, device) half-octave bucket: its data location's bytes."""
    b = bucket[0] if bucket[1] < 0 else bucket[1]
    return 2.0 ** (max(b, 0) / 2)


def loglog_fit(points: list[tuple[float, float]], at: float) -> float | None:
    """Seconds at ``at`` bytes from (bytes, seconds) points, or None outside their range."""
    if len({x for x, _ in points}) < 2:
        return None
    xs = [x for x, _ in points]
    if not (min(xs) <= at <= max(xs)):
        return None
    lx = [math.log(x) for x, _ in points]
    ly = [math.log(y) for _, y in points]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx
    slope = min(max(slope, 0.0), 2.0)
    return math.exp(my + slope * (math.log(at) - mx))


def _own_line(near_at: float, nearest: Cell, others: list[tuple[float, Cell]], at: float,
              ceiling: float) -> tuple[float, str] | None:
    """(seconds at ``at`` bytes, above ``near_at``, source) from the function's own two sizes:
    ``nearest`` and the nearest other trusted size at least ``TREND_SPAN`` below it, where their
    profile errors disagree by more than ``_history.AGREE`` (the profile's shape does not fit
    the function); else None. A fixed cost plus a cost per byte (``a + b*n``, a and b >= 0: a
    Python loop's overhead over its work) where the two allow one, else, where the cost grows
    faster than the bytes, a power line (slope at most 2); never above ``ceiling`` (the profile
    corrected by the nearest error), so that a misfit only ever lowers a prediction: a backend
    predicted too low is tried and measured within a few calls, one predicted too high waits for
    exploring's budget (a review: two cells 4x apart, 21% and 20% off a right profile, carried
    as a power line to 32x the bytes, predicted NumPy 3.4x too slow and the GPU ran 29 of 40
    calls 1.6x slower)."""
    near_s, error = nearest.estimate(), nearest.profile_error()
    if near_s is None or error is None or at <= near_at:
        return None
    below = [(b, s, e) for b, c in others if b * TREND_SPAN <= near_at
             and (s := c.estimate()) is not None and (e := c.profile_error())]
    if not below:
        return None
    far_at, far_s, far_error = max(below, key=lambda bse: bse[0])
    if 1 / AGREE < error / far_error < AGREE:
        return None
    per_byte = max((near_s - far_s) / (near_at - far_at), 0.0)
    fixed = near_s - per_byte * near_at
    if fixed >= 0:
        seconds, shape = fixed + per_byte * at, "a fixed cost and a cost per byte"
    else:
        slope = min(math.log(near_s / far_s) / math.log(near_at / far_at), 2.0)
        seconds, shape = near_s * (at / near_at) ** slope, f"growing as bytes^{slope:.2g}"
    if seconds >= ceiling:
        return None
    return (seconds, f"extrapolated from this function's sizes as {shape} (the profile's shape does not "
                     f"fit it: x{far_error:.2g} at {far_at:.3g} B, x{error:.2g} at {near_at:.3g} B)")


def carried(source: str) -> bool:
    """Whether a prediction's source carries it over from other sizes (a profile corrected by an
    error measured elsewhere, or the function's own sizes extrapolated): the least sure kind."""
    return "corrected" in source or "extrapolated" in source


def recheck_after(cell) -> float:
    """How many times its estimate the function runs before a trusted cell not chosen is re-checked."""
    return RECHECK_AFTER_YOUNG if len(cell.samples) < 3 else RECHECK_AFTER


class Learner:
    """One function's learning: adjusted predictions, exploration, observations."""

    def __init__(self, func: Callable):
        self.key = function_key(func)
        self._history: FunctionHistory | None = None
        self.revisit: Callable[[], None] = lambda: None  # the planner's reset, set by _State
        # Whether a compilation for the Numba tier runs now, in any thread (set by _State): a call
        # timed meanwhile teaches nothing (``_dispatch._State._observed``'s ``disturbed``), so no
        # exploration starts then; it waits as for budget (``exploration``).
        self.compiling: Callable[[], bool] = lambda: False
        # Buckets where exploration waits for budget -> the predicted seconds it waits to afford.
        self._pending: dict[tuple[int, int], float] = {}
        self._compile_wait: dict[tuple[int, int], float] = {}  # buckets waiting to afford the tier's compilation
        self._recheck_wait: dict[tuple[int, int], float] = {}  # buckets waiting to re-check a backend not chosen
        self._counted_s = 0.0  # predicted seconds of untimed calls, towards those waits (count_untimed)
        self._untaught: dict[tuple, int] = {}  # (backend, *bucket) -> its exploring calls that taught nothing
        self._measured_s = 0.0  # measured seconds of calls not learned from (count_measured)
        self._left_s = math.inf  # to the nearest wait (a subtraction per call, the sum checked at 0)

    @property
    def history(self) -> FunctionHistory:
        if self._history is None:
            self._history = STORE.function(self.key)  # loads the file at the first use
        return self._history

    # -- predictions ---------------------------------------------------------------------------
    def adjust(self, pred: Prediction, bucket: tuple[int, int]) -> tuple[Prediction, dict[str, str]]:
        """``pred`` with each backend's seconds replaced or corrected by this function's history."""
        history = self.history
        location = "host" if bucket[1] < 0 else "device"
        seconds = dict(pred.seconds)
        parts = {name: dict(p) for name, p in pred.parts.items()}
        sources: dict[str, str] = {}
        for name, predicted in pred.seconds.items():
            if predicted is None:
                continue
            cold = pred.parts.get(name, {}).get("cold_start", 0.0)
            warm = predicted - cold
            cell = history.cell((name, *bucket))
            estimate = cell.estimate() if cell is not None else None
            learned: float | None
            if cell is not None and estimate is not None:
                learned, source = estimate, f"learned from {cell.count} calls"
            else:
                learned, source = self._from_other_sizes(name, location, bucket, warm)
            if learned is None:
                sources[name] = "profile"
                continue
            seconds[name] = learned + cold
            parts[name] = {"learned": learned, **({"cold_start": cold} if cold else {})}
            sources[name] = source
        self._share_host_error(pred, seconds, parts, sources)
        return Prediction(seconds, parts, pred.streamed), sources

    @staticmethod
    def _share_host_error(pred: Prediction, seconds: dict, parts: dict, sources: dict[str, str]) -> None:
        """A host backend still on the profile takes the other host backend's learned error.

        NumPy and the Numba tier do the same work on the same memory, so a function 17x cheaper on
        NumPy than the profile's bytes suggest (a slice of its input used, a kind misread) is most
        likely cheaper on the tier too; without this the tier, predicted from the bytes, would look
        too slow to be worth trying.
        """
        for name, sibling in ((NUMBA_NAME, NUMPY_NAME), (NUMPY_NAME, NUMBA_NAME)):
            if sources.get(name) != "profile" or not sources.get(sibling, "profile").startswith("learned"):
                continue
            was, now, mine = pred.seconds.get(sibling), seconds.get(sibling), pred.seconds.get(name)
            if not was or now is None or mine is None:
                continue
            error = now / was
            seconds[name] = mine * error
            parts[name] = {"corrected": mine * error}
            sources[name] = f"profile, corrected x{error:.2g} by this function's {sibling} history"

    def _from_other_sizes(self, name: str, location: str, bucket, warm: float) -> tuple[float | None, str]:
        cells = self.history.backend_cells(name, location)
        if not cells:
            return None, ""
        at = _bucket_bytes(bucket)
        points = [(_bucket_bytes(k[1:]), estimate) for k, c in cells if (estimate := c.estimate()) is not None]
        fitted = loglog_fit(points, at)
        if fitted is not None:
            return fitted, f"learned from {len(points)} neighbouring sizes"
        key, nearest = min(cells, key=lambda kc: abs(math.log(_bucket_bytes(kc[0][1:]) / at)))
        near_at = _bucket_bytes(key[1:])
        if not 1 / CORRECT_WITHIN <= near_at / at <= CORRECT_WITHIN:
            return None, ""
        error = nearest.profile_error()
        if error is None:
            return None, ""
        own = _own_line(near_at, nearest, [(_bucket_bytes(k[1:]), c) for k, c in cells if k != key], at, warm * error)
        if own is not None:
            return own
        return warm * error, f"profile, corrected x{error:.2g} by this function's history"

    # -- exploring -----------------------------------------------------------------------------
    def exploration(self, pred: Prediction, chosen: str, bucket: tuple[int, int],
                    sources: dict[str, str], profile_s: dict[str, float | None] | None = None) -> str | None:
        """The backend to try for this call instead of ``chosen``, or None (see the docstring).

        Candidates are the other backends in order of prediction, skipping those already trusted
        at this size and a cold GPU; the fastest one left is tried if it is within
        ``EXPLORE_WITHIN`` of the choice (or the profile is that far wrong for the choice:
        ``profile_s``, the profile's own predictions) and the budget allows.
        """
        mine = pred.seconds.get(chosen)
        if mine is None:
            return None
        history = self.history
        corrected = carried(sources.get(chosen, "")) or _far_off(mine, (profile_s or {}).get(chosen))
        for best, other in sorted((s, n) for n, s in pred.seconds.items() if n != chosen and s is not None):
            if pred.parts.get(other, {}).get("cold_start"):
                continue  # a cold GPU is started by the cold-start rule (ski rental), not by exploring
            if other == NUMBA_NAME and mine < TIER_EXPLORE_MIN_CALL_S:
                # a few microseconds to gain a call, against a cold tier call of up to
                # milliseconds (panel_recur at 1e2 on the H200, session 9: 6 us on NumPy, the
                # tier's own column 3.4 ms a call; two explorations made the row 3.4x NumPy)
                continue
            if self._untaught.get((other, *bucket), 0) >= UNTAUGHT_LIMIT:
                continue  # its exploring calls here fell back: see UNTAUGHT_LIMIT
            cell = history.cell((other, *bucket))
            if cell is not None and cell.trusted:
                if not (best <= EXPLORE_WITHIN * mine and self._stale(cell, best)):
                    continue
                # measured long ago and close enough to matter: re-check it (see the docstring)
            elif best > EXPLORE_WITHIN * mine and not corrected and not carried(sources.get(other, "")):
                # the rest are predicted slower still (a prediction carried over from another
                # size's error is no reason to skip: on the 2-core VM, NumPy's 8x error at 1e3
                # elements predicted it 4.2x slower than the tier at 1e4, where it was 1.4x faster)
                break
            # What the next exploring call will cost: its last sample here where it has one (a
            # measurement at this size, if not yet trusted, beats the prediction: the normal
            # equations' GPU at (12658, 79), predicted 12.8 ms, had run in 1.4 ms).
            cost = cell.samples[-1] if cell is not None and cell.samples else best
            if carried(sources.get(other, "")):
                # A prediction carried over from another size is the least sure one, and inflated
                # it would keep the call waiting for budget for long (the 2-core VM's percentiles:
                # NumPy's 13x error at 1e2 elements predicted 4.1 ms at 1e4, where it took 0.13 ms,
                # so it waited for 41 ms of the tier's calls). Costed at most EXPLORE_WITHIN x the
                # choice: if it does take longer, that is the one call's misprediction of the bound.
                cost = min(cost, EXPLORE_WITHIN * mine)
            if self._affordable(cost):
                self._pending.pop(bucket, None)
                return other
            # Keep observing: the budget grows with the observed time, and a compilation ends (an
            # exploring call during one is charged and teaches nothing, by the ``disturbed``
            # rule). Suspected, not yet confirmed by a decision log: on the H200 without a profile
            # percentiles at 1e2 ran 11 GPU calls of up to ~1 ms in the timed rounds of each of two
            # suite runs, against NumPy's 40 us, its GPU cell left with one sample, while the next
            # row waited 3 s for a compilation of the same function (h200-session18, runs 4-5).
            self._pending[bucket] = cost
            return None
        self._pending.pop(bucket, None)
        return None

    def _spent(self) -> float:
        """The function's seconds in this process, towards the waits that are no exploring (the
        tier's compilation, a re-check's time): measured calls, and untimed calls counted at
        their prediction."""
        return self.history.observed_s + self._measured_s + self._counted_s

    def _measured(self) -> float:
        """The function's measured seconds in this process: exploring's budget (never predicted
        seconds: see the module docstring)."""
        return self.history.observed_s + self._measured_s

    def _stale(self, cell, estimate: float) -> bool:
        return self._spent() - cell.stamp >= recheck_after(cell) * estimate

    def recheck_wait(self, pred: Prediction, chosen: str, bucket: tuple[int, int]) -> float:
        """What each call here counts towards the next re-check (0.0: none waits): a trusted
        cell of another backend within ``EXPLORE_WITHIN`` of the choice, not yet stale. Calls
        count their predicted seconds (untimed ones too, as for the tier's compilation), and the
        planner decides again when the nearest re-check is due."""
        mine = pred.seconds.get(chosen)
        due: float | None = None
        if mine and mine >= RECHECK_MIN_CALL_S:
            for name, seconds in pred.seconds.items():
                if name == chosen or seconds is None or seconds > EXPLORE_WITHIN * mine:
                    continue
                if pred.parts.get(name, {}).get("cold_start"):
                    continue  # a cold GPU is not re-checked (exploration() skips it): a due wait would re-decide every call
                cell = self.history.cell((name, *bucket))
                if cell is None or not cell.trusted or self._untaught.get((name, *bucket), 0) >= UNTAUGHT_LIMIT:
                    continue  # (at the limit exploration() skips it: a due wait would re-decide every call)
                at = cell.stamp + recheck_after(cell) * seconds
                due = at if due is None else min(due, at)
        if due is None or not mine or bucket in self._pending:
            # (Pending: the re-check is due and waits for exploring's budget, which its own test
            # revisits when met; a due wait here would re-decide every call until then: a review
            # found 398 decisions in 400 calls.)
            self._recheck_wait.pop(bucket, None)
            return 0.0
        self._recheck_wait[bucket] = due
        self._left_s = self._next_wait() - self._spent()
        return mine

    def compile_to_explore(self, pred: Prediction, bucket: tuple[int, int], compile_s: float) -> tuple[bool, float]:
        """Whether to compile the Numba tier in the background so that it can be explored here;
        and, where it waits for its budget, what each call here counts towards it.

        Yes where its prediction is within ``EXPLORE_WITHIN`` of the best backend's, it has no
        trusted cell at this size, and the function has run at least ``compile_s`` (measured
        calls plus the untimed calls counted by ``count_untimed``), so a compilation, on
        another thread, costs the machine no more than the function's own time so far: short
        scripts never pay for one. Waiting adds no timing to the calls (a 5 us function timed
        on every call ran 5x slower on the H200): each counts its predicted seconds instead.
        """
        tier_s = pred.seconds.get("numba")
        others = [s for n, s in pred.seconds.items() if n != "numba" and s is not None]
        cell = self.history.cell(("numba", *bucket))
        if (tier_s is None or not others or tier_s > EXPLORE_WITHIN * min(others) or min(others) < TIER_EXPLORE_MIN_CALL_S
                or (cell is not None and cell.trusted)):
            self._compile_wait.pop(bucket, None)
            return False, 0.0
        if self._spent() >= compile_s:
            self._compile_wait.pop(bucket, None)
            return True, 0.0
        self._compile_wait[bucket] = compile_s
        self._left_s = self._next_wait() - self._spent()
        return False, min(others)

    def waits_to_compile(self, bucket: tuple[int, int]) -> bool:
        """Whether calls at ``bucket`` wait to afford the tier's compilation, to explore it there
        (``compile_to_explore``): learning there is not done."""
        return bucket in self._compile_wait

    def _next_wait(self) -> float:
        return min((*self._compile_wait.values(), *self._recheck_wait.values()), default=0.0)

    def unlearned(self, seconds: float, exploring: bool, untaught: tuple | None = None) -> bool:
        """A timed call that teaches nothing (a compilation held the interpreter meanwhile, it
        raised, another backend ran it): its seconds count towards the function's, an exploring
        one's towards exploring too; True where the planner must decide again (an exploring
        decision must not stand uncharged). ``untaught``: (backend, bucket) of an exploring call
        that fell back, counted against exploring that backend there (``UNTAUGHT_LIMIT``) until
        a call there teaches."""
        if untaught is not None:
            key = (untaught[0], *untaught[1])
            self._untaught[key] = self._untaught.get(key, 0) + 1
        if exploring:
            self.history.charge_exploring(seconds)
        self._measured_s += seconds
        return self._towards_waits(seconds) or exploring

    def measure_afresh(self, backend: str, bucket: tuple[int, int]) -> None:
        """Forget the samples of ``backend`` in ``bucket`` (kept: its count): the backend changed
        how it runs such calls in a call that taught nothing (the Numba tier's preferred build,
        ``backends/_numba_threads.py``); the next calls measure it again."""
        self.history.forget_samples((backend, *bucket))

    def count_untimed(self, seconds: float) -> bool:
        """One untimed call's predicted ``seconds``, towards the waits that are no exploring;
        True once one is met (a compilation of the tier, a re-check's time: then the planner
        decides again). Timed calls count their measured seconds instead, never both."""
        self._counted_s += seconds
        return self._towards_waits(seconds)

    def count_measured(self, seconds: float, bucket: tuple[int, int]) -> bool:
        """One sampled-out call's measured ``seconds`` (timed, not learned from); True where the
        planner must decide again: a wait is met, or the exploration waiting at this call's own
        bucket became affordable (at another bucket it would re-decide calls whose decision
        cannot explore it)."""
        self._measured_s += seconds
        need = self._pending.get(bucket)
        if need is not None and self._affordable(need):
            self._left_s -= seconds
            return True
        return self._towards_waits(seconds)

    def _affordable(self, need: float) -> bool:
        """Whether an exploration waiting to spend ``need`` seconds may run now: within
        ``EXPLORE_FRACTION`` of the measured time, and no compilation runs (``compiling``)."""
        return self.history.explored_s + need <= EXPLORE_FRACTION * self._measured() and not self.compiling()

    def _towards_waits(self, seconds: float) -> bool:
        """``seconds`` more of the function's towards the nearest wait; whether one is met (and dropped)."""
        self._left_s -= seconds
        return self._left_s <= 0 and self._waits_due()

    def _waits_due(self) -> bool:
        """Drop the waits whose time has come; whether there were any."""
        spent = self._spent()
        ready = 0
        for waits in (self._compile_wait, self._recheck_wait):
            # a copy of the items: another thread's call may add a wait meanwhile
            for b, need in list(waits.items()):
                if spent >= need and waits.pop(b, None) is not None:
                    ready += 1
        self._left_s = self._next_wait() - spent if (self._compile_wait or self._recheck_wait) else math.inf
        return bool(ready)

    def observation_interval(self, chosen: str, bucket: tuple[int, int], on_device_backend: bool,
                             pred: Prediction | None = None) -> int:
        """Every how many calls of ``chosen`` here one is learned from (the others only count
        their measured seconds: ``count_measured``): 1 while its cell is not trusted;
        ``DEVICE_SAMPLE_EVERY`` once trusted where exploration waits here for budget (its calls
        must be measured for the budget to grow), on a device backend (its calls are off the C
        check anyway, and the samples keep the estimate current), and on a host backend whose
        choice is contested (``_contested``: another backend of ``pred`` within
        ``EXPLORE_WITHIN``, calls of at least ``RECHECK_MIN_CALL_S``); else 0 (not timed: the
        NumPy call goes back to the C check)."""
        cell = self.history.cell((chosen, *bucket))
        if cell is None or not cell.trusted:
            return 1
        if (bucket in self._pending or on_device_backend
                or (pred is not None and _contested(pred, chosen, cell.estimate()))):
            return DEVICE_SAMPLE_EVERY
        return 0

    # -- observing -----------------------------------------------------------------------------
    def observe(self, backend: str, bucket: tuple[int, int], seconds: float, predicted: float | None,
                *, exploring: bool, expected: float | None = None, cold: bool = False, fresh: bool = False) -> None:
        """One call's observed seconds; the planner decides again where that may change its answer.

        ``expected``: what the decision predicted this call to take (an exploring call's charge,
        for the first call of its cell, is capped there: see the module docstring). ``fresh``:
        the backend changed how it runs such calls during this one (the Numba tier's preferred
        build, ``backends/_numba_threads.py``): the cell starts afresh from this sample (from the
        next one, if this one is cold and dropped)."""
        history = self.history
        cell = history.cell((backend, *bucket))
        before = cell.estimate() if cell is not None else None
        cell = history.add((backend, *bucket), seconds, predicted, exploring=exploring, expected=expected, cold=cold)
        if not cell.last_kept:
            if fresh:
                history.forget_samples((backend, *bucket))  # the old samples are another way of running
            self._left_s -= seconds  # a cold sample, dropped: the cell stays as it was, and due
            return  # (a re-check of the tier is cold almost by construction: the next call explores again)
        cell.stamp = self._spent()
        self._untaught.pop((backend, *bucket), None)  # it ran here to the end: its fallbacks were not the rule
        if fresh or (exploring and before is not None and not (1 / AGREE < seconds / before < AGREE)):
            cell.restart(seconds)  # a re-check that disagrees, or the backend's new way of running: measure afresh
        STORE.observed()
        after = cell.estimate()
        moved = after is not None and (before is None or not (1 / REVISIT_FACTOR < after / before < REVISIT_FACTOR))
        # ...or drifted, sample by sample, that far from what the decision was made with: each
        # sample moves a median a little, and a choice kept while its estimate drifts keeps what
        # it was decided with (on the H200, session 18 runs 4-5: rolling_vol at 100 elements,
        # decided on NumPy at ~25 us with the tier's exploration waiting for budget, stayed so for
        # 8000 calls of 14 us, each timed off the C check: 1.45x NumPy's own column).
        drifted = (not exploring and after is not None and expected is not None and expected > 0
                   and not (1 / REVISIT_FACTOR < after / expected < REVISIT_FACTOR))
        # Exactly the test exploration() makes: a looser one re-decided every call while the
        # budget sat between the two (+100-400 us a call on the H200: the in-place chain at 1e5
        # ran 5x slower than the Numba tier it had chosen).
        need = self._pending.get(bucket)
        affordable = need is not None and self._affordable(need)
        self._left_s -= seconds
        due = self._left_s <= 0 and self._waits_due()
        if moved or drifted or affordable or exploring or due:
            self.revisit()


def cold_may_hide_a_win(seconds: float, predicted_s: dict[str, float | None], backend: str) -> bool:
    """Whether a cold call of ``backend`` that took ``seconds`` could be a winner warm: the least
    it may cost warm (less ``COLD_EXCESS_S``, or ``COLD_SHARE`` of it, at most
    ``COLD_EXCESS_MAX_S``) is below every other backend's prediction (True when there is none)."""
    others = [s for b, s in predicted_s.items() if b != backend and s]
    excess = min(COLD_EXCESS_MAX_S, max(COLD_EXCESS_S, COLD_SHARE * seconds))
    return not others or seconds - excess < min(others)


def _contested(pred: Prediction, chosen: str, mine: float | None) -> bool:
    """Whether a host backend's trusted choice should keep being sampled: another backend is
    predicted within ``EXPLORE_WITHIN`` of it, and its calls take at least ``RECHECK_MIN_CALL_S``.
    Its NumPy calls would otherwise go back to the C check untimed, and its estimate stay what it
    was when trusted: on the H200 (suite without a profile, bessel at 1e2) NumPy's stayed at
    182 us while NumPy's own column took 220-330 us later in the run, and 728 of 1103 timed calls
    ran on NumPy against a GPU path of ~200 us. It is sampled as on a device
    (``observation_interval``)."""
    if mine is None or mine < RECHECK_MIN_CALL_S:
        return False
    return any(name != chosen and seconds is not None and seconds <= EXPLORE_WITHIN * mine
               for name, seconds in pred.seconds.items())


def _far_off(learned: float | None, profile: float | None) -> bool:
    """Whether a learned time is more than ``EXPLORE_WITHIN`` off the profile's prediction."""
    if not learned or not profile:
        return False
    return not (1 / EXPLORE_WITHIN <= learned / profile <= EXPLORE_WITHIN)


def reset_for_tests(path_for: Callable[[], Path | None] = history_path) -> None:
    """A fresh in-process store (tests: each gets its own cache dir)."""
    global STORE
    atexit.unregister(STORE.save)
    STORE = Store(path_for)

