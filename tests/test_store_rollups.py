"""The store reports read from the rollups give the raw events' figures."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from tenant_analytics.catalogue import FUNNEL_STEPS
from tenant_analytics.extensions import db
from tenant_analytics.models import SessionLastSeen, utcnow
from tenant_analytics.queries import store_dashboard, store_funnel
from tenant_analytics.rollups import rebuild_rollups
from tenant_analytics.timewindows import last_days

from .test_rollups import rollup_snapshot
from .test_store_reports import NOW, ev

# Quotes, a backslash and non-ASCII text travel through the JSON of PostgreSQL's write path.
SOURCES = ["google", "instagram", "direct", "", 'tienda "Ñandú" \\ 🐢', None, None]
PRODUCTS = [
    ("tee", "Tee"),
    ("tee", "Tee v2"),
    ("cap", "Cap"),
    ("cap", None),
    ("hat", 'Sombrero "Ñandú" \\ 🐢'),
]
TYPES = [
    *FUNNEL_STEPS,
    "checkout_started",
    "payment_info_entered",
    "order_completed",
    "payment_error",
    "address_error",
    "whatsapp_cart_click",
    "whatsapp_purchase",
]


def random_sessions(rng: random.Random, sessions: int, *, latest) -> list[tuple]:
    """Sessions over the last 12 days, some spanning midnight or several days,
    some changing source, a few events without a session."""
    events = []
    for number in range(sessions):
        session = f"s{number}" if rng.random() > 0.05 else None
        source = rng.choice(SOURCES)
        user = {"user_id": f"u{rng.randrange(8)}@example.com"} if rng.random() < 0.4 else {}
        at = latest - timedelta(minutes=rng.randrange(12 * 24 * 60))
        for _ in range(rng.randint(1, 7)):
            if rng.random() < 0.15:
                source = rng.choice(SOURCES)
            columns = {"source": source, **user}
            event_type = rng.choice(TYPES)
            if event_type in store_dashboard.PRODUCT_TYPES and rng.random() < 0.9:
                slug, name = rng.choice(PRODUCTS)
                columns |= {"product_slug": slug, "product_name": name}
            if event_type == "purchase":
                columns |= {"quantity": rng.choice([None, 1, 2]), "revenue": Decimal("9.50")}
            events.append(ev(event_type, min(at, latest), session, **columns))
            # Mostly minutes apart; now and then the next day or days later.
            at += timedelta(minutes=rng.choice([1, 5, 30, 600, 1440, 3000]))
    return events


def reports(tenant, zone, *, use_rollups):
    args = {"tenant_id": tenant.id, "zone": zone, "use_rollups": use_rollups}
    today = NOW.astimezone(zone).date()
    dashboards = [
        dict(store_dashboard.dashboard_stats(db.session, **args, now=NOW, mode=mode))
        for mode in store_dashboard.MODES
    ]
    funnels = [
        store_funnel.conversion_funnel(
            db.session, **args, start=today - timedelta(days=days), end=today, source=source
        )
        for days in (0, 3, 29)
        for source in (None, "google", "direct", "", "nowhere")
    ]
    return dashboards, funnels


@pytest.mark.parametrize("zone_name", ["UTC", "America/Tegucigalpa", "Asia/Kathmandu"])
def test_reports_from_rollups_match_the_raw_events(app, make_tenant, store_events, zone_name):
    rng, zone = random.Random(zone_name), ZoneInfo(zone_name)
    tenant, neighbour = make_tenant(timezone=zone_name), make_tenant(timezone="UTC")
    events = random_sessions(rng, 120, latest=NOW)
    rng.shuffle(events)  # batches arrive out of order: last-seen days move back and forth
    for start in range(0, len(events), 97):
        store_events(tenant, events[start : start + 97])
    store_events(neighbour, random_sessions(rng, 30, latest=NOW))

    days = last_days(zone, NOW, store_dashboard.DASHBOARD_DAYS)
    rolled = store_dashboard.rolled_up_sessions(
        db.session, tenant_id=tenant.id, days=days, types=("purchase",)
    )
    assert rolled is not None, "a window ending today is answered by the rollups"
    fast, raw = reports(tenant, zone, use_rollups=True), reports(tenant, zone, use_rollups=False)
    assert fast == raw
    dashboard = fast[0][0]
    # Data that exercises the rollups: several sources, products, multi-day sessions.
    assert len(dashboard["traffic_sources"]) >= 4 and dashboard["product_performance"]
    assert dashboard["session_stats"]["unique_sessions"] > 20


def test_windows_the_rollups_cannot_answer_fall_back_to_raw_events(app, make_tenant, store_events):
    zone = ZoneInfo("America/Tegucigalpa")
    tenant = make_tenant(timezone=zone.key)
    events = random_sessions(random.Random(7), 60, latest=NOW)
    # A session seen again tomorrow: its last-seen day no longer tells about this week.
    events.append(ev("purchase", NOW + timedelta(days=1), "s1", source="google"))
    store_events(tenant, events)

    days = last_days(zone, NOW, store_dashboard.DASHBOARD_DAYS)
    assert (
        store_dashboard.rolled_up_sessions(db.session, tenant_id=tenant.id, days=days, types=())
        is None
    )
    assert reports(tenant, zone, use_rollups=True) == reports(tenant, zone, use_rollups=False)
    # A funnel ending in the past: sessions seen since then make the histogram useless.
    past = NOW.astimezone(zone).date() - timedelta(days=3)
    args = {"tenant_id": tenant.id, "zone": zone, "start": past - timedelta(days=5), "end": past}
    assert store_funnel.conversion_funnel(db.session, **args) == store_funnel.conversion_funnel(
        db.session, **args, use_rollups=False
    )


def without_empty_counts(snapshot):
    """A histogram row moved down to 0 sessions counts for nothing; a rebuild has none."""
    histogram = snapshot["session_last_seen_counts"]
    return snapshot | {"session_last_seen_counts": [row for row in histogram if row[-1] != "0"]}


def test_rebuild_gives_the_incremental_store_rollups(app, make_tenant, store_events):
    tenant = make_tenant(timezone="Asia/Kathmandu")
    events = random_sessions(random.Random(5), 80, latest=NOW)
    random.Random(6).shuffle(events)
    store_events(tenant, events[:150])
    store_events(tenant, events[150:])
    incremental = without_empty_counts(rollup_snapshot(tenant.id))
    rebuild_rollups(db.session, tenant.id)
    db.session.commit()
    assert without_empty_counts(rollup_snapshot(tenant.id)) == incremental
    assert incremental["session_last_seen_counts"] and incremental["daily_product_counts"]


def test_sessions_made_for_one_event_are_counted_without_a_row_each(client, make_tenant):
    """Store events sent without a session get a new one each: counted in the histogram,
    no row per session. Landing events sent without one are no session at all."""
    tenant = make_tenant(timezone="America/Tegucigalpa")
    bodies = [
        {"tenant_id": tenant.id, "event_type": "page_view"},
        {"tenant_id": tenant.id, "event_type": "product_view", "source": "instagram"},
        {"tenant_id": tenant.id, "event_type": "page_view", "source": "instagram"},
        {"tenant_id": tenant.id, "event_type": "page_view", "session_id": "s1"},
        {"tenant_id": tenant.id, "event_type": "purchase", "session_id": "s1"},
        {"tenant_id": tenant.id, "event_type": "pageview", "source": "facebook"},
    ]
    zone = ZoneInfo(tenant.timezone)
    first_day = utcnow().astimezone(zone).date()  # the day before, should midnight come
    for body in bodies:
        assert client.post("/api/analytics/track", json=body).status_code == 201
    items = [{"event_type": "page_view"}] * 3 + [{"event_type": "click_call"}]
    batch = {"tenant_id": tenant.id, "events": items}
    assert client.post("/api/analytics/batch", json=batch).status_code in (200, 201)

    now = utcnow()
    stats = {
        use: store_dashboard.dashboard_stats(
            db.session, tenant_id=tenant.id, zone=zone, now=now, use_rollups=use
        )
        for use in (True, False)
    }
    assert stats[True] == stats[False]
    assert stats[True]["session_stats"]["unique_sessions"] == 7  # 6 made + s1
    assert {s["source"]: s["sessions"] for s in stats[True]["traffic_sources"]} == {
        "direct": 5,
        "instagram": 2,
    }
    today = now.astimezone(zone).date()
    funnel = store_funnel.conversion_funnel(
        db.session, tenant_id=tenant.id, zone=zone, start=first_day, end=today
    )
    assert [step["count"] for step in funnel["funnel"]][:1] == [6]  # 5 made, and s1
    rows = db.session.scalars(
        select(SessionLastSeen.session_id).where(SessionLastSeen.tenant_id == tenant.id)
    )
    assert set(rows) == {"s1"}
