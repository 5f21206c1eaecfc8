"""Walking a function's bytecode: its code objects, the global names it loads and stores.

Used by the readers of code (``_kinds``: what work it does; ``_purity``: whether it can write
into its arguments; ``_rebind``: which globals a device twin must translate); none of them owns it.
"""

from __future__ import annotations

import dis
import types


def code_objects(code: types.CodeType):
    """``code`` and every code object nested in it (lambdas, comprehensions, inner functions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_objects(const)


def referenced_names(code: types.CodeType) -> tuple[frozenset[str], frozenset[str]]:
    """(names the code may load from globals, names it stores with ``global``), nested code included.

    ``co_names`` also holds attribute names: a superset, which only costs a dictionary lookup.
    """
    loads: set[str] = set()
    stores: set[str] = set()
    for c in code_objects(code):
        loads.update(c.co_names)
        for ins in dis.get_instructions(c):
            if ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
                stores.add(ins.argval)
    return frozenset(loads), frozenset(stores)
