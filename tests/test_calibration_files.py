"""Every profile file kept in the repository still loads with the current schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autooffload._profiles import SCHEMA_VERSION, SHIPPED_PROFILES_DIR, load_profile, shipped_profile_paths
from autooffload.cli import crossover_table, describe, format_show

REPO = Path(__file__).resolve().parents[1]
PROFILE_FILES = sorted({*REPO.glob("calibration/**/*.json"), *SHIPPED_PROFILES_DIR.glob("*.json")})


def test_there_are_profiles_to_check():
    assert PROFILE_FILES, "no profile files found in calibration/ or src/autooffload/_profiles/shipped/"
    assert shipped_profile_paths(), "the package ships no profiles"


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_profile_file_loads_and_is_described(path):
    profile = load_profile(path)
    assert profile.source == str(path)
    fp = profile.fingerprint
    assert fp.cpu_model not in ("", "unknown") and fp.cpu_cores > 0
    assert profile.backend("numpy").kinds, "a real profile has measured kinds"
    assert profile.schema_version == SCHEMA_VERSION and json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert not profile.device_backends() or fp.gpu_name, "a GPU profile names its GPU (shipped profiles are matched by it)"
    table = crossover_table(profile)
    assert all(set(v) == {"host", "device"} for v in table.values())
    assert "Measured:" in format_show(describe(profile))


@pytest.mark.parametrize("path", sorted(SHIPPED_PROFILES_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_profile_is_documented(path):
    readme = (REPO / "calibration" / "README.md").read_text()
    assert path.name in readme
