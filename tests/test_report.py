"""autooffload.report() (issue 16, item 1): where the time went, per offloaded function.

On NumPy and on the test double's GPU (tests/fake_device.py), forced and chosen by the cost
model: counts, timed calls, the bytes copied each way, fallbacks and their causes, the saving
against always-NumPy; the text, dict and HTML forms; ``python -m autooffload run`` and
AUTOOFFLOAD_REPORT=1 in fresh interpreters; and the NumPy hot path left as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
import weakref
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_profile
from fake_device import FAKE_MISSING, FakeDeviceArray

import autooffload
from autooffload import _dispatch, _report, config, offload
from autooffload.backends import cupy as device

SRC = str(Path(autooffload.__file__).resolve().parents[1])


def entry(report: _report.Report, func) -> _report.FunctionLine:
    """The report's entry for ``func`` (other tests' functions may be alive too)."""
    name = func.__autooffload__.name
    found = [f for f in report.functions if f.name == name]
    assert len(found) == 1, [f.name for f in report.functions]
    return found[0]


def line(report: _report.Report, func, backend: str) -> _report.BackendLine:
    found = [b for b in entry(report, func).lines if b.backend == backend]
    assert found, f"no {backend} line"
    return found[0]


# -- NumPy ---------------------------------------------------------------------------------------
def test_numpy_calls_are_all_counted_and_none_timed_on_the_hot_path():
    @offload
    def total(x):
        return (x * 2).sum()

    fastpath = total.__autooffload__.fastpath
    hits_before = fastpath.hits if fastpath is not None else 0
    for n in (10, 1000):
        for _ in range(50):
            total(np.ones(n))
    if fastpath is not None:  # the C check still answers plain NumPy calls (not so in pure-Python mode)
        assert fastpath.hits > hits_before
    numpy_line = line(autooffload.report(), total, "numpy")
    assert numpy_line.calls == 100 == total.stats.numpy
    # No GPU here: nothing to learn, so nothing is timed; the hot path added nothing to the sheet.
    assert numpy_line.timed_calls == 0 and numpy_line.per_call_s is None
    assert total.__autooffload__.records.timesheet.timed_by_bucket() == {}
    assert numpy_line.saved_s is None
    text = str(autooffload.report())
    assert "total" in text and " 100 " in text


def test_a_settled_numpy_call_goes_back_to_the_untimed_hot_path(fake_gpu, use_profile, clock):
    # NumPy clearly faster: the first calls of the size are timed (learning), then the hot path.
    use_profile(synthetic_profile(cpu_per_byte=1e-11, gpu_per_byte=1e-8, copy_per_byte=1e-8, cold_start=0.0))
    device.mark_gpu_ready()

    @offload(kind="elementwise")
    def small(x):
        clock.t += 0.010 if isinstance(x, FakeDeviceArray) else 0.001
        return x + 1

    x = np.ones(1000)
    for _ in range(40):
        small(x)
    sheet = small.__autooffload__.records.timesheet
    timed_before = sum(t.calls for (backend, _), t in sheet.timed_by_bucket().items() if backend == "numpy")
    fastpath = small.__autooffload__.fastpath
    hits_before = fastpath.hits if fastpath is not None else 0
    for _ in range(100):
        small(x)
    numpy_line = line(autooffload.report(), small, "numpy")
    assert numpy_line.calls + small.stats.cupy == 140  # (a few may have explored the GPU)
    assert 0 < numpy_line.timed_calls == timed_before < 40  # the learning calls, and no more
    assert numpy_line.timed_s == pytest.approx(0.001 * timed_before)  # the learner's clock: exact
    if fastpath is not None:
        assert fastpath.hits >= hits_before + 100


# -- the fake GPU, forced --------------------------------------------------------------------------
def test_forced_gpu_calls_are_timed_and_copy_exactly_the_arrays_moved(on_gpu):
    @offload
    def scaled(x, y):
        return x * 2 + y

    x, y = np.ones(1000), np.ones(1000, dtype=np.float32)
    for _ in range(7):
        scaled(x, y)
    gpu = line(autooffload.report(), scaled, "cupy")
    assert gpu.calls == gpu.timed_calls == 7 and gpu.timed_s > 0
    assert gpu.copies.host_to_device.bytes == 7 * (x.nbytes + y.nbytes)
    assert gpu.copies.host_to_device.arrays == 14
    assert gpu.copies.device_to_host.bytes == 7 * (x * 2 + y).nbytes  # the result
    assert gpu.copies.device_to_host.arrays == 7
    assert on_gpu.to_device_calls == 14 and on_gpu.to_host_calls == 7  # the double's own count agrees
    assert gpu.saved_s is None  # NumPy never ran at this size: not measured, not guessed
    assert "not measured" in str(autooffload.report())


def test_writes_copied_back_count_as_copies_out_and_a_returned_argument_does_not(on_gpu):
    @offload
    def bump(x, y):
        x += y
        return x  # the caller's own array comes back: no copy

    x, y = np.zeros(500), np.ones(500)
    bump(x, y)
    np.testing.assert_array_equal(x, 1.0)
    gpu = line(autooffload.report(), bump, "cupy")
    assert gpu.copies.host_to_device.bytes == x.nbytes + y.nbytes
    assert gpu.copies.device_to_host.bytes == x.nbytes  # the written argument only
    assert gpu.copies.device_to_host.arrays == 1


def test_numpy_runs_of_device_data_copy_to_the_host_and_back(fake_gpu):
    @offload
    def doubled(x):
        return x * 2

    x = np.arange(300.0).view(FakeDeviceArray)
    with config(backend="numpy"):
        out = doubled(x)
    assert type(out) is FakeDeviceArray
    numpy_line = line(autooffload.report(), doubled, "numpy")
    assert numpy_line.calls == 1
    assert numpy_line.copies.device_to_host.bytes == x.nbytes  # the argument, to NumPy
    assert numpy_line.copies.host_to_device.bytes == x.nbytes  # the result, back to the device


def test_a_fallback_shows_its_cause(on_gpu):
    FAKE_MISSING.add("unique")

    @offload
    def distinct(x):
        return np.unique(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", autooffload.GPUFallbackWarning)
        for _ in range(3):
            distinct(np.array([3.0, 1.0, 3.0]))
    found = entry(autooffload.report(), distinct)
    assert found.fallbacks == 1
    reasons = {reason: n for (backend, reason), n in found.ran_instead.items() if backend == "numpy"}
    failed = [r for r in reasons if "fell back" in r]
    assert len(failed) == 1 and "unique" in failed[0] and reasons[failed[0]] == 1
    assert sum(reasons.values()) == 3  # then twice from the failure cache, with the same cause
    assert line(autooffload.report(), distinct, "numpy").calls == 3
    text = str(autooffload.report())
    assert "1 call ran on numpy instead: GPU run failed (AttributeError" in text
    assert "2 calls ran on numpy instead: the GPU failed before for these argument types" in text


def test_gpu_runs_from_several_threads_are_all_on_the_sheet(on_gpu):
    @offload
    def plus(x):
        return x + 1

    x = np.ones(100)

    def calls():
        with config(backend="cupy"):  # a thread does not inherit the caller's config() block
            for _ in range(25):
                plus(x)

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gpu = line(autooffload.report(), plus, "cupy")
    assert gpu.calls == gpu.timed_calls == 100
    assert gpu.copies.host_to_device.arrays == 100 and gpu.copies.host_to_device.bytes == 100 * x.nbytes


# -- the fake GPU, chosen by the cost model -------------------------------------------------------


def test_auto_calls_show_both_backends_and_the_saving_against_numpy(fake_gpu, use_profile, clock):
    # Profile: NumPy 1 ms, GPU ~1.2 ms (uncertain). Reality: NumPy 30 ms, the GPU far less.
    use_profile(synthetic_profile(cpu_per_byte=1e-9, gpu_per_byte=1e-9, copy_per_byte=1e-10, cold_start=0.0))
    device.mark_gpu_ready()

    @offload(kind="elementwise")
    def slow_on_numpy(x):
        # The learner's clock; the report's GPU times are the executor's own (real) clock.
        clock.t += 0.005 if isinstance(x, FakeDeviceArray) else 0.030
        return x * 2

    x = np.ones(125_000)
    for _ in range(60):
        slow_on_numpy(x)
    report = autooffload.report()
    numpy_line, gpu = line(report, slow_on_numpy, "numpy"), line(report, slow_on_numpy, "cupy")
    assert numpy_line.calls + gpu.calls == 60 and numpy_line.calls >= 3 and gpu.calls >= 50
    assert numpy_line.timed_calls == numpy_line.calls  # each was a learning call of this size
    assert numpy_line.per_call_s == pytest.approx(0.030)
    assert gpu.timed_calls == gpu.calls
    # NumPy's learned time at this size is 30 ms: saved = GPU calls x 30 ms - their measured time.
    assert gpu.saved_calls == gpu.calls
    assert gpu.saved_s == pytest.approx(gpu.calls * 0.030 - gpu.timed_s)
    assert gpu.saved_s > 0
    assert f"+{_report.format_seconds(gpu.saved_s)}" in str(report)


# -- the forms -----------------------------------------------------------------------------------
class _Balance(HTMLParser):
    """Checks that every tag opened is closed, in order (html.parser itself accepts anything)."""

    VOID = {"br", "hr", "img", "meta", "link", "input", "col", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.seen: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.seen.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_the_html_table_is_well_formed_and_escapes_names(on_gpu):
    FAKE_MISSING.add("unique")

    @offload
    def local_fn(x):  # its qualname holds "<locals>": raw, it would open a tag
        return np.unique(x) if x.size == 3 else x + 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", autooffload.GPUFallbackWarning)
        local_fn(np.ones(3))
        local_fn(np.ones(8))
    page = autooffload.report()._repr_html_()
    parser = _Balance()
    parser.feed(page)
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    assert {"table", "thead", "tbody", "tr", "th", "td"} <= set(parser.seen)
    assert "locals" not in parser.seen  # escaped, not a tag
    text = "".join(parser.text)
    assert "test_the_html_table_is_well_formed_and_escapes_names.<locals>.local_fn" in text
    assert "fell back" in text and "cupy" in text


def test_the_dict_is_json_and_says_what_was_timed(on_gpu):
    @offload
    def halved(x):
        return x / 2

    halved(np.ones(64))
    doc = json.loads(json.dumps(autooffload.report().as_dict()))
    [mine] = [f for f in doc["functions"] if f["function"] == halved.__autooffload__.name]
    gpu = mine["backends"]["cupy"]
    assert gpu["calls"] == 1 and gpu["timed_calls"] == 1 and gpu["host_to_device"]["bytes"] == 512
    assert gpu["saved_s"] is None
    assert "timed" in doc["timed"]


def test_nothing_offloaded_is_one_line(monkeypatch):
    monkeypatch.setattr(_dispatch, "_STATES", weakref.WeakSet())
    empty = autooffload.report()
    assert str(empty) == "autooffload: nothing offloaded: no function decorated with @offload in this process"
    assert empty.as_dict()["functions"] == []
    assert "<p>" in empty._repr_html_()

    @offload
    def unused(x):
        return x

    text = str(autooffload.report())
    assert "\n" not in text and "1 function decorated, none called" in text


def test_a_function_dropped_by_its_program_drops_out_of_the_report():
    @offload
    def transient(x):
        return x

    transient(np.ones(3))
    name = transient.__autooffload__.name
    assert any(f.name == name for f in autooffload.report().functions)
    del transient
    import gc

    gc.collect()
    assert not any(f.name == name for f in autooffload.report().functions)


# -- at exit, in fresh interpreters ----------------------------------------------------------------
SCRIPT = """\
import sys
import numpy as np
from autooffload import offload

