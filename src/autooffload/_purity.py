"""Can a function write into its arguments? A conservative reading of its bytecode.

Detecting writes at run time costs a snapshot and a comparison per argument (on the GPU about
half a millisecond for a mid-size call). A function whose code provably cannot write into what it
is given skips that. "Provably" is conservative: any store into a subscript or attribute, any
in-place operator, any ``out=``, any method or function whose name is known to mutate, any call
of something that is not NumPy, a builtin, or a helper function itself proven clean, and the
function "may write". The dispatcher uses the proof only for calls whose arguments are plain
arrays and scalars (no containers, no objects whose methods could do anything).
"""

from __future__ import annotations

import builtins
import dis
import math
import types
from typing import Any

import numpy as np

from ._codewalk import code_objects

_STORE_OPS = frozenset({
    "STORE_SUBSCR", "DELETE_SUBSCR", "STORE_SLICE", "STORE_ATTR", "DELETE_ATTR",
    "CALL_FUNCTION_EX",  # f(*a, **kw): kw may hold out=
    "IMPORT_NAME",  # an import inside the function brings names we cannot vet
})
_INPLACE_OPS_LEGACY = frozenset(n for n in dis.opname if n.startswith("INPLACE_"))

# Names that mutate their receiver or an argument (array methods, NumPy functions, containers).
MUTATING_NAMES = frozenset({
    "sort", "fill", "put", "putmask", "place", "copyto", "itemset", "resize", "partition",
    "shuffle", "fill_diagonal", "setflags", "setfield", "byteswap", "at", "put_along_axis",
    "append", "extend", "insert", "pop", "popitem", "clear", "remove", "update", "setdefault",
    "__setitem__", "__delitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__",
    "scatter_add", "scatter_max", "scatter_min",
})
# Module-level functions that write into an argument. Other names above are harmless when read
# off a module: np.sort, np.append, np.resize, np.insert return new arrays.
MODULE_WRITERS = frozenset({"copyto", "put", "putmask", "place", "fill_diagonal", "shuffle", "put_along_axis",
                            "scatter_add", "scatter_max", "scatter_min"})
# Keyword arguments that write into a given array.
_WRITING_KEYWORDS = frozenset({"out", "overwrite_a", "overwrite_b", "overwrite_x"})
_LIBRARY_ROOTS = ("numpy", "cupy", "cupyx", "scipy")
_SAFE_BUILTINS = frozenset({
    "len", "range", "min", "max", "abs", "sum", "float", "int", "bool", "complex", "tuple", "list",
    "dict", "set", "frozenset", "zip", "enumerate", "isinstance", "issubclass", "round", "divmod",
    "pow", "sorted", "reversed", "any", "all", "map", "filter", "str", "repr", "slice", "type",
    "hasattr", "iter", "next", "print", "format", "hash", "id", "callable", "ord", "chr",
})


def _is_library(value: Any) -> bool:
    module = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
    return isinstance(module, str) and module.split(".")[0] in _LIBRARY_ROOTS


def _name_is_safe(value: Any, seen: set[int]) -> str | None:
    """None if calling or reading ``value`` cannot write into arrays given to the function."""
    if isinstance(value, types.ModuleType):
        return None if (_is_library(value) or value is math) else f"module {value.__name__}"
    if isinstance(value, (int, float, complex, str, bytes, bool, type(None), tuple, frozenset)):
        return None
    if isinstance(value, type) and issubclass(value, BaseException):
        return None
    name = getattr(value, "__name__", None)
    if name in (MODULE_WRITERS if _is_library(value) else MUTATING_NAMES):
        return f"{name} writes into its arguments"
    if value is getattr(builtins, getattr(value, "__name__", ""), object()):
        return None if name in _SAFE_BUILTINS else f"builtin {name}"
    if _is_library(value) or getattr(value, "__module__", None) == "math":
        return None  # NumPy functions, ufuncs, dtypes, types: writers are caught by name and out=
    state = getattr(value, "__autooffload__", None)
    if state is not None:
        value = state.func
    if type(value) is types.FunctionType:
        return _why_may_write(value, seen)
    return f"calls {type(value).__name__} {getattr(value, '__name__', '')!s}".strip()


