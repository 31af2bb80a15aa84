"""Building blocks shared by the analytics queries, raw-event and rollup alike."""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, case
from sqlalchemy.orm import Session

from ..models import Event
from ..timewindows import Day

Database = Session | Connection  # what a report's queries run on
CENT = Decimal("0.01")


def ratio_half_up(part: Decimal | int, whole: Decimal | int, places: int = 0) -> Decimal:
    """``part / whole`` rounded half-up to ``places`` decimals, as people (and the money
    figures) round: 2.5 s is 3 s, 6.25 % is 6.3 %. Exact decimals, so no float noise
    decides a half; ``whole`` must not be 0."""
    return (Decimal(part) / Decimal(whole)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)


def money(amount: Decimal | float | None) -> float:
    """Money for JSON: a float rounded half-up to cents; NULL is 0. SQLite sums floats:
    read as written (35.400000000000006), not as their binary expansion."""
    exact = Decimal(str(amount)) if isinstance(amount, float) else Decimal(amount or 0)
    return float(exact.quantize(CENT, rounding=ROUND_HALF_UP))


def in_window(tenant_id: int, start: datetime, end: datetime) -> tuple[ColumnElement[bool], ...]:
    """This tenant's events in [start, end); tenant first, so the indexes apply."""
    return (Event.tenant_id == tenant_id, Event.created_at >= start, Event.created_at < end)


def in_days(
    rollup: Any, tenant_id: int, first: date, last: date
) -> tuple[ColumnElement[bool], ...]:
    """A rollup table's rows of this tenant's local days ``first`` to ``last``, both in."""
    return (rollup.tenant_id == tenant_id, rollup.day >= first, rollup.day <= last)


def day_index(days: list[Day]) -> ColumnElement[int]:
    """Which of ``days`` (contiguous, oldest first) an event falls on, as a CASE; -1 if none."""
    return case(*[(Event.created_at < day.end, index) for index, day in enumerate(days)], else_=-1)
