"""All of one tenant's data, to hand over (export) or to delete for good."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text
from sqlalchemy.orm import Session

from .models import DedupeKey, Event, Product, Tenant

# Events read per transaction: each page is its own short read, so an export holds no
# lock on events for long (a new month's partition waits for every reader of the table).
EXPORT_PAGE = 2000


def as_json(record: dict[str, Any]) -> str:
    """One line of JSON: times in ISO 8601 (UTC), amounts as their exact decimal text."""
    return json.dumps(
        record, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)
    )


def without_row_id(event: dict[str, Any]) -> dict[str, Any]:
    """An event's columns but its ``id``: one sequence numbers every tenant's events, so
    the gap between two of a tenant's ids would tell how many others got meanwhile."""
    return {column: value for column, value in event.items() if column != "id"}


def exported_text(session: Session, tenant: Tenant) -> Iterator[str]:
    """``exported_lines`` in pieces of EXPORT_PAGE lines, each line ending in a newline
    (a stream's, or a file's, few large writes)."""
    lines: list[str] = []
    for line in exported_lines(session, tenant):
        lines.append(line)
        if len(lines) == EXPORT_PAGE:
            yield "\n".join(lines) + "\n"
            lines.clear()
    if lines:
        yield "\n".join(lines) + "\n"


def exported_lines(session: Session, tenant: Tenant) -> Iterator[str]:
    """The tenant with its owners, its products, the keys it sent (idempotency keys,
    sales' transaction ids) and every event (``without_row_id``), oldest first: one JSON
    object a line. The last is {"end": {"events": N}}: an export cut short lacks it."""
    tenant_id = tenant.id
    row = session.execute(select(Tenant.__table__).where(Tenant.id == tenant_id)).one()
    owners = sorted(owner.email for owner in tenant.owners)
    yield as_json({"tenant": {**row._asdict(), "owners": owners}})
    for table, name, order in (
        (Product.__table__, "product", Product.id),
        (DedupeKey.__table__, "key", DedupeKey.key),
    ):
        for row in session.execute(
            select(table).where(table.c.tenant_id == tenant_id).order_by(order)
        ):
            yield as_json({name: row._asdict()})
    session.commit()
    events = Event.__table__
    after: tuple[datetime, int] | None = None
    exported = 0
    while True:
        page = select(events).where(events.c.tenant_id == tenant_id)
        if after is not None:
            # The time bound on its own, which the (tenant_id, created_at) index can seek
            # to whatever the statistics say: a row comparison there is only a filter.
            created_at, event_id = after
            page = page.where(
                events.c.created_at >= created_at,
                or_(events.c.created_at > created_at, events.c.id > event_id),
            )
        rows = session.execute(
            page.order_by(events.c.created_at, events.c.id).limit(EXPORT_PAGE)
        ).all()
        session.commit()  # the page's read ends here
        for row in rows:
            yield as_json({"event": without_row_id(row._asdict())})
        exported += len(rows)
        if len(rows) < EXPORT_PAGE:
            yield as_json({"end": {"events": exported}})
            return
        after = (rows[-1].created_at, rows[-1].id)


def delete_tenant_data(session: Session, tenant_id: int) -> int:
    """Delete the tenant and, through the foreign keys, everything of it; return how many
    events it had. The caller commits."""
    if session.get_bind().dialect.name == "postgresql":
        # The lock its DELETE takes, before events are read: in the order a new month's
        # partition takes both (else, counting behind it, a deadlock).
        session.execute(text("LOCK TABLE tenants IN ROW EXCLUSIVE MODE"))
    events = session.scalar(
        select(func.count()).select_from(Event).where(Event.tenant_id == tenant_id)
    )
    session.execute(delete(Tenant).where(Tenant.id == tenant_id))
    return events or 0


def forget_customer(session: Session, tenant_id: int, user_id: str) -> int:
    """Delete every event of the tenant that names the customer (``user_id``), and the
    unnamed others of its sessions (the page views before it signed in); return how many.
    Another customer's events in one of those sessions (a shared device, a kiosk) stay.
    The caller rebuilds the tenant's rollups, which count them, and commits."""
    its_sessions = select(Event.session_id).where(
        Event.tenant_id == tenant_id, Event.user_id == user_id, Event.session_id.is_not(None)
    )
    forgotten = delete(Event).where(
        Event.tenant_id == tenant_id,
        or_(
            Event.user_id == user_id,
            and_(Event.user_id.is_(None), Event.session_id.in_(its_sessions)),
        ),
    )
    return session.execute(forgotten).rowcount or 0
