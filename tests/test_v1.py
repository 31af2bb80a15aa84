"""The /api/v1 contract: status codes and bodies exactly as existing clients expect."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenant_analytics.api import v1
from tenant_analytics.database_errors import NOT_MIGRATED
from tenant_analytics.extensions import db, limiter
from tenant_analytics.group_commit import GroupCommitter
from tenant_analytics.models import Event, utcnow
from tenant_analytics.products import create_product
from tenant_analytics.queries.landing import landing_summary as raw_landing_summary
from tenant_analytics.rollups import rebuild_rollups


def events_of(tenant_id: int) -> list[Event]:
    db.session.expire_all()
    return list(
        db.session.scalars(select(Event).where(Event.tenant_id == tenant_id).order_by(Event.id))
    )


@pytest.fixture
def product_of(app):
    def _make(tenant, **fields):
        product = create_product(db.session, tenant.id, name=fields.pop("name", "Pan"), **fields)
        db.session.commit()
        return product

    return _make


# --- POST /api/v1/analytics/track ---------------------------------------------------------


@pytest.mark.parametrize("ref", ["public_id", "numeric"])
def test_track_by_public_id_or_numeric_string(client, make_tenant, product_of, ref):
    tenant = make_tenant()
    product = product_of(tenant)
    tenant_ref = str(tenant.public_id) if ref == "public_id" else str(tenant.id)
    response = client.post(
        "/api/v1/analytics/track",
        json={
            "tenant_id": tenant_ref,
            "type": "whatsapp_click",
            "product_id": product.id,
            "metadata": {"source": "catalog_page"},
        },
    )
    assert response.status_code == 202
    assert response.get_json() == {"success": True, "message": "Event accepted for processing"}
    (event,) = events_of(tenant.id)
    assert event.event_type == "whatsapp_click"
    assert event.product_id == product.id
    assert event.metadata_ == {"source": "catalog_page", "product_id": product.id}


def test_a_v1_purchase_of_a_product_is_that_products_sale_in_the_store_reports(
    client, make_tenant, make_user, auth_headers, product_of
):
    tenant = make_tenant()
    product = product_of(tenant, name="Pan dulce", slug="pan-dulce")
    unslugged = product_of(tenant, name="Rosquillas")
    for product_id in (product.id, product.id, unslugged.id):
        sale = {"tenant_id": str(tenant.id), "type": "purchase", "product_id": product_id}
        assert client.post("/api/v1/analytics/track", json=sale).status_code == 202
    events = events_of(tenant.id)
    assert [(e.product_slug, e.product_name) for e in events] == [
        ("pan-dulce", "Pan dulce"),
        ("pan-dulce", "Pan dulce"),
        (None, None),  # a product without a slug: no name to count it under either
    ]
    stats = client.get(
        f"/api/analytics/{tenant.id}/dashboard-stats",
        headers=auth_headers(make_user(tenant)),
    ).get_json()
    assert stats["total_sales"] == 3
    assert stats["top_products"] == [{"slug": "pan-dulce", "count": 2}]


def test_every_spelling_of_a_tenant_is_one_cache_entry(app, client, make_tenant):
    tenant = make_tenant()
    spellings = [str(tenant.id), f" {tenant.id}", f"0{tenant.id}", f"00{tenant.id} "]
    spellings += [str(tenant.public_id), str(tenant.public_id).upper(), f"{{{tenant.public_id}}}"]
    for ref in spellings:
        response = client.post("/api/v1/analytics/track", json={"tenant_id": ref, "type": "call"})
        assert response.status_code == 202, ref
    assert len(events_of(tenant.id)) == len(spellings)
    # By id and by public UUID: however clients pad or case them, the cache cannot grow.
    assert len(app.extensions["active_tenants"]) == 2


@pytest.mark.parametrize(
    "tenant_ref",
    [
        "00000000-0000-0000-0000-000000000000",
        "999999",
        "x",
        "\u00b2",  # superscript two: a "digit" to str.isdigit, not to int(), once a 500
        "1\u00b2",
        "\u0661",  # Arabic-Indic one: not the tenant with id 1
        "99999999999999999999",
    ],
)
def test_track_unknown_tenant_is_404(client, make_tenant, tenant_ref):
    make_tenant()
    response = client.post(
        "/api/v1/analytics/track", json={"tenant_id": tenant_ref, "type": "call"}
    )
    assert response.status_code == 404
    body = response.get_json()
    assert (body["success"], body["message"]) == (False, "Tenant not found or not available")


def test_track_inactive_tenant_is_404(client, make_tenant):
    tenant = make_tenant(active=False)
    response = client.post(
        "/api/v1/analytics/track", json={"tenant_id": str(tenant.public_id), "type": "call"}
    )
    assert response.status_code == 404
    assert events_of(tenant.id) == []


def test_track_rejects_another_tenants_product(client, make_tenant, product_of):
    mine, theirs = make_tenant(), make_tenant()
    foreign = product_of(theirs)
    for product_id in (foreign.id, 987_654):
        response = client.post(
            "/api/v1/analytics/track",
            json={
                "tenant_id": str(mine.id),
                "type": "cart_add",
                "product_id": product_id,
            },
        )
        assert response.status_code == 422
        assert "product_id" in response.get_json()["errors"]
    assert events_of(mine.id) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "call"}, "tenant_id"),
        ({"tenant_id": 5, "type": "call"}, "tenant_id"),
        ({"tenant_id": "5"}, "type"),
        ({"tenant_id": "5", "type": "view"}, "type"),
        ({"tenant_id": "5", "type": "call", "metadata": [1]}, "metadata"),
        ({"tenant_id": "5", "type": "call", "product_id": "abc"}, "product_id"),
    ],
)
def test_track_validation_errors(client, body, field):
    response = client.post("/api/v1/analytics/track", json=body)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


# --- POST /api/v1/analytics/conversion ----------------------------------------------------


def test_conversion_recorded_once_per_transaction(client, make_tenant):
    tenant = make_tenant(slug="mi-negocio")
    body = {"tenant_slug": "mi-negocio", "transaction_id": "txn_abc123", "value": 150.00}
    first = client.post("/api/v1/analytics/conversion", json=body)
    retry = client.post("/api/v1/analytics/conversion", json=body)
    assert first.status_code == retry.status_code == 200
    assert first.get_json() == retry.get_json() == {"status": "ok", "transaction_id": "txn_abc123"}
    (event,) = events_of(tenant.id)
    assert (event.event_type, event.revenue, event.currency) == (
        "purchase",
        Decimal("150.00"),
        "HNL",
    )


def test_a_beacon_forged_ahead_of_a_sale_does_not_hide_it(client, make_tenant):
    """The beacon is public and order numbers are easy to guess: a forged beacon of
    another amount claims nothing of the real sale, whose own repeats stay one sale."""
    tenant = make_tenant(slug="tienda-b")
    sale = {"tenant_slug": "tienda-b", "transaction_id": 1001}
    forged = [{**sale, "value": 0}, {**sale, "value": 500, "currency": "USD"}]
    real = [{**sale, "value": 500}, {**sale, "value": "500.00", "currency": "HNL"}]
    real += [{**sale, "value": 0}, {**sale, "value": -0.0}]  # the forged one's repeats
    for body in forged + real:
        answer = client.post("/api/v1/analytics/conversion", json=body)
        assert answer.get_json() == {"status": "ok", "transaction_id": 1001}
    sales = sorted((event.revenue, event.currency) for event in events_of(tenant.id))
    assert sales == [
        (Decimal("0.00"), "HNL"),
        (Decimal("500.00"), "HNL"),
        (Decimal("500.00"), "USD"),
    ]


def test_a_beacon_of_another_type_never_hides_a_sale(client, make_tenant):
    """A tap or a share sent with an order's number and amount (honestly, or forged) keeps
    keys of its own: the sale of that order is still recorded. A conversion and a purchase
    of one transaction are one sale, as the landing dashboard counts them together."""
    tenant = make_tenant(slug="tienda-t")
    order = {"tenant_slug": "tienda-t", "transaction_id": "order-78", "value": 300}
    long_order = {**order, "transaction_id": "9" * 128}  # the key still fits its column
    bodies = [
        {**order, "event": "whatsapp_click"},
        {**order, "event": "social_share"},
        {**long_order, "event": "whatsapp_click"},
        order,  # the sale: a purchase, the default
        {**order, "event": "conversion"},  # the same sale
        {**order, "event": "whatsapp_click"},  # repeats of each are one
        {**long_order, "event": "whatsapp_click"},
        order,
    ]
    for body in bodies:
        answer = client.post("/api/v1/analytics/conversion", json=body)
        assert answer.get_json() == {"status": "ok", "transaction_id": body["transaction_id"]}
    recorded = sorted(
        (e.event_type, e.metadata_["transaction_id"][:8]) for e in events_of(tenant.id)
    )
    assert recorded == [
        ("purchase", "order-78"),
        ("social_share", "order-78"),
        ("whatsapp_click", "99999999"),
        ("whatsapp_click", "order-78"),
    ]


def test_an_integer_transaction_id_is_a_sale_and_its_text_the_same_sale(client, make_tenant):
    make_tenant(slug="tienda-num")
    first = client.post(
        "/api/v1/analytics/conversion",
        json={"tenant_slug": "tienda-num", "transaction_id": 12345, "value": 10},
    )
    assert first.get_json() == {"status": "ok", "transaction_id": 12345}
    client.post(
        "/api/v1/analytics/conversion",
        json={"tenant_slug": "tienda-num", "transaction_id": "12345", "value": 10},
    )
    assert db.session.scalar(select(func.count()).select_from(Event)) == 1
    # 12345.0, as Python's json.dumps writes an order number held as a float: that sale
    again = client.post(
        "/api/v1/analytics/conversion",
        json={"tenant_slug": "tienda-num", "transaction_id": 12345.0, "value": 10},
    )
    assert again.get_json() == {"status": "ok", "transaction_id": 12345.0}
    assert db.session.scalar(select(func.count()).select_from(Event)) == 1
    other = client.post(
        "/api/v1/analytics/conversion",
        json={"tenant_slug": "tienda-num", "transaction_id": 777.0, "value": 10},
    )
    assert other.get_json() == {"status": "ok", "transaction_id": 777.0}
    stored = db.session.scalars(select(Event)).all()
    assert sorted(event.metadata_["transaction_id"] for event in stored) == ["12345", "777"]
    # No order number: a fraction; a float past 2**53 (it stands for several); and an
    # integer no float holds is echoed as sent, not a 500.
    for unusable in (777.5, 9007199254740994.0):
        body = {"tenant_slug": "tienda-num", "transaction_id": unusable, "value": 10}
        answer = client.post("/api/v1/analytics/conversion", json=body).get_json()
        assert answer == {"status": "skipped", "transaction_id": None}
    huge = {"tenant_slug": "tienda-num", "transaction_id": 10**400, "value": 10}
    answer = client.post("/api/v1/analytics/conversion", json=huge)
    assert (answer.status_code, answer.get_json()["status"]) == (200, "skipped")


def test_same_transaction_id_at_two_tenants_is_two_sales(client, make_tenant):
    first, second = make_tenant(slug="uno"), make_tenant(slug="dos", currency="USD")
    for slug in ("uno", "dos"):
        body = {"tenant_slug": slug, "transaction_id": "t-1", "value": "20.5"}
        assert client.post("/api/v1/analytics/conversion", json=body).get_json()["status"] == "ok"
    assert [e.currency for e in events_of(first.id) + events_of(second.id)] == ["HNL", "USD"]


def test_conversion_defaults_and_explicit_fields(client, make_tenant):
    tenant = make_tenant(slug="tienda")
    at = (utcnow() - timedelta(hours=2)).replace(microsecond=0)
    client.post("/api/v1/analytics/conversion", json={"tenant_slug": "tienda"})
    client.post(
        "/api/v1/analytics/conversion",
        json={
            "tenant_slug": "tienda",
            "transaction_id": "t9",
            "value": 99.99,
            "currency": "usd",
            "event": "conversion",
            "timestamp": at.isoformat(),
        },
    )
    default, explicit = events_of(tenant.id)
    assert (default.event_type, default.revenue, default.currency) == ("purchase", 0, "HNL")
    assert (explicit.event_type, explicit.revenue, explicit.currency) == (
        "conversion",
        Decimal("99.99"),
        "USD",
    )
    assert explicit.created_at == at


def test_conversion_with_null_value_and_event_is_a_sale_of_the_defaults(client, make_tenant):
    """A shop template's empty variable renders as null: the sale is kept, not skipped."""
    tenant = make_tenant(slug="tienda")
    body = {"tenant_slug": "tienda", "transaction_id": "t-null", "value": None, "event": None}
    response = client.post("/api/v1/analytics/conversion", json=body)
    assert response.get_json() == {"status": "ok", "transaction_id": "t-null"}
    (event,) = events_of(tenant.id)
    assert (event.event_type, event.revenue) == ("purchase", 0)


