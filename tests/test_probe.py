"""A machine without a calibrated profile: the probes scale the nearest shipped profile
(issue 12 item 6; _profiles/scaling.py, _probe.py, _profiles/probecache.py, _profiles/resolve.py).

CPU only: the GPU probe's measurement is replaced by numbers derived from a shipped profile (the
real one runs in tests/test_probe_gpu.py), the host probe by a fixed pass time, and the GPU by
the FakeDevice. The conftest turns the probes off for every other test; the `probes` fixture
turns them on.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import autooffload
from autooffload import _probe, config, explain, offload
from autooffload._profiles import builtin_profile, load_profile, reset_active_profile, shipped_profile_paths
from autooffload._profiles import resolve
from autooffload._profiles.model import Curve
from autooffload._profiles.probecache import probe_cache_path, read_probes, write_probes
from autooffload._profiles.scaling import (
    GPU_COPY_BYTES,
    GPU_ELEMENTWISE_BYTES,
    GPU_MATMUL_N,
    HOST_PROBE_BYTES,
    GpuProbe,
    HostProbe,
    ProbeRejected,
    device_ratios,
    host_speed,
    is_probed,
    nearest_device_reference,
    nearest_tier_reference,
    scale_tier,
    scale_work,
    scaled_device_profile,
    with_tier,
)
from autooffload.errors import ProfileWarning

MiB = 2.0**20


def shipped(name: str):
    (path,) = [p for p in shipped_profile_paths() if p.stem == name]
    return load_profile(path)


H200, H100, EPYC = shipped("h200"), shipped("h100-80gb-hbm3"), shipped("cpu-amd-epyc-2core")


def probe_like(reference, *, launch=1.0, ew=1.0, mm=1.0, h2d=1.0, d2h=1.0, wall=0.4, name="NVIDIA Test GPU",
               pinned_gbps=100.0) -> GpuProbe:
    """The probe a GPU would give that is ``reference`` with its launch latency, the work of its
    elementwise and matmul points, and its copies multiplied by these factors."""
    device = reference.backend("cupy")
    fixed = device.launch_latency_s

    def work(kind: str, nbytes: float, factor: float) -> tuple[float, float]:
        t = device.kinds[kind].predict(nbytes)
        return nbytes, fixed * launch + factor * (t - fixed)

    size = GPU_COPY_BYTES[-1]
    return GpuProbe(
        launch_s=fixed * launch,
        elementwise=work("elementwise", GPU_ELEMENTWISE_BYTES, ew),
        matmul=work("matmul", 16.0 * GPU_MATMUL_N**2, mm),
        h2d=tuple((b, device.h2d.predict(b) * h2d) for b in GPU_COPY_BYTES),
        d2h=tuple((b, device.d2h.predict(b) * d2h) for b in GPU_COPY_BYTES),
        h2d_pinned=(size, size / (pinned_gbps * 1e9)),
        d2h_pinned=(size, size / (pinned_gbps * 1e9)),
        wall_s=wall, gpu_name=name, transfer_engine="pinned-pipeline-v4",
    )


def host_like(reference, factor=1.0, cores=2) -> HostProbe:
    return HostProbe(HOST_PROBE_BYTES, reference.backend("numpy").kinds["elementwise"].predict(HOST_PROBE_BYTES) * factor, cores)


SIZES = [2.0**k for k in range(10, 33, 2)]


# ---------------------------------------------------------------------------------------------
# The scaling arithmetic (pure).
# ---------------------------------------------------------------------------------------------


def test_scale_work_replaces_the_fixed_cost_and_scales_the_work_above_it():
    curve = Curve(nbytes=[1e3, 1e6, 1e9], seconds=[5e-6, 2e-5, 1e-2])
    scaled = scale_work(curve, fixed_ref=1e-5, fixed_new=3e-5, ratio=4.0)
    assert scaled.nbytes == curve.nbytes
    expected = [3e-5 * 0.5, 3e-5 + 4 * 1e-5, 3e-5 + 4 * (1e-2 - 1e-5)]
    np.testing.assert_allclose(scaled.seconds, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="must be > 0"):
        scale_work(curve, 1e-5, 0.0, 1.0)


@pytest.mark.parametrize("reference", [H200, H100], ids=["h200", "h100"])
def test_a_probe_equal_to_a_reference_reproduces_it(reference):
    probe = probe_like(reference)
    profile = scaled_device_profile([("h200", H200), ("h100", H100)], probe, cached=False)
    ref, got = reference.backend("cupy"), profile.backend("cupy")
    assert got.launch_latency_s == pytest.approx(ref.launch_latency_s)
    for kind, curve in ref.kinds.items():
        for n in SIZES:
            assert got.kinds[kind].predict(n) == pytest.approx(curve.predict(n), rel=1e-9), (kind, n)
    for n in SIZES:
        assert got.h2d.predict(n) == pytest.approx(ref.h2d.predict(n), rel=1e-9)
        assert got.d2h.predict(n) == pytest.approx(ref.d2h.predict(n), rel=1e-9)
    assert profile.backend("numpy") == reference.backend("numpy")
    assert profile.backend("numba") is None  # the reference CPU's tier curves are not this host's


def test_each_probe_point_scales_its_own_curves():
    probe = probe_like(H200, launch=1.5, ew=2.0, mm=0.5, h2d=3.0, d2h=0.25, pinned_gbps=1e4)
    _, _, scaling = nearest_device_reference([("h200", H200)], probe)
    assert (scaling.launch, scaling.elementwise, scaling.matmul) == pytest.approx((1.5, 2.0, 0.5))
    got, ref = scaled_device_profile([("h200", H200)], probe, cached=False).backend("cupy"), H200.backend("cupy")
    fixed = ref.launch_latency_s
    assert got.launch_latency_s == pytest.approx(1.5 * fixed)
    for kinds, ratio in ((("elementwise", "transcendental", "reduction", "sort", "fft", "random", "generic"), 2.0),
                         (("matmul", "solve"), 0.5)):
        for kind in kinds:
            big = ref.kinds[kind].nbytes[-1]  # the curve's own points scale exactly (between them: log-log)
            assert got.kinds[kind].predict(big) == pytest.approx(1.5 * fixed + ratio * (ref.kinds[kind].predict(big) - fixed))
    for n in SIZES:
        assert got.h2d.predict(n) == pytest.approx(3.0 * ref.h2d.predict(n), rel=1e-9)
        assert got.d2h.predict(n) == pytest.approx(0.25 * ref.d2h.predict(n), rel=1e-9)


def test_copy_ratios_are_interpolated_between_the_probe_sizes():
    probe = probe_like(H200)
    small, large = GPU_COPY_BYTES
    probe = GpuProbe(**{**probe.__dict__, "h2d": ((small, probe.h2d[0][1] * 2.0), (large, probe.h2d[1][1] * 8.0))})
    got, ref = scaled_device_profile([("h200", H200)], probe, cached=False).backend("cupy"), H200.backend("cupy")
    assert got.h2d.predict(small / 4) == pytest.approx(2.0 * ref.h2d.predict(small / 4), rel=1e-9)
    assert got.h2d.predict(large * 4) == pytest.approx(8.0 * ref.h2d.predict(large * 4), rel=1e-9)
    middle = math.sqrt(small * large)
    on_curve = [n for n in ref.h2d.nbytes if small < n < large]
    for n in on_curve:  # between the probe sizes: a ratio between 2 and 8, geometric in the size
        t = math.log(n / small) / math.log(large / small)
        assert got.h2d.predict(n) == pytest.approx(2.0 * 4.0**t * ref.h2d.predict(n), rel=1e-9)
    assert on_curve and middle


def test_copies_never_beat_the_pinned_dma_rate():
    probe = probe_like(H200, h2d=0.1, pinned_gbps=10.0)  # copies 10x faster than the reference...
    got = scaled_device_profile([("h200", H200)], probe, cached=False).backend("cupy")
    for n in (32 * MiB, 2.0**30, 2.0**32):  # ...but no faster than 10 GB/s
        assert got.h2d.predict(n) >= n / 10e9 * (1 - 1e-9)


def test_the_nearest_reference_is_the_one_scaled_least():
    refs = [("h200", H200), ("h100", H100), ("built-in", builtin_profile())]
    assert nearest_device_reference(refs, probe_like(H100))[0] == "h100"
    assert nearest_device_reference(refs, probe_like(H200))[0] == "h200"
    assert nearest_device_reference(refs, probe_like(H200, ew=1.3, mm=0.8))[0] == "h200"


def test_a_ratio_beyond_the_limit_is_rejected():
    with pytest.raises(ProbeRejected, match="elementwise.*not trusted"):
        device_ratios(H200, probe_like(H200, ew=200.0), "h200")
    with pytest.raises(ProbeRejected, match="no reference profile fits"):
        nearest_device_reference([("h200", H200)], probe_like(H200, mm=1e3))


def test_probe_json_round_trips_and_rejects_what_is_not_a_probe():
    probe = probe_like(H200)
    assert GpuProbe.from_json(json.loads(json.dumps(probe.to_json()))) == probe
    host = host_like(EPYC)
    assert HostProbe.from_json(json.loads(json.dumps(host.to_json()))) == host
    bad = probe.to_json()
    del bad["matmul"]
    with pytest.raises(ValueError, match="'matmul'"):
        GpuProbe.from_json(bad)
    with pytest.raises(ValueError, match="finite number > 0"):
        GpuProbe.from_json({**probe.to_json(), "launch_s": -1})
    with pytest.raises(ValueError, match="at least one copy point"):
        GpuProbe.from_json({**probe.to_json(), "h2d": []})
    with pytest.raises(ValueError, match="positive integer"):
        HostProbe.from_json({**host.to_json(), "cores": 0})


def _tier_from(source, target):
    """``source``'s Numba curves scaled to ``target``'s host, as a host probe there would."""
    speed = host_speed(source, host_like(target, cores=target.fingerprint.cpu_cores))
    return scale_tier(source.backend("numba"), speed, source.fingerprint.cpu_cores / target.fingerprint.cpu_cores)


@pytest.mark.parametrize("source,target", [(H200, EPYC), (EPYC, H200)], ids=["16-core to 2-core", "2-core to 16-core"])
def test_tier_curves_moved_between_the_shipped_machines_land_within_3x(source, target):
    """Leave-one-out: each machine's Numba curves predicted from the other's (module docstring)."""
    predicted, measured = _tier_from(source, target), target.backend("numba")
    # Sizes the model cannot carry over (module docstring): two points of the 2-core VM's
    # reduction curve 5-100x above both neighbours and the step up of Numba's sort, at 16 KiB on
    # one machine and 64 KiB on the other. The memory-bound kinds within 3.6x: session 19's H200
    # calibration, on a start whose host memory copied at 53 GB/s, ran the tier's elementwise and
    # reduction passes at 16-128 MiB 3.2-3.6x faster than the 2-core VM's curves scaled by the
    # NumPy pass predict (session 12's within 2.7x there).
    blips = {("reduction", 2.0**15), ("reduction", 2.0**20), ("sort", 2.0**14), ("sort", 2.0**15)}
    for kind, curve in measured.kinds.items():
        bound = 3.6 if kind in ("elementwise", "reduction", "generic") else 3.0
        errors = {n: predicted.kinds[kind].predict(n) / curve.predict(n) for n in (2.0**k for k in range(14, 29))}
        within = {n: max(e, 1 / e) < bound for n, e in errors.items()}
        assert all(ok or (kind, n) in blips for n, ok in within.items()), (kind, errors)


def test_the_nearest_tier_reference_is_by_cores_then_vendor():
    refs = [("h200", H200), ("epyc", EPYC)]
    assert nearest_tier_reference(refs, 2)[0] == "epyc"
    assert nearest_tier_reference(refs, 4)[0] == "epyc"
    assert nearest_tier_reference(refs, 12)[0] == "h200"
    assert nearest_tier_reference(refs, 64)[0] == "h200"
    assert nearest_tier_reference([("h100", H100)], 2) is None  # no Numba curves there


def test_with_tier_adds_scaled_numba_curves_and_says_so():
    profile = with_tier(builtin_profile(), [("h200", H200), ("cpu-amd-epyc-2core", EPYC)], host_like(EPYC, 2.0, cores=2))
    assert profile.source.startswith("built-in; numba tier: cpu-amd-epyc-2core's curves (2 cores) scaled to 2 cores")
    assert "x2" in profile.source
    tier, ref = profile.backend("numba"), EPYC.backend("numba")
    big = 2.0**28
    floor = ref.kinds["elementwise"].seconds[0]
    assert tier.kinds["elementwise"].predict(big) == pytest.approx(floor + 2.0 * (ref.kinds["elementwise"].predict(big) - floor))
    assert with_tier(H200, [("cpu-amd-epyc-2core", EPYC)], host_like(EPYC)) is H200  # has its own tier curves


# ---------------------------------------------------------------------------------------------
# The decorator: probes at resolution and at the first GPU start, the cache, failures.
# ---------------------------------------------------------------------------------------------


class Calls:
    """Stands in for a probe: returns ``value`` (or raises it) and counts calls."""

    def __init__(self, value):
        self.value, self.count = value, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


@pytest.fixture
def probes(monkeypatch):
    """Probes on, shipped matching by GPU model off, learning off (decisions from the profile
    alone); the GPU probe measures ``probe_like(H200)`` in 0.4 s, the host pass EPYC's speed.

    Numba cannot load: its curves are there, but no call compiles in the background (a compile
    thread's warnings.catch_warnings is process-wide and would race with the tests' own)."""
    from autooffload.backends import numba as tier

    monkeypatch.setattr(tier, "load", lambda: None)
    monkeypatch.setattr(tier, "unavailable_reason", lambda: "Numba is switched off for these tests")
    monkeypatch.setenv("AUTOOFFLOAD_PROBE", "1")
    monkeypatch.setenv("AUTOOFFLOAD_SHIPPED", "0")
    monkeypatch.setenv("AUTOOFFLOAD_LEARN", "0")
    autooffload.reload_environment()
    reset_active_profile()
    gpu, host = Calls(probe_like(H200)), Calls(host_like(EPYC, cores=2))
    monkeypatch.setattr(_probe, "measure_gpu", gpu)
    monkeypatch.setattr(_probe, "measure_host", host)
    yield gpu, host
    reset_active_profile()


@offload
def solve(a, b):
    return np.linalg.solve(a, b)


@offload
def scaled(x):
    return x * 2.0


def start_gpu():
    with config(backend="cupy"):
        np.testing.assert_array_equal(scaled(np.ones(8)), np.full(8, 2.0))


def big_system():
    n = 2048
    return np.eye(n) * n + 1.0, np.ones(n)


def test_no_gpu_no_probe(probes, monkeypatch):
    gpu, host = probes
    monkeypatch.setenv("AUTOOFFLOAD_DISABLE_GPU", "1")
    autooffload.reload_environment()
    for _ in range(3):
        np.testing.assert_array_equal(scaled(np.ones(1000)), np.full(1000, 2.0))
    d = explain(solve, *big_system())
    assert d.backend == "numpy" and "no GPU" in d.reason
    assert gpu.count == 0
    assert host.count == 1  # the host tier's pass, once
    assert d.profile.startswith("built-in; numba tier:")


def test_the_probe_at_the_first_gpu_start_moves_heavy_work_to_the_gpu(probes, fake_gpu):
    gpu, _ = probes
    a, b = big_system()
    before = explain(solve, a, b)
    assert before.profile.startswith("built-in") and gpu.count == 0
    start_gpu()
    assert gpu.count == 1
    d = explain(solve, a, b)
    assert d.backend == "cupy", d
    assert d.profile.startswith("h200 scaled by a 0.4 s probe of this GPU (NVIDIA Test GPU)")
    assert "h200 scaled by a 0.4 s probe of this GPU" in str(d)
    start_gpu()
    assert gpu.count == 1  # once per process


def test_the_built_in_defaults_alone_keep_it_on_numpy(probes, fake_gpu, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_PROBE", "0")
    autooffload.reload_environment()
    reset_active_profile()
    start_gpu()
    d = explain(solve, *big_system())
    assert (d.backend, d.profile) == ("numpy", "built-in")
    assert probes[0].count == 0


def test_a_later_process_uses_the_cached_probes(probes, fake_gpu, monkeypatch):
    explain(solve, *big_system())  # a decision that needs the profile: the host probe, the GPU probe armed
    start_gpu()
    host, gpu = read_probes()
    assert gpu == probe_like(H200) and host == host_like(EPYC, cores=2)
    # A restart: a fresh resolution, the GPU not started yet; measuring again would raise.
    fake_gpu_again = type(fake_gpu)()
    from autooffload.backends import cupy as device

    device.set_backend_for_tests(fake_gpu_again)
    reset_active_profile()
    monkeypatch.setattr(_probe, "measure_gpu", Calls(AssertionError("probed again")))
    monkeypatch.setattr(_probe, "measure_host", Calls(AssertionError("probed again")))
    d = explain(solve, *big_system())
    assert d.profile.startswith("h200 scaled by a 0.4 s cached probe of this GPU")
    start_gpu()  # no probe at this start either
    assert explain(solve, *big_system()).backend == "cupy"


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"probe_format": 99}', "not a probe file"),
    ("INVALID", "invalid probe"),
])
def test_a_corrupt_cache_file_is_a_warning_and_a_fresh_probe(probes, fake_gpu, content, message):
    gpu, host = probes
    path = probe_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if content == "INVALID":  # this machine's file, with a GPU probe that lacks its fields
        write_probes(host=host_like(EPYC, cores=2))
        data = json.loads(path.read_text())
        content = json.dumps({**data, "gpu": {"launch_s": 1}})
    path.write_text(content)
    with pytest.warns(ProfileWarning, match=message):
        explain(solve, *big_system())
    assert host.count == 1
    start_gpu()
    assert gpu.count == 1
    assert read_probes() == (host_like(EPYC, cores=2), probe_like(H200))  # replaced, atomically


def test_a_cache_file_of_another_machine_is_a_warning_and_a_fresh_probe(probes, fake_gpu):
    gpu, host = probes
    path = probe_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"probe_format": 1, "machine": {"cpu_model": "Elsewhere", "cpu_cores": 999},
                                "host": host_like(H200).to_json(), "gpu": probe_like(H100).to_json()}))
    with pytest.warns(ProfileWarning, match="another machine"):
        d = explain(solve, *big_system())
    assert d.profile.startswith("built-in") and host.count == 1
    start_gpu()
    assert gpu.count == 1 and read_probes()[1] == probe_like(H200)


@pytest.mark.parametrize("failure,text", [
    (_probe.ProbeFailed("exceeded its 1 s budget (1.3 s, at the matmul point)"), "exceeded its 1 s budget"),
    (RuntimeError("driver on fire"), "RuntimeError: driver on fire"),
])
def test_a_failed_probe_leaves_the_defaults_with_the_reason_in_the_decision(probes, fake_gpu, monkeypatch, failure, text):
    monkeypatch.setattr(_probe, "measure_gpu", Calls(failure))
    start_gpu()  # the call that started the GPU returned its result
    d = explain(solve, *big_system())
    assert d.backend == "numpy"
    assert d.profile.startswith(f"built-in (the GPU probe failed: ") and text in d.profile
    assert text in str(d)
    assert read_probes()[1] is None  # a failure is not kept: the next process tries again


def test_a_rejected_probe_leaves_the_defaults(probes, fake_gpu, monkeypatch):
    monkeypatch.setattr(_probe, "measure_gpu", Calls(probe_like(H200, ew=1e4)))
    start_gpu()
    assert "no reference profile fits" in explain(solve, *big_system()).profile


def test_device_arrays_start_the_gpu_and_the_probe_before_their_decision(probes, fake_gpu):
    a, b = big_system()
    d = explain(solve, fake_gpu.to_device(a), fake_gpu.to_device(b))
    assert probes[0].count == 1
    assert is_probed(resolve.active_profile()) and d.profile.startswith("h200 scaled")


def test_the_real_measurement_refuses_a_device_that_is_not_cupy(fake_gpu):
    with pytest.raises(_probe.ProbeFailed, match="FakeDevice, not CuPy"):
        _probe.measure_gpu(fake_gpu)


def test_the_probe_budget_is_checked_after_every_step(clock):
    def step(seconds, value):
        def run():
            clock.t += seconds
            return value
        return run

    results, wall = _probe.run_within([("a", step(0.2, 1)), ("b", step(0.3, 2))], budget_s=1.0)
    assert results == {"a": 1, "b": 2} and wall == pytest.approx(0.5)
    with pytest.raises(_probe.ProbeFailed, match=r"exceeded its 1 s budget \(1.1 s, at b\)"):
        _probe.run_within([("a", step(0.2, 1)), ("b", step(0.9, 2)), ("c", step(0.0, 3))], budget_s=1.0)
    with pytest.raises(_probe.ProbeFailed, match="a failed \\(ZeroDivisionError"):
        _probe.run_within([("a", lambda: 1 / 0)], budget_s=1.0)


def test_the_host_pass_is_a_real_measurement():
    host = _probe.measure_host()
    assert host.nbytes == HOST_PROBE_BYTES and 0 < host.seconds < 0.5 and host.cores >= 1


def test_host_and_gpu_probes_merge_in_one_file():
    assert write_probes(host=host_like(EPYC)) == probe_cache_path()
    write_probes(gpu=probe_like(H100))
    assert read_probes() == (host_like(EPYC), probe_like(H100))
    write_probes(host=host_like(EPYC, 2.0))
    assert read_probes() == (host_like(EPYC, 2.0), probe_like(H100))


def test_show_says_the_profile_was_scaled_by_a_probe(probes, capsys, monkeypatch):
    from autooffload import cli

    write_probes(host=host_like(EPYC, cores=2), gpu=probe_like(H200, ew=1.2))
    assert cli.main(["show"]) == 0
    out = capsys.readouterr().out
    assert "Profile:   h200 scaled by a 0.4 s cached probe of this GPU (NVIDIA Test GPU)" in out
    assert "(a shipped profile scaled to this machine by its probe)" in out
    assert "Scaled:    probe of NVIDIA Test GPU in 0.4 s: launch x1, memory-bound work x1.2" in out
    assert "Scaled:    numba tier: cpu-amd-epyc-2core's curves" in out
    assert "ANOTHER machine" not in out
    assert cli.main(["show", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["probed"] is True and doc["builtin"] is False


def test_probes_off_reproduces_the_built_in_defaults(monkeypatch):
    calls = Calls(AssertionError("no probe"))
    monkeypatch.setattr(_probe, "measure_host", calls)
    monkeypatch.setattr(_probe, "measure_gpu", calls)
    monkeypatch.setenv("AUTOOFFLOAD_SHIPPED", "0")  # on an H200 or H100 machine the shipped profile would match
    autooffload.reload_environment()
    reset_active_profile()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve.active_profile().source == "built-in"
    assert calls.count == 0 and not probe_cache_path().exists()
