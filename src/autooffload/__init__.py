"""autooffload: run unmodified NumPy functions on NumPy or CuPy, whichever is faster per call.

    from autooffload import offload, config, explain

CuPy is imported only when a call is sent to the GPU, never by ``import autooffload``.
"""

import logging as _logging

from . import _report
from ._config import config, reload_environment
from ._costmodel import Decision
from ._dispatch import Stats, explain, offload
from .errors import (
    AutoOffloadError,
    AutoOffloadWarning,
    CalibrationError,
    ConfigError,
    GPUFallbackWarning,
    BackendUnavailableError,
    GPUUnavailableError,
    LogFileWarning,
    ProfileError,
    ProfileWarning,
)

__version__ = "0.1.0"


def calibrate(quick: bool = False, output=None, progress=None):
    """Measure this machine (the sweep ``autooffload calibrate`` runs), save the profile, use it.

    ``quick=True``: about a minute instead of about five on a GPU machine. ``output``: where to
    save (default: this machine's file in the cache folder). ``progress``: a callable receiving
    ``SweepProgress`` updates. Returns the Profile.
    """
    from ._calibrate import calibrate as run

    return run(quick=quick, output=output, progress=progress)


def report() -> "_report.Report":
    """Where the time went, per function decorated with @offload in this process: calls and time
    per backend, copies to and from the device, calls that ran elsewhere than decided and why,
    and what the decisions saved against always-NumPy as far as measured. ``print()`` it, call
    ``.as_dict()``, or show it in Jupyter (an HTML table). AUTOOFFLOAD_REPORT=1 prints it at exit."""
    return _report.build()


_logging.getLogger("autooffload").addHandler(_logging.NullHandler())
_report.register_exit_check()

__all__ = [
    "offload",
    "config",
    "calibrate",
    "explain",
    "report",
    "reload_environment",
    "Decision",
    "Stats",
    "AutoOffloadError",
    "AutoOffloadWarning",
    "CalibrationError",
    "ConfigError",
    "GPUFallbackWarning",
    "BackendUnavailableError",
    "GPUUnavailableError",
    "LogFileWarning",
    "ProfileError",
    "ProfileWarning",
    "__version__",
]
