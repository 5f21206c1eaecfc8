"""The parts of issue 11: backends as plug-ins, the record keeper, the cold-start ledger, outcomes."""

import subprocess
import sys

import numpy as np
import pytest

from autooffload import GPUFallbackWarning, backends, config, offload
from autooffload._planner import ColdStartLedger
from autooffload._records import Records, counter_value, type_signature


def test_numpy_and_cupy_are_the_first_registered_backends():
    assert backends.names()[:2] == ("numpy", "cupy")
    numpy_backend = backends.get("numpy")
    assert numpy_backend.name == "numpy" and numpy_backend.memory == backends.HOST
    assert numpy_backend.dtypes is None and numpy_backend.warmup == "none"
    fn, twin, how = numpy_backend.runner(np.sum)
    assert fn is np.sum and twin is None


def test_every_registered_backend_class_fulfils_the_contract():
    from autooffload.backends.cupy import CupyBackend
    from autooffload.backends.numpy import NumpyBackend

    for cls in (NumpyBackend, CupyBackend):
        assert issubclass(cls, backends.Backend)
        assert cls.name in backends.names()
        assert cls.memory in (backends.HOST, backends.DEVICE)
        assert cls.warmup in ("none", "process", "signature")
        assert cls.runner is not backends.Backend.runner  # the one method without a default
    assert issubclass(CupyBackend, backends.DeviceMemory) and not issubclass(NumpyBackend, backends.DeviceMemory)
    assert CupyBackend.dtypes == backends.DEVICE_DTYPES


def test_an_unknown_backend_name_says_which_exist():
    with pytest.raises(KeyError, match="registered: numpy, cupy"):
        backends.get("tpu")


def test_asking_whether_cupy_can_run_imports_neither_cupy_nor_numba():
    # (pydantic is still imported by `import autooffload`: the import-cost issue moves it.)
    code = (
        "import sys, autooffload\n"
        "from autooffload import backends\n"
        "backends.unavailable_reason('cupy'); backends.get('numpy')\n"
        "print(sorted(m for m in ('cupy', 'numba') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_records_count_remember_failures_by_argument_types_and_read_counters_without_advancing():
    records = Records(("numpy", "cupy"))
    next(records.calls["cupy"])
    assert records.count("cupy") == 1 and records.count("cupy") == 1  # reading does not advance
    signature = type_signature((np.ones(3), [np.ones((2, 2), np.float32)]), {})
    assert signature == (("<f8", 1), ("<f4", 2))
    records.fell_back(signature, "cupy", "TypeError: no")
    assert records.failure(signature, "cupy") == "TypeError: no"
    assert records.failure(signature, "numba") is None
    assert records.snapshot() == {"numpy": 0, "cupy": 1, "fallbacks": 1, "decisions": 0}
    assert counter_value(records.decisions) == 0


def test_the_cold_start_ledger_pays_once_the_forgone_savings_reach_the_cost():
    ledger = ColdStartLedger()
    assert ledger.add(0.4, 1.0) is None and ledger.add(0.4, 1.0) is None
    assert ledger.add(0.4, 1.0) == pytest.approx(1.2)
    assert ledger.forgone_s == 0.0  # a fresh start after paying
    ledger.add(0.5, 1.0)
    ledger.reset()
    assert ledger.forgone_s == 0.0


def test_the_executor_reports_what_ran_and_why_it_fell_back(fake_gpu):
    import fake_device

    @offload
    def f(x):
        return np.median(x) + 1

    with config(backend="cupy"):
        f(np.arange(5.0))
    outcome = f.__autooffload__.records.last_outcome
    assert outcome.backend == "cupy" and outcome.fallback_cause is None and outcome.seconds > 0

    fake_device.FAKE_MISSING.add("median")
    g = offload(lambda x: np.median(x) + 1)
    with config(backend="cupy"), pytest.warns(GPUFallbackWarning):
        g(np.arange(5.0))
    outcome = g.__autooffload__.records.last_outcome
    assert outcome.backend == "numpy" and "median" in outcome.fallback_cause
    assert g.stats.as_dict() == {"numpy": 1, "cupy": 0, "numba": 0, "fallbacks": 1, "decisions": 1}


def test_steering_accepts_the_registered_names_and_says_them():
    from autooffload import ConfigError

    with pytest.raises(ConfigError, match="'numpy', 'cupy', 'numba', 'auto'"):
        offload(lambda x: x, backend="gpu")
