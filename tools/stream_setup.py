"""Where a streamed call's time goes before its first copy and after its last (issue 15).

    PYTHONPATH=src python3 tools/stream_setup.py [--n 1e8] [--repeats 9]

``x *= 5`` through ``@offload`` on n float64 (pinned by the pin-down cache after two calls),
``AUTOOFFLOAD_STREAM=always`` under ``config(backend="cupy")``. Each step of the call is wrapped
with ``perf_counter`` stamps (medians over the repeats, ms from the call's entry):

* ``free_bytes``, ``plan``, ``Reachable``: the executor's steps before ``_stream.run``;
* ``run``: entry into ``_stream.run``; ``held_pinned``: the pin-down cache's holds taken;
* ``first copy``: the first chunk's copy in issued; ``last copy``: the last one's copy out done;
* ``return``: the call returned. The GPU idles from the call's entry to the first copy, and the
  drain (last copy out to return) is the unloader's end and the streams' synchronize.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from seed_article import scale  # noqa: E402

from autooffload import _executor, _stream, backends, config, offload  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=float, default=1e8)
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args(argv)
    os.environ["AUTOOFFLOAD_STREAM"] = "always"
    x = np.empty(int(a.n))
    x[...] = 1.0000001
    f = offload(scale)
    backend = backends.get("cupy")
    stamps: dict[str, float] = {}
    spans: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans[name] = spans.get(name, 0.0) + time.perf_counter() - start
                stamps.setdefault(name, start)
        return wrapper

    real_held, real_queued, real_host = backend.held_pinned, backend.to_device_queued, backend.to_host

    @contextlib.contextmanager
    def held(arrays):
        start = time.perf_counter()
        with real_held(arrays) as h:
            spans["held_pinned"] = time.perf_counter() - start
            stamps["held_pinned"] = start
            yield h

    def queued(host):
        stamps.setdefault("first copy", time.perf_counter())
        return real_queued(host)

    def to_host(*args, **kwargs):
        r = real_host(*args, **kwargs)
        stamps["last copy"] = time.perf_counter()
        return r

    backend.held_pinned, backend.to_device_queued, backend.to_host = held, queued, to_host
    backend.free_bytes = timed("free_bytes", backend.free_bytes)
    _executor._stream = type(sys)("stream_proxy")  # the executor's view of _stream, with plan and run timed
    _executor._stream.__dict__.update(vars(_stream))
    _executor._stream.plan = timed("plan", _stream.plan)
    _executor._stream.run = timed("run", _stream.run)
    _executor.Reachable = timed("Reachable", _executor.Reachable)
    rows: dict[str, list[float]] = {}
    with config(backend="cupy"):
        for r in range(a.repeats + 3):
            stamps.clear()
            spans.clear()
            cp.cuda.Device().synchronize()
            t0 = time.perf_counter()
            f(x)
            stamps["return"] = time.perf_counter()
            if r < 3:
                continue  # pinning, pools, first calls
            for k, v in stamps.items():
                rows.setdefault(f"at {k}", []).append((v - t0) * 1e3)
            for k, v in spans.items():
                rows.setdefault(f"{k} took", []).append(v * 1e3)
    print(f"x *= 5, n={a.n:.0e} float64, streamed (AUTOOFFLOAD_STREAM=always), medians of {a.repeats}, ms:")
    for k, v in sorted(rows.items(), key=lambda kv: statistics.median(kv[1])):
        print(f"  {k:<22} {statistics.median(v):8.3f}   (min {min(v):.3f}, max {max(v):.3f})")


if __name__ == "__main__":
    main()
