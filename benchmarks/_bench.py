"""Shared helpers of the benchmarks: timing, statistics, data, machine header, tables, JSON, plots.

The benchmarks keep their own timer on purpose: a yardstick that shares code with the thing it
measures (``autooffload._timing``) could fool itself along with it.

What one sample measures (``measure``): ``setup()`` (outside the clock), then ``loops`` back-to-back
calls of ``fn`` each followed by ``sync()``, read with ``time.perf_counter`` before and after,
divided by ``loops``. For CuPy work ``sync`` synchronizes the current stream, so the clock stops
only when the GPU has finished; a call that must hand back its result waits for it, so this is
the time a caller sees. Tiny calls are looped until one sample lasts ``min_sample_s`` (as pyperf
does). Each figure is the median of the samples, with their quartiles and extremes as the spread.

Everything here runs without CuPy: ``gpu()`` is then None and GPU columns read "n/a".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

DEFAULT_OUT = ROOT / "benchmarks" / "results"
NA = "n/a"


# -- the GPU, if there is one ------------------------------------------------------------------
_GPU: Any = False  # False: not looked for yet; None: none usable; else the cupy module


def gpu(disabled: bool = False):
    """The cupy module when CuPy imports and sees a CUDA device; None otherwise (never raises)."""
    global _GPU
    if disabled:
        return None
    if _GPU is False:
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("no CUDA device")
            cupy.cuda.Device().use()
            _GPU = cupy
        except Exception as exc:  # ImportError, CUDA errors: the GPU columns read n/a
            _GPU = None
            global GPU_UNAVAILABLE
            GPU_UNAVAILABLE = f"{type(exc).__name__}: {exc}"
    return _GPU


GPU_UNAVAILABLE: str | None = None


def sync_for(cp) -> Callable[[], None]:
    """A function that waits for the GPU's current stream (a no-op without a GPU)."""
    if cp is None:
        return _no_sync
    return lambda: cp.cuda.get_current_stream().synchronize()


def _no_sync() -> None:
    return None


def sync_if_offloaded(cp, decorated) -> Callable[[], None]:
    """Synchronize after a decorated call only when it ran on the GPU.

    A call that stayed on the host (NumPy or the Numba tier) queued no GPU work, and an idle-stream
    synchronization (~1-5 us) would be charged to it; a call that ran on CuPy is waited for, in case
    the library ever returned before its GPU work had finished. (Until session 12 a call on the
    Numba tier was synchronized too: on the H200, ``percentiles`` at 1e2 measured 12.8 us through
    ``@offload`` against 7.08 us for the tier's runner called directly,
    benchmarks/results/h200-session12/suite.run2.txt.)
    """
    if cp is None:
        return _no_sync
    sync = sync_for(cp)

    def maybe_sync() -> None:
        d = decorated.last_decision
        if d is not None and d.backend == "cupy":
            sync()

    return maybe_sync


def is_oom(exc: BaseException) -> bool:
    """Out of host or device memory (the size is then skipped with a note)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name in ("OutOfMemoryError",) or "out of memory" in str(exc).lower()


def free_gpu_memory(cp) -> None:
    if cp is None:
        return
    try:
        cp.cuda.get_current_stream().synchronize()
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()
    except Exception:
        pass


def host_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def gpu_free_bytes(cp) -> int | None:
    if cp is None:
        return None
    try:
        free_gpu_memory(cp)
        return int(cp.cuda.runtime.memGetInfo()[0])
    except Exception:
        return None


def decades(lo: float, hi: float) -> list[int]:
    """Powers of ten from lo to hi inclusive, as ints."""
    out, k = [], math.ceil(math.log10(lo) - 1e-9)
    while 10**k <= hi * (1 + 1e-9):
        out.append(10**k)
        k += 1
    return out


# -- statistics and timing ---------------------------------------------------------------------
@dataclass
class Stat:
    """Seconds per call: median of the samples, their quartiles and extremes."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int  # samples
    loops: int  # calls per sample
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, samples: Sequence[float], loops: int = 1) -> "Stat":
        s = sorted(samples)
        if len(s) >= 2:
            q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
        else:
            q1 = q3 = s[0]
        return cls(statistics.median(s), q1, q3, s[0], s[-1], len(s), loops, list(samples))

    @property
    def spread(self) -> float:
        """Half the interquartile range relative to the median."""
        return (self.q3 - self.q1) / 2 / self.median if self.median > 0 else 0.0

    def cell(self) -> str:
        return f"{fmt_time(self.median)} ±{self.spread * 100:.0f}%"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["spread"] = self.spread
        return d


