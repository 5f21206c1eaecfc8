"""What a function is, read once at decoration: facts that decide where it may run.

- an ``xp`` parameter (the array module is passed in: the executor fills it);
- a generator, coroutine or async generator (its body runs after the call returns, too late to
  copy writes and results back from the GPU: it runs on NumPy);
- code that sets array flags (CuPy arrays carry none: it runs on NumPy, see _purity.py).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np

from ._purity import sets_array_flags


def xp_parameter(func: Callable) -> tuple[int | str | None, bool]:
    """(position of a parameter named ``xp`` or "kw" if keyword-only or None, whether its default is numpy)."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None, False
    for i, p in enumerate(params):
        if p.name == "xp":
            if p.kind is p.POSITIONAL_OR_KEYWORD:
                return i, p.default is np
            if p.kind is p.KEYWORD_ONLY:
                return "kw", p.default is np
    return None, False


def body_runs_after_return(func: Any) -> str | None:
    """What ``func`` is if calling it only creates a generator or coroutine, else None.

    Such a body runs after the wrapper returned, too late to copy writes and results back from
    the GPU. Seen through functools.partial, bound methods, callable objects and ``__wrapped__``
    (a functools.wraps wrapper of one returns what it returns). A plain function that returns a
    generator it got elsewhere cannot be told from its code, and is not caught.
    """
    seen: set[int] = set()
    while func is not None and id(func) not in seen:
        seen.add(id(func))
        for candidate in (func, getattr(type(func), "__call__", None)):
            if inspect.isasyncgenfunction(candidate):
                return "an async generator function"
            if inspect.iscoroutinefunction(candidate):
                return "an async function"
            if inspect.isgeneratorfunction(candidate):
                return "a generator function"
        func = getattr(func, "__wrapped__", None)
    return None


def host_only_reason(func: Callable) -> str | None:
    """Why ``func`` must run on NumPy whatever the steering, other than being a generator, or None."""
    flags = sets_array_flags(func)
    if flags is not None:
        return f"{flags}: CuPy arrays carry no flags, so the change could not reach the caller's array"
    return None
