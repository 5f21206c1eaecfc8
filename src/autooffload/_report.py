"""``autooffload.report()``: where the time went, per offloaded function, as text, dict and HTML.

What users of the nearest tools ask for most (cudf.pandas' profiler, cuml.accel) is a summary of
where their calls ran, what copying cost and which calls fell back, and why. The report reads
what the record keepers already hold (``_records``: counts; ``_timesheet``: timed runs, copies,
reruns) and the learned history (``_history``: NumPy's time per size), and adds nothing to a call.

Honest about what is measured: NumPy calls on the hot path are counted, not timed (timing them
would cost a third of the decorator's budget), so times cover the timed calls only and the
report says how many those are. "Saved vs NumPy" is ``timed runs x NumPy's learned time at
that size - their measured time``, summed over sizes where NumPy's time is known; elsewhere it
is "not measured", never a guess from the profile.

Printing at exit (``AUTOOFFLOAD_REPORT=1``, ``python -m autooffload run``) goes to stderr, so a
program's own output stays as it was.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from ._timesheet import Copies, CopyTotals, Timed
from ._units import format_bytes, format_seconds

NUMPY = "numpy"  # (backends.NUMPY; not imported here, so that this module stays light at import)
NUMERIC = range(1, 5)  # of a backend line's cells (_cells): calls, timed, time, per call: right-aligned

TIMED_NOTE = ("timed: the learning calls of each size and every device run on host data (copies "
              "included); other calls are counted, not timed")


@dataclass(frozen=True)
class BackendLine:
    """One function's calls on one backend."""

    backend: str
    calls: int  # every call that ran here, timed or not
    timed_calls: int
    timed_s: float
    copies: CopyTotals  # made for the runs here (to and from the device)
    saved_s: float | None  # vs always-NumPy over saved_calls; None: not measured (or NumPy itself)
    saved_calls: int  # the calls saved_s covers (timed, at sizes where NumPy's time is known)

    @property
    def per_call_s(self) -> float | None:
        return self.timed_s / self.timed_calls if self.timed_calls else None


@dataclass(frozen=True)
class FunctionLine:
    """One offloaded function: its backends, and the calls that ran elsewhere than decided."""

    name: str
    module: str
    lines: list[BackendLine]
    fallbacks: int  # device runs that failed and were redone on NumPy
    ran_instead: dict[tuple[str, str], int] = field(default_factory=dict)  # (backend, reason) -> calls
    reruns_timed: Timed = field(default_factory=Timed)  # their time, where measured

    @property
    def calls(self) -> int:
        return sum(line.calls for line in self.lines)


