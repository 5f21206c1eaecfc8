"""Is a function blockwise? The user's promise, or a conservative proof read from its bytecode.

A *blockwise* function can be run on pieces of its arguments split along the leading axis, and
the pieces of its result put together are the result of the whole call (and its writes into its
arguments are the writes of the whole call). Two kinds:

* ``"elements"``: each output element depends only on the inputs at the same position
  (arithmetic, comparisons, ufuncs, ``where``, ``clip``, broadcasting with small operands).
* ``"rows"``: each output row depends only on the same leading-axis row of the inputs (a
  reduction along ``axis=-1``, a per-row sort). Only the user can promise this one.

``@offload(blockwise=True)`` promises "elements", ``blockwise="rows"`` promises "rows",
``blockwise=False`` says never; the default (``None``) lets :func:`verdict` try to prove
"elements" from the code. The proof is an abstract run of the bytecode that tracks what each
stack value is (an argument-derived array, a scalar constant, a module, a known function) and
accepts only:

* arithmetic, bitwise and comparison operators (``@`` is a matrix product: refused), unary
  minus/plus/invert, in-place operators (a write into the argument, at the same positions);
* calls of NumPy ufuncs (every ufunc is elementwise; ufunc *methods* such as ``reduce`` are not)
  and of a short list of elementwise NumPy functions (``where`` with three arguments, ``clip``,
  ``round``, ``nan_to_num``, ...), with no keywords but ``dtype`` (and ``clip``'s bounds):
  no ``axis=``, no ``out=``;
* ``math`` functions and builtins (``abs``, ``float``, ...) on scalars only, array methods
  ``astype``/``clip``/``conj``/``round``/``copy`` and attributes ``real``/``imag``;
* helper functions, read the same way with the values they are given (none may write into an
  argument), and the array module parameter ``xp``.

Anything else refuses the proof with the reason: indexing, slicing, ``.shape``, reductions,
reshapes, ``axis`` arguments, branches and loops (a branch on an array's value is not
elementwise, and a loop's work is unseen), comprehensions, closures over arrays, global
arrays, calls of anything the proof cannot read. A refused proof changes nothing: the call runs
as before (unstreamed), which is always correct.

What the proof does not check is the call: blockwise execution also needs the arguments to be
of one broadcast shape (the streamed runner in ``_stream.py`` checks that per call) and no
written argument to share memory with another.

Verdicts are cached per (function, declaration), weakly: a function that dies drops its verdict.
"""

from __future__ import annotations

import builtins
import dis
import inspect
import math
import sys
import threading
import types
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Kind = Literal["elements", "rows"]
Source = Literal["declared", "proven", "none"]
Declared = bool | Literal["rows"] | None


@dataclass(frozen=True)
class Verdict:
    """Whether calls of a function may be split along the leading axis, and why.

    ``kind``: "elements", "rows", or None (not blockwise: calls run whole). ``source``:
    "declared" (``@offload(blockwise=...)``), "proven" (read from the code), "none" (neither).
    ``written``: positions of the parameters the function writes into in place (proven verdicts
    only; a declared one says nothing about writes, so the streamed runner detects them)."""

    kind: Kind | None
    source: Source
    reason: str
    written: frozenset[int] | None = None

    @property
    def blockwise(self) -> bool:
        return self.kind is not None

    def describe(self) -> str:
        """One line for ``explain()`` and the report."""
        if self.kind is None:
            return f"not blockwise ({self.source}): {self.reason}"
        return f"blockwise {self.kind} ({self.source}): {self.reason}"


def check_declared(declared: Any) -> Declared:
    """``offload(blockwise=...)`` checked: True, False, "rows" or None; anything else is an error."""
    if declared is None or declared is True or declared is False or declared == "rows":
        return declared
    if declared == "elements":
        return True
    from .errors import ConfigError

    raise ConfigError(f"offload(blockwise=...) must be True, 'rows', False or None (let the code decide); got {declared!r}")


