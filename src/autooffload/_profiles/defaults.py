"""Built-in profile: used when no calibrated or shipped profile fits this machine.

Numbers come from ../shared/design/MEASURED-H100.md (NVIDIA H100 80GB, 16 CPU cores, numpy 2.5,
cupy 14, float64). Curves are keyed by the bytes of all array inputs (a*5+b at n elements reads
2*8*n bytes). The copy curves are those of plain ``cupy.asarray`` / ``cupy.asnumpy`` from pageable
memory, the slowest path, which makes the defaults conservative: with host-resident data the GPU
is chosen only for large, expensive work. ``autooffload calibrate`` replaces all of this with
this machine's own measurements.
"""

from __future__ import annotations

from datetime import datetime, timezone

from .model import BackendTiming, Curve, Fingerprint, Profile

KiB, MiB, GiB = 1024.0, 1024.0**2, 1024.0**3

# Tiny-call floor: 8 elements, warm: NumPy 0.8 us, CuPy 16 us.
_TINY_BYTES = 64.0
_CPU_TINY = 0.8e-6
_GPU_TINY = 16e-6


def _curve(points: list[tuple[float, float]]) -> Curve:
    points = sorted(points)
    return Curve(nbytes=[b for b, _ in points], seconds=[s for _, s in points])


def _builtin_kinds() -> tuple[dict[str, Curve], dict[str, Curve]]:
    """(NumPy curves, CuPy curves) by kind; each kind's first point is the tiny-call floor."""
    measured = {
        # kind: (NumPy points, CuPy points)
        # a*5+b, two float64 inputs of n elements: 16 n bytes.
        "elementwise": (
            [(1.6e5, 9.7e-6), (1.6e7, 1.4e-3), (1.6e9, 0.367)],
            [(1.6e5, 2.7e-5), (1.6e7, 3.3e-5), (1.6e9, 1.6e-3)],
        ),
        # sin(a)*exp(b)+sqrt(abs(a)), two inputs.
        "transcendental": (
            [(1.6e5, 1.7e-4), (1.6e6, 1.8e-3), (1.6e9, 2.25)],
            [(1.6e5, 7.6e-5), (1.6e6, 8.3e-5), (1.6e9, 3.8e-3)],
        ),
        # sum of one input.
        "reduction": (
            [(8e6, 3.4e-4), (8e8, 0.108)],
            [(8e6, 2.2e-5), (8e8, 2.9e-4)],
        ),
        "sort": (
            [(8e5, 5.9e-4), (2.4e8, 0.399)],
            [(8e5, 1.3e-4), (2.4e8, 2.2e-3)],
        ),
        "fft": (
            [(8e4, 1.2e-4), (8e6, 3.6e-2)],
            [(8e4, 4.2e-5), (8e6, 6.3e-5)],
        ),
        # n x n @ n x n: 16 n^2 bytes in.
        "matmul": (
            [(2.6e5, 3.9e-5), (1.68e7, 4.2e-3), (1.07e9, 1.96)],
            [(2.6e5, 3.2e-5), (1.68e7, 6.3e-5), (1.07e9, 1.8e-2)],
        ),
    }
    host = {kind: _curve([(_TINY_BYTES, _CPU_TINY), *cpu]) for kind, (cpu, _) in measured.items()}
    device = {kind: _curve([(_TINY_BYTES, _GPU_TINY), *gpu]) for kind, (_, gpu) in measured.items()}
    # Not measured on the H100 yet: derived conservatively. LU solve does ~1/3 of a matmul's
    # flops on the CPU; cuSOLVER has a higher floor (~0.2 ms) and no better rate than matmul.
    host["solve"] = _curve([(b, s / 3) for b, s in zip(host["matmul"].nbytes, host["matmul"].seconds)])
    device["solve"] = _curve([(b, max(s, 2e-4)) for b, s in zip(device["matmul"].nbytes, device["matmul"].seconds)])
    # Random generation is elementwise-like per output byte; NumPy's Generator is ~3x a*5+b.
    host["random"] = _curve([(b, s * 3) for b, s in zip(host["elementwise"].nbytes, host["elementwise"].seconds)])
    device["random"] = device["elementwise"]
    # Unknown work: assume the cheapest kind, so the GPU is chosen only where even that pays.
    host["generic"], device["generic"] = host["elementwise"], device["elementwise"]
    return host, device


def builtin_profile() -> Profile:
    """The conservative built-in profile (see the module docstring)."""
    host_kinds, device_kinds = _builtin_kinds()
    return Profile(
        autooffload_version="builtin",
        # Where the numbers come from (MEASURED-H100.md), not this machine.
        created=datetime(2026, 11, 24, tzinfo=timezone.utc),
        fingerprint=Fingerprint(
            cpu_model="Intel(R) Xeon(R) Processor (MEASURED-H100.md)", cpu_cores=16,
            gpu_name="NVIDIA H100 80GB HBM3", python_version="3.12", numpy_version="2.5.2", cupy_version="14.2.0",
        ),
        backends={
            "numpy": BackendTiming(memory="host", kinds=host_kinds),
            "cupy": BackendTiming(
                memory="device",
                kinds=device_kinds,
                warmup_s=1.25,
                launch_latency_s=_GPU_TINY,
                transfer_engine="cupy-default",
                # cupy.asarray from pageable memory: 4 KiB 35 us, 1 MiB 185 us, 4 MiB 608 us, 1 GiB at 6.7 GB/s.
                h2d=_curve([(4 * KiB, 35e-6), (1 * MiB, 185e-6), (4 * MiB, 608e-6), (1 * GiB, GiB / 6.7e9)]),
                # cupy.asnumpy: 4 KiB 19 us, 1 MiB 150 us, 4 MiB 470 us; large copies 3-10 GB/s: take 5.
                d2h=_curve([(4 * KiB, 19e-6), (1 * MiB, 150e-6), (4 * MiB, 470e-6), (1 * GiB, GiB / 5e9)]),
            ),
        },
        notes=["built-in defaults from MEASURED-H100.md; run `autooffload calibrate` for this machine"],
    ).with_source("built-in")
