"""Report arithmetic: prorated costs, ratios, score bands, and tables as CSV.

Pure functions over plain data; `automation.reports` gathers the rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

Number = Fraction | Decimal | int
CellValue = str | int | Fraction | Decimal | None


@dataclass(frozen=True)
class CostPeriod:
    """An amount spent evenly over the days from `starts_on` to `ends_on`, both included."""

    starts_on: date
    ends_on: date
    amount: Decimal


def overlap_days(start: date, end: date, period_from: date | None, period_to: date | None) -> int:
    """Days of [start, end] inside [period_from, period_to] (open ends: no limit)."""
    first = max(start, period_from) if period_from else start
    last = min(end, period_to) if period_to else end
    return max((last - first).days + 1, 0)


def prorate(cost: CostPeriod, period_from: date | None, period_to: date | None) -> Fraction:
    """The share of a cost that falls in the period, by days."""
    span = (cost.ends_on - cost.starts_on).days + 1
    if span <= 0:
        return Fraction(0)
    days = overlap_days(cost.starts_on, cost.ends_on, period_from, period_to)
    return Fraction(cost.amount) * days / span


def campaign_cost(
    total: Decimal | None,
    starts_on: date | None,
    ends_on: date | None,
    periods: Iterable[CostPeriod],
    period_from: date | None,
    period_to: date | None,
) -> Fraction:
    """A campaign's cost in the period: its per-period rows when it has any, else its total.

    The total is spread over the campaign's dates; without both dates it cannot
    be spread, so it counts whole in any period.
    """
    rows = list(periods)
    if rows:
        return sum((prorate(row, period_from, period_to) for row in rows), Fraction(0))
    if total is None:
        return Fraction(0)
    if starts_on is None or ends_on is None:
        return Fraction(total)
    return prorate(CostPeriod(starts_on, ends_on, total), period_from, period_to)


def ratio(numerator: Number, denominator: Number) -> Fraction | None:
    """numerator / denominator, or None when the denominator is zero (shown as a dash)."""
    if not denominator:
        return None
    return Fraction(numerator) / Fraction(denominator)


def roi(revenue: Number, cost: Number) -> Fraction | None:
    """(revenue - cost) / cost; None without a cost."""
    return ratio(Fraction(revenue) - Fraction(cost), cost)


def band_of(score: int, width: int) -> int:
    """The lower bound of the band a score falls in: 0-9 is 0, 10-19 is 10, -5 is -10."""
    return (score // width) * width


def band_label(low: int, width: int) -> str:
    """ "10-19" for the band starting at 10."""
    return f"{low}-{low + width - 1}"


def to_decimal(value: Number | None, places: int = 2) -> Decimal | None:
    """A value rounded half-up to `places` decimals; None stays None."""
    if value is None:
        return None
    if isinstance(value, Fraction):
        value = Decimal(value.numerator) / Decimal(value.denominator)
    return Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def human(value: CellValue, places: int = 2) -> str:
    """A cell for people: whole numbers without decimals, others to `places`; None is a dash."""
    if value is None:
        return "\u2014"
    if isinstance(value, str):
        return value
    if isinstance(value, int) or Fraction(value).denominator == 1:
        return f"{int(value):,}"
    return f"{to_decimal(value, places):,}"


def machine(value: CellValue, places: int = 4) -> str:
    """A cell for a CSV: plain digits, no separators, trailing zeros dropped; None is empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    text = format(to_decimal(value, places), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet may read as the start of a formula."""


def safe_cell(text: str) -> str:
    """A text cell a spreadsheet will not run: a leading = + - @ gets a quote in front."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_lines(header: Sequence[str], rows: Iterable[Sequence[CellValue]]) -> Iterator[str]:
    """A CSV document line by line, header first, as `rows` yields them (for streaming).

    Text cells are guarded against formula injection, numbers are not.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([safe_cell(h) for h in header])
    yield out.getvalue()
    for row in rows:
        out.seek(0)
        out.truncate()
        writer.writerow(
            [safe_cell(cell) if isinstance(cell, str) else machine(cell) for cell in row]
        )
        yield out.getvalue()


def csv_text(header: Sequence[str], rows: Iterable[Sequence[CellValue]]) -> str:
    """A CSV document; text cells are guarded against formula injection, numbers are not."""
    return "".join(csv_lines(header, rows))


def percent(value: Number | None, places: int = 1) -> str:
    """A ratio for people as a percentage: 0.25 is "25%", -1.5 is "-150%"; None is a dash."""
    if value is None:
        return "\u2014"
    return f"{to_decimal(Fraction(value) * 100, places):,}%".replace(".0%", "%")
