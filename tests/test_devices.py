"""Decisions are made for, and name, the device current in the calling thread (issue 17, the
CPU side), on the FakeDevice test double: never silently device 0."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from autooffload import config, explain, offload
from autooffload.backends import cupy as device
from conftest import synthetic_profile


def _scaler():
    """A fresh offloaded function per test: counts and caches of its own."""

    @offload
    def scale(x):
        return x * 5.0

    return scale


def test_a_gpu_decision_names_the_current_device(on_gpu):
    scale = _scaler()
    x = np.arange(1.0, 11.0)
    np.testing.assert_array_equal(scale(x), x * 5.0)
    d = scale.last_decision
    assert d.backend == "cupy" and d.device_index == 0 and d.device == "cuda:0 (FAKE-GPU-0)"
    assert d.to_dict()["device"] == "cuda:0 (FAKE-GPU-0)"


def test_a_decision_cached_for_one_device_is_made_again_on_another(on_gpu):
    scale = _scaler()
    x = np.arange(1.0, 11.0)
    scale(x)
    assert scale.last_decision.device_index == 0
    on_gpu.use(3)  # this thread's current device is now 3
    np.testing.assert_array_equal(scale(x), x * 5.0)
    assert scale.last_decision.device_index == 3 and scale.last_decision.device == "cuda:3 (FAKE-GPU-3)"
    assert explain(scale, x).device_index == 3
    on_gpu.use(None)
    scale(x)
    assert scale.last_decision.device_index == 0
    assert scale.stats.cupy == 3


def test_each_thread_uses_its_own_current_device(on_gpu):
    scale = _scaler()
    x = np.arange(1.0, 11.0)
    seen = {}

    def work(index):
        on_gpu.use(index)
        with config(backend="cupy"):  # config() is per context: each thread forces its own
            np.testing.assert_array_equal(scale(x), x * 5.0)
        seen[index] = scale.last_decision.device_index

    for i in (1, 2):
        t = threading.Thread(target=work, args=(i,))
        t.start()
        t.join()
    scale(x)
    assert seen == {1: 1, 2: 2} and scale.last_decision.device_index == 0


def test_the_cold_start_is_per_device(fake_gpu, use_profile):
    use_profile(synthetic_profile(cold_start=1.0))
    scale = _scaler()
    x = np.ones(10**6)
    device.load()
    assert explain(scale, x).cold_start_s == pytest.approx(1.0)  # nothing ran on device 0 yet
    with config(backend="cupy"):
        scale(x)
    assert device.is_ready(0) and not device.is_ready(1)
    assert explain(scale, x).cold_start_s == 0.0  # device 0's context exists now
    fake_gpu.use(1)
    assert explain(scale, x).cold_start_s == pytest.approx(1.0)  # device 1's does not
    assert explain(scale, x).device == "cuda:1 (FAKE-GPU-1)"


def test_no_device_is_named_before_the_gpu_is_loaded():
    @offload
    def plus(x):
        return x + 1

    plus(np.ones(4))
    assert plus.last_decision.backend == "numpy" and plus.last_decision.device == ""
    assert plus.last_decision.device_index is None


def test_a_cuda_uuid_is_spelled_as_nvidia_smi_does():
    raw = bytes(range(16))
    assert device.format_uuid(raw) == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert device.format_uuid("GPU-abc") == "GPU-abc" and device.format_uuid(None) == ""


def _cupy_reporting(uuid):
    """A stand-in for the cupy module whose runtime reports ``uuid`` for every device."""
    from types import SimpleNamespace

    runtime = SimpleNamespace(getDeviceProperties=lambda index: {"uuid": uuid, "name": b"GPU"})
    return SimpleNamespace(cuda=SimpleNamespace(runtime=runtime))


def test_a_uuid_cupy_cut_at_a_zero_byte_is_read_from_the_driver(monkeypatch):
    # CuPy converts the 16 bytes as a C string: a UUID holding a zero byte comes back short
    # (seen on the H200 machine: the device was named "cuda:0" with no UUID).
    whole = bytes([0x5A, 0x11, 0, 7]) + bytes(range(12))
    asked = []
    monkeypatch.setattr(device, "_driver_uuid", lambda index: asked.append(index) or whole)
    assert device.cuda_uuid(_cupy_reporting(whole[:2]), 3) == device.format_uuid(whole) and asked == [3]
    assert device.cuda_uuid(_cupy_reporting(bytes(range(1, 17))), 0) == device.format_uuid(bytes(range(1, 17)))
    assert asked == [3]  # 16 bytes: CuPy's own answer, the driver not asked
    # No zero byte in the UUID: the C-string conversion reads on into the LUID (Windows).
    assert device.cuda_uuid(_cupy_reporting(bytes(range(1, 17)) + b"\x07\x08"), 1) == device.format_uuid(bytes(range(1, 17)))
    assert asked == [3]


def test_a_uuid_nothing_can_read_is_empty_and_the_device_named_by_index(monkeypatch):
    monkeypatch.setattr(device, "_driver_uuid", lambda index: None)
    assert device.cuda_uuid(_cupy_reporting(b"\x5a"), 0) == ""
    assert device.device_label((0, "")) == "cuda:0"


def test_the_driver_library_missing_gives_no_uuid(monkeypatch):
    import ctypes

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert device._driver_uuid(0) is None
