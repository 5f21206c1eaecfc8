"""Types: mypy finds the package clean (pyproject's [tool.mypy], with its stated ignore list), and
a decorated function keeps its signature for a type checker, in both ``@offload`` forms.

Skipped without mypy (the test extra has it). ~20 s on a 2-core machine without a cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import autooffload

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("mypy", reason="needs mypy (pip install -e '.[test]')")
if not (REPO / "src" / "autooffload").is_dir():
    pytest.skip("not run from a source tree", allow_module_level=True)

USER_SCRIPT = '''
import numpy as np
from autooffload import Decision, offload

@offload
def score(prices: np.ndarray, weights: np.ndarray) -> float:
    return float((prices * weights).sum())

@offload(kind="fft", pure=True)
def smooth(signal: np.ndarray, width: int = 8) -> np.ndarray:
    return signal

ok_result: float = score(np.ones(3), np.ones(3))
ok_array: np.ndarray = smooth(np.ones(3), width=4)
ok_decision: Decision | None = score.last_decision
ok_count: int = score.stats.numpy
score(np.ones(3))  # E1: a missing argument
smooth(np.ones(3), widht=4)  # E2: a misspelt keyword
wrong: str = score(np.ones(3), np.ones(3))  # E3: the result is a float
'''


def _mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # MYPYPATH: the package this test imports, whether installed or only on PYTHONPATH.
    env = {**os.environ, "MYPYPATH": str(Path(autooffload.__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_mypy_finds_the_package_clean():
    result = _mypy("--config-file", str(REPO / "pyproject.toml"), cwd=REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_a_decorated_function_keeps_its_signature(tmp_path):
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    # follow-imports=silent: the user's errors only, as for an installed package.
    result = _mypy("--follow-imports=silent", "--python-version=3.11", str(script), cwd=tmp_path)
    lines = USER_SCRIPT.splitlines()
    flagged = {lines[int(line.split(":")[1]) - 1].split("# ")[-1][:2] for line in result.stdout.splitlines() if ": error:" in line}
    assert flagged == {"E1", "E2", "E3"}, result.stdout