class Report:
    """Where the time went, per offloaded function. ``str()`` a table, ``as_dict()`` the data,
    an HTML table in Jupyter."""

    def __init__(self, functions: list[FunctionLine], not_called: list[str]):
        self.functions = functions
        self.not_called = not_called

    # -- data ----------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "functions": [
                {
                    "function": f.name,
                    "module": f.module,
                    "calls": f.calls,
                    "backends": {line.backend: _line_dict(line) for line in f.lines},
                    "fallbacks": f.fallbacks,
                    "ran_instead": [{"backend": b, "reason": r, "calls": n} for (b, r), n in f.ran_instead.items()],
                    "reruns_timed": {"calls": f.reruns_timed.calls, "seconds": f.reruns_timed.seconds},
                }
                for f in self.functions
            ],
            "not_called": list(self.not_called),
            "timed": TIMED_NOTE,
        }

    # -- text ----------------------------------------------------------------------------------
    def empty_line(self) -> str | None:
        """The one line that says nothing was offloaded, or None."""
        if self.functions:
            return None
        if self.not_called:
            n = len(self.not_called)
            return f"autooffload: nothing offloaded ran: {n} function{'s' * (n != 1)} decorated, none called"
        return "autooffload: nothing offloaded: no function decorated with @offload in this process"

    def __str__(self) -> str:
        empty = self.empty_line()
        if empty is not None:
            return empty
        header = ["function", "backend", "calls", "timed", "time", "per call", "host->device", "device->host",
                  "saved vs NumPy"]
        rows: list[list[str]] = []
        notes: dict[int, list[str]] = {}  # row index -> notes printed under it
        for f in self.functions:
            for i, line in enumerate(f.lines):
                rows.append([f.name if i == 0 else "", *_cells(line)])
            notes[len(rows) - 1] = _notes(f)
        right = {c + 1 for c in NUMERIC}  # the rows start with the function's name
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

        def render(r: list[str]) -> str:
            return "  ".join(v.rjust(w) if c in right else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths))).rstrip()

        out = ["autooffload: where the time went", render(header)]
        for i, r in enumerate(rows):
            out.append(render(r))
            out.extend("  " + note for note in notes.get(i, ()))
        if self.not_called:
            out.append(f"not called: {', '.join(self.not_called)}")
        out.append(f"({TIMED_NOTE})")
        return "\n".join(out)

    __repr__ = __str__  # at the prompt, `autooffload.report()` shows the table

    # -- HTML (Jupyter) --------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        import html  # for Jupyter only: not paid by `import autooffload`

        empty = self.empty_line()
        if empty is not None:
            return f"<p>{html.escape(empty)}</p>"
        header = ["function", "backend", "calls", "timed", "time", "per call", "host&rarr;device",
                  "device&rarr;host", "saved vs NumPy"]
        head = "".join(f"<th>{h}</th>" for h in header)
        body: list[str] = []
        for f in self.functions:
            notes = _notes(f)
            for i, line in enumerate(f.lines):
                cells = "".join(f"<td style='text-align:{'right' if c in NUMERIC else 'left'}'>{html.escape(v)}</td>"
                                for c, v in enumerate(_cells(line)))
                name = ""
                if i == 0:
                    name = (f"<td rowspan='{len(f.lines) + len(notes)}' style='text-align:left;vertical-align:top'>"
                            f"<code>{html.escape(f.name)}</code></td>")
                body.append(f"<tr>{name}{cells}</tr>")
            body.extend(f"<tr><td colspan='{len(header) - 1}' style='text-align:left'><i>{html.escape(n)}</i></td></tr>"
                        for n in notes)
        caption = "autooffload: where the time went"
        foot = TIMED_NOTE + (f". Not called: {', '.join(self.not_called)}" if self.not_called else "")
        return (f"<table><caption style='text-align:left'>{caption}</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table><p><small>{html.escape(foot)}</small></p>")


def _line_dict(line: BackendLine) -> dict[str, Any]:
    return {
        "calls": line.calls,
        "timed_calls": line.timed_calls,
        "timed_s": line.timed_s,
        "per_call_s": line.per_call_s,
        "host_to_device": vars(line.copies.host_to_device).copy(),
        "device_to_host": vars(line.copies.device_to_host).copy(),
        "saved_s": line.saved_s,  # None: not measured (NumPy's own line: nothing to save against)
        "saved_calls": line.saved_calls,
    }


def _cells(line: BackendLine) -> list[str]:
    """The row of one backend line, after the function's name."""
    return [
        line.backend,
        f"{line.calls:,}",
        f"{line.timed_calls:,}",
        format_seconds(line.timed_s) if line.timed_calls else "-",
        format_seconds(line.per_call_s) if line.per_call_s is not None else "-",
        _copies(line.copies.host_to_device),
        _copies(line.copies.device_to_host),
        _saved(line),
    ]


def _copies(c: Copies) -> str:
    return f"{format_bytes(c.bytes)} in {format_seconds(c.seconds)}" if c.arrays else "-"


def _saved(line: BackendLine) -> str:
    if line.backend == NUMPY:
        return "-"
    if line.saved_s is None:
        return "not measured"
    text = ("+" if line.saved_s >= 0 else "-") + format_seconds(abs(line.saved_s))
    if line.saved_calls < line.calls:
        text += f" ({line.saved_calls} of {line.calls} calls)"
    return text


