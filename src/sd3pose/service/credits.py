"""Credits counted in whole micro-credits (10^-6 credit).

Balances, prices and reservations are integers in both key stores (SQLite columns, Redis HINCRBY), so
sums are exact: three requests at a price of 0.1 take a balance of 0.3 to exactly 0. The stores take
and report credits as plain numbers (what operators type and headers show), converted here.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

MICRO_PER_CREDIT = 10**6
# Redis scripts compare balances as Lua doubles: every integer up to 2^53 is exact there.
MAX_MICRO = 10**15  # a billion credits


def to_micro(credits: float | int | str | Decimal) -> int:
    """`credits` as whole micro-credits, rounded to the nearest (0.1 -> 100000, exactly).

    Floats go through their shortest decimal spelling, so 0.1 means the 0.1 the operator typed.
    ValueError for NaN or infinity.
    """
    try:
        value = Decimal(repr(credits)) if isinstance(credits, float) else Decimal(credits)
        return int(value.scaleb(6).to_integral_value(rounding=ROUND_HALF_EVEN))
    except (InvalidOperation, ValueError, OverflowError):
        raise ValueError(f"{credits!r} is not a finite number of credits") from None


def from_micro(micro: int | None) -> float | None:
    """Micro-credits as credits (None, unlimited, stays None)."""
    return None if micro is None else micro / MICRO_PER_CREDIT


def format_credits(credits: float | None) -> str:
    """A balance as headers and the CLI show it: '5', '4.9', '0.000001', 'unlimited'."""
    if credits is None:
        return "unlimited"
    text = f"{credits:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text
