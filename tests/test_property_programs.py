"""Generated programs: any small NumPy function from a grammar behaves under ``@offload`` as in NumPy.

Hypothesis writes functions from a grammar of operations (elementwise arithmetic and ufuncs,
reductions, indexing and views, in-place updates through arguments and views, boolean masks,
0-d arrays, containers in and out, exceptions the code raises or NumPy raises) over arguments
that are C, F or strided views of a parent, a scalar and a container (tuple, list or dict) of
arrays. Each function runs twice on equal fresh data: plainly, and decorated with the GPU
forced (the FakeDevice test double of tests/fake_device.py runs the device path on the CPU).
The two runs must agree on:

- the result: the same container types, array dtypes, shapes, values (integers bit for bit,
  floating point within 32 ulp: see ``Values``), and NumPy scalar versus Python number;
- which result leaves are the caller's own arrays (``is``) or share its memory;
- every write: each argument, its parent and the container argument end equal;
- the exception raised, if any: the same type and message.

The number of examples is fixed for CI (``AUTOOFFLOAD_PROPERTY_EXAMPLES``, default 200); run a
larger budget on demand, e.g. ``AUTOOFFLOAD_PROPERTY_EXAMPLES=5000 pytest tests/test_property_programs.py``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autooffload import config, offload

EXAMPLES = int(os.environ.get("AUTOOFFLOAD_PROPERTY_EXAMPLES", "200"))
DTYPES = ["float64", "float32", "int64", "int32", "complex128", "uint8", "bool"]

# Shape classes the grammar tracks so that every generated expression broadcasts:
# "mn" is a's shape (m, n), "n" is (n,), "m" is (m,), "s" a scalar (0-d).
BINARY = ["{x} + {y}", "{x} - {y}", "{x} * {y}", "np.maximum({x}, {y})", "np.add({x}, {y})",
          "np.where({x} == {x}, {x}, {y})"]
UNARY = ["np.sin({x})", "np.abs({x})", "-{x}", "np.sqrt({x})", "{x} * 2", "np.exp({x} * 0)",
         "({x} + 1.5)", "np.square({x})"]
REDUCE = {  # shape class -> [(template, resulting class)]
    "mn": [("{x}.sum(axis=0)", "n"), ("{x}.max(axis=1)", "m"), ("{x}.mean()", "s"), ("np.sum({x})", "s"),
           ("{x}.cumsum(axis=1)", "mn"), ("np.sort({x}, axis=0)", "mn")],
    "n": [("{x}.sum()", "s"), ("np.max({x})", "s"), ("{x}.cumsum()", "n"), ("np.sort({x})", "n")],
    "m": [("{x}.min()", "s"), ("{x}.prod()", "s")],
}
# Views of the arguments (the function may write through them).
VIEWS = {"a": ["a[:, ::-1]", "a[::2]", "a.T.T", "a[1:]", "a[:, :1]", "a[::-1, :]"],
         "b": ["b[::-1]", "b[::2]", "b[:]", "b[1:]"]}


def _pick(draw, options):
    return draw(st.sampled_from(options))


@st.composite
def programs(draw):
    """(source of ``def f(a, b, k, box)``, the container kind) for one generated function."""
    names = {"mn": ["a"], "n": ["b", "c"], "m": [], "s": ["k"]}
    lines: list[str] = []
    temp = iter(f"t{i}" for i in range(100))

    def operand(cls):
        if cls == "s" and draw(st.booleans()):
            return _pick(draw, ["2", "0.5", "k"])
        return _pick(draw, names[cls])

    def expression():
        choice = draw(st.integers(0, 3))
        cls = _pick(draw, [c for c in ("mn", "n", "m", "s") if names[c]])
        x = operand(cls)
        if choice == 0:
            other = "s" if cls == "s" else _pick(draw, [c for c in ("mn", "n", "s") if names[c]
                                                       and (cls == "mn" or c != "mn") and (cls != "m" or c == "s")])
            y = operand(other)
            out = cls if other != "mn" else "mn"
            return _pick(draw, BINARY).format(x=x, y=y), out
        if choice == 1:
            return _pick(draw, UNARY).format(x=x), cls
        if choice == 2 and cls in REDUCE:
            template, out = _pick(draw, REDUCE[cls])
            return template.format(x=x), out
        return x, cls

    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 9))
        if kind <= 3:  # a new temporary
            text, cls = expression()
            name = next(temp)
            lines.append(f"{name} = {text}")
            names[cls].append(name)
        elif kind == 4:  # an in-place update of an argument, a view of one, or a temporary
            target = _pick(draw, ["a", "b", "c"] + VIEWS["a"][:3] + VIEWS["b"][:2])
            op = _pick(draw, ["+=", "*=", "-="])
            value = _pick(draw, ["1", "2", "k", "b" if not target.startswith("b") else "1"])
            lines.append(f"v = {target}\nv {op} {value}")
        elif kind == 5:  # item and slice assignment
            lines.append(_pick(draw, ["a[0] = b", "a[:, 0] = 7", "b[::2] = 3", "c[-1] = a.sum()",
                                      "a[a > 3] = 0", "np.add(b, 1, out=b)", "a.sort(axis=1)", "c.fill(2)"]))
        elif kind == 6:  # a view kept as a temporary
            name = next(temp)
            source = _pick(draw, ["a", "b"])
            lines.append(f"{name} = {_pick(draw, VIEWS[source])}")
        elif kind == 7:  # masks and 0-d arrays (None: a shape the grammar does not track)
            name = next(temp)
            text, cls = _pick(draw, [("a[a > 2]", None), ("np.asarray(b.sum())", "s"), ("np.array(a.max())", "s"),
                                     ("b[b != b[0]]", None), ("a[0, 0]", "s"), ("a[..., 0]", "m")])
            lines.append(f"{name} = {text}")
            if cls is not None:
                names[cls].append(name)
        elif kind == 8:  # exceptions: the code's own, and NumPy's
            lines.append(_pick(draw, ["if k > 2: raise ValueError('k too large: %s' % k)",
                                      "t_bad = a[100]", "t_bad = a + np.ones(a.shape[1] + 1)",
                                      "if b.size > 3: raise KeyError('size')"]))
        else:  # the container argument
            lines.append(_pick(draw, ["c = c + box_first", "box_first *= 2", "t_box = box_first.sum()"]))
    result = _pick(draw, ["t_last", "a", "b", "(t_last, a)", "[b, t_last]", "{'x': t_last, 'n': 3}",
                          "None", "float(np.sum(t_last))", "t_last[::-1] if np.ndim(t_last) else t_last",
                          "box", "(a[:, ::2], b)"])
    last = next((n for n in reversed([line.split(" = ")[0] for line in lines if " = " in line])
                 if n.startswith("t") and not n.startswith(("t_bad", "t_box"))), "b")
    body = "\n".join(lines).replace("box_first", "box_item")
    container = _pick(draw, ["tuple", "list", "dict"])
    access = "box['c']" if container == "dict" else "box[0]"
    source = (
        "def f(a, b, k, box):\n"
        f"    c = {access}\n"
        f"    box_item = {access}\n"
        + "".join(f"    {line}\n" for line in body.split("\n"))
        + f"    t_last = {last}\n"
        f"    return {result}\n"
    )
    return source, container


@st.composite
def arguments(draw):
    """(dtypes, shapes, layouts, scalar, seed): the recipe for one call's arguments."""
    m, n = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dtype_a, dtype_b = _pick(draw, DTYPES), _pick(draw, DTYPES)
    layout = _pick(draw, ["C", "F", "strided", "reversed"])
    k = _pick(draw, [1, 2.5, 3, -1])
    seed = draw(st.integers(0, 2**32 - 1))
    return (m, n), (dtype_a, dtype_b), layout, k, seed


