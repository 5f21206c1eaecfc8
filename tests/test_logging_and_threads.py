"""Logging of decisions, the import contract, and calls from many threads."""

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
