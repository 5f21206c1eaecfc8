"""STAND-IN for branch issue15's module (replaced by the merge): the interface only.

``verdict(func, declared)``: the user's promise (``blockwise=True`` / ``"rows"``) or nothing;
the real module also proves blockwise code from its bytecode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Verdict:
    kind: Literal["elements", "rows"] | None
    source: Literal["declared", "proven", "none"]
    reason: str


def verdict(func, declared) -> Verdict:
    if declared is True:
        return Verdict("elements", "declared", "declared blockwise=True")
    if declared == "rows":
        return Verdict("rows", "declared", "declared blockwise='rows'")
    return Verdict(None, "none", "not declared (stand-in: no proof)")
