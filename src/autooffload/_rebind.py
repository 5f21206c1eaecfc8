"""The device twin of a NumPy function: the same code, with NumPy's names mapped to CuPy's.

A twin is a copy of the function (same code object, defaults, closure, name, docstring) whose
globals map every name bound to a NumPy-world module (numpy under any alias, numpy.linalg /
fft / random, SciPy modules the program imported) or to one of their functions or types
(``from numpy import sin``) to the device counterpart. Helper functions it calls by global name
get twins of their own, so ``np.zeros`` inside a helper also lands on the device. NumPy's own
callables (``np.fft.fft``, ``np.linalg.solve``, ufuncs) have no code to copy: their twin is the
counterpart itself.

Twins of helpers are cached while their function lives (weakly keyed); an offloaded function
keeps its own twin in its state. The twin's globals are a copy; before each call ``refresh()``
re-reads the names the code uses from the real module, so a global reassigned after decoration
is seen, and names the function assigns with ``global`` are written back after the call.
"""

from __future__ import annotations

import threading
import types
import warnings
import weakref
from typing import Any, Callable

from ._codewalk import referenced_names

_MISSING = object()
# Modules whose functions are never twinned: they are the libraries themselves, or ours.
_LIBRARY_ROOTS = frozenset({"numpy", "cupy", "cupyx", "scipy", "autooffload", "builtins", "numba"})


def _is_library(func: Any) -> bool:
    module = getattr(func, "__module__", None) or ""
    return module.split(".")[0] in _LIBRARY_ROOTS


class Translator:
    """Maps NumPy-world objects to device counterparts and builds (cached) twins of functions."""

    def __init__(self, module_pairs: list[tuple[types.ModuleType, types.ModuleType]]):
        self.xp = module_pairs[0][1]
        # id(numpy object) -> (numpy object, counterpart); the object is kept to check identity.
        self._table: dict[int, tuple[Any, Any]] = {}
        for np_mod, xp_mod in module_pairs:
            self._table[id(np_mod)] = (np_mod, xp_mod)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for name, value in list(vars(np_mod).items()):
                    if name.startswith("_") or isinstance(value, types.ModuleType):
                        continue
                    if not (callable(value) or isinstance(value, type)):
                        continue  # constants (pi, newaxis, dtypes' instances) are shared
                    counterpart = getattr(xp_mod, name, None)
                    if counterpart is not None and counterpart is not value:
                        self._table.setdefault(id(value), (value, counterpart))
        # function -> its twin, for as long as the function lives (keyed weakly: a closure built
        # per request, once run on the device, must not be kept alive with a copy of its globals).
        self._twins: "weakref.WeakKeyDictionary[types.FunctionType, Twin]" = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()

    def counterpart(self, value: Any) -> Any:
        """The device counterpart of a NumPy-world object, or ``_MISSING``."""
        entry = self._table.get(id(value))
        if entry is not None and entry[0] is value:
            return entry[1]
        return _MISSING

    def translate(self, value: Any) -> Any:
        """What a twin's globals hold in place of ``value``."""
        found = self.counterpart(value)
        if found is not _MISSING:
            return found
        if type(value) is types.FunctionType and not _is_library(value) and not hasattr(value, "__autooffload__"):
            return self.twin_of_function(value).func
        return value

    def twin_of_function(self, func: types.FunctionType, keep: bool = True) -> "Twin":
        """The twin of ``func``; cached while ``func`` lives, unless ``keep`` is False (then the
        caller holds it: registered only while it is built, for recursive helpers)."""
        twin = self._twins.get(func)
        if twin is not None and twin.ready:
            return twin
        # Building, or reaching a twin another thread is still building, holds the lock; the
        # building thread itself re-enters (recursive helpers) and gets the unfinished twin.
        with self._lock:
            twin = self._twins.get(func)
            if twin is not None:
                return twin
            twin = Twin.__new__(Twin)
            # Registered before it is built, so recursive helpers find it instead of looping.
            self._twins[func] = twin
            try:
                twin._build(func, self)
            finally:
                if not (keep and twin.ready):
                    del self._twins[func]
            return twin

    def device_callable(self, func: Callable) -> tuple[Callable | None, "Twin | None", str]:
        """(what to call on the device, the twin to refresh or None, how it was found).

        (None, None, why) when there is no device version of ``func``. The twin of ``func``
        itself is not cached here: the caller keeps it (an offloaded function's state), so it lives
        exactly as long as the caller, even when it reaches the caller back (a decorated closure
        calling itself through its closure cell), which a cache keyed by ``func`` would keep alive.
        """
        found = self.counterpart(func)
        if found is not _MISSING:
            return found, None, f"counterpart {getattr(found, '__module__', '?')}.{getattr(found, '__name__', '?')}"
        if isinstance(func, types.MethodType):
            inner, twin, how = self.device_callable(func.__func__)
            if inner is None:
                return None, None, how
            return types.MethodType(inner, func.__self__), twin, how
        if type(func) is types.FunctionType:
            twin = self.twin_of_function(func, keep=False)
            return twin.func, twin, "rebound twin"
        return None, None, f"{type(func).__name__} objects have no device version"


