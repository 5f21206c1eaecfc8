"""What each offloaded function's calls really cost, per backend and size: kept, estimated, saved.

A *cell* is one (backend, host-bytes bucket, device-bytes bucket) of one function: the same
half-octave buckets the decision cache uses, so a learned estimate answers exactly the calls one
cached decision covers. Each cell keeps the last ``SAMPLES`` observed seconds, the count of all
observations, and the profile's prediction for that cell (to know how wrong the profile is for
this function). Its estimate is the median of the kept samples once ``TRUSTED`` of them exist;
the first observation of a cell is dropped (it pays one-off costs: a device twin, CuPy's kernel
compilation for these dtypes, first-touch page faults), as StarPU's history models drop the first
sample of a footprint. Two samples that disagree by more than ``AGREE`` (1.5x, StarPU's outlier
bound) wait for a third, and the median rejects outliers from then on without a threshold to tune
(StarPU's 1.5x rejection around the mean needs the mean to be right first).

A function is identified by module, qualified name and a hash of its code (bytecode, constants,
names), so an edited function starts fresh. Memory is bounded: ``SAMPLES`` per cell, ``CELLS``
per function (least recently observed dropped), ``FUNCTIONS`` per file.

Persistence: one JSON file per machine (the profile fingerprint's machine id) under the cache
dir, written atomically (temp file + ``os.replace``) under a file lock; a writer first merges what
other processes saved since it loaded (per cell: counts added, samples interleaved newest first),
so two processes never lose each other's samples. The file is read at the first decision of the
first learning function, saved once ``SAVE_EVERY`` new observations were made and
``SAVE_INTERVAL_S`` passed since the last save, and at exit (a save merges and rewrites the
whole file: 36 ms for 14 functions' cells; every 64 observations that cost each observed call
~0.6 ms, in the caller's thread). A crash loses at most that interval's samples. A corrupt or
foreign file is one warning and a fresh start, never a failed call.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Callable

from .errors import ProfileWarning, warn_at_user_line

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger("autooffload")

SAMPLES = 16  # kept per cell: a median of 16 moves only when the cost really changed
TRUSTED = 2  # samples (after the dropped first) before a cell's estimate replaces the profile
# ...if they agree within this factor; else one more (a median of 3 outvotes one outlier). On the
# H200 suite a pairwise distance at (1000, 16) settled on NumPy (4.6 ms) with the GPU measured at
# 0.95 ms by hand: a median of two samples is their mean, and one slow one decides it.
AGREE = 1.5
# A cold sample (the Numba tier's call after its threads went to sleep: 2.5-10x a warm call on
# the 2-core VM, and on the H200 the percentiles at 1e2 were learned at 38 us on the tier against
# 10 us warm, so NumPy's 30 us won) is dropped, unless this many in a row were: then the function
# is called that sparsely, and the cold cost is its real one. A dropped exploring call is charged
# to the exploration budget, and the next call explores again, warm (FunctionHistory.add). The
# first calls on a backend after another ran are cold too (_learn.SWITCH_COLD_CALLS).
COLD_DROPS = 3
CELLS = 256  # per function
FUNCTIONS = 2000  # per file
SAVE_EVERY = 64  # new observations between saves (and at exit)...
SAVE_INTERVAL_S = 30.0  # ...and at least this long since the last one
FORMAT = 1


def function_key(func: Callable) -> str:
    """module:qualname:hash of the code; functions without code (NumPy's own) by name only."""
    inner = getattr(func, "__func__", func)
    module = getattr(inner, "__module__", None) or "?"
    name = getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None) or type(inner).__name__
    code = getattr(inner, "__code__", None)
    if code is None:
        return f"{module}:{name}"
    import hashlib  # at a function's first decision, not at import
    import marshal

    try:
        digest = hashlib.sha1(marshal.dumps(code)).hexdigest()[:12]
    except ValueError:  # unmarshallable constants
        digest = hashlib.sha1(code.co_code + repr(code.co_consts).encode()).hexdigest()[:12]
    return f"{module}:{name}:{digest}"


