"""The probes' results, kept per machine: ``<cache dir>/probe-<machine id>.json``.

One file holds this machine's host probe and GPU probe (``scaling.HostProbe``, ``GpuProbe``), with
the identity of the machine that measured them, so that later processes on the machine skip both
probes and decide the same way. Writes are atomic (``store.atomic_write``) and merge: the host
probe is written at the first decision, the GPU probe at the first GPU start, by the same or
another process. A file that cannot be read, is not a probe file, or was measured on another
machine is one ``ProfileWarning`` and is treated as absent (the probe runs afresh and replaces
it); it never fails a call. A probe that failed is not kept: the next process tries again.
"""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path
from typing import Any

from ..errors import ProfileWarning, warn_at_user_line
from .fingerprint import _cheap_identity, machine_id, this_machine_mismatch
from .model import Fingerprint
from .scaling import GpuProbe, HostProbe
from .store import atomic_write, cache_dir

PROBE_FORMAT = 1


def probe_cache_path() -> Path:
    """This machine's probe file: ``<cache dir>/probe-<machine id>.json``."""
    return cache_dir() / f"probe-{machine_id()}.json"


def _identity() -> dict[str, Any]:
    here, _ = _cheap_identity()
    return here.model_dump(include={"cpu_model", "cpu_cores", "gpu_name", "gpu_uuid"})


def _read_raw(path: Path) -> dict[str, Any] | None:
    """The file's object, or None (absent, or unusable: then one warning)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        return _unusable(path, f"cannot be read ({e})")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        return _unusable(path, f"is not valid JSON ({str(e).splitlines()[0][:80]})")
    if not isinstance(data, dict) or data.get("probe_format") != PROBE_FORMAT:
        return _unusable(path, f"is not a probe file of format {PROBE_FORMAT}")
    try:
        measured_on = Fingerprint.model_validate(data.get("machine", {}))
    except Exception:
        return _unusable(path, "names no valid machine")
    if mismatch := this_machine_mismatch(measured_on):
        return _unusable(path, f"was measured on another machine ({mismatch})")
    return data


def _unusable(path: Path, what: str) -> dict[str, Any] | None:
    warn_at_user_line(f"autooffload: probe cache {path} {what}; probing this machine afresh", ProfileWarning)
    return None


def read_probes() -> tuple[HostProbe | None, GpuProbe | None]:
    """This machine's cached (host probe, GPU probe); None for each one absent or unusable."""
    path = probe_cache_path()
    data = _read_raw(path)
    if data is None:
        return None, None
    host = gpu = None
    try:
        if data.get("host") is not None:
            host = HostProbe.from_json(data["host"])
        if data.get("gpu") is not None:
            gpu = GpuProbe.from_json(data["gpu"])
    except ValueError as e:
        _unusable(path, f"holds an invalid probe ({e})")
        return None, None
    return host, gpu


def write_probes(*, host: HostProbe | None = None, gpu: GpuProbe | None = None) -> Path | None:
    """Keep ``host`` and/or ``gpu`` in this machine's probe file, merged with what is there.

    Returns the path, or None where the cache dir cannot be written (a probe that cannot be kept
    is still used by this process; an INFO line says why)."""
    import logging

    try:
        path = probe_cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock

        with FileLock(str(path) + ".lock", timeout=5.0):  # two processes merging: one after the other
            existing = None
            with suppress(Exception):
                existing = _read_quietly(path)
            data: dict[str, Any] = {"probe_format": PROBE_FORMAT, "machine": _identity(),
                                    "host": (existing or {}).get("host"), "gpu": (existing or {}).get("gpu")}
            if host is not None:
                data["host"] = host.to_json()
            if gpu is not None:
                data["gpu"] = gpu.to_json()
            atomic_write(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))
        return path
    except Exception as e:  # a cache that cannot be written must not fail a call
        logging.getLogger("autooffload").info("autooffload: could not keep the probe's result (%s)", e)
        return None


def _read_quietly(path: Path) -> dict[str, Any] | None:
    """The file's object when it is this machine's probe file (no warning: it is about to be replaced)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("probe_format") != PROBE_FORMAT:
        return None
    if this_machine_mismatch(Fingerprint.model_validate(data.get("machine", {}))):
        return None
    for key, parse in (("host", HostProbe.from_json), ("gpu", GpuProbe.from_json)):
        if data.get(key) is not None:
            parse(data[key])  # raises on an invalid entry: then nothing of the old file is kept
    return data
