"""What the light device path costs beyond the same copies and call written by hand, on the CPU.

    PYTHONPATH=src python3 tools/device_path_overhead.py
    PYTHONPATH=/path/to/other/checkout/src python3 tools/device_path_overhead.py   # A/B: alternate processes

The FakeDevice test double (tests/fake_device.py) stands in for the GPU, so what differs between
the columns is autooffload's own Python: ``@offload(backend="cupy")`` on a 100-element array
against ``device.to_device`` + the function + ``device.to_host`` by hand, for a sort (not
blockwise) and for ``x * 2.0 + 1.0`` (blockwise). Rounds interleave the variants; each figure is
the fastest of 41 rounds of 2000 calls (the floor, which moves least on a shared VM). A third
column (``floor``) runs the same decorator with the executor's layers stripped (``_strip``): what
a leaner plain path could approach. On the H200
host the same Python ran ~3x slower than on the 2-core CPU VM (session 10: 40-52 us there,
benchmarks/results/h200-session10/gpu_gaps.parts.txt, against ~15 us here).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import fake_device  # noqa: E402
from _bench import fastest_per_call_us  # noqa: E402

from autooffload import offload  # noqa: E402
from autooffload.backends import cupy as device_backend  # noqa: E402


def sort(x, xp=np):
    return xp.sort(x)


def affine(x, xp=np):
    return x * 2.0 + 1.0


def main() -> None:
    dev = fake_device.FakeDevice()
    device_backend.set_backend_for_tests(dev)
    x = np.random.default_rng(0).uniform(-1, 1, 100)

    def by_hand(fn):
        return dev.to_host(fn(dev.to_device(x), xp=fake_device.fake_cupy))

    variants = {}
    for name, fn in (("sort", sort), ("x*2+1", affine)):
        forced = offload(backend="cupy")(fn)
        floor = offload(backend="cupy")(fn)
        floor(x)
        _strip(floor, dev)
        variants[f"by hand {name}"] = lambda fn=fn: by_hand(fn)
        variants[f"@offload {name}"] = lambda forced=forced: forced(x)
        variants[f"floor {name}"] = lambda floor=floor: floor(x)
    best = fastest_per_call_us(variants)
    print("  ".join(f"{k} {v:.2f} us" for k, v in best.items()))
    print("overhead: " + ", ".join(f"{name} {best[f'@offload {name}'] - best[f'by hand {name}']:.2f} us"
                                   for name in ("sort", "x*2+1")))
    print("over the floor: " + ", ".join(f"{name} {best[f'@offload {name}'] - best[f'floor {name}']:.2f} us"
                                         for name in ("sort", "x*2+1")))


def _strip(offloaded, dev) -> None:
    """``offloaded``'s device runs without the executor's layers: the hot path and decision as
    ever, then the plain-call check, the copies in and out timed into the copy meter, the call
    and the run's record, and nothing else (no ``Moved``, result mapping, overlap check, twin
    refresh, ``xp`` passed or synchronize). Not a correct path for every result: a floor that a
    leaner plain path could approach (benchmarks/results/cpu-vm/device-path-floor.session20.txt)."""
    import time

    executor = offloaded.__autooffload__.executor
    fn, twin, _ = executor.runner(dev)
    perf = time.perf_counter

    def run_device(d, args, kwargs, backend=None):
        start = perf()
        if not executor.plain_call(args, kwargs, twin):
            raise AssertionError("not a plain call")
        meter = executor.records.timesheet.meter(d.backend)
        t = perf()
        copy = dev.to_device(args[0])
        meter.copied(True, copy.nbytes, perf() - t)
        result = fn(copy, *args[1:])
        t = perf()
        host = dev.to_host(result)
        meter.copied(False, host.nbytes, perf() - t)
        executor.records.ran(d.backend, perf() - start, d.bucket)
        return host

    executor.run_device = run_device


if __name__ == "__main__":
    main()
