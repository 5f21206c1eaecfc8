"""Offloaded functions in every form a module binds them, for the pickling tests (importable by
the processes of a multiprocessing pool)."""

import numpy as np

from autooffload import offload


@offload
def decorated(x):
    return np.sin(x).sum()


def _score_impl(x):
    return np.cos(x).sum()


score = offload(_score_impl)  # the decorator applied by a call, under another name
fft = offload(np.fft.fft)  # NumPy's own callable, under a new name
scaled = offload(kind="elementwise")(_score_impl)  # the options form


class Model:
    def _impl(self, x):
        return float(np.abs(x).max())

    m = offload(_impl)


def built_in_a_function():
    return offload(_score_impl)  # never bound to a module name: cannot be pickled
