"""The copy engine's tuning as data (issue 14): the search (_copytune), the profile's CopyTuning,
the engine applying it (_transfer.apply_tuning, through _profiles.resolve), and `show`.

The search runs on a synthetic engine: each path's time is a function of size and knobs, and a
virtual clock advances by it, so the expected choice is known exactly.
"""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
from pydantic import ValidationError

from autooffload import _copytune as C, _transfer as T, cli
from autooffload._profiles import BackendTiming, CopyRate, CopyTuning, Curve, Profile, load_profile, resolve, save_profile

KiB, MiB, GiB = C.KiB, C.MiB, C.GiB


# ---------------------------------------------------------------------------------------------
# choose_ranges: path thresholds from a grid of times
# ---------------------------------------------------------------------------------------------
SIZES = [4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB]


def times_for(best: list[str], direction_best: dict[str, list[str]] | None = None) -> dict:
    """Times where ``best[i]`` takes 1 s at size i and every other path 2 s."""
    out = {}
    for d in ("h2d", "d2h"):
        b = (direction_best or {}).get(d, best)
        out[d] = {p: [1.0 if b[i] == p else 2.0 for i in range(len(SIZES))] for p in C.PATHS}
    return out


path_of = C.path_of  # the engine's rule for a contiguous array


@pytest.mark.parametrize("best", [
    ["direct", "staged", "workers", "workers"],
    ["direct", "direct", "staged", "staged"],
    ["staged", "staged", "staged", "register"],
    ["direct", "workers", "workers", "register"],
    ["workers", "workers", "workers", "workers"],
])
def test_choose_ranges_sends_every_size_down_its_fastest_path(best):
    knobs = C.choose_ranges(SIZES, times_for(best))
    for i, n in enumerate(SIZES):
        for d in ("h2d", "d2h"):
            assert path_of(knobs, n, d) == best[i], (n, d, knobs)


def test_choose_ranges_per_direction_register_and_direct():
    knobs = C.choose_ranges(SIZES, times_for([], {"h2d": ["direct", "direct", "workers", "workers"],
                                                   "d2h": ["direct", "workers", "workers", "register"]}))
    assert knobs["h2d_register_min"] == 0 and knobs["d2h_register_min"] > 64 * MiB
    assert [path_of(knobs, n, "h2d") for n in SIZES] == ["direct", "direct", "workers", "workers"]
    assert [path_of(knobs, n, "d2h") for n in SIZES] == ["direct", "workers", "workers", "register"]


def test_choose_ranges_ignores_unmeasured_paths_and_rejects_no_sizes():
    t = times_for(["staged"] * 4)
    for d in t:
        t[d]["register"] = [None] * 4
    assert all(path_of(C.choose_ranges(SIZES, t), n, "h2d") == "staged" for n in SIZES)
    with pytest.raises(ValueError, match="at least one size"):
        C.choose_ranges([], t)


def test_path_knobs_rejects_unknown_paths():
    with pytest.raises(ValueError, match="unknown copy path 'dma'"):
        C.path_knobs("dma")


