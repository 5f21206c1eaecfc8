"""Logging of decisions, the import contract, and calls from many threads."""

import contextlib
import errno
import json
import logging
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import autooffload
from autooffload import _log, config, offload
from autooffload.errors import LogFileWarning


def test_logger_has_only_a_null_handler():
    handlers = logging.getLogger("autooffload").handlers
    assert [type(h) for h in handlers] == [logging.NullHandler]


def test_debug_for_every_call_and_info_for_a_new_size_bucket(caplog):
    f = offload(lambda x: x + 1)
    with caplog.at_level(logging.DEBUG, logger="autooffload"):
        f(np.ones(10))
        f(np.ones(10))
        f(np.ones(5000))
    records = [r for r in caplog.records if r.name == "autooffload" and "<lambda> ->" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.INFO, logging.DEBUG, logging.INFO]
    assert "host 80 B" in records[0].getMessage() and "predicted" in records[0].getMessage()


def test_info_only_shows_new_buckets(caplog):
    f = offload(lambda x: x + 1)
    with caplog.at_level(logging.INFO, logger="autooffload"):
        for _ in range(5):
            f(np.ones(10))
    assert len([r for r in caplog.records if "<lambda> ->" in r.getMessage()]) == 1


def test_json_lines_log(monkeypatch, tmp_path):
    path = tmp_path / "decisions.jsonl"
    monkeypatch.setenv("AUTOOFFLOAD_LOG", str(path))
    autooffload.reload_environment()
    f = offload(kind="fft")(lambda x: np.fft.fft(x))
    f(np.ones(8))
    f(np.ones(8))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["backend"] == "numpy" and lines[0]["kind"] == "fft" and lines[0]["host_bytes"] == 64
    assert set(lines[0]) >= {"time", "function", "reason", "dtypes", "predicted_s", "profile"}


def _unwritable_log(kind, tmp_path, monkeypatch):
    """An AUTOOFFLOAD_LOG that cannot be written, and how to make it writable again."""
    if kind == "directory":
        path = tmp_path / "decisions.jsonl"
        path.mkdir()
        return path, "Is a directory", path.rmdir
    if kind == "missing folder":
        path = tmp_path / "no-such-folder" / "decisions.jsonl"
        return path, "No such file or directory", path.parent.mkdir
    # A full disk: every write fails with ENOSPC (as on /dev/full), the open itself succeeds.
    real_open = open

    class FullDisk:
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_log, "open", FullDisk, raising=False)
    return tmp_path / "decisions.jsonl", "No space left on device", lambda: monkeypatch.delattr(_log, "open")


@pytest.mark.parametrize("kind", ["directory", "missing folder", "full disk"])
def test_an_unwritable_log_warns_once_and_the_calls_go_on(kind, tmp_path, monkeypatch, fake_gpu):
    path, os_error, repair = _unwritable_log(kind, tmp_path, monkeypatch)
    monkeypatch.setenv("AUTOOFFLOAD_LOG", str(path))
    autooffload.reload_environment()

    @offload
    def scale(x, out, options=()):
        out[:] = x * 2
        return x.sum()

    x, out = np.arange(4.0), np.zeros(4)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert scale(x, out) == 6.0  # the decision (and its log record) is new here
        assert scale(x, out) == 6.0  # an exact-cache hit: the hot path's record
        assert scale(x, out, options=[1]) == 6.0  # a list: the general path's new decision
        assert scale(x, out, options=[1]) == 6.0  # and its exact-cache hit
        with config(backend="cupy"):
            gpu_out = np.zeros(4)
            assert scale(x, gpu_out) == 6.0
    np.testing.assert_array_equal(out, x * 2)
    np.testing.assert_array_equal(gpu_out, x * 2)
    assert scale.stats.cupy == 1
    logged = [w for w in record if issubclass(w.category, LogFileWarning)]
    assert len(logged) == 1, [str(w.message) for w in record]
    message = str(logged[0].message)
    assert str(path) in message and os_error in message and "AUTOOFFLOAD_LOG" in message
    assert logged[0].filename == __file__  # the user's call, not a line inside autooffload

    # Fixed, and the environment re-read: the file log resumes.
    repair()
    monkeypatch.setenv("AUTOOFFLOAD_LOG", str(path))
    autooffload.reload_environment()
    assert scale(x, out) == 6.0
    (line,) = path.read_text().splitlines()
    assert json.loads(line)["function"].endswith("scale")


