"""What the @offload decorator itself costs per call: on the NumPy path and with data on the GPU.

    PYTHONPATH=src python3 benchmarks/overhead.py [--rounds 200] [--machine h100]
    PYTHONPATH=src python3 benchmarks/overhead.py --gpu-smoke

(a) CPU path. Small functions of two 100-element float64 arrays, each called undecorated and
    decorated in one run, interleaved (plain, decorated, decorated, plain, ...), ``--rounds``
    rounds of a few thousand calls each. Per round the ratio decorated / plain and the
    difference in ns are taken; the figures are their medians over the rounds. The bar (issue 2):
    the decorated call of a small function (two 100-element arrays, three NumPy operations)
    costs at most 1.3x the undecorated one. Rows marked ``info`` show other call shapes (an
    ``xp`` parameter, a keyword argument, a tuple argument, a function doing nothing) and carry
    no bar.

(b) Device-resident (needs CuPy and a GPU). The same functions on cupy arrays of 100 and 1e6
    elements: the decorated call against calling the function directly on the cupy arrays (for
    the ``xp`` function: with ``xp=cupy``), each followed by a stream synchronization inside the
    timed region. The bar: at most 10 us more than the direct call.

Writes JSON and the table under ``benchmarks/results/<machine>/overhead.*``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

from autooffload import _dispatch, offload  # noqa: E402

NAME = "overhead"
CPU_BAR_RATIO = 1.3
GPU_BAR_S = 10e-6


# -- the small functions (plain NumPy) ---------------------------------------------------------
def three_ops(a, b):
    return (a * b + a).sum()


def sqrt_ops(a, b):
    return np.sqrt(a * b + a)


def with_xp(a, b, xp=np):
    return xp.sqrt(a * b + a)


def nothing(a, b):
    return a


def shaped(a, shape):
    return a.reshape(shape)


# (label, function, how it is called: args builder, bar applies?)
CPU_CASES = [
    ("(a * b + a).sum()", three_ops, "ab", True),
    ("np.sqrt(a * b + a)", sqrt_ops, "ab", True),
    ("xp.sqrt(a * b + a), xp param", with_xp, "ab", False),
    ("np.sqrt(a * b + a), b by keyword", sqrt_ops, "a_kw", False),
    ("a.reshape(shape), tuple argument", shaped, "a_shape", False),
    ("return a (the fixed cost)", nothing, "ab", False),
]
GPU_CASES = [
    ("(a * b + a).sum()", three_ops, False),
    ("np.sqrt(a * b + a)", sqrt_ops, False),
    ("xp.sqrt(a * b + a), xp param", with_xp, True),
]


def caller(fn, how, a, b, xp=None):
    if how == "ab":
        if xp is not None:
            return lambda: fn(a, b, xp=xp)
        return lambda: fn(a, b)
    if how == "a_kw":
        return lambda: fn(a, b=b)
    if how == "a_shape":
        shape = (a.shape[0] // 10, 10)
        return lambda: fn(a, shape)
    raise ValueError(how)


def paired(plain: B.Stat, decorated: B.Stat) -> tuple[float, float, float, float]:
    """(median ratio, median difference s, q1 and q3 of the difference) over the rounds."""
    ratios = [d / p for p, d in zip(plain.samples, decorated.samples) if p > 0]
    diffs = [d - p for p, d in zip(plain.samples, decorated.samples)]
    q1, _, q3 = statistics.quantiles(diffs, n=4, method="inclusive") if len(diffs) >= 2 else (diffs[0],) * 3
    return statistics.median(ratios), statistics.median(diffs), q1, q3


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    B.common_arguments(p)
    p.add_argument("--rounds", type=int, default=200, help="interleaved rounds per function (CPU path)")
    p.add_argument("--gpu-rounds", type=int, default=100, help="interleaved rounds per function (device-resident)")
    p.add_argument("--sample-s", type=float, default=0.002, help="length of one sample (calls are looped to it)")
    p.add_argument("--quick", action="store_true", help="30 rounds of 0.5 ms samples")
    p.add_argument("--repeats", type=int, default=None, help="same as --rounds (for symmetry with the other scripts)")
    p.add_argument("--max-elements", type=B.parse_count, default=10**6,
                   help="largest device-resident size (default 1e6)")
    return B.finish_args(p.parse_args(argv), argv)


def main(argv=None, *, quiet: bool = False) -> dict:
    args = parse(argv)
    say = B.Tee(quiet)
    cp = B.gpu(disabled=args.no_gpu)
    sync = B.sync_for(cp)
    info = B.machine_info(cp)
    t_start = time.perf_counter()
    rounds = args.repeats or args.rounds
    gpu_rounds = args.repeats or args.gpu_rounds
    sample_s = args.sample_s
    if args.quick or args.gpu_smoke:
        rounds, gpu_rounds, sample_s = min(rounds, 30), min(gpu_rounds, 30), 0.0005

    say(B.header("@offload overhead per call: NumPy path and device-resident", info))
    say(f"# interleaved rounds: {rounds} (CPU), {gpu_rounds} (GPU); samples of ~{sample_s * 1e3:g} ms; "
        f"profile: {B.profile_source()}")
    check = "C extension (autooffload._native)" if _dispatch._native is not None else "pure Python (extension not built)"
    say(f"# NumPy-path check: {check}")
    g = B.rng(5)
    a = B.never_zero(100, seed=1)
    b = B.never_zero(100, seed=2)

    rows = []
    # -- (a) the NumPy path ------------------------------------------------------------------------
    for label, fn, how, bar in CPU_CASES:
        dec = offload(fn)
        call_p, call_d = caller(fn, how, a, b), caller(dec, how, a, b)
        ref, got = call_p(), call_d()
        same = bool(np.array_equal(np.asarray(ref), np.asarray(got)))
        st = B.measure_interleaved({"plain": call_p, "decorated": call_d}, warmup=3, repeats=rounds,
                                   min_repeats=rounds, min_sample_s=sample_s, max_s=1e9)
        ratio, diff, q1, q3 = paired(st["plain"], st["decorated"])
        meets = ratio <= CPU_BAR_RATIO if bar else None
        rows.append({
            "section": "cpu", "function": label, "n": 100, "plain": st["plain"].as_dict(),
            "decorated": st["decorated"].as_dict(), "ratio": ratio, "overhead_s": diff,
            "overhead_q1_s": q1, "overhead_q3_s": q3, "bar": f"<= {CPU_BAR_RATIO}x" if bar else "info",
            "meets": meets, "picked": dec.last_decision.backend, "same_result": same,
            "loops": st["plain"].loops,
        })

    # -- (b) device-resident -----------------------------------------------------------------------
    gpu_note = None
    if cp is None:
        gpu_note = f"device-resident part skipped: no GPU ({B.GPU_UNAVAILABLE or 'CuPy not used'})"
    else:
        sizes = [100, min(args.max_elements, 10**6)] if not args.gpu_smoke else [100, 10**4]
        for n in dict.fromkeys(sizes):
            da = cp.asarray(B.never_zero(n, seed=3))
            db = cp.asarray(B.never_zero(n, seed=4))
            for label, fn, xp_arg in GPU_CASES:
                dec = offload(fn)
                call_p = caller(fn, "ab", da, db, xp=cp if xp_arg else None)
                call_d = caller(dec, "ab", da, db)
                try:
                    ref, got = call_p(), call_d()
                    sync()
                    same = bool(cp.allclose(ref, got))
                    on_device = type(got) is cp.ndarray
                    st = B.measure_interleaved({"plain": call_p, "decorated": call_d}, sync=sync, warmup=3,
                                               repeats=gpu_rounds, min_repeats=gpu_rounds,
                                               min_sample_s=sample_s, max_s=1e9)
                except Exception as exc:
                    rows.append({"section": "gpu", "function": label, "n": n, "error": f"{type(exc).__name__}: {exc}"})
                    B.free_gpu_memory(cp)
                    continue
                ratio, diff, q1, q3 = paired(st["plain"], st["decorated"])
                rows.append({
                    "section": "gpu", "function": label, "n": n, "plain": st["plain"].as_dict(),
                    "decorated": st["decorated"].as_dict(), "ratio": ratio, "overhead_s": diff,
                    "overhead_q1_s": q1, "overhead_q3_s": q3, "bar": "<= +10 us", "meets": diff <= GPU_BAR_S,
                    "picked": dec.last_decision.backend, "reason": dec.last_decision.reason,
                    "same_result": same, "result_on_device": on_device, "loops": st["plain"].loops,
                })
            del da, db
            B.free_gpu_memory(cp)

    # -- the table ---------------------------------------------------------------------------------
    headers = ["path", "function", "n", "plain", "@offload", "ratio", "overhead", "overhead IQR", "picked", "bar", "meets"]
    trows = []
    for r in rows:
        if "error" in r:
            trows.append([r["section"], r["function"], B.fmt_n(r["n"]), "FAILED: " + r["error"][:60]] + [""] * 7)
            continue
        trows.append([
            {"cpu": "NumPy path", "gpu": "on device"}[r["section"]], r["function"], B.fmt_n(r["n"]),
            B.fmt_time(r["plain"]["median"]), B.fmt_time(r["decorated"]["median"]), f"{r['ratio']:.2f}x",
            f"{r['overhead_s'] * 1e9:+.0f} ns", f"{r['overhead_q1_s'] * 1e9:.0f}..{r['overhead_q3_s'] * 1e9:.0f} ns",
            r["picked"] + ("" if r.get("same_result", True) else " (RESULT DIFFERS)"), r["bar"],
            {True: "yes", False: "NO", None: "-"}[r["meets"]],
        ])
    say("")
    say(B.table(headers, trows, left=2))
    say("")
    say("plain: the undecorated function (on the device: called directly on cupy arrays); figures are medians over "
        "interleaved rounds; ratio and overhead are medians of the per-round ratio and difference.")
    barred = [r for r in rows if r.get("meets") is not None]
    verdict = {
        "cpu_bar_met": all(r["meets"] for r in barred if r["section"] == "cpu") if any(r["section"] == "cpu" for r in barred) else None,
        "gpu_bar_met": all(r["meets"] for r in barred if r["section"] == "gpu") if any(r["section"] == "gpu" for r in barred) else None,
    }
    cpu_bar = [r for r in barred if r["section"] == "cpu"]
    if cpu_bar:
        worst = max(cpu_bar, key=lambda r: r["ratio"])
        say(f"CPU-path bar (<= {CPU_BAR_RATIO}x): {'MET' if verdict['cpu_bar_met'] else 'NOT MET'}; worst "
            f"{worst['ratio']:.2f}x ({worst['function']}, +{worst['overhead_s'] * 1e9:.0f} ns)")
    gpu_bar = [r for r in barred if r["section"] == "gpu"]
    if gpu_bar:
        worst = max(gpu_bar, key=lambda r: r["overhead_s"])
        say(f"device-resident bar (<= +10 us): {'MET' if verdict['gpu_bar_met'] else 'NOT MET'}; worst "
            f"+{worst['overhead_s'] * 1e6:.1f} us ({worst['function']}, n={B.fmt_n(worst['n'])})")
    if gpu_note:
        say(gpu_note)
    wall = time.perf_counter() - t_start
    say(f"wall time {wall:.1f} s")
    payload = {"rounds": rounds, "gpu_rounds": gpu_rounds, "sample_s": sample_s, "gpu_smoke": args.gpu_smoke,
               "profile": B.profile_source(), "numpy_path_check": check, "rows": rows, "verdict": verdict, "gpu_note": gpu_note,
               "bars": {"cpu_ratio_max": CPU_BAR_RATIO, "gpu_extra_s_max": GPU_BAR_S}, "wall_s": wall}
    folder = B.write_results(args, NAME, info, payload, say.text())
    say(f"results: {folder}")
    payload["folder"] = str(folder)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
