"""The state a device run can reach that outlives the call: undo it before a fallback, and bring
device arrays stored there back to the caller's side.

A run leaves marks beyond its arguments' arrays: it stores into ``self``, appends to a list it
was given or to a global list, rebinds a global or a closure variable. As on NumPy, two things
must hold afterwards:

- what it stored holds arrays of the caller's side, not device copies (``sweep``): a copy of the
  caller's array becomes that array, a view of one a view of the caller's memory, anything else a
  host copy, exactly as results are converted (``Moved.result``);
- when the device attempt fails and NumPy reruns the function, the attempt's changes to this state
  are undone first (``restore``), so an append, a counter or an attribute is changed once.

Roots: the call's non-array arguments (``self`` included), the mutable values of the module
globals the code and its helper twins read, the names they write with ``global``, and their
closure cells. Below a root, lists, dicts, sets, tuples and objects with plain attributes are
followed ``DEPTH`` levels down: ``self.cache[key] = (x, y)`` is three (self's attributes, the
dict, the tuple), and deeper stores are rare enough to stay a documented limit.

Cost: a container of more than ``WHOLE`` items is not copied; its length is kept, a restore
truncates what was appended and a sweep looks at the appended tail only. At most ``BUDGET``
containers are visited per walk. The walk into containers is taken only for code that can store
into anything at all (``_purity``); rebinding a global or closure variable is always swept (a
few names). Not undone: I/O, prints, changes inside objects without a plain ``__dict__`` or
below ``DEPTH``, items replaced (not appended) in containers larger than ``WHOLE``, and a large
set's new items.
"""

from __future__ import annotations

import itertools
import types
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from ._arguments import plain_attributes

DEPTH = 3
WHOLE = 1000
BUDGET = 2000
_ATOMS = frozenset({str, bytes, int, float, complex, bool, type(None)})
# What most roots are (arrays, modules, functions): known at once to hold no state of the call's.
_PASSED_OVER = _ATOMS | {np.ndarray, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type, np.ufunc}
_EMPTY = object()


def _parts(obj: Any) -> tuple[str, Any] | None:
    """(kind, the mutable part holding its values) of a container the walk follows, else None."""
    if type(obj) in _PASSED_OVER:
        return None
    if isinstance(obj, list):
        return "list", obj
    if isinstance(obj, dict):
        return "dict", obj
    if isinstance(obj, (set, tuple)):
        return ("set" if isinstance(obj, set) else "tuple"), obj
    attributes = plain_attributes(obj)
    return ("dict", attributes) if attributes is not None else None