# ---------------------------------------------------------------------------------------------
# The search on a synthetic engine with a virtual clock
# ---------------------------------------------------------------------------------------------
class SyntheticEngine:
    """Seconds per copy by path (the engine's rules on the configured knobs) and size."""

    def __init__(self, rate_GBps: dict[str, float], fixed_s: dict[str, float] | None = None, chunk_gain: float = 1.5,
                 best_worker_chunk: int = 32 * MiB, best_staged_piece: int | None = None,
                 nontemporal_gain: dict[str, float] | None = None, pinned_GBps: float | None = None,
                 parts_gain: dict[str, float] | None = None, spin_gain: dict[str, float] | None = None):
        self.spin_gain = spin_gain or {}  # staged copies with pool_spin_us > 0: rate x this
        self.nontemporal_gain = nontemporal_gain or {}  # staged copies with {d}_nontemporal on: rate x this
        self.parts_gain = parts_gain or {}  # staged copies with parts_per_thread > 1: rate x this
        self.pinned_GBps = pinned_GBps  # a DMA from pinned memory (None: the engine offers none)
        self.chunk_gain = chunk_gain  # the workers with best_worker_chunk chunks are this much faster
        self.best_worker_chunk = best_worker_chunk
        self.best_staged_piece = best_staged_piece  # the staged path with pieces of this size, as much
        self.t = 0.0
        self.knobs: dict[str, int] = {}
        self.rate = rate_GBps
        self.fixed = fixed_s or {}
        self.configured: list[dict] = []
        self.defaults = dict(vars(T._Tuning()))  # dataclass fields, today's defaults

    def current(self) -> dict:
        return {**self.defaults, **self.knobs}

    def copy(self, n: int, d: str) -> None:
        k = self.current()
        p = path_of(k, n, d)
        worker_chunk = min(k.get("worker_chunk_bytes") or k["chunk_bytes"], k["chunk_bytes"])
        rate = self.rate[p] * (self.chunk_gain if p == "workers" and worker_chunk == self.best_worker_chunk else 1.0)
        if p == "staged" and k["chunk_bytes"] == self.best_staged_piece:
            rate *= self.chunk_gain
        if p == "staged" and k.get(f"{d}_nontemporal"):
            rate *= self.nontemporal_gain.get(d, 1.0)
        if p == "staged" and k.get("parts_per_thread", 1) > 1:
            rate *= self.parts_gain.get(d, 1.0)
        if p == "staged" and k.get("pool_spin_us", 0) > 0:
            rate *= self.spin_gain.get(d, 1.0)
        self.t += self.fixed.get(p, 1e-4) + n / (rate * 1e9)

    def engine(self) -> C.Engine:
        def configure(knobs):
            self.knobs = dict(knobs)
            self.configured.append(dict(knobs))

        def memcpy(dst, src, n, k):
            self.t += n / (min(k, 8) * 5e9)  # 5 GB/s per thread, flat from 8 threads

        def dma(dev, buf, direction):
            self.t += 1e-5 + dev[1] / (self.pinned_GBps * 1e9)

        pinned = self.pinned_GBps is not None
        return C.Engine(
            to_device=lambda h: (self.copy(h.nbytes, "h2d"), ("dev", h.nbytes))[1],
            to_host=lambda dev: (self.copy(dev[1], "d2h"), np.empty(0))[1],
            sync=lambda: None, configure=configure, defaults=lambda: dict(self.defaults), cores=16, memcpy=memcpy,
            clock=lambda: self.t, dma=dma if pinned else None,
            alloc_pinned=(lambda n: (np.empty(0, np.uint8), lambda: None)) if pinned else None,
        )


PLAN = C.SearchPlan("test", (4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB), 256 * MiB, (8 * MiB, 32 * MiB), (0, 64 * MiB),
                    16 * MiB, 2, 1e9)


def test_search_finds_the_fastest_path_per_size_and_beats_the_defaults():
    # Direct is fast to 16 MiB (a small fixed cost); register streams at 50 GB/s after 1 ms.
    syn = SyntheticEngine({"direct": 12, "staged": 20, "workers": 25, "register": 50},
                          {"direct": 1e-5, "staged": 2e-4, "workers": 5e-4, "register": 1e-3})
    r = C.search(syn.engine(), PLAN)
    assert r.host_bound["threads"] == 8  # the fewest threads within 5% of the host bound both ways
    assert r.knobs["threads"] in (8, 16)  # the synthetic engine does not care which
    assert r.knobs["chunk_bytes"] == 32 * MiB  # the workers' better chunk
    paths = [path_of(r.knobs, n, "h2d") for n in PLAN.sizes]
    assert paths[0] == "direct" and paths[-1] == "register", (paths, r.log)
    for row in r.rates:
        assert row["h2d_GBps"] >= row["default_h2d_GBps"] * 0.999
    assert r.rates[-1]["h2d_GBps"] > 1.5 * r.rates[-1]["default_h2d_GBps"]
    assert syn.configured[-1] == {}, "the search leaves the engine on its defaults"
    assert r.host_bound["best"]["to_pinned"] == pytest.approx(40.0)