def test_conversion_value_computed_in_javascript_is_rounded_to_the_cent(client, make_tenant):
    tenant = make_tenant(slug="tienda")
    response = client.post(
        "/api/v1/analytics/conversion",
        json={"tenant_slug": "tienda", "transaction_id": "t-float", "value": 35.400000000000006},
    )
    assert response.get_json() == {"status": "ok", "transaction_id": "t-float"}
    (event,) = events_of(tenant.id)
    assert event.revenue == Decimal("35.40")


@pytest.mark.parametrize(
    ("value", "recorded"),
    [
        (-2.7755575615628914e-17, "0.00"),  # 0.3 - 0.1 - 0.2 in JavaScript: a free order
        (5.551115123125783e-17, "0.00"),
        (-0.004, "0.00"),
        ("999999999999.994", "999999999999.99"),  # rounds to the most a sale may be
    ],
)
def test_a_value_is_rounded_before_it_is_bounded(client, make_tenant, value, recorded):
    tenant = make_tenant(slug="tienda")
    body = {"tenant_slug": "tienda", "transaction_id": "t-noise", "value": value}
    answer = client.post("/api/v1/analytics/conversion", json=body)
    assert answer.get_json() == {"status": "ok", "transaction_id": "t-noise"}
    (event,) = events_of(tenant.id)
    assert str(event.revenue) == recorded