def publish(args, name: str, info: dict, payload: dict, say, plot: Callable[[dict, Path], str | None]) -> dict:
    """Write the JSON and table (``write_results``), then the PNG unless --no-plot; returns ``payload``."""
    folder = write_results(args, name, info, payload, say.text())
    if not args.no_plot:
        png = folder / (f"{name}-gpu-smoke.png" if args.gpu_smoke else f"{name}.png")
        note = plot({**payload, "machine": info}, png)
        say(note or f"plot: {png}")
    say(f"results: {folder}")
    payload["folder"] = str(folder)
    return payload


def replot(json_path: Path, plot: Callable[[dict, Path], str | None]) -> dict:
    """``--replot``: redraw the PNG beside an earlier run's JSON with the script's ``plot``."""
    doc = json.loads(json_path.read_text())
    png = json_path.with_suffix(".png")
    note = plot(doc, png)
    print(note or f"plot: {png}")
    return doc


def wait_for_tier_compiles(max_s: float = 60.0) -> float:
    """Wait for the Numba tier's background compilations to end (where the tier loads); the
    seconds waited. One holds the GIL for much of its 0.3-5 s, and its function's calls are timed
    until it ends (``_learn``: +~10 us a call on the 2-core VM)."""
    from autooffload import backends

    start = time.perf_counter()
    tier = backends.module("numba")
    while tier is not None and tier.compiling_now() and time.perf_counter() - start < max_s:
        time.sleep(0.01)
    return time.perf_counter() - start


def settle(decorated, call: Callable[[], Any], *, setup: Callable[[], Any] | None = None,
           sync: Callable[[], None] = _no_sync, same: int = 3, max_calls: int = 40, max_s: float = 20.0,
           wait_for_compile: bool = True) -> list[str]:
    """Call until @offload's decision is stable, so the timed calls after are settled ones: the
    same backend ``same`` times in a row, not exploring, and (``wait_for_compile``) no
    compilation for the Numba tier pending: where ``max_calls`` run out while one is, it is
    waited for (up to ``max_s``) and the calls go on, ``max_calls`` more at most. At 1e5 the seed
    article's in-place chain "settled" after its 40 calls in a few ms while the tier compiled in
    the background for a second or two, and its timed window ran 1.11-1.87x NumPy on the 2-core VM
    (every call timed meanwhile, the compilation holding the GIL), 0.62-1.02x once settle waited
    (benchmarks/results/cpu-vm/settle-in-place-chain.session12.txt); on the H200 that row came
    out 0.77x NumPy (session 12, h200/seed_article.txt). Bounded by ``max_s`` (at 1e9 a call
    takes seconds). The backends of the calls made, in order."""
    seen: list[str] = []
    start = time.perf_counter()
    limit = max_calls
    while len(seen) < limit and time.perf_counter() - start < max_s:
        if setup is not None:
            setup()
        call()
        sync()
        d = decorated.last_decision
        seen.append(d.backend)
        compiling = wait_for_compile and "compiling" in d.reason
        if len(seen) >= same and len(set(seen[-same:])) == 1 and not d.exploring and not compiling:
            break
        if compiling and len(seen) == limit and limit == max_calls:
            wait_for_tier_compiles(max(0.0, max_s - (time.perf_counter() - start)))
            limit += max_calls
    return seen


def measure(
    fn: Callable[[], object],
    *,
    sync: Callable[[], object] | None = None,
    setup: Callable[[], object] | None = None,
    warmup: int = 1,
    repeats: int = 5,
    min_repeats: int = 3,
    min_sample_s: float = 0.02,
    max_s: float = 5.0,
    max_loops: int = 1_000_000,
) -> Stat:
    """Time ``fn()``: ``warmup`` untimed calls, then samples of ``loops`` calls each (see the top).

    Stops after ``repeats`` samples, or after ``min_repeats`` once ``max_s`` seconds were spent.
    """
    # One variant measured "side by side" with nothing: the same warm-up, loop search and stop rule.
    return measure_interleaved(
        {"fn": fn}, sync=sync, setups={"fn": setup}, warmup=warmup, repeats=repeats, min_repeats=min_repeats,
        min_sample_s=min_sample_s, max_s=max_s, max_loops=max_loops,
    )["fn"]


