"""Exceptions and warnings of autooffload.

Every message says what was expected and what was given (the threadpoolctl habit).
"""

import os
import sys
import types
import warnings


class AutoOffloadError(Exception):
    """Base class of every error autooffload raises itself."""


class ConfigError(AutoOffloadError, ValueError):
    """A setting (argument, ``config()``, environment variable) has a value outside its allowed set."""


class BackendUnavailableError(AutoOffloadError, RuntimeError):
    """A backend was demanded (backend="cupy", "numba") but cannot be used here; the message says why."""


class GPUUnavailableError(BackendUnavailableError):
    """The GPU was demanded (backend="cupy") but CuPy or a CUDA device cannot be used."""


class ProfileError(AutoOffloadError):
    """A calibration profile cannot be read, parsed or trusted."""


class CalibrationError(AutoOffloadError):
    """The calibration sweep could not run or could not be saved."""


class AutoOffloadWarning(UserWarning):
    """Base class of autooffload's warnings."""


class GPUFallbackWarning(AutoOffloadWarning):
    """A GPU run failed because CuPy cannot run the code as written; the NumPy result was returned."""


class ProfileWarning(AutoOffloadWarning):
    """A profile was found but not used (corrupt, other machine, other schema); a fallback was used."""


class LogFileWarning(AutoOffloadWarning):
    """``AUTOOFFLOAD_LOG`` cannot be written; calls go on, unlogged to the file until ``reload_environment()``."""


_PACKAGE_DIR = os.path.dirname(__file__) + os.sep  # as code objects spell their file names
# The decorator's generated wrappers are compiled under file names starting with this.
_GENERATED_PREFIX = "<autooffload "


def warn_at_user_line(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first frame outside autooffload: the user's own line.

    A fixed stacklevel cannot do this: the same warning is reached through the hot path, the
    general path, ``explain()`` or the CLI, each at another depth.
    """
    frame: types.FrameType | None = sys._getframe(0)
    level = 1
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE_DIR) or frame.f_code.co_filename.startswith(_GENERATED_PREFIX)
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
