"""Streamed execution of a blockwise call on host data: chunks through the GPU on several streams.

An unstreamed GPU call on host data is three steps in a row: copy every input in, compute, copy
every result out. For a blockwise function (``_blockwise.py``) the arguments can instead be cut
into chunks along one axis and each chunk run through the three steps on its own CUDA stream, so
that chunk i+1 is copied in while chunk i computes and chunk i-1 is copied out. The call then
costs about its slowest stage plus one chunk's fill and drain (``_costmodel.streamed_parts``), and
needs device memory for a few chunks only, so data larger than the GPU's free memory runs too.

How:

* ``plan()`` (pure) decides whether a call can stream and how: which arguments are split (those
  whose extent along the chunk axis is the call's), which are copied once (scalars stay as they
  are; small broadcast operands, e.g. a ``(1, m)`` row against ``(n, m)`` data, go to the device
  once), the chunk axis (the leading one; the last one for F-ordered data of an "elements"
  function, so that each chunk is contiguous), the chunk length, and which arguments the function
  writes into (copied back chunk by chunk: writes stay exact).
* ``run()`` keeps ``SLOTS`` chunks in flight. The calling thread copies chunk i in, on stream
  ``i % SLOTS``, and runs the function on it, on the same stream; an unloader thread copies its
  result (and its writes) out into the caller's result array (and arguments), on the same
  stream, then frees the slot. One stream per chunk keeps each chunk's allocations, kernels and
  copies ordered without events, and CuPy's memory pool (per-stream free lists) can never hand a
  chunk's memory to another stream while it is in use. Copies in from memory that is pinned
  (the caller's arrays pinned on reuse, kept results: ``backend.held_pinned`` keeps it pinned
  for the call) are queued without a wait, so the link never idles between chunks; others go
  through the copy engine (``_transfer.to_device``: pinned staging buffers reused across chunks
  and calls, native copy threads). Copies out run on the unloader, so both directions overlap
  the compute of the chunk between them.
* A failure CuPy signals at the first chunk raises ``DeviceFailure`` before anything was written
  back (the executor then falls back as for any device run); at a later chunk, the chunks
  already written back stay and the rest run on NumPy, chunk by chunk (a blockwise function's
  chunks are independent, so this is the call's NumPy result). A result that breaks the
  blockwise promise (a chunk's result not shaped like the chunk) raises ``BlockwiseBroken``.
  Ctrl-C is raised once the unloader is done and every stream synchronized (before that, copies
  may still read the caller's memory or write its arrays), never finished on NumPy, and wins
  over an error met meanwhile; pressed three times during one wait, it stops waiting (a device
  that never finishes must not make the process unkillable).

Queued from one thread, in stream order (session 8, tools/stream_timeline.py): with a loader
thread copying in, a chunk's kernel, queued just after the loader queued the next chunk's copy
on another stream, started only when that copy ended (1.1-1.3 ms lost, several times per call);
x *= 5 on 1e8 pinned float64 ran 19.3 ms against 14.5 for its slowest copy (1.33) where the same
pipeline queued from one thread with no waits ran 16.8-17.4 (1.15-1.19; both copies at once
alone: 16.0). Queued so, in stream order, it runs 1.06-1.09x that ideal pipeline's time (1.09 on
a fast start, where it ran 1.10-1.12x before; benchmarks/results/h200/stream-timeline.txt): a
small gain for one input (x *= 5 at 1e8 on fast starts: 1.28x its slowest stage against 1.31),
a large one for several: Black-Scholes at 1e8, whose three inputs are now queued back to back,
streamed 1.56-1.74x faster than the whole-array path against 1.46x (h200-session8/streaming.txt,
h200-session8-final/, h200-session8-run4/, h200-session8-start/). What bounds a streamed call
whose copies overlap is the link both ways at once, which varies by machine start: 1.10-1.33x
one direction alone.

Measured (H200, benchmarks/streaming.py, session 7): with the copies staged through host memory
the pipeline cost about the sum of its copies (1e8 float64: x *= 5 39.3 ms against 41.9 whole,
Black-Scholes 167 against 105; h200-unpinned/streaming.txt), since host memory bandwidth, not the
link, is the limit there. From pinned memory (the caller's arrays and kept results, pinned on
reuse: _pincache.py) the copies are DMAs and overlap: 23.3 against 32.6 ms, 59.7 against 89.1,
and at 1e9 x *= 5 174 against 307 ms (h200-session7/streaming.txt); so large calls on pinned memory
stream by default (_executor._pinned_enough). See README's "Blockwise functions" section.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import types
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import _hostmem
from ._blockwise import Verdict
from ._costmodel import MIN_CHUNK_BYTES, MIN_CHUNKS

# Chunks in flight: one being copied in, one computing, one being copied out.
SLOTS = 3
# Queued copies in are timed by CUDA events for the copy meter (``autooffload.report()``); off
# only to measure what the events cost (tools/stream_timeline.py).
TIME_QUEUED_COPIES = True

_SCALARS = (int, float, complex, bool, str, bytes, type(None), np.generic, types.ModuleType, np.dtype, type)


class DeviceFailure(Exception):
    """The device could not run the first chunk; nothing was written back."""

    def __init__(self, exc: BaseException):
        super().__init__(str(exc))
        self.exc = exc


class BlockwiseBroken(ValueError):
    """A chunk's result is not shaped like the chunk: the function is not blockwise as promised."""