def measure_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    sync: Callable[[], object] | dict[str, Callable[[], object]] | None = None,
    setups: dict[str, Callable[[], object] | None] | None = None,
    warmup: int | dict[str, int] = 1,
    repeats: int = 5,
    min_repeats: int = 3,
    min_sample_s: float = 0.02,
    max_s: float = 5.0,
    max_loops: int = 1_000_000,
) -> dict[str, Stat]:
    """Time several variants side by side: one sample of each per round (ABC CBA ABC ...).

    Drift of the machine (frequency, other tenants, page cache) then hits every variant alike,
    which matters when two figures are divided. Each variant keeps its own loop count (as in
    ``measure``) and its own ``sync`` (a dict by name, or one for all). Stops after ``repeats`` rounds, or after ``min_repeats`` once ``max_s`` seconds
    per variant were spent.
    """
    names = list(fns)
    syncs = {k: (sync.get(k) if isinstance(sync, dict) else sync) or _no_sync for k in names}
    setups = setups or {}
    clock = time.perf_counter
    start = clock()
    for name in names:
        for _ in range(warmup.get(name, 1) if isinstance(warmup, dict) else warmup):
            if setups.get(name):
                setups[name]()
            fns[name]()
            syncs[name]()

    def sample(name: str, loops: int) -> float:
        setup, fn, sync = setups.get(name), fns[name], syncs[name]
        if setup is not None:
            setup()
        sync()
        t0 = clock()
        for _ in range(loops):
            fn()
            sync()
        return (clock() - t0) / loops

    loops: dict[str, int] = {}
    samples: dict[str, list[float]] = {}
    for name in names:
        n, per_call = 1, sample(name, 1)
        if per_call >= min_sample_s:
            # One slow call (a garbage collection, a compilation elsewhere: 115-172 ms once in a
            # 20 us Black-Scholes row on the 2-core VM) must not make every sample a single call.
            per_call = min(per_call, sample(name, 1))
        while per_call * n < min_sample_s and n < max_loops:
            grow = 10 * n if per_call <= 0 else math.ceil(1.2 * min_sample_s / per_call)
            n = min(max_loops, max(2 * n, grow))
            per_call = sample(name, n)
        loops[name] = n
        samples[name] = [per_call]
    rounds = 1
    while rounds < repeats:
        if rounds >= min_repeats and clock() - start >= max_s * len(names):
            break
        order = names if rounds % 2 == 0 else names[::-1]
        for name in order:
            samples[name].append(sample(name, loops[name]))
        rounds += 1
    return {name: Stat.of(samples[name], loops[name]) for name in names}


def measure_unsynced(fn: Callable[[], object], *, sync: Callable[[], object], warmup: int = 1, repeats: int = 5) -> Stat:
    """The seed article's way: ``time.time()`` around one call, no synchronization inside.

    The GPU is synchronized after the clock has stopped, so queued work does not pile up from one
    sample into the next; what the clock saw is only the launch. Not a measurement of the work.
    """
    for _ in range(warmup):
        fn()
        sync()
    samples = []
    for _ in range(repeats):
        t0 = time.time()
        fn()
        t1 = time.time()
        sync()
        samples.append(t1 - t0)
    return Stat.of(samples, 1)


