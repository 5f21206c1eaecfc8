"""The copy engine's tuning for this machine: measured, not assumed (``autooffload calibrate``).

Why: the engine's knobs (``_transfer._Tuning``) were tuned by hand on the H100 machine, where
16 threads copied pageable<->pinned at ~40 GB/s. On the H200 machine the same knobs moved 1 GiB
at 18 / 16 GB/s against a 55 GB/s link, and machine starts of that kind differ up to ~3x in host
memory speed (threaded ``np.copyto`` of 1 GiB at 2-4 GB/s on one start). No fixed thread count,
chunk size or path threshold fits every machine, so calibration searches them here and the
profile keeps what won (``BackendTiming.copy_tuning``); ``_profiles.resolve`` hands it to the
engine (``_transfer.apply_tuning``).

What is searched, in a bounded time (the quick plan a few seconds, the default one ~30 s):

1. the host bound: memcpy pageable -> pinned and pinned -> pageable (warm and fresh pages) by
   thread count (``host_bound``): the staged paths cannot beat it, and it picks the threads;
2. at the largest size: the worker pipeline's chunk size and thread count, the staged path's
   piece size, and pinning the caller's buffer in place (``cudaHostRegister``, whole or in
   pieces) instead of staging; where the staged path wins, the workers keep their own best
   chunk (``worker_chunk_bytes``) for the sizes they still take;
3. by size (4 MiB .. 1 GiB, 4 GiB in the default plan): each path (the driver's own copy, the
   staged path, the workers, pinning in place), both directions; then the size ranges of each
   path that lose least over the grid (``choose_ranges``, exhaustive over the grid's cuts);
4. non-temporal stores for the staged path's host copies, per direction;
5. the parts a thread takes of a staged piece's host copy (``parts_per_thread``: 4 or 1);
6. from which size an array copied again is pinned in place and kept so, and after how many
   copies (``_pin_reuse_choice``: what pinning costs over what a pinned copy saves, at 1, 4 and
   16 MiB; pinned at the copy whose worst case against the least any rule could cost is least).

Every candidate is timed on the real engine, warm (one untimed call), median of a few calls,
with the defaults measured in the same search, so the stored rates say what the tuning gained.
The engine, clock and memory are injected (``Engine``), so the search runs on a fake in tests.
Nothing here imports CuPy or pydantic: ``gpu_engine()`` imports CuPy when called.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

KiB, MiB, GiB = 1024, 1024**2, 1024**3
HUGE = 1 << 50  # a threshold no array reaches
PATHS = ("direct", "staged", "workers", "register")


def _cut(lo: int, hi: int) -> int:
    """A threshold between two grid sizes: their geometric mean, rounded to 64 KiB."""
    return max(64 * KiB, int(math.sqrt(lo * hi)) // (64 * KiB) * (64 * KiB))


def path_knobs(path: str) -> dict[str, int]:
    """Knobs that send every contiguous array of a measured size down one path."""
    if path == "direct":
        return dict(h2d_direct_max=HUGE, d2h_direct_max=HUGE, staged_max=0, h2d_register_min=0, d2h_register_min=0)
    if path == "staged":
        return dict(staged_min=0, staged_max=HUGE, h2d_register_min=0, d2h_register_min=0)
    if path == "workers":
        return dict(h2d_direct_max=0, d2h_direct_max=0, small_bytes=0, staged_max=0, h2d_register_min=0, d2h_register_min=0)
    if path == "register":
        return dict(h2d_register_min=1, d2h_register_min=1)
    raise ValueError(f"unknown copy path {path!r}; expected one of {PATHS}")


def choose_ranges(sizes: Sequence[int], times: Mapping[str, Mapping[str, Sequence[float | None]]]) -> dict[str, int]:
    """Path thresholds that lose least over the measured grid.

    ``times[direction][path][i]``: seconds at ``sizes[i]`` (None: not measured), direction
    "h2d" or "d2h", path one of PATHS. The engine's rules: a contiguous array of n bytes is
    pinned in place when n >= ``{dir}_register_min`` (0: never), else staged when
    staged_min < n <= staged_max (shared by both directions), else copied by the driver when
    n <= ``{dir}_direct_max``, else by the workers. Cuts lie between grid sizes (geometric
    mean); the score is the sum over sizes and directions of log(chosen time / best time), so
    every size counts alike. Exhaustive: a grid of k sizes has (k+1)^2 staged ranges, each with
    (k+1)^2 direct/register cuts per direction.
    """
    k = len(sizes)
    if k == 0:
        raise ValueError("choose_ranges needs at least one size")
    cuts = [0] + [_cut(sizes[i], sizes[i + 1]) for i in range(k - 1)] + [HUGE]  # cut j: below sizes[j]

    def t(d: str, p: str, i: int) -> float:
        v = times.get(d, {}).get(p)
        x = v[i] if v is not None and i < len(v) else None
        return math.inf if x is None or x <= 0 else float(x)

    best = {d: [min(t(d, p, i) for p in PATHS) for i in range(k)] for d in ("h2d", "d2h")}

    def loss(d: str, p: str, i: int) -> float:
        return math.log(t(d, p, i) / best[d][i]) if math.isfinite(best[d][i]) else 0.0

    choice: dict[str, int] = {}
    best_score = math.inf
    for a in range(k + 1):  # staged for sizes[a:b]
        for b in range(a, k + 1):
            staged_min, staged_max = (cuts[a], cuts[b]) if b > a else (0, 0)
            score, per_dir = 0.0, {}
            for d in ("h2d", "d2h"):
                best_d = (math.inf, 0, 0)
                for r in range(k + 1):  # register for sizes[r:]
                    for c in range(k + 1):  # direct for sizes[:c] outside the staged range
                        s = 0.0
                        for i in range(k):
                            if i >= r:
                                p = "register"
                            elif a <= i < b:
                                p = "staged"
                            elif i < c:
                                p = "direct"
                            else:
                                p = "workers"
                            s += loss(d, p, i)
                        if s < best_d[0] - 1e-12:
                            best_d = (s, r, c)
                score += best_d[0]
                per_dir[d] = best_d
            if score < best_score - 1e-12:
                best_score = score
                choice = {"staged_min": staged_min, "staged_max": staged_max}
                for d, (_, r, c) in per_dir.items():
                    choice[f"{d}_register_min"] = 0 if r == k else max(1, cuts[r])
                    choice[f"{d}_direct_max"] = cuts[c]
    return choice


# ---------------------------------------------------------------------------------------------
# What the search needs of the engine (a fake in tests)
# ---------------------------------------------------------------------------------------------
@dataclass
class Engine:
    to_device: Callable[[np.ndarray], Any]
    to_host: Callable[[Any], np.ndarray]
    sync: Callable[[], None]
    configure: Callable[[dict[str, int]], None]  # tuning = defaults + these knobs
    defaults: Callable[[], dict[str, int]]  # today's default knobs on this machine
    cores: int
    # Host bound: (dst address, src address, nbytes, threads) memcpy; None: np.copyto threads
    memcpy: Callable[[int, int, int, int], None] | None = None
    alloc_pinned: Callable[[int], tuple[np.ndarray, Callable[[], None]]] | None = None  # (uint8 array, free)
    dma: Callable[[Any, np.ndarray, str], None] | None = None  # pinned DMA (device array, pinned array, "h2d"/"d2h")
    release_device: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.perf_counter


@dataclass(frozen=True)
class SearchPlan:
    name: str
    sizes: tuple[int, ...]  # the threshold grid
    big: int  # where the worker and pinning knobs are chosen
    chunks: tuple[int, ...]
    register_chunks: tuple[int, ...]
    host_bound_bytes: int
    reps: int
    budget_s: float

    @classmethod
    def quick(cls) -> "SearchPlan":
        return cls("quick", (4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB, 1 * GiB), 1 * GiB, (8 * MiB, 32 * MiB),
                   (0, 64 * MiB), 256 * MiB, 2, 12.0)

    @classmethod
    def default(cls) -> "SearchPlan":
        return cls("default", (4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB, 128 * MiB, 256 * MiB, 1 * GiB, 4 * GiB),
                   1 * GiB, (4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB), (0, 16 * MiB, 64 * MiB, 256 * MiB), 1 * GiB, 3, 60.0)

    def capped(self, max_bytes: int) -> "SearchPlan":
        """The plan within ``max_bytes`` per array (free host and device memory)."""
        sizes = tuple(s for s in self.sizes if s <= max_bytes) or (min(self.sizes),)
        return SearchPlan(self.name, sizes, min(self.big, sizes[-1]), self.chunks, self.register_chunks,
                          min(self.host_bound_bytes, max_bytes), self.reps, self.budget_s)


@dataclass
class SearchResult:
    knobs: dict[str, int]  # what differs from the defaults is what matters; all are stored
    rates: list[dict[str, float]]  # per size: tuned and default GB/s each way (same search)
    host_bound: dict[str, Any]
    pinned_GBps: dict[str, float]
    seconds: float
    log: list[str] = field(default_factory=list)


def _best_s(fn: Callable[[], Any], sync: Callable[[], None], reps: int, clock: Callable[[], float]) -> float:
    """Fastest of ``reps`` synchronized calls after one untimed call. The fastest, not the
    median: with 2-3 calls a median still takes in a stall of the VM (the first quick search on
    the H200 machine timed the workers at 64 MiB at 3.6 GB/s in, against 23 for its neighbours),
    and interference only ever adds time."""
    fn()
    sync()
    best = math.inf
    for _ in range(max(1, reps)):
        t0 = clock()
        fn()
        sync()
        best = min(best, clock() - t0)
    return max(best, 1e-9)


def host_bound(engine: Engine, nbytes: int, threads: Sequence[int] | None = None, reps: int = 2) -> dict[str, Any]:
    """GB/s of host memcpy by thread count: pageable -> pinned ("to_pinned"), pinned -> warm
    pageable ("from_pinned"), pinned -> fresh pageable ("from_pinned_fresh", a new array each
    time: its pages fault on first touch). Uses the engine's native copy pool when given (what
    the staged path uses), else np.copyto over Python threads. ``best``: the highest of each.
    """
    clock = engine.clock
    threads = [k for k in (threads or (1, 2, 4, 8, 12, 16)) if k <= max(1, engine.cores)] or [1]
    n = max(4096, nbytes // 8 * 8)
    src = np.resize(np.arange(4099, dtype=np.float64) + 1.5, n // 8).view(np.uint8)
    warm = np.ones(n, np.uint8)
    if engine.alloc_pinned is not None:
        pinned, free = engine.alloc_pinned(n)
    else:
        pinned, free = np.ones(n, np.uint8), (lambda: None)
    out: dict[str, Any] = {"nbytes": n, "by_threads": {}}
    try:
        pinned[...] = 1
        for k in threads:
            def copy(dst: np.ndarray, s: np.ndarray, k: int = k) -> None:
                if engine.memcpy is not None:
                    engine.memcpy(dst.ctypes.data, s.ctypes.data, n, k)
                else:
                    _threaded_copyto(dst, s, k)

            row = {
                "to_pinned": n / _best_s(lambda: copy(pinned, src), lambda: None, reps, clock) / 1e9,
                "from_pinned": n / _best_s(lambda: copy(warm, pinned), lambda: None, reps, clock) / 1e9,
                "from_pinned_fresh": n / _best_s(lambda: copy(np.empty(n, np.uint8), pinned), lambda: None, reps, clock) / 1e9,
            }
            out["by_threads"][str(k)] = row
    finally:
        free()
    rows = out["by_threads"]
    out["best"] = {d: max(r[d] for r in rows.values()) for d in ("to_pinned", "from_pinned", "from_pinned_fresh")}
    # Fewest threads within 5% of the best both ways (the H200 machine: 8 threads copied into
    # pinned memory as fast as 16, 35 GB/s, but out of it at 24 against 37).
    out["threads"] = min((int(k) for k, r in rows.items()
                          if all(r[d] >= 0.95 * out["best"][d] for d in ("to_pinned", "from_pinned"))),
                         default=max(int(k) for k in rows))
    return out


def _threaded_copyto(dst: np.ndarray, src: np.ndarray, k: int) -> None:
    if k <= 1:
        np.copyto(dst, src)
        return
    import threading

    bounds = np.linspace(0, dst.size, k + 1).astype(int)
    ths = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in zip(bounds, bounds[1:])]
    for th in ths:
        th.start()
    for th in ths:
        th.join()


def search(engine: Engine, plan: SearchPlan, progress: Callable[[str], None] | None = None) -> SearchResult:
    """Search the engine's knobs for this machine; leaves the engine on the defaults.

    Bounded by ``plan.budget_s``, give or take a step: the steps run in order of what they are
    worth (host bound, the large-array knobs, the size ranges, non-temporal stores); once the
    budget is spent the remaining candidates are skipped and the best so far is kept (the log says
    what was skipped); the non-temporal stores and the check against the defaults always get a
    slice (up to ~0.1 of the budget, and the check's own copies) after the ranges.
    """
    clock, say = engine.clock, (progress or (lambda s: None))
    start = clock()
    log: list[str] = []
    defaults = dict(engine.defaults())
    rng = np.random.default_rng(20261201)
    data: dict[int, np.ndarray] = {}
    dev: dict[int, Any] = {}

    def over_budget() -> bool:
        # The last fifth is kept for the check against the defaults, which always runs.
        return clock() - start > 0.8 * plan.budget_s

    def arrays(n: int) -> tuple[np.ndarray, Any]:
        if n not in data:
            block = rng.random(min(n // 8, MiB // 8 + 4099)) + 0.5
            data[n] = np.resize(block, n // 8)
            dev[n] = engine.to_device(data[n])
            engine.sync()
        return data[n], dev[n]

    def timed(knobs: dict[str, int], n: int, direction: str) -> float:
        engine.configure(knobs)
        h, d = arrays(n)
        fn = (lambda: engine.to_device(h)) if direction == "h2d" else (lambda: engine.to_host(d))
        return _best_s(fn, engine.sync, plan.reps, clock)

    try:
        # 1. The host bound and the pinned limit.
        say("host memcpy by threads")
        bound = host_bound(engine, plan.host_bound_bytes, reps=plan.reps)
        threads = bound["threads"]
        log.append(f"host bound at {plan.host_bound_bytes // MiB} MiB: {_fmt_bound(bound)}; threads {threads}")
        pinned: dict[str, float] = {}
        if engine.dma is not None and engine.alloc_pinned is not None:
            h, d = arrays(plan.big)
            buf, free = engine.alloc_pinned(h.nbytes)
            try:
                for direction in ("h2d", "d2h"):
                    dma = engine.dma
                    pinned[direction] = h.nbytes / _best_s(lambda: dma(d, buf, direction), engine.sync, plan.reps, clock) / 1e9
            finally:
                free()

        # 2. The large-array knobs: workers (threads x chunk), staged, pinning in place.
        say(f"knobs at {plan.big // MiB} MiB")
        thread_options = sorted({threads, max(1, min(16, engine.cores))})
        candidates: list[tuple[str, dict[str, int]]] = [("defaults", {})]
        for k in thread_options:
            for c in plan.chunks:
                candidates.append((f"workers {k} threads, {c // MiB} MiB chunks",
                                   {**path_knobs("workers"), "threads": k, "chunk_bytes": c, "min_chunk_bytes": min(c, 4 * MiB), "max_buffers": k + 4}))
        for k in thread_options:
            for c in plan.chunks:
                candidates.append((f"staged {k} threads, {c // MiB} MiB pieces",
                                   {**path_knobs("staged"), "threads": k, "chunk_bytes": c, "min_chunk_bytes": min(c, 4 * MiB), "max_buffers": k + 4}))
        for rc in plan.register_chunks:
            candidates.append((f"pinned in place, {'whole' if rc == 0 else f'{rc // MiB} MiB pieces'}",
                               {**path_knobs("register"), "register_chunk_bytes": rc}))
        big_s: dict[str, dict[str, float]] = {"h2d": {}, "d2h": {}}
        for name, knobs in candidates:
            if over_budget():
                log.append(f"budget spent: skipped {name} and later candidates")
                break
            for direction in ("h2d", "d2h"):
                try:
                    big_s[direction][name] = timed(knobs, plan.big, direction)
                except Exception as e:  # noqa: BLE001 - a candidate that fails is not chosen
                    log.append(f"{name} {direction} failed: {type(e).__name__}: {e}")
        cand = dict(candidates)
        mb = plan.big / 1e9
        for direction in ("h2d", "d2h"):
            log.append(f"{direction} at {plan.big // MiB} MiB: " + ", ".join(
                f"{n} {mb / s:.1f}" for n, s in sorted(big_s[direction].items(), key=lambda kv: kv[1])))
        # Worker/staged knobs (shared by both directions): the best sum of times.
        both = {n: big_s["h2d"][n] + big_s["d2h"][n] for n in big_s["h2d"] if n in big_s["d2h"]
                and (n.startswith("workers") or n.startswith("staged"))}
        base = dict(defaults)
        if both:
            best_name = min(both, key=lambda n: both[n])
            base.update({k: v for k, v in cand[best_name].items() if k in ("threads", "chunk_bytes", "min_chunk_bytes", "max_buffers")})
            log.append(f"worker/staged knobs from: {best_name}")
            # The buffers' size suits the path that won; the workers, which still take sizes
            # outside the staged range, keep their own best chunk where it is smaller.
            workers = {n: t for n, t in both.items() if n.startswith("workers")}
            if workers and not best_name.startswith("workers"):
                chunk = cand[min(workers, key=lambda n: workers[n])]["chunk_bytes"]
                if chunk < base["chunk_bytes"]:
                    base["worker_chunk_bytes"] = chunk
                    log.append(f"workers' chunk: {chunk // MiB} MiB")
        regs = {n: big_s["h2d"].get(n, math.inf) + big_s["d2h"].get(n, math.inf) for n in big_s["h2d"] if n.startswith("pinned")}
        if regs:
            base["register_chunk_bytes"] = cand[min(regs, key=lambda n: regs[n])]["register_chunk_bytes"]

        # 3. The size ranges of each path, with those knobs.
        say("paths by size")
        times: dict[str, dict[str, list[float | None]]] = {d: {p: [None] * len(plan.sizes) for p in PATHS} for d in ("h2d", "d2h")}
        for i, n in enumerate(plan.sizes):
            for p in PATHS:
                if over_budget():
                    break
                for direction in ("h2d", "d2h"):
                    try:
                        times[direction][p][i] = timed({**base, **path_knobs(p)}, n, direction)
                    except Exception as e:  # noqa: BLE001
                        log.append(f"{p} {direction} at {n // MiB} MiB failed: {type(e).__name__}: {e}")
            if over_budget():
                log.append(f"budget spent at {n // MiB} MiB: larger sizes keep today's ranges")
                break
        measured = [i for i in range(len(plan.sizes)) if any(times[d][p][i] is not None for d in times for p in PATHS)]
        knobs = dict(base)
        if measured:
            sizes = [plan.sizes[i] for i in measured]
            sub = {d: {p: [times[d][p][i] for i in measured] for p in PATHS} for d in times}
            knobs.update(choose_ranges(sizes, sub))
            for i, n in zip(measured, sizes):
                log.append(f"{n // MiB} MiB GB/s in/out: " + ", ".join(
                    f"{p} {_rate(n, times['h2d'][p][i])}/{_rate(n, times['d2h'][p][i])}" for p in PATHS))
        # 4. Non-temporal stores for the staged path's host copies, per direction, where the
        # chosen ranges stage (see _transfer._Tuning.h2d_nontemporal): on the H200 they made
        # first copies in 11-15% faster at 64-256 MiB and were even at 1 GiB, while out they
        # were 19% slower at 64 MiB and 9-13% faster at 128-256 MiB (staged-probe, session 9).
        # It has at least a slice of its own (a tenth of the budget), as the check against the
        # defaults does: the ranges' step ended past the budget's 0.8 on the H200 (quick search:
        # 14.7 s of 12) and left it no time at all; where that step ended early, it may use the
        # rest of the budget's 0.8.
        deadline = max(start + 0.8 * plan.budget_s, clock() + 0.1 * plan.budget_s)
        knobs.update(_nontemporal_choice(knobs, plan, timed, lambda: clock() > deadline, log))
        # 5. Parts a thread takes of a staged piece (_transfer._Tuning.parts_per_thread), on the
        # stores just chosen, with a slice of its own as the step before.
        deadline = max(start + 0.85 * plan.budget_s, clock() + 0.05 * plan.budget_s)
        knobs.update(_parts_choice(knobs, plan, timed, lambda: clock() > deadline, log))
        # 5b. Whether the native pool's threads spin between a staged copy's pieces, likewise.
        deadline = max(start + 0.9 * plan.budget_s, clock() + 0.05 * plan.budget_s)
        knobs.update(_spin_choice(knobs, plan, timed, lambda: clock() > deadline, log))
        # Only worth it where it beats the defaults: else keep them (a noisy search must not
        # leave the engine worse than the hand tuning).
        say("tuned against defaults")
        log.append("chosen: " + ", ".join(f"{k}={v}" for k, v in sorted(knobs.items()) if defaults.get(k) != v))
        rates: list[dict[str, float]] = []
        gain = 0.0
        for n in plan.sizes:
            row: dict[str, float] = {"nbytes": float(n)}
            for direction in ("h2d", "d2h"):
                # Interleaved, so a drift of the machine hits both alike.
                td, tt = [], []
                for _ in range(2):
                    tt.append(timed(knobs, n, direction))
                    td.append(timed({}, n, direction))
                row[f"{direction}_GBps"] = n / min(tt) / 1e9
                row[f"default_{direction}_GBps"] = n / min(td) / 1e9
                gain += math.log(min(td) / min(tt))
            rates.append(row)
            log.append(f"{n // MiB} MiB tuned / defaults GB/s: in {row['h2d_GBps']:.1f} / {row['default_h2d_GBps']:.1f}, "
                       f"out {row['d2h_GBps']:.1f} / {row['default_d2h_GBps']:.1f}")
        if gain < 0:
            log.append(f"the search's tuning was slower than the defaults overall (log gain {gain:.3f}): keeping the defaults")
            knobs = dict(defaults)
            for row in rates:
                row["h2d_GBps"], row["d2h_GBps"] = row["default_h2d_GBps"], row["default_d2h_GBps"]
        # 6. From which size an array copied again is pinned in place (and a kept result when
        # handed out again), and after how many copies: against the first copies of the knobs
        # kept. After the check above, which times first copies only
        # and so cannot weigh it; in a slice of its own, as steps 4 and 5's.
        if engine.dma is not None and engine.alloc_pinned is not None:
            say("pinning on reuse")
            pin_deadline = clock() + 0.1 * plan.budget_s
            knobs.update(_pin_reuse_choice(knobs, engine, arrays, timed, plan, lambda: clock() > pin_deadline, log))
        return SearchResult(knobs={k: int(v) for k, v in knobs.items()}, rates=rates, host_bound=bound,
                            pinned_GBps=pinned, seconds=clock() - start, log=log)
    finally:
        engine.configure({})
        data.clear()
        dev.clear()
        engine.release_device()


def path_of(knobs: Mapping[str, int], n: int, direction: str) -> str:
    """The engine's path for a contiguous array of ``n`` bytes under ``knobs`` (all of them), as
    ``_transfer._h2d_path`` / ``_d2h_path`` choose it."""
    register_min = knobs[f"{direction}_register_min"]
    if register_min and n >= register_min:
        return "register"
    if knobs["staged_min"] < n <= knobs["staged_max"]:
        return "staged"
    return "direct" if n <= knobs[f"{direction}_direct_max"] else "workers"


def _nontemporal_choice(knobs: dict[str, int], plan: SearchPlan, timed: Callable[[dict[str, int], int, str], float],
                        over_budget: Callable[[], bool], log: list[str]) -> dict[str, int]:
    """``h2d_nontemporal`` / ``d2h_nontemporal`` on where, over the sizes ``knobs`` sends down the
    staged path in that direction, streaming stores took less time in total (``_staged_choice``)."""
    return _staged_choice(knobs, plan, timed, over_budget, log, {"h2d": "h2d_nontemporal", "d2h": "d2h_nontemporal"},
                          (0, 1), "non-temporal stores")


# Parts a native thread takes of a staged piece's host copy, weighed against one each: on the
# H200, 4 made staged first copies 2-14% faster at 64 MiB-4 GiB in two interleaved runs
# (benchmarks/results/h200-session17/transfer-parts.md, transfer.run4.md).
PARTS_PER_THREAD = 4


def _parts_choice(knobs: dict[str, int], plan: SearchPlan, timed: Callable[[dict[str, int], int, str], float],
                  over_budget: Callable[[], bool], log: list[str]) -> dict[str, int]:
    """``parts_per_thread``: ``PARTS_PER_THREAD`` where, over the sizes ``knobs`` stages in either
    direction, copies with it took less time in total than with one part a thread (one knob for
    both directions: their gains add up); else 1 (``_staged_choice``)."""
    return _staged_choice(knobs, plan, timed, over_budget, log, {"h2d": "parts_per_thread", "d2h": "parts_per_thread"},
                          (1, PARTS_PER_THREAD), "parts per thread")


# How long the native pool's threads spin for the next piece before sleeping, weighed against
# none: on the H200 (benchmarks/results/h200-session19/transfer.run2.md, interleaved twins) 300 us
# made staged first copies out 5% / 16% / 3% faster at 16 / 32 / 64 MiB and in 7% / 7% / 5%, and
# were within 3% from 256 MiB; 50 us gained about half as much.
POOL_SPIN_US = 300


def _spin_choice(knobs: dict[str, int], plan: SearchPlan, timed: Callable[[dict[str, int], int, str], float],
                 over_budget: Callable[[], bool], log: list[str]) -> dict[str, int]:
    """``pool_spin_us``: ``POOL_SPIN_US`` where, over the sizes ``knobs`` stages in either direction,
    copies with it took less time in total than with none (one knob for the pool); else 0
    (``_staged_choice``)."""
    return _staged_choice(knobs, plan, timed, over_budget, log, {"h2d": "pool_spin_us", "d2h": "pool_spin_us"},
                          (0, POOL_SPIN_US), "pool spin")


def _staged_choice(knobs: dict[str, int], plan: SearchPlan, timed: Callable[[dict[str, int], int, str], float],
                   over_budget: Callable[[], bool], log: list[str], knob_of: dict[str, str],
                   values: tuple[int, int], what: str) -> dict[str, int]:
    """For each knob of ``knob_of`` (direction -> knob), ``values[1]`` where, over the sizes
    ``knobs`` sends down the staged path in its directions, copies with it took less time in
    total than with ``values[0]`` (log of the time ratios, interleaved pairs, the faster of two
    each); else ``values[0]``. Sizes from the smallest, each direction at each, until ``over_budget``."""
    off, on = values
    gain = {knob: 0.0 for knob in knob_of.values()}
    done: dict[str, list[int]] = {knob: [] for knob in knob_of.values()}
    for n in plan.sizes:
        directions = [d for d in knob_of if path_of(knobs, n, d) == "staged"]
        if directions and over_budget():
            log.append(f"budget spent: {what} measured to {max(sum(done.values(), []), default=0) // MiB} MiB")
            break
        for direction in directions:
            knob = knob_of[direction]
            plain, changed = [], []
            for _ in range(2):
                changed.append(timed({**knobs, knob: on}, n, direction))
                plain.append(timed({**knobs, knob: off}, n, direction))
            gain[knob] += math.log(min(plain) / min(changed))
            if n not in done[knob]:
                done[knob].append(n)
    chosen: dict[str, int] = {}
    for knob in gain:
        chosen[knob] = on if done[knob] and gain[knob] > 0 else off
        if done[knob]:
            shown = ("on" if chosen[knob] else "off") if values == (0, 1) else str(chosen[knob])
            log.append(f"{knob}: {shown} (log gain {gain[knob]:.3f} over "
                       f"{', '.join(str(n // MiB) for n in done[knob])} MiB)")
    return chosen


# Sizes at which pinning on reuse is weighed: from the least the pin-down cache counts
# (_pincache.COUNT_MIN_BYTES) to where the engine's own copies come close to the link.
PIN_SIZES = (1 * MiB, 4 * MiB, 16 * MiB)
# Pinned at most at this copy of an array: a size where pinning costs more than this many
# copies' saving is left unpinned (such a ratio is mostly a saving lost in noise).
PIN_AFTER_MAX = 16


def pin_regret(after: int, ratio: float) -> float:
    """The most pinning at copy ``after`` can cost, over the least any rule could, for an array
    of cost / saving ``ratio``, whatever the number of copies (in units of one copy's saving: the
    ``after - 1`` copies left unpinned, then the pinning, against the better of pinning at the
    first copy and never pinning, over as many copies). Pinning at copy ceil(ratio) keeps it
    below 2 (rent or buy); the cache never pins before the second copy. Pinning that costs
    nothing (``ratio`` 0) is best done at once: ``after`` then, least at the second copy."""
    if ratio <= 0:
        return float(after)
    return (after - 1 + ratio) / min(after, ratio)


def pin_after_for(ratios: Sequence[float]) -> int:
    """The copy at which to pin, from 2 to ``PIN_AFTER_MAX``, whose worst ``pin_regret`` over
    ``ratios`` (one per size pinned) is least; the earliest of equals."""
    return min(range(2, PIN_AFTER_MAX + 1), key=lambda n: (max(pin_regret(n, r) for r in ratios), n))


def _pin_reuse_choice(knobs: dict[str, int], engine: Engine, arrays: Callable[[int], tuple[np.ndarray, Any]],
                      timed: Callable[[dict[str, int], int, str], float], plan: SearchPlan,
                      over_budget: Callable[[], bool], log: list[str]) -> dict[str, int]:
    """``pin_reused_min``, ``pin_results_min`` and ``pin_after_copies`` from what pinning costs
    (pinning and unpinning: the pin-in-place path's time less a pinned DMA's) and what a pinned
    copy saves against the engine's first copy with ``knobs``, both directions summed, at each of
    ``PIN_SIZES`` within the plan's sizes.

    Pinning is rent or buy: each copy left unpinned pays the saving forgone (rent), pinning pays
    its cost once (buy), and how often an array (or a kept result block) will be copied again is
    not known. Pinned at copy N, an array of cost / saving r costs at most ``pin_regret(N, r)``
    times the least any rule could have, whatever the number of copies: below 2 at N = ceil(r).
    One N serves every size, so ``pin_after_copies`` is the N whose worst case over the sizes
    pinned is least (``pin_after_for``). The threshold is the smallest size from which the ratio
    stays within ``PIN_AFTER_MAX`` at every larger size measured; where it does at none, twice
    the largest measured (above 16 MiB the engine's copies neared the link on the H100 and the
    H200, and pinning still won there: h200-session7/transfer.md), pinned late, at
    ``PIN_AFTER_MAX`` (what the largest size's ratio, above it, gives). On the H200 (session 11) the ratios were 2.5 / 1.5 / 3.1 at 1 / 4 / 16
    MiB: pinned from 1 MiB at the second copy (worst case 2.06x; at the third 2.30x, the fifth
    3.6x). The rule before this one (pay back within two copies) left everything up to 16 MiB
    unpinned on another start's 2.3 / 1.3 / 2.6, and reused arrays of 4 MiB moved in at 10 GB/s
    instead of ~30 (benchmarks/results/h200-session11/). {} (the defaults stand) where nothing
    could be measured: a size that fails or is past the budget is left out, and the sizes
    measured decide."""
    ratios: dict[int, float] = {}  # size -> cost / saving (inf: pinning saves nothing there)
    clock, dma, alloc_pinned = engine.clock, engine.dma, engine.alloc_pinned
    assert dma is not None and alloc_pinned is not None
    for n in (n for n in PIN_SIZES if n <= max(plan.sizes)):
        if over_budget():
            log.append(f"budget spent: pinning on reuse weighed to {max(ratios, default=0) // MiB} MiB")
            break
        try:
            h, d = arrays(n)
            buf, free = alloc_pinned(n)
            try:
                cost = saving = 0.0
                for direction in ("h2d", "d2h"):
                    t_dma = _best_s(lambda: dma(d, buf, direction), engine.sync, plan.reps, clock)
                    first = timed(knobs, n, direction)
                    pinned_each_time = timed({**knobs, **path_knobs("register"), "register_chunk_bytes": 0}, n, direction)
                    cost += max(0.0, pinned_each_time - t_dma)
                    saving += first - t_dma
            finally:
                free()
        except Exception as e:  # noqa: BLE001 - a size that fails decides nothing
            log.append(f"pinning on reuse at {n // MiB} MiB failed: {type(e).__name__}: {e}")
            continue
        ratios[n] = cost / saving if saving > 0 else math.inf
        log.append(f"pinning on reuse at {n // MiB} MiB: pin+unpin {cost * 1e6:.0f} us, saves {saving * 1e6:.0f} us "
                   f"a copy in+out: " + (f"cost / saving {ratios[n]:.2f}" if saving > 0 else "saves nothing"))
    if not ratios:
        return {}
    pays = {n: r <= PIN_AFTER_MAX for n, r in ratios.items()}
    paying = [n for n in pays if all(ok for m, ok in pays.items() if m >= n)]
    if paying:
        threshold = min(paying)
        after = pin_after_for([r for n, r in ratios.items() if n >= threshold])
    else:
        threshold = 2 * max(ratios)
        largest = ratios[max(ratios)]
        after = pin_after_for([largest]) if math.isfinite(largest) else PIN_AFTER_MAX
    log.append(f"pinned on reuse from {threshold // MiB} MiB, at the copy that moves {after} times its bytes")
    return {"pin_reused_min": threshold, "pin_results_min": threshold, "pin_after_copies": after}


def _rate(n: int, s: float | None) -> str:
    return "-" if s is None else f"{n / s / 1e9:.1f}"


def _fmt_bound(b: dict[str, Any]) -> str:
    return "; ".join(f"{k} thr " + "/".join(f"{v:.1f}" for v in r.values()) for k, r in b["by_threads"].items()) + " GB/s (to pinned/from pinned/from pinned fresh)"


def gpu_engine() -> Engine:
    """The real engine on the current CUDA device (imports CuPy)."""
    import ctypes

    import cupy as cp

    from . import _transfer as T
    from ._cores import usable_cores

    def alloc_pinned(n: int) -> tuple[np.ndarray, Callable[[], None]]:
        ptr = cp.cuda.runtime.hostAlloc(n, 0)
        arr = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(ptr))
        return arr, lambda: cp.cuda.runtime.freeHost(ptr)

    def dma(d: Any, buf: np.ndarray, direction: str) -> None:
        s = cp.cuda.get_current_stream()
        if direction == "h2d":
            cp.cuda.runtime.memcpyAsync(d.data.ptr, buf.ctypes.data, d.nbytes, 1, s.ptr)
        else:
            cp.cuda.runtime.memcpyAsync(buf.ctypes.data, d.data.ptr, d.nbytes, 2, s.ptr)

    def configure(knobs: dict[str, int]) -> None:
        T.apply_tuning(knobs, "calibration search")

    memcpy = None
    if T._parcopy is not None:
        parcopy = T._parcopy
        memcpy = lambda dst, src, n, k: parcopy.copy(dst, src, n, k, 256 * KiB)  # noqa: E731

    # First copies, whoever calls: the search times the same arrays again and again, which the
    # pin-down cache would pin at their second copy (_sweep wraps the search so too).
    def to_device(h: np.ndarray) -> Any:
        with T.unpinned_copies():
            return T.to_device(h)

    def to_host(d: Any) -> np.ndarray:
        with T.unpinned_copies():
            return T.to_host(d)

    return Engine(
        to_device=to_device, to_host=to_host, sync=lambda: cp.cuda.get_current_stream().synchronize(),
        configure=configure, defaults=lambda: asdict(T.default_tuning()), cores=usable_cores(), memcpy=memcpy,
        alloc_pinned=alloc_pinned, dma=dma, release_device=cp.get_default_memory_pool().free_all_blocks,
    )