@pytest.mark.parametrize("value", [-0.005, "999999999999.995", 1e13])
def test_a_value_that_rounds_out_of_bounds_is_skipped(client, make_tenant, value):
    tenant = make_tenant(slug="tienda")
    body = {"tenant_slug": "tienda", "transaction_id": "t-out", "value": value}
    answer = client.post("/api/v1/analytics/conversion", json=body)
    assert answer.get_json() == {"status": "skipped", "transaction_id": "t-out"}
    assert events_of(tenant.id) == []


def test_blank_template_variables_are_the_defaults(client, make_tenant):
    """A template's empty variable rendered as text ("{{ order.currency }}" -> "") is
    the field left out, as its null is: the sale is kept."""
    tenant = make_tenant(slug="tienda", currency="USD")
    body = {"tenant_slug": "tienda", "transaction_id": "t-blank"}
    body |= {"value": "", "currency": " ", "event": ""}
    answer = client.post("/api/v1/analytics/conversion", json=body)
    assert answer.get_json() == {"status": "ok", "transaction_id": "t-blank"}
    (event,) = events_of(tenant.id)
    assert (event.event_type, event.revenue, event.currency) == ("purchase", 0, "USD")


def test_a_blank_order_number_is_a_sale_without_one(client, make_tenant):
    """ "{{ order.id }}" rendered empty: the sale is kept, as one sent without an id."""
    tenant = make_tenant(slug="tienda")
    for blank in ("", "  "):
        body = {"tenant_slug": "tienda", "transaction_id": blank, "value": 7}
        answer = client.post("/api/v1/analytics/conversion", json=body)
        assert answer.get_json() == {"status": "ok", "transaction_id": blank}
    assert [event.revenue for event in events_of(tenant.id)] == [Decimal("7.00")] * 2


