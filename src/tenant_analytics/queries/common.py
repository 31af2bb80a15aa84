"""Building blocks shared by the analytics queries, raw-event and rollup alike."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Connection, case
from sqlalchemy.orm import Session

from ..models import Event
from ..timewindows import Day

Database = Session | Connection  # what a report's queries run on


def in_window(tenant_id: int, start: datetime, end: datetime) -> tuple[ColumnElement[bool], ...]:
    """This tenant's events in [start, end); tenant first, so the indexes apply."""
    return (Event.tenant_id == tenant_id, Event.created_at >= start, Event.created_at < end)


def day_index(days: list[Day]) -> ColumnElement[int]:
    """Which of ``days`` (contiguous, oldest first) an event falls on, as a CASE; -1 if none."""
    return case(*[(Event.created_at < day.end, index) for index, day in enumerate(days)], else_=-1)
