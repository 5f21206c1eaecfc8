"""Moving a call's arguments to the other side, and putting writes and results back.

``to_device`` prepares a GPU run of a call whose arrays live on the host; ``to_host`` a NumPy
run of a call whose arrays live on the device. Either way:

- arrays anywhere in args/kwargs (nested tuple, list, dict) are copied; other objects pass as
  they are; the same array object passed twice becomes one copy;
- arrays whose memory overlaps (``f(a, a[1:])``) are copied as one byte span and rebuilt as views
  of it, so a write through one is seen through the other, as in the original;
- after the call, copies whose bits changed are written back into the caller's arrays (also
  strided views), so no write is lost; ``pure=True`` skips the detection;
- the result comes back to the caller's side: an argument returned as is (``x *= 5; return x``)
  is the caller's own array again, a view of one is a view of the caller's memory, other arrays
  are copied, and a 0-d host result becomes the NumPy scalar NumPy returns; results in any
  container (dict and list subclasses, namespaces, objects, iterators) are converted (``map_result``).

Every copy across (not the device-side snapshots) goes through ``Moved._metered``, which adds
its bytes and seconds to the function's timesheet when the executor passes a meter (see
_timesheet.py: copies are where a device run's time often goes, and where users look first).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import time
import types
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np

from ._address import array_address
from .backends import DEVICE_DTYPES, DeviceMemory, bits_differ, why_not_on_device
from ._layout import translate_view
from ._rebind import _LIBRARY_ROOTS
from ._timesheet import CopyMeter

_ALIGN = 256  # device allocations are at least this aligned; span starts are aligned down to it


class Ineligible(Exception):
    """The arguments cannot be moved to the device faithfully; the call must run on NumPy."""


class NumPyWouldRaise(Exception):
    """The device run did what NumPy would have refused on the caller's arrays: rerun there."""


class ReadOnlyWritten(NumPyWouldRaise):
    """The device run wrote into a copy of a read-only host array: NumPy would have raised."""


class ShapeRefused(NumPyWouldRaise):
    """The device run set a shape on a copy that the caller's array cannot take in place."""