class Cell:
    """Observations of one function on one backend in one size bucket."""

    __slots__ = ("samples", "count", "predicted", "dropped_first", "first_charge", "stamp", "cold_run", "last_kept")

    def __init__(self) -> None:
        self.samples: list[float] = []  # newest last, at most SAMPLES
        self.count = 0  # all observations, the dropped first included
        self.predicted: float | None = None  # the profile's prediction for this cell
        self.dropped_first = False
        # What the dropped first call was charged to exploring in this process (None: it was not
        # an exploring call), until the next sample says what a warm call costs (FunctionHistory.add).
        self.first_charge: float | None = None
        # The function's seconds in this process when this cell last got a sample (0.0 for a cell
        # read from the file): how long ago it was measured (set by _learn, for re-checks).
        self.stamp = 0.0
        self.cold_run = 0  # cold samples offered in a row (see add)
        self.last_kept = True  # whether the last observation was kept (add)

    def add(self, seconds: float, predicted: float | None, cold: bool = False) -> None:
        """Add one observation (``last_kept`` False where it was a cold one, dropped: COLD_DROPS)."""
        seconds = max(seconds, 1e-9)  # a coarse clock can read 0: estimates divide by these
        self.count += 1
        if predicted is not None:
            self.predicted = predicted
        self.last_kept = True
        if not self.dropped_first:
            self.dropped_first = True  # one-off costs: see the module docstring
            return
        if not cold:
            self.cold_run = 0
        elif self.cold_run < COLD_DROPS:
            self.cold_run += 1  # a start-up cost the calls that follow it do not pay: see COLD_DROPS
            self.last_kept = False
            return
        self.samples.append(seconds)
        if len(self.samples) > SAMPLES:
            del self.samples[0]

    @property
    def trusted(self) -> bool:
        """``TRUSTED`` samples that agree within ``AGREE``x, or one more (then the median outvotes
        an outlier: a kernel compiled on a new shape, a page-faulted first result)."""
        samples = self.samples
        if len(samples) > TRUSTED:
            return True
        return len(samples) == TRUSTED and max(samples) <= AGREE * min(samples)

    def estimate(self) -> float | None:
        return median(self.samples) if self.trusted else None

    def restart(self, seconds: float) -> None:
        """Keep only ``seconds``: a re-check found the cell's estimate out of date (the machine
        or the data changed), so it is measured afresh (untrusted until a second sample agrees)."""
        self.samples = [max(seconds, 1e-9)]

    def profile_error(self) -> float | None:
        """Observed / predicted: how wrong the profile is for this function here."""
        estimate = self.estimate()
        if estimate is None or not self.predicted:
            return None
        return estimate / self.predicted

    def to_json(self) -> dict:
        return {"samples": self.samples, "count": self.count, "predicted": self.predicted}

    @classmethod
    def from_json(cls, data: dict) -> "Cell":
        cell = cls()
        samples = [float(s) for s in data.get("samples", []) if isinstance(s, (int, float)) and s > 0]
        cell.samples = samples[-SAMPLES:]
        cell.count = max(int(data.get("count", 0)), len(cell.samples))
        predicted = data.get("predicted")
        cell.predicted = float(predicted) if isinstance(predicted, (int, float)) and predicted > 0 else None
        cell.dropped_first = cell.count > 0
        return cell

    def merged(self, other: "Cell", other_new: int) -> None:
        """Fold in ``other_new`` observations another process made since this one loaded."""
        if other_new <= 0:
            return
        fresh = other.samples[-other_new:]
        self.samples = (fresh + self.samples)[-SAMPLES:] if fresh else self.samples
        self.count += other_new
        if self.predicted is None:
            self.predicted = other.predicted


