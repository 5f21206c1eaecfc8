"""The profile the decorator uses: resolved once per process through a fallback chain.

``AUTOOFFLOAD_PROFILE`` -> this machine's calibrated profile -> a shipped profile for this GPU
model -> the built-in defaults. Resolution never raises: a profile problem must not break a
user's call, so every unusable file is a warning and the chain moves on.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ..errors import ProfileError, ProfileWarning, warn_at_user_line
from . import store
from .defaults import builtin_profile
from .fingerprint import _cheap_identity, _normalize, this_machine_mismatch, version_drift
from .model import Profile
from .store import CALIBRATE_HINT, load_profile, shipped_profile_paths

logger = logging.getLogger("autooffload")

_active: Profile | None = None
_active_lock = threading.Lock()


def active_profile() -> Profile:
    """The profile decisions use; resolved once, then cached. Never raises.

    Order: ``AUTOOFFLOAD_PROFILE`` (an explicit choice: used even if measured elsewhere) ->
    this machine's calibrated profile -> a shipped profile for this GPU model -> the built-in
    defaults. A file found but unusable gives one ``ProfileWarning`` (file, what is wrong, the
    fix); using the built-in defaults gives one INFO line on logger "autooffload".
    """
    profile = _active
    if profile is None:
        profile = _resolve_active_profile_once()
    return profile


def _resolve_active_profile_once() -> Profile:
    global _active
    with _active_lock:
        if _active is None:
            profile = _resolve_active_profile()
            apply_copy_tuning(profile)
            _active = profile
        return _active


def apply_copy_tuning(profile: Profile) -> None:
    """Hand ``profile``'s copy-engine tuning to the engine (its defaults when it has none).

    Once per resolution, never on a copy: the engine reads one module global per copy as
    before. Never raises: a tuning the engine refuses is a warning, and the defaults stay.
    """
    try:
        from .. import _transfer
    except ImportError:
        return
    tuning = profile.copy_tuning()
    try:
        skipped = _transfer.apply_tuning(tuning.knobs if tuning is not None else None, profile.source)
    except Exception as e:  # noqa: BLE001 - a bad tuning must not break a user's call
        _transfer.apply_tuning(None)
        warn_at_user_line(f"autooffload: the copy tuning of profile {profile.source} is not usable ({e}); "
                          "the copy engine keeps its defaults", ProfileWarning)
        return
    if skipped:
        logger.info("profile %s sets copy-engine knobs this engine does not have (%s): skipped", profile.source, ", ".join(skipped))


def reset_active_profile() -> None:
    """Forget the cached active profile (after a calibration, or between tests).

    Decisions cached from the old profile are dropped too.
    """
    global _active
    with _active_lock:
        _active = None
    from .. import _config

    _config.invalidate_decisions()


def _warn_unused(message: str) -> None:
    warn_at_user_line(f"autooffload: {message}; falling back to the next profile in line", ProfileWarning)


def _try_load(path: Path) -> Profile | None:
    try:
        return load_profile(path)
    except ProfileError as e:
        _warn_unused(str(e))
        return None


def _resolve_active_profile() -> Profile:
    try:
        explicit = os.environ.get("AUTOOFFLOAD_PROFILE")
        if explicit:
            profile = _try_load(Path(explicit).expanduser())
            if profile is not None:
                if mismatch := this_machine_mismatch(profile.fingerprint):
                    logger.info("using AUTOOFFLOAD_PROFILE=%s although it was measured on another machine (%s)", explicit, mismatch)
                return profile

        path = store.default_profile_path()
        if path.exists() or path.is_symlink():
            profile = _try_load(path)
            if profile is not None:
                mismatch = this_machine_mismatch(profile.fingerprint)
                if mismatch is None:
                    _log_version_drift(profile)
                    return profile
                _warn_unused(
                    f"profile {path} was measured on another machine ({mismatch}) and is not used; {CALIBRATE_HINT}"
                )

        shipped = shipped_profile_for_this_gpu()
        if shipped is not None:
            logger.info(
                "using the shipped profile %s for %s; %s for numbers of its own",
                shipped.source, shipped.fingerprint.gpu_name, CALIBRATE_HINT,
            )
            return shipped

        logger.info("no calibrated profile for this machine (looked for %s); using built-in defaults; %s", path, CALIBRATE_HINT)
        return builtin_profile()
    except Exception as e:  # a profile problem must never break a user's call
        warn_at_user_line(f"autooffload: could not resolve a profile ({e!r}); using built-in defaults", ProfileWarning)
        return builtin_profile()


def _current_transfer_engine() -> str | None:
    try:
        from .. import _transfer  # cheap: it imports CuPy only when copying
    except ImportError:
        return None
    return getattr(_transfer, "ENGINE_NAME", None)


def software_drift(profile: Profile) -> list[str]:
    """What changed on this machine since ``profile`` was measured: versions and the copy engine."""
    here, _ = _cheap_identity()
    changes = version_drift(profile.fingerprint, here)
    engine = _current_transfer_engine()
    for device in profile.device_backends().values():
        if device.transfer_engine and engine and device.transfer_engine != engine:
            changes.append(f"copy engine {device.transfer_engine} -> {engine}")
    return changes


def _log_version_drift(profile: Profile) -> None:
    if changes := software_drift(profile):
        logger.info("profile %s was measured with other software (%s); consider `autooffload calibrate`", profile.source, ", ".join(changes))


def shipped_profile_for_this_gpu() -> Profile | None:
    """The shipped profile measured on this machine's GPU model (best CPU match first), or None."""
    here, gpu_known = _cheap_identity()
    if not gpu_known or not here.gpu_name:
        return None
    candidates = []
    for path in shipped_profile_paths():
        profile = _try_load(path)
        if profile is not None and profile.device_backends() and _normalize(profile.fingerprint.gpu_name) == _normalize(here.gpu_name):
            fp = profile.fingerprint
            closeness = (_normalize(fp.cpu_model) == _normalize(here.cpu_model), -abs(fp.cpu_cores - here.cpu_cores), profile.created)
            candidates.append((closeness, path.name, profile))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[:2])[2]
