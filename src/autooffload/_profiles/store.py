"""Where profiles live, and reading and writing them.

This machine's calibrated profile is ``<cache dir>/profile-<machine id>.json``; profiles
measured on real machines ship in ``shipped/`` beside this module. Reading validates every field
and turns any problem into one ``ProfileError`` naming the file; writing is atomic and locked.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import suppress
from pathlib import Path

from pydantic import ValidationError

from ..errors import CalibrationError, ProfileError
from .fingerprint import machine_id
from .model import MIGRATIONS, SCHEMA_VERSION, Profile, upgrade

CALIBRATE_HINT = "run `autooffload calibrate` to measure this machine"
SHIPPED_PROFILES_DIR = Path(__file__).resolve().parent / "shipped"


def cache_dir() -> Path:
    """``AUTOOFFLOAD_CACHE_DIR``, else ``platformdirs.user_cache_dir("autooffload")``."""
    explicit = os.environ.get("AUTOOFFLOAD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("autooffload"))


def default_profile_path() -> Path:
    """Where this machine's calibrated profile is kept: ``<cache dir>/profile-<machine id>.json``."""
    return cache_dir() / f"profile-{machine_id()}.json"


def profile_path() -> Path:
    """The profile file in use: ``AUTOOFFLOAD_PROFILE``, else this machine's default path."""
    explicit = os.environ.get("AUTOOFFLOAD_PROFILE")
    return Path(explicit).expanduser() if explicit else default_profile_path()


def shipped_profile_paths() -> list[Path]:
    """Profiles measured on real machines that ship inside the package (``autooffload/_profiles/shipped``)."""
    if not SHIPPED_PROFILES_DIR.is_dir():
        return []
    return sorted(SHIPPED_PROFILES_DIR.glob("*.json"))


LOCK_TIMEOUT_S = 60.0


def package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("autooffload")
    except metadata.PackageNotFoundError:
        return getattr(sys.modules.get("autooffload"), "__version__", "") or "0+unknown"


def _profile_error(path: Path | str, what: str) -> ProfileError:
    return ProfileError(f"profile {path}: {what}; {CALIBRATE_HINT} and write a fresh one")


def load_profile(path: str | os.PathLike) -> Profile:
    """Read and validate a profile file; ``ProfileError`` says what is wrong with it.

    A file of an older schema is migrated as it is read (see model.MIGRATIONS); one of a newer
    schema is refused.

    Does not check that the profile is this machine's: see ``this_machine_mismatch``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _profile_error(path, "no such file") from None
    except IsADirectoryError:
        raise _profile_error(path, "is a directory, not a profile file") from None
    except OSError as e:
        raise _profile_error(path, f"cannot be read ({e.strerror or e})") from None
    if not raw.strip():
        raise _profile_error(path, "is empty (an interrupted write?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _profile_error(path, "is not UTF-8 text; the file is corrupt") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()):
            raise _profile_error(path, f"ends in the middle of the JSON ({e.msg}); the file is truncated") from None
        raise _profile_error(path, f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); the file is corrupt") from None
    except RecursionError:
        raise _profile_error(path, "has JSON arrays or objects nested too deeply to read; the file is corrupt") from None
    except ValueError as e:  # an integer longer than Python reads (sys.get_int_max_str_digits())
        raise _profile_error(path, f"cannot be read as JSON ({str(e).split(';')[0]}); the file is corrupt") from None
    if not isinstance(data, dict):
        raise _profile_error(path, f"holds a JSON {type(data).__name__}, not a profile object")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _profile_error(path, f"has no integer schema_version (got {version!r}); it is not an autooffload profile")
    if version > SCHEMA_VERSION:
        raise _profile_error(
            path,
            f"has schema_version {version}, newer than this autooffload reads ({SCHEMA_VERSION}); "
            "upgrade autooffload, or",
        )
    if version < SCHEMA_VERSION and version not in MIGRATIONS:
        raise _profile_error(path, f"has the old schema_version {version} (this autooffload reads {SCHEMA_VERSION})")
    try:
        profile = Profile.model_validate(upgrade(data))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}{_given(err['input'])}" for err in e.errors()[:3]
        )
        more = f" (and {e.error_count() - 3} more)" if e.error_count() > 3 else ""
        read_as = f" (read from schema {version})" if version < SCHEMA_VERSION else ""
        raise _profile_error(path, f"does not match profile schema {SCHEMA_VERSION}{read_as}: {problems}{more}") from None
    return profile.with_source(str(path))


def _given(value: object) -> str:
    """The offending value of a field, where it is one number or word (a curve's message lists its points)."""
    if isinstance(value, (dict, list)):
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 40 else text[:37] + '...'})"


def profile_json(profile: Profile) -> str:
    """The file format: the model as indented JSON."""
    return profile.model_dump_json(indent=1) + "\n"


def save_profile(profile: Profile, path: str | os.PathLike | None = None) -> Path:
    """Write ``profile`` to ``path`` (default: ``profile_path()``) atomically; returns the path.

    A temp file in the same folder is written, fsynced and moved over the target with
    ``os.replace``, so a reader sees the old file or the new one, never half of one, even if
    this process dies mid-write. Writers also take ``<path>.lock`` (filelock: an OS lock,
    released if the holder dies, and portable beyond POSIX), so concurrent calibrations write
    one after the other.
    """
    from filelock import FileLock, Timeout

    target = Path(path).expanduser() if path is not None else profile_path()
    data = profile_json(profile).encode("utf-8")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock", timeout=LOCK_TIMEOUT_S):
            atomic_write(target, data)
    except Timeout:
        raise CalibrationError(f"cannot save profile {target}: {target}.lock held for over {LOCK_TIMEOUT_S:.0f} s") from None
    except OSError as e:
        raise CalibrationError(f"cannot save profile {target}: {e.strerror or e}") from None
    return target


def atomic_write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so that a reader sees the old file or the new one, never half of
    one: a temp file in the same folder, fsynced, moved over the target (``os.replace``). OSError
    propagates; the temp file is removed."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a profile is not a secret
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where directories cannot be opened."""
    with suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

