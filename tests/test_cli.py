"""The command line, in-process through ``main([...])`` and once as ``python -m autooffload``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autooffload import _calibrate, _profiles, cli
from autooffload._profiles import fingerprint as fingerprint_module, store
from autooffload._costmodel import KINDS
from autooffload._profiles import (
    BackendTiming,
    Curve,
    Fingerprint,
    Profile,
    current_fingerprint,
    default_profile_path,
    load_profile,
    reset_active_profile,
    save_profile,
)
from autooffload._sweep import SweepProgress
from autooffload.cli import main
from autooffload.errors import CalibrationError

SRC = Path(cli.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AUTOOFFLOAD_PROFILE", raising=False)
    monkeypatch.setattr(store, "SHIPPED_PROFILES_DIR", tmp_path / "shipped")
    monkeypatch.setattr(fingerprint_module, "_PROC_GPUS", tmp_path / "no-proc-gpus")
    reset_active_profile()
    yield
    reset_active_profile()


def gpu_profile(fingerprint: Fingerprint | None = None, note: str = "synthetic") -> Profile:
    """CPU 1 ns/B; GPU a 10 us floor; copies 10 GB/s: every kind crosses over."""
    linear = lambda k: Curve(nbytes=[1.0, 1e13], seconds=[k, k * 1e13])  # noqa: E731
    return Profile(
        fingerprint=fingerprint if fingerprint is not None else current_fingerprint(probe_gpu=False),
        backends={
            "numpy": BackendTiming(memory="host", kinds={k: linear(1e-9) for k in KINDS}),
            "cupy": BackendTiming(
                memory="device",
                kinds={k: Curve(nbytes=[1.0, 1e13], seconds=[1e-5, 1e-5]) for k in KINDS},
                warmup_s=1.2,
                launch_latency_s=1e-5,
                transfer_engine="test-engine",
                h2d=linear(1e-10),
                d2h=linear(1e-10),
            ),
        },
        notes=[note],
    )


@pytest.fixture
def fake_sweep(monkeypatch):
    """calibrate() without measuring: the sweep returns a synthetic profile at once."""
    calls = []

    def sweep(plan, progress=None):
        calls.append(plan)
        if progress:
            progress(SweepProgress(0.5, "sort", "1 MiB numpy"))
            progress(SweepProgress(1.0, "done"))
        return gpu_profile(note=f"fake {plan.name}")

    monkeypatch.setattr(_calibrate, "run_sweep", sweep)
    return calls


# ----------------------------------------------------------------------------- show


def test_show_without_a_calibration_shows_the_builtin_fallback(capsys):
    assert main(["show"]) == 0
    out = capsys.readouterr().out
    assert "built-in" in out and "no calibrated profile at" in out
    for kind in KINDS:
        assert kind in out


def test_show_a_file_prints_machine_age_and_crossover_table(tmp_path, capsys):
    path = save_profile(gpu_profile(), tmp_path / "p.json")
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and "this machine's" in out
    assert "just now" in out and "Crossovers" in out
    assert "numpy data (host)" in out and "cupy data (device)" in out
    table = out.split("Crossovers")[1]
    assert all(kind in table for kind in KINDS)
    assert "KiB" in table


def test_show_notes_another_machines_profile(tmp_path, capsys):
    other = Fingerprint(cpu_model="Far Away CPU", cpu_cores=128, gpu_name="NVIDIA H100 80GB HBM3")
    path = save_profile(gpu_profile(other), tmp_path / "h100.json")
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ANOTHER machine" in out and "not this machine's profile" in out and "Far Away CPU" in out


def test_show_json_schema(tmp_path, capsys):
    path = save_profile(gpu_profile(), tmp_path / "p.json")
    assert main(["show", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {
        "show_json_version", "source", "builtin", "this_machine", "other_machine_reason", "note",
        "probed", "age_s", "version_drift", "gpu_usable", "crossovers", "numba_tier", "profile",
    }
    assert doc["show_json_version"] == 3
    assert doc["source"] == str(path) and doc["this_machine"] is True and doc["builtin"] is False
    assert set(doc["crossovers"]) == set(KINDS)
    for entry in doc["crossovers"].values():
        assert set(entry) == {"host", "device"}
        assert all(v is None or isinstance(v, float) for v in entry.values())
    assert doc["crossovers"]["elementwise"]["device"] < doc["crossovers"]["elementwise"]["host"]
    Profile.model_validate(doc["profile"])  # the embedded profile is the file format


def test_show_uses_the_calibrated_profile_by_default(capsys):
    path = save_profile(gpu_profile(note="mine"), default_profile_path())
    assert main(["show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == str(path)


@pytest.mark.parametrize("content", ['{"schema_version": 1, "kinds": ', "{nope", '{"schema_version": 7}'])
def test_show_a_corrupt_file_is_a_clear_error_with_exit_code_2(tmp_path, capsys, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["show", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(bad) in captured.err and "autooffload calibrate" in captured.err
    assert "Traceback" not in captured.err


MALFORMED_FILES = {
    "deep-nesting": b'{"schema_version": 1, "notes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge-integer": b'{"schema_version": ' + b"9" * 5000 + b"}",
    "invalid-utf8": b'{"schema_version": 1, "notes": ["\xff\xfe"]}',
    "top-level-list": b"[1, 2, 3]",
    "top-level-string": b'"a profile"',
    "truncated": b'{"schema_version": 1, "fingerprint": {"hostname": "x"',
    "nan-latency": b'{"schema_version": 1, "launch_latency_s": NaN}',
    "negative-cold-start": b'{"schema_version": 1, "cold_start_s": -5}',
    "nan-latency-schema-2": b'{"schema_version": 2, "backends": {"numpy": {"memory": "host"}, '
    b'"cupy": {"memory": "device", "launch_latency_s": NaN}}}',
    "negative-warmup-schema-2": b'{"schema_version": 2, "backends": {"numpy": {"memory": "host"}, '
    b'"cupy": {"memory": "device", "warmup_s": -5}}}',
}


@pytest.mark.parametrize("case", sorted(MALFORMED_FILES))
@pytest.mark.parametrize("command", ["show", "plot"])
def test_a_malformed_profile_is_one_line_naming_the_file_and_exit_2(tmp_path, capsys, case, command):
    bad = tmp_path / f"{case}.json"
    bad.write_bytes(MALFORMED_FILES[case])
    args = ["show", str(bad)] if command == "show" else ["plot", "-o", str(tmp_path / "p.png"), str(bad)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("autooffload: error: profile " + str(bad))


def test_show_reports_a_corrupt_autooffload_profile(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    monkeypatch.setenv("AUTOOFFLOAD_PROFILE", str(bad))
    assert main(["show"]) == 2
    assert "truncated" in capsys.readouterr().err


def test_show_a_missing_file(tmp_path, capsys):
    assert main(["show", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_show_a_cpu_only_profile(tmp_path, capsys):
    numpy = BackendTiming(memory="host", kinds={"sort": Curve(nbytes=[1e3], seconds=[1e-6])})
    profile = Profile(fingerprint=current_fingerprint(probe_gpu=False), backends={"numpy": numpy})
    path = save_profile(profile, tmp_path / "cpu.json")
    assert main(["show", str(path)]) == 0
    assert "every call runs on NumPy" in capsys.readouterr().out


# ----------------------------------------------------------------------------- calibrate


def test_calibrate_saves_and_prints_the_table(fake_sweep, capsys):
    assert main(["calibrate", "--quick"]) == 0
    captured = capsys.readouterr()
    assert fake_sweep[0].name == "quick"
    assert load_profile(default_profile_path()).notes == ["fake quick"]
    assert "Crossovers" in captured.out
    assert "saved" in captured.err


def test_calibrate_makes_the_new_profile_active(fake_sweep):
    assert _profiles.active_profile().source == "built-in"
    main(["calibrate"])
    assert fake_sweep[0].name == "default"
    assert _profiles.active_profile().source == str(default_profile_path())


def test_calibrate_json_prints_the_profile(fake_sweep, tmp_path, capsys):
    out_path = tmp_path / "out" / "profile.json"
    assert main(["calibrate", "--quick", "--json", "--output", str(out_path)]) == 0
    printed = capsys.readouterr().out
    profile = Profile.model_validate_json(printed)
    assert profile.notes == ["fake quick"]
    assert load_profile(out_path).model_dump() == profile.model_dump()


def test_calibrate_writes_to_autooffload_profile_when_set(fake_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_PROFILE", str(tmp_path / "env.json"))
    assert main(["calibrate", "--quick"]) == 0
    assert (tmp_path / "env.json").exists()


def test_no_progress_bar_when_stderr_is_not_a_terminal(fake_sweep, capsys):
    main(["calibrate", "--quick"])
    err = capsys.readouterr().err
    assert "\r" not in err and "[#" not in err


def test_progress_bar_draws_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = cli.ProgressBar(stream)
    bar(SweepProgress(0.5, "sort", "1 MiB numpy"))
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r[############............]") and "sort 1 MiB numpy" in text
    assert text.endswith("\r")


def test_ctrl_c_keeps_the_old_profile_and_exits_130(monkeypatch, capsys):
    path = save_profile(gpu_profile(note="old"), default_profile_path())
    before = path.read_bytes()

    def interrupted(plan, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(_calibrate, "run_sweep", interrupted)
    assert main(["calibrate", "--quick"]) == 130
    assert path.read_bytes() == before
    assert "unchanged" in capsys.readouterr().err
    # The lock was released: a later calibration can run.
    monkeypatch.setattr(_calibrate, "run_sweep", lambda plan, progress=None: gpu_profile(note="new"))
    assert main(["calibrate", "--quick"]) == 0
    assert load_profile(path).notes == ["new"]


def test_python_calibrate_keeps_the_old_profile_when_interrupted(monkeypatch, tmp_path):
    path = save_profile(gpu_profile(note="old"), tmp_path / "p.json")
    monkeypatch.setattr(_calibrate, "run_sweep", lambda plan, progress=None: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _calibrate.calibrate(quick=True, output=path)
    assert load_profile(path).notes == ["old"]


def test_calibrate_refuses_to_run_twice_at_once(fake_sweep, capsys):
    from filelock import FileLock

    lock_path = Path(os.environ["AUTOOFFLOAD_CACHE_DIR"]) / "calibrate.lock"
    lock_path.parent.mkdir(parents=True)
    with FileLock(str(lock_path)):
        assert main(["calibrate", "--quick"]) == 1
    assert "another calibration is running" in capsys.readouterr().err
    assert fake_sweep == []


# One `autooffload calibrate --output <path>` process whose sweep lasts until the other process
# has finished, so that the two overlap whatever the machine's speed (or gives up after 20 s).
_CALIBRATE_PROCESS = """
import sys, time
from pathlib import Path
from autooffload import _calibrate
from autooffload._profiles import Profile, current_fingerprint
from autooffload.cli import main

