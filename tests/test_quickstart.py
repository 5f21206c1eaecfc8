"""The quickstart runs in seconds without a GPU and says why the GPU is not used once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import autooffload

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_quickstart_without_a_gpu():
    env = {**os.environ, "AUTOOFFLOAD_DISABLE_GPU": "1",
           "PYTHONPATH": str(Path(autooffload.__file__).resolve().parents[1])}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(QUICKSTART)], capture_output=True, text=True, env=env, check=True).stdout
    assert time.perf_counter() - started < 30  # a few seconds on a 2-core VM
    lines = out.splitlines()
    assert lines[0].split() == ["function", "size", "calls", "ran", "on", "why", "last", "call"]
    assert out.count("Why no GPU:") == 1 and "AUTOOFFLOAD_DISABLE_GPU=1" in out
    assert max(len(line) for line in lines) <= 120
    assert "predicted cupy" not in out and "cupy 1" not in out  # no prediction for a GPU that cannot run