def median(values: list[float]) -> float:
    """statistics.median's, without importing statistics (and fractions, decimal) at import time
    (also the Numba tier's, backends/_numba_threads.py)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


CellKey = tuple[str, int, int]  # (backend, host-bytes bucket, device-bytes bucket)


class FunctionHistory:
    """One function's cells (thread-safe), plus what exploring it has cost so far."""

    def __init__(self, key: str):
        self.key = key
        self.cells: dict[CellKey, Cell] = {}
        self.loaded_counts: dict[CellKey, int] = {}  # counts as read from the file (for merging)
        self.observed_s = 0.0  # every observed second of this process (the exploration budget's base)
        self.explored_s = 0.0  # of which spent exploring
        self.lock = threading.Lock()

    def add(self, key: CellKey, seconds: float, predicted: float | None, *, exploring: bool,
            expected: float | None = None, cold: bool = False) -> Cell:
        """One observation; an exploring one is charged its seconds to the exploration budget,
        except a cell's first: at most ``expected`` (what it was predicted to take), then at most
        the warm call after it (its excess is a one-off: see _learn's docstring)."""
        with self.lock:
            cell = self.cells.get(key)
            if cell is None:
                if len(self.cells) >= CELLS:
                    self.cells.pop(next(iter(self.cells)))  # the least recently observed
                cell = self.cells[key] = Cell()
            else:
                self.cells[key] = self.cells.pop(key)  # most recently observed last
            first = not cell.dropped_first
            cell.add(seconds, predicted, cold)
            kept = cell.last_kept
            self.observed_s += seconds
            # A cold exploring call, dropped, is charged all the same (it cost what it cost); its
            # decision stands, not revisited, so the next call explores there again, warm, without
            # waiting for budget (at most COLD_DROPS such calls in a row per cell).
            if exploring and not kept:
                self.explored_s += seconds
            elif exploring:
                charged = min(seconds, expected) if first and expected else seconds
                self.explored_s += charged
                if first:
                    cell.first_charge = charged
            if not first and kept and cell.first_charge is not None:
                # The first warm sample says what the first call would have cost without its
                # one-off part: charge it no more than that.
                if exploring and cell.first_charge > seconds:
                    self.explored_s -= cell.first_charge - seconds
                cell.first_charge = None
            return cell

    def cell(self, key: CellKey) -> Cell | None:
        return self.cells.get(key)

    def forget_samples(self, key: CellKey) -> None:
        """Drop a cell's samples, keeping its count (its first, cold call stays dropped)."""
        with self.lock:
            cell = self.cells.get(key)
            if cell is not None:
                cell.samples = []

    def charge_exploring(self, seconds: float) -> None:
        """An exploring call learned nothing from (a compilation ran meanwhile): charged all the same."""
        with self.lock:
            self.explored_s += seconds

    def backend_cells(self, backend: str, location: str) -> list[tuple[CellKey, Cell]]:
        """Trusted cells of ``backend`` whose data lived at ``location`` ("host" / "device")."""
        with self.lock:
            return [(k, c) for k, c in self.cells.items()
                    if k[0] == backend and c.trusted and ((k[2] < 0) == (location == "host"))]


class Store:
    """Every function's history in this process, and the file they persist in."""

    def __init__(self, path_for: Callable[[], Path | None]):
        self._path_for = path_for
        self._path: Path | None = None  # fixed at the first use: saving at exit reads no changed env
        self._functions: dict[str, FunctionHistory] = {}
        self._loaded: dict[str, dict] | None = None  # the file's content, read once
        self._lock = threading.Lock()
        self._unsaved = 0
        self._saved_at = time.monotonic()  # a process's first save waits SAVE_INTERVAL_S too
        self._atexit = False

    def function(self, key: str) -> FunctionHistory:
        with self._lock:
            history = self._functions.get(key)
            if history is None:
                history = self._functions[key] = FunctionHistory(key)
                stored = self._file_content().get(key)
                if stored:
                    for cell_key, cell in _cells_from_json(stored).items():
                        history.cells[cell_key] = cell
                        history.loaded_counts[cell_key] = cell.count
            if not self._atexit:
                self._atexit = True
                atexit.register(self.save)
            return history

    def observed(self) -> None:
        """One more observation: saved every SAVE_EVERY of them, at most every SAVE_INTERVAL_S."""
        self._unsaved += 1
        if self._unsaved >= SAVE_EVERY and time.monotonic() - self._saved_at >= SAVE_INTERVAL_S:
            self.save()

    def path(self) -> Path | None:
        if self._path is None:
            self._path = self._path_for()
        return self._path

    def _file_content(self) -> dict[str, dict]:
        if self._loaded is None:
            path = self.path()
            self._loaded = read_file(path) if path is not None else {}
        return self._loaded

    def save(self) -> Path | None:
        """Merge this process's observations into the file, atomically, under a lock."""
        path = self.path()
        if path is None:
            return None
        self._unsaved = 0
        self._saved_at = time.monotonic()
        try:
            from filelock import FileLock, Timeout

            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lock", timeout=10):
                on_disk = read_file(path, warn=False)
                with self._lock:
                    merged = _merge(on_disk, self._functions)
                _write_atomically(path, {"format": FORMAT, "functions": merged})
        except (OSError, Timeout) as exc:
            # Learning goes on in memory; an unusable cache dir is reported by `calibrate`, not by calls.
            logger.info("the learned history could not be saved to %s (%s); it is kept in memory only", path, exc)
        return path

    def clear(self) -> None:
        with self._lock:
            self._functions.clear()
            self._loaded = {}
        path = self.path()
        if path is not None:
            with suppress(FileNotFoundError):
                path.unlink()

    def all_functions(self) -> dict[str, FunctionHistory]:
        """Every function this process or the file knows (file ones loaded on the way)."""
        for key in list(self._file_content()):
            self.function(key)
        return dict(self._functions)