me, other, output = sys.argv[1], sys.argv[2], sys.argv[3]

def sweep(plan, progress=None):
    deadline = time.monotonic() + 20
    while not Path(other).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return Profile(fingerprint=current_fingerprint(probe_gpu=False), notes=[me])

_calibrate.run_sweep = sweep
try:
    code = main(["calibrate", "--quick", "--output", output])
finally:
    Path(me).write_text("done")
sys.exit(code)
"""


def test_two_calibrations_at_once_one_runs_one_is_refused_and_the_file_is_never_torn(tmp_path):
    output = tmp_path / "same.json"
    env = {**os.environ, "PYTHONPATH": str(SRC), "AUTOOFFLOAD_CACHE_DIR": str(tmp_path / "cache")}
    done = [str(tmp_path / "a.done"), str(tmp_path / "b.done")]
    procs = [
        subprocess.Popen([sys.executable, "-c", _CALIBRATE_PROCESS, me, other, str(output)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for me, other in (done, done[::-1])
    ]
    torn = []
    while any(p.poll() is None for p in procs):  # a reader polling the file meanwhile
        if output.exists():
            try:
                load_profile(output)
            except _profiles.ProfileError as e:
                torn.append(str(e))
        time.sleep(0.005)
    results = sorted((p.returncode, p.communicate()[1]) for p in procs)
    assert [code for code, _ in results] == [0, 1], results
    assert "another calibration is running" in results[1][1]
    assert torn == []
    assert load_profile(output).notes[0] in done
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _a_file(tmp_path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker


@pytest.mark.parametrize(
    "output, expected",
    [
        (lambda tmp: _a_file(tmp) / "p.json", "must be a directory; {tmp}/a-file is a file"),
        (lambda tmp: _a_file(tmp) / "deeper" / "p.json", "must be a directory; {tmp}/a-file is a file"),
        (lambda tmp: tmp, "{tmp} is a directory, not a file"),
    ],
    ids=["folder-is-a-file", "ancestor-is-a-file", "output-is-a-folder"],
)
def test_calibrate_checks_where_it_will_save_before_sweeping(fake_sweep, tmp_path, capsys, output, expected):
    target = output(tmp_path)
    assert main(["calibrate", "--quick", "--output", str(target)]) == 2
    assert fake_sweep == []
    (line,) = capsys.readouterr().err.splitlines()
    assert expected.format(tmp=tmp_path) in line


def test_calibrate_checks_that_it_can_write_in_the_folder_before_sweeping(fake_sweep, tmp_path, monkeypatch, capsys):
    import tempfile

    def read_only_filesystem(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only_filesystem)
    assert main(["calibrate", "--quick", "--output", str(tmp_path / "p.json")]) == 2
    assert fake_sweep == []
    assert "Read-only file system" in capsys.readouterr().err


def test_calibrate_creates_a_missing_output_folder(fake_sweep, tmp_path):
    target = tmp_path / "new" / "folders" / "p.json"
    assert main(["calibrate", "--quick", "--output", str(target)]) == 0
    assert load_profile(target).notes == ["fake quick"]


def test_calibrate_with_a_cache_dir_that_is_a_file_says_what_is_expected(fake_sweep, tmp_path, monkeypatch, capsys):
    blocker = _a_file(tmp_path)
    monkeypatch.setenv("AUTOOFFLOAD_CACHE_DIR", str(blocker))
    for output in ([], ["--output", str(tmp_path / "p.json")]):  # the default profile is in the cache folder
        assert main(["calibrate", "--quick", *output]) == 2
        assert fake_sweep == []
        assert f"AUTOOFFLOAD_CACHE_DIR must be a directory; {blocker} is a file" in capsys.readouterr().err


def test_python_calibrate_checks_where_it_will_save_before_sweeping(fake_sweep, tmp_path):
    with pytest.raises(CalibrationError, match="is a file"):
        _calibrate.calibrate(quick=True, output=_a_file(tmp_path) / "p.json")
    assert fake_sweep == []


@pytest.mark.parametrize("variable, value", [("AUTOOFFLOAD_DISABLE_GPU", "maybe"), ("AUTOOFFLOAD_BACKEND", "gpu")])
@pytest.mark.parametrize("command", [["calibrate", "--quick"], ["show"], ["plot", "-o", "p.png"]])
def test_every_command_rejects_a_bad_environment_variable_first(fake_sweep, monkeypatch, capsys, variable, value, command):
    monkeypatch.setenv(variable, value)
    assert main(command) == 2
    assert fake_sweep == []
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert variable in line and repr(value) in line


def test_python_calibrate_returns_the_saved_profile(fake_sweep, tmp_path):
    profile = _calibrate.calibrate(quick=True, output=tmp_path / "x.json")
    assert profile.source == str(tmp_path / "x.json")


# ----------------------------------------------------------------------------- plot


def test_plot_writes_an_image(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = save_profile(gpu_profile(), tmp_path / "p.json")
    image = tmp_path / "p.png"
    assert main(["plot", "-o", str(image), str(path)]) == 0
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert main(["plot", "-o", str(tmp_path / "p.png")]) == 1
    err = capsys.readouterr().err
    assert "matplotlib" in err and "autooffload[plot]" in err and "Traceback" not in err


def test_plot_of_a_corrupt_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("][")
    assert main(["plot", "-o", str(tmp_path / "p.png"), str(bad)]) == 2


# ----------------------------------------------------------------------------- usage


def test_usage_errors_and_help(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
    assert "calibrate" in capsys.readouterr().out


def test_python_dash_m_autooffload(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "AUTOOFFLOAD_CACHE_DIR": str(tmp_path / "cache"),
        "AUTOOFFLOAD_PROFILE": "",
    }
    path = save_profile(gpu_profile(), tmp_path / "p.json")
    done = subprocess.run([sys.executable, "-m", "autooffload", "show", str(path), "--json"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["source"] == str(path)

    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1,')
    done = subprocess.run([sys.executable, "-m", "autooffload", "show", str(bad)], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert "truncated" in done.stderr and "Traceback" not in done.stderr