_CACHE: "weakref.WeakKeyDictionary[Any, dict[Declared, Verdict]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def verdict(func: Any, declared: Declared) -> Verdict:
    """The blockwise verdict of ``func`` under ``offload(blockwise=declared)``; cached per function."""
    declared = check_declared(declared)
    inner = getattr(func, "__func__", func)
    try:
        with _LOCK:
            cached = _CACHE.get(inner, {}).get(declared)
    except TypeError:  # not weakly referenceable (a builtin): decided afresh, cheaply
        cached = None
    if cached is not None:
        return cached
    result = _decide(inner, declared)
    try:
        with _LOCK:
            _CACHE.setdefault(inner, {})[declared] = result
    except TypeError:
        pass
    return result


def _decide(func: Any, declared: Declared) -> Verdict:
    if declared is False:
        return Verdict(None, "declared", "offload(blockwise=False): calls always run whole")
    if declared is True:
        return Verdict("elements", "declared", "offload(blockwise=True): each output element depends on the same positions of the inputs")
    if declared == "rows":
        return Verdict("rows", "declared", "offload(blockwise='rows'): each output row depends on the same rows of the inputs")
    if isinstance(func, np.ufunc):
        return Verdict("elements", "proven", f"NumPy ufunc {func.__name__}", frozenset())
    if type(func) is not types.FunctionType:
        return Verdict(None, "none", f"{type(func).__name__} has no code to read; offload(blockwise=True) declares it")
    try:
        result, written = _Prover(func, depth=0).run(None, None)
    except NotProven as exc:
        return Verdict(None, "none", f"{exc}; offload(blockwise=True) declares it")
    except Exception as exc:  # bytecode this reader did not foresee: not proven, never an error
        return Verdict(None, "none", f"the code could not be read ({type(exc).__name__}: {exc})")
    if not _is_array_result(result) and not written:
        return Verdict(None, "none", "it returns no array computed from its arguments")
    what = "writes in place into " + ", ".join(_param_names(func, written)) if written else "returns a new array"
    return Verdict("elements", "proven", f"only elementwise operations on its arguments; {what}", frozenset(written))


def _param_names(func: types.FunctionType, positions: set[int]) -> list[str]:
    names = func.__code__.co_varnames
    return [names[i] for i in sorted(positions)]


# -- the abstract values ---------------------------------------------------------------------


class NotProven(Exception):
    """The proof failed; the message says at what."""


@dataclass(frozen=True)
class _Arr:
    """An array (or scalar) computed elementwise from the arguments; ``alias``: the position of
    the parameter this value *is* (the same object), for in-place writes."""

    alias: int | None = None


@dataclass(frozen=True)
class _Const:
    """A scalar, None, a string, a dtype or a type: the same for every chunk."""

    value: Any = None


@dataclass(frozen=True)
class _Module:
    module: types.ModuleType


@dataclass(frozen=True)
class _Func:
    func: Any


@dataclass(frozen=True)
class _Method:
    name: str
    receiver: Any  # an abstract value


@dataclass(frozen=True)
class _Tuple:
    items: tuple


_NULL = object()  # the NULL that LOAD_GLOBAL / LOAD_ATTR push before a callable

# NumPy functions that are not ufuncs but act elementwise: name -> (allowed positional counts or
# None for any, allowed keywords). ``where`` with one argument is ``nonzero``: refused.
_ELEMENTWISE_FUNCTIONS: dict[str, tuple[tuple[int, ...] | None, frozenset[str]]] = {
    "where": ((3,), frozenset()),
    "clip": (None, frozenset({"a_min", "a_max", "min", "max"})),
    "round": ((1, 2), frozenset({"decimals"})),
    "around": ((1, 2), frozenset({"decimals"})),
    "nan_to_num": ((1,), frozenset({"nan", "posinf", "neginf"})),
    "real": ((1,), frozenset()),
    "imag": ((1,), frozenset()),
    "conj": ((1,), frozenset()),
    "fix": ((1,), frozenset()),
    "isclose": ((2,), frozenset({"rtol", "atol", "equal_nan"})),
    "isreal": ((1,), frozenset()),
    "iscomplex": ((1,), frozenset()),
    "isneginf": ((1,), frozenset()),
    "isposinf": ((1,), frozenset()),
    "angle": ((1, 2), frozenset({"deg"})),
    "sinc": ((1,), frozenset()),
    "i0": ((1,), frozenset()),
}
_UFUNC_KEYWORDS = frozenset({"dtype", "casting"})
_ARRAY_METHODS: dict[str, frozenset[str]] = {
    "astype": frozenset({"copy", "casting"}),
    "clip": frozenset({"min", "max"}),
    "conj": frozenset(),
    "conjugate": frozenset(),
    "round": frozenset({"decimals"}),
    "copy": frozenset(),
}
_ARRAY_ATTRIBUTES = frozenset({"real", "imag"})
# Builtins on scalars (a float() of an array of more than one element raises); abs is elementwise.
_SCALAR_BUILTINS = frozenset({"float", "int", "bool", "complex", "min", "max", "round", "pow"})
_LIBRARY_ROOTS = ("numpy", "scipy", "cupy", "cupyx")

