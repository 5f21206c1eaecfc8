"""The profile the decorator uses: resolved once per process through a fallback chain.

``AUTOOFFLOAD_PROFILE`` -> this machine's calibrated profile -> a shipped profile for this GPU
model -> a profile scaled by probes of this machine -> the built-in defaults. Resolution never
raises: a profile problem must not break a user's call, so every unusable file is a warning and
the chain moves on.

Without a calibrated or shipped profile (``_profiles/scaling.py`` says how the probes scale):
the first decision uses this machine's cached GPU probe, if any, to scale the nearest shipped
GPU profile, else the built-in defaults; and adds Numba curves scaled by the host probe (cached,
or ~2 ms now). With no cached GPU probe, the first GPU start of the process (``backends.cupy``'s
start hooks) runs the GPU probe, caches it, and replaces the active profile for this process;
a probe that fails or runs past its budget leaves the built-in defaults, the source saying why.
``AUTOOFFLOAD_PROBE=0`` turns both probes off (the built-in defaults, as before);
``AUTOOFFLOAD_SHIPPED=0`` skips the shipped profiles' match by GPU model (tests, measuring the probe).
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
            # A probe-scaled profile (later, probe_gpu_now) keeps the engine as this one set it:
            # another machine's copy tuning is not this machine's.
            apply_copy_tuning(profile)
            _active = profile
        profile = _active
    if _gpu_probe_for is not None:
        from ..backends import cupy as device

        if device.gpu_ready:  # the GPU started before any decision needed a profile: probe now
            probe_gpu_now()
            return _active or profile
    return profile


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
    global _active, _gpu_probe_for, _host_probe
    with _active_lock:
        _active = None
        _gpu_probe_for = None
        _host_probe = None
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

        shipped = shipped_profile_for_this_gpu() if _environment().shipped else None
        if shipped is not None:
            logger.info(
                "using the shipped profile %s for %s; %s for numbers of its own",
                shipped.source, shipped.fingerprint.gpu_name, CALIBRATE_HINT,
            )
            return _with_host_tier(shipped) if _environment().probe else shipped

        if _environment().probe:
            return _probed_profile(path)
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


# ---------------------------------------------------------------------------------------------
# Without a calibrated or shipped profile: the probes (_profiles/scaling.py, _probe.py).
# ---------------------------------------------------------------------------------------------

# The profile the GPU probe will replace at the first GPU start (None: no probe pending).
_gpu_probe_for: Profile | None = None
_hook_registered = False
_host_probe = None  # this process's HostProbe, once measured or read


def _environment():
    from .. import _config

    return _config.environment()


def _references(predicate) -> list[tuple[str, Profile]]:
    """(name, profile) of each shipped profile that ``predicate`` accepts; unusable files warn."""
    found = []
    for path in shipped_profile_paths():
        profile = _try_load(path)
        if profile is not None and predicate(profile):
            found.append((path.stem, profile))
    return found


def device_references() -> list[tuple[str, Profile]]:
    """The profiles a GPU probe may scale: the shipped GPU profiles, then the built-in defaults."""
    return [*_references(lambda p: p.has_device_timings()), ("built-in", builtin_profile())]


def tier_references() -> list[tuple[str, Profile]]:
    """The shipped profiles with Numba curves (whose tier curves a host probe may scale)."""
    return _references(lambda p: p.backend("numba") is not None)


def _with_host_tier(profile: Profile) -> Profile:
    """``profile`` with Numba curves scaled to this host (see scaling.with_tier); as it is where
    it has some, or the host probe fails (an INFO line says why)."""
    global _host_probe
    if profile.backend("numba") is not None:
        return profile
    from .. import _probe
    from .probecache import read_probes, write_probes
    from .scaling import ProbeRejected, with_tier

    try:
        if _host_probe is None:
            _host_probe = read_probes()[0]
            if _host_probe is None:
                _host_probe = _probe.measure_host()
                write_probes(host=_host_probe)
        here, _ = _cheap_identity()
        return with_tier(profile, tier_references(), _host_probe, here.cpu_model)
    except (_probe.ProbeFailed, ProbeRejected) as e:
        logger.info("autooffload: no Numba curves for this host: %s", e)
        return profile


def _probed_profile(looked_for: Path) -> Profile:
    """The built-in defaults, or the nearest GPU profile scaled by this machine's cached GPU probe;
    with Numba curves scaled to this host. Arms the GPU probe when no cached one is usable."""
    global _gpu_probe_for
    from .probecache import read_probes
    from .scaling import ProbeRejected, scaled_device_profile

    gpu = read_probes()[1]
    base = None
    if gpu is not None:
        try:
            base = scaled_device_profile(device_references(), gpu, cached=True)
        except ProbeRejected as e:
            logger.info("autooffload: the cached GPU probe is not used (%s); probing again at the GPU start", e)
    if base is None:
        logger.info("no calibrated profile for this machine (looked for %s); using built-in defaults until the "
                    "first GPU start probes the GPU; %s", looked_for, CALIBRATE_HINT)
        base = builtin_profile()
    profile = _with_host_tier(base)
    if gpu is None or base.source == "built-in":
        _arm_gpu_probe(profile)
    return profile


def _arm_gpu_probe(profile: Profile) -> None:
    """Probe the GPU at this process's first GPU start, replacing ``profile`` if still active."""
    global _gpu_probe_for, _hook_registered
    _gpu_probe_for = profile
    if not _hook_registered:
        from ..backends import cupy as device

        device.on_start(probe_gpu_now)
        _hook_registered = True


def probe_gpu_now() -> None:
    """The GPU start hook: probe the GPU and make the scaled profile the active one. Never raises:
    a probe that fails or runs past its budget leaves the built-in defaults, the source saying why."""
    global _active, _gpu_probe_for
    with _active_lock:
        replaced, _gpu_probe_for = _gpu_probe_for, None
    if replaced is None:
        return
    from .. import _probe
    from ..backends import cupy as device
    from .probecache import write_probes
    from .scaling import ProbeRejected, scaled_device_profile

    backend = device.load()
    if backend is None:
        return
    try:
        probe = _probe.measure_gpu(backend)
        profile = scaled_device_profile(device_references(), probe, cached=False)
    except (_probe.ProbeFailed, ProbeRejected) as e:
        profile = builtin_profile().with_source(f"built-in (the GPU probe failed: {e})")
        logger.info("autooffload: the GPU probe failed (%s); using the built-in defaults", e)
    except Exception as e:  # a probe must never fail a call
        profile = builtin_profile().with_source(f"built-in (the GPU probe failed: {type(e).__name__}: {e})")
        logger.info("autooffload: the GPU probe failed (%r); using the built-in defaults", e)
    else:
        write_probes(gpu=probe)
        logger.info("autooffload: using %s", profile.source)
    profile = _with_host_tier(profile)
    with _active_lock:
        if _active is not replaced:
            return  # reset or replaced meanwhile (a calibration): that one stands
        _active = profile
    from .. import _config

    _config.invalidate_decisions()
