"""Only the optional C extension lives here; everything else is in pyproject.toml.

``autooffload._native``: the NumPy-path check of an offloaded call, and a fast array address.
``optional=True``: where no compiler is found the build goes on without it, and the pure-Python
code does the same work.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("autooffload._native", ["src/autooffload/_native.c"], optional=True),
    ],
)
