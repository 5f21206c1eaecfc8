"""Where Numba's semantics differ from NumPy's, and which calls must therefore stay on NumPy.

Pure: reads a function's bytecode (``_codewalk``, ``_kinds``) and a call's argument types; never
imports Numba. Two levels:

- ``CodeFacts`` (once per function): what the code names. Dense linear algebra is refused (it
  belongs to NumPy's multi-threaded BLAS or the GPU; running it inside a parallel Numba region
  would fight BLAS for the cores), and so is random generation (Numba's ``np.random`` has its own
  state: ``np.random.seed`` in the caller would not reach it) and the FFT (Numba has none).
- ``semantic_difference`` (once per argument-type signature): the differences measured with
  numba 0.68.1 / numpy 2.4.6 (``njit(parallel=True, error_model="numpy")``), each of which
  would change a result:

  ============================================ ========================== =====================
  case                                         NumPy                      Numba
  ============================================ ========================== =====================
  ``int8/16/32, uint8/16/32 array + 1``        same dtype (NEP 50)        int64
  ``uint64 array + 1``                         uint64                     float64
  ``float32 array * 2.5``, ``complex64 * 2.5`` float32, complex64         float64, complex128
  ``int array ** -1``                          ValueError                 values (1, 0, 0)
  ``np.max``/``min``/``x.max()`` with a NaN    nan                        NaN dropped (parallel)
  ``float32 np.sum`` of 2**25 ones             pairwise, exact            per-thread sequential
  ============================================ ========================== =====================

  A Python scalar (an argument or a literal in the code) takes its dtype from the array in NumPy
  2 but is int64/float64/complex128 in Numba: so arrays of any dtype other than bool, int64,
  float64 and complex128 stay on NumPy whenever the code has a numeric literal or the call passes
  a scalar. (Array-with-array promotion is NumPy's own table in both.) Arrays the code makes count
  too: code that names or spells a narrower dtype (``np.int32``, ``"float32"``) is taken to make
  arrays of every such dtype (``CodeFacts.narrow_dtypes``), and code that divides, calls a
  transcendental function or names a float (``CodeFacts.makes_floats``) to make float arrays,
  NaN included, from any arguments (the min/max rule).

  Agreeing, measured: integer ``//`` and ``%`` by zero give 0; float ``/`` by zero gives inf and
  nan (``error_model="numpy"``; NumPy's RuntimeWarning is not emitted: a warning, not a value);
  NaN or out-of-range float -> int casts give INT_MIN in both on x86-64; ``%`` of negatives,
  ``np.abs`` of INT_MIN, ``np.minimum`` with NaN, ``np.where``, ``np.clip``, ``np.sort``,
  ``np.cumsum``, ``np.argmax`` with NaN agree.
"""

from __future__ import annotations

import dis
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._codewalk import code_objects
from .._kinds import KIND_OF_NAME

# Dtypes whose mixing with a Python scalar gives the same dtype in NumPy 2 and in Numba.
_SCALAR_SAFE = frozenset(np.dtype(c) for c in ("?", "i8", "f8", "c16"))
# The parallel min/max reduction drops NaN (numba 0.68.1; the serial one keeps it).
_MIN_MAX_NAMES = frozenset({"max", "min", "amax", "amin", "ptp", "nanmax", "nanmin"})
# NumPy sums float32 and complex64 pairwise in their own precision; Numba's parallel reduction
# sums each thread's chunk sequentially: far larger errors (for 2**25 float32 ones on one
# thread the sequential sum stalls at 2**24).
_SUM_NAMES = frozenset({"sum", "mean", "std", "var", "prod", "cumsum", "cumprod", "average", "nansum", "nanmean", "nanstd", "nanvar", "nanprod"})
_POWER_NAMES = frozenset({"power", "float_power"})
# Dtypes the code may make arrays of (``np.zeros(n, np.int32)``, ``x.astype("f4")``), by name or
# string: such an array meets the Python-scalar and float32-sum rules below as an argument of
# that dtype would (review, session 11: ``np.zeros(x.shape, np.int32) + 1`` came back int64 from
# the tier, int32 from NumPy), but ``semantic_difference`` sees only the arguments' dtypes.
_NARROW_DTYPES = frozenset(np.dtype(c) for c in ("i1", "i2", "i4", "u1", "u2", "u4", "u8", "f2", "f4", "c8"))
# Names by which code may make float arrays (and so NaN) out of integer arguments: the min/max
# rule must then hold whatever the arguments' dtypes (review, session 11: np.log(x - 3).max() of
# int64 x gave 5.28 on the tier where NumPy gives nan).
_FLOAT_NAMES = frozenset({"nan", "inf", "NaN", "float", "float64", "double", "float_", "astype", "divide",
                          "true_divide", "mean", "average", "std", "var", "nanmean", "nanstd", "nanvar"})
