"""Store events on POST /api/analytics/track: exact prices, sessions, idempotency."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from tenant_analytics.catalogue import STORE_TYPES
from tenant_analytics.extensions import db
from tenant_analytics.models import DedupeKey, Event, utcnow


def events_of(tenant_id: int) -> list[Event]:
    db.session.expire_all()
    return list(
        db.session.scalars(select(Event).where(Event.tenant_id == tenant_id).order_by(Event.id))
    )


def track(client, **body):
    return client.post("/api/analytics/track", json=body)


def test_store_fields_are_stored_exactly(client, make_tenant):
    tenant = make_tenant()
    response = track(
        client,
        tenant_id=tenant.id,
        event_type="purchase",
        session_id="abc-123",
        product_slug="camiseta-oversize-negra",
        product_name="Camiseta Oversize Negra",
        price="79900.10",
        metadata={"quantity": 3},
        source="instagram",
        user_id="c@example.com",
        idempotency_key=str(uuid.uuid4()),
    )
    assert response.status_code == 201
    assert response.get_json() == {"success": True, "status": "ok"}
    (event,) = events_of(tenant.id)
    assert event.price == Decimal("79900.10")
    assert event.quantity == 3
    assert event.revenue == Decimal("239700.30")  # exact: 3 x 79900.10, no float drift
    assert (event.currency, event.session_id, event.source, event.user_id) == (
        "HNL",
        "abc-123",
        "instagram",
        "c@example.com",
    )
    assert (event.product_slug, event.product_name) == (
        "camiseta-oversize-negra",
        "Camiseta Oversize Negra",
    )


def test_a_sale_in_another_currency_is_reported_in_it(client, make_tenant, make_user, auth_headers):
    """A shop that shows lempiras and dollars: a sale paid in dollars was stored as
    lempiras (the tenant's currency, the only one /track knew), adding 6.10 to them."""
    tenant = make_tenant()
    sales = [("USD", "6.10", 2), (None, "150.00", 1), ("hnl", "10.00", 1)]
    for currency, price, quantity in sales:
        sale = {"price": price, "metadata": {"quantity": quantity}}
        if currency:
            sale["currency"] = currency
        assert track(client, tenant_id=tenant.id, event_type="purchase", **sale).status_code == 201
    view = {"price": "3.05", "currency": "USD", "product_slug": "pan"}
    assert track(client, tenant_id=tenant.id, event_type="product_view", **view).status_code == 201
    assert [(e.event_type, e.currency, e.revenue) for e in events_of(tenant.id)] == [
        ("purchase", "USD", Decimal("12.20")),
        ("purchase", "HNL", Decimal("150.00")),
        ("purchase", "HNL", Decimal("10.00")),
        ("product_view", "USD", None),  # the price's currency, no revenue
    ]
    headers = auth_headers(make_user(tenant))
    stats = client.get(f"/api/analytics/{tenant.id}/dashboard-stats", headers=headers).get_json()
    assert stats["revenue_by_currency"] == {"HNL": 160.0, "USD": 12.2}
    assert (stats["total_revenue"], stats["total_sales"]) == (160.0, 3)
    landing = client.get(f"/api/analytics/{tenant.id}", headers=headers).get_json()["data"]
    assert landing["revenue"] == {"HNL": 160.0, "USD": 12.2}


def test_a_price_sent_without_a_currency_is_in_the_tenants(client, make_tenant):
    """Whatever the event's type (only a purchase's price had a currency; an add_to_cart's
    12.50, the README's example, was stored without one)."""
    tenant = make_tenant(currency="HNL")
    cart = {"price": "12.50", "product_slug": "pan"}
    assert track(client, tenant_id=tenant.id, event_type="add_to_cart", **cart).status_code == 201
    assert track(client, tenant_id=tenant.id, event_type="add_to_cart").status_code == 201
    assert [(e.price, e.currency, e.revenue) for e in events_of(tenant.id)] == [
        (Decimal("12.50"), "HNL", None),
        (None, None, None),  # no price, no currency
    ]


@pytest.mark.parametrize("event_type", STORE_TYPES)
def test_every_store_type_is_accepted(client, make_tenant, event_type):
    tenant = make_tenant()
    assert track(client, tenant_id=tenant.id, event_type=event_type).status_code == 201


def test_missing_session_gets_a_uuid(client, make_tenant):
    tenant = make_tenant()
    track(client, tenant_id=tenant.id, event_type="page_view")
    track(client, tenant_id=tenant.id, event_type="page_view")
    first, second = events_of(tenant.id)  # no session: never deduplicated
    assert uuid.UUID(first.session_id) != uuid.UUID(second.session_id)


def test_landing_events_are_not_store_sessions(client, make_tenant, make_user, auth_headers):
    """The landing snippet sends no session: its taps are not each a store visit."""
    tenant = make_tenant()
    for event_type in ("pageview", "click_whatsapp", "qr_scan", "product_click"):
        assert track(client, tenant_id=tenant.id, event_type=event_type).status_code == 201
    assert track(client, tenant_id=tenant.id, event_type="page_view").status_code == 201
    stored = {event.event_type: event.session_id for event in events_of(tenant.id)}
    assert [t for t, session in stored.items() if session is not None] == ["page_view"]

    headers = auth_headers(make_user(tenant))
    url = f"/api/analytics/{tenant.id}/dashboard-stats"
    for query in ("", "?mode=unique"):
        stats = client.get(url + query, headers=headers).get_json()
        assert stats["session_stats"]["unique_sessions"] == 1  # the store's page view
        assert stats["traffic_sources"] == [{"source": "direct", "sessions": 1}]
    landing = client.get(f"/api/analytics/{tenant.id}", headers=headers).get_json()["data"]
    assert (landing["whatsapp_clicks"], landing["qr_scans"]) == (1, 1)  # still counted


def test_an_empty_source_is_direct(client, make_tenant, make_user, auth_headers):
    tenant = make_tenant()
    for number, source in enumerate(["", "   ", None, "direct", "instagram"]):
        body = {"tenant_id": tenant.id, "event_type": "page_view", "session_id": f"s{number}"}
        assert (
            track(client, **body, **({} if source is None else {"source": source})).status_code
            == 201
        )
    assert sorted(str(event.source) for event in events_of(tenant.id)) == [
        "None",
        "None",
        "None",
        "direct",
        "instagram",
    ]
    headers = auth_headers(make_user(tenant))
    stats = client.get(f"/api/analytics/{tenant.id}/dashboard-stats", headers=headers).get_json()
    assert stats["traffic_sources"] == [
        {"source": "direct", "sessions": 4},
        {"source": "instagram", "sessions": 1},
    ]
    funnel = client.get(
        f"/api/analytics/{tenant.id}/funnel?source=direct", headers=headers
    ).get_json()
    assert funnel["funnel"][0] == {"step": "page_view", "count": 4}


def test_error_message_is_kept_but_cut(client, make_tenant):
    tenant = make_tenant()
    track(client, tenant_id=tenant.id, event_type="payment_error", error_message="x" * 5000)
    (event,) = events_of(tenant.id)
    assert len(event.error_message) == 1000


def test_whole_quantity_written_with_a_decimal_point_is_that_quantity(client, make_tenant):
    tenant = make_tenant()
    response = track(
        client,
        tenant_id=tenant.id,
        event_type="purchase",
        price="10.50",
        metadata={"quantity": 2.0, "note": "from a Python client"},
    )
    assert response.status_code == 201
    (event,) = events_of(tenant.id)
    assert (event.quantity, event.revenue) == (2, Decimal("21.00"))
    assert event.metadata_ == {"quantity": 2, "note": "from a Python client"}
    assert type(event.metadata_["quantity"]) is int


def test_a_price_written_with_zeros_past_the_cents_is_that_price(client, make_tenant):
    """A dinar shop writes 1.250, as the JSON number 1.250 is taken: the zeros add nothing."""
    tenant = make_tenant(currency="KWD")
    for price in ("1.250", "7.5000"):
        response = track(client, tenant_id=tenant.id, event_type="purchase", price=price)
        assert response.status_code == 201, response.get_json()
    assert sorted(event.revenue for event in events_of(tenant.id)) == [
        Decimal("1.25"),
        Decimal("7.50"),
    ]


def test_blank_store_fields_are_left_out(client, make_tenant):
    """A guest's sale from a template whose variables are empty ("{{ customer.id }}"):
    kept, as if the fields were not sent, rather than refused."""
    tenant = make_tenant()
    blanks = {"user_id": "", "session_id": " ", "product_slug": "", "product_name": "  "}
    response = track(client, tenant_id=tenant.id, event_type="purchase", price="5", **blanks)
    assert response.status_code == 201, response.get_json()
    (event,) = events_of(tenant.id)
    assert (event.user_id, event.product_slug, event.product_name) == (None, None, None)
    assert uuid.UUID(event.session_id).version == 4  # generated, as for one not sent


def test_numbers_of_a_shop_template_sent_as_json_or_as_text(client, make_tenant):
    """A customer number as a JSON integer is that customer; a quantity as its digits
    ("{{ qty }}") is that quantity, as a price's digits are taken."""
    tenant = make_tenant()
    response = track(
        client,
        tenant_id=tenant.id,
        event_type="purchase",
        user_id=1042,
        price="10.50",
        metadata={"quantity": "3"},
    )
    assert response.status_code == 201, response.get_json()
    (event,) = events_of(tenant.id)
    assert (event.user_id, event.quantity, event.revenue) == ("1042", 3, Decimal("31.50"))
    assert event.metadata_ == {"quantity": 3}


@pytest.mark.parametrize("quantity", ["2 kg", 0, 10**7])
def test_a_landing_events_quantity_is_its_own_metadata(client, make_tenant, quantity):
    """metadata.quantity is a store field; a landing page's metadata may use the word."""
    tenant = make_tenant()
    metadata = {"product_id": 7, "quantity": quantity}
    response = track(client, tenant_id=tenant.id, event_type="product_click", metadata=metadata)
    assert response.status_code == 201, response.get_json()
    (event,) = events_of(tenant.id)
    assert (event.metadata_, event.quantity, event.revenue) == (metadata, None, None)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"price": -1}, "price"),
        ({"price": "free"}, "price"),
        ({"price": "1.999"}, "price"),
        ({"price": "12.501"}, "price"),  # the schema's text: at most two decimals
        # Text pydantic's Decimal reads, but no amount as the schema shows one.
        ({"price": "1_000"}, "price"),
        ({"price": "1e3"}, "price"),
        ({"price": "\u0661\u0662"}, "price"),  # Arabic-Indic digits
        ({"price": " 12 "}, "price"),
        ({"price": "+12"}, "price"),
        ({"price": ".5"}, "price"),
        ({"metadata": {"quantity": 0}}, "metadata"),
        ({"metadata": {"quantity": 1.5}}, "metadata"),
        ({"metadata": {"quantity": "1.5"}}, "metadata"),
        ({"metadata": {"quantity": "0"}}, "metadata"),
        ({"metadata": {"quantity": "2 kg"}}, "metadata"),
        ({"metadata": {"quantity": "9" * 5000}}, "metadata"),
        ({"user_id": True}, "user_id"),
        ({"session_id": "s" * 65}, "session_id"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"source": 5}, "source"),
        ({"price": "5", "currency": "XYZ"}, "currency"),
        ({"currency": "USD"}, "currency"),  # the price's: no price, no currency
        # Each fits, but the revenue (price x quantity) would not fit numeric(14, 2).
        ({"price": "1000000", "metadata": {"quantity": 1000000}}, "price"),
        ({"price": "999999999999.99", "metadata": {"quantity": 2}}, "price"),
    ],
)
def test_store_field_validation(client, make_tenant, extra, field):
    tenant = make_tenant()
    response = track(client, tenant_id=tenant.id, event_type="add_to_cart", **extra)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