def test_a_slug_in_capitals_names_its_tenant(client, make_tenant):
    tenant = make_tenant(slug="tienda-rosa")
    body = {"tenant_slug": "Tienda-Rosa", "transaction_id": "t-caps", "value": 3}
    answer = client.post("/api/v1/analytics/conversion", json=body)
    assert answer.get_json() == {"status": "ok", "transaction_id": "t-caps"}
    assert [event.revenue for event in events_of(tenant.id)] == [Decimal("3.00")]


@pytest.mark.parametrize("zone", ["America/Tegucigalpa", "Asia/Tokyo"])
def test_a_time_without_an_offset_is_the_tenants(client, make_tenant, beacon_clock, zone):
    """ISO 8601 without an offset, as a shop's template prints an order's time, is the
    tenant's local time; a date alone, the start of that local day (the sale on its
    day). Both were skipped: the sale lost."""
    tenant = make_tenant(slug="tienda", timezone=zone)
    local_now = beacon_clock.astimezone(ZoneInfo(zone))
    sent = {
        "t-naive": (local_now - timedelta(hours=2)).replace(tzinfo=None).isoformat(),
        "t-date": local_now.date().isoformat(),
    }
    for transaction_id, timestamp in sent.items():
        body = {"tenant_slug": "tienda", "transaction_id": transaction_id, "timestamp": timestamp}
        answer = client.post("/api/v1/analytics/conversion", json=body)
        assert answer.get_json() == {"status": "ok", "transaction_id": transaction_id}
    local_midnight = local_now.replace(hour=0, minute=0, second=0)
    assert [event.created_at for event in events_of(tenant.id)] == [
        beacon_clock - timedelta(hours=2),
        local_midnight.astimezone(UTC),
    ]


@pytest.mark.parametrize("group_commit", [True, False])
def test_a_sale_beacon_waits_out_a_rebuild_of_its_tenant(
    make_app, make_tenant, is_postgres, group_commit, monkeypatch
):
    """A rebuild (a zone change, forget-customer) holds the tenant's rollups until it
    commits: an event gets its 503 to send again, but a beacon has none to give, and its
    sale was lost. It tries again instead once the rebuild is over, having looked in the
    meantime without waiting on the lock (each wait held a pooled connection)."""
    if not is_postgres:
        pytest.skip("the rollup lock is PostgreSQL's")
    tries = []
    real_ingest = v1.ingest_from_request
    monkeypatch.setattr(
        v1, "ingest_from_request", lambda *args: tries.append(1) or real_ingest(*args)
    )
    app = make_app(GROUP_COMMIT=group_commit, WRITE_LOCK_TIMEOUT_SECONDS=0.3)
    with app.app_context():
        tenant = make_tenant(slug="tienda-r")
        rebuild = Session(db.engine)
        rebuild_rollups(rebuild, tenant.id)  # its lock held until the rollback
        threading.Timer(2.0, rebuild.rollback).start()
        beacon = {"tenant_slug": "tienda-r", "transaction_id": "during-rebuild", "value": 12}
        started = time.monotonic()
        answer = app.test_client().post("/api/v1/analytics/conversion", json=beacon)
        waited = time.monotonic() - started
        rebuild.close()
        assert answer.get_json() == {"status": "ok", "transaction_id": "during-rebuild"}
        assert waited > 1.5  # it did meet the rebuild
        assert len(tries) == 2  # once into the lock, once after it
        assert [event.revenue for event in events_of(tenant.id)] == [Decimal("12.00")]


def test_conversion_a_few_minutes_ahead_is_stored_as_now(client, make_tenant):
    tenant = make_tenant(slug="tienda")
    ahead = utcnow() + timedelta(minutes=5)
    response = client.post(
        "/api/v1/analytics/conversion",
        json={"tenant_slug": "tienda", "transaction_id": "t-ahead", "timestamp": ahead.isoformat()},
    )
    assert response.get_json()["status"] == "ok"
    (event,) = events_of(tenant.id)
    # Never on a day that has not begun for the tenant (rollups would count it there).
    assert event.created_at <= utcnow() < ahead


@pytest.fixture
def beacon_clock(monkeypatch):
    """The beacon's clock pinned to a whole second: the limits are measured from it."""
    now = utcnow().replace(microsecond=0)
    monkeypatch.setattr("tenant_analytics.event_builders.utcnow", lambda: now)
    return now