def _notes(f: FunctionLine) -> list[str]:
    """Lines under a function's rows: what ran elsewhere than decided, and why."""
    notes = [f"{n} call{'s' * (n != 1)} ran on {backend} instead: {reason}"
             for (backend, reason), n in sorted(f.ran_instead.items(), key=lambda item: -item[1])]
    if f.reruns_timed.calls:
        n = f.reruns_timed.calls
        notes.append(f"{n} of these timed: {format_seconds(f.reruns_timed.seconds)}, failed attempts included "
                     f"(not in the rows above)")
    return notes


# -- building ------------------------------------------------------------------------------------
def build() -> Report:
    """The report of every function decorated in this process (those still alive)."""
    from . import _dispatch, backends

    functions: list[FunctionLine] = []
    not_called: list[str] = []
    for state in _dispatch.offloaded_states():
        line = _function_line(state, backends.names())
        if line.calls:
            functions.append(line)
        else:
            not_called.append(state.name)
    return Report(functions, not_called)


def _function_line(state: Any, backend_names: tuple[str, ...]) -> FunctionLine:
    from ._dispatch import Stats

    stats = Stats(state)  # NumPy's count includes the C check's calls
    sheet = state.records.timesheet
    timed = sheet.timed_by_bucket()
    copies = sheet.copies()
    lines = []
    for name in backend_names:
        calls = stats.count(name)
        moved = copies.get(name, CopyTotals())
        if not calls and not moved.host_to_device.arrays and not moved.device_to_host.arrays:
            continue
        mine = {bucket: t for (b, bucket), t in timed.items() if b == name}
        saved_s, saved_calls = (None, 0) if name == NUMPY else _saved_against_numpy(state, mine)
        lines.append(BackendLine(
            backend=name, calls=calls,
            timed_calls=sum(t.calls for t in mine.values()), timed_s=sum((t.seconds for t in mine.values()), 0.0),
            copies=moved, saved_s=saved_s, saved_calls=saved_calls,
        ))
    reruns_timed, ran_instead = sheet.reruns()
    module = getattr(state.func, "__module__", None) or "?"
    return FunctionLine(state.name, module, lines, stats.fallbacks, ran_instead, reruns_timed)


def _saved_against_numpy(state: Any, timed: dict[tuple, Timed]) -> tuple[float | None, int]:
    """(seconds saved vs running these calls on NumPy, calls covered), from NumPy's learned time
    per size bucket; (None, 0) where NumPy's time is known at none of them."""
    saved, covered = 0.0, 0
    for bucket, t in timed.items():
        cell = state.learner.history.cell((NUMPY, *bucket))
        numpy_s = cell.estimate() if cell is not None else None
        if numpy_s is not None:
            saved += t.calls * numpy_s - t.seconds
            covered += t.calls
    return (saved, covered) if covered else (None, 0)


# -- printing at exit ------------------------------------------------------------------------------
_at_exit_registered = False
_printed = False


def print_report(stream: TextIO | None = None) -> None:
    """The report, once per process (``run`` and AUTOOFFLOAD_REPORT may both ask), to stderr."""
    global _printed
    if _printed:
        return
    _printed = True
    print(build(), file=stream if stream is not None else sys.stderr, flush=True)


def print_at_exit() -> None:
    """Print the report when the interpreter exits (after the program's own exit handlers, which
    were registered later and so run first)."""
    global _at_exit_registered
    if not _at_exit_registered:
        _at_exit_registered = True
        atexit.register(print_report)


def register_exit_check() -> None:
    """At ``import autooffload``: look at AUTOOFFLOAD_REPORT when the program exits (it may set
    it after importing, as it may any AUTOOFFLOAD_* variable before the first call)."""
    atexit.register(print_at_exit_if_asked)


def print_at_exit_if_asked() -> None:
    """At exit: AUTOOFFLOAD_REPORT=1 asks for the report (read, and checked, with the other
    AUTOOFFLOAD_* variables)."""
    if "AUTOOFFLOAD_REPORT" not in os.environ:
        return  # not asked: the environment is not even read (a bad other variable is not ours to report)
    from . import _config
    from .errors import ConfigError

    try:
        asked = _config.environment().report
    except ConfigError as exc:
        print(f"autooffload: {exc}", file=sys.stderr)  # at exit, a traceback would only bury it
        return
    if asked:
        print_report()
