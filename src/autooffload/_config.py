"""Thread-local ``config()`` and the environment variables.

Environment variables are read once, lazily, and re-read by ``reload_environment()`` (tests, or
a program that changes them after the first call).
"""

from __future__ import annotations

import os
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import ConfigError

try:  # the C check of the NumPy path must know when a config() block is active (see _native.c)
    from ._native import config_block as _count_config_block
except ImportError:
    def _count_config_block(delta: int) -> int:
        return 0

BACKEND_CHOICES = ("numpy", "cupy", "auto")


def check_backend(value: object, where: str) -> str:
    """``value`` if it names a backend choice; a ConfigError naming ``where`` otherwise."""
    if isinstance(value, str) and value.lower() in BACKEND_CHOICES:
        return value.lower()
    raise ConfigError(f"{where} must be one of {', '.join(map(repr, BACKEND_CHOICES))}; got {value!r}")


@dataclass(frozen=True)
class Environment:
    backend: str  # "auto" when unset
    disable_gpu: bool
    log_path: str | None
    profile_path: str | None
    cache_dir: str | None


def _read_environment() -> Environment:
    raw_backend = os.environ.get("AUTOOFFLOAD_BACKEND", "").strip()
    backend = check_backend(raw_backend, "AUTOOFFLOAD_BACKEND") if raw_backend else "auto"
    raw_disable = os.environ.get("AUTOOFFLOAD_DISABLE_GPU", "").strip().lower()
    if raw_disable not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"AUTOOFFLOAD_DISABLE_GPU must be 1/0 (or true/false, yes/no); got {raw_disable!r}")
    return Environment(
        backend=backend,
        disable_gpu=raw_disable in ("1", "true", "yes"),
        log_path=os.environ.get("AUTOOFFLOAD_LOG") or None,
        profile_path=os.environ.get("AUTOOFFLOAD_PROFILE") or None,
        cache_dir=os.environ.get("AUTOOFFLOAD_CACHE_DIR") or None,
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


class _Local(threading.local):
    # None: no config() block is active in this thread.
    backend: str | None = None


local = _Local()


@contextmanager
def config(*, backend: str):
    """Force every offloaded call in this thread, inside the block, onto ``backend``.

    ``backend`` is "numpy", "cupy" or "auto" (the cost model decides). Blocks nest; the
    innermost wins. Other threads are not affected.
    """
    backend = check_backend(backend, "config(backend=...)")
    previous = local.backend
    local.backend = backend
    _count_config_block(+1)
    try:
        yield
    finally:
        _count_config_block(-1)
        local.backend = previous
