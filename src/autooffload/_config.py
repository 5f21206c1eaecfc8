"""``config()`` blocks, kept in a context variable, and the environment variables.

Environment variables are read once, lazily, and re-read by ``reload_environment()`` (tests, or
a program that changes them after the first call).
"""

from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from . import backends
from .errors import ConfigError

def backend_choices() -> tuple[str, ...]:
    """What a user may steer by: every registered backend's name, and "auto" (the cost model)."""
    return (*backends.names(), "auto")


def check_backend(value: object, where: str) -> str:
    """``value`` if it names a backend choice; a ConfigError naming ``where`` otherwise."""
    choices = backend_choices()
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}; got {value!r}")


@dataclass(frozen=True)
class Environment:
    backend: str  # "auto" when unset
    disable_gpu: bool
    log_path: str | None
    profile_path: str | None
    cache_dir: str | None
    learn: bool  # AUTOOFFLOAD_LEARN: decisions use the function's own measured times (_learn.py)
    report: bool = False  # AUTOOFFLOAD_REPORT: print autooffload.report() at exit (_report.py)
    # AUTOOFFLOAD_PROBE: without a calibrated profile, probe the host and the GPU (_profiles/scaling.py)
    probe: bool = True
    shipped: bool = True  # AUTOOFFLOAD_SHIPPED: match shipped profiles by GPU model


_FLAG_VALUES = ("", "0", "1", "true", "false", "yes", "no")


def _flag(name: str) -> str:
    """An on/off variable's value, lower-cased ("" when unset); a ConfigError if it is neither."""
    raw = os.environ.get(name, "").strip().lower()
    if raw not in _FLAG_VALUES:
        raise ConfigError(f"{name} must be 1/0 (or true/false, yes/no); got {raw!r}")
    return raw


def _read_environment() -> Environment:
    raw_backend = os.environ.get("AUTOOFFLOAD_BACKEND", "").strip()
    backend = check_backend(raw_backend, "AUTOOFFLOAD_BACKEND") if raw_backend else "auto"
    raw_disable = _flag("AUTOOFFLOAD_DISABLE_GPU")
    raw_learn = _flag("AUTOOFFLOAD_LEARN")
    raw_report = _flag("AUTOOFFLOAD_REPORT")
    raw_probe = _flag("AUTOOFFLOAD_PROBE")
    raw_shipped = _flag("AUTOOFFLOAD_SHIPPED")
    return Environment(
        backend=backend,
        disable_gpu=raw_disable in ("1", "true", "yes"),
        log_path=os.environ.get("AUTOOFFLOAD_LOG") or None,
        profile_path=os.environ.get("AUTOOFFLOAD_PROFILE") or None,
        cache_dir=os.environ.get("AUTOOFFLOAD_CACHE_DIR") or None,
        learn=raw_learn not in ("0", "false", "no"),
        report=raw_report in ("1", "true", "yes"),
        probe=raw_probe not in ("0", "false", "no"),
        shipped=raw_shipped not in ("0", "false", "no"),
    )


_env: Environment | None = None


def environment() -> Environment:
    global _env
    if _env is None:
        _env = _read_environment()
    return _env


def reload_environment() -> Environment:
    """Re-read the AUTOOFFLOAD_* environment variables and drop cached decisions."""
    global _env
    _env = None
    invalidate_decisions()
    return environment()


# Objects with a ``reset()`` that drops cached decisions (one per offloaded function).
_decision_caches: "weakref.WeakSet" = weakref.WeakSet()


def register_decision_cache(obj) -> None:
    _decision_caches.add(obj)


def invalidate_decisions() -> None:
    """Something decisions depend on changed: every offloaded function drops its cached decisions.

    Done eagerly here, so the hot path needs no check of its own.
    """
    for cache in list(_decision_caches):
        cache.reset()


# The backend of the innermost config() block active in this context (a thread, or an asyncio
# task), None outside every block. Read on every call: by the hot path through current_backend,
# and by the C check of the NumPy path (_native.c), which answers alone only when it is None.
backend_in_context: ContextVar[str | None] = ContextVar("autooffload_config_backend", default=None)
current_backend = backend_in_context.get
# The thread limit of the innermost config(threads=...) block, None outside: read by the executor
# when it runs a multi-core tier (never on the NumPy hot path).
threads_in_context: ContextVar[int | None] = ContextVar("autooffload_config_threads", default=None)
current_threads = threads_in_context.get
# The blocks active in this context, innermost last: (block, backend or None, threads or None).
_blocks: ContextVar[tuple] = ContextVar("autooffload_config_blocks", default=())


def _innermost(blocks: tuple, field: int):
    return next((entry[field] for entry in reversed(blocks) if entry[field] is not None), None)


def _set_blocks(blocks: tuple) -> None:
    _blocks.set(blocks)
    backend_in_context.set(_innermost(blocks, 1))
    threads_in_context.set(_innermost(blocks, 2))


@contextmanager
def config(*, backend: str | None = None, threads: int | None = None):
    """Force every offloaded call inside the block onto ``backend``, in this thread or asyncio task.

    ``backend`` is "numpy", "numba", "cupy" or "auto" (the cost model decides); None leaves the
    steering as it is. ``threads`` caps the threads a multi-core tier (Numba) uses for the calls
    in the block (``NUMBA_NUM_THREADS`` caps it further); it does not change NumPy's BLAS. Blocks
    nest; for each setting the innermost block that gives it wins. The setting lives in a context variable, as ``decimal.localcontext`` does:
    each thread and each asyncio task sees only its own blocks, however their blocks interleave.
    A task created inside a block starts with it (asyncio copies the context into new tasks, and
    ``asyncio.to_thread`` into its thread); a thread started inside a block does not, unless the
    context is handed over (``contextvars.copy_context().run``). A generator suspended inside a
    block shares its caller's context, so the block stays active for the caller until the
    generator leaves it; a block must end in the context (thread or task) where it began, else
    that context keeps it.
    """
    if backend is None and threads is None:
        raise ConfigError("config() needs backend=... or threads=...; got neither")
    if backend is not None:
        backend = check_backend(backend, "config(backend=...)")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"config(threads=...) must be a positive int; got {threads!r}")
    block = object()
    _set_blocks(_blocks.get() + ((block, backend, threads),))
    try:
        yield
    finally:
        # This block leaves, wherever it is in the stack: in one context blocks may end out of
        # order (a generator suspended inside a block, resumed after its caller opened another),
        # and restoring the value saved at entry would then revive a block that already ended.
        _set_blocks(tuple(entry for entry in _blocks.get() if entry[0] is not block))
