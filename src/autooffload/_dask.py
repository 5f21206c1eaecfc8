"""Dask arrays given to an offloaded blockwise function: a Dask array back, one task per block.

A function the user declared (or the proof in _blockwise.py showed) to be blockwise gives its
result block by block, so ``f(x)`` with ``x`` a ``dask.array.Array`` returns
``da.blockwise(f, ...)``: each task calls the offloaded function itself on its NumPy (or CuPy)
blocks, so each block is decided where it runs, from that worker's profile and device, and
copies through that worker's pinned pool (issue 15 item 5, issue 17). Nothing is computed here
except a tiny trial of the undecorated function that gives the result's dtype and, for "rows"
functions, its trailing shape.

How the arguments become one graph:

* Every array argument (Dask, NumPy or device array; positional or keyword) is one operand,
  indexed by the output axis it lines up with under NumPy's right-aligned broadcasting. A
  length-1 axis broadcast against a longer one gets an index of its own, so the operand is
  passed whole along it (a small operand is never materialised at full size); the function
  broadcasts it inside each block as NumPy would.
* Operands with different chunks along a shared axis are unified (``align_arrays``: the
  coarser is rechunked to the common refinement), NumPy arguments become single-graph Dask
  arrays first. Scalars and 0-d arrays go to every block as they are.
* ``"rows"`` functions (each leading-axis row independent) need whole rows: every axis but the
  leading one is rechunked to one chunk (``rechunk({axis: -1})``), which may move data between
  workers; say so in the docs. Their result may have another trailing shape (row sums, a
  per-row transform of other width): the trial says which.
* Keyword arguments are passed positionally to the task (``_BlockCall`` puts them back), since
  ``da.blockwise`` aligns positional operands only.
* A function that may write into its arguments (_purity.py) gets copies of its blocks: Dask's
  blocks may be shared with other tasks or read-only views.

Pickling: tasks carry the offloaded wrapper by reference (module and name, see _naming.py), so
each worker imports it and keeps its decisions and learning across blocks. A wrapper that
cannot be found by name (defined in ``__main__`` under a scheduler in other processes, or inside
a function) is sent as its undecorated function plus the decorator's options and rebuilt once
per worker process.

Dask is imported here only, and this module only when a call is given a Dask array
(``_dispatch._has_dask`` tells by the argument's type module, without importing Dask).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
import warnings
from typing import Any, Callable

import numpy as np

logger = logging.getLogger("autooffload")


def is_dask_array(x: Any) -> bool:
    """Whether ``x`` is a ``dask.array.Array``, told without importing Dask."""
    t = type(x)
    return t.__name__ == "Array" and t.__module__.startswith("dask.")


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and len(getattr(v, "shape", ())) > 0


class _Operand:
    """One array argument: the Dask array, its shape, and the index of each of its axes."""

    def __init__(self, array: Any, position: int):
        self.array = array
        self.position = position
        self.index: tuple[str, ...] = ()


def call(state: Any, args: tuple, kwargs: dict, decorate: Callable) -> Any:
    """``state``'s function over Dask arrays: a Dask array (see the module docstring).
    ``decorate`` is ``offload`` (given, not imported: _dispatch imports this module), with which
    a worker decorates a function sent by value again."""
    wrapper = state.wrapper()
    verdict = getattr(wrapper, "__autooffload_blockwise__", None)
    kind = getattr(verdict, "kind", None)
    if kind is None:
        why = getattr(verdict, "reason", "") or "not declared"
        raise TypeError(
            f"{state.name} was given a Dask array, but it is not known to be blockwise ({why}). "
            f"A Dask array is computed block by block, which gives this function's result only if "
            f"each output element depends on the inputs at the same position: if it does, declare "
            f"it with @offload(blockwise=True) (or blockwise='rows' when each leading-axis row is "
            f"independent); otherwise compute the Dask array first (x.compute())."
        )
    import dask.array as da
    from dask.array.utils import meta_from_array

    names = list(kwargs)
    values = list(args) + [kwargs[k] for k in names]
    for v in values:
        if isinstance(v, (list, tuple, dict)) and any(is_dask_array(x) for x in (v.values() if isinstance(v, dict) else v)):
            raise TypeError(f"{state.name}: a Dask array inside a {type(v).__name__} argument cannot be split "
                            f"into blocks; pass each Dask array as an argument of its own")
    if not any(is_dask_array(v) for v in values):
        raise TypeError(f"{state.name}: of Dask's collections, only dask.array.Array arguments are split into "
                        f"blocks; got {', '.join(sorted({type(v).__qualname__ for v in values if type(v).__module__.startswith('dask.')}))}")
    operands = []
    for i, v in enumerate(values):
        if is_dask_array(v):
            operands.append(_Operand(v, i))
        elif _is_array(v):
            operands.append(_Operand(da.asarray(v), i))  # a host (or device) array: one more operand
    for op in operands:
        if any(np.isnan(s) for s in op.array.shape):
            raise ValueError(f"{state.name}: a Dask argument has unknown chunk sizes (shape {op.array.shape}); "
                             f"call .compute_chunk_sizes() on it first")
    shapes = [tuple(int(s) for s in op.array.shape) for op in operands]
    try:
        out_shape = np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"{state.name}: the array arguments' shapes {shapes} do not broadcast together") from None
    out_ndim = len(out_shape)

    dummies = 0
    for op, shape in zip(operands, shapes):
        offset = out_ndim - len(shape)
        index = []
        for j, n in enumerate(shape):
            if n == 1 and out_shape[offset + j] != 1:
                index.append(f"b{dummies}")  # broadcast: passed whole along this axis, not aligned
                dummies += 1
            else:
                index.append(f"i{offset + j}")
        op.index = tuple(index)
        if kind == "rows":
            whole = {j: -1 for j, ix in enumerate(index) if ix != "i0" and op.array.numblocks[j] > 1}
            if whole:
                op.array = op.array.rechunk(whole)  # a row must be in one block

    dtype, out_index, new_axes = _trial(state, kind, values, operands, names, len(args), out_shape)
    first = next((op.array for op in operands if is_dask_array(values[op.position])), operands[0].array)
    meta = meta_from_array(first._meta, ndim=len(out_index), dtype=dtype)
    by_position = {op.position: op for op in operands}
    pairs: list[Any] = []
    for i, v in enumerate(values):
        operand = by_position.get(i)
        pairs += [v, None] if operand is None else [operand.array, operand.index]
    task = _BlockCall(wrapper, len(args), tuple(names), copy=bool(state.executor.may_write and not state.executor.pure),
                      options=state.options, decorate=decorate)
    return da.blockwise(task, out_index, *pairs, dtype=dtype, meta=meta, new_axes=new_axes or None,
                        align_arrays=True, concatenate=True, token=_task_name(wrapper))


def _task_name(wrapper: Callable) -> str:
    name = getattr(wrapper, "__name__", "offloaded")
    return f"offload-{name}" if name.isidentifier() else "offload"


def _trial(state: Any, kind: str, values: list, operands: list, names: list, n_args: int,
           out_shape: tuple) -> tuple[np.dtype, tuple[str, ...], dict[str, int]]:
    """(result dtype, output index, new axes) from the undecorated function on tiny blocks of
    ones (two rows, two elements per aligned axis; whole rows for "rows"). Where the trial fails,
    the NumPy result type of the arguments and the broadcast shape are assumed."""
    out_ndim = len(out_shape)
    full_index = tuple(f"i{a}" for a in range(out_ndim))
    trial_values = list(values)
    trial_shapes = []
    for op in operands:
        dims: list[int] = []
        for ix, n in zip(op.index, op.array.shape):
            n = int(n)
            if ix.startswith("b") or n == 1:
                dims.append(1)
            elif kind == "elements" or ix == "i0":
                dims.append(min(n, 2))
            else:
                dims.append(n)  # "rows": the whole row
        trial_shapes.append(tuple(dims))
        trial_values[op.position] = np.ones(dims, dtype=op.array.dtype)
    expected = np.broadcast_shapes(*trial_shapes)
    args, kwargs = tuple(trial_values[:n_args]), dict(zip(names, trial_values[n_args:]))
    args, kwargs = state.executor.with_xp(args, kwargs, np)
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = state.func(*args, **kwargs)
    except Exception as exc:  # the function's own error on ones: it meets it again on the real blocks
        dtype = np.result_type(*[op.array.dtype for op in operands],
                               *[v for v in values if isinstance(v, (int, float, complex, np.generic))])
        logger.debug("%s: the Dask trial call raised %s: %s; result dtype taken as %s", state.name,
                     type(exc).__name__, exc, dtype)
        return dtype, full_index, {}
    if out is None:
        raise TypeError(f"{state.name} returned None on a trial block: over a Dask array its result is built "
                        f"from what it returns per block (blocks are inputs, writes into them are lost); "
                        f"return the result")
    if isinstance(out, (tuple, list, dict)):
        raise TypeError(f"{state.name} returned a {type(out).__name__} on a trial block: over a Dask array, "
                        f"an offloaded function must return one array")
    shape = tuple(getattr(out, "shape", np.shape(out)))
    dtype = np.dtype(getattr(out, "dtype", np.result_type(out)))
    if kind == "elements":
        if shape != expected:
            raise ValueError(
                f"{state.name} is declared blockwise, but on trial blocks of shapes {trial_shapes} it "
                f"returned shape {shape}, not the broadcast shape {expected}: its output elements do not "
                f"depend only on the inputs at the same position; use blockwise='rows' if it works row by "
                f"row, or compute the Dask array first"
            )
        return dtype, full_index, {}
    # rows
    if out_ndim == 0 or not shape or shape[0] != expected[0]:
        raise ValueError(
            f"{state.name} is declared blockwise='rows', but on a trial block of {expected[0] if expected else 0} "
            f"rows (shape {expected}) it returned shape {shape}: a rows function returns one result row "
            f"per input row along the leading axis"
        )
    if shape[1:] == expected[1:]:
        return dtype, full_index, {}
    new = tuple(f"n{k}" for k in range(len(shape) - 1))
    return dtype, ("i0", *new), dict(zip(new, shape[1:]))


# -- the task ------------------------------------------------------------------------------------
class _BlockCall:
    """One block's call: the offloaded wrapper on the blocks (keyword arguments put back)."""

    def __init__(self, func: Callable, n_args: int, names: tuple, *, copy: bool, options: dict, decorate: Callable):
        self.func = func
        self.decorate = decorate
        self.n_args = n_args
        self.names = names
        self.copy = copy  # the function may write into its arguments: give it blocks of its own
        self.options = options
        self.__name__ = getattr(func, "__name__", "offloaded")

    def __call__(self, *values: Any) -> Any:
        if self.copy:
            values = tuple(v.copy() if _is_array(v) and hasattr(v, "copy") else v for v in values)
        n = self.n_args
        return self.func(*values[:n], **dict(zip(self.names, values[n:])))

    def __dask_tokenize__(self) -> tuple:
        return (_reference(self.func) or id(self.func), self.n_args, self.names, self.copy)

    def __reduce__(self) -> tuple:
        if _reference(self.func) is not None:
            return (_BlockCall._rebuild, (self.func, self.n_args, self.names, self.copy, self.options, self.decorate))
        return (_rebuilt_call, (_raw_payload(self.func), self.options, self.n_args, self.names, self.copy, self.decorate))

    @staticmethod
    def _rebuild(func, n_args, names, copy, options, decorate):
        return _BlockCall(func, n_args, names, copy=copy, options=options, decorate=decorate)


