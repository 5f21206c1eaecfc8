"""Only the optional C extension lives here; everything else is in pyproject.toml.

``autooffload._fastpath`` is the NumPy-path check of an offloaded call. ``optional=True``: where
no compiler is found the build goes on without it, and the pure-Python wrapper does the same work.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("autooffload._fastpath", ["src/autooffload/_fastpath.c"], optional=True),
    ],
)