def extent(ptr: int, shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """[low, high) byte addresses an array touches (low == high for an empty array)."""
    if 0 in shape:
        return ptr, ptr
    low = high = ptr
    for n, stride in zip(shape, strides):
        if stride > 0:
            high += (n - 1) * stride
        else:
            low += (n - 1) * stride
    return low, high + itemsize


def map_tree(obj: Any, leaf: Callable[[Any], Any], is_leaf: Callable[[Any], bool], rebuilt: list | None = None) -> Any:
    """``obj`` with every leaf replaced by ``leaf(it)``; containers rebuilt only when changed.

    ``rebuilt`` collects (original, new) for each container that had to be rebuilt.
    """
    if is_leaf(obj):
        return leaf(obj)
    t = type(obj)
    if t is tuple or t is list:
        items = [map_tree(x, leaf, is_leaf, rebuilt) for x in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        new = t(items)
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        items = [map_tree(x, leaf, is_leaf, rebuilt) for x in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        new = t(*items)
    elif t is dict:
        new = {k: map_tree(v, leaf, is_leaf, rebuilt) for k, v in obj.items()}
        if all(new[k] is v for k, v in obj.items()):
            return obj
    else:
        return obj
    if rebuilt is not None:
        rebuilt.append((obj, new))
    return new


# How deep a result is converted: far beyond real results, well inside Python's recursion limit.
_RESULT_DEPTH = 64
_ATOMS = frozenset({str, bytes, int, float, complex, bool, type(None), range, slice})
_UNSEEN = object()


def map_result(obj: Any, leaf: Callable[[Any], Any], is_leaf: Callable[[Any], bool],
               known: dict[int, Any] | None = None) -> Any:
    """``obj`` with every leaf replaced by ``leaf(it)``, through any container a result can be.

    Mutable containers (lists, dicts and their subclasses, objects with a plain ``__dict__``:
    SimpleNamespace, dataclasses, the function's own classes) are converted in place: they keep
    their type, identity and extra state (OrderedDict's order, defaultdict's factory, attributes
    of a subclass), and a result also stored elsewhere (``self.history``, and returned) stays one
    object, as on NumPy. Tuples, namedtuples and slotted dataclasses are rebuilt; iterators are
    converted item by item as they are drawn (see ``_converted_lazily``); sets cannot hold arrays.
    ``known`` maps id(object) -> what it becomes (the argument containers rebuilt for the call
    become the caller's own). Objects are visited once, so cycles and shared parts stay as they are.
    """
    return _ResultMap(leaf, is_leaf, known)(obj, 0)


class _ResultMap:
    def __init__(self, leaf, is_leaf, known):
        self.leaf = leaf
        self.is_leaf = is_leaf
        self.known = known
        self.done: dict[int, Any] = dict(known) if known else {}

    def __call__(self, obj: Any, depth: int) -> Any:
        if self.is_leaf(obj):
            return self.leaf(obj)
        t = type(obj)
        if t in _ATOMS or depth > _RESULT_DEPTH:
            return obj
        found = self.done.get(id(obj), _UNSEEN)
        if found is not _UNSEEN:
            return found
        if isinstance(obj, tuple):
            items = [self(x, depth + 1) for x in obj]
            if all(a is b for a, b in zip(items, obj)):
                new = obj
            elif t is tuple:
                new = tuple(items)
            else:
                new = obj._make(items) if hasattr(obj, "_fields") else t(items)
            self.done[id(obj)] = new
            return new
        self.done[id(obj)] = obj  # converted in place: a cycle back to it finds it as it is
        if isinstance(obj, list):
            for i, x in enumerate(obj):
                y = self(x, depth + 1)
                if y is not x:
                    list.__setitem__(obj, i, y)
        elif isinstance(obj, dict):
            self._convert_values(obj, depth, OrderedDict.__setitem__ if isinstance(obj, OrderedDict) else dict.__setitem__)
        elif _is_lazy_iterator(obj):
            lazy = _converted_lazily(obj, self.leaf, self.is_leaf, self.known)
            self.done[id(obj)] = lazy
            return lazy
        elif dataclasses.is_dataclass(obj) and not hasattr(obj, "__dict__"):
            return self._rebuilt_slotted_dataclass(obj, depth)
        attributes = plain_attributes(obj)
        if attributes is not None:
            self._convert_values(attributes, depth, dict.__setitem__)
        return obj

    def _convert_values(self, d: dict, depth: int, setitem) -> None:
        for k, v in list(d.items()):
            new = self(v, depth + 1)
            if new is not v:
                setitem(d, k, new)

    def _rebuilt_slotted_dataclass(self, obj: Any, depth: int) -> Any:
        changes = {}
        for f in dataclasses.fields(obj):
            if f.init:
                value = getattr(obj, f.name)
                new = self(value, depth + 1)
                if new is not value:
                    changes[f.name] = new
        new = dataclasses.replace(obj, **changes) if changes else obj
        self.done[id(obj)] = new
        return new


def _is_lazy_iterator(obj: Any) -> bool:
    """An iterator of the language's own (generator, map, filter, zip, list_iterator, itertools...):
    nothing but its items. A user's iterator class, or a file, keeps its own type and API."""
    return isinstance(obj, Iterator) and type(obj).__module__ in ("builtins", "itertools")


def _converted_lazily(items: Iterator, leaf, is_leaf, known) -> Iterator:
    """Each item converted when drawn. Not materialised at return: an iterator may be endless or
    huge, and its items are computed when drawn on NumPy too; so the work (and any side effect)
    happens at the same point as on NumPy. The caller gets a generator in place of a map, zip or
    list_iterator; items keep being computed on the device."""
    for item in items:
        yield _ResultMap(leaf, is_leaf, known)(item, 0)


def plain_attributes(obj: Any) -> dict | None:
    """The instance ``__dict__`` of an object whose state is plain attributes, or None.

    Classes, modules, functions (their state is globals and closures, swept on their own),
    arrays (of any subclass) and objects of NumPy, CuPy or SciPy (a device object is whole only
    with its device arrays) are never opened.
    """
    if isinstance(obj, _OPAQUE):
        return None
    attributes = getattr(obj, "__dict__", None)
    if type(attributes) is not dict:
        return None
    module = getattr(type(obj), "__module__", None) or ""
    return None if module.split(".")[0] in _LIBRARY_ROOTS else attributes


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType,
           functools.partial, property, np.ndarray, np.generic)


def iter_leaves(obj: Any, is_leaf: Callable[[Any], bool]):
    if is_leaf(obj):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            yield from iter_leaves(x, is_leaf)
    elif type(obj) is dict:
        for x in obj.values():
            yield from iter_leaves(x, is_leaf)


def _host_root_start(a: np.ndarray) -> int:
    """Lowest address known to belong to the allocation ``a`` lives in."""
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    return extent(array_address(root), root.shape, root.strides, root.itemsize)[0]


def _host_bytes_at(low: int, nbytes: int) -> np.ndarray:
    """A writable uint8 view of host memory [low, low + nbytes) (the caller keeps it alive)."""
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(low), dtype=np.uint8)


@dataclasses.dataclass
class _Entry:
    original: Any  # the caller's array
    copy: Any  # its copy on the other side, the object the function receives
    # A view of `copy` taken when moved: the memory in the original's shape, whatever shape the
    # function sets on `copy` (write detection and write-back read this).
    as_moved: Any
    snapshot: Any = None  # a copy of `copy` taken before the call (write detection)
    always_write_back: bool = False  # no snapshot could be made: write back unconditionally


@dataclasses.dataclass
class _Layout:
    """How a dense copy's elements sit in the strided original it was made from."""

    shape: tuple[int, ...]
    copy_strides: tuple[int, ...]
    original_strides: tuple[int, ...]
    original_start: int  # offset of the original's first element in the region's original_bytes
    element_size: int
    swapped_dtype: Any = None  # the original's dtype where its byte order differs from the copy's

    def translate(self, offset: int, x: Any) -> tuple[int, tuple[int, ...], Any] | None:
        """(offset in original_bytes, strides, dtype) of the caller-side view matching ``x``."""
        dtype = x.dtype
        if self.swapped_dtype is not None:
            if dtype != self.swapped_dtype.newbyteorder("="):
                return None  # a view of other elements than the original's sees other bytes there
            dtype = self.swapped_dtype
        mapped = translate_view(offset, x.shape, x.strides, x.itemsize, dense_shape=self.shape,
                                dense_strides=self.copy_strides, target_strides=self.original_strides,
                                element_size=self.element_size)
        if mapped is None:
            return None
        return self.original_start + mapped[0], mapped[1], dtype


@dataclasses.dataclass
class _Region:
    """Copy-side bytes [low, high) that hold the elements of caller-side memory.

    Without ``layout`` they mirror the caller's bytes one to one (a view maps at the same offset
    and strides); with it, the copy is a dense copy of one strided (or byte-swapped) original.
    """

    low: int
    high: int
    original_bytes: Any  # uint8 array over the caller's bytes
    layout: _Layout | None = None
    readonly: bool = False  # the caller's array was read-only: so is a view of it, as in NumPy


class Moved:
    """One call's arguments moved to the other side, and the way back."""

    def __init__(self, backend: DeviceMemory, to_device: bool, pure: bool, meter: CopyMeter | None = None):
        self.meter = meter
        self.device_idle = False  # the device has finished the work queued before a copy to the host
        self.containers: list = []
        self.tuples: dict[int, tuple] = {}  # id(rebuilt tuple) -> (it, the caller's tuple)
        self.backend = backend
        self.to_device = to_device
        self.pure = pure
        self.entries: dict[int, _Entry] = {}  # id(original) -> entry
        self.by_copy: dict[int, Any] = {}  # id(copy) -> original
        self.regions: list[_Region] = []
        self.args: tuple = ()
        self.kwargs: dict = {}
        # id(copy-side array) -> (it, what it became): an array met twice (returned and stored,
        # or twice in a result) comes back as one array, as on NumPy.
        self.converted: dict[int, tuple[Any, Any]] = {}
        self.unmirrored = False  # move_plain's copies have no regions yet
        self.modules = False  # move_plain met a module among the arguments

    # -- the two sides -----------------------------------------------------------------------
    def is_original(self, x: Any) -> bool:
        if self.to_device:
            return type(x) is np.ndarray or type(x) is np.memmap
        return type(x) is self.backend.array_type

    def _is_copy_side(self, x: Any) -> bool:
        if self.to_device:
            return type(x) is self.backend.array_type
        return isinstance(x, (np.ndarray, np.generic))

    def _pointer(self, a: Any) -> int:
        return array_address(a) if self.to_device else self.backend.pointer(a)

    def _extent(self, a: Any) -> tuple[int, int]:
        return extent(self._pointer(a), a.shape, a.strides, a.itemsize)

    def _copy_over(self, a: Any) -> Any:
        if self.to_device:
            return self._metered(True, a.nbytes, self.backend.to_device, a)
        return self._metered(False, a.nbytes, self.backend.to_host, a)

    def _metered(self, host_to_device: bool, nbytes: int, copy: Callable, *args: Any, **kwargs: Any) -> Any:
        """``copy(*args, **kwargs)``, its bytes and seconds added to the meter when there is one."""
        meter = self.meter
        if meter is None:
            return copy(*args, **kwargs)
        if not host_to_device and not self.device_idle:
            # A copy to the host first waits for the device work queued before it (the run
            # itself): wait for that outside the timed span, so the copy's time is the copy's.
            self.backend.synchronize()
            self.device_idle = True
        start = time.perf_counter()
        result = copy(*args, **kwargs)
        meter.copied(host_to_device, nbytes, time.perf_counter() - start)
        return result

    def _snapshot(self, copy: Any) -> Any:
        return self.backend.copy(copy) if self.to_device else copy.copy(order="K")

    # -- moving ------------------------------------------------------------------------------
    def move(self, args: tuple, kwargs: dict) -> "Moved":
        flat = not kwargs and not any(isinstance(a, (tuple, list, dict)) for a in args)
        unique: dict[int, Any] = {}
        for leaf in (a for a in args if self.is_original(a)) if flat else iter_leaves((args, kwargs), self.is_original):
            unique.setdefault(id(leaf), leaf)
        try:
            for group in self._overlap_groups(list(unique.values())):
                if len(group) == 1:
                    self._move_single(group[0])
                else:
                    self._move_span(group)
        except BaseException:
            self.discard()
            raise
        rebuilt: list = []
        if flat:  # positional arguments only, none a container: what map_tree would do, in one pass
            self.args = tuple(self._copy_of(a) if self.is_original(a) else a for a in args)
            if unique:
                rebuilt.append((args, self.args))
            else:
                self.args = args
            self.kwargs = kwargs
        else:
            self.args = map_tree(args, self._copy_of, self.is_original, rebuilt)
            self.kwargs = map_tree(kwargs, self._copy_of, self.is_original, rebuilt)
        if self.kwargs is not kwargs:
            rebuilt = [(o, n) for o, n in rebuilt if o is not kwargs]  # the ** dict is ours, not the caller's
        # The caller's lists and dicts that hold arrays were rebuilt with copies: remember what
        # they held, so appends, pops and item assignments made by the run can be replayed.
        self.containers = [(o, n, list(n.items()) if type(n) is dict else list(n))
                           for o, n in rebuilt if not isinstance(n, tuple)]
        # Tuples cannot change: a rebuilt one returned or stored is the caller's own again.
        self.tuples = {id(n): (n, o) for o, n in rebuilt if isinstance(n, tuple)}
        return self

    def _copy_of(self, original: Any) -> Any:
        return self.entries[id(original)].copy

    def _overlap_groups(self, arrays: list) -> list[list]:
        """Arrays grouped so that any two whose byte ranges overlap share a group."""
        groups: list[list] = []
        spans = []
        for a in arrays:
            low, high = self._extent(a)
            if low == high:  # empty: touches no memory
                groups.append([a])
            else:
                spans.append((low, high, a))
        spans.sort(key=lambda t: t[0])
        current_high = None
        for low, high, a in spans:
            if current_high is not None and low < current_high:
                groups[-1].append(a)
                current_high = max(current_high, high)
            else:
                groups.append([a])
                current_high = high
        return groups

    def _new_entry(self, original: Any, copy: Any) -> _Entry:
        entry = _Entry(original, copy, copy.view())
        self.entries[id(original)] = entry
        self.by_copy[id(copy)] = original
        return entry

    def move_plain(self, args: tuple) -> "Moved":
        """``move`` to the device for a call ``Executor.plain_call`` accepted, with ``pure`` set:
        each array copied and nothing else. The regions that results are matched against are
        made only when a result shares memory with a copy (``_view_of_original``): on the H200
        the general path cost ~19 us more on a ~120 us small library call (bessel at 1e3,
        benchmarks/results/h200/gpu_gaps.device-path-parts.txt)."""
        assert self.to_device and self.pure
        copies: list = []
        copy = None
        try:
            for a in args:
                if type(a) is np.ndarray:
                    copy = self._copy_over(a)
                    self.entries[id(a)] = _Entry(a, copy, copy)
                    self.by_copy[id(copy)] = a
                    copies.append(copy)
                else:
                    if type(a) is types.ModuleType:
                        self.modules = True  # np passed in: translated for the device run
                    copies.append(a)
        except BaseException:
            copies, copy = [], None  # the traceback keeps this frame: the copies made so far go now
            self.discard()
            raise
        self.args, self.kwargs = tuple(copies), {}
        self.unmirrored = True
        return self

    def _mirror_all(self) -> None:
        self.unmirrored = False
        for entry in self.entries.values():
            self._mirror(entry.original, entry.copy)

    def _move_single(self, original: Any) -> None:
        if self.to_device and (why := why_not_on_device(original)) is not None:
            raise Ineligible(f"{why} cannot live on the GPU")
        copy = self._copy_over(original)
        entry = self._new_entry(original, copy)
        if not self.pure:
            try:
                entry.snapshot = self._snapshot(copy)
            except MemoryError:  # cupy's OutOfMemoryError is a MemoryError
                entry.always_write_back = True
        self._mirror(original, copy)

    def _mirror(self, original: Any, copy: Any) -> None:
        # Results that are views of the copy can become views of the original: byte for byte
        # where the layouts and byte orders match, else through the copy's layout.
        if original.nbytes:
            low = self._copy_pointer(copy)
            original_low, original_high = self._extent(original)
            region = _Region(low, low + copy.nbytes, self._original_bytes(original, original_low, original_high),
                             readonly=_read_only(original))
            contiguous = original.flags.c_contiguous or original.flags.f_contiguous
            same_bytes = original.dtype == copy.dtype  # not so for a non-native original: its copy is native
            if not (contiguous and same_bytes and original.strides == copy.strides):
                region.layout = _Layout(tuple(copy.shape), tuple(copy.strides), tuple(original.strides),
                                        self._pointer(original) - original_low, original.itemsize,
                                        None if same_bytes else original.dtype)
            self.regions.append(region)

    def _original_bytes(self, like: Any, low: int, high: int) -> Any:
        """A uint8 array over the caller-side bytes [low, high) that ``like`` lives in."""
        if self.to_device:
            return _host_bytes_at(low, high - low)
        return self.backend.bytes_at(like, low, high - low)

    def _copy_pointer(self, copy: Any) -> int:
        return self.backend.pointer(copy) if self.to_device else array_address(copy)

    def _move_span(self, group: list) -> None:
        low = min(self._extent(a)[0] for a in group)
        high = max(self._extent(a)[1] for a in group)
        start = max(min(self._allocation_start(a) for a in group), low - low % _ALIGN)
        for a in group:
            if self.to_device and (why := why_not_on_device(a)) is not None:
                raise Ineligible(f"{why} cannot live on the GPU")
            if not a.dtype.isnative:  # the span is copied byte for byte: no byte order conversion
                raise Ineligible(f"overlapping array arguments in non-native byte order ({a.dtype}) cannot be copied as one span")
            if (self._pointer(a) - start) % a.dtype.alignment:
                raise Ineligible("overlapping array arguments at offsets the device cannot align")
        original_span = self._original_bytes(group[0], start, high)
        copy_span = self._copy_over(original_span)
        snap_span = None
        if not self.pure:
            try:
                snap_span = self._snapshot(copy_span)
            except MemoryError:
                snap_span = None
        for a in group:
            offset = self._pointer(a) - start
            copy = self._view(copy_span, a, offset)
            entry = self._new_entry(a, copy)
            if not self.pure:
                if snap_span is None:
                    entry.always_write_back = True
                else:
                    entry.snapshot = self._view(snap_span, a, offset)
        copy_low = self._copy_pointer(copy_span)
        self.regions.append(_Region(copy_low, copy_low + (high - start), original_span,
                                    readonly=all(_read_only(a) for a in group)))

    def _allocation_start(self, a: Any) -> int:
        return _host_root_start(a) if self.to_device else self.backend.allocation_start(a)

    def _view(self, span: Any, like: Any, offset: int) -> Any:
        if self.to_device:
            return self.backend.view(span, like.shape, like.dtype, offset, like.strides)
        return np.ndarray(like.shape, like.dtype, buffer=span, offset=offset, strides=like.strides)

    # -- writes ------------------------------------------------------------------------------
    def write_back(self) -> None:
        """Put every write the run made into a copy back into the caller's arrays and containers."""
        if self.pure:
            return
        self._write_back_arrays()
        self._write_back_containers()

    def _write_back_containers(self) -> None:
        for original, new, before in getattr(self, "containers", ()):
            now = list(new.items()) if type(new) is dict else list(new)
            if len(now) == len(before) and all(
                a is b if type(new) is not dict else (a[0] == b[0] and a[1] is b[1]) for a, b in zip(now, before)
            ):
                continue
            if type(new) is dict:
                converted = {k: self.result(v) for k, v in new.items()}
                original.clear()
                original.update(converted)
            else:
                original[:] = [self.result(v) for v in new]

    def _write_back_arrays(self) -> None:
        if not self.entries:
            return
        entries = list(self.entries.values())
        checked = [e for e in entries if e.snapshot is not None]
        if self.to_device:
            flags = self.backend.changed([(e.as_moved, e.snapshot) for e in checked])
        else:
            flags = [bool(bits_differ(e.as_moved, e.snapshot).any()) for e in checked]
        dirty = [e for e, f in zip(checked, flags) if f] + [e for e in entries if e.always_write_back]
        reshaped = [e for e in entries if tuple(e.copy.shape) != tuple(e.as_moved.shape)]
        # First what NumPy would have refused, before anything reaches the caller.
        for e in reshaped:
            try:
                e.original.view().shape = e.copy.shape
            except AttributeError as exc:  # NumPy's own words for it
                raise ShapeRefused(str(exc)) from exc
        if self.to_device:
            for e in dirty:
                if not e.original.flags.writeable:
                    if e.always_write_back:
                        continue  # cannot tell whether it was written; NumPy would have raised if so
                    raise ReadOnlyWritten(f"the function wrote into a read-only array of shape {e.original.shape}")
            for e in dirty:
                if e.original.flags.writeable:
                    self._copy_back(e.original, e.as_moved)
        else:
            for e in dirty:
                self._metered(True, e.as_moved.nbytes, self.backend.assign, e.original, e.as_moved)
        for e in reshaped:  # in NumPy the caller's array is the object whose shape was set
            e.original.shape = e.copy.shape

    def _copy_back(self, original: np.ndarray, copy: Any) -> None:
        """Write a device copy's values into the caller's host array, in the caller's byte order."""
        if original.dtype == copy.dtype:
            self._metered(False, copy.nbytes, self.backend.to_host, copy, out=original)
        else:  # a non-native original (its copy is native): NumPy converts on assignment
            original[...] = self._metered(False, copy.nbytes, self.backend.to_host, copy)

    def discard(self) -> None:
        """Drop every reference to the copies and snapshots (the call is over or abandoned)."""
        self.entries.clear()
        self.by_copy.clear()
        self.regions.clear()
        self.converted.clear()
        self.containers = []
        self.tuples = {}
        self.args, self.kwargs = (), {}

    # -- results -----------------------------------------------------------------------------
    def result(self, obj: Any) -> Any:
        """The call's result on the caller's side (after ``write_back``).

        Also what anything the run stored where the caller can reach it becomes (_reachable.py).
        """
        if type(obj) is self.backend.array_type and self.to_device:
            return self._result_leaf(obj)  # the common case, without the walk (~2 us)
        known = {id(new): original for original, new, _ in self.containers}
        known.update((key, original) for key, (_, original) in self.tuples.items())
        return map_result(obj, self._result_leaf, self._is_copy_side, known)

    def _result_leaf(self, x: Any) -> Any:
        original = self.by_copy.get(id(x))
        if original is not None:
            return original
        done = self.converted.get(id(x))
        if done is not None:
            return done[1]
        if self.unmirrored and self.to_device and x.ndim and not self._overlaps_a_copy(
                *extent(self._copy_pointer(x), x.shape, x.strides, x.itemsize)):
            # After move_plain, an array apart from every copy is new: straight to the host, past
            # _converted_leaf's layers (each costs 1-3 us inside a small call on the H200).
            new = self._metered(False, x.nbytes, self.backend.to_host, x)
        else:
            new = self._converted_leaf(x)
        self.converted[id(x)] = (x, new)  # x kept alive: its id stays its own
        return new

    def _converted_leaf(self, x: Any) -> Any:
        if self.to_device:
            if x.ndim == 0:
                # CuPy gives 0-d arrays where NumPy gives scalars (reductions, ufuncs, x[i]), and
                # the device object cannot tell which NumPy would have given: the scalar, the far
                # more common case (np.asarray(x.sum()), x[..., 0] are NumPy 0-d arrays: README).
                return self._metered(False, x.nbytes, self.backend.to_host, x)[()]
            view = self._view_of_original(x, self._copy_pointer(x))
            if view is not None:
                return view
            host = self._metered(False, x.nbytes, self.backend.to_host, x)
            return host[()] if host.ndim == 0 else host
        if isinstance(x, np.generic):
            x = np.asarray(x)
        elif x.dtype not in DEVICE_DTYPES:
            return x  # an object, string or long double result of the NumPy run cannot live on the device
        view = self._view_of_original(x, self._copy_pointer(x))
        return view if view is not None else self._metered(True, x.nbytes, self.backend.to_device, x)

    def _overlaps_a_copy(self, low: int, high: int) -> bool:
        """Whether copy-side bytes [low, high) overlap one of the copies (before ``_mirror_all``)."""
        for entry in self.entries.values():
            start = self._copy_pointer(entry.copy)
            if low < start + entry.copy.nbytes and start < high:
                return True
        return False

    def _view_of_original(self, x: Any, ptr: int) -> Any:
        """The caller-side view matching ``x`` when ``x`` lies in memory mirrored from the caller."""
        low, high = extent(ptr, x.shape, x.strides, x.itemsize)
        if self.unmirrored:
            if not self._overlaps_a_copy(low, high):
                return None
            self._mirror_all()  # x shares memory with a copy: match it as move() would
        for region in self.regions:
            if region.low <= low and high <= region.high and high > low:
                offset, strides, dtype = ptr - region.low, x.strides, x.dtype
                if region.layout is not None:
                    mapped = region.layout.translate(offset, x)
                    if mapped is None:
                        return None  # no view of the caller's memory holds these elements: a copy
                    offset, strides, dtype = mapped
                if self.to_device:
                    view = np.ndarray(x.shape, dtype, buffer=region.original_bytes, offset=offset, strides=strides)
                    if region.readonly:
                        view.flags.writeable = False
                    return view
                return self.backend.view(region.original_bytes, x.shape, dtype, offset, strides)
        return None


def _read_only(a: Any) -> bool:
    # CuPy's flags carry no ``writeable``: device arrays are always writeable.
    return not getattr(a.flags, "writeable", True)


def move(backend: DeviceMemory, args: tuple, kwargs: dict, *, to_device: bool, pure: bool,
         meter: CopyMeter | None = None) -> Moved:
    return Moved(backend, to_device, pure, meter).move(args, kwargs)
