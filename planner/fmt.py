"""Human-readable numbers for tables: 1.23 GFLOP, 45.6 MB, 12.3 ms."""

from __future__ import annotations


def si(value: float, unit: str = "", digits: int = 3) -> str:
    """Decimal SI prefixes: si(1.5e9, 'FLOP') -> '1.50 GFLOP'."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}".rstrip()


def nbytes(value: float) -> str:
    """Decimal bytes: 1.5e9 -> '1.5 GB' (GB = 1e9 bytes, as device memory is quoted)."""
    return si(value, "B")
