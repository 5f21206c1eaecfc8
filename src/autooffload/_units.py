"""Human-readable sizes and durations, shared by decisions, the sweep's notes, the CLI, the plots
and the report."""


def format_bytes(n: float, digits: int = 3) -> str:
    """``n`` bytes in binary units: "80 B", "7.81 KiB", "76.3 MiB" (``digits`` significant)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_seconds(s: float) -> str:
    """``s`` seconds in the unit that keeps 3 significant digits readable: "1.2 s", "41.5 ms", "380 us"."""
    if abs(s) >= 1:
        return f"{s:.3g} s"
    if abs(s) >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"