def _why_may_write(func: types.FunctionType, seen: set[int]) -> str | None:
    if id(func) in seen:
        return None  # recursion: judged by the first visit
    seen.add(id(func))
    cells = {}
    if func.__closure__:
        for name, cell in zip(func.__code__.co_freevars, func.__closure__):
            try:
                cells[name] = cell.cell_contents
            except ValueError:
                pass
    for default in (func.__defaults__ or ()) + tuple((func.__kwdefaults__ or {}).values()):
        if isinstance(default, (list, dict, set)):
            return "a mutable default"
    for code in code_objects(func.__code__):
        for const in code.co_consts:
            if isinstance(const, tuple) and _WRITING_KEYWORDS.intersection(c for c in const if isinstance(c, str)):
                return "passes out= (or overwrite_*=)"
        receiver = None  # the library module the next LOAD_ATTR reads from, if any
        for ins in dis.get_instructions(code):
            op = ins.opname
            loaded = None
            if op in _STORE_OPS or op in _INPLACE_OPS_LEGACY:
                return f"{op} in {code.co_name}"
            if op == "BINARY_OP" and ins.argrepr.endswith("="):
                return f"in-place {ins.argrepr} in {code.co_name}"
            if op in ("LOAD_ATTR", "LOAD_METHOD"):
                if receiver is not None:  # np.sort, np.random.shuffle: a module's function
                    if ins.argval in MODULE_WRITERS:
                        return f"{receiver.__name__}.{ins.argval} in {code.co_name}"
                    loaded = getattr(receiver, ins.argval, None)
                elif ins.argval in MUTATING_NAMES:  # x.sort(), results.append(...)
                    return f".{ins.argval} in {code.co_name}"
            elif op in ("LOAD_GLOBAL", "LOAD_NAME"):
                name = ins.argval
                loaded = func.__globals__.get(name, getattr(builtins, name, None))
                if loaded is not None and (why := _name_is_safe(loaded, seen)):
                    return f"{name}: {why}"
            elif op in ("LOAD_FAST", "LOAD_FAST_CHECK") and ins.argval == "xp":
                loaded = np  # the array-module parameter the dispatcher fills (numpy or cupy)
            elif op in ("LOAD_DEREF", "LOAD_CLOSURE") and ins.argval in cells:
                loaded = cells[ins.argval]
                if why := _name_is_safe(loaded, seen):
                    return f"{ins.argval}: {why}"
            receiver = loaded if isinstance(loaded, types.ModuleType) and _is_library(loaded) else None
    return None


def may_write_arguments(func: Any) -> tuple[bool, str]:
    """(may the function write into its arguments, why / why not)."""
    inner = getattr(func, "__func__", func)
    if type(inner) is not types.FunctionType:
        return True, f"{type(inner).__name__} has no code to read"
    why = _why_may_write(inner, set())
    return (why is not None), (why or "no write into arguments is possible")


# Array metadata a device array cannot carry back: CuPy's ``ndarray.flags`` is a fresh read-only
# object on every access, so ``x.flags.writeable = False`` (or ``x.setflags(write=False)``) on a
# device copy is lost before anything can copy it to the caller's array.
_FLAG_WRITES = frozenset({"writeable", "setflags"})


def sets_array_flags(func: Any) -> str | None:
    """What in ``func``'s code sets an array's flags (``.writeable = ``, ``.setflags(``), or None.

    Read from the bytecode of the function and its nested code; a helper it calls is not read
    (its flag changes are lost on the GPU path: a documented limit).
    """
    inner = getattr(func, "__func__", func)
    if type(inner) is not types.FunctionType:
        return None
    for code in code_objects(inner.__code__):
        for ins in dis.get_instructions(code):
            if ins.argval in _FLAG_WRITES and ins.opname in ("STORE_ATTR", "LOAD_ATTR", "LOAD_METHOD"):
                if ins.argval == "setflags" or ins.opname == "STORE_ATTR":
                    return f"it sets an array's flags (.{ins.argval})"
    return None
