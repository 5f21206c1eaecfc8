"""Dask arrays given to offloaded blockwise functions (issue 15 item 5; _dask.py), and each Dask
worker deciding from its own device (issue 17, CPU side).

The graph's construction and its results are checked on Dask's synchronous scheduler (fast);
what needs other processes (the function pickled to workers by name or by value, each worker's
own test-double device) runs on one ``LocalCluster(processes=True, n_workers=2,
threads_per_worker=1)`` per module (about 2-4 s to start on a 2-core VM).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import dask_targets  # noqa: E402
from autooffload import offload  # noqa: E402

TESTS = str(Path(__file__).resolve().parent)
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def sync():
    with dask.config.set(scheduler="synchronous"):
        yield


def _rand(shape, seed=0, dtype=np.float64):
    return (np.random.default_rng(seed).random(shape) + 0.5).astype(dtype)  # non-zero, positive


@offload(blockwise=True)
def axpb(x, y, s=2.0):
    return np.sin(x) * y + s


@offload(blockwise="rows")
def row_sums(x):
    return x.sum(axis=1)


@offload(blockwise="rows")
def weighted_row_sums(x, w):
    return (x * w).sum(axis=1)


@offload(blockwise=True)
def scale_in_place(x):
    x *= 5
    return x


@offload(blockwise=True)
def compare(x, y):
    return x > y


def test_result_is_a_lazy_dask_array_equal_to_numpy(sync):
    a = _rand((10, 6))
    x = da.from_array(a, chunks=(3, 4))
    r = axpb(x, a, s=3.0)
    assert isinstance(r, da.Array) and r.shape == a.shape and r.dtype == np.float64
    assert axpb.stats.calls == 0  # nothing ran yet: the trial call is the undecorated function
    np.testing.assert_array_equal(r.compute(), np.sin(a) * a + 3.0)
    assert axpb.stats.calls == r.npartitions  # one offloaded call per block


@pytest.mark.parametrize("other_shape, other_chunks", [
    ((6,), 2),          # a row vector broadcast along the leading axis
    ((10, 1), (5, 1)),  # a column broadcast along the last axis, other leading chunks
    ((1, 6), (1, 3)),   # a length-1 leading axis
    ((10, 6), (5, 3)),  # same shape, other chunks: unified
    ((4, 10, 6), (2, 5, 6)),  # a higher-dimensional operand: the result has its shape
])
def test_broadcasting_and_different_chunks(sync, other_shape, other_chunks):
    a, b = _rand((10, 6)), _rand(other_shape, seed=1)
    r = axpb(da.from_array(a, chunks=(3, 4)), da.from_array(b, chunks=other_chunks))
    expected = np.sin(a) * b + 2.0
    assert r.shape == expected.shape
    np.testing.assert_array_equal(r.compute(), expected)


def test_small_operands_are_passed_whole_not_broadcast_to_full_blocks(sync):
    seen = []

    @offload(blockwise=True)
    def spy(x, y):
        seen.append(y.shape)
        return x * y

    a, b = _rand((8, 4)), _rand((1, 4), seed=1)
    r = spy(da.from_array(a, chunks=(2, 4)), da.from_array(b))
    seen.clear()  # the trial's call
    np.testing.assert_array_equal(r.compute(), a * b)
    assert seen == [(1, 4)] * 4


def test_numpy_arguments_scalars_and_keywords(sync):
    a, b = _rand((9,)), _rand((9,), seed=1)
    x = da.from_array(a, chunks=4)
    np.testing.assert_array_equal(axpb(x, b, np.float64(0.5)).compute(), np.sin(a) * b + 0.5)
    np.testing.assert_array_equal(axpb(x, y=da.from_array(b, chunks=3), s=1).compute(), np.sin(a) * b + 1)
    np.testing.assert_array_equal(axpb(y=b, x=x).compute(), np.sin(a) * b + 2.0)  # keywords only
    np.testing.assert_array_equal(axpb(x, np.float64(3.0)).compute(), np.sin(a) * 3.0 + 2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.complex64])
def test_dtype_comes_from_the_trial(sync, dtype):
    a = (np.arange(1, 13).reshape(3, 4)).astype(dtype)
    r = axpb(da.from_array(a, chunks=2), 2)
    expected = np.sin(a) * 2 + 2.0
    assert r.dtype == expected.dtype
    out = r.compute()
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)
    c = compare(da.from_array(a, chunks=2), 5)
    assert c.dtype == np.bool_ and np.array_equal(c.compute(), a > 5)


def test_rows_functions_get_whole_rows_and_may_change_the_trailing_shape(sync):
    a = _rand((11, 7))
    x = da.from_array(a, chunks=(4, 3))  # rows split over three chunks: rechunked whole
    r = dask_targets.normalize_rows(x)
    assert r.chunks == ((4, 4, 3), (7,))
    np.testing.assert_allclose(r.compute(), a / np.sqrt((a * a).sum(axis=1, keepdims=True)), rtol=1e-15)
    s = row_sums(x)
    assert s.shape == (11,) and s.chunks == ((4, 4, 3),)
    np.testing.assert_allclose(s.compute(), a.sum(axis=1), rtol=1e-14)
    w = _rand((7,), seed=2)
    ws = weighted_row_sums(x, da.from_array(w, chunks=3))  # the row-long operand is made whole too
    assert ws.chunks == ((4, 4, 3),)
    np.testing.assert_allclose(ws.compute(), (a * w).sum(axis=1), rtol=1e-14)


def test_a_writing_function_gets_blocks_of_its_own(sync):
    a = _rand((8, 3))
    kept = a.copy()
    x = da.from_array(a, chunks=(3, 3))
    np.testing.assert_array_equal(scale_in_place(x).compute(), kept * 5)
    np.testing.assert_array_equal(a, kept)  # the source blocks are unchanged
    np.testing.assert_array_equal(x.compute(), kept)


def test_a_function_not_known_blockwise_refuses_dask_arrays_naming_the_option():
    @offload
    def total(x):
        return x.sum()

    with pytest.raises(TypeError, match=r"blockwise=True"):
        total(da.ones(10, chunks=5))
    assert total(np.ones(10)) == 10.0  # NumPy arguments as before


def test_a_false_promise_is_caught_by_the_trial():
    @offload(blockwise=True)
    def total(x):
        return x.sum()

    with pytest.raises(ValueError, match="broadcast shape"):
        total(da.ones((10, 3), chunks=5))


@pytest.mark.parametrize("body, error, match", [
    (lambda x: None, TypeError, "returned None"),
    (lambda x: (x, x), TypeError, "one array"),
])
def test_results_the_dask_path_cannot_build(body, error, match):
    f = offload(blockwise=True)(body)
    with pytest.raises(error, match=match):
        f(da.ones(4, chunks=2))


def test_bad_dask_arguments_are_explained():
    with pytest.raises(ValueError, match="do not broadcast"):
        axpb(da.ones((4, 3), chunks=2), da.ones((5,), chunks=2))
    with pytest.raises(TypeError, match="inside a list"):
        axpb([da.ones(4, chunks=2)], 1.0)
    x = da.ones(6, chunks=2)
    unknown = x[x > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        axpb(unknown, 1.0)


def test_dask_is_imported_only_when_a_dask_array_is_passed():
    code = (
        "import sys, numpy as np, autooffload\n"
        "@autooffload.offload(blockwise=True)\n"
        "def f(x): return x * 5\n"
        "f(np.ones(10)); f(np.ones((3, 3)), ); print('dask' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "False"


# -- on worker processes -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    distributed = pytest.importorskip("distributed")
    saved = dict(os.environ)
    # The workers import this folder's modules by name; they learn into a cache of their own.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, SRC, saved.get("PYTHONPATH")]))
    os.environ["AUTOOFFLOAD_CACHE_DIR"] = str(tmp_path_factory.mktemp("worker-cache"))
    for name in [n for n in os.environ if n.startswith("AUTOOFFLOAD_") and n != "AUTOOFFLOAD_CACHE_DIR"]:
        del os.environ[name]
    try:
        cluster = distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                           dashboard_address=None, silence_logs=40)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    with cluster, distributed.Client(cluster) as c:
        yield c


def test_workers_compute_the_blocks(client):
    s, k, t = _rand((400,), 1), _rand((400,), 2), _rand((400,), 3)
    r = dask_targets.black_scholes_like(da.from_array(s, chunks=50), da.from_array(k, chunks=80), t)
    expected = dask_targets.black_scholes_like.__wrapped__(s, k, t)
    np.testing.assert_allclose(client.compute(r).result(), expected, rtol=1e-14)
    calls = client.run(dask_targets.report, "black_scholes_like")
    assert sum(v["numpy_calls"] + v["cupy_calls"] for v in calls.values()) >= 8  # the blocks ran there


def test_a_function_not_importable_by_name_is_sent_by_value(client):
    @offload(blockwise=True)
    def local(x):  # inside a function: workers cannot import it, so it is rebuilt there
        return np.exp(x) - 1

    a = _rand((100,))
    np.testing.assert_allclose(client.compute(local(da.from_array(a, chunks=30))).result(), np.expm1(a), rtol=1e-13)


def test_each_worker_decides_on_its_own_device(client):
    workers = sorted(client.scheduler_info()["workers"])
    assert len(workers) == 2
    for i, w in enumerate(workers):
        assert client.run(dask_targets.install_fake_device, i, workers=[w])[w] == (i, f"FAKE-GPU-{i}")
    try:
        a = _rand((300, 4))
        expected = dask_targets.normalize_rows.__wrapped__(a)
        for w in workers:  # all the blocks of one computation on one worker, then on the other
            # A graph of its own per worker: the same keys could be served from the first worker's
            # memory while the client is still releasing them.
            x = da.from_array(a, chunks=(50, 4), name=f"rows-for-{w}")
            np.testing.assert_allclose(client.compute(dask_targets.normalize_rows(x), workers=[w]).result(),
                                       expected, rtol=1e-15)
        seen = client.run(dask_targets.report, "normalize_rows")
        for i, w in enumerate(workers):
            assert seen[w]["backend"] == "cupy" and seen[w]["cupy_calls"] >= 6, seen
            assert seen[w]["device_index"] == i and seen[w]["device"] == f"cuda:{i} (FAKE-GPU-{i})"
        assert seen[workers[0]]["pid"] != seen[workers[1]]["pid"]
    finally:
        client.run(_back_to_no_device)


def _back_to_no_device():
    import os

    import autooffload
    from autooffload.backends import cupy

    os.environ.pop("AUTOOFFLOAD_BACKEND", None)
    autooffload.reload_environment()
    cupy.set_backend_for_tests(None)


def test_the_multi_gpu_benchmark_runs_its_clusters(tmp_path):
    """benchmarks/multi_gpu.py at a tiny size on workers without a GPU: the table, the JSON, the
    results checked against NumPy inside it (so a typo fails here, not on the GPU machine)."""
    import importlib.util
    import json

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location("bench_multi_gpu", bench / "multi_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--sizes", "2e5", "--chunk", "5e4", "--devices", "none", "--devices", "none,none",
                    "--repeat", "1", "--warmup", "0", "--out", str(tmp_path), "--machine", "t", "--no-plot"])
    rows = out["rows"]
    assert [r["cluster"] for r in rows] == ["none", "none,none"] and all(r["blocks"] == 4 for r in rows)
    assert [len(r["workers"]) for r in rows] == [1, 2]
    for r in rows:
        assert sum(w["numpy_blocks"] for w in r["workers"].values()) == 4  # one round of 4 blocks
        assert all(w["device"] == "" and w["gpu_blocks"] == 0 for w in r["workers"].values())
    doc = json.loads((tmp_path / "t" / "multi_gpu.json").read_text())
    assert doc["benchmark"] == "multi_gpu" and len(doc["rows"]) == 2