def test_where_the_staged_path_wins_the_workers_keep_their_own_chunk():
    # The H200's case: staged pieces of 32 MiB win at the large size, while the workers, which
    # still take what lies above the staged range, are faster with 8 MiB chunks.
    syn = SyntheticEngine({"direct": 5, "staged": 40, "workers": 20, "register": 10}, chunk_gain=1.5,
                          best_worker_chunk=8 * MiB, best_staged_piece=32 * MiB)
    r = C.search(syn.engine(), PLAN)
    assert r.knobs["worker_chunk_bytes"] == 8 * MiB, r.log
    tuned = T._Tuning(**{k: v for k, v in r.knobs.items() if k in T.tuning_knobs()})
    assert T.chunk_size_for(4 << 30, tuned) == 8 * MiB  # 4 GiB through the workers: 8 MiB chunks
    assert T.chunk_size_for(4 << 30, T._Tuning(chunk_bytes=32 * MiB)) == 32 * MiB  # without the knob


def test_search_turns_non_temporal_stores_on_per_direction_where_they_are_faster():
    syn = SyntheticEngine({"direct": 5, "staged": 40, "workers": 20, "register": 10},
                          nontemporal_gain={"h2d": 1.3, "d2h": 0.8})
    r = C.search(syn.engine(), PLAN)
    assert r.knobs["h2d_nontemporal"] == 1 and r.knobs["d2h_nontemporal"] == 0, r.log
    assert any(line.startswith("h2d_nontemporal: on") for line in r.log)
    assert any(line.startswith("d2h_nontemporal: off") for line in r.log)
    # with a slice of its own: measured even where the ranges' step spent the budget
    syn = SyntheticEngine({"direct": 5, "staged": 40, "workers": 20, "register": 10}, nontemporal_gain={"h2d": 1.3})
    tiny = C.SearchPlan("tiny", PLAN.sizes, PLAN.big, PLAN.chunks, PLAN.register_chunks, 16 * MiB, 2, 0.05)
    r = C.search(syn.engine(), tiny)
    assert any("budget spent" in line for line in r.log) and r.knobs["h2d_nontemporal"] == 1, r.log
    # measured only where the chosen ranges stage: nowhere, so never turned on
    syn = SyntheticEngine({"direct": 50, "staged": 1, "workers": 20, "register": 1}, nontemporal_gain={"h2d": 2.0})
    r = C.search(syn.engine(), PLAN)
    assert not any(C.path_of(r.knobs, n, "h2d") == "staged" for n in PLAN.sizes), r.log
    assert r.knobs["h2d_nontemporal"] == 0


@pytest.mark.parametrize("knob, on, gain, gains, expected", [
    # one knob for both directions: the gains add up
    ("parts_per_thread", C.PARTS_PER_THREAD, "parts_gain", {"h2d": 1.10, "d2h": 0.97}, C.PARTS_PER_THREAD),
    ("parts_per_thread", C.PARTS_PER_THREAD, "parts_gain", {"h2d": 0.95, "d2h": 1.02}, 1),
    ("parts_per_thread", C.PARTS_PER_THREAD, "parts_gain", {}, 1),  # no difference: one part a thread, as before
    ("pool_spin_us", C.POOL_SPIN_US, "spin_gain", {"h2d": 1.05, "d2h": 1.10}, C.POOL_SPIN_US),
    ("pool_spin_us", C.POOL_SPIN_US, "spin_gain", {"h2d": 1.04, "d2h": 0.90}, 0),
    ("pool_spin_us", C.POOL_SPIN_US, "spin_gain", {}, 0),  # no difference: the threads sleep at once, as before
])
def test_search_weighs_a_pool_knob_over_both_directions(knob, on, gain, gains, expected):
    syn = SyntheticEngine({"direct": 5, "staged": 40, "workers": 20, "register": 10}, **{gain: gains})
    r = C.search(syn.engine(), PLAN)
    assert r.knobs[knob] == expected, r.log
    assert any(line.startswith(f"{knob}: {expected} (log gain") for line in r.log), r.log
    # weighed where the chosen ranges stage, on the knobs chosen before it
    assert any(c.get(knob) == on for c in syn.configured)