# Opcodes that only move values around or mark positions.
_NOTHING = frozenset({"RESUME", "NOP", "CACHE", "EXTENDED_ARG", "PRECALL", "NOT_TAKEN", "COPY_FREE_VARS",
                      "MAKE_CELL"})
_MAX_DEPTH = 8


def _is_library(value: Any) -> bool:
    module = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
    return isinstance(module, str) and module.split(".")[0] in _LIBRARY_ROOTS


def _is_array_result(value: Any) -> bool:
    if isinstance(value, _Arr):
        return True
    if isinstance(value, _Tuple):
        return bool(value.items) and all(isinstance(v, (_Arr, _Const)) for v in value.items) and any(
            isinstance(v, _Arr) for v in value.items)
    return False


def _abstract(value: Any, what: str) -> Any:
    """The abstract value of a global, closure cell or default."""
    if isinstance(value, types.ModuleType):
        if _is_library(value) or value is math:
            return _Module(value)
        raise NotProven(f"{what} is module {value.__name__}, which the proof does not read")
    if isinstance(value, (bool, int, float, complex, str, bytes, type(None), np.generic, np.dtype)):
        return _Const(value)
    if isinstance(value, type) and (issubclass(value, np.generic) or value in (bool, int, float, complex)):
        return _Const(value)  # a dtype given to astype(), dtype=
    if isinstance(value, tuple) and all(isinstance(v, (bool, int, float, complex, str, type(None))) for v in value):
        return _Const(value)
    if isinstance(value, np.ndarray):
        raise NotProven(f"{what} is an array the function reads whole (not one of its arguments)")
    if callable(value):
        return _Func(value)
    raise NotProven(f"{what} is a {type(value).__name__}, which the proof does not read")