@pytest.mark.parametrize(
    "offset",
    [timedelta(minutes=11), -timedelta(days=31)],
    ids=["11-minutes-ahead", "31-days-old"],
)
def test_conversion_just_past_its_time_limits_is_skipped(client, make_tenant, beacon_clock, offset):
    """More than 10 minutes ahead or 30 days old: a bad clock or a replay, not a sale."""
    tenant = make_tenant(slug="tienda")
    at = beacon_clock + offset
    body = {"tenant_slug": "tienda", "transaction_id": "t-edge", "timestamp": at.isoformat()}
    response = client.post("/api/v1/analytics/conversion", json=body)
    assert response.get_json() == {"status": "skipped", "transaction_id": "t-edge"}
    assert events_of(tenant.id) == []


@pytest.mark.parametrize(
    ("offset", "stored_offset"),
    [
        # A clock a few minutes ahead is recorded as now, never on a day not yet begun.
        (timedelta(minutes=9), timedelta(0)),
        (-timedelta(days=29), -timedelta(days=29)),
    ],
    ids=["9-minutes-ahead", "29-days-old"],
)
def test_conversion_just_inside_its_time_limits_is_stored(
    client, make_tenant, beacon_clock, offset, stored_offset
):
    """Within the limits the sale is kept at its own time, or at now if that is ahead."""
    tenant = make_tenant(slug="tienda")
    at = beacon_clock + offset
    body = {"tenant_slug": "tienda", "transaction_id": "t-edge", "timestamp": at.isoformat()}
    response = client.post("/api/v1/analytics/conversion", json=body)
    assert response.get_json() == {"status": "ok", "transaction_id": "t-edge"}
    (event,) = events_of(tenant.id)
    assert event.created_at == beacon_clock + stored_offset


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"transaction_id": "t1"},
        {"tenant_slug": "nope", "transaction_id": "t1"},
        {"tenant_slug": "closed", "transaction_id": "t1"},
        {"tenant_slug": "CLOSED", "transaction_id": "t1"},
        {"tenant_slug": "shop", "transaction_id": "t1", "value": -5},
        {"tenant_slug": "shop", "transaction_id": "t1", "value": "lots"},
        {"tenant_slug": "shop", "transaction_id": "t1", "currency": "dollars"},
        {"tenant_slug": "shop", "transaction_id": "t1", "currency": "ZZZ"},  # not ISO 4217
        {"tenant_slug": "shop", "transaction_id": "t1", "event": "hack"},
        {"tenant_slug": "shop", "transaction_id": "t1", "timestamp": "yesterday"},
        {"tenant_slug": "shop", "transaction_id": "t1", "timestamp": "2099-01-01T00:00:00Z"},
        {"tenant_slug": "shop", "transaction_id": "t1", "timestamp": "2001-01-01T00:00:00Z"},
        # No such instant in UTC (year 0 or 10000): once a 500 from the always-200 beacon.
        {"tenant_slug": "shop", "transaction_id": "t1", "timestamp": "0001-01-01T00:00:00+14:00"},
        {"tenant_slug": "shop", "transaction_id": "t1", "timestamp": "9999-12-31T23:59:59-14:00"},
    ],
)
def test_conversion_skips_unusable_beacons(client, make_tenant, body):
    shop = make_tenant(slug="shop")
    make_tenant(slug="closed", active=False)
    response = client.post("/api/v1/analytics/conversion", json=body)
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "skipped",
        "transaction_id": body.get("transaction_id"),
    }
    assert events_of(shop.id) == []


def test_conversion_non_json_is_skipped(client):
    response = client.post(
        "/api/v1/analytics/conversion", data=b"\x00garbage", content_type="application/json"
    )
    assert response.status_code == 200
    assert response.get_json() == {"status": "skipped", "transaction_id": None}


def test_conversion_with_a_body_over_every_limit_is_skipped(client, make_tenant):
    make_tenant(slug="shop")
    body = b'{"tenant_slug": "shop", "note": "' + b"x" * (600 * 1024) + b'"}'
    response = client.post(
        "/api/v1/analytics/conversion", data=body, content_type="application/json"
    )
    assert response.status_code == 200  # a beacon never surfaces an error to the page
    assert response.get_json() == {"status": "skipped", "transaction_id": None}


def test_a_throttled_conversion_over_every_limit_is_skipped(make_app, make_tenant):
    app = make_app(API_RATE_LIMIT="1 per minute")
    client = app.test_client()
    with app.app_context():
        make_tenant(slug="shop")
    first = client.post("/api/v1/analytics/conversion", json={"tenant_slug": "shop"})
    huge = b'{"tenant_slug": "shop", "note": "' + b"x" * (600 * 1024) + b'"}'
    second = client.post("/api/v1/analytics/conversion", data=huge, content_type="application/json")
    assert first.status_code == second.status_code == 200
    assert second.get_json() == {"status": "skipped", "transaction_id": None}


def test_throttled_conversion_is_skipped_not_an_error(make_app, make_tenant):
    app = make_app(API_RATE_LIMIT="2 per minute")
    client = app.test_client()
    with app.app_context():
        make_tenant(slug="shop")
    answers = [
        client.post(
            "/api/v1/analytics/conversion", json={"tenant_slug": "shop", "transaction_id": f"t{n}"}
        )
        for n in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.get_json()["status"] for a in answers] == ["ok", "ok", "skipped"]