@pytest.mark.parametrize("register_fixed_s, expected, after", [
    # cost / saving of a copy in and out at 1 / 4 / 16 MiB, as the search measures them:
    (2e-5, 1 * MiB, 2),  # pinning in place is the fastest first copy: 1.0 everywhere, the second copy
    (2e-4, 1 * MiB, 3),  # 380 us to pin and unpin: 5.1 / 1.3 / 1.0; the third copy keeps all within 3x
    (2.5e-3, 16 * MiB, 4),  # 4.98 ms: 67 / 17 / 4.2; 1 and 4 MiB above PIN_AFTER_MAX; ceil(4.2)
    (2e-2, 32 * MiB, 16),  # 40 ms: 536 / 134 / 34, nowhere within PIN_AFTER_MAX: from twice 16 MiB, late
])
def test_search_pins_arrays_copied_again_once_their_copies_paid_for_it(register_fixed_s, expected, after):
    # First copies at 12 GB/s, a pinned DMA at 50, pinning in place per copy at the DMA's rate
    # plus a fixed cost per pin and unpin.
    syn = SyntheticEngine({"direct": 12, "staged": 12, "workers": 12, "register": 50},
                          {"direct": 1e-5, "staged": 1e-5, "workers": 1e-5, "register": register_fixed_s}, pinned_GBps=50)
    r = C.search(syn.engine(), PLAN)
    assert r.knobs["pin_reused_min"] == r.knobs["pin_results_min"] == expected, r.log
    assert r.knobs["pin_after_copies"] == after, r.log
    assert f"pinned on reuse from {expected // MiB} MiB, at the copy that moves {after} times its bytes" in r.log, r.log


def test_pinning_on_reuse_is_weighed_after_the_fallback_to_the_defaults_and_kept():
    # Review findings: the check against the defaults (first copies) cannot see pinning on
    # reuse, and its fallback reset the measured threshold; weighed before it, the threshold was
    # measured against first copies of knobs the fallback then threw away.
    syn = SyntheticEngine({"direct": 10, "staged": 10, "workers": 10, "register": 10},
                          {"direct": 1e-5, "staged": 1e-5, "workers": 1e-5, "register": 2e-2}, chunk_gain=1.0,
                          pinned_GBps=50)

    def slower_unless_default(n, d, real=syn.copy):
        real(n, d)
        if any(k not in ("pin_reused_min", "pin_results_min") and v != syn.defaults[k] for k, v in syn.knobs.items()):
            syn.t += 0.1 * n / 10e9

    syn.copy = slower_unless_default
    r = C.search(syn.engine(), PLAN)
    assert any("keeping the defaults" in line for line in r.log), r.log
    assert r.knobs["pin_reused_min"] == r.knobs["pin_results_min"] == 32 * MiB
    assert r.knobs["pin_after_copies"] == C.PIN_AFTER_MAX  # pinning costs 33 copies' saving at 16 MiB
    assert {k: v for k, v in r.knobs.items() if not k.startswith("pin_")} == \
        {k: int(v) for k, v in syn.defaults.items() if not k.startswith("pin_")}