def test_a_sale_of_the_largest_revenue_a_row_holds_is_stored(client, make_tenant):
    tenant = make_tenant()
    most = "999999999999.99"  # numeric(14, 2)
    response = track(
        client, tenant_id=tenant.id, event_type="purchase", price=most, metadata={"quantity": 1}
    )
    assert response.status_code == 201, response.get_json()
    (sale,) = events_of(tenant.id)
    assert sale.revenue == Decimal(most)


def test_repeated_idempotency_key_is_ignored(client, make_tenant):
    tenant = make_tenant()
    body = {"tenant_id": tenant.id, "event_type": "add_to_cart", "idempotency_key": "k-1"}
    first = client.post("/api/analytics/track", json=body)
    again = client.post("/api/analytics/track", json=body)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.get_json() == {"success": True, "status": "duplicate_ignored"}
    assert len(events_of(tenant.id)) == 1


def test_same_key_at_another_tenant_is_not_a_duplicate(client, make_tenant):
    first, second = make_tenant(), make_tenant()
    for tenant in (first, second):
        response = track(client, tenant_id=tenant.id, event_type="purchase", idempotency_key="k")
        assert response.status_code == 201


def test_key_is_accepted_again_after_the_window(client, make_tenant):
    tenant = make_tenant()
    body = {"tenant_id": tenant.id, "event_type": "add_to_cart", "idempotency_key": "k-2"}
    client.post("/api/analytics/track", json=body)
    db.session.execute(update(DedupeKey).values(seen_at=utcnow() - timedelta(seconds=6)))
    db.session.commit()
    assert client.post("/api/analytics/track", json=body).status_code == 201
    assert len(events_of(tenant.id)) == 2


