"""The seed article's experiments ("CuPy makes NumPy 700x faster"), timed five ways side by side.

    PYTHONPATH=src python3 benchmarks/seed_article.py [--max-elements 1e9] [--repeats 5] [--machine h100]
    PYTHONPATH=src python3 benchmarks/seed_article.py --gpu-smoke     # every path, tiny sizes, seconds

Experiments (float64, as in the article), each at 1e4 ... 1e9 elements (capped by free host and GPU
memory, or --max-elements):

* ``ones``  ``np.ones(shape)``; at 1e9 the shape is the article's (1000, 1000, 1000)
* ``x*=5``  ``x *= 5``
* ``chain`` ``x *= 5; x *= x; x += x``

Columns (each a median of repeats with half its interquartile range as ±):

* ``NumPy``         the NumPy code.
* ``CuPy article``  CuPy timed the article's way: ``time.time()`` around the call, no
                    synchronization. It measures the kernel *launch*, not the work.
* ``CuPy synced``   CuPy, warm, the stream synchronized before the clock stops: data already on
                    the GPU, the GPU's real time.
* ``CuPy host i/o`` numpy data in and out: ``cupy.asarray(x)``, the operation, and the result
                    copied back into ``x`` (``.get(out=x)``; for ``ones``: ``cupy.asnumpy``).
* ``@offload``      the NumPy function decorated with ``@offload``, called with numpy data; the
                    backend it picked is shown.

The in-place experiments restore ``x`` from a pristine copy before each sample (outside the
clock). Inside one sample of looped tiny calls the values keep growing (``chain`` reaches inf
after ~8 calls), which changes no timing on x86 or on the GPU (only subnormals are slow, and
the data never goes near them). Writes JSON, the table and a PNG under
``benchmarks/results/<machine>/seed_article.*``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

from autooffload import offload  # noqa: E402  (_bench put src/ on the path)

NAME = "seed_article"
# What the article reported at 1e9 (its speedups: NumPy time / CuPy time as it measured it).
ARTICLE_SPEEDUP = {"ones": 10.5, "x*=5": 714.0, "chain": 16.0}


# -- the experiments, as the article wrote them (NumPy code; the CuPy versions use cupy) -------
def make_ones(shape):
    return np.ones(shape)


def scale(x):
    x *= 5


def chain(x):
    x *= 5
    x *= x
    x += x


EXPERIMENTS = {
    "ones": "np.ones(shape)",
    "x*=5": "x *= 5",
    "chain": "x *= 5; x *= x; x += x",
}


def shape_of(n: int) -> tuple[int, ...]:
    return (1000, 1000, 1000) if n == 10**9 else (n,)


def default_max_elements(cp) -> int:
    """The largest power of ten (<= 1e9) whose arrays fit: about 4 copies on the host and 5 on the
    GPU (pristine + working copy, the copy-back, the decorator's copies). 1e8 without a GPU."""
    host = B.host_available_bytes() // (8 * 4)
    cap = 10**9
    if cp is None:
        cap = 10**8
    else:
        free = B.gpu_free_bytes(cp)
        if free:
            cap = min(cap, free // (8 * 5))
    n = min(cap, host)
    return 10 ** max(4, int(math.floor(math.log10(max(n, 1)))))


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    B.common_arguments(p)
    p.add_argument("--min-elements", type=B.parse_count, default=10**4)
    p.add_argument("--max-elements", type=B.parse_count, default=None,
                   help="largest size (default: the largest power of ten <= 1e9 that fits in memory)")
    p.add_argument("--repeats", type=int, default=5, help="samples per figure (3 at 1e9)")
    p.add_argument("--sample-s", type=float, default=None, help="length of one timed sample (default 0.02 s; 0.005 with --quick)")
    p.add_argument("--quick", action="store_true", help="short samples, sizes up to 1e6")
    p.add_argument("--budget-s", type=float, default=200.0,
                   help="time budget: a size (from 1e8 up) whose time, predicted from the size before, does not fit "
                        "is left out with a note (0: no budget)")
    p.add_argument("--experiments", default=",".join(EXPERIMENTS), help="comma-separated subset of " + ",".join(EXPERIMENTS))
    p.add_argument("--replot", type=Path, metavar="JSON", help="only redraw the PNG of an earlier run's JSON (beside it)")
    return B.finish_args(p.parse_args(argv), argv)


def main(argv=None, *, quiet: bool = False) -> dict:
    with np.errstate(over="ignore", invalid="ignore"):  # looped in-place samples overflow to inf
        return _main(argv, quiet)


def _main(argv, quiet: bool) -> dict:
    args = parse(argv)
    if args.replot:
        return B.replot(args.replot, plot)
    say = B.Tee(quiet)
    cp = B.gpu(disabled=args.no_gpu)
    sync = B.sync_for(cp)
    info = B.machine_info(cp)
    t_start = time.perf_counter()

    if args.gpu_smoke:
        sizes = [10**4, 10**5]
        min_sample_s, repeats = 0.002, 3
    else:
        top = args.max_elements or default_max_elements(cp)
        if args.quick:
            top = min(top, 10**6)
        sizes = B.decades(args.min_elements, top) or [top]
        min_sample_s = args.sample_s or (0.005 if args.quick else 0.02)
        repeats = max(3, args.repeats)
    experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
    for e in experiments:
        if e not in EXPERIMENTS:
            raise SystemExit(f"unknown experiment {e!r}; choose from {', '.join(EXPERIMENTS)}")

    say(B.header("seed article experiments: NumPy vs CuPy timed four ways vs @offload", info))
    say(f"# sizes {', '.join(B.fmt_n(s) for s in sizes)} float64; repeats {repeats} (3 at >= 1e9); "
        f"decisions from profile: {B.profile_source()}")
    notes: list[str] = []
    context_s = None
    if cp is not None:
        context_s, _ = B.time_once(lambda: cp.ones(1) + 1, sync)
        say(f"# CUDA context + first kernel: {B.fmt_time(context_s)} (excluded from everything below)")
        say("# " + B.warm_offload_gpu(cp))

    decorated = {"ones": offload(make_ones), "x*=5": offload(scale), "chain": offload(chain)}
    cold: dict[str, dict] = {}
    rows: list[dict] = []

    last_n = last_wall = last_reps = None
    for n in sizes:
        t_size = time.perf_counter()
        if last_n and args.budget_s > 0 and n >= 10**8:
            # Linear in n, and in the calls per column (samples + the first call; 3 samples at 1e9).
            predicted = last_wall * n / last_n * ((3 if n >= 10**9 else repeats) + 1) / (last_reps + 1)
            if t_size - t_start + predicted > args.budget_s:
                notes.append(f"sizes from {B.fmt_n(n)} left out by the time budget (predicted {predicted:.0f} s, "
                             f"{max(0.0, args.budget_s - (t_size - t_start)):.0f} s left of --budget-s {args.budget_s:g})")
                say("# " + notes[-1])
                break
        big = n >= 10**8
        reps = 3 if n >= 10**9 else repeats
        shape = shape_of(n)
        try:
            x0 = B.never_zero(shape, seed=n % 1000 + 7)
        except MemoryError:
            notes.append(f"{B.fmt_n(n)}: host out of memory creating the data; size skipped")
            say("# " + notes[-1])
            break
        x = x0.copy()
        settings = dict(repeats=reps, min_sample_s=min_sample_s, max_s=5.0)
        for exp in experiments:
            row = {"experiment": exp, "code": EXPERIMENTS[exp], "n": n, "shape": list(shape), "notes": []}
            row.update(run_row(exp, n, shape, x0, x, cp, sync, decorated[exp], cold, settings, big, row["notes"]))
            rows.append(row)
            for note in row["notes"]:
                say(f"# {B.fmt_n(n)} {exp}: {note}")
        del x, x0
        B.free_gpu_memory(cp)
        last_n, last_wall, last_reps = n, time.perf_counter() - t_size, reps
        say(f"# {B.fmt_n(n)} done in {last_wall:.1f} s (elapsed {time.perf_counter() - t_start:.0f} s)")
        # A checkpoint, so a run cut short (a time limit) still leaves its rows behind.
        B.write_results(args, NAME, info, {"partial": True, "sizes": sizes, "rows": [_jsonable(r) for r in rows],
                                           "first_calls": cold, "notes": notes}, say.text())

    # -- the table -------------------------------------------------------------------------------
    headers = ["experiment", "n", "NumPy", "CuPy article (no sync)", "CuPy synced", "CuPy host i/o",
               "@offload host i/o", "picked", "settled", "x article", "x synced", "x host i/o", "x @offload"]
    trows = []
    for r in rows:
        t = r["times"]
        sp = r["speedup"]
        trows.append([r["experiment"], B.fmt_n(r["n"])] + [t[k].cell() if t.get(k) else B.NA for k in COLS]
                     + [r.get("offload_backend") or B.NA, str(r.get("offload_settled_after", B.NA))]
                     + [B.fmt_x(sp.get(k)) for k in COLS[1:]])
    say("")
    say(B.table(headers, trows, left=2))
    say("")
    say("x ...: NumPy time / that column's time (above 1: faster than NumPy). '±': half the interquartile range.")
    say("CuPy article: time.time() around the call with no synchronization: the kernel launch only, not the work.")
    if cold:
        say("First calls (excluded from the medians above):")
        for exp, c in cold.items():
            parts = []
            if c.get("cupy_article_s") is not None:
                parts.append(f"CuPy, article's way {B.fmt_time(c['cupy_article_s'])}, synchronized {B.fmt_time(c['cupy_synced_s'])}")
            parts.append(f"@offload {B.fmt_time(c['offload_s'])} ({c['offload_backend']})")
            say(f"  {exp} at {B.fmt_n(c['n'])}: " + "; ".join(parts))
    crossovers = {}
    for exp in experiments:
        rs = [r for r in rows if r["experiment"] == exp]
        crossovers[exp] = {k: B.crossover([r["n"] for r in rs], [r["speedup"].get(k) for r in rs]) for k in COLS[1:4]}
        if cp is not None:
            txt = ", ".join(f"{k}: {B.fmt_n(v) if v else 'never'}" for k, v in crossovers[exp].items())
            say(f"CuPy faster than NumPy from ({exp}, elements): {txt}")
    at_top = [r for r in rows if r["n"] == sizes[-1]]
    if at_top and cp is not None:
        say("The article claimed at 1e9: " + ", ".join(f"{k} {v:g}x" for k, v in ARTICLE_SPEEDUP.items())
            + f"; measured here at {B.fmt_n(sizes[-1])} (article timing / synced / host i/o): "
            + ", ".join(f"{r['experiment']} {B.fmt_x(r['speedup'].get('cupy_article'))} / {B.fmt_x(r['speedup'].get('cupy_synced'))}"
                        f" / {B.fmt_x(r['speedup'].get('cupy_host_io'))}" for r in at_top))
    wall = time.perf_counter() - t_start
    say(f"wall time {wall:.1f} s")

    payload = {
        "partial": False, "sizes": sizes, "budget_s": args.budget_s, "repeats": repeats, "min_sample_s": min_sample_s, "gpu_smoke": args.gpu_smoke,
        "profile": B.profile_source(), "context_s": context_s, "columns": COLS,
        "rows": [_jsonable(r) for r in rows], "first_calls": cold, "crossovers": crossovers,
        "article_claimed_speedup": ARTICLE_SPEEDUP, "notes": notes, "wall_s": wall,
    }
    return B.publish(args, NAME, info, payload, say, plot)


def plot(doc: dict, png: Path) -> str | None:
    """The speedup plot from a result document (as written to JSON); a note if it was skipped."""
    panels = {}
    for exp in dict.fromkeys(r["experiment"] for r in doc["rows"]):
        rs = [r for r in doc["rows"] if r["experiment"] == exp]
        panels[f"{exp}: {EXPERIMENTS.get(exp, exp)}"] = {
            LABELS[k]: ([r["n"] for r in rs], [r["speedup"].get(k) for r in rs]) for k in COLS[1:]
        }
    gpu = doc.get("machine", {}).get("gpu_name") or "no GPU"
    return B.plot_speedups(png, panels, title=f"seed article: speedup vs NumPy ({gpu}; {doc['machine'].get('date', '')[:10]})",
                           mark=[LABELS["cupy_synced"], LABELS["cupy_host_io"]])


COLS = ["numpy", "cupy_article", "cupy_synced", "cupy_host_io", "offload"]
LABELS = {"cupy_article": "CuPy, article timing (no sync)", "cupy_synced": "CuPy synced (data on GPU)",
          "cupy_host_io": "CuPy, numpy in/out", "offload": "@offload, numpy in/out"}


def _jsonable(r: dict) -> dict:
    out = dict(r)
    out["times"] = {k: (v.as_dict() if v else None) for k, v in r["times"].items()}
    return out


def run_row(exp, n, shape, x0, x, cp, sync, fn_off, cold, settings, big, notes) -> dict:
    """All five columns of one experiment at one size."""
    times: dict[str, B.Stat | None] = {k: None for k in COLS}
    heavy_warmup = 0 if big else 1  # NumPy compiles nothing; at >= 1e8 a warm-up call only costs time
    inplace = exp != "ones"

    def restore_host():
        np.copyto(x, x0)

    # Correctness reference: one call of the NumPy code on a fresh copy. Up to 1e7 elements the
    # whole result is compared (exactly: these operations round identically everywhere); above,
    # its first and last 10000 elements.
    op_np = scale if exp == "x*=5" else chain
    if inplace:
        np.copyto(x, x0)
        op_np(x)
        reference = _probe(x, n)

    def matches(h) -> bool:
        """``h``: a numpy or cupy result (only its probe leaves the GPU)."""
        probe = [p.get() if hasattr(p, "get") and not isinstance(p, np.ndarray) else p for p in _probe(h, n)]
        if not inplace:
            return tuple(h.shape) == tuple(shape) and all((p == 1.0).all() for p in probe)
        return all(np.array_equal(a, b, equal_nan=True) for a, b in zip(probe, reference))

    fn_np = (lambda: make_ones(shape)) if not inplace else (lambda: op_np(x))
    setup_host = restore_host if inplace else None

    # 2, 3. CuPy, data on the device
    if cp is not None:
        def device_columns():
            xd0 = cp.asarray(x0) if inplace else None
            xd = xd0.copy() if inplace else None
            op = {"ones": lambda: cp.ones(shape), "x*=5": lambda: scale(xd), "chain": lambda: chain(xd)}[exp]

            def restore_dev():
                xd[...] = xd0

            if exp not in cold:  # the first CuPy call of this experiment: kernel compile or cache load
                t0 = time.time()
                op()
                t1 = time.time()
                sync()
                first_article = t1 - t0
                if inplace:
                    restore_dev()
                synced, _ = B.time_once(op, sync)
                cold[exp] = {"n": n, "cupy_article_s": first_article, "cupy_synced_s": synced}
            if inplace:
                restore_dev()
            # One call per sample (no loop is possible without a sync): more samples while cheap.
            times["cupy_article"] = B.measure_unsynced(op, sync=sync, warmup=1,
                                                       repeats=settings["repeats"] if n >= 10**9 else max(11, settings["repeats"]))
            times["cupy_synced"] = B.measure(op, sync=sync, setup=restore_dev if inplace else None, warmup=1, **settings)
            restore_dev() if inplace else None
            got = op() if not inplace else (op(), xd)[1]
            if not matches(got):
                notes.append("MISMATCH: CuPy on the device differs from NumPy")
            del xd, xd0, got

        _guard(notes, "CuPy on the device", cp, device_columns)
        B.free_gpu_memory(cp)

        # 4. CuPy with numpy data in and out
        def host_io():
            if inplace:
                def op():
                    d = cp.asarray(x)
                    op_np(d)
                    d.get(out=x)
            else:
                def op():
                    return cp.asnumpy(cp.ones(shape))
            # Check first (also the warm-up of this column: the kernels were compiled above). At 1e9
            # a call takes seconds, so the checked call, synchronized, counts as the first sample.
            if inplace:
                restore_host()
            first_s, out = B.time_once(op, sync)
            if not matches(x if inplace else out):
                notes.append("MISMATCH: CuPy with host data in and out differs from NumPy")
            del out
            if n < 10**9:
                return B.measure(op, sync=sync, setup=restore_host if inplace else None, warmup=0, **settings)
            more = B.measure(op, sync=sync, setup=restore_host if inplace else None, warmup=0,
                             **{**settings, "repeats": settings["repeats"] - 1, "min_repeats": settings["repeats"] - 1})
            return B.Stat.of([first_s] + more.samples, 1)

        times["cupy_host_io"] = _guard(notes, "CuPy host i/o", cp, host_io)
        B.free_gpu_memory(cp)

    # 1 and 5. NumPy and @offload (numpy data in and out), timed side by side (interleaved rounds),
    # after @offload's first call at this size (a decision-cache miss) has been checked and timed.
    call_off = (lambda: fn_off(shape)) if not inplace else (lambda: fn_off(x))

    def offload_first():
        if inplace:
            restore_host()
        first_s, out = B.time_once(call_off, B.sync_if_offloaded(cp, fn_off))
        if not matches(x if inplace else out):
            notes.append("MISMATCH: @offload differs from NumPy")
        if exp not in cold or "offload_s" not in cold[exp]:
            cold.setdefault(exp, {"n": n})
            cold[exp].update({"offload_s": first_s, "offload_backend": fn_off.last_decision.backend})
        return first_s

    first_s = _guard(notes, "@offload", cp, offload_first)
    settled_after = _guard(notes, "@offload settling", cp, lambda: len(B.settle(
        fn_off, call_off, setup=restore_host if inplace else None, sync=B.sync_if_offloaded(cp, fn_off)))) if first_s is not None else None
    fns = {"numpy": fn_np}
    if first_s is not None:
        fns["offload"] = call_off
    before = fn_off.stats.as_dict()
    stats = _guard(notes, "NumPy and @offload", cp, lambda: B.measure_interleaved(
        fns, sync={"numpy": B._no_sync, "offload": B.sync_if_offloaded(cp, fn_off)}, setups={k: setup_host for k in fns},
        warmup={"numpy": heavy_warmup, "offload": 0}, **settings))
    after = fn_off.stats.as_dict()
    offload_info = {}
    if stats:
        times.update(stats)
        if "offload" in stats:
            d = fn_off.last_decision
            delta = {k: after[k] - before[k] for k in after}
            offload_info = {"offload_backend": d.backend, "offload_reason": d.reason, "offload_first_call_s": first_s,
                            "offload_settled_after": settled_after,
                            "offload_calls": delta, "offload_predicted_s": dict(d.predicted_s) or None}
            if delta.get("numpy") and delta.get("cupy"):
                offload_info["offload_backend"] = f"mixed ({delta['cupy']} cupy)"
            if delta.get("fallbacks"):
                notes.append(f"@offload fell back to NumPy {delta['fallbacks']} times: {d.reason}")

    base = times["numpy"].median if times["numpy"] else None
    speedup = {k: (base / v.median if base and v and v.median > 0 else None) for k, v in times.items() if k != "numpy"}
    return {"times": times, "speedup": speedup, **offload_info}


def _probe(h: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """What is compared of a result: all of it up to 1e7 elements, else its two ends."""
    flat = h.reshape(-1)
    return (flat.copy(),) if n <= 10**7 else (flat[:10000].copy(), flat[-10000:].copy())



def _guard(notes, what, cp, fn):
    """Run one column; out of memory skips it with a note, anything else is recorded loudly."""
    try:
        return fn()
    except Exception as exc:
        B.free_gpu_memory(cp)
        if B.is_oom(exc):
            notes.append(f"{what}: skipped, out of memory ({type(exc).__name__})")
        else:
            notes.append(f"{what}: FAILED {type(exc).__name__}: {exc}")
        return None


if __name__ == "__main__":
    main(sys.argv[1:])
