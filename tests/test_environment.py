"""Each AUTOOFFLOAD_* variable, good and bad, as a fresh process meets it at its first calls.

Turned from the probe explore_env.py. In-process, for speed: the environment is read lazily on
the first call (``_config._env = None`` below), as in a new process. A setting outside its allowed
set fails every call with a ConfigError naming the variable and the value; a setting naming an
unusable place (profile, cache folder, log file) warns at most once and the calls give NumPy's
result. The log file's cases are in test_logging_and_threads.py.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from autooffload import _config, _profiles, offload
from autooffload.backends import cupy as _backends
from autooffload.errors import AutoOffloadWarning, ConfigError, GPUUnavailableError, ProfileWarning


def _a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


# (variable, value: a string or a function of tmp_path, what every call gives).
CASES = [
    ("AUTOOFFLOAD_BACKEND", "gpu", ConfigError),
    ("AUTOOFFLOAD_BACKEND", " NumPy ", "forced by AUTOOFFLOAD_BACKEND"),
    ("AUTOOFFLOAD_BACKEND", "cupy", GPUUnavailableError),  # CuPy made unimportable below
    ("AUTOOFFLOAD_DISABLE_GPU", "2", ConfigError),
    ("AUTOOFFLOAD_DISABLE_GPU", "on", ConfigError),
    ("AUTOOFFLOAD_DISABLE_GPU", " Yes ", "AUTOOFFLOAD_DISABLE_GPU=1"),
    ("AUTOOFFLOAD_PROFILE", lambda tmp: str(tmp / "nonexistent.json"), ProfileWarning),
    ("AUTOOFFLOAD_PROFILE", lambda tmp: str(tmp), ProfileWarning),  # a folder
    ("AUTOOFFLOAD_CACHE_DIR", lambda tmp: str(_a_file(tmp)), None),
    ("AUTOOFFLOAD_CACHE_DIR", lambda tmp: str(_a_file(tmp) / "below-a-file"), None),
]


@pytest.mark.parametrize("variable, value, outcome", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_environment_value_at_a_fresh_start(tmp_path, monkeypatch, variable, value, outcome):
    value = value(tmp_path) if callable(value) else value
    monkeypatch.setenv(variable, value)
    monkeypatch.setitem(sys.modules, "cupy", None)  # no GPU, also on a machine with one
    _backends.set_backend_for_tests(None)
    _profiles.reset_active_profile()
    _config._env = None  # read on the first call, as in a new process

    @offload
    def total(x):
        return np.sin(x).sum()

    x = np.arange(1000.0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):
            if isinstance(outcome, type) and not issubclass(outcome, Warning):
                with pytest.raises(outcome) as err:
                    total(x)
                assert variable in str(err.value)
                if outcome is ConfigError:
                    assert repr(value.strip().lower()) in str(err.value)
            else:
                assert total(x) == np.sin(x).sum()
                assert total.last_decision.backend == "numpy"
                if isinstance(outcome, str):
                    assert outcome in total.last_decision.reason
    ours = [w for w in record if issubclass(w.category, AutoOffloadWarning)]
    if outcome is ProfileWarning:
        (warning,) = ours
        assert value in str(warning.message) and warning.filename == __file__
    else:
        assert ours == []
