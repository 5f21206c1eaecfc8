"""`autooffload --version` and `autooffload info`: what loads here, never an error."""

from __future__ import annotations

import json

import autooffload
from autooffload import _sysinfo, cli


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"autooffload {autooffload.__version__}"


def test_info_json_says_what_loads(capsys):
    assert cli.main(["info", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["autooffload"] == autooffload.__version__
    assert set(doc["extensions"]) == {"_native", "_parcopy"}
    assert 1 <= doc["cores"]["usable"] <= doc["cores"]["affinity"] <= doc["cores"]["machine"]
    assert doc["blas"] and doc["blas"][0]["num_threads"] >= 1  # NumPy's BLAS, found by threadpoolctl
    assert "unavailable" in doc["cupy"] and "numba" in doc


def test_info_text_names_each_part(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for label in ("_native", "_parcopy", "cores", "BLAS", "CuPy", "Numba"):
        assert any(line.startswith(label) for line in out.splitlines()), label


def test_info_reports_a_cupy_that_is_turned_off_without_importing_it(monkeypatch, capsys):
    monkeypatch.setenv("AUTOOFFLOAD_DISABLE_GPU", "1")
    autooffload.reload_environment()
    try:
        assert _sysinfo.cupy() == {"unavailable": "AUTOOFFLOAD_DISABLE_GPU=1"}
    finally:
        monkeypatch.delenv("AUTOOFFLOAD_DISABLE_GPU")
        autooffload.reload_environment()


def test_a_missing_extension_is_reported_not_raised(monkeypatch):
    real = _sysinfo.importlib.import_module

    def without_native(name, *args):
        if name == "autooffload._native":
            raise ImportError("not built")
        return real(name, *args)

    monkeypatch.setattr(_sysinfo.importlib, "import_module", without_native)
    assert _sysinfo.extensions()["_native"].startswith("not built")