def mode() -> str:
    """AUTOOFFLOAD_STREAM: "auto" (default: the cost model decides, and data larger than the
    GPU's free memory streams), "always" (every blockwise call on host data the GPU runs is
    streamed, for tests and benchmarks), "never"."""
    value = os.environ.get("AUTOOFFLOAD_STREAM", "auto").strip().lower() or "auto"
    if value not in ("auto", "always", "never"):
        from .errors import ConfigError

        raise ConfigError(f"AUTOOFFLOAD_STREAM must be auto, always or never; got {value!r}")
    return value


# os.environ's own mapping and the variable's key in it: a membership test there takes ~20 ns
# where os.environ.get takes ~0.7 us (timeit on the 2-core VM, session 12), and every small blockwise call on the device
# asks whether streaming is forced (os.environ keeps the mapping in step with its changes).
try:
    _ENVIRON, _STREAM_KEY = os.environ._data, os.environ.encodekey("AUTOOFFLOAD_STREAM")  # type: ignore[attr-defined]
except AttributeError:  # another Python's os.environ
    _ENVIRON, _STREAM_KEY = os.environ, "AUTOOFFLOAD_STREAM"


def always() -> bool:
    """``mode() == "always"``, at no cost where AUTOOFFLOAD_STREAM is unset."""
    return _STREAM_KEY in _ENVIRON and mode() == "always"


def chunk_override() -> int | None:
    """AUTOOFFLOAD_STREAM_CHUNK: input bytes per chunk (benchmarks sweep it); unset: the profile's choice."""
    value = os.environ.get("AUTOOFFLOAD_STREAM_CHUNK", "").strip()
    if not value:
        return None
    try:
        chunk = int(float(value))
    except ValueError:
        chunk = 0
    if chunk <= 0:
        from .errors import ConfigError

        raise ConfigError(f"AUTOOFFLOAD_STREAM_CHUNK must be a positive number of bytes; got {value!r}")
    return chunk


@dataclass(frozen=True)
class Operand:
    """One argument of a streamed call: where it is (position or keyword) and how it travels."""

    key: int | str
    split: bool  # cut into chunks; else copied to the device once (arrays) or passed as is
    axis: int  # the chunk axis in this operand's own dimensions (split operands)


