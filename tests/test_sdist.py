"""The sdist can test itself: build it, unpack it, run tests from the unpacked tree.

Built offline (``--no-isolation``: the installed setuptools, no download), so this needs
``build`` and setuptools >= 77 (the test extra has both) and is skipped without them. A few
test files only, chosen to need what an sdist forgets: ``conftest.py`` and ``fake_device.py``
(the GPU test double), ``calibration/``, ``tests/fixtures/``, ``benchmarks/``. About 15 s on a
2-core machine, so it runs in CI unmarked.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the unpacked tree's tests read besides the package (see MANIFEST.in).
MUST_CONTAIN = [
    "LICENSE",
    "README.md",
    "ARCHITECTURE.md",
    "pyproject.toml",
    "setup.py",
    "src/autooffload/py.typed",
    "src/autooffload/_native.c",
    "src/autooffload/_parcopy.c",
    "src/autooffload/_profiles/shipped/h100-80gb-hbm3.json",
    "tests/conftest.py",
    "tests/fake_device.py",
    "tests/fixtures/h100-80gb-hbm3-schema1.json",
    "calibration/README.md",
    "examples/quickstart.py",
    "benchmarks/_bench.py",
]
RUN_FROM_SDIST = ["test_calibration_files.py", "test_device_path.py", "test_profile_migration.py", "test_cores.py"]


def _setuptools_can_build() -> bool:
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return major >= 77


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="needs `build` (pip install -e '.[test]')")
    if not _setuptools_can_build():
        pytest.skip("needs setuptools >= 77 to build offline (pip install -e '.[test]')")
    if not (REPO / "pyproject.toml").exists():
        pytest.skip("not run from a source tree")
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(REPO)],
        check=True, capture_output=True, text=True,
    )
    (archive,) = out.glob("autooffload-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    (root,) = (p for p in out.iterdir() if p.is_dir())
    return root


def test_the_sdist_contains_what_its_tests_need(unpacked):
    missing = [name for name in MUST_CONTAIN if not (unpacked / name).is_file()]
    assert not missing, f"missing from the sdist: {missing}"
    assert not list(unpacked.rglob("*.so")), "built extensions leaked into the sdist"
    assert 'license = "MIT"' in (unpacked / "pyproject.toml").read_text()
    metadata = (unpacked / "PKG-INFO").read_text()
    assert "License-Expression: MIT" in metadata and "../shared" not in metadata


def test_tests_run_from_the_unpacked_sdist(unpacked):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOOFFLOAD_")}
    env["PYTHONPATH"] = str(unpacked / "src")  # the unpacked package, not this checkout's
    check = subprocess.run(
        [sys.executable, "-c", "import autooffload; print(autooffload.__file__)"],
        cwd=unpacked, env=env, capture_output=True, text=True, check=True,
    )
    assert Path(check.stdout.strip()).is_relative_to(unpacked)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(f"tests/{name}" for name in RUN_FROM_SDIST)],
        cwd=unpacked, env=env, capture_output=True, text=True,
    )
    tail = result.stdout[-2000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert " passed" in tail and "error" not in tail.lower().split("passed")[-1], tail
