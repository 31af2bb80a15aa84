"""Smart alerts: five rules over rolling windows that tell an owner what needs a look."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session
from typing_extensions import TypedDict  # pydantic reads no typing.TypedDict on 3.11

from ..catalogue import (
    ADD_TO_CART,
    BEGIN_CHECKOUT,
    CHECKOUT_STARTED,
    PAYMENT_ERROR,
    PRODUCT_VIEW,
    WHATSAPP_CART_CLICK,
)
from ..models import Event, Product
from ..timewindows import days_overlapping
from . import store_rollups
from .common import Database, in_window
from .store_common import (
    SALE_TYPES,
    is_a_sale,
    of_type,
    ranked,
    report_settings,
    sessions_by,
)
from .store_dashboard import abandonment

ABANDONMENT_WINDOW = timedelta(hours=24)
ABANDONMENT_MIN_CHECKOUTS = 3
ABANDONMENT_MAX_RATE = 70.0
POPULAR_WINDOW = timedelta(days=7)
POPULAR_VIEWS_ABOVE = 10  # distinct viewing sessions
PAYMENT_ERRORS_WINDOW = timedelta(hours=1)
CARTS_WINDOW = timedelta(hours=6)
CARTS_MIN_SESSIONS = 5
STUCK_WINDOW = timedelta(hours=24)
STUCK_EVENTS_ABOVE = 15


AlertType = Literal[
    "high_abandonment",
    "popular_no_conversion",
    "payment_errors",
    "carts_abandoned",
    "stuck_sessions",
    "all_clear",
]


class Alert(TypedDict):
    """``timestamp``: when the alerts were computed (UTC, ISO 8601)."""

    type: AlertType
    message: str
    severity: Literal["critical", "warning", "info"]
    timestamp: str


def unconverted_popular_products(
    conn: Database, *, tenant_id: int, zone: ZoneInfo, start: datetime, end: datetime
) -> list[tuple[str, int]]:
    """Products viewed in more than POPULAR_VIEWS_ABOVE sessions, unbought, in [start, end).

    The rollups name the products that may qualify (viewed often enough on the local
    days overlapping the window, bought on none of the days wholly inside it); the raw
    events decide for those alone, and are not read at all when none may: a store's
    popular products sell, and their views are most of its events.
    """
    days = days_overlapping(zone, start, end)
    inside = [day.date for day in days if start <= day.start and day.end <= end]
    candidates = store_rollups.maybe_popular_unbought(
        conn,
        tenant_id=tenant_id,
        first=days[0].date,
        last=days[-1].date,
        whole_days=(inside[0], inside[-1]) if inside else None,
        viewed=PRODUCT_VIEW,
        bought=SALE_TYPES,
        more_than=POPULAR_VIEWS_ABOVE,
    )
    if not candidates:
        return []
    purchased = select(Event.product_slug).where(
        *in_window(tenant_id, start, end), is_a_sale(), Event.product_slug.in_(candidates)
    )
    views = sessions_by(
        Event.product_slug,
        where=[
            *in_window(tenant_id, start, end),
            of_type(PRODUCT_VIEW),
            Event.product_slug.in_(candidates),
            Event.product_slug.not_in(purchased),
        ],
    ).subquery()
    rows = conn.execute(
        select(views.c.key0, views.c.sessions).where(views.c.sessions > POPULAR_VIEWS_ABOVE)
    ).all()
    return ranked(dict(rows), None)  # ties by code point, whatever the collation


def carts_without_checkout(
    conn: Database, *, tenant_id: int, start: datetime, end: datetime
) -> int:
    """Sessions that added to the cart in [start, end) but started no checkout there: no
    checkout event, no tap on the WhatsApp buy button (a WhatsApp shop's checkout) and
    no sale (a shop may send its purchases alone)."""
    checkouts = select(Event.session_id).where(
        *in_window(tenant_id, start, end),
        Event.event_type.in_((BEGIN_CHECKOUT, CHECKOUT_STARTED, WHATSAPP_CART_CLICK, *SALE_TYPES)),
        Event.session_id.is_not(None),
    )
    return (
        conn.scalar(
            select(func.count(func.distinct(Event.session_id))).where(
                *in_window(tenant_id, start, end),
                of_type(ADD_TO_CART),
                Event.session_id.not_in(checkouts),
            )
        )
        or 0
    )


def stuck_sessions(conn: Database, *, tenant_id: int, start: datetime, end: datetime) -> int:
    """Sessions with more than STUCK_EVENTS_ABOVE events and no sale (a purchase, or one
    confirmed over WhatsApp) in [start, end)."""
    stuck = (
        select(Event.session_id)
        .where(*in_window(tenant_id, start, end), Event.session_id.is_not(None))
        .group_by(Event.session_id)
        .having(func.count() > STUCK_EVENTS_ABOVE, func.count(case((is_a_sale(), 1))) == 0)
        .subquery()
    )
    return conn.scalar(select(func.count()).select_from(stuck)) or 0


Finding = tuple[str, str, str]  # (type, severity, message)


def _high_abandonment(
    session: Session, tenant_id: int, zone: ZoneInfo, now: datetime
) -> list[Finding]:
    checkout = abandonment(session, tenant_id=tenant_id, start=now - ABANDONMENT_WINDOW, end=now)
    if checkout.checkouts < ABANDONMENT_MIN_CHECKOUTS or checkout.rate <= ABANDONMENT_MAX_RATE:
        return []
    message = (
        f"{checkout.rate}% of checkouts in {_the_last(ABANDONMENT_WINDOW)} ended without a "
        f"sale ({checkout.abandoned} of {checkout.checkouts})."
    )
    return [("high_abandonment", "critical", message)]


def _popular_no_conversion(
    session: Session, tenant_id: int, zone: ZoneInfo, now: datetime
) -> list[Finding]:
    products = unconverted_popular_products(
        session, tenant_id=tenant_id, zone=zone, start=now - POPULAR_WINDOW, end=now
    )
    names = product_names(
        session,
        tenant_id=tenant_id,
        slugs=[slug for slug, _ in products],
        start=now - POPULAR_WINDOW,
        end=now,
    )
    return [
        (
            "popular_no_conversion",
            "warning",
            f"{_named(slug, names)}: viewed in {views} sessions in {_the_last(POPULAR_WINDOW)} "
            "and never bought.",
        )
        for slug, views in products
    ]


def product_names(
    conn: Database, *, tenant_id: int, slugs: list[str], start: datetime, end: datetime
) -> dict[str, str]:
    """The names the owner gave these product slugs in the catalogue, else the name their
    views in [start, end) carried (a shop that never filled the catalogue sends them)."""
    if not slugs:
        return {}
    rows = conn.execute(
        select(Product.slug, Product.name).where(
            Product.tenant_id == tenant_id, Product.slug.in_(slugs)
        )
    )
    names = {slug: name for slug, name in rows}
    unnamed = [slug for slug in slugs if slug not in names]
    if unnamed:
        carried = conn.execute(
            select(Event.product_slug, func.max(Event.product_name))
            .where(
                *in_window(tenant_id, start, end),
                of_type(PRODUCT_VIEW),
                Event.product_slug.in_(unnamed),
                Event.product_name.is_not(None),
            )
            .group_by(Event.product_slug)
        )
        names.update({slug: name for slug, name in carried})
    return names


def _the_last(window: timedelta) -> str:
    """A rule's window as its message says it: "the last hour", "the last 24 hours",
    "the last 7 days"."""
    hours = window // timedelta(hours=1)
    if hours == 1:
        return "the last hour"
    if hours > 24 and hours % 24 == 0:
        return f"the last {hours // 24} days"
    return f"the last {hours} hours"


def _named(slug: str, names: dict[str, str]) -> str:
    """The product's name with the slug ("Pan dulce (pan-dulce)"), else the slug alone."""
    return f"{names[slug]} ({slug})" if slug in names else slug


def _payment_errors(
    session: Session, tenant_id: int, zone: ZoneInfo, now: datetime
) -> list[Finding]:
    errors = session.scalar(
        select(func.count()).where(
            *in_window(tenant_id, now - PAYMENT_ERRORS_WINDOW, now), of_type(PAYMENT_ERROR)
        )
    )
    if not errors:
        return []
    message = f"Payment errors in {_the_last(PAYMENT_ERRORS_WINDOW)}: {errors}."
    return [("payment_errors", "critical", message)]


def _carts_abandoned(
    session: Session, tenant_id: int, zone: ZoneInfo, now: datetime
) -> list[Finding]:
    carts = carts_without_checkout(session, tenant_id=tenant_id, start=now - CARTS_WINDOW, end=now)
    if carts < CARTS_MIN_SESSIONS:
        return []
    message = (
        f"{carts} sessions added to the cart in {_the_last(CARTS_WINDOW)} "
        "without starting checkout."
    )
    return [("carts_abandoned", "warning", message)]


def _stuck_sessions(
    session: Session, tenant_id: int, zone: ZoneInfo, now: datetime
) -> list[Finding]:
    stuck = stuck_sessions(session, tenant_id=tenant_id, start=now - STUCK_WINDOW, end=now)
    if not stuck:
        return []
    message = (
        f"Sessions with more than {STUCK_EVENTS_ABOVE} events and no sale "
        f"in {_the_last(STUCK_WINDOW)}: {stuck}."
    )
    return [("stuck_sessions", "info", message)]


ALERT_RULES = (
    _high_abandonment,
    _popular_no_conversion,
    _payment_errors,
    _carts_abandoned,
    _stuck_sessions,
)


def smart_alerts(session: Session, *, tenant_id: int, zone: ZoneInfo, now: datetime) -> list[Alert]:
    """The five alert rules over rolling windows [now - span, now); ``all_clear`` if none fires.

    ``zone`` is the tenant's, whose local days key the rollups some rules start from.
    """
    report_settings(session)
    stamp = now.astimezone(UTC).isoformat()
    findings = [finding for rule in ALERT_RULES for finding in rule(session, tenant_id, zone, now)]
    findings = findings or [("all_clear", "info", "No issues detected.")]
    return [
        Alert(type=kind, severity=severity, message=message, timestamp=stamp)
        for kind, severity, message in findings
    ]
