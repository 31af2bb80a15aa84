"""Writing events: the storage end of the one ingestion path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from .models import Event, IdSequence


def allocate_ids(session: Session, name: str, count: int) -> range:
    """Reserve ``count`` ids from a named counter (SQLite only).

    The UPDATE takes SQLite's write lock at once, so concurrent writers are
    serialized and never receive the same id.
    """
    result = session.execute(
        update(IdSequence)
        .where(IdSequence.name == name)
        .values(last_value=IdSequence.last_value + count)
        .returning(IdSequence.last_value)
    ).scalar()
    if result is None:
        session.execute(insert(IdSequence).values(name=name, last_value=count))
        result = count
    return range(result - count + 1, result + 1)


def insert_events(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert event rows (column name -> value) in the caller's transaction."""
    if not rows:
        return
    if session.get_bind().dialect.name == "sqlite":
        ids = allocate_ids(session, "events", len(rows))
        rows = [{**row, "id": event_id} for row, event_id in zip(rows, ids, strict=True)]
    session.execute(insert(Event.__table__), list(rows))
