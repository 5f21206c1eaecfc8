"""_heap: glibc keeps large blocks for reuse once the Numba tier loads, never at import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

PROBE = (
    "import autooffload\n"
    "from autooffload import _heap, backends\n"
    "print(_heap._state)\n"
    "backends.get('numba')\n"
    "print(_heap._state)\n"
)


def run(env_extra: dict[str, str]) -> list[str]:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_tier_loading_raises_the_mmap_threshold_and_import_does_not():
    before, after = run({})
    assert before == "None"
    assert after == "blocks up to 256 MiB reused (glibc mmap threshold raised)"


def test_the_environment_can_leave_the_allocator_alone():
    before, after = run({"AUTOOFFLOAD_HEAP_REUSE": "0"})
    assert (before, after) == ("None", "left alone (AUTOOFFLOAD_HEAP_REUSE=0)")