class Reachable:
    """The state one device run can reach, and what it held before the run."""

    def __init__(self, args: tuple, kwargs: dict, twin: Any, *, deep: bool):
        self.roots = [a for a in (*args, *kwargs.values()) if type(a) not in _ATOMS]
        self.rebound: list[tuple[dict, frozenset[str]]] = []  # (module globals, names written with `global`)
        self.cells: list[tuple[Any, Any]] = []  # (closure cell, its value before the run)
        if twin is not None:
            for member in twin.family():
                module_globals, loads, stores, cells = member.state()
                if deep:
                    self.roots.extend(v for name in loads
                                      if _parts(v := module_globals.get(name, _EMPTY)) is not None)
                if stores:
                    self.rebound.append((module_globals, stores))
                self.cells.extend((cell, _cell_value(cell)) for cell in cells)
        self.deep = deep
        # id -> (container, the mutable part, a shallow copy of it or None when large, its length)
        self.saved: dict[int, tuple[Any, Any, Any, int]] = {}
        if deep:
            self._take()

    # -- before the run ----------------------------------------------------------------------
    def _take(self) -> None:
        for obj, part, kind in self._walk(self.roots):
            if kind == "tuple":
                continue  # nothing to restore in it; the walk still goes through it
            small = len(part) <= WHOLE
            copy = (dict(part) if kind == "dict" else set(part) if kind == "set" else list(part)) if small else None
            self.saved[id(part)] = (obj, part, copy, len(part))

    def _walk(self, roots: list):
        """(container, its mutable part, kind) for each container within DEPTH of the roots."""
        seen: set[int] = set()
        level = roots
        for _ in range(DEPTH):
            below = []
            for obj in level:
                found = _parts(obj)
                if found is None or id(obj) in seen:
                    continue
                seen.add(id(obj))
                if len(seen) > BUDGET:
                    return
                kind, part = found
                yield obj, part, kind
                if kind != "set" and len(part) <= WHOLE:
                    below.extend(part.values() if kind == "dict" else part)
            level = below

    # -- after a failed run: before NumPy reruns it --------------------------------------------
    def restore(self) -> None:
        for cell, value in self.cells:
            if _cell_value(cell) is not value:
                if value is _EMPTY:
                    del cell.cell_contents
                else:
                    cell.cell_contents = value
        for obj, part, copy, length in self.saved.values():
            if copy is None:
                self._drop_appended(part, length)
            elif isinstance(part, dict):
                if len(part) != len(copy) or any(copy.get(k, _EMPTY) is not v for k, v in part.items()):
                    part.clear()
                    part.update(copy)
            elif isinstance(part, set):
                if part != copy:
                    part.clear()
                    part.update(copy)
            elif len(part) != len(copy) or any(a is not b for a, b in zip(part, copy)):
                part[:] = copy

    @staticmethod
    def _drop_appended(part: Any, length: int) -> None:
        extra = len(part) - length
        if extra <= 0:
            return
        if isinstance(part, list):
            del part[length:]
        elif isinstance(part, dict):  # insertion order: the new keys are the last ones
            for key in list(itertools.islice(reversed(part), extra)):
                del part[key]

    # -- after the run: device arrays stored where the caller can reach them -------------------
    def sweep(self, convert: Callable[[Any], Any]) -> None:
        """Replace what ``convert`` changes (device arrays, tuples and iterators of them) in place."""
        roots = list(self.roots) if self.deep else []
        for module_globals, names in self.rebound:
            for name in names:
                value = module_globals.get(name, _EMPTY)
                if value is not _EMPTY:
                    roots.append(value)
                    new = _converted(value, convert)
                    if new is not value:
                        module_globals[name] = new
        for cell, _ in self.cells:
            value = _cell_value(cell)
            if value is not _EMPTY:
                roots.append(value)
                new = _converted(value, convert)
                if new is not value:
                    cell.cell_contents = new
        for obj, part, kind in self._walk(roots):
            if kind in ("list", "dict"):
                self._sweep_items(part, convert)

    def _sweep_items(self, part: Any, convert: Callable[[Any], Any]) -> None:
        saved = self.saved.get(id(part))
        start = 0
        if len(part) > WHOLE:
            start = saved[3] if saved is not None else len(part) - WHOLE  # the appended tail only
        if isinstance(part, dict):
            keys = list(itertools.islice(reversed(part), len(part) - start)) if start else list(part)
            setitem = OrderedDict.__setitem__ if isinstance(part, OrderedDict) else dict.__setitem__
            for key in keys:
                value = part[key]
                new = _converted(value, convert)
                if new is not value:
                    setitem(part, key, new)
        else:
            for i in range(start, len(part)):
                value = part[i]
                new = _converted(value, convert)
                if new is not value:
                    list.__setitem__(part, i, new)


def _converted(value: Any, convert: Callable[[Any], Any]) -> Any:
    """``convert(value)`` for what may hold device arrays out of the walk's reach; containers the
    walk follows itself are left to it (bounded by DEPTH)."""
    if type(value) in _ATOMS or isinstance(value, (list, dict, set)) or plain_attributes(value) is not None:
        return value
    return convert(value)


def _cell_value(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # empty: the name is not bound yet
        return _EMPTY
