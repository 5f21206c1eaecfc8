"""Offloaded functions and worker-side helpers for tests/test_dask.py: importable by the worker
processes of a dask.distributed cluster (the tests put this folder on their PYTHONPATH), so that
tasks carry the functions by name, as a user's module would."""

from __future__ import annotations

import numpy as np

from autooffload import offload


@offload(blockwise=True)
def black_scholes_like(s, k, t, r=0.05, v=0.2):
    """Elementwise transcendental work, the shape of the README's Black-Scholes."""
    d1 = (np.log(s / k) + (r + 0.5 * v * v) * t) / (v * np.sqrt(t))
    d2 = d1 - v * np.sqrt(t)
    return s * np.tanh(d1) - k * np.exp(-r * t) * np.tanh(d2)


@offload(blockwise="rows")
def normalize_rows(x):
    return x / np.sqrt((x * x).sum(axis=1, keepdims=True))


def install_fake_device(index: int, backend: str = "cupy") -> tuple[int, str]:
    """On a worker: this process's GPU is the test double number ``index``, and calls go to the
    device (``AUTOOFFLOAD_BACKEND``), so each block's decision names the worker's device."""
    import os

    import fake_device

    import autooffload
    from autooffload.backends import cupy

    os.environ["AUTOOFFLOAD_BACKEND"] = backend
    autooffload.reload_environment()
    device = fake_device.FakeDevice(index=index, uuid=f"FAKE-GPU-{index}")
    cupy.set_backend_for_tests(device)
    return device.current_device()


def report(name: str) -> dict:
    """On a worker: what the offloaded function ``name`` of this module did in this process."""
    import os

    f = globals()[name]
    d = f.last_decision
    return {"pid": os.getpid(), "device": None if d is None else d.device,
            "device_index": None if d is None else d.device_index,
            "backend": None if d is None else d.backend, "cupy_calls": f.stats.cupy, "numpy_calls": f.stats.numpy}


_held: list = []  # device memory a GPU test keeps allocated on this worker


def hold_gpu_memory(leave_bytes: int) -> tuple[int, int]:
    """On a worker with a GPU: allocate all of its free memory but ``leave_bytes`` (kept until
    ``release_gpu_memory``), so the blocks' data exceeds what is left. (free before, free after)."""
    import cupy

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    free = int(cupy.cuda.runtime.memGetInfo()[0])
    if free > leave_bytes:
        # Outside CuPy's pool: the pool's own limit stays what the device has left.
        _held.append(cupy.cuda.memory.Memory(free - leave_bytes))
    return free, int(cupy.cuda.runtime.memGetInfo()[0])


def release_gpu_memory() -> None:
    _held.clear()


def visible_devices() -> str | None:
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES")
