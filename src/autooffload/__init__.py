"""autooffload: run unmodified NumPy functions on NumPy or CuPy, whichever is faster per call.

    from autooffload import offload, config, explain

CuPy is imported only when a call is sent to the GPU, never by ``import autooffload``.
"""

import logging as _logging

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


_logging.getLogger("autooffload").addHandler(_logging.NullHandler())

__all__ = [
    "offload",
    "config",
    "calibrate",
    "explain",
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
