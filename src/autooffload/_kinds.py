"""What kind of work a function does, read from its code when the user did not say.

A function's cost is modelled as the sum of the operations it names: each call of a known
NumPy function counts once for its kind, each arithmetic operator once as elementwise. So
``np.diff(np.log(p))`` is one elementwise and one transcendental unit, and the cost model adds
their curves. An in-place operator (``x *= 5``) counts half: it allocates no result, and the
curves are timed on operations that do (their new pages fault in). On the H100 machine the
in-place chain ``x *= 5; x *= x; x += x`` took 0.4-0.7x of three out-of-place operations
(1e5-1e7 elements), and counting it as three sent it to a slower GPU at 1e6 elements.
Loops and data-dependent work are invisible here: ``@offload(kind=...)`` or a calibration of
the real function says more.
"""

from __future__ import annotations

import dis
import types
from collections import Counter

from ._codewalk import code_objects

_NAMES_BY_KIND = {
    "fft": "fft ifft rfft irfft fft2 ifft2 fftn ifftn rfft2 irfft2 rfftn irfftn hfft ihfft fftshift ifftshift convolve correlate",
    "solve": "solve inv lstsq cholesky eig eigh eigvals eigvalsh svd qr det slogdet pinv matrix_power norm cond matrix_rank",
    "matmul": "matmul dot vdot einsum tensordot inner outer kron cov corrcoef",
    "sort": "sort argsort partition argpartition median percentile quantile nanmedian nanpercentile nanquantile unique searchsorted lexsort",
    "transcendental": (
        "exp exp2 expm1 log log2 log10 log1p sin cos tan arcsin arccos arctan arctan2 sinh cosh tanh "
        "arcsinh arccosh arctanh sqrt cbrt power float_power hypot erf erfc logaddexp logaddexp2 sinc"
    ),
    "random": (
        "random rand randn randint normal uniform standard_normal lognormal exponential poisson "
        "binomial choice permutation shuffle default_rng integers gamma beta"
    ),
    "reduction": (
        "sum mean std var min max amin amax prod cumsum cumprod nansum nanmean nanstd nanvar nanmin "
        "nanmax argmin argmax any all average count_nonzero ptp histogram bincount"
    ),
    "elementwise": (
        "add subtract multiply divide true_divide floor_divide negative abs absolute sign clip where "
        "maximum minimum diff square reciprocal floor ceil round rint isnan isfinite isinf nan_to_num "
        "logical_and logical_or logical_not greater less equal not_equal mod remainder"
    ),
}
KIND_OF_NAME = {name: kind for kind, names in _NAMES_BY_KIND.items() for name in names.split()}

Work = tuple[tuple[str, float], ...]
IN_PLACE_WEIGHT = 0.5


def _work_of_code(code: types.CodeType) -> Counter:
    counts: Counter = Counter()
    for c in code_objects(code):
        for ins in dis.get_instructions(c):
            if ins.opname in ("LOAD_ATTR", "LOAD_METHOD", "LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF"):
                kind = KIND_OF_NAME.get(str(ins.argval))
                if kind:
                    counts[kind] += 1
            elif ins.opname == "BINARY_OP":
                in_place = ins.argrepr.endswith("=")
                counts["matmul" if "@" in ins.argrepr else "elementwise"] += IN_PLACE_WEIGHT if in_place else 1  # type: ignore[assignment]  # a Counter of float weights
    return counts


def infer_work(func: object) -> tuple[Work, str]:
    """(work units by kind, a short note of how they were found) for a callable."""
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    if isinstance(code, types.CodeType):
        counts = _work_of_code(code)
        if counts:
            work = tuple(sorted(counts.items()))
            return work, "read from the code"
        return (("generic", 1),), "nothing recognisable in the code"
    name = getattr(func, "__name__", "")
    kind = KIND_OF_NAME.get(name)
    if kind:
        return ((kind, 1),), f"named {name}"
    return (("generic", 1),), f"unknown callable {name or type(func).__name__}"


def describe(work: Work) -> str:
    return "+".join(kind if n == 1 else f"{n:g}x{kind}" for kind, n in work)
