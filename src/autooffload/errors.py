"""Exceptions and warnings of autooffload.

Every message says what was expected and what was given (the threadpoolctl habit).
"""


class AutoOffloadError(Exception):
    """Base class of every error autooffload raises itself."""


class ConfigError(AutoOffloadError, ValueError):
    """A setting (argument, ``config()``, environment variable) has a value outside its allowed set."""


class GPUUnavailableError(AutoOffloadError, RuntimeError):
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
