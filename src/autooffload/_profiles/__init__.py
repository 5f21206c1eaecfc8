"""Calibration profiles: what the cost model knows about a machine, and where that comes from.

One concern per module: ``model`` (the file format, its history and the migration of older
formats), ``fingerprint`` (which machine this is), ``store`` (where profiles live; reading and
writing them), ``defaults`` (the built-in profile), ``resolve`` (which profile decisions use).
The rest of the package imports from here.

Nothing is imported until a name is asked for (module ``__getattr__``, PEP 562): ``model``
builds pydantic models, ~100 ms that ``import autooffload`` must not pay, since a program whose
calls all stay on NumPy by steering never needs a profile. The first decision that consults the
cost model asks for ``active_profile`` and pays it then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the submodule that defines it.
_WHERE = {
    "builtin_profile": "defaults",
    **dict.fromkeys(
        ("cuda_gpu_details", "current_fingerprint", "gpu_fingerprint_fields", "machine_id", "machine_mismatch",
         "same_machine", "this_machine_mismatch", "version_drift"),
        "fingerprint",
    ),
    **dict.fromkeys(
        ("REFERENCE_BACKEND", "SCHEMA_VERSION", "BackendTiming", "CopyRate", "CopyTuning", "Curve", "Fingerprint",
         "Memory", "Profile", "migrate_v1_to_v2"),
        "model",
    ),
    **dict.fromkeys(("active_profile", "apply_copy_tuning", "reset_active_profile", "shipped_profile_for_this_gpu", "software_drift"), "resolve"),
    **dict.fromkeys(
        ("CALIBRATE_HINT", "SHIPPED_PROFILES_DIR", "cache_dir", "default_profile_path", "load_profile",
         "package_version", "profile_json", "profile_path", "save_profile", "shipped_profile_paths"),
        "store",
    ),
}
_SUBMODULES = frozenset(_WHERE.values())


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use and keep the name here."""
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f"{__name__}.{name}")
    elif name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups (and monkeypatching in tests) see a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:  # what type checkers and editors see: the same names, imported eagerly
    from .defaults import builtin_profile
    from .fingerprint import (
        cuda_gpu_details,
        current_fingerprint,
        gpu_fingerprint_fields,
        machine_id,
        machine_mismatch,
        same_machine,
        this_machine_mismatch,
        version_drift,
    )
    from .model import (
        REFERENCE_BACKEND,
        SCHEMA_VERSION,
        BackendTiming,
        CopyRate,
        CopyTuning,
        Curve,
        Fingerprint,
        Memory,
        Profile,
        migrate_v1_to_v2,
    )
    from .resolve import active_profile, reset_active_profile, shipped_profile_for_this_gpu, software_drift
    from .store import (
        CALIBRATE_HINT,
        SHIPPED_PROFILES_DIR,
        cache_dir,
        default_profile_path,
        load_profile,
        package_version,
        profile_json,
        profile_path,
        save_profile,
        shipped_profile_paths,
    )

__all__ = [
    "CALIBRATE_HINT",
    "SCHEMA_VERSION",
    "SHIPPED_PROFILES_DIR",
    "REFERENCE_BACKEND",
    "BackendTiming",
    "CopyRate",
    "CopyTuning",
    "Curve",
    "Fingerprint",
    "Memory",
    "Profile",
    "migrate_v1_to_v2",
    "active_profile",
    "builtin_profile",
    "cache_dir",
    "cuda_gpu_details",
    "current_fingerprint",
    "default_profile_path",
    "gpu_fingerprint_fields",
    "load_profile",
    "machine_id",
    "machine_mismatch",
    "package_version",
    "profile_json",
    "profile_path",
    "reset_active_profile",
    "same_machine",
    "save_profile",
    "shipped_profile_for_this_gpu",
    "shipped_profile_paths",
    "software_drift",
    "this_machine_mismatch",
    "version_drift",
]