def time_once(fn: Callable[[], object], sync: Callable[[], object] | None = None) -> tuple[float, Any]:
    """(seconds, result) of one synchronized call."""
    sync = sync or _no_sync
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def fastest_per_call_us(variants: dict[str, Callable[[], object]], rounds: int = 41, calls: int = 2000) -> dict[str, float]:
    """Each variant's fastest time per call, in microseconds, over ``rounds`` rounds that
    interleave the variants, each ``calls`` back-to-back calls after 200 untimed ones: the floor,
    which moves least on a shared VM (the overhead tools' A/B of the decorator's own Python)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, call in variants.items():
            for _ in range(200):
                call()
            t = time.perf_counter()
            for _ in range(calls):
                call()
            times[k].append((time.perf_counter() - t) / calls * 1e6)
    return {k: min(v) for k, v in times.items()}


def geomean(values: Sequence[float]) -> float:
    vals = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


def crossover(sizes: Sequence[float], speedups: Sequence[float | None]) -> float | None:
    """Size where the speedup first rises through 1 (log-log interpolated); None if it never does.

    If the first measured size already has a speedup >= 1, that size is returned.
    """
    pts = [(s, v) for s, v in zip(sizes, speedups) if v is not None and v > 0 and math.isfinite(v)]
    for i, (s, v) in enumerate(pts):
        if v >= 1:
            if i == 0:
                return float(s)
            s0, v0 = pts[i - 1]
            if v0 >= 1:
                return float(s0)
            t = (0 - math.log(v0)) / (math.log(v) - math.log(v0))
            return float(math.exp(math.log(s0) + t * (math.log(s) - math.log(s0))))
    return None


# -- data --------------------------------------------------------------------------------------
def rng(seed: int = 20261124) -> np.random.Generator:
    return np.random.default_rng(seed)


def never_zero(n: int | tuple, *, lo: float = 0.5, hi: float = 1.5, seed: int = 1, dtype=np.float64) -> np.ndarray:
    """Uniform random values in [lo, hi): never zero, never denormal (zeros flatter some paths)."""
    if lo <= 0 <= hi:
        raise ValueError("never_zero needs an interval that excludes 0")
    a = rng(seed).random(n, dtype=np.float64)
    a *= hi - lo
    a += lo
    return a.astype(dtype, copy=False)


# -- formatting --------------------------------------------------------------------------------
def fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return NA
    for unit, m in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if abs(s) >= m or unit == "ns":
            v = s / m
            return f"{v:.3g} {unit}" if abs(v) < 1000 else f"{v:.0f} {unit}"
    return f"{s:.3g} s"


def fmt_x(v: float | None) -> str:
    """A ratio, e.g. speedup: '12.3x', '0.05x'."""
    if v is None or not math.isfinite(v):
        return NA
    return f"{v:.3g}x" if v < 1000 else f"{v:.0f}x"


def fmt_n(n: float) -> str:
    """1e4 style for powers of ten, else 3 significant digits."""
    if n <= 0:
        return str(n)
    k = math.log10(n)
    if abs(k - round(k)) < 1e-9:
        return f"1e{round(k)}"
    return f"{n:.3g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, left: int = 1) -> str:
    """A plain-text table, columns aligned; the first ``left`` columns left-aligned, the rest right."""
    cells = [[str(h) for h in headers]] + [[NA if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join((c.ljust(w) if i < left else c.rjust(w)) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


# -- the machine -------------------------------------------------------------------------------
def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_details(cp) -> dict:
    if cp is None:
        return {}
    d: dict[str, Any] = {}
    try:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props.get("name", b"")
        d["gpu_name"] = name.decode() if isinstance(name, bytes) else str(name)
        d["gpu_memory_bytes"] = int(props.get("totalGlobalMem", 0))
        d["compute_capability"] = f"{props.get('major')}.{props.get('minor')}"
    except Exception as exc:
        d["gpu_name"] = f"unknown ({type(exc).__name__})"
    for key, getter in (
        ("cuda_driver", lambda: cp.cuda.runtime.driverGetVersion()),
        ("cuda_runtime", lambda: cp.cuda.runtime.runtimeGetVersion()),
    ):
        try:
            d[key] = int(getter())
        except Exception:
            pass
    return d


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() or None
        if commit:
            dirty = subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", "src"],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            return commit + ("+dirty-src" if dirty else "")
    except Exception:
        return None
    return None


def _blas() -> str | None:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name')} {blas.get('version', '')}".strip() or None
    except Exception:
        return None


def profile_source() -> str:
    """Which calibration profile @offload decides with here (path, 'built-in', ...)."""
    try:
        from autooffload._profiles import active_profile

        return str(active_profile().source)
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def machine_info(cp) -> dict:
    import autooffload
    from autooffload._cores import usable_cores

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cores(),  # affinity capped by the cgroup quota
        "host_memory_available_bytes": host_available_bytes(),
        "numpy": np.__version__,
        "blas": _blas(),
        "cupy": getattr(cp, "__version__", None) if cp is not None else None,
        "autooffload": autooffload.__version__,
        "git_commit": _git_commit(),
        "gpu_unavailable": GPU_UNAVAILABLE if cp is None else None,
    }
    info.update(gpu_details(cp))
    return info


def machine_slug(info: dict, given: str | None = None) -> str:
    if given:
        return slug(given)
    name = info.get("gpu_name")
    if name:
        return "h100" if "H100" in name.upper() else slug(name)
    host = slug(info.get("hostname", "host").split(".")[0])
    return f"cpu-{host}"


def header(title: str, info: dict) -> str:
    gpu_line = (
        f"{info.get('gpu_name')} ({info.get('gpu_memory_bytes', 0) / 2**30:.0f} GiB, cc {info.get('compute_capability')}, "
        f"driver {info.get('cuda_driver')}, runtime {info.get('cuda_runtime')})"
        if info.get("gpu_name")
        else f"none ({info.get('gpu_unavailable') or 'CuPy not used'})"
    )
    return "\n".join(
        [
            f"# {title}",
            f"# {info['date']}  host {info['hostname']}  {info['cpu_model']} x{info['cpus_usable']}  "
            f"python {info['python']}",
            f"# GPU: {gpu_line}",
            f"# numpy {info['numpy']} ({info.get('blas') or 'BLAS ?'})  cupy {info.get('cupy') or NA}  "
            f"autooffload {info['autooffload']} ({info.get('git_commit') or 'no git'})",
        ]
    )


# -- command line and output -------------------------------------------------------------------
def parse_count(s: str) -> int:
    """'1e6', '1000000', '2.5e7' -> int."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of elements: {s!r} (e.g. 1e6)")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {s!r}")
    return int(round(v))


