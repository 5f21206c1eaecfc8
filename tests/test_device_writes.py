"""Writes into arguments on the GPU path, through the FakeDevice test double: interruptions,
byte order, dtypes the device cannot hold, views of strided arguments, metadata changes.

Real GPU behaviour is proven by the tests marked ``gpu`` (test_decorator_gpu.py).
"""

import numpy as np
import pytest

from autooffload import offload

rng = np.random.default_rng(10)

LAYOUTS = {
    "C": lambda parent: parent,
    "F": lambda parent: parent.T,
    "strided": lambda parent: parent[::2, 1::3],
    "reversed": lambda parent: parent[::-1, ::-2],
}


class Interrupt(BaseException):
    """A BaseException of the user's own."""


# -- #12: writes made before a BaseException are kept --------------------------------------------
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit, Interrupt])
def test_writes_before_a_base_exception_are_kept(on_gpu, exc_type, layout):
    def write_then_stop(x):
        x[0] = -1.0
        x *= 2
        raise exc_type()

    parent = rng.random((6, 8)) + 0.5
    expected = parent.copy()
    with pytest.raises(exc_type):
        write_then_stop(LAYOUTS[layout](expected))
    f = offload(write_then_stop)
    with pytest.raises(exc_type):
        f(LAYOUTS[layout](parent))
    assert f.last_decision.backend == "cupy"
    np.testing.assert_array_equal(parent, expected)


def test_a_base_exception_frees_the_moved_copies(on_gpu, monkeypatch):
    from autooffload import _arguments

    made = []
    real_move = _arguments.Moved.move

    def recording_move(self, args, kwargs):
        made.append(self)
        return real_move(self, args, kwargs)

    monkeypatch.setattr(_arguments.Moved, "move", recording_move)

    @offload
    def stop(x):
        x += 1
        raise KeyboardInterrupt

    x = np.zeros(3)
    with pytest.raises(KeyboardInterrupt):
        stop(x)
    np.testing.assert_array_equal(x, np.ones(3))
    (moved,) = made
    assert not moved.entries and not moved.regions and moved.args == () and moved.kwargs == {}


def test_a_base_exception_in_the_numpy_run_of_device_data_keeps_writes(fake_gpu):
    from fake_device import FakeDeviceArray

    @offload(backend="numpy")
    def stop(x):
        x[1] = 7.0
        raise KeyboardInterrupt

    x = np.zeros(3).view(FakeDeviceArray)
    with pytest.raises(KeyboardInterrupt):
        stop(x)
    np.testing.assert_array_equal(x.view(np.ndarray), [0.0, 7.0, 0.0])
