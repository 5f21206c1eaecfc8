"""The name an offloaded function is bound to, so that pickle finds the wrapper, not the original.

Functions pickle by reference (``__module__`` + ``__qualname__``); the pickler never asks a
function how to reduce it. ``score = offload(impl)`` at a module's top level would otherwise
pickle as ``impl``, the undecorated function, and fail pickle's identity check. The statement's
own bytecode says which name its result is stored into.
"""

from __future__ import annotations

import bisect
import dis
import inspect
import types
import weakref

# code object -> (offsets of its instructions, the name each stores into or None), built once per
# module or class body however many functions it offloads.
_stores_by_code: "weakref.WeakKeyDictionary[types.CodeType, tuple[list[int], list]]" = weakref.WeakKeyDictionary()


def bound_name(frame: types.FrameType) -> tuple[str, str] | None:
    """(module, qualname) of the name the statement running in ``frame`` stores its call's result
    into, where pickle can find it again: ``name = offload(...)`` (or ``@offload``) at a module's
    top level or in a class body, or ``global name`` then ``name = ...``; else None."""
    code = frame.f_code
    table = _stores_by_code.get(code)
    if table is None:
        offsets, stores = [], []
        for ins in dis.get_instructions(code):  # inline caches are not listed
            if ins.opname != "EXTENDED_ARG":  # the prefix of a large argument, not an instruction
                offsets.append(ins.offset)
                stores.append((ins.opname, ins.argval) if ins.opname in ("STORE_NAME", "STORE_GLOBAL") else None)
        table = _stores_by_code[code] = (offsets, stores)
    offsets, stores = table
    # f_lasti is the call's offset, or (3.11) that of its last inline cache: the next listed
    # instruction is what the call's result goes to.
    i = bisect.bisect_right(offsets, frame.f_lasti)
    store = stores[i] if i < len(stores) else None
    if store is None:
        return None
    opname, name = store
    module_globals = frame.f_globals
    if opname == "STORE_GLOBAL" or frame.f_locals is module_globals:
        module = module_globals.get("__name__")
        return (module, name) if isinstance(module, str) else None
    if code.co_flags & inspect.CO_OPTIMIZED:
        return None  # a function's local: pickle cannot reach it
    namespace = frame.f_locals  # a class body: it records its own module and qualified name
    module, owner = namespace.get("__module__"), namespace.get("__qualname__")
    if not (isinstance(module, str) and isinstance(owner, str)):
        return None
    return module, f"{owner}.{name}"