def test_a_size_that_fails_or_lies_past_the_plan_decides_nothing_and_the_search_goes_on():
    syn = SyntheticEngine({"direct": 12, "staged": 12, "workers": 12, "register": 50},
                          {"direct": 1e-5, "staged": 1e-5, "workers": 1e-5, "register": 2e-5}, pinned_GBps=50)
    eng = syn.engine()
    real_alloc = eng.alloc_pinned

    def alloc(n):
        if n == 1 * MiB:
            raise MemoryError("cudaHostAlloc: out of memory")
        return real_alloc(n)

    eng.alloc_pinned = alloc
    small = C.SearchPlan("small", (4 * MiB,), 4 * MiB, (8 * MiB,), (0,), 4 * MiB, 2, 1e9)
    r = C.search(eng, small)
    assert any("at 1 MiB failed: MemoryError" in line for line in r.log), r.log
    assert not any("at 16 MiB" in line for line in r.log)  # beyond the plan's largest size
    assert r.knobs["pin_reused_min"] == 4 * MiB  # decided by the one size measured
    step: list[str] = []

    def alloc_until_step_5(n):  # the host bound's and the pinned limit's buffers, then none
        if step and step[-1] == "pinning on reuse":
            raise MemoryError("cudaHostAlloc: out of memory")
        return real_alloc(n)

    eng.alloc_pinned = alloc_until_step_5
    r = C.search(eng, small, progress=step.append)
    assert r.knobs["pin_reused_min"] == syn.defaults["pin_reused_min"], r.log  # nothing measured: defaults


def test_without_a_pinned_dma_the_search_leaves_pinning_on_reuse_as_it_is():
    syn = SyntheticEngine({"direct": 12, "staged": 20, "workers": 25, "register": 50})
    r = C.search(syn.engine(), PLAN)
    assert r.knobs["pin_reused_min"] == syn.defaults["pin_reused_min"]
    assert not any("pinning on reuse" in line for line in r.log)


def test_search_keeps_the_defaults_when_nothing_beats_them():
    syn = SyntheticEngine({"direct": 10, "staged": 10, "workers": 10, "register": 10}, chunk_gain=1.0)

    def slower_unless_default(n, d, real=syn.copy):
        real(n, d)
        if syn.knobs:  # any change from the defaults costs 10%
            syn.t += 0.1 * n / 10e9

    syn.copy = slower_unless_default
    r = C.search(syn.engine(), PLAN)
    assert r.knobs == {k: int(v) for k, v in syn.defaults.items()}
    assert any("keeping the defaults" in line for line in r.log)


def test_search_stops_within_its_budget_and_still_checks_against_the_defaults():
    syn = SyntheticEngine({"direct": 10, "staged": 20, "workers": 25, "register": 5})
    plan = C.SearchPlan("tiny", PLAN.sizes, PLAN.big, PLAN.chunks, PLAN.register_chunks, 16 * MiB, 2, 0.05)
    r = C.search(syn.engine(), plan)
    assert any("budget spent" in line for line in r.log)
    assert len(r.rates) == len(plan.sizes)  # the check against the defaults always runs
    assert set(r.knobs) == set(syn.defaults)


def test_plans_cap_sizes_to_memory():
    plan = C.SearchPlan.default().capped(300 * MiB)
    assert max(plan.sizes) <= 300 * MiB and plan.big <= 300 * MiB and plan.host_bound_bytes <= 300 * MiB
    assert C.SearchPlan.quick().budget_s < C.SearchPlan.default().budget_s <= 60


def test_host_bound_with_numpy_threads_measures_every_way():
    eng = C.Engine(to_device=lambda h: h, to_host=lambda d: d, sync=lambda: None, configure=lambda k: None,
                   defaults=dict, cores=2)
    b = C.host_bound(eng, 1 * MiB, threads=(1, 2), reps=1)
    assert set(b["by_threads"]) == {"1", "2"} and b["threads"] in (1, 2)
    assert all(v > 0 for r in b["by_threads"].values() for v in r.values())


# ---------------------------------------------------------------------------------------------
# The engine applying a tuning
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def restore_tuning():
    yield
    T.apply_tuning(None)


def test_a_profiles_pin_after_copies_reaches_the_pin_cache_and_kept_results(restore_tuning):
    from autooffload import _hostmem, _pincache

    T.apply_tuning({"pin_after_copies": 4}, "p.json")
    assert _pincache.cache.pin_after == 4.0 and _hostmem.results.pin_after == 4
    T.apply_tuning(None)  # an older profile, without the knob: the default, the second copy
    assert _pincache.cache.pin_after == 2.0 and _hostmem.results.pin_after == 2
    with pytest.raises(ValueError, match="pin_after_copies must be >= 2"):
        T.apply_tuning({"pin_after_copies": 1}, "p.json")