def test_api_group_is_per_client_address(make_app, make_tenant):
    app = make_app(API_RATE_LIMIT="2 per minute", TRUSTED_PROXY_COUNT=1)
    client = app.test_client()
    with app.app_context():
        tenant_ref = str(make_tenant().id)

    def send(ip):
        return client.post(
            "/api/v1/analytics/track",
            json={"tenant_id": tenant_ref, "type": "call"},
            headers={"X-Forwarded-For": ip},
        ).status_code

    assert [send("198.51.100.1") for _ in range(3)] == [202, 202, 429]
    assert send("198.51.100.2") == 202


def test_v1_track_refused_by_its_api_group_spends_nothing_of_the_tenants_bucket(
    make_app, make_tenant
):
    """Whatever the two limits' windows: an address over its own limit must not drain
    the tenant's bucket for every other visitor."""
    app = make_app(
        API_RATE_LIMIT="1 per hour", TRACK_RATE_LIMIT="5 per minute", TRUSTED_PROXY_COUNT=1
    )
    client = app.test_client()
    with app.app_context():
        tenant_ref = str(make_tenant().id)

    def send(ip):
        return client.post(
            "/api/v1/analytics/track",
            json={"tenant_id": tenant_ref, "type": "call"},
            headers={"X-Forwarded-For": ip},
        ).status_code

    assert [send("198.51.100.1") for _ in range(5)] == [202, 429, 429, 429, 429]
    assert [send(f"198.51.100.{n}") for n in range(2, 6)] == [202] * 4
    assert send("198.51.100.6") == 429  # the tenant's five, now spent


# --- POST /api/v1/interactions ------------------------------------------------------------


def test_interaction_recorded(client, make_tenant, product_of):
    tenant = make_tenant()
    product = product_of(tenant, name="Pan dulce", slug="pan-dulce")
    response = client.post(
        "/api/v1/interactions",
        json={
            "tenant_id": tenant.id,
            "type": "maps_click",
            "product_id": product.id,
            "metadata": {"from": "footer"},
        },
    )
    assert response.status_code == 201
    assert response.get_json() == {"status": "success"}
    (event,) = events_of(tenant.id)
    assert (event.event_type, event.product_id, event.metadata_) == (
        "maps_click",
        product.id,
        {"from": "footer"},
    )
    # The catalogue's slug and name, as /api/v1/analytics/track stores them.
    assert (event.product_slug, event.product_name) == ("pan-dulce", "Pan dulce")


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/v1/analytics/track", {"type": "call"}, 202),
        ("/api/v1/interactions", {"type": "call_click"}, 201),
    ],
)
def test_v1_metadata_as_phps_empty_array_is_no_metadata(client, make_tenant, path, body, status):
    """PHP's json_encode writes an empty map as []: the v1 clients' "no metadata"."""
    tenant = make_tenant()
    ref = str(tenant.id) if path.endswith("track") else tenant.id
    for metadata in ([], {}):
        response = client.post(path, json={**body, "tenant_id": ref, "metadata": metadata})
        assert response.status_code == status, response.get_json()
    as_array, as_object = events_of(tenant.id)
    assert as_array.metadata_ == as_object.metadata_


def test_interaction_never_links_another_tenants_product(client, make_tenant, product_of):
    mine, theirs = make_tenant(), make_tenant()
    foreign = product_of(theirs, name="Secreto", slug="secreto")
    client.post(
        "/api/v1/interactions",
        json={"tenant_id": mine.id, "type": "view", "product_id": foreign.id},
    )
    (event,) = events_of(mine.id)
    assert (event.product_id, event.product_slug, event.product_name) == (None, None, None)


@pytest.mark.parametrize("which", ["unknown", "inactive"])
def test_interaction_silently_accepts_unknown_tenants(make_app, make_tenant, which):
    app = make_app(INTERACTION_MIN_SECONDS=0.05)
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant(active=False).id if which == "inactive" else 424_242
    started = time.monotonic()
    response = client.post("/api/v1/interactions", json={"tenant_id": tenant_id, "type": "view"})
    elapsed = time.monotonic() - started
    assert response.status_code == 202
    assert response.get_json() == {"status": "accepted"}
    assert elapsed >= 0.05  # the same floor as a recorded interaction
    with app.app_context():
        assert events_of(tenant_id) == []


def test_a_recorded_interaction_waits_for_the_same_floor(make_app, make_tenant):
    """A known tenant's 201 is held to the floor as an unknown one's 202 is: answering it
    sooner would tell by its timing which tenants exist."""
    app = make_app(INTERACTION_MIN_SECONDS=0.2)  # far longer than a write takes
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    started = time.monotonic()
    response = client.post("/api/v1/interactions", json={"tenant_id": tenant_id, "type": "view"})
    elapsed = time.monotonic() - started
    assert response.status_code == 201
    assert elapsed >= 0.2
    with app.app_context():
        assert len(events_of(tenant_id)) == 1


@pytest.mark.parametrize("tenant_id", [0, -1, 2**63, 10**30])
def test_interaction_naming_an_impossible_tenant_id_is_silently_accepted(client, tenant_id):
    # The contract: an invalid tenant id is a 202 like an unknown one, never a 422.
    response = client.post("/api/v1/interactions", json={"tenant_id": tenant_id, "type": "view"})
    assert response.status_code == 202
    assert response.get_json() == {"status": "accepted"}


