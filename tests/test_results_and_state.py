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


# -- #15: 0-d results ---------------------------------------------------------------------------
# A device library returns 0-d arrays where NumPy returns scalars, so the device object cannot say
# which NumPy would have returned. The rule: a 0-d result that is an argument (or a 0-d view of
# one's memory, as CuPy's ``x[0]`` is) comes back as the caller's array; every other 0-d result as
# the NumPy scalar that reductions, ufuncs and integer indexing give on NumPy.
def test_zero_d_results_follow_the_rule(on_gpu):
    x = np.arange(3.0)
    for fn in (lambda x: x.sum(), lambda x: np.zeros(()) + x[0], lambda x: x[1], lambda x: x.max() * 2):
        assert type(fn(x)) is np.float64
        got = offload(fn)(x)
        assert type(got) is np.float64 and got == fn(x)
    zero_d = np.array(2.0)
    assert offload(lambda z: z)(zero_d) is zero_d
    # The documented difference: NumPy gives a 0-d array here, offload the scalar of equal value.
    got = offload(lambda x: np.asarray(x.sum()))(x)
    assert type(got) is np.float64 and got == 3.0


def test_a_zero_d_view_of_an_argument_is_a_scalar_as_integer_indexing_gives(on_gpu):
    @offload
    def pick(x):
        return x[1:2].reshape(())  # CuPy's x[1] is such a 0-d view of x

    assert type(pick(np.arange(3.0))) is np.float64 and pick(np.arange(3.0)) == 1.0


# -- #6: device copies stored in the caller's state ---------------------------------------------
HISTORY = []
LAST = None
CACHE = {}


class Model:
    @offload
    def fit(self, x):
        self.last_input = x
        self.scaled = x * 2
        HISTORY.append(x)
        CACHE["tail"] = x[1:]
        return np.sin(x).sum()


def test_stored_arguments_are_the_callers_arrays(on_gpu):
    HISTORY.clear()
    CACHE.clear()
    a = np.arange(4.0)
    m = Model()
    m.fit(a)
    assert m.last_input is a and HISTORY[0] is a
    assert type(m.scaled) is np.ndarray and np.array_equal(m.scaled, a * 2)
    assert type(CACHE["tail"]) is np.ndarray and np.shares_memory(CACHE["tail"], a)  # a view, as on NumPy
    a[1] = 100.0
    assert m.last_input[1] == 100.0 and CACHE["tail"][0] == 100.0


def test_global_and_nonlocal_rebinding_stores_host_arrays(on_gpu):
    remembered = None

    @offload
    def normalize(x):
        global LAST
        nonlocal remembered
        LAST = x / x.sum()
        remembered = (x, LAST)
        return LAST.max()

    x = np.ones(4)
    normalize(x)
    assert type(LAST) is np.ndarray and np.array_equal(np.add(LAST, 1), np.full(4, 1.25))
    assert remembered[0] is x and remembered[1] is LAST


def test_containers_passed_in_and_nested_state_are_swept(on_gpu):
    @offload
    def f(x, log, state):
        log.append(x * 2)
        state["runs"].append(x)
        state["best"] = {"x": x + 1}
        return x.sum()

    x = np.arange(3.0)
    log, state = [], {"runs": []}
    f(x, log, state)
    assert type(log[0]) is np.ndarray and state["runs"][0] is x and type(state["best"]["x"]) is np.ndarray


BIG = list(range(200_000))


def test_a_large_global_list_is_not_copied_per_call_but_appends_are_swept(on_gpu):
    @offload
    def f(x):
        BIG.append(x)
        return x.sum()

    x = np.arange(3.0)
    try:
        f(x)
        assert BIG[-1] is x and len(BIG) == 200_001
    finally:
        del BIG[200_000:]


# -- #13: fallbacks -------------------------------------------------------------------------------
def test_fallback_undoes_the_device_attempts_side_effects(on_gpu):
    fake_device.FAKE_MISSING.add("median")

    class Counter:
        calls = 0

    @offload
    def f(x, log, seen, counter):
        log.append("called")
        seen.add("x")
        counter.calls += 1
        counter.last = x
        return np.median(x)

    log, seen, counter = [], set(), Counter()
    x = np.arange(5.0)
    with pytest.warns(GPUFallbackWarning):
        assert f(x, log, seen, counter) == 2.0
    assert log == ["called"] and seen == {"x"} and counter.calls == 1 and counter.last is x


def test_the_functions_own_type_error_is_raised_once_with_writes_kept(on_gpu):
    calls = []

    @offload
    def f(x):
        calls.append(1)
        x[0] = 5.0
        if x.size > 2:
            raise TypeError("x must be small")
        return x

    x = np.zeros(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GPUFallbackWarning)
        with pytest.raises(TypeError, match="x must be small"):
            f(x)
    assert calls == [1] and x[0] == 5.0
    assert f.stats.fallbacks == 0 and f.stats.numpy == 0 and not f.__autooffload__.records.failures


def test_a_type_error_from_a_c_function_still_falls_back(on_gpu):
    @offload
    def f(x):
        return hash(x.sum()) == hash(float(x.sum()))  # a device 0-d array is unhashable: TypeError in C

    with pytest.warns(GPUFallbackWarning, match="unhashable"):
        assert f(np.full(4, 4.0)) is True
    assert f.stats.fallbacks == 1


def test_a_type_error_reraised_from_a_device_failure_still_falls_back(on_gpu):
    fake_device.FAKE_MISSING.add("median")

    @offload
    def f(x):
        try:
            return np.median(x)
        except AttributeError as exc:
            raise TypeError("cannot") from exc

    with pytest.warns(GPUFallbackWarning):
        assert f(np.arange(5.0)) == 2.0


def test_a_tuple_argument_returned_is_the_callers_tuple(on_gpu):
    x = np.arange(3.0)
    box = (x, 2)

    @offload
    def passthrough(box):
        return box, [box]

    out, listed = passthrough(box)
    assert out is box and listed[0] is box and out[0] is x
