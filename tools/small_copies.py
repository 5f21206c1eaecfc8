"""Small copies (800 B - 1 MiB) on the GPU machine: the driver's own path from pageable memory
against one pinned buffer of the engine's pool, and what a small @offload call pays for them.

    PYTHONPATH=src python3 tools/small_copies.py [--out FILE.json]

Issue 12's last row (bessel_i0 at 1e2 elements, 800 B in and out) spends most of its time in two
small copies: on the H200 host `_transfer.to_device` of 800 B took 47 us and `to_host` 42 us
(session 13, gpu_gaps part 3), where a DMA from pinned memory of 256 KiB takes ~15 us. The engine
hands every contiguous array up to `h2d_direct_max` / `d2h_direct_max` (5.6 MiB) to the driver;
its one-pinned-buffer path (`_h2d_small`, `_d2h_small`) is used only where the direct one may not
be. Columns, interleaved per size (medians of rounds, each round a loop of calls and one
synchronize):

* `cupy`: `cupy.asarray` / `cupy.asnumpy`;
* `direct`: `_transfer.to_device` / `to_host` with the active tuning (the driver's path);
* `small`: the same with the driver's path (`_h2d_direct`, `_d2h_direct`) replaced by the
  one-buffer path, results still new arrays;
* `sync`: `cupy.cuda.get_current_stream().synchronize()` on an idle stream (what the copy meter's
  wait before a copy out costs when there is nothing to wait for).

Each column is a loop of back-to-back calls, which find the native copy pool's threads awake:
in session 13 this probe had the staged path faster than the driver's copy out at 256 KiB-4 MiB,
and `benchmarks/transfer.py`, one call of each column in turn, had it 1.09-1.21x slower
(benchmarks/results/h200/transfer.NOTES.md). Trust transfer.py for a program's copies.

Then `@offload(backend="cupy")` on `bessel_weights` at 1e2: as shipped, with the small path,
without the meter's wait before the copy out, and both; and CuPy with the engine's copies by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import cupy as cp  # noqa: E402

import suite  # noqa: E402
from autooffload import _arguments, offload  # noqa: E402
from autooffload import _transfer as T  # noqa: E402

SIZES = (800, 8 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024, 2048 * 1024, 4096 * 1024)


def interleaved(fns: dict, loops: int, rounds: int) -> dict:
    """Median seconds per call of each, rounds alternating the order, each loop synchronized."""
    stream = cp.cuda.get_current_stream()
    samples: dict = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 else list(fns)[::-1]):
            f = fns[k]
            stream.synchronize()
            t0 = time.perf_counter()
            for _ in range(loops):
                f()
            stream.synchronize()
            samples[k].append((time.perf_counter() - t0) / loops)
    return {k: statistics.median(v) for k, v in samples.items()}


_DIRECT = (T._h2d_direct, T._d2h_direct)


def _h2d_via_buffer(cp_, dev_ptr, host_c, stream):
    T._h2d_small(cp_, dev_ptr, cp_.cuda.runtime.getDevice(), T._byte_view(host_c), stream, T._TUNING)


def _d2h_via_buffer(cp_, src_ptr, host_c, stream):
    T._d2h_small(cp_, src_ptr, T._byte_view(host_c), stream, T._TUNING)


def _d2h_via_staging(cp_, src_ptr, host_c, stream):
    T._d2h_staged(cp_, src_ptr, cp_.cuda.runtime.getDevice(), T.array_address(host_c), host_c.nbytes, stream, T._TUNING)


def staged_out(fn):
    """``fn`` with the driver's copies out replaced by the staged path (pieces copied out by the
    native pool's threads while the next piece's DMA runs)."""
    def call():
        T._d2h_direct = _d2h_via_staging
        try:
            return fn()
        finally:
            T._d2h_direct = _DIRECT[1]
    return call


def small(fn):
    """``fn`` with the engine's direct copies made through one pinned buffer of its pool."""
    def call():
        T._h2d_direct, T._d2h_direct = _h2d_via_buffer, _d2h_via_buffer
        try:
            return fn()
        finally:
            T._h2d_direct, T._d2h_direct = _DIRECT
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    base = T._tuning()
    rng = np.random.default_rng(0)
    cp.asarray(np.ones(4)).get()
    stream = cp.cuda.get_current_stream()
    doc: dict = {"tuning": asdict(base), "copies": {}, "calls": {}}
    print("copies, us per call (medians): h2d cupy / direct / small | d2h (new arrays) cupy / direct / small / staged")
    for n in SIZES:
        h = rng.uniform(0.5, 1.5, n // 8)
        d = cp.asarray(h)
        # CuPy's own array: from 1 MiB the engine pins ``h`` at its second copy (_pincache.py),
        # and cupy.asarray from pinned memory is a DMA it does not wait for.
        h_cupy = h.copy()
        assert np.array_equal(small(lambda: T.to_device(h))().get(), h)
        assert np.array_equal(small(lambda: T.to_host(d))(), h)
        assert np.array_equal(staged_out(lambda: T.to_host(d))(), h)
        loops = 200 if n <= 64 * 1024 else 50 if n <= 1024 * 1024 else 20
        m = interleaved({
            "h2d cupy": lambda: cp.asarray(h_cupy), "h2d direct": lambda: T.to_device(h),
            "h2d small": small(lambda: T.to_device(h)),
            "d2h cupy": lambda: cp.asnumpy(d), "d2h direct": lambda: T.to_host(d),
            "d2h small": small(lambda: T.to_host(d)), "d2h staged": staged_out(lambda: T.to_host(d)),
        }, loops, 21)
        doc["copies"][n] = {k: v * 1e6 for k, v in m.items()}
        print(f"  {n:>8} B: " + " / ".join(f"{m[f'h2d {k}'] * 1e6:.1f}" for k in ("cupy", "direct", "small")) + " | "
              + " / ".join(f"{m[f'd2h {k}'] * 1e6:.1f}" for k in ("cupy", "direct", "small", "staged")), flush=True)
    m = interleaved({"sync": stream.synchronize}, 2000, 11)
    doc["sync_idle_us"] = m["sync"] * 1e6
    print(f"idle stream.synchronize: {m['sync'] * 1e6:.1f} us")

    # The small call, by variant.
    original_init = _arguments.Moved.__init__

    def no_wait_init(self, *a, **k):
        original_init(self, *a, **k)
        self.device_idle = True  # the copy out waits for the run itself; the meter times both

    def nowait(fn):
        def call():
            _arguments.Moved.__init__ = no_wait_init
            try:
                return fn()
            finally:
                _arguments.Moved.__init__ = original_init
        return call

    for n in (100, 1000, 10_000):
        x = rng.uniform(-20.0, 20.0, n)
        forced = offload(backend="cupy")(suite.bessel_weights)
        ref = suite.bessel_weights(x)
        for v in (forced(x), small(lambda: forced(x))(), nowait(lambda: forced(x))()):
            assert np.allclose(v, ref, rtol=1e-12, atol=0)

        def by_hand():
            return T.to_host(suite.bessel_weights(T.to_device(x), xp=cp))

        variants = {
            "cupy+engine copies": by_hand, "cupy+engine copies, small": small(by_hand),
            "@offload": lambda: forced(x), "@offload small": small(lambda: forced(x)),
            "@offload no wait": nowait(lambda: forced(x)), "@offload small, no wait": nowait(small(lambda: forced(x))),
        }
        for f in variants.values():
            for _ in range(30):
                f()
        m = interleaved(variants, 100, 15)
        doc["calls"][n] = {k: v * 1e6 for k, v in m.items()}
        print(f"bessel n={n}: " + "  ".join(f"{k} {v * 1e6:.1f}" for k, v in m.items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
