"""Human-readable sizes, shared by decisions, the sweep's notes, the CLI and the plots."""


def format_bytes(n: float, digits: int = 3) -> str:
    """``n`` bytes in binary units: "80 B", "7.81 KiB", "76.3 MiB" (``digits`` significant)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