def _reference(func: Callable) -> tuple[str, str] | None:
    """(module, qualname) if pickle finds ``func`` itself under that name in another process."""
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__" or "<locals>" in qualname:
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:
        return None
    return (module, qualname) if obj is func else None


def _raw_payload(func: Callable) -> bytes:
    """The undecorated function, pickled by value (cloudpickle, which Dask's distributed scheduler
    ships with), for a worker to decorate again."""
    state = func.__autooffload__  # type: ignore[attr-defined]
    try:
        import cloudpickle  # type: ignore[import-untyped]
    except ImportError:
        raise TypeError(
            f"{state.name}: Dask workers in other processes find an offloaded function by its module and "
            f"name, and this one cannot be found so (define it at a module's top level, not in __main__ "
            f"or inside a function), nor sent by value (cloudpickle is not installed)"
        ) from None
    return cloudpickle.dumps((state.func, getattr(func, "__name__", "offloaded")))


_REBUILT: dict[bytes, Callable] = {}
_rebuilt_lock = threading.Lock()


def _rebuilt_call(payload: bytes, options: dict, n_args: int, names: tuple, copy: bool, decorate: Callable) -> _BlockCall:
    """On a worker: the function of ``payload`` decorated again, once per process (so its
    decisions and learning carry over from block to block)."""
    key = hashlib.sha1(payload + repr(sorted(options.items())).encode()).digest()
    with _rebuilt_lock:
        wrapper = _REBUILT.get(key)
        if wrapper is None:
            import pickle

            raw, _name = pickle.loads(payload)
            wrapper = _REBUILT[key] = decorate(**options)(raw)
    return _BlockCall(wrapper, n_args, names, copy=copy, options=options, decorate=decorate)
