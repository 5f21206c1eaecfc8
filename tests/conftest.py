"""Shared fixtures: every test runs with a clean autooffload environment and no GPU.

``fake_gpu`` installs the FakeDevice test double (tests/fake_device.py) as the device backend;
tests that need real CuPy on a real GPU are marked ``gpu`` and skip elsewhere.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # for `import fake_device`

if os.environ.get("AUTOOFFLOAD_TEST_PURE_PYTHON"):
    # Run the suite on the pure-Python wrapper, as where the C extension is not built
    # (tests/test_native.py does this for the decorator's tests).
    import autooffload._dispatch
    import autooffload._transfer

    autooffload._dispatch._native = None
    autooffload._transfer._parcopy = None


@pytest.fixture(autouse=True)
def clean_autooffload(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("AUTOOFFLOAD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AUTOOFFLOAD_CACHE_DIR", str(tmp_path / "cache"))
    # Without a calibrated profile the decorator probes this machine (_profiles/scaling.py), and
    # decisions would depend on the machine running the tests: the built-in defaults alone here,
    # unless a test asks for the probes (the `probes` fixture, tests/test_probe.py).
    monkeypatch.setenv("AUTOOFFLOAD_PROBE", "0")
    from autooffload import _learn

    _learn.reset_for_tests()  # each test learns afresh, into its own cache dir
    wait_for_background_compilations()
    import autooffload
    from autooffload import _planner
    from autooffload.backends import cupy as device

    autooffload.reload_environment()
    reset_profile = getattr(__import__("autooffload._profiles", fromlist=["x"]), "reset_active_profile", None)
    if reset_profile is not None and not _is_gpu_test():
        reset_profile()
    _planner.COLD_START.reset()
    yield
    if not _is_gpu_test():
        device.set_backend_for_tests(None)
    import fake_device

    fake_device.FAKE_MISSING.clear()
    from autooffload import _config

    _config._env = None  # re-read lazily, after monkeypatch has restored the environment
    _config.invalidate_decisions()


def compiling_anywhere() -> bool:
    """Whether a Numba compilation for the tier runs in the background now (never imports Numba)."""
    from autooffload import backends

    return backends.module("numba").compiling_now()


def wait_for_background_compilations(timeout_s: float = 60.0) -> None:
    """An earlier test's background Numba compilation has ended (in real time, at most
    ``timeout_s``): calls timed while one runs teach nothing (_dispatch.py), so on a loaded
    2-core machine such a leftover changed what a later test's calls learned."""
    import time

    deadline = time.monotonic() + timeout_s
    while compiling_anywhere() and time.monotonic() < deadline:
        time.sleep(0.01)


def _is_gpu_test() -> bool:
    test = os.environ.get("PYTEST_CURRENT_TEST", "")
    return "_gpu" in test.split("::")[0]


@pytest.fixture
def fake_gpu():
    """The FakeDevice test double installed as the GPU backend."""
    import fake_device
    from autooffload.backends import cupy

    device = fake_device.FakeDevice()
    cupy.set_backend_for_tests(device)
    yield device
    cupy.set_backend_for_tests(None)


@pytest.fixture
def on_gpu(fake_gpu):
    """The fake GPU, with every call in the test forced onto it."""
    from autooffload import config

    with config(backend="cupy"):
        yield fake_gpu


@pytest.fixture
def plain_moves(monkeypatch):
    """How many device runs took the light path for plain calls (``Moved.move_plain``), and with
    how many arguments each."""
    from autooffload._arguments import Moved

    taken = []
    original = Moved.move_plain

    def spy(self, args):
        taken.append(len(args))
        return original(self, args)

    monkeypatch.setattr(Moved, "move_plain", spy)
    return taken


def plain_pick(x, y, scale):
    """A plain call's results of every kind: the argument itself, views of it, a view of an
    F-ordered argument, a new array and a scalar (check_plain_pick)."""
    return x, x[1:], x[::-2], y.T, x[:3] * scale + y[0, :3], x.sum()


def check_plain_pick(offloaded, rng, plain_moves, rtol: float = 0.0, sum_rtol: float = 0.0) -> None:
    """``offloaded`` (plain_pick under @offload, run on a GPU) gives the caller's arrays, views
    of them and new arrays as NumPy does, through the light path; the new array within ``rtol``,
    the sum within ``sum_rtol`` (0: exactly, as the fake device computes with NumPy)."""
    import numpy as np

    x, y = rng.random(8), np.asfortranarray(rng.random((4, 3)))
    same, tail, back, yt, fresh, total = offloaded(x, y, 2.0)
    assert plain_moves == [3]
    assert same is x
    assert np.shares_memory(tail, x) and np.array_equal(tail, x[1:])
    assert np.shares_memory(back, x) and np.array_equal(back, x[::-2])
    assert np.shares_memory(yt, y) and np.array_equal(yt, y.T)
    assert not np.shares_memory(fresh, x) and np.allclose(fresh, x[:3] * 2.0 + y[0, :3], rtol=rtol, atol=0)
    assert type(total) is np.float64 and np.isclose(total, x.sum(), rtol=sum_rtol, atol=0)
    tail[0] = 42.0
    assert x[1] == 42.0  # a view of the caller's memory, as on NumPy


def synthetic_profile(*, cpu_per_byte=1e-9, gpu_per_byte=1e-11, gpu_floor=20e-6, copy_per_byte=1e-10,
                      copy_floor=10e-6, cold_start=1.0, has_gpu=True, kinds=None):
    """A profile with straight-line curves, for exact cost-model tests (``has_gpu=False``: NumPy only)."""
    from autooffload._costmodel import KINDS
    from autooffload._profiles import BackendTiming, Curve, Profile

    def line(per_byte, floor):
        # Decades plus the kink where the floor meets the line: log-log interpolation is then exact.
        sizes = sorted({10.0**k for k in range(2, 13)} | {floor / per_byte})
        return Curve(nbytes=sizes, seconds=[max(floor, s * per_byte) for s in sizes])

    kinds = kinds or KINDS
    backends = {"numpy": BackendTiming(memory="host", kinds={k: line(cpu_per_byte, 1e-6) for k in kinds})}
    if has_gpu:
        backends["cupy"] = BackendTiming(
            memory="device",
            kinds={k: line(gpu_per_byte, gpu_floor) for k in kinds},
            warmup_s=cold_start,
            launch_latency_s=gpu_floor,
            h2d=line(copy_per_byte, copy_floor),
            d2h=line(copy_per_byte, copy_floor),
        )
    return Profile(backends=backends).with_source("synthetic")


@pytest.fixture
def use_profile(monkeypatch):
    """use_profile(profile): make every decision in the test use ``profile``."""
    from autooffload import _config, _planner

    def install(profile):
        monkeypatch.setattr(_planner, "active_profile", lambda: profile)
        _config.invalidate_decisions()
        return profile

    return install


class FakeClock:
    """The learner's clock in tests: a function under test advances ``t`` by what its call "takes"."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    """A FakeClock installed as the learner's and the probes' clock (autooffload._learn.clock,
    autooffload._probe.clock)."""
    from autooffload import _learn, _probe

    fake = FakeClock()
    monkeypatch.setattr(_learn, "clock", fake)
    monkeypatch.setattr(_probe, "clock", fake)
    return fake


def cupy_or_skip():
    """CuPy with at least one usable CUDA device, or skip the calling test module (files marked gpu)."""
    cp = pytest.importorskip("cupy")
    try:
        devices = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"no usable CUDA device: {exc}", allow_module_level=True)
    if devices < 1:
        pytest.skip("no CUDA device", allow_module_level=True)
    return cp