def _cells_from_json(stored: dict) -> dict[CellKey, Cell]:
    cells: dict[CellKey, Cell] = {}
    for text, data in stored.items():
        parts = text.split("|")
        if len(parts) != 3 or not isinstance(data, dict):
            continue
        try:
            cells[(parts[0], int(parts[1]), int(parts[2]))] = Cell.from_json(data)
        except (TypeError, ValueError):
            continue
    return cells


def _cell_text(key: CellKey) -> str:
    return f"{key[0]}|{key[1]}|{key[2]}"


def _merge(on_disk: dict[str, dict], functions: dict[str, FunctionHistory]) -> dict[str, dict]:
    """The file's functions, with this process's new observations folded into each cell."""
    merged = dict(on_disk)
    for key, history in functions.items():
        with history.lock:
            disk_cells = _cells_from_json(merged.get(key, {}))
            for cell_key, cell in history.cells.items():
                disk = disk_cells.get(cell_key)
                if disk is None:
                    disk_cells[cell_key] = cell
                    continue
                # Ours = what we loaded + what we observed; the disk's extra count is another process's.
                theirs_new = disk.count - history.loaded_counts.get(cell_key, 0)
                combined = Cell.from_json(cell.to_json())
                combined.merged(disk, theirs_new)
                disk_cells[cell_key] = history.cells[cell_key] = combined  # memory holds theirs too now
            history.loaded_counts = {k: c.count for k, c in disk_cells.items()}
            merged[key] = {_cell_text(k): c.to_json() for k, c in list(disk_cells.items())[-CELLS:]}
    if len(merged) > FUNCTIONS:
        merged = dict(list(merged.items())[-FUNCTIONS:])
    return merged


def read_file(path: Path, *, warn: bool = True) -> dict[str, dict]:
    """The functions stored at ``path``; {} (and one warning) if it is missing, corrupt or foreign."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}  # nothing saved yet, or no usable cache dir: learn in memory
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot be read ({exc})"
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            problem = f"is not valid JSON ({str(exc).split(';')[0]})"
        else:
            if isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("functions"), dict):
                return {k: v for k, v in data["functions"].items() if isinstance(k, str) and isinstance(v, dict)}
            problem = "is not an autooffload history file of this version"
    if warn:
        warn_at_user_line(f"autooffload: the learned history {path} {problem}; starting afresh", ProfileWarning)
    return {}


def _write_atomically(path: Path, data: Any) -> None:
    import tempfile  # only when saving: importing autooffload stays cheap (tests/test_import_cost.py)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def summary(functions: dict[str, FunctionHistory]) -> list[dict]:
    """One row per function and size bucket: calls, observed and predicted seconds per backend,
    the backend the history prefers, and what preferring it saved over the profile's choice."""
    rows = []
    for key, history in sorted(functions.items()):
        with history.lock:
            buckets: dict[tuple[int, int], dict[str, Cell]] = {}
            for (backend, host_b, dev_b), cell in history.cells.items():
                buckets.setdefault((host_b, dev_b), {})[backend] = cell
        for bucket, cells in sorted(buckets.items()):
            observed = {b: c.estimate() for b, c in cells.items()}
            predicted = {b: c.predicted for b, c in cells.items()}
            known = {b: s for b, s in observed.items() if s is not None}
            learned_choice = min(known, key=lambda b: known[b]) if known else None
            profile_known = {b: s for b, s in predicted.items() if s is not None}
            profile_choice = min(profile_known, key=lambda b: profile_known[b]) if profile_known else None
            saved = 0.0
            if learned_choice and profile_choice in known and profile_choice != learned_choice:
                saved = (known[profile_choice] - known[learned_choice]) * cells[learned_choice].count
            rows.append({
                "function": key, "bucket": bucket, "calls": {b: c.count for b, c in cells.items()},
                "observed_s": observed, "predicted_s": predicted, "choice": learned_choice,
                "profile_choice": profile_choice, "saved_s": saved,
            })
    return rows