def test_interaction_headers_do_not_tell_which_tenants_exist(client, make_tenant):
    known = make_tenant().id
    answers = [
        client.post("/api/v1/interactions", json={"tenant_id": tenant_id, "type": "view"})
        for tenant_id in (known, 424_242)
    ]
    assert [answer.status_code for answer in answers] == [201, 202]  # the contract's own tell
    # A known tenant's bucket and an unknown one's (per address) would differ in value.
    for answer in answers:
        assert not any(name.startswith("X-RateLimit") for name, _value in answer.headers)


def test_interaction_processing_error_is_202(client, make_tenant, monkeypatch, caplog):
    tenant = make_tenant()

    def broken_write(*_args, **_kwargs):
        raise RuntimeError("disk on fire")

    # Both ways to the database: through the committer, and written in the request.
    monkeypatch.setattr(GroupCommitter, "_write", broken_write)
    monkeypatch.setattr("tenant_analytics.ingestion.write_jobs", broken_write)
    response = client.post("/api/v1/interactions", json={"tenant_id": tenant.id, "type": "view"})
    assert response.status_code == 202
    assert response.get_json() == {"status": "accepted"}
    # Not an outage but a fault: logged with its traceback.
    (record,) = [r for r in caplog.records if r.getMessage() == "interaction not recorded"]
    assert record.exc_info and "disk on fire" in str(record.exc_info[1])


def test_interaction_and_beacon_with_the_database_away_say_why_in_one_line(app, make_app, caplog):
    # (``app`` first: the fixtures' teardown empties the tables through the first app made.)
    unreachable = make_app(SQLALCHEMY_DATABASE_URI="postgresql://nobody@127.0.0.1:1/none")
    client = unreachable.test_client()
    with caplog.at_level(logging.WARNING):
        response = client.post("/api/v1/interactions", json={"tenant_id": 1, "type": "view"})
        beacon = client.post("/api/v1/analytics/conversion", json={"tenant_slug": "x", "value": 1})
    assert response.status_code == 202  # a processing error, by the contract
    assert response.get_json() == {"status": "accepted"}
    assert beacon.get_json() == {"status": "skipped", "transaction_id": None}
    told = [(r.getMessage(), r.exc_info) for r in caplog.records if r.name.endswith(".v1")]
    # One line each, naming the cause; not a traceback per request through an outage.
    away = "database unavailable at 127.0.0.1:1/none"
    assert [(message.split(": ")[:3], exc_info) for message, exc_info in told] == [
        (["interaction not recorded", away, "OperationalError"], None),
        (["conversion beacon skipped", away, "OperationalError"], None),
    ]
    # And once a minute: not a line per request all through an outage.
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            client.post("/api/v1/interactions", json={"tenant_id": 1, "type": "view"})
    assert len([r for r in caplog.records if r.name.endswith(".v1")]) == 2


def test_interaction_and_beacon_on_an_unmigrated_database_say_so_in_one_line(
    app, make_app, scratch_database_url, caplog
):
    unmigrated = make_app(SQLALCHEMY_DATABASE_URI=scratch_database_url)
    client = unmigrated.test_client()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            client.post("/api/v1/interactions", json={"tenant_id": 1, "type": "view"})
            client.post("/api/v1/analytics/conversion", json={"tenant_slug": "x", "value": 1})
    told = [(r.getMessage(), r.exc_info) for r in caplog.records if r.name.endswith(".v1")]
    migrate = NOT_MIGRATED
    assert told == [
        (f"interaction not recorded: {migrate}", None),
        (f"conversion beacon skipped: {migrate}", None),
    ]
    with unmigrated.app_context():
        db.engine.dispose()


@pytest.mark.parametrize(
    "body",
    [
        {"type": "view"},
        {"tenant_id": 1},
        {"tenant_id": 1, "type": "call"},
        {"tenant_id": "1", "type": "view"},
        {"tenant_id": 1.0, "type": "view"},
        {"tenant_id": True, "type": "view"},
    ],
)
def test_interaction_validation_errors(client, body):
    response = client.post("/api/v1/interactions", json=body)
    assert response.status_code == 422
    assert response.get_json()["success"] is False


def test_interaction_flood_of_one_tenant_spares_another(make_app, make_tenant):
    app = make_app(TRACK_RATE_LIMIT="3 per minute")
    client = app.test_client()
    with app.app_context():
        flooded, quiet = make_tenant().id, make_tenant().id

    def send(tenant_id):
        return client.post(
            "/api/v1/interactions", json={"tenant_id": tenant_id, "type": "view"}
        ).status_code

    assert [send(flooded) for _ in range(4)] == [201, 201, 201, 429]
    assert send(quiet) == 201
    # The landing tracker draws on the same per-tenant bucket.
    landing = client.post(
        "/api/analytics/track", json={"tenant_id": flooded, "event_type": "pageview"}
    )
    assert landing.status_code == 429