class _Prover:
    """One abstract run of one function's bytecode (straight-line code only)."""

    def __init__(self, func: types.FunctionType, depth: int):
        if depth > _MAX_DEPTH:
            raise NotProven(f"helpers nested deeper than {_MAX_DEPTH}")
        self.func = func
        self.code = func.__code__
        self.depth = depth
        self.written: set[int] = set()

    # -- binding -----------------------------------------------------------------------------
    def _bind(self, args: list | None, kwargs: dict | None) -> dict[str, Any]:
        code = self.code
        if code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
            raise NotProven(f"{code.co_name} takes *args or **kwargs")
        if code.co_flags & (inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE
                            | inspect.CO_ASYNC_GENERATOR):
            raise NotProven(f"{code.co_name} is a generator or coroutine")
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        defaults = dict(zip(names[code.co_argcount - len(self.func.__defaults__ or ()): code.co_argcount],
                            self.func.__defaults__ or ()))
        defaults.update(self.func.__kwdefaults__ or {})
        bound: dict[str, Any] = {}
        if args is None:  # the decorated function itself: every parameter is an argument
            for i, name in enumerate(names):
                if name == "xp":
                    bound[name] = _Module(np)  # the array-module parameter the dispatcher fills
                else:
                    bound[name] = _Arr(alias=i)
            return bound
        if len(args) > code.co_argcount:
            raise NotProven(f"{code.co_name} called with too many positional arguments")
        for name, value in zip(names, args):
            bound[name] = value
        for name, value in (kwargs or {}).items():
            if name not in names or name in bound:
                raise NotProven(f"{code.co_name} called with keyword {name!r} it does not take (or twice)")
            bound[name] = value
        for name in names:
            if name not in bound:
                if name not in defaults:
                    raise NotProven(f"{code.co_name} called without {name}")
                bound[name] = _abstract(defaults[name], f"default {name}")
        return bound

    def run(self, args: list | None, kwargs: dict | None) -> tuple[Any, set[int]]:
        """(the abstract return value, positions of the parameters written in place)."""
        code = self.code
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                raise NotProven(f"{code.co_name} defines a nested function, lambda or comprehension")
        locals_: dict[str, Any] = self._bind(args, kwargs)
        positions = {name: i for i, name in enumerate(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])}
        cells: dict[str, Any] = {}
        if self.func.__closure__:
            for name, cell in zip(code.co_freevars, self.func.__closure__):
                try:
                    cells[name] = cell.cell_contents
                except ValueError:
                    pass
        stack: list[Any] = []
        kwnames: tuple[str, ...] = ()
        where = code.co_name

        def pop(n: int = 1) -> list[Any]:
            if n > len(stack):
                raise NotProven(f"unexpected bytecode in {where}")
            taken = stack[len(stack) - n:] if n else []
            del stack[len(stack) - n:]
            return taken

        for ins in dis.get_instructions(code):
            op = ins.opname
            if op in _NOTHING:
                continue
            if op in ("LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW"):
                if ins.argval not in locals_:
                    raise NotProven(f"{ins.argval} read before it is set in {where}")
                stack.append(locals_[ins.argval])
            elif op in ("LOAD_FAST_LOAD_FAST", "LOAD_FAST_BORROW_LOAD_FAST_BORROW"):
                for name in ins.argval:
                    if name not in locals_:
                        raise NotProven(f"{name} read before it is set in {where}")
                    stack.append(locals_[name])
            elif op == "STORE_FAST":
                locals_[ins.argval] = pop()[0]
            elif op == "STORE_FAST_STORE_FAST":
                values = pop(2)
                for name, value in zip(ins.argval, reversed(values)):
                    locals_[name] = value
            elif op == "STORE_FAST_LOAD_FAST":
                store, load = ins.argval
                locals_[store] = pop()[0]
                stack.append(locals_[load])
            elif op == "LOAD_CONST" or op == "LOAD_SMALL_INT":
                stack.append(_Const(ins.argval))
            elif op == "RETURN_CONST":
                return _Const(ins.argval), self.written
            elif op == "RETURN_VALUE":
                return pop()[0], self.written
            elif op == "LOAD_GLOBAL":
                name = ins.argval
                if name in self.func.__globals__:
                    value = self.func.__globals__[name]
                elif hasattr(builtins, name):
                    value = getattr(builtins, name)
                else:
                    raise NotProven(f"global {name} is not defined")
                if ins.arg is not None and ins.arg & 1:
                    stack.append(_NULL)
                stack.append(_abstract(value, f"global {name}"))
            elif op == "LOAD_DEREF":
                if ins.argval not in cells:
                    raise NotProven(f"closure variable {ins.argval} is unset")
                stack.append(_abstract(cells[ins.argval], f"closure variable {ins.argval}"))
            elif op in ("LOAD_ATTR", "LOAD_METHOD"):
                receiver = pop()[0]
                method_form = op == "LOAD_METHOD" or (sys.version_info >= (3, 12) and bool(ins.arg is not None and ins.arg & 1))
                value = self._attribute(receiver, ins.argval, method_form)
                if method_form:
                    stack.append(_NULL)
                stack.append(value)
            elif op == "PUSH_NULL":
                stack.append(_NULL)
            elif op == "KW_NAMES":
                kwnames = tuple(code.co_consts[ins.arg or 0])  # argval is not the tuple on 3.11
            elif op in ("CALL", "CALL_KW"):
                if op == "CALL_KW":
                    names_value = pop()[0]
                    if not isinstance(names_value, _Const) or not isinstance(names_value.value, tuple):
                        raise NotProven(f"unexpected keyword call in {where}")
                    kwnames = names_value.value
                argc = ins.arg or 0
                values = pop(argc)
                first, second = pop(2)
                callee = second if first is _NULL else first if second is _NULL else None
                if callee is None:  # [method, self]: self is the first argument (not our form)
                    raise NotProven(f"unexpected call form in {where}")
                positional = values[: len(values) - len(kwnames)]
                keywords = dict(zip(kwnames, values[len(values) - len(kwnames):]))
                kwnames = ()
                stack.append(self._call(callee, positional, keywords))
            elif op == "BINARY_OP":
                left, right = pop(2)
                symbol = ins.argrepr
                if "@" in symbol:
                    raise NotProven(f"a matrix product (@) in {where}")
                if symbol.endswith("=") and symbol not in ("==", "!=", "<=", ">="):
                    stack.append(self._in_place(left, right, symbol, positions))
                else:
                    stack.append(self._combine([left, right], f"operator {symbol}"))
            elif op == "COMPARE_OP":
                if ins.argrepr.startswith("bool("):
                    raise NotProven(f"a comparison used as a truth value in {where}")
                left, right = pop(2)
                stack.append(self._combine([left, right], f"comparison {ins.argrepr}"))
            elif op in ("UNARY_NEGATIVE", "UNARY_INVERT", "UNARY_POSITIVE"):
                stack.append(self._combine(pop(), op.lower()))
            elif op == "CALL_INTRINSIC_1" and ins.argrepr == "INTRINSIC_UNARY_POSITIVE":
                stack.append(self._combine(pop(), "unary +"))
            elif op == "POP_TOP":
                pop()
            elif op == "COPY":
                n = ins.arg or 1
                if n > len(stack):
                    raise NotProven(f"unexpected bytecode in {where}")
                stack.append(stack[-n])
            elif op == "SWAP":
                n = ins.arg or 2
                if n > len(stack):
                    raise NotProven(f"unexpected bytecode in {where}")
                stack[-1], stack[-n] = stack[-n], stack[-1]
            elif op == "BUILD_TUPLE":
                stack.append(_Tuple(tuple(pop(ins.arg or 0))))
            else:
                raise NotProven(_REFUSED.get(op, f"bytecode {op}") + f" in {where}")
        raise NotProven(f"{where} has no return the proof could follow")

    # -- the operations --------------------------------------------------------------------
    def _combine(self, values: list[Any], what: str) -> Any:
        """An elementwise operation of ``values``: an array if any is, else a scalar."""
        for v in values:
            if not isinstance(v, (_Arr, _Const)):
                raise NotProven(f"{what} on a {_name(v)}")
            if isinstance(v, _Const) and isinstance(v.value, (tuple, str, bytes)) and what.startswith("operator"):
                raise NotProven(f"{what} on a {type(v.value).__name__}")
        if any(isinstance(v, _Arr) for v in values):
            return _Arr()
        return _Const(None)

    def _in_place(self, left: Any, right: Any, symbol: str, positions: dict[str, int]) -> Any:
        self._combine([left, right], f"operator {symbol}")
        if isinstance(left, _Arr) and left.alias is not None:
            self.written.add(left.alias)  # x *= 5 writes into the argument x at the same positions
            return left
        return self._combine([left, right], f"operator {symbol}")

    def _attribute(self, receiver: Any, name: str, method_form: bool) -> Any:
        if isinstance(receiver, _Module):
            value = getattr(receiver.module, name, None)
            if value is None:
                raise NotProven(f"{receiver.module.__name__}.{name} does not exist")
            return _abstract(value, f"{receiver.module.__name__}.{name}")
        if isinstance(receiver, _Arr):
            if name in _ARRAY_METHODS:
                return _Method(name, receiver)
            if name in _ARRAY_ATTRIBUTES and not method_form:
                return _Arr()
            raise NotProven(f"array attribute .{name} (only {', '.join(sorted(_ARRAY_METHODS))}, .real, .imag are read)")
        if isinstance(receiver, _Const) and receiver.value is not None and not isinstance(receiver.value, (tuple, str, bytes)):
            if isinstance(receiver.value, (type, np.dtype)):
                raise NotProven(f"attribute .{name} of {receiver.value!r}")
            return _Method(name, receiver) if name in _ARRAY_METHODS else _Const(None)
        raise NotProven(f"attribute .{name} of a {_name(receiver)}")

    def _call(self, callee: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        values = list(args) + list(kwargs.values())
        if isinstance(callee, _Method):
            allowed = _ARRAY_METHODS[callee.name]
            if set(kwargs) - allowed:
                raise NotProven(f".{callee.name}() with keywords {sorted(set(kwargs) - allowed)}")
            if callee.name == "astype" and any(isinstance(v, _Arr) for v in values):
                raise NotProven(".astype() given an array")
            return self._combine([callee.receiver, *values], f".{callee.name}()")
        if isinstance(callee, (_Arr, _Const, _Module, _Tuple)) or callee is _NULL:
            raise NotProven(f"a call of a {_name(callee)}")
        func = callee.func
        state = getattr(func, "__autooffload__", None)
        if state is not None:
            func = state.func  # an offloaded helper: read the function it wraps
        name = getattr(func, "__name__", type(func).__name__)
        if isinstance(func, np.ufunc):
            if set(kwargs) - _UFUNC_KEYWORDS:
                raise NotProven(f"{name}() with keywords {sorted(set(kwargs) - _UFUNC_KEYWORDS)}")
            if len(args) != func.nin:
                raise NotProven(f"{name}() given {len(args)} positional arguments (its inputs are {func.nin})")
            return self._combine(values, f"{name}()")
        if _is_library(func):
            entry = _ELEMENTWISE_FUNCTIONS.get(name)
            module = getattr(func, "__module__", "") or ""
            if entry is None or not module.startswith(("numpy", "cupy")):
                raise NotProven(f"{module}.{name} is not a known elementwise function")
            counts, allowed = entry
            if counts is not None and len(args) not in counts:
                raise NotProven(f"{name}() with {len(args)} positional arguments")
            if set(kwargs) - allowed:
                raise NotProven(f"{name}() with keywords {sorted(set(kwargs) - allowed)}")
            return self._combine(values, f"{name}()")
        if getattr(func, "__module__", None) == "math" or (
                getattr(builtins, name, None) is func and name in _SCALAR_BUILTINS):
            if any(not isinstance(v, _Const) for v in values):
                raise NotProven(f"{name}() given an array (it takes scalars)")
            return _Const(None)
        if func is abs:
            return self._combine(values, "abs()")
        if type(func) is types.FunctionType:
            helper = _Prover(func, self.depth + 1)
            result, written = helper.run(list(args), kwargs)
            if written:
                raise NotProven(f"helper {name} writes into its arguments")
            if isinstance(result, _Tuple):
                return _Tuple(tuple(_Arr() if isinstance(v, _Arr) else v for v in result.items))
            if isinstance(result, _Arr):
                return _Arr()  # a new array, not the caller's argument (a helper may return it: no write)
            if isinstance(result, _Const):
                return result
            raise NotProven(f"helper {name} returns a {_name(result)}")
        raise NotProven(f"a call of {type(func).__name__} {name}, which the proof cannot read")


def _name(value: Any) -> str:
    return {_Arr: "array", _Const: "constant", _Module: "module", _Func: "function", _Method: "method",
            _Tuple: "tuple"}.get(type(value), "value")


_REFUSED = {
    "BINARY_SUBSCR": "indexing", "BINARY_SLICE": "slicing", "BUILD_SLICE": "slicing", "STORE_SUBSCR": "a store into an index",
    "STORE_SLICE": "a store into a slice", "DELETE_SUBSCR": "deleting an index", "STORE_ATTR": "setting an attribute",
    "STORE_GLOBAL": "setting a global", "FOR_ITER": "a loop", "GET_ITER": "a loop", "CALL_FUNCTION_EX": "a call with *args or **kwargs",
    "POP_JUMP_IF_FALSE": "a branch", "POP_JUMP_IF_TRUE": "a branch", "POP_JUMP_FORWARD_IF_FALSE": "a branch",
    "POP_JUMP_FORWARD_IF_TRUE": "a branch", "JUMP_FORWARD": "a branch", "JUMP_IF_FALSE_OR_POP": "a branch",
    "JUMP_IF_TRUE_OR_POP": "a branch", "TO_BOOL": "a truth test", "UNARY_NOT": "a truth test (not)",
    "IMPORT_NAME": "an import", "MAKE_FUNCTION": "a nested function", "BUILD_LIST": "a list", "BUILD_MAP": "a dict",
    "CONTAINS_OP": "an 'in' test", "IS_OP": "an 'is' test", "RAISE_VARARGS": "a raise",
    "PUSH_EXC_INFO": "a try block", "BEFORE_WITH": "a with block", "LOAD_ASSERTION_ERROR": "an assert",
}
