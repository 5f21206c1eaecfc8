"""The NumPy backend: the function as written, on the caller's arrays, in host memory."""

from __future__ import annotations

from typing import Any, Callable

from .base import HOST, Backend


class NumpyBackend(Backend):
    """NumPy on one core: always available, holds every dtype, needs no warm-up."""

    name = "numpy"
    memory = HOST

    def runner(self, func: Callable) -> tuple[Callable | None, Any, str]:
        return func, None, "the function itself"


_backend = NumpyBackend()


def load() -> NumpyBackend:
    return _backend


def unavailable_reason() -> str | None:
    return None