def common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--machine", help="results folder name (default: h100 / a slug of the GPU name / cpu-<host>)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results root (default: benchmarks/results)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.add_argument("--no-gpu", action="store_true", help="leave CuPy out even if it is there (GPU columns n/a)")
    p.add_argument("--gpu-smoke", action="store_true",
                   help="every GPU code path at tiny sizes in a few seconds (a check before the long run)")


def write_results(args, name: str, info: dict, payload: dict, text: str) -> Path:
    """Write <out>/<machine>/<name>.json and <name>.txt (the printed table); return the folder."""
    folder = Path(args.out) / machine_slug(info, args.machine)
    if getattr(args, "gpu_smoke", False):
        name = f"{name}-gpu-smoke"
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "format": 1, "machine": info, "argv": sys.argv[1:] if args.argv is None else args.argv}
    doc.update(payload)
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default, allow_nan=True) + "\n")
    os.replace(tmp, folder / f"{name}.json")
    (folder / f"{name}.txt").write_text(text + "\n")
    return folder


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Stat):
        return o.as_dict()
    return str(o)


def plot_speedups(path: Path, panels: dict[str, dict[str, tuple[list[float], list[float | None]]]], *,
                  title: str, xlabel: str = "elements", mark: Sequence[str] | None = None) -> str | None:
    """One panel per entry: {panel: {series: (sizes, speedups)}}, log-log, the line y=1, and the
    crossover (speedup rising through 1) of the series named in ``mark`` (of each series if None)
    marked with a dotted line. Returns a note if the plot was skipped, else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"plot skipped: matplotlib is not importable ({type(exc).__name__}); pip install matplotlib"
    n = len(panels)
    if n == 0:
        return "plot skipped: nothing to plot"
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax, (panel, series) in zip(axes.flat, panels.items()):
        plotted = False
        lo, hi = 0.5, 2.0  # at least 0.5x .. 2x, so that noise around 1x looks like noise
        for label, (sizes, ys) in series.items():
            pts = [(s, y) for s, y in zip(sizes, ys) if y is not None and y > 0 and math.isfinite(y)]
            if not pts:
                continue
            plotted = True
            lo, hi = min(lo, min(p[1] for p in pts) / 1.3), max(hi, max(p[1] for p in pts) * 1.3)
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
            if mark is None or label in mark:
                x = crossover([p[0] for p in pts], [p[1] for p in pts])
                if x is not None and x > pts[0][0]:
                    ax.axvline(x, color=line.get_color(), ls=":", lw=1)
                    ax.annotate(f"{fmt_n(x)}", (x, 1), textcoords="offset points", xytext=(3, 6),
                                fontsize=7, color=line.get_color())
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        if plotted:
            ax.set_yscale("log")
            ax.set_ylim(lo, hi)
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("speedup vs NumPy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
        if plotted:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


class Tee:
    """Collects what a benchmark prints so the same text lands in <name>.txt."""

    def __init__(self, quiet: bool = False):
        self.lines: list[str] = []
        self.quiet = quiet

    def __call__(self, *parts: Any) -> None:
        text = " ".join(str(p) for p in parts)
        self.lines.append(text)
        if not self.quiet:
            print(text, flush=True)

    def text(self) -> str:
        return "\n".join(self.lines)


def finish_args(args: argparse.Namespace, argv: Sequence[str] | None) -> argparse.Namespace:
    args.argv = list(argv) if argv is not None else None
    return args


def warm_offload_gpu(cp) -> str:
    """Let @offload know the GPU is warm, the public way: one call forced onto CuPy.

    A long-running program that has already used the GPU is in this state; without it the cost
    model charges each decision the cold start (about a second) until the ski-rental rule pays it.
    """
    if cp is None:
        return "no GPU"
    from autooffload import offload

    @offload(backend="cupy", pure=True)
    def _warm(a):
        return a + 1

    t0 = time.perf_counter()
    try:
        _warm(np.ones(8))
    except Exception as exc:  # @offload cannot use this GPU: its decisions will say why
        return f"@offload could not use the GPU for the warm-up call ({type(exc).__name__}: {exc})"
    return f"GPU warmed through @offload(backend='cupy') in {time.perf_counter() - t0:.2f} s"
