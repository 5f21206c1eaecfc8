"""Where did my time go? Run:  python -m autooffload run examples/where_time_went.py

Three functions, called as a program would: a large elementwise one (the GPU's kind of work, when
there is one), a small one (NumPy's), and one that reads a NumPy array kept at module level, which
CuPy refuses to mix with its own arrays: on a GPU it falls back to NumPy, and the report says why.
"""

import numpy as np

from autooffload import offload

WEIGHTS = np.linspace(0.0, 1.0, 4_000_000)  # a host array the function reads as a global


@offload
def normalize(x):
    return (x - x.mean()) / (x.std() + 1e-12)


@offload
def clip_small(x):
    return np.clip(x, -1.0, 1.0)


@offload
def weighted(x):
    return (x * WEIGHTS).sum()


rng = np.random.default_rng(0)
big = rng.standard_normal(4_000_000)  # 32 MB
small = rng.standard_normal(1_000)
for _ in range(20):
    normalize(big)
    clip_small(small)
    weighted(big)