@pytest.mark.parametrize("key_prefix", [True, False])
def test_v1_track_draws_on_the_tenants_bucket_as_well_as_the_api_group(
    make_app, make_tenant, monkeypatch, key_prefix
):
    """Its contract limits it per client address ("api"); it writes a tenant's events
    too, so many addresses together get no more of a tenant than /track would give.
    (With no key prefix too, which flask-limiter leaves out of its keys: the bucket was
    another, twice the allowance.)"""
    app = make_app(TRACK_RATE_LIMIT="3 per minute", API_RATE_LIMIT="100 per minute")
    if not key_prefix:  # (after make_app: the limiter takes the config's prefix when it has none)
        monkeypatch.setattr(limiter, "_key_prefix", "")
    client = app.test_client()
    with app.app_context():
        flooded, quiet = make_tenant().id, make_tenant().id

    def send(tenant_id, path="/api/v1/analytics/track"):
        body = {"tenant_id": str(tenant_id), "type": "call"}
        if path == "/api/analytics/track":
            body = {"tenant_id": tenant_id, "event_type": "pageview"}
        return client.post(path, json=body).status_code

    assert send(flooded, "/api/analytics/track") == 201
    assert [send(flooded) for _ in range(3)] == [202, 202, 429]
    assert send(quiet) == 202
    assert len(events_of(flooded)) == 3


# --- one catalogue, one dashboard ---------------------------------------------------------


def test_dashboard_counts_taps_from_every_endpoint(client, make_tenant, make_user, auth_headers):
    tenant = make_tenant(slug="panaderia")
    client.post(
        "/api/analytics/track", json={"tenant_id": tenant.id, "event_type": "click_whatsapp"}
    )
    client.post(
        "/api/v1/analytics/track",
        json={"tenant_id": str(tenant.public_id), "type": "whatsapp_click"},
    )
    client.post("/api/v1/interactions", json={"tenant_id": tenant.id, "type": "whatsapp_click"})
    client.post("/api/v1/interactions", json={"tenant_id": tenant.id, "type": "maps_click"})
    client.post(
        "/api/v1/analytics/track", json={"tenant_id": str(tenant.id), "type": "location_view"}
    )
    client.post(
        "/api/v1/analytics/conversion",
        json={"tenant_slug": "panaderia", "transaction_id": "a", "value": 100},
    )
    client.post(
        "/api/v1/analytics/conversion",
        json={
            "tenant_slug": "panaderia",
            "transaction_id": "b",
            "value": 50,
            "currency": "USD",
            "event": "conversion",
        },
    )
    data = client.get(
        f"/api/analytics/{tenant.id}", headers=auth_headers(make_user(tenant))
    ).get_json()["data"]
    assert data["whatsapp_clicks"] == 3
    assert data["maps_clicks"] == 2
    assert data["conversions"] == 2
    assert data["revenue"] == {"HNL": 100.0, "USD": 50.0}
    for field in (
        "visitors_today",
        "visitors_week",
        "call_clicks",
        "currency_toggles",
        "qr_scans",
        "avg_time_on_page",
        "last_7_days",
    ):
        assert field in data


def test_dashboard_counts_every_name_of_a_view_a_whatsapp_tap_and_a_call(
    client, make_tenant, make_user, auth_headers
):
    """The catalogue's table: each name, through the endpoint that takes it, counts as
    its kind. Each name is sent a different number of times, so a name left out of its
    kind shows in the total."""
    tenant = make_tenant()
    landing, v1_track, interactions = (
        "/api/analytics/track",
        "/api/v1/analytics/track",
        "/api/v1/interactions",
    )
    sends = [
        (landing, {"event_type": "pageview"}, 1),
        (interactions, {"type": "view"}, 2),
        (landing, {"event_type": "page_view"}, 4),
        (landing, {"event_type": "click_whatsapp"}, 1),
        (v1_track, {"type": "whatsapp_click"}, 2),
        (interactions, {"type": "whatsapp_click"}, 4),
        (landing, {"event_type": "whatsapp_cart_click"}, 8),
        (landing, {"event_type": "click_call"}, 1),
        (v1_track, {"type": "call"}, 2),
        (interactions, {"type": "call_click"}, 4),
    ]
    recorded = {landing: 201, v1_track: 202, interactions: 201}  # each endpoint's "stored"
    for path, body, times in sends:
        tenant_ref = str(tenant.id) if path == v1_track else tenant.id
        for _ in range(times):
            response = client.post(path, json={**body, "tenant_id": tenant_ref})
            assert response.status_code == recorded[path], (path, body, response.get_json())
    assert len(events_of(tenant.id)) == 29  # every one stored
    data = client.get(
        f"/api/analytics/{tenant.id}", headers=auth_headers(make_user(tenant))
    ).get_json()["data"]
    counted = (data["page_views"], data["whatsapp_clicks"], data["call_clicks"])
    assert counted == (7, 15, 7)  # 1 + 2 + 4 views, 1 + 2 + 4 + 8 taps, 1 + 2 + 4 calls
    # The raw events give the same figures as the rollups the dashboard reads.
    raw = raw_landing_summary(db.session, tenant_id=tenant.id, zone=ZoneInfo("UTC"), now=utcnow())
    assert (raw.page_views, raw.whatsapp_clicks, raw.call_clicks) == (7, 15, 7)
