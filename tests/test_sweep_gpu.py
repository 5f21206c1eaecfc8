"""The sweep on a real GPU: a quick calibration end to end, checked against direct timings.

Set AUTOOFFLOAD_GPU_TEST_OUT to a folder to keep the quick profile (``quick-profile.json``) and
its wall time (``quick-sweep.txt``).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

cupy = pytest.importorskip("cupy")
try:
    _DEVICES = cupy.cuda.runtime.getDeviceCount()
except Exception:  # CuPy without a driver or device
    _DEVICES = 0
if _DEVICES < 1:
    pytest.skip("no CUDA device", allow_module_level=True)

from autooffload._costmodel import KINDS, crossover  # noqa: E402
from autooffload._profiles import machine_id, save_profile, this_machine_mismatch  # noqa: E402
from autooffload._sweep import SEED, SweepPlan, _random, run_sweep  # noqa: E402
from autooffload._timing import TimerSettings, measure  # noqa: E402

KiB, MiB = 1024, 1024**2
QUICK_LIMIT_S = 60.0
DIRECT_TIMER = TimerSettings(warmup=2, repeats=5, min_repeats=3, min_sample_s=2e-3, max_point_s=0.5)


def _copies():
    try:
        from autooffload import _transfer

        return _transfer.to_device, _transfer.to_host
    except ImportError:  # the transfer engine is not there: the sweep measured CuPy's own copies
        return cupy.asarray, cupy.asnumpy


def _sync():
    cupy.cuda.get_current_stream().synchronize()


@pytest.fixture(scope="module")
def quick():
    started = time.perf_counter()
    profile = run_sweep(SweepPlan.quick())
    wall = time.perf_counter() - started
    out = os.environ.get("AUTOOFFLOAD_GPU_TEST_OUT")
    if out:
        save_profile(profile, Path(out) / "quick-profile.json")
        (Path(out) / "quick-sweep.txt").write_text(f"quick sweep wall time {wall:.1f} s\n")
    return profile, wall


def test_quick_sweep_end_to_end(quick):
    profile, wall = quick
    assert wall < QUICK_LIMIT_S, f"quick sweep took {wall:.1f} s"
    assert profile.has_device_timings()
    cpu, gpu = profile.backend("numpy"), profile.backend("cupy")
    assert set(cpu.kinds) == set(gpu.kinds) == set(KINDS)
    for kind in KINDS:
        assert len(cpu.kinds[kind].nbytes) >= 5 and len(gpu.kinds[kind].nbytes) >= 5, kind
    assert gpu.h2d.nbytes[-1] >= 64 * MiB and gpu.d2h.nbytes[-1] >= 64 * MiB
    assert 1e-6 < gpu.launch_latency_s < 1e-3
    assert gpu.warmup_s is not None and 0.05 < gpu.warmup_s < 30
    fp = profile.fingerprint
    assert fp.gpu_name and fp.gpu_compute_capability and fp.gpu_memory_bytes and fp.cuda_runtime_version
    # The loader will recognise this machine in its saved profile.
    assert this_machine_mismatch(fp) is None
    assert machine_id() == machine_id()


def _first_gpu_win(make_inputs, cpu_call, gpu_call, sizes) -> float | None:
    """Smallest size at which the GPU pipeline beats the CPU one, timed directly."""
    for size in sizes:
        host_args, device_args, nbytes = make_inputs(size)
        cpu = measure(lambda: cpu_call(*host_args, *device_args), sync=_sync, settings=DIRECT_TIMER).median_s
        gpu = measure(lambda: gpu_call(*host_args, *device_args), sync=_sync, settings=DIRECT_TIMER).median_s
        cupy.get_default_memory_pool().free_all_blocks()
        if gpu < cpu:
            return float(nbytes)
    return None


def _agree(from_profile: float | None, direct: float | None, largest: float, what: str) -> None:
    out = os.environ.get("AUTOOFFLOAD_GPU_TEST_OUT")
    if out:
        with open(Path(out) / "quick-sweep.txt", "a") as f:
            f.write(f"{what}: crossover from the profile {from_profile}, from direct timing {direct} bytes\n")
    # "Never" within the searched sizes counts as twice the largest size searched.
    p = from_profile if from_profile is not None and from_profile <= largest else 2 * largest
    d = direct if direct is not None else 2 * largest
    assert max(p, d) / min(p, d) <= 4.0, f"profile says {from_profile}, direct timing says {direct}"


SIZES = [KiB * 2**i for i in range(0, 19)]  # 1 KiB .. 256 MiB


def test_transcendental_host_crossover_matches_direct_timing(quick):
    profile, _ = quick
    to_device, to_host = _copies()

    def make(size):
        n = max(1, size // 16)
        a, b = _random(np, n, SEED), _random(np, n, SEED + 1)
        return (a, b), (), 16 * n

    direct = _first_gpu_win(
        make,
        lambda a, b: np.sin(a) * np.exp(b) + np.sqrt(np.abs(a)),
        lambda a, b: to_host(_gpu_transcendental(to_device(a), to_device(b))),
        SIZES,
    )
    _agree(crossover(profile, "transcendental", "host"), direct, SIZES[-1], "transcendental, host data")


def _gpu_transcendental(a, b):
    return cupy.sin(a) * cupy.exp(b) + cupy.sqrt(cupy.abs(a))


def test_matmul_device_crossover_matches_direct_timing(quick):
    profile, _ = quick
    to_device, to_host = _copies()

    def make(size):
        n = max(2, math.isqrt(size // 16))
        a, b = _random(cupy, (n, n), SEED), _random(cupy, (n, n), SEED + 1)
        _sync()
        return (), (a, b), 16 * n * n

    # Device data: NumPy must fetch the inputs and send the result back; CuPy computes in place.
    direct = _first_gpu_win(
        make,
        lambda a, b: to_device(to_host(a) @ to_host(b)),
        lambda a, b: a @ b,
        SIZES,
    )
    _agree(crossover(profile, "matmul", "device"), direct, SIZES[-1], "matmul, device data")
