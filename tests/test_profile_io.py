"""Profile files: fingerprint, paths, atomic locked saves, strict loading, the active-profile chain."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from autooffload._profiles import fingerprint as fingerprint_module, resolve, store
from autooffload._cores import usable_cores
from autooffload._profiles import builtin_profile
from autooffload._profiles import (
    SCHEMA_VERSION,
    BackendTiming,
    Curve,
    Fingerprint,
    Profile,
    active_profile,
    current_fingerprint,
    default_profile_path,
    load_profile,
    machine_id,
    machine_mismatch,
    profile_path,
    reset_active_profile,
    same_machine,
    save_profile,
    version_drift,
)
from autooffload.errors import CalibrationError, ProfileError, ProfileWarning

H100 = "NVIDIA H100 80GB HBM3"
UUID = "GPU-5c5c1a2b-0000-1111-2222-333344445555"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private cache folder, no profile override, no shipped profiles, a fresh active profile."""
    monkeypatch.setenv("AUTOOFFLOAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AUTOOFFLOAD_PROFILE", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(store, "SHIPPED_PROFILES_DIR", tmp_path / "shipped")
    monkeypatch.setattr(fingerprint_module, "_PROC_GPUS", tmp_path / "no-proc-gpus")
    reset_active_profile()
    yield
    reset_active_profile()


def fake_proc_gpus(tmp_path: Path, monkeypatch, gpus: list[tuple[str, str]]) -> None:
    """What the NVIDIA driver shows under /proc/driver/nvidia/gpus, one folder per GPU."""
    root = tmp_path / "proc-gpus"
    root.mkdir()
    for i, (name, uuid) in enumerate(gpus):
        d = root / f"0000:{i:02x}:00.0"
        d.mkdir(parents=True)
        (d / "information").write_text(
            f"Model: \t\t {name}\nIRQ:   \t\t 42\nGPU UUID: \t {uuid}\nVideo BIOS: \t ??.??.??.??.??\n"
            f"Bus Type: \t PCIe\nDevice Minor: \t {i}\n"
        )
    monkeypatch.setattr(fingerprint_module, "_PROC_GPUS", root)


def this_machine(**changes) -> Fingerprint:
    return current_fingerprint(probe_gpu=False).model_copy(update=changes)


def small_profile(fingerprint: Fingerprint | None = None, note: str = "", has_gpu: bool = False, **device) -> Profile:
    """NumPy curves, and with ``has_gpu`` a "cupy" device backend (``device``: its other fields)."""
    curve = Curve(nbytes=[1e3, 1e6], seconds=[1e-6, 1e-3])
    backends = {"numpy": BackendTiming(memory="host", kinds={"elementwise": curve})}
    if has_gpu:
        backends["cupy"] = BackendTiming(memory="device", kinds={"elementwise": curve}, h2d=curve, d2h=curve, **device)
    return Profile(
        fingerprint=fingerprint if fingerprint is not None else this_machine(),
        backends=backends,
        notes=[note] if note else [],
    )


def profile_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ProfileWarning)]


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint_describes_this_machine():
    fp = current_fingerprint()
    assert fp.cpu_model and fp.cpu_model != ""
    assert fp.cpu_cores == usable_cores()
    assert fp.blas and fp.blas_threads  # threadpoolctl finds NumPy's BLAS
    assert fp.numpy_version == np.__version__
    assert fp.python_version.count(".") == 2


