"""The static write analysis (_purity.py) and what the dispatcher does with it."""

import numpy as np
import pytest

from autooffload import offload
from autooffload._purity import may_write_arguments


def _helper_writes(x):
    x += 1


def _helper_reads(x):
    return np.sqrt(x)


def pure_chain(prices, weights):
    r = np.diff(np.log(prices), axis=0)
    return (r * weights).sum(axis=1).std() + _helper_reads(weights).sum()


WRITERS = {
    "in-place operator": lambda x: _inplace(x),
    "subscript store": lambda x: x.__setitem__(0, 1.0),
    "out keyword": lambda x: np.add(x, x, out=x),
    "sort method": lambda x: x.sort(),
    "through a helper": lambda x: _helper_writes(x),
    "copyto": lambda x: np.copyto(x, 0.0),
    "shuffle": lambda x: np.random.shuffle(x),
    "list append": lambda x, acc=None: acc.append(x),
    "setattr builtin": lambda x: setattr(x, "shape", (1,)),
}


def _inplace(x):
    x *= 2


@pytest.mark.parametrize("name", list(WRITERS))
def test_writers_are_recognised(name):
    may_write, why = may_write_arguments(WRITERS[name])
    assert may_write, name
    assert why


def test_pure_code_is_recognised():
    assert may_write_arguments(pure_chain) == (False, "no write into arguments is possible")
    assert may_write_arguments(lambda a, b: np.fft.irfft(np.fft.rfft(a) * np.fft.rfft(b)))[0] is False


def test_unknown_callables_are_assumed_to_write():
    class Model:
        def fit(self, x):
            x[0] = 0

    model = Model()
    assert may_write_arguments(lambda x: model.fit(x))[0]
    assert may_write_arguments(np.sort)[0]  # no code to read


def test_proven_pure_calls_skip_write_detection(on_gpu):
    f = offload(pure_chain)
    f(np.random.rand(50, 4) + 1, np.random.rand(4))
    assert on_gpu.changed_calls == 0
    g = offload(_inplace)
    g(np.random.rand(4))
    assert on_gpu.changed_calls == 1


def test_containers_always_get_write_detection(on_gpu):
    f = offload(lambda arrays: sum(np.sum(a) for a in arrays))
    f([np.ones(3), np.ones(2)])
    assert on_gpu.changed_calls == 1  # a list argument: the proof does not cover what it holds


def test_list_and_dict_mutations_reach_the_caller(on_gpu):
    @offload
    def grow(results, cache, x):
        results.append(x * 2)
        results[0] = results[0] + 1
        cache["total"] = x.sum()
        del cache["old"]

    first = np.zeros(2)
    results, cache = [first], {"old": np.ones(1), "keep": np.ones(1)}
    x = np.arange(3.0)
    grow(results, cache, x)
    assert len(results) == 2 and type(results[1]) is np.ndarray
    np.testing.assert_array_equal(results[1], x * 2)
    np.testing.assert_array_equal(results[0], [1.0, 1.0])
    assert set(cache) == {"keep", "total"} and cache["total"] == 3.0 and type(cache["total"]) is np.float64


def test_unchanged_containers_keep_their_arrays(on_gpu):
    a = np.ones(3)
    arrays = [a]
    offload(lambda xs: xs[0].sum())(arrays)
    assert arrays[0] is a


def test_module_functions_named_like_mutating_methods_are_pure():
    assert may_write_arguments(lambda x: np.sort(x)[: x.size // 20].mean())[0] is False
    assert may_write_arguments(lambda x: np.append(np.resize(x, 3), 1.0))[0] is False
    assert may_write_arguments(lambda x: np.random.shuffle(x))[0]  # a real module writer
    assert may_write_arguments(lambda x: np.sort(x).sort())[0]  # the method on the result


def test_the_xp_parameter_is_read_as_an_array_module():
    def var_es(pnl, xp=np):
        s = xp.sort(pnl)
        return -s[0], -s[:3].mean()

    def shuffles(x, xp=np):
        xp.random.shuffle(x)

    assert may_write_arguments(var_es)[0] is False
    assert may_write_arguments(shuffles)[0]