def test_pin_after_for_keeps_the_worst_case_least_over_the_sizes():
    # One size: pinned at floor or ceil of the ratio (rent or buy), below twice the least; never
    # at the first copy.
    assert C.pin_after_for([3.11]) == 3 and C.pin_regret(3, 3.11) < C.pin_regret(4, 3.11) < 2
    assert C.pin_after_for([0.3]) == 2 and C.pin_after_for([1e9]) == C.PIN_AFTER_MAX
    assert C.pin_after_for([0.0, 1.5]) == 2  # pinning measured free at one size (review finding: divided by 0)
    # The H200's session-11 ratios: the second copy (2.06x at worst; 2.30x at the third).
    ratios = [2.54, 1.54, 3.11]
    assert C.pin_after_for(ratios) == 2
    assert max(C.pin_regret(2, r) for r in ratios) == pytest.approx(4.11 / 2)
    # Whatever the number of copies k, pinning at N costs at most pin_regret(N, r) x the least.
    for r in (0.5, 1.0, 1.54, 3.11, 7.0):
        for n in range(2, 10):
            worst = max((k if k < n else n - 1 + r) / min(k, r) for k in range(1, 50))
            assert worst <= C.pin_regret(n, r) + 1e-12


def test_apply_tuning_over_the_defaults_skips_unknown_knobs(restore_tuning):
    skipped = T.apply_tuning({"chunk_bytes": 32 * MiB, "future_knob": 3}, "p.json")
    assert skipped == ["future_knob"]
    assert T._tuning() == T.default_tuning().__class__(**{**vars(T.default_tuning()), "chunk_bytes": 32 * MiB})
    assert T.tuning_source() == "p.json"
    T.apply_tuning(None)
    assert T._tuning() == T.default_tuning() and T.tuning_source() == "defaults"


@pytest.mark.parametrize("bad", [{"threads": 0}, {"chunk_bytes": -1}, {"staged_max": 1.5}, {"threads": True},
                                 {"parts_per_thread": 0}, {"parts_per_thread": 65}, {"pool_spin_us": 100_001}])
def test_apply_tuning_rejects_bad_values(bad, restore_tuning):
    with pytest.raises(ValueError, match="tuning knob"):
        T.apply_tuning(bad)


def test_applying_the_same_tuning_again_keeps_the_pool(restore_tuning, monkeypatch):
    T.apply_tuning({"threads": 3})
    released = []
    monkeypatch.setattr(T, "release_pinned_pool", lambda **k: released.append(k))
    T.apply_tuning({"threads": 3})
    assert not released
    T.apply_tuning({"threads": 4})
    assert released == [{"keep_results": True}]
    T.apply_tuning({"threads": 4, "h2d_nontemporal": 1, "staged_max": 1 << 30})  # no pool or threads change
    assert released == [{"keep_results": True}] and T._tuning().h2d_nontemporal == 1
    T.apply_tuning({"threads": 4, "chunk_bytes": 16 << 20})
    assert len(released) == 2
    # a pool of another size (left by a copy planned under an earlier tuning) goes at any change
    monkeypatch.setattr(T, "_pool", types.SimpleNamespace(buffer_bytes=32 << 20))
    T.apply_tuning({"threads": 4, "chunk_bytes": 16 << 20, "h2d_nontemporal": 1})
    assert len(released) == 3


def device_timing(tuning: CopyTuning | None) -> BackendTiming:
    c = Curve(nbytes=[1.0, 1e9], seconds=[1e-5, 1e-1])
    return BackendTiming(memory="device", kinds={"elementwise": c}, h2d=c, d2h=c, transfer_engine=T.ENGINE_NAME,
                         copy_tuning=tuning)


