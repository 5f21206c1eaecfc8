"""How many CPU cores, and how much memory, this process may really use.

``os.cpu_count()`` counts the machine's cores. A process pinned to some of them
(``taskset``, ``numactl``, a batch scheduler) or in a container with a CPU quota
(``docker --cpus=4``, a Kubernetes limit) gets fewer, and sizing a thread pool by the
machine's count (16 copy workers in a 4-CPU container) makes threads wait on each other.
The quota is a time budget, not a set of cores, so it is rounded up: 1.5 CPUs run two
threads. Python 3.13's ``os.process_cpu_count()`` reads the affinity but not the quota.

Memory likewise: a container's limit (``docker --memory``, cgroup ``memory.max``) is what the
process may use, not the machine's RAM; the copy engine bounds the memory it keeps (_hostmem.py)
and pins in place (_pincache.py) by it.

Only the standard library, and read at call time (no cache): the copy engine reads it once
at import, the fingerprint once per profile.
"""

from __future__ import annotations

import math
import os
from contextlib import suppress
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def machine_cores() -> int:
    """All of the machine's cores (what ``autooffload info`` compares the usable count with)."""
    return max(1, os.cpu_count() or 1)


def affinity_cores() -> int:
    """Cores this process may be scheduled on (all of the machine's where affinity is unknown)."""
    with suppress(AttributeError, OSError):  # sched_getaffinity: Linux only
        return max(1, len(os.sched_getaffinity(0)))
    return machine_cores()


def _own_cgroup_paths(proc_self_cgroup: Path, controller: str = "cpu") -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy and in v1's ``controller``."""
    v2 = v1 = None
    with suppress(OSError, ValueError):
        for line in proc_self_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                v2 = path
            elif controller in controllers.split(","):
                v1 = path
    return v2, v1


def _candidates(root: Path, path: str | None) -> list[Path]:
    """The cgroup's own folder, then the mount's root: inside a container the process's path
    names the host's hierarchy while the container sees its own cgroup at the root."""
    folders = [root / path.lstrip("/")] if path and path != "/" else []
    return [*folders, root]


def cgroup_quota(root: Path = _CGROUP_ROOT, proc_self_cgroup: Path = _PROC_SELF_CGROUP) -> float | None:
    """CPUs' worth of time per period the cgroup quota allows, or None where none is set.

    cgroup v2: ``cpu.max`` holds "QUOTA PERIOD" or "max PERIOD". cgroup v1: ``cpu.cfs_quota_us``
    (-1: no quota) over ``cpu.cfs_period_us``, under the ``cpu`` (or ``cpu,cpuacct``) mount.
    """
    v2_path, v1_path = _own_cgroup_paths(proc_self_cgroup)
    for folder in _candidates(root, v2_path):
        with suppress(OSError, ValueError):
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for folder in _candidates(root / mount, v1_path):
            with suppress(OSError, ValueError):
                quota_us = int((folder / "cpu.cfs_quota_us").read_text())
                period_us = int((folder / "cpu.cfs_period_us").read_text())
                return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def usable_cores() -> int:
    """Cores this process can keep busy: its CPU affinity, capped by the cgroup CPU quota."""
    cores = affinity_cores()
    quota = cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores


def cgroup_memory_limit(root: Path = _CGROUP_ROOT, proc_self_cgroup: Path = _PROC_SELF_CGROUP) -> int | None:
    """Bytes of memory the cgroup allows this process, or None where no limit is set.

    cgroup v2: ``memory.max`` ("max": none). cgroup v1: ``memory.limit_in_bytes`` under the
    ``memory`` mount (a value of 2**62 or more: none)."""
    v2_path, v1_path = _own_cgroup_paths(proc_self_cgroup, "memory")
    for folder in _candidates(root, v2_path):
        with suppress(OSError, ValueError):
            text = (folder / "memory.max").read_text().strip()
            return None if text == "max" else int(text)
    for folder in _candidates(root / "memory", v1_path):
        with suppress(OSError, ValueError):
            limit = int((folder / "memory.limit_in_bytes").read_text())
            return None if limit >= 1 << 62 or limit <= 0 else limit
    return None


def usable_memory() -> int:
    """Bytes of memory this process can use: the machine's RAM, capped by the cgroup's limit."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = 8 * 1024**3
    limit = cgroup_memory_limit()
    return min(physical, limit) if limit is not None else physical