def test_import_does_not_import_cupy_and_is_fast():
    code = (
        "import sys, time; t = time.perf_counter(); import autooffload; dt = time.perf_counter() - t\n"
        "assert 'cupy' not in sys.modules, 'cupy imported'\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
        "print(dt)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 1.0  # numpy and pydantic dominate; measured ~0.2 s here


def test_many_threads_get_numpys_results_and_every_call_is_counted(fake_gpu):
    @offload
    def work(x):
        x += 1
        return np.sort(x)[::-1].copy(), float(x.sum())

    n_threads, n_calls = 8, 50
    errors = []

    def worker(i):
        try:
            for j in range(n_calls):
                with config(backend="cupy" if (i + j) % 2 else "numpy"):
                    x = np.arange(float(i + j + 1))
                    expected = np.sort(x + 1)[::-1]
                    srt, total = work(x)
                    assert np.array_equal(srt, expected)
                    assert np.array_equal(x, np.arange(float(i + j + 1)) + 1)
                    assert total == expected.sum()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert work.stats.calls == n_threads * n_calls
    assert work.stats.cupy == n_threads * n_calls // 2


def test_each_thread_sees_only_its_own_nested_config_blocks(fake_gpu):
    # From the probes threads_isolation.py / threads_config.py: blocks never leak across threads.
    from fake_device import FakeDeviceArray

    @offload
    def where(x):
        return type(x) is FakeDeviceArray

    @offload
    def double_in_place(x):
        x *= 2
        return x.sum()

    bad = []

    def check(label, want_device, x):
        expected = x * 2
        if where(x) != want_device:
            bad.append((label, "placement"))
        if double_in_place(x) != expected.sum() or not np.array_equal(x, expected):
            bad.append((label, "write"))

    def forced():
        for i in range(150):
            with config(backend="cupy"):
                check("cupy", True, np.arange(float(i % 7 + 1)))

    def free():
        for i in range(150):
            check("none", False, np.arange(float(i % 7 + 1)))

    def nested():
        for i in range(150):
            with config(backend="cupy"):
                with config(backend="numpy"):
                    check("inner numpy", False, np.arange(float(i % 7 + 1)))
                check("outer cupy", True, np.arange(float(i % 7 + 1)))

    threads = [threading.Thread(target=t) for t in (forced, free, nested) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, bad[:5]


def test_threads_racing_through_a_small_decision_cache_get_numpys_results(monkeypatch, fake_gpu):
    # From the probe threads_stress.py: the exact-decision cache is cleared while others read it.
    from autooffload import _planner

    monkeypatch.setattr(_planner, "_EXACT_CACHE_LIMIT", 8)

    @offload
    def f(x, y):
        return (np.sqrt(np.abs(x)) + y).sum()

    @offload
    def g(d):
        d["a"] *= 3
        return np.sort(d["a"])

    bad = []

    def worker(seed):
        r = np.random.default_rng(seed)
        for i in range(150):
            x = r.standard_normal(int(r.integers(1, 400)))
            mode = ("cupy", "numpy", "auto", None)[i % 4]
            try:
                with config(backend=mode) if mode else contextlib.nullcontext():
                    a = f(x, 1.5)
                    d = {"a": x.copy()}
                    b = g(d)
                if a != (np.sqrt(np.abs(x)) + 1.5).sum():
                    bad.append(("f", mode))
                if not (np.array_equal(d["a"], x * 3) and np.array_equal(b, np.sort(x * 3))):
                    bad.append(("g", mode))
            except Exception as exc:  # pragma: no cover - reported below
                bad.append(("raised", repr(exc)))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, bad[:5]
    assert len(f.__autooffload__.planner.exact) <= 8 and len(g.__autooffload__.planner.exact) <= 8
    assert f.stats.calls == g.stats.calls == 900
