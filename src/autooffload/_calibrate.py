"""``calibrate()``: run the sweep, save the profile, make it the active one.

Kept apart from ``_sweep`` (which only measures) and ``_profiles`` (which only stores), so the
order that makes an interrupted calibration harmless is written down in one place: measure
everything first, then replace the file atomically in one step. Ctrl-C during the sweep leaves
the old profile untouched, since nothing has been written yet.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ._profiles import Profile, cache_dir, profile_path, reset_active_profile, save_profile
from ._sweep import ProgressCallback, SweepPlan, run_sweep
from .errors import CalibrationError


def calibrate(
    quick: bool = False,
    output: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> Profile:
    """Measure this machine, save its profile and use it from now on.

    ``quick``: the ~1-minute sweep instead of the ~5-minute one. ``output``: where to save
    (default: ``AUTOOFFLOAD_PROFILE``, else this machine's file in the cache folder).
    ``progress``: called with ``_sweep.SweepProgress`` as the sweep advances.
    Raises ``CalibrationError`` when another calibration is running or the file cannot be saved;
    before sweeping, when the places it writes to are unusable (see ``check_can_save``).
    """
    from filelock import FileLock, Timeout

    target = check_can_save(output)
    plan = SweepPlan.quick() if quick else SweepPlan.default()
    # One sweep at a time per user: two would measure each other's load.
    lock_path = cache_dir() / "calibrate.lock"
    try:
        lock = FileLock(str(lock_path), timeout=0)
        lock.acquire()
    except Timeout:
        raise CalibrationError(
            f"another calibration is running (it holds {lock_path}); wait for it to finish"
        ) from None
    except OSError as e:
        raise CalibrationError(f"cannot create the calibration lock {lock_path}: {e.strerror or e}") from None
    try:
        profile = run_sweep(plan, progress=progress)
        saved = save_profile(profile, target)
    finally:
        lock.release()
    reset_active_profile()
    return profile.with_source(str(saved))


def check_can_save(output: str | os.PathLike | None) -> Path:
    """Where the profile will be saved, once its folder and the cache folder (for the lock) are
    proven writable: found now, not after minutes of sweeping. ``CalibrationError`` says why not.
    """
    target = Path(output).expanduser() if output is not None else profile_path()
    if target.is_dir():
        raise CalibrationError(f"cannot save the profile to {target}: {target} is a directory, not a file")
    cache_name = "AUTOOFFLOAD_CACHE_DIR" if os.environ.get("AUTOOFFLOAD_CACHE_DIR") else "the cache folder"
    for folder, name in ((cache_dir(), cache_name), (target.parent, "the profile's folder")):
        _check_writable_folder(folder, name)
    return target


def _check_writable_folder(folder: Path, name: str) -> None:
    """Create ``folder`` if missing (as saving would) and write a temporary file in it."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise CalibrationError(f"{name} must be a directory; {existing} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:  # permissions, a read-only file system, a full disk
        raise CalibrationError(f"cannot write in {name} {folder}: {e.strerror or e}") from None
