"""Blockwise functions streamed through the GPU in chunks (issue 15), against every single stage.

    PYTHONPATH=src python3 benchmarks/streaming.py [--sizes 1e8,1e9] [--repeats 3] [--machine h200]
    PYTHONPATH=src python3 benchmarks/streaming.py --sizes 1e6 --repeats 2     # a smoke run

Numpy data in and out, float64, measured interleaved in one run (ABC CBA ...), per function and size:

* ``NumPy``        the function on the host.
* ``GPU whole``    ``@offload`` forced onto the GPU, unstreamed (AUTOOFFLOAD_STREAM=never): copy every
                   input in, compute, copy every result out, one after the other.
* ``GPU streamed`` the same, streamed (AUTOOFFLOAD_STREAM=always): chunks on three CUDA streams.
* ``@offload``     the decorator left alone (the cost model and the machine's profile decide; the
                   backend it picked and whether it streamed is shown), timed once its decision
                   settled (``_bench.settle``: at most 12 calls or 15 s, its first call reported
                   apart): with 3 timed calls from a cold start, Black-Scholes at 1e8 was timed on
                   the Numba tier's first calls (732 ms) while learning had not yet moved it to
                   the GPU (109 ms).
* ``copy in`` / ``compute`` / ``copy out``: each stage alone: the copy engine's ``to_device`` of
                   every input, the function on device-resident data, ``to_host`` of the result
                   (for in-place functions: of the argument, into it).
* ``copy in+out``  the copies in and out at once, on two streams and threads: what the link and
                   the host give both directions together (on the H200, 1.10-1.33x one direction
                   alone, by machine start): a pipeline whose copies overlap cannot beat it.

Targets (issue 15): ``@offload`` >= 2x NumPy for ``x *= 5`` and the chain at 1e8 and 1e9;
streamed within 1.3x of the slowest single stage; Black-Scholes at 1e8 streamed >= 1.5x whole.
``--chunks`` adds streamed columns at given chunk sizes (AUTOOFFLOAD_STREAM_CHUNK) for the sweep.
Writes benchmarks/results/<machine>/streaming.{json,txt}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402
from seed_article import chain, scale  # noqa: E402  (the seed article's in-place functions)
from suite import black_scholes_call  # noqa: E402

from autooffload import config, offload  # noqa: E402


def black_scholes(spot, strike, expiry):
    return black_scholes_call(spot, strike, expiry, 0.01, 0.2)


CASES = {
    "x*=5": (scale, 1, True),
    "chain": (chain, 1, True),
    "black-scholes": (black_scholes, 3, False),
}


def inputs(n: int, count: int) -> list[np.ndarray]:
    out = []
    for k in range(count):
        a = np.empty(n)
        a[...] = 0.75 + 0.25 * k  # page faults outside the clock; values never subnormal
        a[::7] = 1.25 + k
        out.append(a)
    return out


def _reused_result(n: int) -> np.ndarray:
    from autooffload import _hostmem

    first = _hostmem.results.empty((n,), np.float64)
    first[...] = 0.0  # its pages faulted in, as a used result's are
    del first
    return _hostmem.results.empty((n,), np.float64)


def run_case(cp, name: str, n: int, repeats: int, chunks: list[int], say) -> dict:
    from autooffload import _transfer

    func, count, in_place = CASES[name]
    host = inputs(n, count)
    offloaded = offload(func)
    sync = B.sync_for(cp)
    dev = [cp.asarray(a) for a in host]
    # The copy-out stage into result memory as a loop's results get it: a kept block handed out
    # again (pinned, where the engine's pin_results_min is on), not fresh pages.
    host_out = None if in_place else _reused_result(n)
    dev_out = dev[0] if in_place else cp.asarray(np.empty(n))

    def env(value: str, chunk: int | None = None):
        def setup():
            os.environ["AUTOOFFLOAD_STREAM"] = value
            if chunk is None:
                os.environ.pop("AUTOOFFLOAD_STREAM_CHUNK", None)
            else:
                os.environ["AUTOOFFLOAD_STREAM_CHUNK"] = str(chunk)
        return setup

    def forced():
        with config(backend="cupy"):
            return offloaded(*host)

    decisions: dict[str, str] = {}
    pair = ThreadPoolExecutor(max_workers=2)
    lanes = [cp.cuda.Stream(non_blocking=True) for _ in range(2)]

    def on_lane(k, work):
        def run():
            with lanes[k]:
                work()
                lanes[k].synchronize()
        return run

    def both_ways():
        # The copies in and out at once, each on its own stream and thread: the link's (and the
        # host's) rate both ways together, which a streamed call whose stages overlap cannot beat.
        done = [pair.submit(on_lane(0, lambda: [_transfer.to_device(a) for a in host])),
                pair.submit(on_lane(1, lambda: _transfer.to_host(dev_out, out=host[0] if in_place else host_out)))]
        for f in done:
            f.result()

    def auto():
        r = offloaded(*host)
        d = offloaded.last_decision
        decisions["@offload"] = f"{d.backend}{' streamed' if d.streamed else ''}"
        return r

    fns = {
        "NumPy": lambda: func(*host),
        "GPU whole": forced,
        "GPU streamed": forced,
        "@offload": auto,
        "copy in": lambda: [_transfer.to_device(a) for a in host],
        "compute": lambda: offloaded(*dev),
        "copy out": lambda: _transfer.to_host(dev_out, out=host[0] if in_place else host_out),
        "copy in+out": both_ways,
    }
    setups = {"NumPy": None, "GPU whole": env("never"), "GPU streamed": env("always"), "@offload": env("auto"),
              "copy in": None, "compute": None, "copy out": None, "copy in+out": None}
    for c in chunks:
        fns[f"streamed {B.fmt_n(c)}B"] = forced
        setups[f"streamed {B.fmt_n(c)}B"] = env("always", c)
    # Correctness first: streamed against NumPy on fresh data (exact: the same IEEE operations,
    # except Black-Scholes, whose exp/log differ in the last bits between the libraries).
    check = inputs(n, count)
    ref = func(*check) if not in_place else (func(check[0]) or check[0])
    got_in = inputs(n, count)
    env("always")()
    with config(backend="cupy"):
        got = offloaded(*got_in)
    got = got_in[0] if in_place else got
    stream_decision = str(offloaded.last_decision)
    if in_place:
        exact = bool(np.array_equal(ref, got))
        err = 0.0 if exact else float(np.max(np.abs(ref - got) / np.maximum(np.abs(ref), 1e-300)))
    else:
        exact = bool(np.array_equal(ref, got))
        err = float(np.max(np.abs(ref - got) / np.maximum(np.abs(ref), 1e-12)))
    del check, ref, got, got_in
    env("auto")()
    start = time.perf_counter()
    auto()
    sync()
    first_s = time.perf_counter() - start
    settled = B.settle(offloaded, auto, sync=sync, same=3, max_calls=12, max_s=15.0, wait_for_compile=False)
    stats = B.measure_interleaved(fns, sync={k: sync for k in fns}, setups=setups, repeats=repeats,
                                  min_repeats=min(3, repeats), max_s=60.0, min_sample_s=0.0)
    env("auto")()
    med = {k: v.median for k, v in stats.items()}
    slowest = max(med["copy in"], med["compute"], med["copy out"])
    row = {
        "case": name, "n": n, "exact": exact, "max_rel_err": err, "stream_decision": stream_decision,
        "auto_decision": decisions.get("@offload", "?"), "stats": {k: v.as_dict() for k, v in stats.items()},
        "auto_first_call_s": first_s, "auto_settling_calls": settled,
        "numpy_over_auto": med["NumPy"] / med["@offload"],
        "streamed_over_slowest_stage": med["GPU streamed"] / slowest,
        "streamed_over_both_ways": med["GPU streamed"] / max(slowest, med["copy in+out"]),
        "whole_over_streamed": med["GPU whole"] / med["GPU streamed"],
        "numpy_over_streamed": med["NumPy"] / med["GPU streamed"],
    }
    say(f"{name} n={B.fmt_n(n)}: " + ", ".join(f"{k} {B.fmt_time(v)}" for k, v in med.items()))
    say(f"   @offload: first call {B.fmt_time(first_s)}, then {''.join(b[:2] for b in settled)} while settling")
    say(f"   @offload ran {row['auto_decision']}; NumPy/@offload {row['numpy_over_auto']:.2f}x; "
        f"streamed/slowest stage {row['streamed_over_slowest_stage']:.2f} (over copies in+out at once "
        f"{row['streamed_over_both_ways']:.2f}); whole/streamed "
        f"{row['whole_over_streamed']:.2f}x; exact {exact} (max rel err {err:.2g})")
    say(f"   streamed: {stream_decision}")
    pair.shutdown()
    del dev, dev_out, host
    B.free_gpu_memory(cp)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1e8,1e9")
    p.add_argument("--cases", default="x*=5,chain,black-scholes")
    p.add_argument("--bs-max", type=float, default=1e8, help="largest n for Black-Scholes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunks", default="", help="extra streamed columns at these chunk sizes (bytes), e.g. 32e6,128e6")
    p.add_argument("--chunk-sizes-at", type=float, default=1e8, help="n at which --chunks columns are measured")
    p.add_argument("--budget-s", type=float, default=150.0)
    p.add_argument("--machine", default="h200")
    p.add_argument("--knobs", default="",
                   help="copy-engine knobs over the profile's tuning, e.g. pin_results_min=1 (kept results "
                        "pinned on reuse) or h2d_register_min=1,d2h_register_min=1 (chunks pinned in place)")
    args = p.parse_args(argv)
    import cupy as cp

    start = time.perf_counter()
    lines: list[str] = []

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    knobs = {k.strip(): int(float(v)) for k, v in (kv.split("=") for kv in args.knobs.split(",") if kv)}
    if knobs:
        from autooffload import _transfer
        from autooffload._profiles import active_profile

        active_profile()  # its copy tuning applied first: the knobs go on top of it
        _transfer._configure(**knobs)
    say(f"streaming benchmark; numpy {np.__version__}, cupy {cp.__version__}; {B.cpu_model()}"
        + (f"; copy-engine knobs {knobs}" if knobs else ""))
    rows = []
    chunks = [int(float(c)) for c in args.chunks.split(",") if c]
    for n in [int(float(s)) for s in args.sizes.split(",")]:
        for name in args.cases.split(","):
            if name == "black-scholes" and n > args.bs_max:
                continue
            if time.perf_counter() - start > args.budget_s:
                say(f"budget spent: {name} at {B.fmt_n(n)} skipped")
                continue
            rows.append(run_case(cp, name, n, args.repeats, chunks if n == int(args.chunk_sizes_at) else [], say))
            save(args.machine, rows, lines)  # after each case: a run stopped at its limit keeps what it measured


def save(machine: str, rows: list, lines: list[str]) -> None:
    out = Path(__file__).resolve().parent / "results" / machine
    out.mkdir(parents=True, exist_ok=True)
    for folder in [out] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else []):
        (folder / "streaming.json").write_text(json.dumps({"rows": rows}, indent=1, default=str))
        (folder / "streaming.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
