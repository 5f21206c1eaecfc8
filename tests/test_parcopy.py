"""The native copy pool (src/autooffload/_parcopy.c): exact copies, threads, fork, bad input."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

P = pytest.importorskip("autooffload._parcopy", reason="the optional C extension is not built")


def _copy_and_check(n: int, threads: int, min_part: int, offset: int, rng, nontemporal: bool = False,
                    src_offset: int = 0, split: int = 1, spin_us: int = 0) -> None:
    src = rng.integers(0, 256, n + src_offset, dtype=np.uint8)[src_offset:]
    dst = np.full(n + offset + 16, 0xA5, np.uint8)  # poisoned: bytes outside the range must stay
    P.copy(dst.ctypes.data + offset, src.ctypes.data, n, threads, min_part, nontemporal, split, spin_us)
    assert np.array_equal(dst[offset : offset + n], src)
    assert (dst[:offset] == 0xA5).all() and (dst[offset + n :] == 0xA5).all()


def _errors_of_callers_at_once(caller, n: int) -> list[AssertionError]:
    """``caller(seed)`` in ``n`` threads at once (seeds 0 to n-1); the AssertionErrors they raised."""
    errors: list[AssertionError] = []

    def run(seed):
        try:
            caller(seed)
        except AssertionError as e:  # pragma: no cover - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return errors


@pytest.mark.parametrize("n", [1, 7, 4095, 4096, 4097, 65536 * 3 + 5, (1 << 20) + 3, 8 << 20])
@pytest.mark.parametrize("threads", [1, 2, 5, 16])
def test_copies_exactly_at_any_size_thread_count_and_alignment(n, threads):
    rng = np.random.default_rng(n * 31 + threads)
    _copy_and_check(n, threads, 4096, offset=3, rng=rng)
    _copy_and_check(n, threads, 1 << 20, offset=0, rng=rng)


@pytest.mark.parametrize("n", [1, 15, 16, 63, 64, 65, 127, 200, 4097, 65536 * 3 + 5, (1 << 20) + 3])
@pytest.mark.parametrize("offset,src_offset", [(0, 0), (1, 0), (15, 7), (8, 3), (3, 13)])
def test_nontemporal_copies_exactly_at_any_size_and_alignment(n, offset, src_offset):
    # the streaming stores need a 16-byte aligned destination: a head and a tail go by memcpy
    rng = np.random.default_rng(n * 7 + offset)
    for threads in (1, 4):
        _copy_and_check(n, threads, 4096, offset, rng, nontemporal=True, src_offset=src_offset)


def test_many_callers_at_once_each_get_their_copy():
    # One copy uses the pool at a time; the others copy alone meanwhile. All must be exact.
    def caller(seed):
        rng = np.random.default_rng(seed)
        for _ in range(30):
            _copy_and_check(int(rng.integers(1, 3 << 20)), 8, 4096, int(rng.integers(0, 64)), rng)

    assert not _errors_of_callers_at_once(caller, 6)
    info = P.info()
    assert info["workers"] >= 1 and info["shared"] >= 1


def test_a_large_copy_waits_for_a_busy_pool_and_a_small_one_copies_alone():
    # Threads copying large blocks at once: each waits for the pool when it is busy (alone it
    # would run on one core while the other has the memory bandwidth), so none copies alone.
    big = 16 << 20

    def callers(n: int, count: int) -> dict:
        before = P.info()
        start = threading.Barrier(count)

        def caller(seed):
            rng = np.random.default_rng(seed)
            start.wait()
            for _ in range(8):
                _copy_and_check(n, 4, 4096, 0, rng)

        assert not _errors_of_callers_at_once(caller, count)
        after = P.info()
        return {k: after[k] - before[k] for k in ("shared", "alone", "waited")}

    copies = callers(big, 3)
    assert copies["alone"] == 0 and copies["shared"] == 24
    assert copies["waited"] <= 24
    copies = callers(64 << 10, 4)  # small copies: a busy pool is not waited for
    assert copies["shared"] + copies["alone"] == 32


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_copies_with_its_own_workers():
    _copy_and_check(4 << 20, 8, 4096, 0, np.random.default_rng(1))  # workers started in the parent
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            _copy_and_check(4 << 20, 8, 4096, 5, np.random.default_rng(2))
            os._exit(0 if P.info()["workers"] >= 1 else 2)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_spinning_threads_copy_exactly_and_go_to_sleep_after_their_spin():
    # pool_spin_us: the workers spin for the next copy before sleeping; copies back to back and
    # from several callers stay exact, and the spin ends (no core is held once it has passed).
    rng = np.random.default_rng(5)
    for n in (4097, (1 << 20) + 3, 8 << 20):
        for _ in range(5):
            _copy_and_check(n, 4, 4096, 0, rng, split=4, spin_us=2000)

    def caller(seed):
        r = np.random.default_rng(seed)
        for _ in range(20):
            _copy_and_check(int(r.integers(1, 3 << 20)), 4, 4096, 0, r, bool(seed % 2), split=2, spin_us=500)

    assert not _errors_of_callers_at_once(caller, 4)
    _copy_and_check(8 << 20, 4, 4096, 0, rng, spin_us=1000)
    import time
    time.sleep(0.05)  # the 1 ms spin is over
    cpu = time.process_time()
    time.sleep(0.2)
    # sleeping workers use no CPU; three that never stopped spinning would use ~0.6 s
    assert time.process_time() - cpu < 0.05


_SPIN_PROBE = """
import sys, time
import numpy as np
from autooffload import _parcopy as P
threads, spin = int(sys.argv[1]), int(sys.argv[2])
a = np.ones(64 << 20, np.uint8); b = np.empty_like(a)
P.copy(b.ctypes.data, a.ctypes.data, a.nbytes, threads, 4096, False, 1, 0)  # start the workers
time.sleep(0.1)
# 16 parts a thread: the worker takes some even where it wakes milliseconds late (only a worker
# that took part spins)
P.copy(b.ctypes.data, a.ctypes.data, a.nbytes, 2, 4096, False, 16, spin)
cpu = time.process_time()
time.sleep(0.06)
print(time.process_time() - cpu)
"""


def _cpu_after_a_spinning_copy(pool_threads: int, spin_us: int) -> float:
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _SPIN_PROBE, str(pool_threads), str(spin_us)], capture_output=True,
                         text=True, check=True, timeout=60)
    return float(out.stdout)


def test_the_pool_spins_for_the_time_asked_and_not_where_it_has_more_threads_than_cores():
    # A fresh process each: the pool's size is the largest any copy of the process asked for.
    assert _cpu_after_a_spinning_copy(2, 0) < 0.02  # parked at once
    # One worker spins through the 60 ms. On a loaded machine the caller may still have copied
    # every part before the worker woke (then it parks at once, as it should): a few tries.
    assert any(_cpu_after_a_spinning_copy(2, 100_000) > 0.02 for _ in range(3))
    if len(os.sched_getaffinity(0)) < 64:
        # 63 workers on fewer cores: every copy already wakes more threads than there are cores
        assert _cpu_after_a_spinning_copy(64, 100_000) < 0.02


def test_bad_input_is_refused_with_a_clear_error():
    a = np.zeros(1 << 16, np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        P.copy(a.ctypes.data + 100, a.ctypes.data, 1000, 4)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        P.copy(a.ctypes.data, a.ctypes.data + 4096, 100, 0)
    with pytest.raises(ValueError, match="null address"):
        P.copy(0, a.ctypes.data, 100, 2)
    with pytest.raises(OverflowError):
        P.copy(-1, a.ctypes.data, 100, 2)
    with pytest.raises(OverflowError):
        P.copy(a.ctypes.data, a.ctypes.data + 4096, -5, 2)
    with pytest.raises(ValueError, match="spin_us must be in"):
        P.copy(a.ctypes.data, a.ctypes.data + 4096, 100, 2, 4096, False, 1, -1)
    P.copy(0, 0, 0, 2)  # nothing to copy: nothing checked, nothing done
