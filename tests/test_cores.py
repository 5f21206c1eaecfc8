"""Cores come from the CPU affinity capped by the cgroup quota, read from files we fake here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autooffload import _cores


def _cgroup_tree(tmp_path: Path, files: dict[str, str], proc_self: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_self)
    return root, proc


@pytest.mark.parametrize(
    ("files", "proc_self", "expected"),
    [
        ({"cpu.max": "max 100000\n"}, "0::/\n", None),  # v2, no quota
        ({"cpu.max": "150000 100000\n"}, "0::/\n", 1.5),  # v2 at the container's root
        ({"user.slice/job/cpu.max": "400000 100000\n", "cpu.max": "max 100000\n"}, "0::/user.slice/job\n", 4.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "2:cpu,cpuacct:/\n", None),  # v1, none
        ({"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
         "4:cpu,cpuacct:/docker/abc\n", 2.0),  # v1; the host's path is not visible in the container
        ({}, "", None),  # no cgroup file system at all
    ],
)
def test_cgroup_quota(tmp_path, files, proc_self, expected):
    root, proc = _cgroup_tree(tmp_path, files, proc_self)
    assert _cores.cgroup_quota(root, proc) == expected


def test_usable_cores_is_the_affinity_capped_by_the_quota_rounded_up(monkeypatch):
    monkeypatch.setattr(_cores, "affinity_cores", lambda: 16)
    monkeypatch.setattr(_cores, "cgroup_quota", lambda: 2.5)
    assert _cores.usable_cores() == 3
    monkeypatch.setattr(_cores, "cgroup_quota", lambda: 0.2)
    assert _cores.usable_cores() == 1
    monkeypatch.setattr(_cores, "cgroup_quota", lambda: None)
    assert _cores.usable_cores() == 16


def test_usable_cores_here_is_within_the_affinity():
    if hasattr(os, "sched_getaffinity"):
        assert 1 <= _cores.usable_cores() <= len(os.sched_getaffinity(0))


def test_os_cpu_count_is_read_only_by_the_cores_helper():
    # One place decides how many cores there are; the machine's count is only its last resort.
    package = Path(_cores.__file__).parent
    users = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "os.cpu_count" in p.read_text())
    assert users == ["_cores.py"]


@pytest.mark.parametrize(
    ("files", "proc_self", "expected"),
    [
        ({"memory.max": "max\n"}, "0::/\n", None),  # v2, no limit
        ({"memory.max": "4294967296\n"}, "0::/\n", 4 * 2**30),  # v2 at the container's root
        ({"user.slice/job/memory.max": "1073741824\n", "memory.max": "max\n"}, "0::/user.slice/job\n", 2**30),
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, "5:memory:/\n", None),  # v1, none
        ({"memory/memory.limit_in_bytes": "2147483648\n"}, "5:memory:/docker/abc\n", 2 * 2**30),
        ({}, "", None),  # no cgroup file system at all
    ],
)
def test_cgroup_memory_limit(tmp_path, files, proc_self, expected):
    root, proc = _cgroup_tree(tmp_path, files, proc_self)
    assert _cores.cgroup_memory_limit(root, proc) == expected


def test_usable_memory_is_the_ram_capped_by_the_limit(monkeypatch):
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(_cores, "cgroup_memory_limit", lambda: None)
    assert _cores.usable_memory() == ram
    monkeypatch.setattr(_cores, "cgroup_memory_limit", lambda: 2**30)
    assert _cores.usable_memory() == min(ram, 2**30)
    from autooffload import _hostmem, _pincache

    assert _pincache._default_max_pinned_bytes() == min(ram, 2**30) // 4
    assert _hostmem._default_max_free_bytes() == min(ram, 2**30) // 8