@offload
def norm(x):
    return np.sqrt((x * x).sum())

for _ in range(12):
    norm(np.ones(100))
print("script argv", sys.argv[1:], __name__)
{ending}
"""


def _python(args: list[str], env_extra: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOOFFLOAD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_run_prints_the_report_and_passes_the_exit_code_through(tmp_path):
    script = tmp_path / "small.py"
    script.write_text(SCRIPT.format(ending="raise SystemExit(int(sys.argv[1]))"))
    done = _python(["-m", "autooffload", "run", str(script), "3", "--flag"])
    assert done.returncode == 3, done.stderr
    assert "script argv ['3', '--flag'] __main__" in done.stdout
    assert "where the time went" in done.stderr and "where the time went" not in done.stdout
    row = next(r for r in done.stderr.splitlines() if r.startswith("norm"))
    assert row.split()[:3] == ["norm", "numpy", "12"]


def test_run_of_a_failing_script_prints_the_traceback_then_the_report(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(SCRIPT.format(ending="raise ValueError('the script failed')"))
    done = _python(["-m", "autooffload", "run", str(script)])
    assert done.returncode == 1
    assert "ValueError: the script failed" in done.stderr
    assert done.stderr.index("ValueError") < done.stderr.index("where the time went")
    missing = _python(["-m", "autooffload", "run", str(tmp_path / "absent.py")])
    assert missing.returncode == 2 and "no such script" in missing.stderr


def test_report_variable_prints_at_exit_once_and_only_when_asked(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(SCRIPT.format(ending=""))
    asked = _python([str(script)], {"AUTOOFFLOAD_REPORT": "1"})
    assert asked.returncode == 0 and asked.stderr.count("where the time went") == 1
    both = _python(["-m", "autooffload", "run", str(script)], {"AUTOOFFLOAD_REPORT": "1"})
    assert both.stderr.count("where the time went") == 1
    quiet = _python([str(script)], {"AUTOOFFLOAD_REPORT": "0"})
    assert quiet.returncode == 0 and quiet.stderr == ""
    unset = _python([str(script)])
    assert unset.stderr == ""


def test_a_bad_report_variable_is_refused_like_the_others():
    from autooffload import ConfigError, _config

    os.environ["AUTOOFFLOAD_REPORT"] = "sometimes"
    try:
        with pytest.raises(ConfigError, match="AUTOOFFLOAD_REPORT must be 1/0"):
            _config.reload_environment()
    finally:
        del os.environ["AUTOOFFLOAD_REPORT"]
        _config.reload_environment()
    done = _python(["-c", "import autooffload"], {"AUTOOFFLOAD_REPORT": "sometimes"})
    assert "AUTOOFFLOAD_REPORT must be 1/0" in done.stderr
