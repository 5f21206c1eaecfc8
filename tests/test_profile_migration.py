"""Schema 1 profiles still load: migrated on load to schema 2 by a pure function, numbers unchanged."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from autooffload._costmodel import KINDS, Request, predict
from autooffload._profiles import (
    SCHEMA_VERSION,
    SHIPPED_PROFILES_DIR,
    Profile,
    load_profile,
    migrate_v1_to_v2,
    save_profile,
)
from autooffload.errors import ProfileError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
V1_H100 = FIXTURES / "h100-80gb-hbm3-schema1.json"

CPU = {"nbytes": [1000.0, 1e6], "seconds": [1e-6, 1e-3], "noisy": []}
GPU = {"nbytes": [1000.0, 1e6], "seconds": [2e-5, 3e-5], "noisy": [False, True]}
COPY = {"nbytes": [4096.0, 1e8], "seconds": [1e-5, 1e-2], "noisy": []}
FINGERPRINT = {"cpu_model": "Test CPU", "cpu_cores": 4, "gpu_name": "Test GPU"}


def v1_file(**changes) -> dict:
    """A schema-1 profile as its JSON parses, GPU fields filled in."""
    data = {
        "schema_version": 1,
        "created": "2026-11-24T19:06:00Z",
        "autooffload_version": "0.1.0",
        "fingerprint": FINGERPRINT,
        "has_gpu": True,
        "quick": True,
        "transfer_engine": "pinned-pipeline-v4",
        "h2d": COPY,
        "d2h": COPY,
        "launch_latency_s": 3.7e-5,
        "cold_start_s": 0.959,
        "kinds": {"elementwise": {"cpu": CPU, "gpu": GPU}, "sort": {"cpu": CPU, "gpu": None}},
        "notes": ["quick sweep"],
    }
    data.update(changes)
    return data


def test_v1_to_v2_exactly():
    assert migrate_v1_to_v2(v1_file()) == {
        "schema_version": 2,
        "created": "2026-11-24T19:06:00Z",
        "autooffload_version": "0.1.0",
        "fingerprint": FINGERPRINT,
        "quick": True,
        "notes": ["quick sweep"],
        "backends": {
            "numpy": {"memory": "host", "kinds": {"elementwise": CPU, "sort": CPU}},
            "cupy": {
                "memory": "device",
                "kinds": {"elementwise": GPU},  # sort had no GPU curve: CuPy cannot be predicted for it
                "warmup_s": 0.959,
                "launch_latency_s": 3.7e-5,
                "transfer_engine": "pinned-pipeline-v4",
                "h2d": COPY,
                "d2h": COPY,
            },
        },
    }


def test_the_migration_is_pure():
    data = v1_file()
    before = copy.deepcopy(data)
    migrate_v1_to_v2(data)
    assert data == before


def test_a_cpu_only_v1_file_has_only_the_numpy_backend():
    data = v1_file(has_gpu=False, transfer_engine=None, h2d=None, d2h=None, launch_latency_s=None, cold_start_s=None,
                   kinds={"fft": {"cpu": CPU, "gpu": None}})
    assert migrate_v1_to_v2(data)["backends"] == {"numpy": {"memory": "host", "kinds": {"fft": CPU}}}


def test_a_v1_file_with_only_the_required_fields_loads(tmp_path):
    path = tmp_path / "minimal.json"
    path.write_text(json.dumps({"schema_version": 1, "kinds": {"elementwise": {"cpu": CPU}}}))
    profile = load_profile(path)
    assert profile.schema_version == SCHEMA_VERSION
    assert list(profile.backends) == ["numpy"] and profile.backend("numpy").kinds["elementwise"].seconds == CPU["seconds"]
    assert not profile.has_device_timings() and profile.notes == [] and not profile.quick
    assert predict(profile, Request("elementwise", host_bytes=1000, largest_bytes=1000)).seconds == {"numpy": 1e-6, "cupy": None, "numba": None}
    path.write_text('{"schema_version": 1}')
    assert load_profile(path).backends == {"numpy": load_profile(path).backend("numpy")}


def test_has_gpu_false_keeps_what_schema_1_used_and_no_more(tmp_path):
    # Schema 1 never predicted the GPU of a has_gpu=false profile, but priced moving device data
    # to NumPy with its copy curves: the migration keeps exactly that.
    data = v1_file(has_gpu=False)
    migrated = migrate_v1_to_v2(data)
    assert migrated["backends"]["cupy"]["kinds"] == {}
    profile = Profile.model_validate(migrated)
    pred = predict(profile, Request("elementwise", device_bytes=10**6, largest_bytes=10**6))
    assert pred.seconds["cupy"] is None and pred.parts["cupy"] == {}
    assert set(pred.parts["numpy"]) == {"compute", "copy_in", "copy_out", "sync"}


@pytest.mark.parametrize("field, value, where", [
    ("launch_latency_s", float("nan"), "backends.cupy.launch_latency_s"),
    ("cold_start_s", -5.0, "backends.cupy.warmup_s"),
    ("has_gpu", "yes", "has_gpu"),
])
def test_a_v1_file_with_an_impossible_value_is_still_refused(tmp_path, field, value, where):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(v1_file(**{field: value})))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    message = str(err.value)
    assert where in message and repr(value) in message and "read from schema 1" in message, message


def test_a_v1_kind_with_unknown_keys_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(v1_file(kinds={"fft": {"cpu": CPU, "tpu": CPU}})))
    with pytest.raises(ProfileError, match=r"backends\.numpy\.kinds\.fft\.cpu: Extra inputs"):  # passed on whole, refused
        load_profile(path)


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.json"
    path.write_text(json.dumps({**migrate_v1_to_v2(v1_file()), "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ProfileError, match="newer than this autooffload reads"):
        load_profile(path)


def test_the_schema_1_fixture_is_the_shipped_h100_profile():
    # The shipped file was re-saved in schema 2 by this migration: the same profile, number for number.
    assert json.loads(V1_H100.read_text())["schema_version"] == 1
    old, new = load_profile(V1_H100), load_profile(SHIPPED_PROFILES_DIR / "h100-80gb-hbm3.json")
    assert json.loads((SHIPPED_PROFILES_DIR / "h100-80gb-hbm3.json").read_text())["schema_version"] == 2
    assert old.model_dump() == new.model_dump()


def test_the_schema_1_fixture_predicts_what_it_predicted():
    # Numbers the schema-1 cost model gave for this file (main before issue 11), to the last bit.
    profile = load_profile(V1_H100)
    warm = predict(profile, Request("fft", host_bytes=8 * 10**6, largest_bytes=8 * 10**6, gpu_ready=True)).seconds
    cold = predict(profile, Request("elementwise", device_bytes=1600, largest_bytes=800)).seconds
    # A schema-1 file has no Numba curves: the registered tier is predicted as None.
    assert set(warm) == set(cold) == {"numpy", "cupy", "numba"}
    assert warm.pop("numba") is None and cold.pop("numba") is None
    for seconds in (*warm.values(), *cold.values()):
        assert seconds is not None and math.isfinite(seconds) and seconds > 0
    assert warm == EXPECTED_WARM and cold == EXPECTED_COLD


def test_round_trip_v1_file_saved_and_read_again(tmp_path):
    profile = load_profile(V1_H100)
    again = load_profile(save_profile(profile, tmp_path / "v2.json"))
    assert json.loads((tmp_path / "v2.json").read_text())["schema_version"] == SCHEMA_VERSION
    assert again.model_dump() == profile.model_dump()
    for kind in KINDS:
        req = Request(kind, host_bytes=10**6, largest_bytes=10**6)
        assert predict(again, req) == predict(profile, req)


# What schema 1's cost model (main before issue 11, `_decide.predict`) gave for the fixture above.
EXPECTED_WARM = {"numpy": 0.041625503261784165, "cupy": 0.0013956352677812194}
EXPECTED_COLD = {"numpy": 6.419420860085212e-05, "cupy": 0.9586561269616612}
