"""The table of tools/ab_suite.sh's runs: per row, each variant's ratio per repetition and median.

    python3 tools/ab_table.py OUT/ab
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(root: str) -> None:
    ratios: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    states: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(Path(root).glob("*/suite.json")):
        variant, profile, _rep = path.parent.name.rsplit("-", 2)
        for row in json.loads(path.read_text())["rows"]:
            if row.get("ratio"):
                key = (profile, row["function"], row["n"])
                ratios[key][variant].append(row["ratio"])
                states[key][variant].append(row.get("picked"))
    variants = sorted({v for r in ratios.values() for v in r})
    print(f"{'profile':10s} {'function':14s} {'n':>8s}  " + "  ".join(f"{v:>28s}" for v in variants))
    for key in sorted(ratios):
        cells = []
        for v in variants:
            got = ratios[key].get(v, [])
            cells.append(f"{statistics.median(got):.2f} ({' '.join(f'{r:.2f}' for r in got)})" if got else "n/a")
        print(f"{key[0]:10s} {key[1]:14s} {key[2]:>8g}  " + "  ".join(f"{c:>28s}" for c in cells))


if __name__ == "__main__":
    main(sys.argv[1])
