"""Plot a profile: NumPy vs CuPy seconds against input bytes per kind, crossovers marked.

matplotlib is an optional extra (``pip install 'autooffload[plot]'``), imported only here and
only when a plot is asked for. The Agg canvas is used directly (no pyplot), so plotting never
touches a display or pyplot's global state.
"""

from __future__ import annotations

import math
from datetime import timezone
from pathlib import Path

from ._costmodel import CUPY, NUMPY, Request, crossover, predict
from ._profiles import Curve, Profile
from ._units import format_bytes


class PlotUnavailableError(ImportError):
    """matplotlib is not installed."""


def _grid(lo: float, hi: float, points: int = 64) -> list[float]:
    step = (math.log(hi) - math.log(lo)) / (points - 1)
    return [math.exp(math.log(lo) + i * step) for i in range(points)]


def _host_resident_gpu_seconds(profile: Profile, kind: str, nbytes: float) -> float | None:
    """Warm GPU seconds with numpy data in and out: compute plus both copies."""
    return predict(profile, Request(kind, host_bytes=int(nbytes), largest_bytes=int(nbytes), gpu_ready=True)).seconds[CUPY]


def _device_resident_cpu_seconds(profile: Profile, kind: str, nbytes: float) -> float | None:
    """NumPy seconds with cupy data in and out: copies to the host and back plus compute."""
    return predict(profile, Request(kind, device_bytes=int(nbytes), largest_bytes=int(nbytes), gpu_ready=True)).seconds[NUMPY]


def _kind_curves(profile: Profile, backend: str) -> dict[str, Curve]:
    timing = profile.backend(backend)
    return timing.kinds if timing is not None else {}


def _plot_curve_points(ax, curve: Curve, color: str, label: str) -> None:
    noisy = curve.noisy or [False] * len(curve.nbytes)
    clean = [(b, s) for b, s, n in zip(curve.nbytes, curve.seconds, noisy) if not n]
    rough = [(b, s) for b, s, n in zip(curve.nbytes, curve.seconds, noisy) if n]
    if clean:
        ax.plot(*zip(*clean), "o", color=color, markersize=3.5, label=f"{label} (measured)")
    if rough:
        ax.plot(*zip(*rough), "o", markerfacecolor="none", color=color, markersize=5, label=f"{label} (noisy)")


def plot_profile(profile: Profile, output: str | Path) -> Path:
    """Write the per-kind timing plot of ``profile`` to ``output`` (format from its suffix)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotUnavailableError(
            "plotting needs matplotlib: pip install 'autooffload[plot]' (or matplotlib>=3.7)"
        ) from e

    numpy_kinds, cupy_kinds = _kind_curves(profile, NUMPY), _kind_curves(profile, CUPY)
    gpu_usable = profile.has_device_timings()

    def same_as_elementwise(kind: str) -> bool:  # the sweep's "generic" repeats "elementwise"
        return all(k.get(kind) == k.get("elementwise") for k in (numpy_kinds, cupy_kinds))

    kinds = [k for k in numpy_kinds if not (k == "generic" and same_as_elementwise(k))]
    columns = 3
    rows = max(1, math.ceil(len(kinds) / columns))
    fig = Figure(figsize=(5.0 * columns, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, kind in zip(axes, kinds):
        cpu, gpu = numpy_kinds[kind], cupy_kinds.get(kind)
        curves = [cpu] + ([gpu] if gpu is not None else [])
        lo = min(c.nbytes[0] for c in curves)
        hi = max(c.nbytes[-1] for c in curves) * 4
        xs = _grid(lo, hi)
        ax.plot(xs, [cpu.predict(x) for x in xs], "-", color="tab:blue", label="NumPy (CPU)")
        _plot_curve_points(ax, cpu, "tab:blue", "NumPy")
        if gpu is not None and gpu_usable:
            ax.plot(xs, [gpu.predict(x) for x in xs], "-", color="tab:green", label="CuPy, data on GPU")
            _plot_curve_points(ax, gpu, "tab:green", "CuPy")
            host = [_host_resident_gpu_seconds(profile, kind, x) for x in xs]
            ax.plot(xs, host, "--", color="tab:red", label="CuPy + copies, data on host")
            device = [_device_resident_cpu_seconds(profile, kind, x) for x in xs]
            ax.plot(xs, device, ":", color="tab:blue", label="NumPy + copies, data on GPU")
            for location, color in (("host", "tab:red"), ("device", "tab:green")):
                at = crossover(profile, kind, location)  # the same search as `autooffload show`
                if at is not None and at <= hi:
                    ax.axvline(at, color=color, linestyle=":", linewidth=1.2)
                    ax.annotate(
                        f"{location}: {format_bytes(at)}",
                        xy=(at, 0.97 if location == "host" else 0.88),
                        xycoords=("data", "axes fraction"),
                        fontsize=7,
                        color=color,
                        ha="left",
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(kind)
        ax.set_xlabel("input bytes")
        ax.set_ylabel("seconds per call")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=6, loc="upper left" if gpu is None else "lower right")
    for ax in axes[len(kinds):]:
        ax.set_visible(False)

    fp = profile.fingerprint
    gpu_name = fp.gpu_name or "no GPU"
    created = profile.created.astimezone(timezone.utc).strftime("%Y-%m-%d")
    fig.suptitle(
        f"autooffload profile: {fp.cpu_model} ({fp.cpu_cores} cores), {gpu_name}; "
        f"{'quick' if profile.quick else 'default'} sweep {created}; dotted lines: crossovers"
    )
    output = Path(output)
    fig.savefig(output, dpi=110)
    return output