def build(recipe, container: str):
    """Fresh arguments: (a, b, k, box) and the parents to check for writes."""
    (m, n), (dtype_a, dtype_b), layout, k, seed = recipe
    rng = np.random.default_rng(seed)

    def values(shape, dtype):
        v = rng.integers(1, 9, size=shape)  # never zero
        if np.dtype(dtype).kind == "c":
            v = v + 1j * rng.integers(1, 9, size=shape)
        return v.astype(dtype)

    if layout == "C":
        parent = values((m, n), dtype_a)
        a = parent
    elif layout == "F":
        parent = np.asfortranarray(values((m, n), dtype_a))
        a = parent
    elif layout == "strided":
        parent = values((2 * m, n + 1), dtype_a)
        a = parent[::2, 1:]
    else:
        parent = values((m, n), dtype_a)
        a = parent[::-1, ::-1]
    b = values((n,), dtype_b)
    c = values((n,), dtype_b)
    box = {"tuple": lambda: (c,), "list": lambda: [c], "dict": lambda: {"c": c}}[container]()
    return (a, b, k, box), (parent, b, c)


def run(func, args):
    """('ok', result) or ('raised', (type, message)), with NumPy's floating-point warnings muted."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return "ok", func(*args)
        except Exception as exc:  # the comparison is the test
            return "raised", (type(exc), str(exc))


class Values:
    """An array's values, equal to another's bit for bit where integer or boolean, and within a
    few units in the last place where floating: NumPy itself rounds the last bit differently for
    contiguous and strided inputs (its SIMD loops), and the device copy of a strided argument is
    contiguous. NaNs equal NaNs."""

    ULPS = 32  # reductions of up to ~30 elements in another order (strided vs contiguous copy)

    def __init__(self, a: np.ndarray):
        self.a = np.array(a, copy=True)

    def __eq__(self, other) -> bool:
        a, b = self.a, other.a
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype.kind not in "fc":
            return a.tobytes() == b.tobytes()
        eps = np.finfo(a.dtype).eps
        return bool(np.allclose(a, b, rtol=self.ULPS * eps, atol=0.0, equal_nan=True))

    def __repr__(self) -> str:
        return f"Values({self.a!r})"


def describe(obj, args, parents, *, expected=False):
    """A comparable description: structure, types, dtypes, values, and identity with the arguments.

    ``expected``: describe NumPy's result as ``@offload`` documents it will come back: a 0-d
    array that is not one of the caller's arrays comes back as the NumPy scalar of that value
    (README, "Guarantees and limits": the device cannot tell ``np.asarray(x.sum())`` from
    ``x.sum()``).
    """
    if expected and isinstance(obj, np.ndarray) and obj.ndim == 0 and not any(obj is p for p in parents):
        obj = obj[()]
    if isinstance(obj, np.ndarray):
        owner = next((i for i, x in enumerate(args) if x is obj), None)
        shares = [i for i, p in enumerate(parents) if np.shares_memory(obj, p)]
        return ("ndarray", type(obj), obj.dtype.str, obj.shape, Values(obj), owner, tuple(shares))
    if isinstance(obj, np.generic):
        return ("generic", type(obj), Values(np.asarray(obj)))
    if isinstance(obj, (tuple, list)):
        owner = next((i for i, x in enumerate(args) if x is obj), None)
        return (type(obj), owner, tuple(describe(x, args, parents, expected=expected) for x in obj))
    if isinstance(obj, dict):
        owner = next((i for i, x in enumerate(args) if x is obj), None)
        return (type(obj), owner, tuple((k, describe(v, args, parents, expected=expected)) for k, v in obj.items()))
    if isinstance(obj, float) and obj != obj:
        return (float, "nan")
    return (type(obj), obj)


def state(args, parents):
    """What the caller holds after the call: every parent's values and the container's contents."""
    box = args[3]
    items = list(box.values()) if isinstance(box, dict) else list(box)
    return (tuple((p.dtype.str, Values(p)) for p in parents),
            tuple((type(x), Values(x) if isinstance(x, np.ndarray) else x) for x in items),
            tuple(any(x is p for p in parents) for x in items))


@pytest.mark.usefixtures("fake_gpu")
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(program=programs(), recipe=arguments())
def test_generated_function_behaves_as_numpy(program, recipe):
    source, container = program
    namespace = {"np": np}
    exec(compile(source, "<generated>", "exec"), namespace)
    plain = namespace["f"]
    offloaded = offload(plain)

    args_np, parents_np = build(recipe, container)
    args_gpu, parents_gpu = build(recipe, container)
    status_np, out_np = run(plain, args_np)
    with config(backend="cupy"):
        status_gpu, out_gpu = run(offloaded, args_gpu)

    context = f"\n{source}\nrecipe={recipe} container={container}\nlast decision: {offloaded.last_decision}"
    assert status_gpu == status_np, f"NumPy {status_np} {out_np!r}, offload {status_gpu} {out_gpu!r}{context}"
    if status_np == "ok":
        # A call that fell back to NumPy returns NumPy's own result (a 0-d array stays one).
        on_device = offloaded.last_decision.backend != "numpy"
        assert describe(out_gpu, args_gpu, parents_gpu) == describe(out_np, args_np, parents_np, expected=on_device), context
    else:
        assert out_gpu == out_np, context
    assert state(args_gpu, parents_gpu) == state(args_np, parents_np), f"writes differ{context}"