def test_fingerprint_and_active_profile_import_neither_cupy_nor_numba():
    code = (
        "import sys; from autooffload._profiles import current_fingerprint, active_profile;"
        "current_fingerprint(probe_gpu=False); active_profile();"
        "print(sorted(m for m in ('cupy', 'numba') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(store.__file__).parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_same_machine_is_cpu_model_cores_gpu_name_and_uuid():
    a = Fingerprint(cpu_model="EPYC 9654", cpu_cores=16, gpu_name=H100, gpu_uuid=UUID, numpy_version="2.5.2")
    assert same_machine(a, a.model_copy(update={"numpy_version": "2.6.0", "hostname": "elsewhere"}))
    assert same_machine(a, a.model_copy(update={"gpu_uuid": None}))  # unknown UUID is not held against it
    assert same_machine(a, a.model_copy(update={"gpu_uuid": UUID.lower().replace("gpu-", "")}))
    for change, word in [
        ({"cpu_model": "Xeon 8480"}, "CPU"),
        ({"cpu_cores": 8}, "cores"),
        ({"gpu_name": "NVIDIA A100-SXM4-80GB"}, "GPU"),
        ({"gpu_name": None, "gpu_uuid": None}, "none"),
        ({"gpu_uuid": "GPU-00000000-0000-0000-0000-000000000000"}, "UUID"),
    ]:
        other = a.model_copy(update=change)
        assert not same_machine(a, other)
        assert word in machine_mismatch(a, other)


def test_version_drift_lists_changed_software_only():
    a = Fingerprint(numpy_version="2.4.0", cupy_version="14.0", python_version="3.12.1")
    b = a.model_copy(update={"numpy_version": "2.5.0", "cupy_version": None})
    assert version_drift(a, b) == ["numpy 2.4.0 -> 2.5.0"]
    assert version_drift(a, a) == []


def test_proc_gpus_follow_cuda_visible_devices(tmp_path, monkeypatch):
    fake_proc_gpus(tmp_path, monkeypatch, [(H100, UUID), ("NVIDIA A100", "GPU-aaaaaaaa-1111-2222-3333-444444444444")])
    assert [g[0] for g in fingerprint_module._visible_proc_gpus()] == [H100, "NVIDIA A100"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert fingerprint_module._visible_proc_gpus() == [("NVIDIA A100", "GPU-aaaaaaaa-1111-2222-3333-444444444444")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5c5c1a2b")
    assert fingerprint_module._visible_proc_gpus() == [(H100, UUID)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert fingerprint_module._visible_proc_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1,0")
    assert fingerprint_module._visible_proc_gpus() == []


def test_cheap_fingerprint_takes_the_gpu_identity_from_proc(tmp_path, monkeypatch):
    fake_proc_gpus(tmp_path, monkeypatch, [(H100, UUID)])
    fp = current_fingerprint(probe_gpu=False)
    assert (fp.gpu_name, fp.gpu_uuid) == (H100, UUID)


# ----------------------------------------------------------------------------- paths


def test_default_path_is_in_the_cache_dir_and_named_by_machine(tmp_path):
    path = default_profile_path()
    assert path.parent == tmp_path / "cache"
    assert path.name == f"profile-{machine_id()}.json"
    assert len(machine_id()) == 12


def test_machine_id_changes_with_the_gpu(tmp_path, monkeypatch):
    before = machine_id()
    fake_proc_gpus(tmp_path, monkeypatch, [(H100, UUID)])
    assert machine_id() != before


def test_cache_dir_defaults_to_platformdirs(monkeypatch):
    monkeypatch.delenv("AUTOOFFLOAD_CACHE_DIR")
    import platformdirs

    assert default_profile_path().parent == Path(platformdirs.user_cache_dir("autooffload"))


def test_autooffload_profile_overrides_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_PROFILE", str(tmp_path / "mine.json"))
    assert profile_path() == tmp_path / "mine.json"


# ----------------------------------------------------------------------------- save / load


def test_save_then_load_round_trips(tmp_path):
    profile = small_profile(note="round trip", has_gpu=True)
    path = save_profile(profile, tmp_path / "deep" / "folder" / "p.json")
    loaded = load_profile(path)
    assert loaded.model_dump() == profile.model_dump()
    assert loaded.source == str(path)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.json", "p.json.lock"]  # no temp file left


def test_save_defaults_to_the_profile_path():
    path = save_profile(small_profile())
    assert path == default_profile_path() and path.exists()


def test_save_reports_an_unwritable_place(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CalibrationError, match="cannot save profile"):
        save_profile(small_profile(), blocker / "p.json")


def good_json() -> str:
    return store.profile_json(small_profile())


BAD_FILES = {
    "corrupt": (lambda: '{"schema_version": 1, "kinds": [oops]}', "not valid JSON"),
    "truncated": (lambda: good_json()[: len(good_json()) // 2], "truncated"),
    "empty": (lambda: "", "empty"),
    "future-schema": (lambda: good_json().replace('"schema_version": 2', '"schema_version": 99'), "newer"),
    "old-schema": (lambda: good_json().replace('"schema_version": 2', '"schema_version": 0'), "old schema_version"),
    "no-schema": (lambda: json.dumps({"kinds": {}}), "schema_version"),
    "not-an-object": (lambda: "[1, 2, 3]", "not a profile object"),
    "wrong-fields": (lambda: good_json().replace('"backends"', '"backend"'), "does not match"),
    "schema-1-fields-in-schema-2": (lambda: good_json().replace('"quick"', '"has_gpu"'), "does not match"),
    "no-reference-backend": (lambda: good_json().replace('"numpy"', '"numba"'), "host backend 'numpy'"),
    "copies-on-the-host": (lambda: good_json().replace('"transfer_engine": null', '"transfer_engine": "x"'), "host backend copies nothing"),
    "bad-curve": (lambda: good_json().replace("0.001", "-1.0"), "does not match"),
    "binary": (lambda: b"\xff\xfe\x00garbage", "not UTF-8"),
    # Past the JSON parser's recursion limit / Python's limit on digits of an integer.
    "deep-nesting": (lambda: '{"schema_version": 1, "notes": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    "huge-integer": (lambda: '{"schema_version": ' + "9" * 5000 + "}", "5000 digits"),
    "huge-integer-inside": (lambda: good_json().replace('"notes": []', '"notes": [' + "1" * 4400 + "]"), "4400 digits"),
}


def write_bad(path: Path, case: str) -> str:
    make, expected = BAD_FILES[case]
    content = make()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return expected


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_load_names_the_file_the_problem_and_the_fix(tmp_path, case):
    path = tmp_path / f"{case}.json"
    expected = write_bad(path, case)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    message = str(err.value)
    assert str(path) in message and expected in message and "autooffload calibrate" in message


def gpu_profile_json() -> dict:
    fingerprint = this_machine(gpu_memory_bytes=2**34, blas_threads=2)
    return json.loads(store.profile_json(small_profile(fingerprint, has_gpu=True, launch_latency_s=2e-5, warmup_s=1.0)))


# (where in the file, a value no machine can have): every number the cost model or `show` reads.
NAN, INF = float("nan"), float("inf")
IMPOSSIBLE_VALUES = [
    *((("backends", "cupy", "launch_latency_s"), v) for v in (NAN, INF, -INF, -1e-5)),
    *((("backends", "cupy", "warmup_s"), v) for v in (NAN, INF, -5.0)),
    (("fingerprint", "cpu_cores"), -1),
    *((("fingerprint", "gpu_memory_bytes"), v) for v in (0, -1)),
    *((("fingerprint", "blas_threads"), v) for v in (0, -4)),
    *((("backends", "cupy", "h2d", "seconds", 0), v) for v in (NAN, INF, 0.0, -1e-3)),
    *((("backends", "numpy", "kinds", "elementwise", "nbytes", 1), v) for v in (NAN, INF, 1e2, -1.0)),  # 1e2: sizes decrease
    *((("backends", "cupy", "kinds", "elementwise", "seconds", 1), v) for v in (NAN, -INF)),
]


def _with_value(where: tuple, value) -> str:
    data = gpu_profile_json()
    *parents, last = where
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    return json.dumps(data)  # NaN and Infinity as Python's json writes and reads them


@pytest.mark.parametrize("where, value", IMPOSSIBLE_VALUES, ids=lambda x: ".".join(map(str, x)) if isinstance(x, tuple) else repr(x))
def test_an_impossible_number_is_rejected_naming_the_field_and_the_value(tmp_path, where, value):
    path = tmp_path / "p.json"
    path.write_text(_with_value(where, value))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    message = str(err.value)
    # A curve is checked as a whole: its errors name the curve, and list its points.
    field = ".".join(k for k in where if isinstance(k, str) and k not in ("seconds", "nbytes"))
    assert field in message and repr(value) in message, message


@pytest.mark.parametrize("where, value", [(("backends", "cupy", "warmup_s"), -5.0), (("backends", "cupy", "launch_latency_s"), NAN)])
def test_an_impossible_number_falls_back_to_the_next_profile(tmp_path, monkeypatch, fake_gpu, where, value):
    bad = tmp_path / "bad.json"
    bad.write_text(_with_value(where, value))
    monkeypatch.setenv("AUTOOFFLOAD_PROFILE", str(bad))
    from autooffload import explain, offload, reload_environment

    reload_environment()
    f = offload(kind="fft")(lambda x: np.fft.fft(x))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        d = explain(f, np.ones(10))
    (message,) = profile_warnings(record)
    assert str(bad) in message and ".".join(where) in message and repr(value) in message
    assert d.profile == "built-in"
    # The built-in profile has no Numba curves: Numba's prediction is None.
    assert d.backend == "numpy" and d.predicted_s["numba"] is None
    assert all(d.predicted_s[name] > 0 for name in ("numpy", "cupy"))


def test_load_missing_and_unreadable_files(tmp_path, monkeypatch):
    with pytest.raises(ProfileError, match="no such file"):
        load_profile(tmp_path / "absent.json")
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ProfileError, match="is a directory"):
        load_profile(tmp_path / "folder.json")
    path = tmp_path / "locked.json"
    path.write_text(good_json())

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ProfileError, match="cannot be read .Permission denied"):
        load_profile(path)


# ----------------------------------------------------------------------------- concurrency


def _writer_process(path: str, index: int, rounds: int) -> None:
    profile = small_profile(note=f"writer {index}")
    for _ in range(rounds):
        save_profile(profile, path)


def _assert_readers_see_whole_files(path: Path, stop: threading.Event, seen: set, errors: list) -> None:
    while not stop.is_set():
        try:
            if path.exists():
                seen.add(load_profile(path).notes[0])
        except ProfileError as e:  # a torn or half-written file
            errors.append(str(e))


def test_concurrent_thread_writers_never_tear_the_file(tmp_path):
    path = tmp_path / "shared.json"
    stop, seen, errors = threading.Event(), set(), []
    reader = threading.Thread(target=_assert_readers_see_whole_files, args=(path, stop, seen, errors))
    reader.start()
    writers = [threading.Thread(target=_writer_process, args=(str(path), i, 15)) for i in range(6)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert errors == []
    assert load_profile(path).notes[0].startswith("writer ")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_process_writers_never_tear_the_file(tmp_path):
    path = tmp_path / "shared.json"
    ctx = multiprocessing.get_context("spawn" if sys.platform == "win32" else "fork")
    stop, seen, errors = threading.Event(), set(), []
    reader = threading.Thread(target=_assert_readers_see_whole_files, args=(path, stop, seen, errors))
    reader.start()
    procs = [ctx.Process(target=_writer_process, args=(str(path), i, 10)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    stop.set()
    reader.join()
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert errors == []
    assert load_profile(path).notes[0] in {f"writer {i}" for i in range(4)}


def test_an_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = save_profile(small_profile(note="old"), tmp_path / "p.json")
    before = path.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_profile(small_profile(note="new"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ----------------------------------------------------------------------------- active profile


def test_builtin_is_used_when_nothing_is_calibrated(caplog):
    with warnings.catch_warnings(record=True) as record, caplog.at_level(logging.INFO, logger="autooffload"):
        warnings.simplefilter("always")
        profile = active_profile()
    assert profile.source == "built-in"
    assert profile_warnings(record) == []
    infos = [r.getMessage() for r in caplog.records if r.name == "autooffload" and r.levelno == logging.INFO]
    assert len(infos) == 1 and "autooffload calibrate" in infos[0]


def test_this_machines_calibrated_profile_is_used():
    path = save_profile(small_profile(note="mine"), default_profile_path())
    profile = active_profile()
    assert profile.source == str(path) and profile.notes == ["mine"]


def test_active_profile_is_cached_until_reset():
    path = save_profile(small_profile(note="first"), default_profile_path())
    first = active_profile()
    path.unlink()
    assert active_profile() is first  # no file access once cached
    reset_active_profile()
    assert active_profile().source == "built-in"


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_calibrated_file_warns_once_and_falls_back(case):
    path = default_profile_path()
    path.parent.mkdir(parents=True)
    write_bad(path, case)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        profile = active_profile()
        active_profile()
    messages = profile_warnings(record)
    assert len(messages) == 1
    assert str(path) in messages[0] and "autooffload calibrate" in messages[0]
    assert profile.source == "built-in"


def test_another_machines_profile_warns_once_and_falls_back():
    path = save_profile(small_profile(this_machine(cpu_model="Some Other CPU")), default_profile_path())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        profile = active_profile()
    (message,) = profile_warnings(record)
    assert str(path) in message and "another machine" in message and "autooffload calibrate" in message
    assert profile.source == "built-in"


def test_an_unreadable_calibrated_file_warns_once_and_falls_back():
    default_profile_path().mkdir(parents=True)  # a folder where the file should be
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert active_profile().source == "built-in"
    assert len(profile_warnings(record)) == 1


def test_a_bad_autooffload_profile_warns_and_falls_back_to_the_calibrated_one(tmp_path, monkeypatch):
    mine = save_profile(small_profile(note="mine"), default_profile_path())
    bad = tmp_path / "bad.json"
    write_bad(bad, "truncated")
    monkeypatch.setenv("AUTOOFFLOAD_PROFILE", str(bad))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        profile = active_profile()
    (message,) = profile_warnings(record)
    assert str(bad) in message
    assert profile.source == str(mine)


def test_a_missing_autooffload_profile_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOOFFLOAD_PROFILE", str(tmp_path / "nowhere.json"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert active_profile().source == "built-in"
    (message,) = profile_warnings(record)
    assert "nowhere.json" in message and "no such file" in message


def test_autooffload_profile_is_an_explicit_choice_even_from_another_machine(tmp_path, monkeypatch):
    path = save_profile(small_profile(Fingerprint(cpu_model="Elsewhere", cpu_cores=999)), tmp_path / "x.json")
    monkeypatch.setenv("AUTOOFFLOAD_PROFILE", str(path))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert active_profile().source == str(path)
    assert profile_warnings(record) == []


def test_a_shipped_profile_for_this_gpu_model_comes_before_the_builtin(tmp_path, monkeypatch, caplog):
    fake_proc_gpus(tmp_path, monkeypatch, [(H100, UUID)])
    shipped = tmp_path / "shipped"
    other_box = Fingerprint(cpu_model="Other CPU", cpu_cores=64, gpu_name=H100, gpu_uuid="GPU-11111111-2222-3333-4444-555555555555")
    save_profile(small_profile(other_box, note="h100", has_gpu=True), shipped / "h100.json")
    a100 = other_box.model_copy(update={"gpu_name": "NVIDIA A100-SXM4-80GB"})
    save_profile(small_profile(a100, note="a100", has_gpu=True), shipped / "a100.json")
    with caplog.at_level(logging.INFO, logger="autooffload"):
        profile = active_profile()
    assert profile.source == str(shipped / "h100.json")
    assert any("shipped profile" in r.getMessage() for r in caplog.records)


def test_no_shipped_profile_without_a_gpu(tmp_path):
    fp = Fingerprint(cpu_model="x", cpu_cores=1, gpu_name=H100)
    save_profile(small_profile(fp, has_gpu=True), tmp_path / "shipped" / "h100.json")
    assert active_profile().source == "built-in"


def test_a_gpu_profile_on_a_machine_whose_gpu_is_gone_is_not_used(tmp_path, monkeypatch):
    fake_proc_gpus(tmp_path, monkeypatch, [])  # the driver is there, the GPU is not
    save_profile(small_profile(this_machine(gpu_name=H100, gpu_uuid=UUID), has_gpu=True), default_profile_path())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert active_profile().source == "built-in"
    assert "another machine" in profile_warnings(record)[0]


def test_active_profile_never_raises(monkeypatch):
    def broken():
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "default_profile_path", broken)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert active_profile().source == "built-in"
    assert "disk on fire" in profile_warnings(record)[0]


def test_active_profile_is_the_same_object_across_threads():
    save_profile(small_profile(note="mine"), default_profile_path())
    results = []
    threads = [threading.Thread(target=lambda: results.append(active_profile())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(p) for p in results}) == 1


def test_a_decorated_function_still_returns_the_numpy_result_with_a_bad_profile(tmp_path, monkeypatch):
    autooffload = pytest.importorskip("autooffload")
    if not hasattr(autooffload, "offload"):
        pytest.skip("the decorator is not there yet")
    bad = tmp_path / "bad.json"
    write_bad(bad, "corrupt")
    monkeypatch.setenv("AUTOOFFLOAD_PROFILE", str(bad))
    if hasattr(autooffload, "reload_environment"):
        autooffload.reload_environment()

    @autooffload.offload
    def scaled(a, b):
        return a * 5 + b

    a, b = np.arange(1000.0), np.ones(1000)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = scaled(a, b)
    assert isinstance(result, np.ndarray)
    np.testing.assert_array_equal(result, a * 5 + b)
    assert [m for m in profile_warnings(record) if str(bad) in m]


def test_profile_warnings_point_at_the_users_line(tmp_path, monkeypatch):
    from autooffload import explain, offload, reload_environment

    bad = tmp_path / "bad.json"
    write_bad(bad, "corrupt")
    monkeypatch.setenv("AUTOOFFLOAD_PROFILE", str(bad))
    reload_environment()
    f = offload(lambda x: x * 2)
    for call in (lambda: f(np.ones(10)), lambda: f([np.ones(10)]), lambda: explain(f, np.ones(10)), active_profile):
        reset_active_profile()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            call()
        (warning,) = [w for w in record if issubclass(w.category, ProfileWarning)]
        assert warning.filename == __file__, warning.filename


def test_builtin_profile_is_marked_builtin():
    assert builtin_profile().source == "built-in"
    assert SCHEMA_VERSION == builtin_profile().schema_version


def test_software_drift_is_logged_not_refused(monkeypatch, caplog):
    old = small_profile(this_machine(numpy_version="1.0.0"), has_gpu=True, transfer_engine="engine-v0")
    path = save_profile(old, default_profile_path())
    monkeypatch.setattr(resolve, "_current_transfer_engine", lambda: "engine-v9")
    with warnings.catch_warnings(record=True) as record, caplog.at_level(logging.INFO, logger="autooffload"):
        warnings.simplefilter("always")
        assert active_profile().source == str(path)
    assert profile_warnings(record) == []
    (line,) = [r.getMessage() for r in caplog.records if "other software" in r.getMessage()]
    assert f"numpy 1.0.0 -> {np.__version__}" in line and "copy engine engine-v0 -> engine-v9" in line