@dataclass(frozen=True)
class Plan:
    """How one call streams (see ``plan``)."""

    kind: str  # "elements" or "rows"
    axis: int  # the chunk axis of the call's (broadcast) shape
    length: int  # the call's extent along it
    chunk: int  # elements along it per chunk
    shape: tuple[int, ...] | None  # the broadcast shape ("elements"), None for "rows"
    order: str  # "C" or "F": the layout of new result arrays
    operands: tuple[Operand, ...]  # array arguments
    written: tuple[int | str, ...]  # keys of split arguments the function writes into

    @property
    def chunks(self) -> int:
        return -(-self.length // self.chunk)

    def bounds(self, i: int) -> tuple[int, int]:
        start = i * self.chunk
        return start, min(self.length, start + self.chunk)


def _get(args: tuple, kwargs: dict, key: int | str) -> Any:
    return args[key] if isinstance(key, int) else kwargs[key]


def _param_key(func: Any, position: int, args: tuple, kwargs: dict) -> int | str | None:
    """Where parameter ``position`` of ``func`` is in this call: an index of ``args``, a keyword, or None."""
    if position < len(args):
        return position
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    if code is None or position >= len(code.co_varnames):
        return None
    name = code.co_varnames[position]
    return name if name in kwargs else None


def plan(verdict: Verdict, func: Any, args: tuple, kwargs: dict, chunk_bytes: int, *,
         may_write: bool, host_only: bool = True) -> Plan | str:
    """How this call streams, or why it cannot (a short reason). Pure: reads shapes and flags only.

    ``chunk_bytes``: the bytes of split arguments per chunk to aim for. ``may_write``: whether
    the function may write into its arguments (from ``_purity``), used when the verdict was
    declared (a proven verdict knows exactly which parameters it writes)."""
    from .backends.base import why_not_on_device

    if verdict.kind is None:
        return "not blockwise"
    arrays: list[tuple[int | str, np.ndarray]] = []
    for key, value in [*enumerate(args), *kwargs.items()]:
        if type(value) is np.ndarray:
            why = why_not_on_device(value)
            if why is not None:
                return f"argument {key} is {why}"
            arrays.append((key, value))
        elif not isinstance(value, _SCALARS) and not callable(value):
            return f"argument {key} is a {type(value).__name__}: streamed calls take arrays and scalars"
        elif type(value).__name__ == "ndarray" or hasattr(value, "__cuda_array_interface__"):
            return f"argument {key} is a device array"
    if not arrays:
        return "no array arguments"
    if verdict.kind == "elements":
        try:
            shape = np.broadcast_shapes(*(a.shape for _, a in arrays))
        except ValueError:
            return "the arrays do not broadcast together (NumPy raises)"
        ndim = len(shape)
        if ndim == 0:
            return "0-d arrays"
        full = [a for _, a in arrays if a.shape == shape]
        largest = max(full, key=lambda a: a.nbytes) if full else None
        # F-ordered data is cut along its last axis, where each chunk is contiguous.
        f_order = ndim > 1 and largest is not None and largest.flags.f_contiguous and not largest.flags.c_contiguous
        axis = ndim - 1 if f_order else 0
        length = shape[axis]
        operands = []
        for key, a in arrays:
            own_axis = axis - (ndim - a.ndim)
            split = own_axis >= 0 and a.shape[own_axis] == length and length > 1
            operands.append(Operand(key, split, own_axis if split else -1))
        order = "F" if f_order else "C"
        out_shape: tuple[int, ...] | None = shape
    else:  # rows: the leading axis of the largest array
        largest = max((a for _, a in arrays), key=lambda a: a.nbytes)
        if largest.ndim == 0:
            return "0-d arrays"
        axis, length, order, out_shape = 0, largest.shape[0], "C", None
        operands = [Operand(key, a.ndim >= 1 and a.shape[0] == length and length > 1, 0) for key, a in arrays]
    split_bytes_per_index = sum(_get(args, kwargs, o.key).nbytes for o in operands if o.split) / max(length, 1)
    if split_bytes_per_index == 0:
        return "no argument to split"
    chunk = max(1, int(max(chunk_bytes, MIN_CHUNK_BYTES) // split_bytes_per_index))
    if -(-length // chunk) < MIN_CHUNKS:
        return f"fewer than {MIN_CHUNKS} chunks of {chunk_bytes} bytes"
    # Writes: exactly those proven, or (declared) every split argument the code may write into.
    split_keys = {o.key for o in operands if o.split}
    if verdict.written is not None:
        written_keys = []
        for position in sorted(verdict.written):
            key = _param_key(func, position, args, kwargs)
            if key is None:
                continue
            if type(_get(args, kwargs, key)) is not np.ndarray:
                continue  # a scalar rebound by an in-place operator: nothing to write back
            written_keys.append(key)
    elif may_write:
        written_keys = sorted(split_keys, key=str)
    else:
        written_keys = []
    for key in written_keys:
        a = _get(args, kwargs, key)
        if key not in split_keys:
            return f"argument {key} is written but not split along the chunk axis"
        if not a.flags.writeable:
            return f"argument {key} is read-only and may be written"
        for other_key, other in arrays:
            if other_key != key and np.may_share_memory(a, other):
                return f"argument {key} is written and shares memory with argument {other_key}"
    return Plan(verdict.kind, axis, length, chunk, out_shape, order, tuple(operands), tuple(written_keys))


def _slice(a: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop)
    return a[tuple(index)]


class _Lanes:
    """Streams of the device: CuPy streams, or nothing (a device without streams: the fake one)."""

    def __init__(self, backend: Any):
        xp = getattr(backend, "xp", None)
        cuda = getattr(xp, "cuda", None)
        self.cuda = cuda if cuda is not None and hasattr(cuda, "Stream") else None
        self.streams: list[Any] = [None] * SLOTS
        self.device_id = 0
        if self.cuda is not None:
            self.device_id = self.cuda.runtime.getDevice()
            self.streams = _streams_of_device(self.cuda)

    def use(self, i: int) -> Any:
        """Chunk ``i``'s stream as the current stream of this thread."""
        stream = self.streams[i % SLOTS]
        return stream if stream is not None else contextlib.nullcontext()

    def device(self) -> Any:
        """The caller's device as this thread's current device (CuPy's is per thread)."""
        return self.cuda.Device(self.device_id) if self.cuda is not None else contextlib.nullcontext()

    def wait_caller(self) -> None:
        if self.cuda is not None:
            self.cuda.get_current_stream().synchronize()


_STREAMS: dict[int, list[Any]] = {}
_STREAMS_LOCK = threading.Lock()


def _streams_of_device(cuda: Any) -> list[Any]:
    """SLOTS non-blocking streams of the current device, made once (a stream costs a driver call)."""
    device = cuda.runtime.getDevice()
    with _STREAMS_LOCK:
        streams = _STREAMS.get(device)
        if streams is None:
            streams = _STREAMS[device] = [cuda.Stream(non_blocking=True) for _ in range(SLOTS)]
        return streams


@dataclass(frozen=True)
class _Argument:
    """A chunk's result that is the chunk of split argument ``key`` itself."""

    key: int | str


def _result_parts(result: Any) -> tuple[list[Any], bool]:
    """(the arrays of a chunk's result, whether it was a tuple)."""
    if result is None:
        return [], False
    if type(result) is tuple:
        return list(result), True
    return [result], False


_DONE = object()


def _substitute(args: tuple, kwargs: dict, values: dict[int | str, Any]) -> tuple[tuple, dict]:
    new_args = list(args)
    new_kwargs = dict(kwargs)
    for key, value in values.items():
        if isinstance(key, int):
            new_args[key] = value
        else:
            new_kwargs[key] = value
    return tuple(new_args), new_kwargs


def _timed_copy(meter: Any, to_device: bool, nbytes: int, copy: Callable, *a: Any, **kw: Any) -> Any:
    if meter is None:
        return copy(*a, **kw)
    start = time.perf_counter()
    result = copy(*a, **kw)
    meter.copied(to_device, nbytes, time.perf_counter() - start)
    return result


def run(plan_: Plan, backend: Any, call: Callable[[tuple, dict], Any], args: tuple, kwargs: dict,
        host_call: Callable[[tuple, dict], Any], meter: Any = None) -> Any:
    """Run the call chunk by chunk as ``plan_`` says; the result on the host.

    ``call(args, kwargs)`` runs the function on device arguments (translated for the device);
    ``host_call`` runs it on NumPy (the rest of the chunks after a failure at a later chunk).
    ``meter``: a ``_timesheet.CopyMeter`` told of each copy (for ``autooffload.report()``)."""
    lanes = _Lanes(backend)
    split = [o for o in plan_.operands if o.split]
    # Arrays copied once: broadcast operands. Scalars stay as they are.
    whole: dict[int | str, Any] = {}
    try:
        for o in plan_.operands:
            if not o.split:
                host = _get(args, kwargs, o.key)
                whole[o.key] = _timed_copy(meter, True, host.nbytes, backend.to_device, host)
        lanes.wait_caller()  # the copies-once are queued on the caller's stream
        held_pinned = getattr(backend, "held_pinned", None)
        hold = (held_pinned([_get(args, kwargs, o.key) for o in split]) if callable(held_pinned) and split
                else contextlib.nullcontext([False] * len(split)))
        with hold as held:
            if isinstance(held, bool):  # a backend answering for all its arguments at once
                held = [held] * len(split)
            queued = {o.key for o, ok in zip(split, held) if ok}
            return _pipeline(plan_, backend, lanes, split, whole, call, args, kwargs, host_call, meter, queued)
    finally:
        whole.clear()


def _pipeline(plan_: Plan, backend: Any, lanes: _Lanes, split: list, whole: dict, call: Callable, args: tuple,
              kwargs: dict, host_call: Callable, meter: Any, queued: set) -> Any:
    """The chunks through the device; ``queued``: the split arguments whose memory is pinned and
    held (``backend.held_pinned``), so that their copies in are queued without a wait."""
    free = threading.Semaphore(SLOTS)  # chunks in flight
    computed: queue.Queue = queue.Queue()
    stop = threading.Event()
    unload_errors: list[BaseException] = []
    committed = [0]  # chunks whose results and writes are on the host
    results: list[np.ndarray] = []
    structure: list[bool] = []  # [the result is a tuple], once the first chunk ran
    timed_in: list[tuple[Any, Any, int]] = []  # (start, end event, bytes) of queued copies, read at the end
    cuda: Any = lanes.cuda
    time_queued = meter is not None and cuda is not None and TIME_QUEUED_COPIES and bool(queued)
    unloaded = threading.Event()  # the unloader has ended (set in its finally)

    def copy_in(key: int | str, host: np.ndarray) -> Any:
        if not (key in queued and (host.flags.c_contiguous or host.flags.f_contiguous)):
            return _timed_copy(meter, True, host.nbytes, backend.to_device, host)
        if not time_queued:
            return _timed_copy(meter, True, host.nbytes, backend.to_device_queued, host)
        begin, end = cuda.Event(), cuda.Event()
        begin.record()
        dev = backend.to_device_queued(host)
        end.record()
        timed_in.append((begin, end, host.nbytes))
        return dev

    def unloader() -> None:
        try:
            with lanes.device():
                while True:
                    item = computed.get()
                    if item is _DONE:
                        return
                    i, devs, parts = item
                    start, end = plan_.bounds(i)
                    with lanes.use(i):
                        for k, part in enumerate(parts):
                            if isinstance(part, _Argument):
                                continue  # the caller's own array: its writes are copied below
                            target = _slice(results[k], plan_.axis, start, end)
                            _timed_copy(meter, False, target.nbytes, backend.to_host, part, out=target)
                        for key in plan_.written:
                            target = _slice(_get(args, kwargs, key), _operand_axis(plan_, key), start, end)
                            _timed_copy(meter, False, target.nbytes, backend.to_host, devs[key], out=target)
                    del devs, parts, item  # the chunk's device memory goes back to its stream's pool
                    committed[0] = i + 1
                    free.release()
        except BaseException as exc:
            unload_errors.append(exc)
            stop.set()
        finally:
            unloaded.set()

    # One thread queues each chunk's copies in and its work, in that order, on the chunk's
    # stream: work queued on one stream after another stream's copy in was queued waited for
    # that copy on the H200 (tools/stream_timeline.py: a kernel started only when the next
    # chunk's copy, queued just before it by a loader thread, ended); queued in stream order
    # the call runs 1.06-1.09x the no-wait pipeline's time, against 1.10-1.12x with a loader
    # thread (benchmarks/results/h200/stream-timeline.txt).
    # The unloader copies each chunk's results out as its work ends, then frees its slot.
    unload_thread = threading.Thread(target=unloader, name="autooffload-stream-out", daemon=True)

    def wait_for_unloader() -> None:
        if unload_thread.ident is not None:  # started
            unloaded.wait()

    # The drain, built before anything runs so that Ctrl-C cannot skip a step of it: before the
    # caller's holds on pinned memory end, and the chunks' device memory and the copied-once
    # operands go, no copy or kernel still uses them (``_DONE`` may be queued twice: harmless).
    drain: list[Callable[[], Any]] = [stop.set, lambda: computed.put(_DONE), wait_for_unloader]
    drain += [s.synchronize for s in lanes.streams if s is not None]
    failure: BaseException | None = None
    try:
        for i in range(plan_.chunks):
            while not free.acquire(timeout=0.05):
                if stop.is_set():
                    break
            if stop.is_set():
                break  # the unloader failed
            start, end = plan_.bounds(i)
            with lanes.use(i):
                payload = {o.key: copy_in(o.key, _slice(_get(args, kwargs, o.key), o.axis, start, end)) for o in split}
                chunk_args, chunk_kwargs = _substitute(args, kwargs, {**whole, **payload})
                result = call(chunk_args, chunk_kwargs)
            parts, was_tuple = _result_parts(result)
            # A split argument returned (``x *= 5; return x``): the result is the caller's array.
            parts = [next((_Argument(key) for key, dev in payload.items() if part is dev), part) for part in parts]
            if i == 0:
                _first_results(plan_, parts, was_tuple, end - start, results, structure, lambda key: _get(args, kwargs, key))
                unload_thread.start()
            else:
                _check_parts(plan_, parts, was_tuple, end - start, results, structure, lambda key: _get(args, kwargs, key))
            computed.put((i, payload, parts))
            del payload, parts, result, chunk_args, chunk_kwargs
    except BaseException as exc:
        failure = exc
    finally:
        drained = _wait_through_interrupts(drain)
    failure = _graver(failure, drained)  # Ctrl-C during the drain wins over an error; a device error there counts
    if failure is None and timed_in:
        _meter_queued(meter, cuda, timed_in)
    if failure is not None and not isinstance(failure, Exception):
        raise failure  # Ctrl-C: never finished on NumPy, never replaced by another error
    if unload_errors:
        raise unload_errors[0]
    if failure is not None:
        if failure is drained and committed[0] == plan_.chunks:
            raise failure  # the device failed after every chunk was back: nothing left to finish
        if committed[0] == 0:
            if isinstance(failure, BlockwiseBroken):
                raise failure
            raise DeviceFailure(failure) from failure
        # Chunks already on the host stay; the rest run on NumPy (chunks are independent).
        _finish_on_host(plan_, committed[0], args, kwargs, host_call, results)
    if not structure:
        return None
    if not results:
        return () if structure[0] else None
    return tuple(results) if structure[0] else results[0]


# Ctrl-C pressed this many times during one wait of a drain gives up waiting (a device that
# never finishes must not make the process unkillable; memory may then still be in use).
_INTERRUPTS_TO_GIVE_UP = 3


def _wait_through_interrupts(steps: list[Callable[[], Any]]) -> BaseException | None:
    """Each step run to its end: one cut short by Ctrl-C (or any non-``Exception``) is run again,
    up to ``_INTERRUPTS_TO_GIVE_UP`` interrupts, after which the rest is not waited for. What
    is returned, for the caller to raise once everything is waited for: the first interrupt,
    else the first error a step raised (that step is not run again: it would raise again).
    Left open: a second Ctrl-C landing inside this function's own ``except`` clause."""
    first: BaseException | None = None
    interrupts = 0
    for step in steps:
        while True:
            try:
                step()
                break
            except BaseException as exc:  # noqa: BLE001 - returned, raised by the caller
                first = _graver(first, exc)
                if isinstance(exc, Exception):
                    break
                interrupts += 1
                if interrupts >= _INTERRUPTS_TO_GIVE_UP:
                    return first
    return first


def _graver(first: BaseException | None, then: BaseException | None) -> BaseException | None:
    """The one of two failures to raise: an interrupt (any non-``Exception``) over an error,
    else the earlier."""
    if first is None or (isinstance(first, Exception) and then is not None and not isinstance(then, Exception)):
        return then
    return first


def _meter_queued(meter: Any, cuda: Any, timed_in: list[tuple[Any, Any, int]]) -> None:
    """The queued copies in, told to the meter: each charged the time its DMA added to the span
    the copies in kept the link busy (a copy queued behind another on an idle stream starts its
    events at once but its DMA only when the one before ends; several may run at once). Times
    are from the first copy's start event (on a stream the pipeline synchronized)."""
    origin = timed_in[0][0]
    try:
        spans = sorted((cuda.get_elapsed_time(origin, begin), cuda.get_elapsed_time(origin, end), n)
                       for begin, end, n in timed_in)
    except Exception:  # noqa: BLE001 - a device error was raised where it happened; the meter is a report
        return
    busy_until = float("-inf")
    for begin_ms, end_ms, nbytes in spans:
        meter.copied(True, nbytes, max(0.0, end_ms - max(begin_ms, busy_until)) / 1e3)
        busy_until = max(busy_until, end_ms)


def _operand_axis(plan_: Plan, key: int | str) -> int:
    return next(o.axis for o in plan_.operands if o.key == key)


def _expected_shape(plan_: Plan, part: Any, rows: int) -> tuple[int, ...]:
    if plan_.kind == "elements":
        assert plan_.shape is not None
        shape = list(plan_.shape)
        shape[plan_.axis] = rows
        return tuple(shape)
    return (rows, *tuple(part.shape)[1:])


def _first_results(plan_: Plan, parts: list, was_tuple: bool, rows: int, results: list, structure: list,
                   _get_host: Callable[[int | str], np.ndarray]) -> None:
    """Check the first chunk's result and allocate the host result arrays."""
    for k, part in enumerate(parts):
        if isinstance(part, _Argument):
            if plan_.kind == "elements" and _get_host(part.key).shape != plan_.shape:
                raise BlockwiseBroken(f"the function returns argument {part.key}, which is not of the call's shape")
            results.append(_get_host(part.key))
            continue
        shape = tuple(getattr(part, "shape", ()))
        if not hasattr(part, "dtype") or shape != _expected_shape(plan_, part, rows) or (plan_.kind == "rows" and not shape):
            raise BlockwiseBroken(
                f"result {k} of a chunk of {rows} along axis {plan_.axis} has shape {shape}; a blockwise "
                f"({plan_.kind}) function's result must be shaped like the chunk: "
                f"{_expected_shape(plan_, part, rows) if shape else 'an array'}"
            )
        full = list(shape)
        full[plan_.axis] = plan_.length
        # Memory of dropped results, already faulted in, when a block fits (the copy engine's
        # choice too: copies into fresh pages are bound by first-touch faults).
        results.append(_hostmem.results.empty(tuple(full), np.dtype(part.dtype), plan_.order))
    structure.append(was_tuple)


def _check_parts(plan_: Plan, parts: list, was_tuple: bool, rows: int, results: list, structure: list,
                 _get_host: Callable[[int | str], np.ndarray]) -> None:
    if was_tuple != structure[0] or len(parts) != len(results):
        raise BlockwiseBroken("chunks of the call returned results of different structure")
    for k, part in enumerate(parts):
        if isinstance(part, _Argument):
            if results[k] is not _get_host(part.key):
                raise BlockwiseBroken("chunks of the call returned different arguments")
            continue
        expected = list(results[k].shape)
        expected[plan_.axis] = rows
        if tuple(getattr(part, "shape", ())) != tuple(expected) or np.dtype(part.dtype) != results[k].dtype:
            raise BlockwiseBroken(
                f"result {k} of a chunk has shape {tuple(part.shape)} and dtype {part.dtype}; the first "
                f"chunk's was {results[k].dtype} shaped {tuple(expected)} for this many rows"
            )


def _finish_on_host(plan_: Plan, first: int, args: tuple, kwargs: dict, host_call: Callable, results: list) -> None:
    """Chunks ``first``.. on NumPy, into the same result arrays (written arguments in place)."""
    for i in range(first, plan_.chunks):
        start, end = plan_.bounds(i)
        chunk = {o.key: _slice(_get(args, kwargs, o.key), o.axis, start, end) for o in plan_.operands if o.split}
        parts, _ = _result_parts(host_call(*_substitute(args, kwargs, chunk)))
        for k, part in enumerate(parts):
            if any(part is view for view in chunk.values()):
                continue  # the argument itself, written in place by NumPy
            _slice(results[k], plan_.axis, start, end)[...] = part
