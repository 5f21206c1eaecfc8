"""What a GPU run leaves in the caller's world, through the FakeDevice test double: results of
every container type, state the function reached (self, globals, closures, containers passed
in), and what a fallback leaves behind (issue 10, #6, #7, #13, #15)."""

import collections
import dataclasses
import itertools
import types
import warnings

import numpy as np
import pytest

import fake_device
from autooffload import GPUFallbackWarning, offload
from fake_device import FakeDeviceArray


def holds_device_array(obj, seen=None) -> bool:
    seen = set() if seen is None else seen
    if isinstance(obj, FakeDeviceArray):
        return True
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, dict):
        return any(holds_device_array(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(holds_device_array(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return any(holds_device_array(v, seen) for v in vars(obj).values())
    return False


# -- #7: results in any container --------------------------------------------------------------
class Tagged(list):
    """A list subclass with an attribute of its own."""


class Result(dict):
    """Like scipy.optimize.OptimizeResult: a dict with attribute access."""

    __getattr__ = dict.__getitem__


@dataclasses.dataclass
class Fit:
    coef: object
    resid: object = dataclasses.field(init=False, default=None)


class Plain:
    def __init__(self, x):
        self.x = x
        self.label = "plain"


def test_dict_and_list_subclasses_keep_their_type_and_state(on_gpu):
    @offload
    def f(x):
        od = collections.OrderedDict([("b", x * 2), ("a", x + 1)])
        dd = collections.defaultdict(list, a=x * 3)
        tagged = Tagged([x * 4])
        tagged.note = x * 5
        return od, dd, tagged, Result(fun=x.sum(), x=x * 6)

    x = np.arange(3.0)
    od, dd, tagged, res = f(x)
    assert type(od) is collections.OrderedDict and list(od) == ["b", "a"]
    assert type(dd) is collections.defaultdict and dd.default_factory is list and dd["missing"] == []
    assert type(tagged) is Tagged and type(tagged[0]) is np.ndarray and type(tagged.note) is np.ndarray
    assert type(res) is Result and type(res.x) is np.ndarray and type(res.fun) is np.float64
    np.testing.assert_array_equal(od["b"], x * 2)
    np.testing.assert_array_equal(tagged.note, x * 5)
    assert not holds_device_array([od, dd, tagged, res])


def test_namespaces_dataclasses_and_plain_objects_are_converted(on_gpu):
    @offload
    def f(x):
        fit = Fit(x * 2)
        fit.resid = x - 1
        return types.SimpleNamespace(a=x * 2, n=3), fit, Plain(x + 1)

    ns, fit, plain = f(np.arange(3.0))
    assert type(ns) is types.SimpleNamespace and type(ns.a) is np.ndarray and ns.n == 3
    assert type(fit.coef) is np.ndarray and type(fit.resid) is np.ndarray
    assert type(plain) is Plain and type(plain.x) is np.ndarray and plain.label == "plain"


def test_iterators_and_map_are_converted_lazily(on_gpu):
    drawn = []

    @offload
    def f(x):
        def produce():
            for k in itertools.count():
                drawn.append(k)
                yield x * k

        return iter([x * 2]), map(np.sin, [x]), produce()

    x = np.arange(3.0)
    it, mapped, endless = f(x)
    assert type(next(it)) is np.ndarray
    np.testing.assert_allclose(next(mapped), np.sin(x))
    assert drawn == []  # lazy, as on NumPy: an endless generator does not hang the call
    assert type(next(endless)) is np.ndarray and type(next(endless)) is np.ndarray and drawn == [0, 1]


def test_results_that_contain_themselves(on_gpu):
    @offload
    def f(x):
        loop = [x * 2]
        loop.append(loop)
        d = {"x": x + 1}
        d["self"] = d
        return loop, d, (loop, x * 3)

    loop, d, tup = f(np.arange(3.0))
    assert loop[1] is loop and d["self"] is d and tup[0] is loop
    assert not holds_device_array([loop, d, tup])


def test_an_array_returned_twice_is_one_array(on_gpu):
    @offload
    def f(x):
        y = x * 2
        return y, [y], {"y": y}

    y, in_list, in_dict = f(np.arange(3.0))
    assert in_list[0] is y and in_dict["y"] is y


def test_a_container_argument_returned_is_the_callers_container(on_gpu):
    @offload
    def f(items):
        items.append(items[0] * 2)
        return items

    items = [np.arange(3.0)]
    first = items[0]
    out = f(items)
    assert out is items and items[0] is first and type(items[1]) is np.ndarray