def test_window_is_configurable(make_app, make_tenant):
    app = make_app(IDEMPOTENCY_WINDOW_SECONDS=0)
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    body = {"tenant_id": tenant_id, "event_type": "add_to_cart", "idempotency_key": "k-3"}
    assert [client.post("/api/analytics/track", json=body).status_code for _ in range(2)] == [
        201,
        201,
    ]


def test_derived_key_from_session_type_slug_and_second(client, make_tenant, monkeypatch):
    """Without a client key, a repeat of the same session, type and product in the same
    second is one event; another type, product, session or second is an event of its own."""
    tenant = make_tenant()
    arrived = [utcnow()]  # every request in the same second, whatever the clock does
    monkeypatch.setattr("tenant_analytics.event_builders.utcnow", lambda: arrived[0])
    body = {
        "tenant_id": tenant.id,
        "event_type": "product_view",
        "session_id": "s-1",
        "product_slug": "pan",
    }
    first, repeat = track(client, **body), track(client, **body)
    assert first.status_code == 201
    assert repeat.status_code == 200
    assert repeat.get_json() == {"success": True, "status": "duplicate_ignored"}
    assert len(events_of(tenant.id)) == 1
    others = [{"product_slug": "torta"}, {"event_type": "add_to_cart"}, {"session_id": "s-2"}]
    assert [track(client, **{**body, **other}).status_code for other in others] == [201] * 3
    assert [(e.event_type, e.session_id, e.product_slug) for e in events_of(tenant.id)] == [
        ("product_view", "s-1", "pan"),
        ("product_view", "s-1", "torta"),
        ("add_to_cart", "s-1", "pan"),
        ("product_view", "s-2", "pan"),
    ]
    arrived[0] += timedelta(seconds=1)  # the same view a second later: a view of its own
    assert track(client, **body).status_code == 201
    assert len(events_of(tenant.id)) == 5


def test_concurrent_duplicates_are_written_once(app, make_tenant):
    tenant_id = make_tenant().id
    body = {
        "tenant_id": tenant_id,
        "event_type": "purchase",
        "idempotency_key": "race",
        "price": 10,
    }
    barrier, statuses = threading.Barrier(6), []

    def send():
        client = app.test_client()
        barrier.wait()
        statuses.append(client.post("/api/analytics/track", json=body).status_code)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 5 + [201]
    assert len(events_of(tenant_id)) == 1
