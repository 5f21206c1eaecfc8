"""The sweep end to end on the CPU: fake clock and fake work make every timing exact."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest

from autooffload import _profiles, _sweep
from autooffload._profiles import fingerprint as fingerprint_module
from autooffload._costmodel import KINDS, Request, crossover, predict
from autooffload._profiles import load_profile, save_profile
from autooffload._sweep import (
    WORKLOADS,
    CompiledSide,
    DeviceSide,
    SweepPlan,
    Workload,
    cupy_side,
    geometric_sizes,
    measure_cold_start,
    numpy_side,
    run_sweep,
    sweep_sides,
)
from autooffload._timing import FakeClock, TimerSettings

KiB, MiB, GiB = 1024, 1024**2, 1024**3
FAST_TIMER = TimerSettings(warmup=1, repeats=3, min_repeats=3, min_sample_s=0.0, max_point_s=100.0)
FAKE_GPU = SimpleNamespace(name="fake-gpu")  # stands in for the cupy module


# Fake costs, in powers of two so every measured median is exact.
def cpu_cost(nbytes: int) -> float:
    return nbytes * 2.0**-30  # 1 ns/byte-ish


def gpu_cost(nbytes: int) -> float:
    return 2.0**-16 + nbytes * 2.0**-36  # 15 us floor, fast beyond


def copy_cost(nbytes: int) -> float:
    return 2.0**-17 + nbytes * 2.0**-33


def fake_workloads(clock: FakeClock, kinds=tuple(WORKLOADS), gpu_out_of_memory_from: float = math.inf):
    def prepare(xp, target, seed):
        if xp is FAKE_GPU and target >= gpu_out_of_memory_from:
            raise MemoryError("fake GPU out of memory")
        return (target,), target

    def run(xp, nbytes):
        clock.advance(gpu_cost(nbytes) if xp is FAKE_GPU else cpu_cost(nbytes))

    return {k: Workload(k, prepare, run, working_set=2.0) for k in kinds}


def with_device(device: DeviceSide) -> dict:
    """The sides of a machine with NumPy and ``device`` (as "cupy")."""
    return {"numpy": numpy_side(), device.name: device}


CPU_ONLY = {"numpy": numpy_side()}


def fake_gpu(clock: FakeClock, cold_start: float | None = 1.5) -> DeviceSide:
    class DeviceArray:
        def __init__(self, nbytes):
            self.nbytes = nbytes

    def to_device(host):
        clock.advance(copy_cost(host.nbytes))
        return DeviceArray(host.nbytes)

    def to_host(dev):
        clock.advance(copy_cost(dev.nbytes))
        return np.empty(dev.nbytes // 8)

    return DeviceSide(
        name="cupy",
        xp=FAKE_GPU,
        sync=lambda: None,
        to_device=to_device,
        to_host=to_host,
        transfer_engine="fake-engine",
        free_bytes=lambda: 64 * 1024**3,
        release=lambda: None,
        cold_start=lambda: cold_start,
        out_of_memory=(MemoryError,),
        fingerprint={"gpu_name": "Fake GPU 9000", "gpu_compute_capability": "9.0", "cuda_runtime_version": "13.0"},
    )


def small_plan(**changes) -> SweepPlan:
    plan = SweepPlan(
        name="test",
        sizes=(1 * KiB, 4 * KiB, 16 * KiB, 64 * KiB),
        transfer_sizes=(4 * KiB, 16 * KiB),
        timer=FAST_TIMER,
        budget_s=1e6,
        cpu_only_budget_s=1e6,
        max_call_s=1e6,
    )
    return dataclasses.replace(plan, **changes)


def test_fake_sweep_records_exact_timings_for_every_kind():
    clock = FakeClock()
    seen = []
    profile = run_sweep(small_plan(), clock=clock, sides=with_device(fake_gpu(clock)), workloads=fake_workloads(clock), progress=seen.append)

    cpu, gpu = profile.backend("numpy"), profile.backend("cupy")
    assert profile.has_device_timings() and (cpu.memory, gpu.memory) == ("host", "device")
    assert set(cpu.kinds) == set(gpu.kinds) == set(KINDS)  # measured ones plus "generic"
    assert cpu.kinds["generic"] == cpu.kinds["elementwise"] and gpu.kinds["generic"] == gpu.kinds["elementwise"]
    sizes = [float(s) for s in small_plan().sizes]
    for kind in KINDS:
        assert cpu.kinds[kind].nbytes == sizes, kind
        assert cpu.kinds[kind].seconds == [cpu_cost(int(b)) for b in sizes]
        assert gpu.kinds[kind].seconds == [gpu_cost(int(b)) for b in sizes]
        assert cpu.kinds[kind].noisy == [] and gpu.kinds[kind].noisy == []
    assert gpu.h2d.nbytes == [4 * KiB, 16 * KiB]
    assert gpu.h2d.seconds == [copy_cost(4 * KiB), copy_cost(16 * KiB)]
    assert gpu.d2h.seconds == gpu.h2d.seconds
    assert gpu.launch_latency_s == gpu_cost(128)
    assert gpu.warmup_s == 1.5
    assert gpu.transfer_engine == "fake-engine"
    assert cpu.warmup_s is None and cpu.launch_latency_s is None and cpu.h2d is None
    assert profile.fingerprint.gpu_compute_capability == "9.0"
    assert profile.fingerprint.gpu_name == "Fake GPU 9000"  # /proc sees no GPU here, so CUDA's name stands

    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and seen[-1].stage == "done"
    assert {p.stage for p in seen} >= set(WORKLOADS) | {"transfers", "launch latency", "cold start"}


def test_fake_sweep_crossover_matches_the_fake_costs():
    clock = FakeClock()
    profile = run_sweep(small_plan(), clock=clock, sides=with_device(fake_gpu(clock)), workloads=fake_workloads(clock))
    # Device data: NumPy pays 2^-30 s/B plus copies out and back; GPU 2^-16 + 2^-36 s/B.
    at = crossover(profile, "reduction", "device", hi=2.0**30)
    assert at is not None

    def prediction(n):
        return predict(profile, Request("reduction", device_bytes=int(n), largest_bytes=int(n), gpu_ready=True))

    assert prediction(at).seconds["cupy"] < prediction(at).seconds["numpy"]
    # the fake copy costs are used
    assert prediction(at).parts["numpy"]["copy_in"] == profile.backend("cupy").d2h.predict(at)
    if at > 1024:  # the grid step below still favours NumPy
        assert prediction(at / 2**0.25).seconds["cupy"] >= prediction(at / 2**0.25).seconds["numpy"]


def test_sweep_profile_survives_a_save_and_load(tmp_path):
    clock = FakeClock()
    profile = run_sweep(small_plan(), clock=clock, sides=with_device(fake_gpu(clock)), workloads=fake_workloads(clock))
    loaded = load_profile(save_profile(profile, tmp_path / "p.json"))
    assert loaded.model_dump() == profile.model_dump()


def test_time_budget_stops_a_kind_early():
    clock = FakeClock()
    plan = small_plan(sizes=geometric_sizes(KiB, 64 * MiB, 4), cpu_only_budget_s=0.05)
    profile = run_sweep(plan, clock=clock, sides=CPU_ONLY, workloads=fake_workloads(clock, kinds=("sort",)))
    measured = profile.backend("numpy").kinds["sort"].nbytes
    assert len(measured) < len(plan.sizes)
    assert any("time budget" in n for n in profile.notes)
    assert clock() <= 0.05 * 1.5 + 1e-9  # predicted points keep it close to the budget


def test_slow_calls_stop_a_kind():
    clock = FakeClock()
    plan = small_plan(sizes=geometric_sizes(KiB, 64 * MiB, 4), max_call_s=cpu_cost(64 * KiB))
    profile = run_sweep(plan, clock=clock, sides=CPU_ONLY, workloads=fake_workloads(clock, kinds=("fft",)))
    assert profile.backend("numpy").kinds["fft"].nbytes[-1] == 64 * KiB
    assert any("one NumPy call took" in n for n in profile.notes)


def test_host_memory_caps_the_sizes():
    clock = FakeClock()
    plan = small_plan(host_memory_fraction=1.0)
    # 2x working set: 64 KiB of free memory allows inputs up to 32 KiB.
    profile = run_sweep(plan, clock=clock, sides=CPU_ONLY, workloads=fake_workloads(clock, kinds=("matmul",)), host_free_bytes=64 * KiB)
    assert profile.backend("numpy").kinds["matmul"].nbytes == [1 * KiB, 4 * KiB, 16 * KiB]
    assert any("host memory cap" in n for n in profile.notes)


def test_gpu_out_of_memory_ends_the_gpu_curve_only():
    clock = FakeClock()
    profile = run_sweep(
        small_plan(), clock=clock, sides=with_device(fake_gpu(clock)), workloads=fake_workloads(clock, kinds=("sort",), gpu_out_of_memory_from=16 * KiB)
    )
    assert len(profile.backend("numpy").kinds["sort"].nbytes) == 4
    assert profile.backend("cupy").kinds["sort"].nbytes == [1 * KiB, 4 * KiB]


def test_failed_cold_start_is_left_out_and_noted():
    clock = FakeClock()
    profile = run_sweep(small_plan(), clock=clock, sides=with_device(fake_gpu(clock, cold_start=None)), workloads=fake_workloads(clock, kinds=("sort",)))
    assert profile.backend("cupy").warmup_s is None
    assert any("cold start not measured" in n for n in profile.notes)


def test_noisy_points_are_flagged_in_the_curve():
    clock = FakeClock()
    calls = {"n": 0}

    def run(xp, nbytes):
        calls["n"] += 1
        clock.advance(cpu_cost(nbytes) * (1 + 0.5 * (calls["n"] % 3)))  # 1x, 1.5x, 2x, ...

    wl = {"sort": Workload("sort", lambda xp, t, s: ((t,), t), run, working_set=1.0)}
    profile = run_sweep(small_plan(), clock=clock, sides=CPU_ONLY, workloads=wl)
    assert any(profile.backend("numpy").kinds["sort"].noisy)
    assert any("noisy points" in n for n in profile.notes)


def test_cpu_only_sweep_with_real_work_is_quick_and_complete():
    plan = small_plan(
        sizes=(1 * KiB, 32 * KiB),
        timer=TimerSettings(warmup=1, repeats=3, min_repeats=3, min_sample_s=2e-4, max_point_s=0.05),
    )
    profile = run_sweep(plan, sides=CPU_ONLY)
    assert list(profile.backends) == ["numpy"] and not profile.device_backends() and not profile.has_device_timings()
    numpy = profile.backend("numpy")
    assert set(numpy.kinds) == set(KINDS)
    for kind, curve in numpy.kinds.items():
        assert all(0 < s < 0.1 for s in curve.seconds), kind
        assert 900 <= curve.nbytes[0] <= 1100, kind
    assert profile.fingerprint.cpu_cores > 0
    assert crossover(profile, "fft", "host") is None


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
def test_real_workloads_use_random_nonzero_float64_of_the_asked_size(kind):
    workload = WORKLOADS[kind]
    args, nbytes = workload.prepare(np, 64 * KiB, 1)
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    assert sum(a.nbytes for a in arrays) == nbytes or kind == "random"
    assert 0.9 * 64 * KiB <= nbytes <= 1.1 * 64 * KiB
    for a in arrays:
        assert a.dtype == np.float64 and np.all(a != 0) and np.unique(a).size > a.size // 2
    result = workload.run(np, *args)
    assert np.all(np.isfinite(result))


def test_solve_workload_solves():
    (a, b), _ = WORKLOADS["solve"].prepare(np, 16 * KiB, 3)
    np.testing.assert_allclose(a @ WORKLOADS["solve"].run(np, a, b), b, rtol=1e-9)


def test_plans():
    quick, default = SweepPlan.quick(), SweepPlan.default()
    assert quick.sizes[0] == default.sizes[0] == KiB
    assert quick.budget_s < default.budget_s and quick.cpu_only_budget_s < quick.budget_s
    assert len(quick.sizes) < len(default.sizes)
    assert set(quick.kinds) == set(KINDS) - {"generic"}
    assert geometric_sizes(1, 16, 2) == (1, 2, 4, 8, 16)


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_without_cupy_there_is_no_gpu_side_and_no_cold_start():
    side, why = cupy_side()
    assert side is None and "CuPy cannot be imported" in why
    sides, notes = sweep_sides()
    # Numba, a host tier, is measured where it imports (the test extra installs it).
    host_sides = ["numpy", "numba"] if importlib.util.find_spec("numba") else ["numpy"]
    assert list(sides) == host_sides and all(sides[n].memory == "host" for n in sides)
    assert notes == [why] + ([] if "numba" in sides else ["no Numba tier measured: Numba is not installed (pip install 'autooffload[numba]')"])
    assert measure_cold_start(timeout_s=30) is None


def test_progress_is_optional_and_nothing_is_printed(capsys):
    clock = FakeClock()
    run_sweep(small_plan(), clock=clock, sides=with_device(fake_gpu(clock)), workloads=fake_workloads(clock, kinds=("sort",)))
    assert capsys.readouterr() == ("", "")


def test_the_fingerprint_identity_matches_what_the_loader_sees(tmp_path, monkeypatch):
    root = tmp_path / "gpus" / "0000:01:00.0"
    root.mkdir(parents=True)
    (root / "information").write_text("Model: \t NVIDIA H100 80GB HBM3\nGPU UUID: \t GPU-12345678-1234-1234-1234-123456789abc\n")
    monkeypatch.setattr(fingerprint_module, "_PROC_GPUS", tmp_path / "gpus")
    clock = FakeClock()
    side = fake_gpu(clock)
    side.fingerprint["gpu_uuid"] = "GPU-12345678-1234-1234-1234-123456789ABC"  # CUDA spells it otherwise
    profile = run_sweep(small_plan(), clock=clock, sides=with_device(side), workloads=fake_workloads(clock, kinds=("sort",)))
    assert profile.fingerprint.gpu_name == "NVIDIA H100 80GB HBM3"
    assert _profiles.this_machine_mismatch(profile.fingerprint) is None


def test_sweep_module_does_not_import_cupy():
    assert "cupy" not in _sweep.__dict__


# --- NumPy points slower than a larger size (interference) ------------------------------------
def test_an_upward_blip_is_replaced_by_its_neighbours_interpolation_and_flagged():
    from autooffload._sweep import smooth_upward_blips

    mib = 2.0**20
    xs = [1 * mib, 2 * mib, 4 * mib, 8 * mib, 16 * mib]
    ys = [0.056e-3, 0.18e-3, 0.841e-3, 0.757e-3, 1.593e-3]  # the H100 profile's elementwise blip
    out, noisy = smooth_upward_blips(xs, ys, [False] * 5, tolerance=0.10)
    assert out[2] == pytest.approx((0.18e-3 * 0.757e-3) ** 0.5)  # halfway in log-log
    assert noisy == [False, False, True, False, False]
    assert out[:2] + out[3:] == ys[:2] + ys[3:]
    assert all(a <= b for a, b in zip(out, out[1:]))


def test_small_dips_the_first_point_and_flags_are_handled():
    from autooffload._sweep import smooth_upward_blips

    xs = [1.0, 2.0, 4.0, 8.0]
    # Within the tolerance: left alone, not flagged.
    assert smooth_upward_blips(xs, [1.0, 1.05, 1.0, 2.0], [], 0.10) == ([1.0, 1.05, 1.0, 2.0], [False] * 4)
    # The first point above the second: it takes the second's time.
    out, noisy = smooth_upward_blips(xs, [3.0, 1.0, 2.0, 4.0], [False, False, True, False], 0.10)
    assert out == [1.0, 1.0, 2.0, 4.0] and noisy == [True, False, True, False]
    # A previous point above the next one: capped at the next point's time.
    out, _ = smooth_upward_blips(xs, [5.0, 9.0, 2.0, 3.0], [], 0.10)
    assert out[1] <= 2.0


def test_two_slow_points_in_a_row_are_both_replaced():
    """Shaped like session 12's H200 calibration of the tier's transcendental curve (us, 256 KiB-8
    MiB; the 2 MiB point is made up): one pass upwards compared 1 MiB with the unsmoothed 2 MiB
    point and left it at 5998 us."""
    from autooffload._sweep import SPIKE_TOLERANCE, smooth_upward_blips

    xs = [2.0**k for k in range(18, 24)]
    ys = [40.0, 72.0, 5998.0, 2500.0, 600.0, 1604.0]
    out, noisy = smooth_upward_blips(xs, ys, [], SPIKE_TOLERANCE)
    assert noisy == [False, False, True, True, False, False]
    assert out[:2] == ys[:2] and out[4:] == ys[4:]
    assert all(a <= b for a, b in zip(out, out[1:]))
    assert out[3] == 600.0 and out[2] == pytest.approx((72.0 * 600.0) ** 0.5)  # halfway in log-log


def test_the_sweep_smooths_numpy_curves_only():
    from autooffload._sweep import _curve
    from autooffload._timing import Timing

    def t(s):
        return Timing(median_s=s, mad_s=0.0, samples=(s,), rejected=0, loops=1, noisy=False)

    points = [(1000, t(1e-5)), (2000, t(5e-5)), (4000, t(3e-5))]
    assert _curve(points).seconds == [1e-5, 5e-5, 3e-5]
    smoothed = _curve(points, blip_tolerance=0.1)
    assert smoothed.seconds[1] < 3e-5 and smoothed.noisy == [False, True, False]


def test_gpu_and_tier_curves_lose_spikes_only():
    # A bump of a GPU or tier curve is kept (1.67x the next size here); a point more than
    # SPIKE_TOLERANCE above the next size is not (the H200's tier reduction at 8 MiB, session 11:
    # 5.99 ms between 66 us and 210 us).
    from autooffload._timing import Timing

    def t(s):
        return Timing(median_s=s, mad_s=0.0, samples=(s,), rejected=0, loops=1, noisy=False)

    mib = 2**20
    bump = [(1 * mib, t(1e-5)), (2 * mib, t(5e-5)), (4 * mib, t(3e-5))]
    assert _sweep._curve(bump, blip_tolerance=_sweep.SPIKE_TOLERANCE).seconds == [1e-5, 5e-5, 3e-5]
    spike = [(4 * mib, t(66e-6)), (8 * mib, t(5994e-6)), (16 * mib, t(210e-6))]
    curve = _sweep._curve(spike, blip_tolerance=_sweep.SPIKE_TOLERANCE)
    assert curve.seconds[1] == pytest.approx((66e-6 * 210e-6) ** 0.5) and curve.noisy == [False, True, False]


def test_the_sweep_takes_the_spike_out_of_a_tier_curve():
    clock = FakeClock()
    spiked = float(small_plan().sizes[2])

    def kernel(kind):
        if kind != "reduction":
            return None
        return lambda nbytes: clock.advance(cpu_cost(nbytes) / 4 * (50 if nbytes == spiked else 1))

    side = CompiledSide(name="numba", xp=np, kernel=kernel, compile_s=lambda: 0.5)
    profile = run_sweep(small_plan(), clock=clock, sides={**with_device(fake_gpu(clock)), "numba": side},
                        workloads=fake_workloads(clock))
    curve = profile.backend("numba").kinds["reduction"]
    i = curve.nbytes.index(spiked)
    assert curve.noisy[i] and curve.seconds[i] <= curve.seconds[i + 1]
    assert curve.seconds[i - 1] == cpu_cost(int(curve.nbytes[i - 1])) / 4


def test_a_compiled_side_is_timed_warm_per_kind_it_runs_and_states_its_compile_time():
    clock = FakeClock()
    compiled_kinds = []

    def kernel(kind):
        compiled_kinds.append(kind)  # compiled once per kind, before its points
        if kind in ("fft", "matmul", "solve", "random"):
            return None  # the tier refuses these kinds
        return lambda nbytes: clock.advance(cpu_cost(nbytes) / 4)

    side = CompiledSide(name="numba", xp=np, kernel=kernel, compile_s=lambda: 0.5)
    sides = {**with_device(fake_gpu(clock)), "numba": side}
    profile = run_sweep(small_plan(), clock=clock, sides=sides, workloads=fake_workloads(clock))
    tier = profile.backend("numba")
    assert tier.memory == "host" and tier.warmup_s == 0.5 and tier.h2d is None and tier.launch_latency_s is None
    assert set(tier.kinds) == {"elementwise", "transcendental", "reduction", "sort", "generic"}
    assert sorted(compiled_kinds) == sorted(WORKLOADS)
    sizes = [float(s) for s in small_plan().sizes]
    for kind in ("elementwise", "sort"):
        assert tier.kinds[kind].nbytes == sizes
        assert tier.kinds[kind].seconds == [cpu_cost(int(b)) / 4 for b in sizes]
    # The NumPy curves are what they are without the tier.
    assert profile.backend("numpy").kinds["elementwise"].seconds == [cpu_cost(int(b)) for b in sizes]


def test_the_copy_search_runs_before_the_copy_curves_and_lands_in_the_profile(tmp_path):
    from autooffload import _copytune
    from autooffload._profiles import load_profile, save_profile

    clock = FakeClock()
    device = fake_gpu(clock)
    calls = []

    def tune(plan_name, cap):
        calls.append((plan_name, cap))
        return _copytune.SearchResult(
            knobs={"threads": 12, "chunk_bytes": 32 * MiB},
            rates=[{"nbytes": float(GiB), "h2d_GBps": 41.6, "d2h_GBps": 41.5, "default_h2d_GBps": 17.9, "default_d2h_GBps": 16.2}],
            host_bound={"best": {"to_pinned": 35.4, "from_pinned": 36.7, "from_pinned_fresh": 25.0}, "nbytes": 256 * MiB},
            pinned_GBps={"h2d": 55.4, "d2h": 55.3}, seconds=10.3, log=["chosen: threads=12"])

    device.tune_copies = tune
    profile = run_sweep(small_plan(copy_search="quick"), clock=clock, sides=with_device(device), workloads=fake_workloads(clock))
    assert calls and calls[0][0] == "quick" and calls[0][1] > 0
    tuning = profile.copy_tuning()
    assert tuning is not None and tuning.engine == "fake-engine" and tuning.knobs == {"threads": 12, "chunk_bytes": 32 * MiB}
    assert tuning.rates[0].nbytes == GiB and tuning.host_bound_GBps["to_pinned"] == 35.4 and tuning.search_s == 10.3
    assert load_profile(save_profile(profile, tmp_path / "p.json")).copy_tuning() == tuning


def test_a_failed_copy_search_leaves_the_defaults_and_says_why():
    clock = FakeClock()
    device = fake_gpu(clock)

    def broken(plan_name, cap):
        raise RuntimeError("no pinned memory")

    device.tune_copies = broken
    profile = run_sweep(small_plan(copy_search="quick"), clock=clock, sides=with_device(device), workloads=fake_workloads(clock))
    assert profile.copy_tuning() is None
    assert any("copy tuning not searched (RuntimeError: no pinned memory)" in n for n in profile.notes)
    # No search asked for (the plan's copy_search None): no tuning, no note.
    profile = run_sweep(small_plan(), clock=clock, sides=with_device(device), workloads=fake_workloads(clock))
    assert profile.copy_tuning() is None and not any("copy tuning" in n for n in profile.notes)
