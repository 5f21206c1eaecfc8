"""The report of examples/where_time_went.py with a GPU row, on a machine without a GPU.

    PYTHONPATH=src python tools/report_on_fake_gpu.py

Installs the test double tests/fake_device.py as the GPU (its "device" memory is host memory, so
its times are host copies, not a GPU's) and a synthetic profile in which the GPU wins for the
32 MB calls and NumPy for the 8 KB ones, runs the example as __main__, then prints the report.
For the README's "Where did my time go" section; a real GPU machine needs none of this.
"""

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fake_device  # noqa: E402
from conftest import synthetic_profile  # noqa: E402

import autooffload  # noqa: E402
from autooffload import _planner  # noqa: E402
from autooffload.backends import cupy as device  # noqa: E402

device.set_backend_for_tests(fake_device.FakeDevice())
device.mark_gpu_ready()  # the double has no cold start to pay
profile = synthetic_profile(cpu_per_byte=1e-9, gpu_per_byte=1e-11, copy_per_byte=1e-11, cold_start=0.0)
_planner.active_profile = lambda: profile
runpy.run_path(str(ROOT / "examples" / "where_time_went.py"), run_name="__main__")
print(autooffload.report())
