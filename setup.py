"""Only the optional C extension lives here; everything else is in pyproject.toml.

``autooffload._native``: the NumPy-path check of an offloaded call, and a fast array address.
``autooffload._parcopy``: memcpy over a pool of native threads, for the copy engine's mid sizes.
``optional=True``: where no compiler (or no pthreads) is found the build goes on without them,
and the pure-Python code does the same work.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("autooffload._native", ["src/autooffload/_native.c"], optional=True),
        Extension("autooffload._parcopy", ["src/autooffload/_parcopy.c"], optional=True, extra_compile_args=["-pthread"],
                  extra_link_args=["-pthread"]),
    ],
)
