"""Logging of decisions, the import contract, and calls from many threads."""

import json
import logging
import subprocess
import sys
import threading

import numpy as np

import autooffload
from autooffload import config, offload


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