def tuned_profile(knobs: dict | None) -> Profile:
    c = Curve(nbytes=[1.0, 1e9], seconds=[1e-6, 1.0])
    tuning = None if knobs is None else CopyTuning(
        engine=T.ENGINE_NAME, knobs=knobs, rates=[CopyRate(nbytes=GiB, h2d_GBps=41.6, d2h_GBps=41.5,
                                                            default_h2d_GBps=17.9, default_d2h_GBps=16.2)],
        host_bound_GBps={"to_pinned": 35.4, "from_pinned": 36.7, "from_pinned_fresh": 25.0},
        pinned_GBps={"h2d": 55.4, "d2h": 55.3}, search_s=10.3)
    return Profile(backends={"numpy": BackendTiming(memory="host", kinds={"elementwise": c}), "cupy": device_timing(tuning)})


def test_resolving_a_profile_hands_its_tuning_to_the_engine(tmp_path, monkeypatch, restore_tuning):
    path = save_profile(tuned_profile({"threads": 5, "chunk_bytes": 16 * MiB}), tmp_path / "p.json")
    monkeypatch.setenv("AUTOOFFLOAD_PROFILE", str(path))
    resolve.reset_active_profile()
    try:
        resolve.active_profile()
        assert T._tuning().threads == 5 and T._tuning().chunk_bytes == 16 * MiB
        assert T.tuning_source() == str(path)
        # A profile without a tuning (older files, other machines): today's defaults.
        save_profile(tuned_profile(None), path)
        resolve.reset_active_profile()
        resolve.active_profile()
        assert T._tuning() == T.default_tuning()
    finally:
        resolve.reset_active_profile()


def test_a_tuning_the_engine_refuses_is_a_warning_and_keeps_the_defaults(restore_tuning, monkeypatch):
    from autooffload.errors import ProfileWarning

    p = tuned_profile({"threads": 0})  # the model allows >= 0; the engine needs >= 1
    with pytest.warns(ProfileWarning, match="copy tuning .* not usable"):
        resolve.apply_copy_tuning(p)
    assert T._tuning() == T.default_tuning()


def test_copy_tuning_round_trips_and_older_files_have_none(tmp_path):
    p = tuned_profile({"threads": 5})
    back = load_profile(save_profile(p, tmp_path / "p.json"))
    assert back.copy_tuning() == p.copy_tuning()
    raw = json.loads((tmp_path / "p.json").read_text())
    del raw["backends"]["cupy"]["copy_tuning"]  # a schema-2 file from before issue 14
    (tmp_path / "old.json").write_text(json.dumps(raw))
    assert load_profile(tmp_path / "old.json").copy_tuning() is None


@pytest.mark.parametrize("bad, match", [
    ({"knobs": {"threads": -1}}, "greater than or equal to 0"),
    ({"rates": [{"nbytes": 1024, "h2d_GBps": 0, "d2h_GBps": 1}]}, "greater than 0"),
    ({"pinned_GBps": {"h2d": math.inf}}, "finite"),
    ({"surprise": 1}, "Extra inputs"),
])
def test_copy_tuning_validation(bad, match):
    with pytest.raises(ValidationError, match=match):
        CopyTuning(engine="e", **bad)


def test_a_host_backend_has_no_copy_tuning():
    with pytest.raises(ValidationError, match="copy_tuning belong to a device backend"):
        BackendTiming(memory="host", copy_tuning=CopyTuning(engine="e"))


def test_show_prints_the_tuning_and_its_rates():
    knobs = {"threads": 5, "chunk_bytes": 32 * MiB, "staged_max": C.HUGE, "h2d_nontemporal": 1, "d2h_nontemporal": 0,
             "pin_reused_min": MiB}
    lines = cli._copy_tuning_lines(tuned_profile(knobs).model_dump(mode="json")["backends"]["cupy"]["copy_tuning"])
    text = "\n".join(lines)
    assert "chunk_bytes=32 MiB" in text and "threads=5" in text and "staged_max=any" in text
    assert "h2d_nontemporal=on" in text and "d2h_nontemporal=off" in text and "pin_reused_min=1 MiB" in text
    assert "1 GiB: 41.6 GB/s in, 41.5 out (defaults 17.9 / 16.2)" in text
    assert "pinned DMA 55.4 / 55.3" in text and "to pinned 35.4" in text
    assert "engine defaults" in cli._copy_tuning_lines(None)[0]
