"""Decisions that learn, on a real GPU: functions the profile gets wrong end on the faster backend.

Marked ``gpu``. Each case is one of the classes of misses a per-kind curve cannot see (issue 12):
a Python loop of small operations, a per-column loop of small reductions, a NumPy function of no
known kind, and a small solve that the input's bytes make look large. The profile is the shipped
H100 one, so the first decision is known (it is the wrong one for each case); the faster backend
is measured in the test (forced NumPy and forced CuPy, warm, medians of 5), and learning must
reach it within ``SETTLE_WITHIN`` calls and stay there.
"""

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cupy_or_skip

pytestmark = pytest.mark.gpu
cp = cupy_or_skip()

import autooffload  # noqa: E402
from autooffload import _learn, _planner, config, offload  # noqa: E402
from autooffload._profiles import load_profile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import suite  # noqa: E402

# Calls until settled: a backend wrong about itself is left after its first three calls (the first
# is dropped, two more make it trusted; a function's start is no switch, so none is dropped as
# cold: _learn.SWITCH_COLD_CALLS); a backend the profile wrongly predicts slower is found by
# exploring, which waits until 10% of the observed time covers its predicted cost (_learn.py):
# for the normal equations (GPU 0.42 ms, NumPy predicted 0.9 ms) about 25 calls, then three to trust.
SETTLE_WITHIN = 40
H100 = Path(autooffload.__file__).parent / "_profiles" / "shipped" / "h100-80gb-hbm3.json"

CASES = [  # (suite function, n, the H100 profile's first choice)
    ("panel_recur", 10**6, "cupy"),
    ("column_disp", 10**6, "cupy"),
    ("bessel_i0", 10**5, "numpy"),
    ("normal_eqs", 2 * 10**4, "cupy"),  # (253, 79): at 1e5 the two were within 1.4x on the H200
]


def _median_time(call, repeats: int = 5) -> float:
    call()  # warm: kernels compiled, caches filled
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        cp.cuda.get_current_stream().synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.fixture
def h100_profile(monkeypatch):
    profile = load_profile(H100)
    monkeypatch.setattr(_planner, "active_profile", lambda: profile)
    _learn.reset_for_tests()
    autooffload.reload_environment()
    return profile


@pytest.mark.parametrize("name,n,profile_choice", CASES)
def test_a_function_the_profile_gets_wrong_ends_on_the_faster_backend(name, n, profile_choice, h100_profile):
    case = next(c for c in suite.CASES if c.name == name)
    args = case.make(n, np.random.default_rng(7))
    reference = case.fn(*args)
    forced = offload(case.fn)
    with config(backend="numpy"):
        numpy_s = _median_time(lambda: forced(*args))
    with config(backend="cupy"):
        cupy_s = _median_time(lambda: forced(*args))
    faster = "numpy" if numpy_s < cupy_s else "cupy"
    ratio = max(numpy_s, cupy_s) / min(numpy_s, cupy_s)
    measured = f"{name} at {n}: numpy {numpy_s * 1e3:.3g} ms, cupy {cupy_s * 1e3:.3g} ms"
    assert ratio >= 1.5, f"{measured}: too close to tell which is right"
    assert faster != profile_choice, f"{measured}: the profile was right here; the case proves nothing"

    learning = offload(case.fn)
    seen = []
    for _ in range(SETTLE_WITHIN + 5):  # then five more, all on the faster backend
        got = learning(*args)
        seen.append(learning.last_decision.backend)
    np.testing.assert_allclose(got, reference, rtol=case.rtol, atol=case.atol)
    assert seen[0] == profile_choice, (measured, seen)
    assert seen[-5:] == [faster] * 5, (measured, seen, learning.last_decision)
    print(f"\n{measured}; decisions {seen}; {learning.last_decision.sources}")