class Twin:
    """One function's device twin and what keeps its globals current."""

    func: types.FunctionType
    ready = False  # set once fully built

    def _build(self, func: types.FunctionType, translator: Translator) -> None:
        self._real = func.__globals__
        self._translator = translator
        self._loads, self._stores = referenced_names(func.__code__)
        self._globals: dict[str, Any] = dict(self._real)
        self._seen: dict[str, Any] = {}  # name -> the real value last translated
        self._children: list[Twin] = []
        self._refreshing = False
        closure = None
        if func.__closure__:
            closure = tuple(self._translated_cell(cell) for cell in func.__closure__)
        twin = types.FunctionType(func.__code__, self._globals, func.__name__, None, closure)
        twin.__defaults__ = tuple(translator.translate(v) for v in func.__defaults__) if func.__defaults__ else None
        if func.__kwdefaults__:
            twin.__kwdefaults__ = {k: translator.translate(v) for k, v in func.__kwdefaults__.items()}
        twin.__qualname__ = func.__qualname__
        twin.__doc__ = func.__doc__
        twin.__module__ = func.__module__
        twin.__dict__.update(func.__dict__)
        self.func = twin  # type: ignore[assignment]  # mypy infers MethodType; it is the FunctionType built above
        self.refresh()
        self.ready = True

    def _translated_cell(self, cell: types.CellType) -> types.CellType:
        try:
            value = cell.cell_contents
        except ValueError:  # empty cell (a name defined later in the enclosing scope)
            return cell
        new = self._translator.translate(value)
        if new is value:
            return cell  # shared with the enclosing scope: `nonlocal` writes stay visible
        if isinstance(value, types.FunctionType):
            twin = self._translator._twins.get(value)
            if twin is not None:
                self._children.append(twin)
        return types.CellType(new)

    def refresh(self) -> None:
        """Re-read the globals the code uses (and those of helper twins) from the real module."""
        if self._refreshing or not (self._loads or self._children):  # recursion between helpers; or nothing to read
            return
        self._refreshing = True
        try:
            real, mine, seen, translate = self._real, self._globals, self._seen, self._translator.translate
            for name in self._loads:
                value = real.get(name, _MISSING)
                if value is seen.get(name, _MISSING):
                    continue  # unchanged since the last call: the translation stands
                seen[name] = value
                if value is _MISSING:
                    mine.pop(name, None)
                    continue
                new = translate(value)
                mine[name] = new
                if new is not value and isinstance(value, types.FunctionType):
                    twin = self._translator._twins.get(value)
                    if twin is not None and twin not in self._children:
                        self._children.append(twin)
            for child in self._children:
                child.refresh()
        finally:
            self._refreshing = False

    def family(self) -> list["Twin"]:
        """This twin and every helper twin it reaches, each once."""
        found: list[Twin] = []
        todo = [self]
        while todo:
            twin = todo.pop()
            if all(twin is not t for t in found):
                found.append(twin)
                todo.extend(twin._children)
        return found

    def state(self) -> tuple[dict, frozenset[str], frozenset[str], tuple]:
        """(the real module globals, names the code may read, names it writes with ``global``,
        its closure cells): where a call of this twin can leave state behind."""
        return self._real, self._loads, self._stores, self.func.__closure__ or ()

    def leaves_state(self) -> bool:
        """Whether a call can leave state in names (``Reachable``'s ``rebound`` and ``cells``): this
        twin or a helper twin assigns a ``global`` name or has closure cells."""
        if not self._children:  # the usual case: no helper twins, no walk (~1 us a call)
            return bool(self._stores or self.func.__closure__)
        return any(twin._stores or twin.func.__closure__ for twin in self.family())

    def runs_code_in(self, frame_globals: dict) -> bool:
        """Whether a frame with these globals runs this twin's or a helper twin's code."""
        return any(twin._globals is frame_globals for twin in self.family())

    def write_back_globals(self) -> None:
        """Copy the names the code assigned with ``global`` back to the real module."""
        if not self._stores:
            return
        for name in self._stores:
            value = self._globals.get(name, _MISSING)
            if value is _MISSING:
                self._real.pop(name, None)
                continue
            current = self._real.get(name, _MISSING)
            if current is _MISSING or self._translator.translate(current) is not value:
                self._real[name] = value
