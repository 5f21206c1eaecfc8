"""``import autooffload`` stays cheap: pydantic and the profile load at the first decision.

A program whose calls stay on NumPy should pay for the decorator, not for validating profile
files; the pydantic models alone cost ~100-130 ms to build. Each check runs in a fresh
interpreter, since this test process has long imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import autooffload

SRC = str(Path(autooffload.__file__).resolve().parents[1])  # this test process's copy of the package

# Measured on top of NumPy, which every user has imported anyway (NumPy alone takes ~100 ms on
# a 2-core VM). 80 ms is the goal of issue 16 (~50 ms measured on the 2-core VM); the bound
# below leaves room for a loaded CI machine while still failing if pydantic comes back (+130 ms).
IMPORT_BUDGET_S = 0.150


def _fresh(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    env.pop("AUTOOFFLOAD_LOG", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout


def test_import_loads_neither_pydantic_nor_a_profile():
    out = _fresh(
        "import sys, autooffload; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core', 'cupy', 'numba', "
        "'threadpoolctl', 'platformdirs', 'filelock') or m.startswith('autooffload._profiles.')))"
    )
    assert out.strip() == "[]"


def test_the_first_decision_loads_the_profile():
    out = _fresh(
        "import sys, numpy as np, autooffload\n"
        "@autooffload.offload\n"
        "def f(x): return x + 1\n"
        "f(np.ones(10))\n"
        "print('pydantic' in sys.modules, f.last_decision.profile)"
    )
    loaded, profile = out.split(maxsplit=1)
    assert loaded == "True" and profile.strip()


def test_import_time_on_top_of_numpy():
    code = (
        "import time, json; import numpy; t = time.perf_counter(); import autooffload; "
        "print(json.dumps(time.perf_counter() - t))"
    )
    best = min(json.loads(_fresh(code)) for _ in range(3))
    print(f"\nimport autooffload (NumPy already imported): {best * 1e3:.1f} ms, best of 3")
    assert best < IMPORT_BUDGET_S, f"import autooffload took {best * 1e3:.0f} ms"