_NARROW_NAMES = frozenset(name for dt in _NARROW_DTYPES for name in (dt.name, dt.type.__name__)) | frozenset(
    {"half", "single", "csingle", "byte", "short", "intc", "ubyte", "ushort", "uintc"})
_REFUSED_KINDS = {
    "matmul": "dense linear algebra stays with NumPy's BLAS (its threads would fight Numba's)",
    "solve": "dense linear algebra stays with NumPy's BLAS (its threads would fight Numba's)",
    "random": "Numba's np.random has its own state: seeding NumPy would not reach it",
    "fft": "Numba has no np.fft",
}


@dataclass(frozen=True)
class CodeFacts:
    """What a function's code (and its helpers' code) names, as far as the rules care."""

    refused: str | None  # why no call of it may run on Numba, or None
    numeric_literals: bool  # an int/float/complex constant (bool excluded): a Python scalar operand
    narrow_dtypes: bool  # names or spells a dtype of _NARROW_DTYPES: it may make such arrays
    makes_floats: bool  # true division, a transcendental function or a float name: floats (NaN) from any input
    min_max: bool
    sums: bool
    power: bool


def code_facts(codes: list[types.CodeType]) -> CodeFacts:
    """The facts of a function, given its code object and those of the helpers it calls."""
    names: set[str] = set()
    operators: set[str] = set()
    literals = narrow = False
    for code in codes:
        for c in code_objects(code):
            names.update(c.co_names)
            literals = literals or any(isinstance(k, (int, float, complex)) and not isinstance(k, bool) for k in c.co_consts)
            narrow = narrow or any(isinstance(k, str) and _spells_narrow(k) for k in c.co_consts)
            operators.update(i.argrepr for i in dis.get_instructions(c) if i.opname == "BINARY_OP")
    kinds = {KIND_OF_NAME.get(name) for name in names} | ({"matmul"} if any("@" in op for op in operators) else set())
    refused = next((why for kind, why in _REFUSED_KINDS.items() if kind in kinds), None)
    return CodeFacts(
        refused=refused,
        numeric_literals=literals,
        narrow_dtypes=narrow or bool(names & _NARROW_NAMES),
        makes_floats=any(op.startswith("/") for op in operators) or bool(names & _FLOAT_NAMES)
        or any(KIND_OF_NAME.get(name) == "transcendental" for name in names),
        min_max=bool(names & _MIN_MAX_NAMES),
        sums=bool(names & _SUM_NAMES),
        power=any("**" in op for op in operators) or bool(names & _POWER_NAMES),
    )


def _spells_narrow(text: str) -> bool:
    """Whether a string constant names a dtype of ``_NARROW_DTYPES`` ("float32", "<f4", "i2")."""
    if not 1 < len(text) < 12:
        return False
    try:
        return np.dtype(text) in _NARROW_DTYPES
    except (TypeError, ValueError):
        return False


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (int, float, complex, np.number)) and not isinstance(x, (bool, np.bool_))


def semantic_difference(facts: CodeFacts, args: tuple) -> str | None:
    """Why this call (its positional arguments, defaults applied) would give a different result on
    Numba than on NumPy, or None. Conservative: it looks at dtypes, not values."""
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    dtypes = {a.dtype for a in arrays}
    unsafe = sorted(str(dt) for dt in dtypes if dt not in _SCALAR_SAFE)
    scalar = facts.numeric_literals or any(_is_scalar(a) for a in args)
    if unsafe and scalar:
        return (f"a Python scalar with {', '.join(unsafe)} arrays: NumPy keeps the array's dtype, "
                f"Numba promotes to 64 bits")
    if facts.narrow_dtypes:
        if scalar:
            return ("the code makes arrays of a dtype narrower than 64 bits (np.int32, 'float32', ...): "
                    "with a Python scalar NumPy keeps it, Numba promotes to 64 bits")
        dtypes |= _NARROW_DTYPES  # what the rules below must assume the code's own arrays are
    if facts.power and any(dt.kind in "iu" for dt in dtypes):
        return "integer power: NumPy raises on a negative exponent, Numba returns values"
    if facts.min_max and (facts.makes_floats or any(dt.kind in "fc" for dt in dtypes)):
        return "a float min/max reduction: Numba's parallel reduction drops NaN, NumPy returns nan"
    if facts.sums and any(dt in (np.dtype("f4"), np.dtype("c8")) for dt in dtypes):
        return "a float32/complex64 reduction: NumPy sums pairwise, Numba sequentially per thread"
    return None
