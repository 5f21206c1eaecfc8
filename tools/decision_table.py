"""Every decision the benchmark suite's functions get, as JSON lines: to prove a refactor changed none.

    PYTHONPATH=src python3 tools/decision_table.py > decisions.jsonl
    diff <(before) <(after)

For each function of ``benchmarks/suite.py``, each size from 1e2 to 1e7 elements, each profile
(the built-in defaults and every profile shipped in the package), the data on the host or on the
device, and the GPU cold or already started, prints ``explain()``'s Decision (backend, reason,
predicted seconds per backend, bytes) with the GPU played by the test double of
``tests/fake_device.py`` (a real GPU is not needed: decisions are a function of the profile and
the call's shape). Exact floats are printed, so any change in the cost model's arithmetic shows.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import fake_device  # noqa: E402
import suite  # noqa: E402

import autooffload  # noqa: E402
from autooffload import explain, offload  # noqa: E402


def _install_fake_gpu():
    """The test double as the GPU, through whichever module holds the backend in this version."""
    try:
        from autooffload.backends import cupy as holder
    except ImportError:
        from autooffload import _backends as holder
    holder.set_backend_for_tests(fake_device.FakeDevice())
    return holder


def _profiles() -> list[str | None]:
    package = Path(autooffload.__file__).parent
    # The shipped folder moved from profiles/ to _profiles/shipped/ (issue 11); either version works.
    folder = next((f for f in (package / "_profiles" / "shipped", package / "profiles") if f.is_dir()), package / "profiles")
    shipped = sorted(folder.glob("*.json"))
    return [None, *map(str, shipped)]


def _reset_active_profile() -> None:
    """Forget the resolved profile, wherever this version keeps it (_profiles, or _profile before issue 11)."""
    for module in ("autooffload._profiles", "autooffload._profile"):
        try:
            __import__(module, fromlist=["x"]).reset_active_profile()
            return
        except ImportError:
            continue


def _to_device(x):
    if isinstance(x, np.ndarray):
        return x.view(fake_device.FakeDeviceArray)
    return x


def main() -> None:
    holder = _install_fake_gpu()
    rng = np.random.default_rng(0)
    for profile in _profiles():
        if profile is None:
            os.environ.pop("AUTOOFFLOAD_PROFILE", None)
            os.environ["AUTOOFFLOAD_CACHE_DIR"] = "/nonexistent-autooffload-cache"
        else:
            os.environ["AUTOOFFLOAD_PROFILE"] = profile
        for ready in (False, True):
            holder.set_backend_for_tests(fake_device.FakeDevice())
            autooffload.reload_environment()
            _reset_active_profile()
            if ready:
                holder.mark_gpu_ready()
            for case in suite.CASES:
                f = offload(case.fn)
                for exponent in range(2, 8):
                    args = case.make(10**exponent, rng)
                    for location in ("host", "device"):
                        call_args = args if location == "host" else tuple(_to_device(a) for a in args)
                        d = explain(f, *call_args).to_dict()
                        row = {"profile": Path(profile).name if profile else "built-in", "gpu_ready": ready,
                               "case": case.name, "n": 10**exponent, "location": location,
                               **{k: d[k] for k in ("backend", "reason", "kind", "host_bytes", "device_bytes",
                                                    "dtypes", "predicted_s", "warm_savings_s", "cold_start_s")}}
                        print(json.dumps(row, sort_keys=True, default=repr))


if __name__ == "__main__":
    main()
