"""Dask workers on a real GPU (issue 15 item 5, issue 17): each worker process has its own
``CUDA_VISIBLE_DEVICES``, its blocks are decided from its own device and profile, and its
decisions name that device by index and UUID.

Marked ``gpu``; needs dask and distributed (carry them as wheels: /work/shared/gpu/README.md).

* One GPU (the H200 machine): two workers, one with ``CUDA_VISIBLE_DEVICES=0`` and one with none
  visible. Before the blocks run, the GPU worker allocates all of the card's free memory but
  ``LEAVE`` (tests/dask_targets.hold_gpu_memory, memory outside CuPy's pool), so its share of the
  data is several times what the GPU has left: its blocks stream through what is left. The GPU
  worker's decisions name "cuda:0 (GPU-<uuid of physical GPU 0>)" and some of its blocks run on
  the GPU (they pay: Black-Scholes on 64 MiB float32 blocks); the other worker's name no device
  and run on NumPy, with the reason. Results equal NumPy's (rtol 1e-5, float32 transcendental).
* Two GPUs (skipped with fewer): one worker per GPU, each naming its own device, both with GPU
  blocks, the same memory squeeze on each.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import cupy_or_skip

pytestmark = pytest.mark.gpu
cp = cupy_or_skip()
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask_targets  # noqa: E402
from autooffload.backends.cupy import cuda_uuid, device_label  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEAVE = 512 * 2**20  # GPU memory left free on each GPU worker
CHUNK = 2**24  # float32 elements per block: 64 MiB, four arrays of it per block on the GPU


def _cluster(devices: list[str]):
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    workers = {
        f"w{i}": {"cls": distributed.Nanny,
                  "options": {"nthreads": 1, "memory_limit": 0, "silence_logs": 40,
                              "env": {"CUDA_VISIBLE_DEVICES": dev, "PYTHONPATH": path}}}
        for i, dev in enumerate(devices)
    }
    return distributed.SpecCluster(workers=workers, silence_logs=40,
                                   scheduler={"cls": distributed.Scheduler, "options": {"dashboard": False}})


def _label(index: int, seen_as: int = 0) -> str:
    """How a decision names device ``index`` of this process, in a worker that numbers it
    ``seen_as`` (no UUID where neither CuPy nor the driver tells it)."""
    return device_label((seen_as, cuda_uuid(cp, index)))


def _run(devices: list[str], n: int, rounds: int = 3) -> dict:
    with _cluster(devices) as cluster, distributed.Client(cluster) as client:
        by_visible = {v: w for w, v in client.run(dask_targets.visible_devices).items()}
        for dev in devices:
            if dev:
                free, left = client.run(dask_targets.hold_gpu_memory, LEAVE, workers=[by_visible[dev]])[by_visible[dev]]
                print(f"worker CUDA_VISIBLE_DEVICES={dev}: {free / 2**30:.1f} GiB free, {left / 2**30:.2f} GiB left")
        rs = da.random.RandomState(7)
        s = (rs.random_sample(n, chunks=CHUNK).astype(np.float32) * 50 + 75).persist()
        k = (rs.random_sample(n, chunks=CHUNK).astype(np.float32) * 50 + 75).persist()
        t = (rs.random_sample(n, chunks=CHUNK).astype(np.float32) + 0.25).persist()
        distributed.wait([s, k, t])
        for r in range(rounds):
            rate = 0.05 + 1e-3 * r  # other keys each round: computed afresh
            y = dask_targets.black_scholes_like(s, k, t, r=rate).persist()
            distributed.wait(y)
        for i in (0, y.numblocks[0] // 2, y.numblocks[0] - 1):
            want = dask_targets.black_scholes_like.__wrapped__(s.blocks[i].compute(), k.blocks[i].compute(),
                                                              t.blocks[i].compute(), r=rate)
            np.testing.assert_allclose(y.blocks[i].compute(), want, rtol=1e-5, atol=1e-4)
        seen = client.run(dask_targets.report, "black_scholes_like")
        client.run(dask_targets.release_gpu_memory)
        print({by: seen[w] for by, w in by_visible.items()})
        return {dev: seen[w] for dev, w in by_visible.items()}


def test_one_gpu_worker_and_one_without(capsys):
    n = 2**28  # 1 GiB per float32 input: each worker's share is about 4x what its GPU has left
    seen = _run(["0", ""], n)
    gpu, cpu = seen["0"], seen[""]
    assert gpu["device"] == _label(0) and gpu["device_index"] == 0
    assert gpu["cupy_calls"] >= 1, gpu  # its blocks go to the GPU once they pay
    assert cpu["device"] == "" and cpu["cupy_calls"] == 0 and cpu["numpy_calls"] >= 1
    assert gpu["cupy_calls"] + gpu["numpy_calls"] + cpu["numpy_calls"] == 3 * (n // CHUNK)


def test_one_worker_per_gpu():
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs (nvidia-h200-x2)")
    n = 2**29
    seen = _run(["0", "1"], n)
    for i in (0, 1):
        # Each worker sees its GPU as its device 0: the UUID tells them apart.
        assert seen[str(i)]["device"] == _label(i), seen
        assert seen[str(i)]["cupy_calls"] >= 1, seen
