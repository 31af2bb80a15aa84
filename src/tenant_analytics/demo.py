"""Demo data: a bakery with a week of plausible landing-page traffic and online-shop sessions."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .auth import check_password, create_user
from .catalogue import (
    CLICK_CALL,
    CLICK_TOGGLE_CURRENCY,
    CLICK_WHATSAPP,
    FUNNEL_STEPS,
    PAGEVIEW,
    PRODUCT_CLICK,
    PURCHASE,
    QR_SCAN,
    TIME_ON_PAGE,
)
from .event_builders import track_event
from .ingestion import ClientInfo, NewEvent, enrich
from .models import Tenant, User, utcnow
from .products import create_product
from .schemas import TrackedEvent
from .storage import insert_events

DEMO_SLUG = "demo-bakery"
DEMO_EMAIL = "owner@demo.example"
DEMO_PASSWORD = "demo-password"
DEMO_HASH_KEY = "demo-data"  # demo visitors are synthetic; their hashes need no secret
NO_WINDOW = timedelta(0)  # demo rows skip the idempotency keys a live request claims

USER_AGENTS = [
    "Mozilla/5.0 (Linux; Android 14) Chrome/126.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0 Safari/537.36",
]
REFERRERS = [
    None,
    "https://www.instagram.com/",
    "https://www.facebook.com/",
    "https://www.google.com/",
]


def _demo_events(tenant: Tenant, rng: random.Random) -> list[dict[str, Any]]:
    now = utcnow()
    rows = []
    for day in range(7):
        for _visit in range(rng.randint(12, 30)):
            at = now - timedelta(days=day, seconds=rng.randint(0, 20 * 3600))
            client = ClientInfo(
                ip=f"198.51.100.{rng.randint(1, 250)}",
                user_agent=rng.choice(USER_AGENTS),
                referrer=rng.choice(REFERRERS),
            )
            visit = [
                NewEvent(PAGEVIEW),
                NewEvent(TIME_ON_PAGE, {"seconds": rng.randint(5, 400)}),
            ]
            if rng.random() < 0.35:
                visit.append(NewEvent(CLICK_WHATSAPP, {"button_location": "hero"}))
            if rng.random() < 0.1:
                visit.append(NewEvent(CLICK_CALL))
            if rng.random() < 0.2:
                visit.append(NewEvent(CLICK_TOGGLE_CURRENCY, {"to": "USD"}))
            if rng.random() < 0.15:
                visit.insert(0, NewEvent(QR_SCAN, {"campaign": "mostrador"}))
            if rng.random() < 0.4:
                visit.append(NewEvent(PRODUCT_CLICK, {"product_id": rng.randint(1, 6)}))
            for offset, event in enumerate(visit):
                event.created_at = at + timedelta(seconds=offset * 20)
                rows.append(enrich(tenant, event, client, hash_key=DEMO_HASH_KEY, now=now))
    return rows


PRODUCTS = [
    ("pan-dulce", "Pan dulce", "12.50"),
    ("torta-chocolate", "Torta de chocolate", "320.00"),
    ("semita", "Semita", "15.00"),
    ("rosquillas", "Rosquillas", "45.00"),
]


def _demo_store_events(tenant: Tenant, rng: random.Random) -> list[dict[str, Any]]:
    """Online-shop sessions walking down the funnel, some buyers signed in for RFM.

    Each event is the body the store's snippet would post, through the same validation
    and defaults (revenue = price x quantity, the tenant's currency) as /track.
    """
    now = utcnow()
    rows = []
    for number in range(120):
        slug, name, price = rng.choice(PRODUCTS)
        start = now - timedelta(days=rng.randint(0, 6), seconds=rng.randint(0, 20 * 3600))
        client = ClientInfo(
            ip=f"203.0.113.{rng.randint(1, 250)}", user_agent=rng.choice(USER_AGENTS), referrer=None
        )
        depth = rng.choice([1, 2, 2, 3, 3, 4, 5, 5])
        posted = {
            "session_id": f"demo-session-{number}",
            "product_slug": slug,
            "product_name": name,
            "source": rng.choice([None, "instagram", "google"]),
            "user_id": f"cliente-{rng.randint(1, 15)}",  # an opaque number, as Privacy asks
        }
        for step, event_type in enumerate(FUNNEL_STEPS[:depth]):
            body = {**posted, "event_type": event_type}
            if event_type == PURCHASE:
                body.update(price=price, metadata={"quantity": rng.randint(1, 3)})
            event = track_event(TrackedEvent.model_validate(body), tenant, dedupe_window=NO_WINDOW)
            event.created_at = start + timedelta(minutes=step * 2)
            rows.append(enrich(tenant, event, client, hash_key=DEMO_HASH_KEY, now=now))
    return rows


class DemoUnavailable(Exception):
    """The demo's slug or email is taken by something the demo did not make."""


def is_demo_owner(user: User) -> bool:
    """The demo's owner, whose password the README publishes."""
    return user.email.casefold() == DEMO_EMAIL


def load_demo(session: Session, base_url: str = "http://127.0.0.1:5000") -> str:
    """Create the demo tenant, owner, products and events unless present; return how to log in.

    ``base_url`` is where the server will answer, for the printed curl lines and the
    demo page its QR code leads to. The caller commits.
    """
    tenant = session.scalar(select(Tenant).where(Tenant.slug == DEMO_SLUG))
    owner = session.scalar(select(User).where(User.email == DEMO_EMAIL))
    if tenant is None:
        if owner is not None:
            raise DemoUnavailable(f"a user {DEMO_EMAIL} exists that the demo did not make")
        tenant = Tenant(
            name="Panadería La Demo",
            slug=DEMO_SLUG,
            timezone="America/Tegucigalpa",
            landing_url=f"{base_url}/demo/",  # api/demo_site.py, the snippet on it
        )
        session.add(tenant)
        session.flush()
        for slug, name, price in PRODUCTS:
            create_product(session, tenant.id, name=name, slug=slug, price=Decimal(price))
        rng = random.Random(7)
        insert_events(session, _demo_events(tenant, rng) + _demo_store_events(tenant, rng))
        # In the tenant's transaction: the known login only ever owns the demo's own tenant.
        create_user(session, DEMO_EMAIL, DEMO_PASSWORD, tenants=[tenant], is_admin=False)
    elif owner is None or tenant not in owner.tenants:
        raise DemoUnavailable(
            f"a tenant {DEMO_SLUG!r} exists that the demo did not make; "
            "its known login is not given to it"
        )
    else:  # served elsewhere this time (make run PORT=8080): its QR code follows
        tenant.landing_url = f"{base_url}/demo/"
    # The owner may have changed the known password since (POST /api/auth/password).
    password = DEMO_PASSWORD if owner is None or check_password(owner, DEMO_PASSWORD) else None
    login = (
        f"Log in as {DEMO_EMAIL} / {password}:"
        if password
        else f"Log in as {DEMO_EMAIL} with the password you gave it (no longer {DEMO_PASSWORD}):"
    )
    return (
        f"Demo tenant {tenant.slug!r} has id {tenant.id}.\n"
        f"{login}\n"
        f"  TOKEN=$(curl -s -X POST {base_url}/api/auth/login "
        "-H 'Content-Type: application/json' "
        f'-d \'{{"email": "{DEMO_EMAIL}", "password": "{password or "YOUR-PASSWORD"}"}}\' '
        "| python3 -c 'import sys, json; print(json.load(sys.stdin)[\"access_token\"])')\n"
        f'  curl -s -H "Authorization: Bearer $TOKEN" {base_url}/api/analytics/{tenant.id}\n'
        f"Its landing page, with the snippet on it: {base_url}/demo/ "
        f"(its QR code leads there: {base_url}/q/{tenant.slug})"
    )
