"""Store reports: hand-computed figures, window edges, alerts, RFM and tenant isolation.

Figures are checked on the query functions with a fixed ``NOW``; the endpoints
are checked for shape, validation and authorization, with the clock they read pinned
to ``NOW`` wherever a date is asserted.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter

from tenant_analytics.catalogue import FUNNEL_STEPS, STORE_TYPES
from tenant_analytics.extensions import db
from tenant_analytics.models import Tenant, utcnow
from tenant_analytics.products import create_product
from tenant_analytics.queries import store_common, store_dashboard, store_rollups
from tenant_analytics.queries.store_alerts import Alert, smart_alerts
from tenant_analytics.queries.store_dashboard import dashboard_stats
from tenant_analytics.queries.store_funnel import conversion_funnel, funnel_dates
from tenant_analytics.queries.store_rfm import rfm_segments
from tenant_analytics.rollups import rebuild_rollups

TEGUCIGALPA = ZoneInfo("America/Tegucigalpa")  # UTC-6, no daylight saving
NOW = datetime(2026, 3, 8, 15, 0, tzinfo=UTC)  # 09:00 on 8 March in Tegucigalpa
TODAY = date(2026, 3, 8)
START_90 = datetime(2025, 12, 8, tzinfo=TEGUCIGALPA)  # first instant: 90 days before 8 March
WEEK = [f"2026-03-0{day}" for day in range(2, 9)]  # the 7 local days ending today
DASHBOARD_FIELDS = {
    "mode",
    "total_sales",
    "total_revenue",
    "average_order_value",
    "top_products",
    "top_viewed_products",
    "sales_by_day",
    "events_timeline",
    "abandonment_rate",
    "event_counts",
    "conversion_rates",
    "checkout_started_count",
    "payment_info_entered_count",
    "order_completed_count",
    "conversion_checkout_to_payment",
    "conversion_payment_to_order",
    "error_counts",
    "product_performance",
    "errors_timeline",
    "session_stats",
    "retention_metrics",
    "traffic_sources",
    "whatsapp_sessions",
    "whatsapp_purchases",
    "whatsapp_sessions_list",
    "currency",
    "revenue_by_currency",
}
ENDPOINTS = ["dashboard-stats", "funnel", "rfm", "alerts"]


def local(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """A wall-clock time in Tegucigalpa in March 2026."""
    return datetime(2026, 3, day, hour, minute, second, tzinfo=TEGUCIGALPA)


def days_ago(days: int, hour: int = 12) -> datetime:
    """``hour`` o'clock local, ``days`` local days before today."""
    return datetime.combine(TODAY - timedelta(days=days), time(hour), tzinfo=TEGUCIGALPA)


def ev(event_type: str, created_at: datetime, session: str | None = None, **columns: Any):
    """One event; ``columns`` are Event columns (user_id, product_slug, revenue, ...)."""
    return event_type, created_at, {"session_id": session, **columns}


def stats(tenant: Tenant, mode: str = "total", zone: ZoneInfo = TEGUCIGALPA) -> dict[str, Any]:
    return dict(dashboard_stats(db.session, tenant_id=tenant.id, zone=zone, now=NOW, mode=mode))


def test_report_types_come_from_the_catalogue():
    used = {
        *FUNNEL_STEPS,
        *store_dashboard.TIMELINE_TYPES,
        *store_dashboard.TIMELINE_ERRORS,
        *store_dashboard.WHATSAPP_TYPES,
    }
    assert used <= set(STORE_TYPES)


# -- the dashboard, worked out by hand ------------------------------------------------


@pytest.fixture
def shop(make_tenant, store_events):
    """Four sessions in the week of 2-8 March (Tegucigalpa), plus events outside it.

    s1 (google, ana): 2 views of tee, adds tee, checks out, buys 2 tee (50.00) and 1 cap (20.00)
    s2 (no source):   views tee and cap, adds cap, checks out, payment error: abandons
    s3 (instagram, ben, on 7 March local = 8 March UTC): views cap, adds, checks out,
                      pays, buys a cap (no quantity: 1 unit, 19.99), WhatsApp click
    s4 (google):      views tee, 2 WhatsApp clicks, WhatsApp purchase, buys 3 hat
                      (revenue NULL), checkout started, three kinds of error
    """
    tenant = make_tenant(timezone="America/Tegucigalpa")
    google, insta = {"source": "google"}, {"source": "instagram"}
    tee = {"product_slug": "tee", "product_name": "Tee"}
    cap = {"product_slug": "cap", "product_name": "Cap"}
    ana, ben = {"user_id": "ana@example.com"}, {"user_id": "ben@example.com"}
    store_events(
        tenant,
        [
            # 1 March 23:59 local: a day before the week (but inside the 90 retention days).
            ev("purchase", local(1, 23, 59), "s9", **ana, **tee, revenue=Decimal("999.00")),
            ev("page_view", local(2), "s1", **google),  # first instant of the week
            ev("product_view", local(2, 0, 1), "s1", **google, **tee),
            ev("product_view", local(2, 0, 2), "s1", **google, **tee),  # a refresh
            ev("add_to_cart", local(2, 0, 3), "s1", **google, **tee),
            ev("begin_checkout", local(2, 0, 4), "s1", **google, **ana),
            ev(
                "purchase",
                local(2, 0, 5),
                "s1",
                **google,
                **ana,
                **tee,
                quantity=2,
                revenue=Decimal("50.00"),
            ),
            ev(
                "purchase",
                local(2, 0, 6),
                "s1",
                **google,
                **ana,
                **cap,
                quantity=1,
                revenue=Decimal("20.00"),
            ),
            ev("page_view", local(5, 12), "s2"),
            ev("product_view", local(5, 12, 1), "s2", **tee),
            ev("product_view", local(5, 12, 2), "s2", **cap),
            ev("add_to_cart", local(5, 12, 3), "s2", **cap),
            ev("begin_checkout", local(5, 12, 4), "s2"),
            ev("payment_error", local(5, 12, 5), "s2"),
            ev("pageview", local(6, 10)),  # a landing-page event: no session
            ev("product_view", local(7, 20, 30), "s3", **insta, **cap),
            ev("add_to_cart", local(7, 20, 31), "s3", **insta, **cap),
            ev("begin_checkout", local(7, 20, 32), "s3", **insta, **ben),
            ev("checkout_started", local(7, 20, 33), "s3", **insta),
            ev("payment_info_entered", local(7, 20, 34), "s3", **insta),
            ev("purchase", local(7, 20, 35), "s3", **insta, **ben, **cap, revenue=Decimal("19.99")),
            ev("order_completed", local(7, 20, 36), "s3", **insta),
            ev("whatsapp_cart_click", local(7, 20, 37), "s3", **insta),
            ev("product_view", local(8, 8), "s4", **google, **tee),
            ev("whatsapp_cart_click", local(8, 8, 1), "s4", **google),
            ev("whatsapp_cart_click", local(8, 8, 2), "s4", **google),
            ev("whatsapp_purchase", local(8, 8, 3), "s4", **google),
            ev("purchase", local(8, 8, 4), "s4", **google, product_slug="hat", quantity=3),
            ev("checkout_started", local(8, 8, 5), "s4", **google),
            ev("checkout_error", local(8, 8, 6), "s4", **google),
            ev("address_error", local(8, 8, 7), "s4", **google),
            ev("payment_confirmation_error", local(8, 8, 8), "s4", **google),
            ev("page_view", local(9), "s9"),  # tomorrow: after the week
        ],
    )
    # A neighbour with the same session and user ids: none of it may leak in. Its
    # purchase by s2 would, for one, turn s2's checkout into a completed one.
    neighbour = make_tenant(timezone="America/Tegucigalpa")
    store_events(
        neighbour,
        [
            ev("purchase", local(5, 13), "s2", **tee, quantity=5, revenue=Decimal("500")),
            ev("product_view", local(5, 13), "s1", **tee),
            ev("whatsapp_cart_click", local(5, 13), "s7"),
            ev("page_view", local(5, 13), "s8", source="bing"),
        ],
    )
    return tenant


def test_dashboard_sales_and_revenue(app, shop):
    for mode in ("total", "unique"):  # sales are purchase events in both modes
        figures = stats(shop, mode)
        assert figures["mode"] == mode
        assert figures["total_sales"] == 4  # s1 x2, s3, s4; s9's is the day before
        assert figures["total_revenue"] == 89.99  # 50.00 + 20.00 + 19.99 + NULL (0)
        assert figures["average_order_value"] == 22.5  # 89.99 / 4 = 22.4975 -> 22.50
        # units: hat 3; cap 1 (s1) + 1 (s3, no quantity); tee 2. Ties by slug.
        assert figures["top_products"] == [
            {"slug": "hat", "count": 3},
            {"slug": "cap", "count": 2},
            {"slug": "tee", "count": 2},
        ]
        # s1 two on 2 March; s3 at 20:35 on 7 March local (02:35 on 8 March UTC); s4.
        assert [d["count"] for d in figures["sales_by_day"]] == [2, 0, 0, 0, 0, 1, 1]
        assert [d["date"] for d in figures["sales_by_day"]] == WEEK
        # checkout identifiers: ana (s1), s2, ben (s3); ana and ben bought: 1 / 3
        assert figures["abandonment_rate"] == 33.3


def test_rates_and_averages_on_a_half_round_up_as_people_round(app, make_tenant, store_events):
    """16 views and 1 add to cart is 6.25 %, shown 6.3 (Python's round says 6.2); 17
    events over 4 sessions is 4.25, shown 4.3; as money is rounded."""
    tenant = make_tenant(timezone="America/Tegucigalpa")
    views = [ev("product_view", local(5, 10, n), f"s{n % 4}") for n in range(16)]
    store_events(tenant, [*views, ev("add_to_cart", local(5, 11), "s0")])
    figures = stats(tenant, "total")
    assert figures["conversion_rates"]["visit_to_cart"] == 6.3
    assert figures["session_stats"]["avg_events_per_session"] == 4.3


def test_dashboard_counts_in_total_mode(app, shop):
    figures = stats(shop, "total")
    # product views: s1 2, s2 2, s3 1, s4 1 = 6; adds s1 s2 s3; checkouts s1 s2 s3
    assert figures["event_counts"] == {
        "product_view": 6,
        "add_to_cart": 3,
        "begin_checkout": 3,
        "purchase": 4,
    }
    assert figures["conversion_rates"] == {
        "visit_to_cart": 50.0,  # 3 / 6
        "cart_to_checkout": 100.0,  # 3 / 3
        "checkout_to_purchase": 133.3,  # 4 / 3
    }
    # tee: s1 2 + s2 + s4 = 4 views; cap: s2 + s3 = 2
    assert figures["top_viewed_products"] == [
        {"slug": "tee", "count": 4},
        {"slug": "cap", "count": 2},
    ]
    assert figures["product_performance"] == [
        # purchases are units; conversion = purchases / views
        {
            "slug": "tee",
            "name": "Tee",
            "views": 4,
            "add_to_cart": 1,
            "purchases": 2,
            "conversion_rate": 50.0,
        },
        {
            "slug": "cap",
            "name": "Cap",
            "views": 2,
            "add_to_cart": 2,
            "purchases": 2,
            "conversion_rate": 100.0,
        },
        # never viewed: no division by zero; no name stored, so the slug
        {
            "slug": "hat",
            "name": "hat",
            "views": 0,
            "add_to_cart": 0,
            "purchases": 3,
            "conversion_rate": 0.0,
        },
    ]
    timeline = {day.pop("date"): day for day in figures["events_timeline"]}
    assert list(timeline) == WEEK
    zero = dict.fromkeys(
        [
            "product_view",
            "add_to_cart",
            "begin_checkout",
            "purchase",
            "checkout_started",
            "payment_info_entered",
            "order_completed",
        ],
        0,
    )
    assert timeline["2026-03-02"] == {
        **zero,
        "product_view": 2,
        "add_to_cart": 1,
        "begin_checkout": 1,
        "purchase": 2,
    }
    assert timeline["2026-03-05"] == {
        **zero,
        "product_view": 2,
        "add_to_cart": 1,
        "begin_checkout": 1,
    }
    assert timeline["2026-03-07"] == {**zero, **dict.fromkeys(zero, 1)}  # s3, one of each
    assert timeline["2026-03-08"] == {
        **zero,
        "product_view": 1,
        "purchase": 1,
        "checkout_started": 1,
    }
    assert timeline["2026-03-03"] == timeline["2026-03-04"] == timeline["2026-03-06"] == zero


def test_dashboard_counts_in_unique_mode(app, shop):
    figures = stats(shop, "unique")
    # distinct sessions: views s1 s2 s3 s4; adds s1 s2 s3; checkouts s1 s2 s3;
    # purchases s1 s3 s4 (s1 bought twice)
    assert figures["event_counts"] == {
        "product_view": 4,
        "add_to_cart": 3,
        "begin_checkout": 3,
        "purchase": 3,
    }
    assert figures["conversion_rates"] == {
        "visit_to_cart": 75.0,  # 3 / 4
        "cart_to_checkout": 100.0,  # 3 / 3
        "checkout_to_purchase": 100.0,  # 3 / 3
    }
    assert figures["top_viewed_products"] == [
        {"slug": "tee", "count": 3},  # s1 s2 s4
        {"slug": "cap", "count": 2},  # s2 s3
    ]
    assert figures["product_performance"] == [
        # purchases are sessions; units kept apart
        {
            "slug": "tee",
            "name": "Tee",
            "views": 3,
            "add_to_cart": 1,
            "purchases": 1,
            "conversion_rate": 33.3,
            "purchases_units": 2,
        },
        {
            "slug": "cap",
            "name": "Cap",
            "views": 2,
            "add_to_cart": 2,
            "purchases": 2,
            "conversion_rate": 100.0,
            "purchases_units": 2,
        },
        {
            "slug": "hat",
            "name": "hat",
            "views": 0,
            "add_to_cart": 0,
            "purchases": 1,
            "conversion_rate": 0.0,
            "purchases_units": 3,
        },
    ]
    by_date = {day["date"]: day for day in figures["events_timeline"]}
    # 2 March: s1 viewed twice and bought twice, one session each
    assert (by_date["2026-03-02"]["product_view"], by_date["2026-03-02"]["purchase"]) == (1, 1)
    assert by_date["2026-03-05"]["product_view"] == 1  # s2 viewed two products


def test_dashboard_payment_steps_errors_and_sessions(app, shop):
    for mode in ("total", "unique"):  # none of these depend on the mode
        figures = stats(shop, mode)
        assert figures["checkout_started_count"] == 2  # s3, s4
        assert figures["payment_info_entered_count"] == 1  # s3
        assert figures["order_completed_count"] == 1  # s3
        assert figures["conversion_checkout_to_payment"] == 50.0  # 1 / 2
        assert figures["conversion_payment_to_order"] == 100.0  # 1 / 1
        assert figures["error_counts"] == {
            "payment_error": 1,
            "checkout_error": 1,
            "payment_confirmation_error": 1,
        }
        errors = {day.pop("date"): day for day in figures["errors_timeline"]}
        assert list(errors) == WEEK
        assert errors["2026-03-05"] == {
            "payment_error": 1,
            "checkout_error": 0,
            "payment_confirmation_error": 0,
            "address_error": 0,
        }
        assert errors["2026-03-08"] == {
            "payment_error": 0,
            "checkout_error": 1,
            "payment_confirmation_error": 1,
            "address_error": 1,
        }
        assert sum(sum(day.values()) for day in errors.values()) == 4
        # events with a session: s1 7, s2 6, s3 8, s4 9 = 30 over 4 sessions
        assert figures["session_stats"] == {
            "unique_sessions": 4,
            "avg_events_per_session": 7.5,
            "sessions_with_purchase": 3,  # s1 s3 s4
        }
        # 90 days: ana (s9 on 1 March, s1 twice), ben, and s4 as a guest
        assert figures["retention_metrics"] == {
            "repurchase_rate": 33.3,  # 1 of 3
            "recurrent_customers": 1,
            "total_unique_buyers": 3,
            "period_days": 90,
        }
        assert figures["traffic_sources"] == [
            {"source": "google", "sessions": 2},  # s1 s4
            {"source": "direct", "sessions": 1},  # s2 has no source
            {"source": "instagram", "sessions": 1},  # s3
        ]
        assert figures["whatsapp_sessions"] == 2  # s3 once, s4 twice
        assert figures["whatsapp_purchases"] == 1  # s4
        assert figures["whatsapp_sessions_list"] == ["s4", "s3"]  # latest click first


def test_traffic_sources_count_a_session_for_each_of_its_sources(app, make_tenant, store_events):
    tenant = make_tenant(timezone="America/Tegucigalpa")
    store_events(
        tenant,
        [
            ev("page_view", local(3, 10), "a", source="google"),
            ev("product_view", local(3, 10, 1), "a", product_slug="tee"),  # no source: direct
            ev("page_view", local(4, 10), "b", source="instagram"),
            ev("page_view", local(4, 11), "b", source="instagram"),
            ev("page_view", local(5, 10), "c"),
            ev("page_view", local(6, 10), "d", source="direct"),  # the same as none
            ev("page_view", local(6, 11), "d"),
            ev("page_view", local(6, 12), None, source="bing"),  # no session: not counted
        ],
    )
    figures = stats(tenant)
    assert figures["traffic_sources"] == [
        {"source": "direct", "sessions": 3},  # a c d
        {"source": "google", "sessions": 1},
        {"source": "instagram", "sessions": 1},
    ]
    assert figures["session_stats"]["unique_sessions"] == 4
    assert figures["session_stats"]["avg_events_per_session"] == 1.8  # 7 / 4
    # A session with two different sources is listed under each of them.
    store_events(
        tenant,
        [
            ev("page_view", local(7, 10), "e", source="google"),
            ev("product_view", local(7, 10, 1), "e", source="bing", product_slug="tee"),
        ],
    )
    figures = stats(tenant)
    assert figures["traffic_sources"] == [
        {"source": "direct", "sessions": 3},
        {"source": "google", "sessions": 2},  # a e
        {"source": "bing", "sessions": 1},  # e; ties by source
        {"source": "instagram", "sessions": 1},
    ]
    assert figures["session_stats"]["unique_sessions"] == 5


def test_unique_counts_a_session_once_a_day_and_once_a_week(app, make_tenant, store_events):
    tenant = make_tenant(timezone="America/Tegucigalpa")
    store_events(
        tenant,
        [
            # one session viewing the tee either side of midnight
            ev("product_view", local(3, 23, 59), "m", product_slug="tee"),
            ev("product_view", local(4, 0, 1), "m", product_slug="tee"),
            ev("product_view", local(5, 9), None, product_slug="mug"),  # no session
            ev("page_view", local(5, 9), None),
        ],
    )
    unique = stats(tenant, "unique")
    by_date = {day["date"]: day["product_view"] for day in unique["events_timeline"]}
    assert (by_date["2026-03-03"], by_date["2026-03-04"], by_date["2026-03-05"]) == (1, 1, 0)
    assert unique["event_counts"]["product_view"] == 1
    # viewed without a session: listed, with no session to count
    assert unique["top_viewed_products"] == [
        {"slug": "tee", "count": 1},
        {"slug": "mug", "count": 0},
    ]
    assert [(p["slug"], p["views"]) for p in unique["product_performance"]] == [
        ("tee", 1),
        ("mug", 0),
    ]
    total = stats(tenant, "total")
    assert total["event_counts"]["product_view"] == 3
    assert total["top_viewed_products"] == [
        {"slug": "tee", "count": 2},
        {"slug": "mug", "count": 1},
    ]
    assert funnel_counts(tenant, date(2026, 3, 2), TODAY)[:2] == [
        ("page_view", 0),
        ("product_view", 1),
    ]


def test_reports_are_the_same_with_passes_in_turn(app, shop, monkeypatch):
    """On PostgreSQL the session-wide passes run on a second connection: same figures."""
    beside = {mode: stats(shop, mode) for mode in ("total", "unique")}
    funnel = funnel_counts(shop, date(2026, 3, 2), TODAY)
    monkeypatch.setattr(store_common, "SIDE_BY_SIDE", False)
    assert {mode: stats(shop, mode) for mode in ("total", "unique")} == beside
    assert funnel_counts(shop, date(2026, 3, 2), TODAY) == funnel


def test_a_checkout_bought_by_a_purchase_that_names_its_customer(make_tenant, store_events):
    """RFM needs user_id on purchases, so a shop may send it there only: the session that
    checked out anonymously and then bought as a user did not abandon its checkout."""
    tenant = make_tenant(timezone="America/Tegucigalpa")
    store_events(
        tenant,
        [
            ev("begin_checkout", local(3, 10), "anon-then-ana"),
            ev("purchase", local(3, 10, 5), "anon-then-ana", user_id="ana"),
            ev("begin_checkout", local(4, 9), "ben-1", user_id="ben"),
            ev("purchase", local(5, 9), "ben-2", user_id="ben"),  # the user, elsewhere
            ev("begin_checkout", local(4, 11), "leaves"),
            ev("purchase", local(4, 12), "someone-else"),
        ],
    )
    # identifiers: anon-then-ana (bought in its session), ben (bought), leaves (did not)
    assert stats(tenant)["abandonment_rate"] == 33.3


def test_a_checkout_closed_over_whatsapp_is_not_abandoned(make_tenant, store_events):
    """A shop selling over WhatsApp confirms the sale there (``whatsapp_purchase``): its
    checkouts ended in sales, not abandoned, though no ``purchase`` was sent."""
    tenant = make_tenant(timezone="America/Tegucigalpa")
    store_events(
        tenant,
        [
            *(ev("begin_checkout", local(3, 10), f"w{i}") for i in range(3)),
            *(ev("whatsapp_purchase", local(3, 11), f"w{i}", price="100") for i in range(2)),
            ev("begin_checkout", local(4, 9), "by-phone", user_id="eva"),
            ev("whatsapp_purchase", local(4, 10), "later", user_id="eva"),
        ],
    )
    figures = stats(tenant)
    # identifiers: w0, w1 and eva bought over WhatsApp; w2 left
    assert figures["abandonment_rate"] == 25.0
    assert figures["total_sales"] == 0 and figures["whatsapp_purchases"] == 3


def test_dashboard_of_empty_tenant_is_all_zeros(app, make_tenant):
    tenant = make_tenant(timezone="America/Tegucigalpa")
    for mode in ("total", "unique"):
        figures = stats(tenant, mode)
        assert set(figures) == DASHBOARD_FIELDS
        assert figures["total_sales"] == figures["total_revenue"] == 0
        assert figures["average_order_value"] == figures["abandonment_rate"] == 0
        assert figures["conversion_checkout_to_payment"] == 0
        assert figures["conversion_payment_to_order"] == 0
        assert set(figures["conversion_rates"].values()) == {0}
        assert set(figures["event_counts"].values()) == {0}
        assert set(figures["error_counts"].values()) == {0}
        for key in ("top_products", "top_viewed_products", "product_performance"):
            assert figures[key] == []
        assert figures["traffic_sources"] == figures["whatsapp_sessions_list"] == []
        assert (figures["currency"], figures["revenue_by_currency"]) == ("HNL", {"HNL": 0.0})
        assert [d["count"] for d in figures["sales_by_day"]] == [0] * 7
        for timeline in ("events_timeline", "errors_timeline"):
            assert [d["date"] for d in figures[timeline]] == WEEK
            assert all(v == 0 for d in figures[timeline] for k, v in d.items() if k != "date")
        assert figures["session_stats"] == {
            "unique_sessions": 0,
            "avg_events_per_session": 0,
            "sessions_with_purchase": 0,
        }
        assert figures["retention_metrics"]["repurchase_rate"] == 0
        assert figures["whatsapp_sessions"] == figures["whatsapp_purchases"] == 0


def test_dashboard_ignores_other_tenants(app, shop, make_tenant):
    quiet = make_tenant(timezone="America/Tegucigalpa")
    assert stats(quiet)["total_sales"] == 0
    assert stats(quiet)["session_stats"]["unique_sessions"] == 0


def test_dashboard_window_edges(app, make_tenant, store_events):
    tenant = make_tenant(timezone="America/Tegucigalpa")
    store_events(
        tenant,
        [
            ev("purchase", local(1, 23, 59, 59), "a"),  # last second before the week
            ev("purchase", local(2), "b"),  # first instant: counted
            ev("purchase", local(8, 23, 59, 59), "c"),  # last second of today: counted
            ev("purchase", local(9), "d"),  # first instant of tomorrow: not counted
        ],
    )
    figures = stats(tenant)
    assert figures["total_sales"] == 2
    assert [d["count"] for d in figures["sales_by_day"]] == [1, 0, 0, 0, 0, 0, 1]
    assert figures["session_stats"]["unique_sessions"] == 2


@pytest.mark.parametrize("use_rollups", [True, False])
def test_made_up_sources_do_not_grow_the_report_without_bound(
    app, make_tenant, store_events, use_rollups
):
    """Sources come from the public snippet: a flood of distinct ones lists the 50 with most
    sessions, ties by code point (capital letters first), from the raw events as from the
    rollups. A session with two sources takes the raw events' slower path."""
    tenant = make_tenant(timezone="America/Tegucigalpa")
    flood = [ev("page_view", local(5, 10, 0, n), f"s{n}", source=f"src-{n:03}") for n in range(59)]
    popular = [ev("page_view", local(6, 10, n), f"p{n}", source="Popular") for n in range(3)]
    both = [  # one session, two sources
        ev("page_view", local(7, 10), "both", source="zeta"),
        ev("page_view", local(7, 11), "both", source="Alpha"),
    ]
    store_events(tenant, flood + popular + both)
    figures = dashboard_stats(
        db.session, tenant_id=tenant.id, zone=TEGUCIGALPA, now=NOW, use_rollups=use_rollups
    )
    listed = figures["traffic_sources"]
    assert len(listed) == 50
    assert listed[:3] == [
        {"source": "Popular", "sessions": 3},
        {"source": "Alpha", "sessions": 1},
        {"source": "src-000", "sessions": 1},
    ]
    assert listed[-1] == {"source": "src-047", "sessions": 1}  # "zeta" and the rest left out


def test_dashboard_days_follow_the_tenant_zone(app, shop):
    """Moved to UTC (rollups rebuilt, as the tenant API does), the days shift: zones matter."""
    shop.timezone = "UTC"
    rebuild_rollups(db.session, shop.id)
    utc = stats(shop, zone=ZoneInfo("UTC"))
    # s9's 23:59 on 1 March local is 05:59 on 2 March UTC: joins s1's two purchases;
    # s3's 20:35 on 7 March local is 02:35 on 8 March UTC: joins s4's.
    assert [d["count"] for d in utc["sales_by_day"]] == [3, 0, 0, 0, 0, 0, 2]
    raw = dashboard_stats(
        db.session, tenant_id=shop.id, zone=ZoneInfo("UTC"), now=NOW, use_rollups=False
    )
    assert dict(raw) == utc


def test_retention_window_edges(app, make_tenant, store_events):
    tenant = make_tenant(timezone="America/Tegucigalpa")
    first = START_90
    store_events(
        tenant,
        [
            ev("purchase", first - timedelta(seconds=1), "s", user_id="old@example.com"),
            ev("purchase", first, "s", user_id="edge@example.com"),  # first instant
            ev("purchase", first + timedelta(days=10), "s", user_id="edge@example.com"),
            ev("purchase", local(8, 23, 59, 59), "t"),  # guest, identified by session
            ev("purchase", local(9), "u", user_id="future@example.com"),  # tomorrow
        ],
    )
    assert stats(tenant)["retention_metrics"] == {
        "repurchase_rate": 50.0,  # edge bought twice; t once; old and future outside
        "recurrent_customers": 1,
        "total_unique_buyers": 2,
        "period_days": 90,
    }


# -- funnel ---------------------------------------------------------------------------


def funnel_counts(tenant: Tenant, start: date, end: date, source: str | None = None) -> list:
    result = conversion_funnel(
        db.session, tenant_id=tenant.id, zone=TEGUCIGALPA, start=start, end=end, source=source
    )
    return [(step["step"], step["count"]) for step in result["funnel"]]


def test_funnel_counts_sessions_per_step(app, shop):
    assert funnel_counts(shop, date(2026, 3, 2), TODAY) == [
        ("page_view", 2),  # s1 s2 (s9's page view is on 9 March)
        ("product_view", 4),  # s1 s2 s3 s4
        ("add_to_cart", 3),  # s1 s2 s3
        ("begin_checkout", 3),  # s1 s2 s3
        ("purchase", 3),  # s1 s3 s4 (s9's is on 1 March)
    ]


def test_funnel_by_source(app, shop):
    google = funnel_counts(shop, date(2026, 3, 2), TODAY, "google")  # s1 s4
    assert [count for _, count in google] == [1, 2, 1, 1, 2]
    direct = funnel_counts(shop, date(2026, 3, 2), TODAY, "direct")  # s2: no source
    assert [count for _, count in direct] == [1, 1, 1, 1, 0]
    assert [count for _, count in funnel_counts(shop, TODAY, TODAY, "bing")] == [0] * 5


def test_funnel_dates_are_inclusive_local_days(app, shop):
    # 7 March local holds s3 (whose events are on 8 March in UTC)
    assert [c for _, c in funnel_counts(shop, date(2026, 3, 7), date(2026, 3, 7))] == [
        0,
        1,
        1,
        1,
        1,
    ]
    # 2 March: s1's page view at 00:00 counts; s9's purchase at 23:59 on 1 March does not
    assert funnel_counts(shop, date(2026, 3, 2), date(2026, 3, 2))[0] == ("page_view", 1)
    assert funnel_counts(shop, date(2026, 3, 2), date(2026, 3, 2))[-1] == ("purchase", 1)
    assert funnel_counts(shop, date(2026, 3, 1), date(2026, 3, 1))[-1] == ("purchase", 1)
    # 8 March ends before s9's page view at 00:00 on 9 March
    assert funnel_counts(shop, TODAY, TODAY)[0] == ("page_view", 0)
    assert funnel_counts(shop, date(2026, 3, 9), date(2026, 3, 9))[0] == ("page_view", 1)


def test_funnel_defaults_and_bounds(app, make_tenant):
    # 30 days ago, as the contract's default (its example: 2024-05-01 .. 2024-05-31)
    assert funnel_dates(TEGUCIGALPA, NOW, None, None) == (date(2026, 2, 6), TODAY)
    assert funnel_dates(TEGUCIGALPA, NOW, None, date(2026, 1, 31)) == (
        date(2026, 1, 1),
        date(2026, 1, 31),
    )
    assert funnel_dates(TEGUCIGALPA, NOW, date(2026, 3, 1), None) == (date(2026, 3, 1), TODAY)
    # 03:00 UTC on 8 March is still 7 March in Tegucigalpa
    late = datetime(2026, 3, 8, 3, 0, tzinfo=UTC)
    assert funnel_dates(TEGUCIGALPA, late, None, None)[1] == date(2026, 3, 7)
    tenant = make_tenant()
    result = conversion_funnel(
        db.session, tenant_id=tenant.id, zone=TEGUCIGALPA, start=date(2026, 2, 6), end=TODAY
    )
    assert result == {
        "funnel": [
            {"step": step, "count": 0}
            for step in ("page_view", "product_view", "add_to_cart", "begin_checkout", "purchase")
        ],
        "start_date": "2026-02-06T00:00:00",
        "end_date": "2026-03-08T23:59:59",
    }


# -- RFM ------------------------------------------------------------------------------


def rfm(tenant: Tenant, threshold: str = "100000") -> dict[str, dict[str, Any]]:
    report = rfm_segments(
        db.session,
        tenant_id=tenant.id,
        zone=TEGUCIGALPA,
        now=NOW,
        vip_threshold=Decimal(threshold),
    )
    assert (report["start_date"], report["end_date"]) == (
        "2025-12-08T00:00:00",  # the last 90 days: 8 December .. 8 March, as the contract's
        # example (2024-03-02 .. 2024-05-31)
        "2026-03-08T23:59:59",
    )
    return {row["visitor_id"]: row for row in report["rfm"]}


def buy(user: str | None, when: datetime, revenue: str = "10"):
    return ev("purchase", when, "s", user_id=user, revenue=Decimal(revenue))


@pytest.fixture
def customers(make_tenant, store_events):
    tenant = make_tenant(timezone="America/Tegucigalpa")
    store_events(
        tenant,
        [
            # vip: twice, last 3 days ago, 60000 + 40000 = 100000 (the threshold itself)
            buy("vip", days_ago(10), "60000"),
            buy("vip", days_ago(3), "40000"),
            # vip7: last purchase 7 days ago still VIP; vip8 at 8 days is only Loyal
            buy("vip7", days_ago(9), "150000"),
            buy("vip7", days_ago(7), "1"),
            buy("vip8", days_ago(9), "150000"),
            buy("vip8", days_ago(8), "1"),
            buy("once", days_ago(2), "250000"),  # one purchase: Loyal however big
            buy("loyal30", days_ago(30)),
            buy("risk31", days_ago(31)),
            buy("risk60", days_ago(60)),
            buy("lost61", days_ago(61)),
            # 23:59 on 7 March local is 05:59 on 8 March UTC: yesterday, recency 1
            buy("evening", local(7, 23, 59)),
            # first instant of the 90 days is in (recency 90); one second earlier is not
            buy("edge", START_90),
            buy("gone", START_90 - timedelta(seconds=1)),
            # small: twice this week, 10 + 10: VIP only where the threshold is <= 20
            buy("small", days_ago(5)),
            buy("small", days_ago(4)),
            buy(None, days_ago(1), "999999"),  # a guest: not in RFM
            ev("add_to_cart", days_ago(1), "s", user_id="browser"),  # no purchase
        ],
    )
    neighbour = make_tenant()
    store_events(neighbour, [buy("vip", days_ago(1), "5"), buy("stranger", days_ago(1))])
    return tenant


def test_rfm_segments(app, customers):
    rows = rfm(customers)
    segments = {
        user: (row["recency"], row["frequency"], row["segment"]) for user, row in rows.items()
    }
    assert segments == {
        "vip": (3, 2, "VIP"),
        "vip7": (7, 2, "VIP"),
        "vip8": (8, 2, "Loyal"),
        "once": (2, 1, "Loyal"),
        "loyal30": (30, 1, "Loyal"),
        "risk31": (31, 1, "At Risk"),
        "risk60": (60, 1, "At Risk"),
        "lost61": (61, 1, "Lost"),
        "evening": (1, 1, "Loyal"),
        "edge": (90, 1, "Lost"),
        "small": (4, 2, "Loyal"),
    }
    assert rows["vip"] == {
        "visitor_id": "vip",
        "recency": 3,
        "frequency": 2,
        "monetary": 100000.0,  # the neighbour's purchase by "vip" is not added
        "segment": "VIP",
        "segmento": "VIP",
    }
    labels = {row["segment"]: row["segmento"] for row in rows.values()}
    assert labels == {"VIP": "VIP", "Loyal": "Leal", "At Risk": "En riesgo", "Lost": "Perdido"}


def test_rfm_monetary_is_in_the_tenants_currency(app, make_tenant, store_events):
    """The VIP threshold is in the tenant's currency: dollars are not counted as lempiras."""
    tenant = make_tenant(timezone="America/Tegucigalpa")
    lempiras = {"revenue": Decimal("700"), "currency": "HNL"}
    dollars = {"revenue": Decimal("500"), "currency": "USD"}
    store_events(
        tenant,
        [
            ev("purchase", days_ago(2), "s", user_id="tourist", **lempiras),
            ev("purchase", days_ago(1), "s", user_id="tourist", **dollars),
            ev("purchase", days_ago(2), "s", user_id="local", **lempiras),
            ev("purchase", days_ago(1), "s", user_id="local", revenue=Decimal("400")),
        ],
    )
    report = rfm_segments(
        db.session,
        tenant_id=tenant.id,
        zone=TEGUCIGALPA,
        now=NOW,
        vip_threshold=Decimal("1000"),
        currency="HNL",
    )
    assert report["currency"] == "HNL"
    rows = {row["visitor_id"]: row for row in report["rfm"]}
    assert (rows["local"]["monetary"], rows["local"]["segment"]) == (1100.0, "VIP")
    # Two purchases, but 700 lempiras: under the threshold, and listed after "local".
    assert (rows["tourist"]["frequency"], rows["tourist"]["monetary"]) == (2, 700.0)
    assert rows["tourist"]["segment"] == "Loyal"
    assert list(rows) == ["local", "tourist"]


def test_rfm_order_is_biggest_spender_first(app, customers):
    order = list(rfm(customers))
    # 250000, 150001, 150001 (tie: by id), 100000, 20, then six customers with 10 by id
    assert order == [
        "once",
        "vip7",
        "vip8",
        "vip",
        "small",
        "edge",
        "evening",
        "lost61",
        "loyal30",
        "risk31",
        "risk60",
    ]


def test_rfm_threshold_is_per_tenant(app, customers):
    # One cent above what vip spent: Loyal now; vip7 (150001) is unaffected.
    rows = rfm(customers, "100000.01")
    assert (rows["vip"]["segment"], rows["vip"]["segmento"]) == ("Loyal", "Leal")
    assert rows["vip7"]["segment"] == "VIP"
    # A small shop's threshold: 10 + 10 reaches 20 but not 20.01.
    assert rfm(customers, "20")["small"]["segment"] == "VIP"
    assert rfm(customers, "20.01")["small"]["segment"] == "Loyal"
    assert rfm(customers, "20")["once"]["segment"] == "Loyal"  # still one purchase


def test_rfm_of_empty_tenant(app, make_tenant):
    assert rfm(make_tenant()) == {}


def rfm_report(tenant: Tenant, **page: Any) -> dict[str, Any]:
    return dict(
        rfm_segments(
            db.session,
            tenant_id=tenant.id,
            zone=TEGUCIGALPA,
            now=NOW,
            vip_threshold=Decimal("100000"),
            **page,
        )
    )


def test_rfm_pages_cover_every_customer_once(app, customers):
    everyone = list(rfm(customers))
    paged, sizes, offset = [], [], 0
    while offset is not None:
        report = rfm_report(customers, offset=offset, limit=4)
        assert report["total"] == 11 and report["limit"] == 4
        paged += [row["visitor_id"] for row in report["rfm"]]
        sizes.append(len(report["rfm"]))
        offset = report["next_offset"]
    assert sizes == [4, 4, 3]
    assert paged == everyone
    past_the_end = rfm_report(customers, offset=50, limit=4)
    assert (past_the_end["rfm"], past_the_end["next_offset"]) == ([], None)


def test_rfm_counts_every_segment_and_lists_one(app, customers):
    counts = {"VIP": 2, "Loyal": 5, "At Risk": 2, "Lost": 2}
    report = rfm_report(customers, segment="At Risk")
    assert report["segments"] == counts
    assert [row["visitor_id"] for row in report["rfm"]] == ["risk31", "risk60"]
    assert (report["total"], report["next_offset"]) == (2, None)
    counts_only = rfm_report(customers, limit=0)
    assert (counts_only["rfm"], counts_only["segments"]) == ([], counts)
    assert (counts_only["total"], counts_only["next_offset"]) == (11, None)  # no page to follow
    empty = rfm_report(customers, segment="VIP", offset=2)
    assert (empty["rfm"], empty["total"], empty["segments"]["VIP"]) == ([], 2, 2)


# -- alerts ---------------------------------------------------------------------------


def checkouts(count: int, purchased: int, when: datetime = NOW - timedelta(hours=1)) -> list:
    """``count`` sessions beginning checkout, the first ``purchased`` of them buying."""
    events = [ev("begin_checkout", when, f"c{i}") for i in range(count)]
    return events + [ev("purchase", when, f"c{i}") for i in range(purchased)]


def viewers(count: int, views_each: int = 1, when: datetime = NOW - timedelta(days=6)) -> list:
    """``count`` sessions viewing the tee ``views_each`` times."""
    return [
        ev("product_view", when, f"v{i}", product_slug="tee")
        for i in range(count)
        for _ in range(views_each)
    ]


def carts(count: int, when: datetime = NOW - timedelta(hours=5)) -> list:
    return [ev("add_to_cart", when, f"a{i}") for i in range(count)]


def busy_session(events: int, when: datetime = NOW - timedelta(hours=2)) -> list:
    return [ev("page_view", when, "busy") for _ in range(events)]


HOUR = timedelta(hours=1)

ALERT_CASES = {
    # 3 of 4 identifiers abandoned: 75% > 70% with >= 3 checkouts
    "abandonment_75": (checkouts(4, 1), ["high_abandonment"]),
    "abandonment_exactly_70": (checkouts(10, 3), []),  # 7 / 10 = 70.0, not above
    "abandonment_67": (checkouts(3, 1), []),
    "abandonment_too_few": (checkouts(2, 0), []),  # 100% but only 2 checkouts
    "abandonment_window_start": (checkouts(3, 0, NOW - 24 * HOUR), ["high_abandonment"]),
    "abandonment_before_window": (
        checkouts(3, 0, NOW - 24 * HOUR - timedelta(seconds=1)),
        [],
    ),
    "abandonment_after_now": (checkouts(3, 0, NOW), []),  # windows end at now
    "abandonment_sold_over_whatsapp": (
        [*checkouts(3, 0), *(ev("whatsapp_purchase", NOW - HOUR, f"c{i}") for i in range(3))],
        [],
    ),
    "popular_11_sessions": (viewers(11), ["popular_no_conversion"]),
    "popular_10_sessions_many_views": (viewers(10, views_each=3), []),
    "popular_but_bought": (
        [*viewers(11), ev("purchase", NOW - HOUR, "v0", product_slug="tee")],
        [],
    ),
    "popular_but_sold_over_whatsapp": (  # on a day wholly inside: the rollups rule it out
        [*viewers(11), ev("whatsapp_purchase", NOW - 3 * 24 * HOUR, "v0", product_slug="tee")],
        [],
    ),
    "popular_but_sold_over_whatsapp_today": (  # on a partial day: the raw events decide
        [*viewers(11), ev("whatsapp_purchase", NOW - HOUR, "v0", product_slug="tee")],
        [],
    ),
    "popular_before_window": (viewers(11, when=NOW - timedelta(days=7, seconds=1)), []),
    # Bought on the window's first or last local day, but outside the window: still unsold.
    "popular_bought_just_before_window": (
        [
            *viewers(11),
            ev("purchase", NOW - timedelta(days=7, seconds=1), "v0", product_slug="tee"),
        ],
        ["popular_no_conversion"],
    ),
    "popular_bought_at_now": (
        [*viewers(11), ev("purchase", NOW, "v0", product_slug="tee")],
        ["popular_no_conversion"],
    ),
    "popular_seen_at_both_edges": (
        [*viewers(6, when=NOW - timedelta(days=7)), *viewers(5, when=NOW - timedelta(seconds=1))],
        [],  # the same 5 sessions (v0..v4) at both edges: 6 distinct
    ),
    "payment_error_59_minutes_ago": (
        [ev("payment_error", NOW - timedelta(minutes=59), "p")],
        ["payment_errors"],
    ),
    "payment_error_61_minutes_ago": ([ev("payment_error", NOW - 61 * timedelta(minutes=1))], []),
    "checkout_error_is_not_payment_error": ([ev("checkout_error", NOW - HOUR / 2, "p")], []),
    "carts_5": (carts(5), ["carts_abandoned"]),
    "carts_5_one_checked_out": (
        [*carts(5), ev("checkout_started", NOW - HOUR, "a0")],
        [],
    ),
    "carts_5_one_began_checkout": (
        [*carts(5), ev("begin_checkout", NOW - HOUR, "a4")],
        [],
    ),
    "carts_4": (carts(4), []),
    "carts_5_one_sent_to_whatsapp": (  # the WhatsApp buy button: that shop's checkout
        [*carts(5), ev("whatsapp_cart_click", NOW - HOUR, "a1")],
        [],
    ),
    "carts_5_one_sold_over_whatsapp": (
        [*carts(5), ev("whatsapp_purchase", NOW - HOUR, "a2")],
        [],
    ),
    "carts_5_one_bought_without_checkout_events": (
        [*carts(5), ev("purchase", NOW - HOUR, "a3")],
        [],
    ),
    "carts_before_window": (carts(5, NOW - 6 * HOUR - timedelta(seconds=1)), []),
    "stuck_16_events": (busy_session(16), ["stuck_sessions"]),
    "stuck_15_events": (busy_session(15), []),
    "stuck_but_bought": ([*busy_session(15), ev("purchase", NOW - HOUR, "busy")], []),
    "stuck_but_sold_over_whatsapp": (
        [*busy_session(15), ev("whatsapp_purchase", NOW - HOUR, "busy")],
        [],
    ),
}


@pytest.mark.parametrize("zone", [ZoneInfo("UTC"), TEGUCIGALPA], ids=str)
@pytest.mark.parametrize("case", list(ALERT_CASES))
def test_alert_rules(app, make_tenant, store_events, case, zone):
    """Each rule at its thresholds and window edges, in two zones: the zone moves the local
    days of the rollups some rules start from, never the rolling windows themselves."""
    events, expected = ALERT_CASES[case]
    tenant = make_tenant(timezone=zone.key)
    store_events(tenant, events)
    quiet = make_tenant(timezone=zone.key)  # next to these events, it must see none of them
    alerts = smart_alerts(db.session, tenant_id=tenant.id, zone=zone, now=NOW)
    assert [alert["type"] for alert in alerts] == (expected or ["all_clear"])
    for alert in alerts:
        assert set(alert) == {"type", "message", "severity", "timestamp"}
        assert alert["timestamp"] == "2026-03-08T15:00:00+00:00"
    quiet_alerts = smart_alerts(db.session, tenant_id=quiet.id, zone=zone, now=NOW)
    assert [alert["type"] for alert in quiet_alerts] == ["all_clear"]


def test_the_rollups_rule_out_a_product_sold_over_whatsapp(app, make_tenant, store_events):
    """The rollups' pre-filter already drops a product sold over WhatsApp on a day wholly
    inside the window (the raw events are then not read for it)."""
    tenant, day = make_tenant(), timedelta(days=1)  # UTC: the days are NOW's dates
    store_events(
        tenant, [*viewers(11), ev("whatsapp_purchase", NOW - 3 * day, "v0", product_slug="tee")]
    )
    window = {"first": (NOW - 7 * day).date(), "last": NOW.date()}
    inside = ((NOW - 6 * day).date(), (NOW - day).date())
    found = store_rollups.maybe_popular_unbought(
        db.session,
        tenant_id=tenant.id,
        **window,
        whole_days=inside,
        viewed="product_view",
        bought=store_common.SALE_TYPES,
        more_than=10,
    )
    assert found == []
    unsold = store_rollups.maybe_popular_unbought(
        db.session,
        tenant_id=tenant.id,
        **window,
        whole_days=inside,
        viewed="product_view",
        bought=("purchase",),
        more_than=10,
    )
    assert unsold == ["tee"]  # what a purchase-only filter would have left to the raw read


def test_a_popular_product_is_named_as_in_the_catalogue(app, make_tenant, store_events):
    tenant, before, after = make_tenant(), make_tenant(), make_tenant()
    # Others' products of the same slug made before and after: whichever the rows'
    # order, only the tenant's own names it.
    create_product(db.session, before.id, name="Not this one", slug="tee")
    create_product(db.session, tenant.id, name="Camiseta", slug="tee")
    create_product(db.session, after.id, name="Nor this one", slug="tee")
    db.session.commit()
    store_events(tenant, viewers(12))
    alerts = smart_alerts(db.session, tenant_id=tenant.id, zone=ZoneInfo("UTC"), now=NOW)
    assert [a["message"] for a in alerts if a["type"] == "popular_no_conversion"] == [
        "Camiseta (tee): viewed in 12 sessions in the last 7 days and never bought."
    ]


def test_a_popular_product_missing_from_the_catalogue_is_named_as_its_views_were(
    app, make_tenant, store_events
):
    tenant, elsewhere = make_tenant(), make_tenant()
    views = [
        ev("product_view", NOW - timedelta(days=6), f"v{i}", product_slug="tee") for i in range(12)
    ]
    store_events(tenant, [*views, (*views[0][:2], {**views[0][2], "product_name": "Camiseta"})])
    store_events(
        elsewhere, [ev("product_view", NOW - HOUR, "x", product_slug="tee", product_name="Zzz")]
    )
    alerts = smart_alerts(db.session, tenant_id=tenant.id, zone=ZoneInfo("UTC"), now=NOW)
    assert [a["message"] for a in alerts if a["type"] == "popular_no_conversion"] == [
        "Camiseta (tee): viewed in 12 sessions in the last 7 days and never bought."
    ]


def test_alert_severities_and_messages(app, make_tenant, store_events):
    tenant = make_tenant()
    store_events(
        tenant,
        [
            *checkouts(4, 1),
            *viewers(12),
            ev("payment_error", NOW - HOUR / 2, "p"),
            ev("payment_error", NOW - HOUR / 3, "p"),
            *carts(6),
            *busy_session(16),
        ],
    )
    alerts = smart_alerts(db.session, tenant_id=tenant.id, zone=ZoneInfo("UTC"), now=NOW)
    assert [(a["type"], a["severity"]) for a in alerts] == [
        ("high_abandonment", "critical"),
        ("popular_no_conversion", "warning"),
        ("payment_errors", "critical"),
        ("carts_abandoned", "warning"),
        ("stuck_sessions", "info"),
    ]
    TypeAdapter(list[Alert]).validate_python(alerts)  # the types and severities it documents
    assert [a["message"] for a in alerts] == [
        "75.0% of checkouts in the last 24 hours ended without a sale (3 of 4).",
        "tee: viewed in 12 sessions in the last 7 days and never bought.",
        "Payment errors in the last hour: 2.",
        # a0..a5 added to the cart; the checkout sessions c0..c3 did not
        "6 sessions added to the cart in the last 6 hours without starting checkout.",
        "Sessions with more than 15 events and no sale in the last 24 hours: 1.",
    ]


def test_all_clear(app, make_tenant):
    alerts = smart_alerts(db.session, tenant_id=make_tenant().id, zone=ZoneInfo("UTC"), now=NOW)
    assert alerts == [
        {
            "type": "all_clear",
            "message": "No issues detected.",
            "severity": "info",
            "timestamp": "2026-03-08T15:00:00+00:00",
        }
    ]


# -- endpoints ------------------------------------------------------------------------


@pytest.fixture
def owner(make_tenant, make_user, auth_headers):
    tenant = make_tenant()  # UTC
    return tenant, auth_headers(make_user(tenant))


@pytest.fixture
def clock(monkeypatch):
    """The endpoints read ``NOW``: an event a second before it is today's, even at 00:00."""
    monkeypatch.setattr("tenant_analytics.api.store_reports.utcnow", lambda: NOW)


def test_dashboard_endpoint(client, clock, owner, store_events):
    tenant, headers = owner
    sale = ev("purchase", NOW - timedelta(seconds=1), "s", revenue=Decimal("12.5"))
    store_events(tenant, [sale])
    for mode, query in (("total", ""), ("total", "?mode=total"), ("unique", "?mode=unique")):
        response = client.get(f"/api/analytics/{tenant.id}/dashboard-stats{query}", headers=headers)
        assert response.status_code == 200
        body = response.get_json()
        assert set(body) == DASHBOARD_FIELDS
        assert (body["mode"], body["total_sales"], body["total_revenue"]) == (mode, 1, 12.5)
        assert len(body["sales_by_day"]) == len(body["events_timeline"]) == 7
        assert body["sales_by_day"][-1] == {"date": "2026-03-08", "count": 1}


@pytest.mark.parametrize("report", ["dashboard-stats", "funnel", "rfm", "alerts"])
def test_one_tenants_reports_at_once_are_bounded_and_others_unaffected(
    client, owner, make_tenant, make_user, auth_headers, is_postgres, report
):
    """A store report is a second's work at a few million events: one owner sending dozens
    at once held every pooled connection (a helper: other tenants' events took 12 s, some
    a 503 after 30 s). Past OWNER_REPORTS_AT_ONCE the tenant's next is a 429 at once."""
    if not is_postgres:
        pytest.skip("the slots are PostgreSQL's advisory locks (SQLite: one writer)")
    from sqlalchemy import text

    from tenant_analytics.ratelimits import REPORT_SLOT_LOCKS

    tenant, headers = owner
    other = make_tenant()
    other_headers = auth_headers(make_user(other))
    url = f"/api/analytics/{tenant.id}/{report}"
    in_flight = []  # reports under way elsewhere (another worker, another host)
    try:
        for slot in range(client.application.config["OWNER_REPORTS_AT_ONCE"]):
            connection = db.engine.connect()
            in_flight.append(connection)
            lock = text("SELECT pg_advisory_xact_lock(:lock, :tenant)")
            connection.execute(lock, {"lock": REPORT_SLOT_LOCKS + slot, "tenant": tenant.id})
        refused = client.get(url, headers=headers)
        assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
        assert refused.get_json()["error"] == "rate_limited"
        answer = client.get(f"/api/analytics/{other.id}/{report}", headers=other_headers)
        assert answer.status_code == 200  # another tenant's slots are its own
        in_flight.pop().close()  # one report done
        assert client.get(url, headers=headers).status_code == 200
        assert client.get(url, headers=headers).status_code == 200  # its slot let go
    finally:
        for connection in in_flight:
            connection.close()


def test_dashboard_never_adds_up_two_currencies(client, owner, monkeypatch):
    """A bakery selling in lempiras whose tourists pay some orders in dollars (the
    conversion beacon names its currency): 130 HNL and 50 USD are not 180 of anything."""
    tenant, headers = owner
    sales = [
        ("/api/analytics/track", {"tenant_id": tenant.id, "event_type": "purchase", "price": 100}),
        ("/api/analytics/track", {"tenant_id": tenant.id, "event_type": "purchase"}),  # no price
        (
            "/api/v1/analytics/conversion",
            {"tenant_slug": tenant.slug, "transaction_id": "t1", "value": 30, "currency": "HNL"},
        ),
        (
            "/api/v1/analytics/conversion",
            {"tenant_slug": tenant.slug, "transaction_id": "t2", "value": 50, "currency": "usd"},
        ),
    ]
    for url, body in sales:
        assert client.post(url, json=body).status_code in (200, 201)
    now = utcnow()  # the endpoint's and the query's "now": the same day, even at midnight
    monkeypatch.setattr("tenant_analytics.api.store_reports.utcnow", lambda: now)
    url = f"/api/analytics/{tenant.id}/dashboard-stats"
    for query in ("", "?mode=unique"):
        body = client.get(url + query, headers=headers).get_json()
        assert body["total_sales"] == 4  # every sale, whatever it was paid in
        assert (body["currency"], body["total_revenue"]) == ("HNL", 130.0)
        assert body["average_order_value"] == 43.33  # 130 / the 3 sales in HNL
        assert body["revenue_by_currency"] == {"HNL": 130.0, "USD": 50.0}
        raw = dashboard_stats(
            db.session,
            tenant_id=tenant.id,
            zone=ZoneInfo("UTC"),
            now=now,
            mode=body["mode"],
            currency="HNL",
            use_rollups=False,
        )
        assert body == json.loads(json.dumps(raw))

    # The owner switches to dollars: the dollar sales are the total, lempiras listed beside.
    assert client.patch(f"/api/tenants/{tenant.id}", headers=headers, json={"currency": "USD"})
    body = client.get(url, headers=headers).get_json()
    # The sale without a price has no currency: it is one of the tenant's, now dollars.
    assert (body["currency"], body["total_revenue"], body["average_order_value"]) == (
        "USD",
        50.0,
        25.0,
    )
    assert body["revenue_by_currency"] == {"HNL": 130.0, "USD": 50.0}


@pytest.mark.parametrize("mode", ["bogus", "", "TOTAL", "unique "])
def test_dashboard_endpoint_rejects_unknown_mode(client, owner, mode):
    tenant, headers = owner
    response = client.get(
        f"/api/analytics/{tenant.id}/dashboard-stats", query_string={"mode": mode}, headers=headers
    )
    assert response.status_code == 422
    body = response.get_json()
    assert (body["success"], body["error"]) == (False, "validation_error")
    assert list(body["errors"]) == ["mode"]


def test_funnel_endpoint(client, clock, owner, store_events):
    tenant, headers = owner
    store_events(tenant, [ev("page_view", NOW - timedelta(seconds=1), "s", source="google")])
    body = client.get(f"/api/analytics/{tenant.id}/funnel", headers=headers).get_json()
    assert body["start_date"] == "2026-02-06T00:00:00"  # 30 days before 8 March
    assert body["end_date"] == "2026-03-08T23:59:59"
    assert body["funnel"][0] == {"step": "page_view", "count": 1}
    assert [step["step"] for step in body["funnel"]] == [
        "page_view",
        "product_view",
        "add_to_cart",
        "begin_checkout",
        "purchase",
    ]
    dated = client.get(
        f"/api/analytics/{tenant.id}/funnel",
        query_string={"start": "2024-05-01", "end": "2024-05-31", "source": "google"},
        headers=headers,
    ).get_json()
    assert (dated["start_date"], dated["end_date"]) == (
        "2024-05-01T00:00:00",
        "2024-05-31T23:59:59",
    )
    assert dated["funnel"][0]["count"] == 0
    same_day = {"start": "2026-03-08", "end": "2026-03-08", "source": "google"}
    counted = client.get(
        f"/api/analytics/{tenant.id}/funnel", query_string=same_day, headers=headers
    ).get_json()
    assert counted["funnel"][0]["count"] == 1


def test_funnel_default_start_never_precedes_the_earliest_date(client, owner):
    tenant, headers = owner
    body = client.get(
        f"/api/analytics/{tenant.id}/funnel", query_string={"end": "1970-01-05"}, headers=headers
    ).get_json()
    assert (body["start_date"], body["end_date"]) == ("1970-01-01T00:00:00", "1970-01-05T23:59:59")


@pytest.mark.parametrize(
    ("endpoint", "query", "field"),
    [
        ("funnel", {"start": "2024-13-01"}, "start"),
        ("funnel", {"start": "2024-5-1"}, "start"),
        ("funnel", {"start": "20240501"}, "start"),
        ("funnel", {"end": "yesterday"}, "end"),
        ("funnel", {"end": ""}, "end"),
        ("funnel", {"start": "2024-05-01T00:00:00"}, "start"),
        ("funnel", {"start": "0001-01-01"}, "start"),  # out of range: no overflow, a 422
        ("funnel", {"end": "9999-12-31"}, "end"),
        ("funnel", {"start": "2024-05-02", "end": "2024-05-01"}, "start"),  # start after end
        ("funnel", {"start": "2999-01-01"}, "start"),  # after the default end (today)
        ("funnel", {"source": "a\x00b"}, "source"),  # PostgreSQL cannot take NUL: once a 500
        ("funnel", {"source": "s" * 101}, "source"),  # longer than any stored source
        ("rfm", {"limit": "1001"}, "limit"),
        ("rfm", {"limit": "-1"}, "limit"),
        ("rfm", {"limit": "ten"}, "limit"),
        ("rfm", {"limit": "\uff11"}, "limit"),  # a full-width 1: isdigit() alone would take it
        ("rfm", {"offset": "9" * 5000}, "offset"),  # int() refuses over 4300 digits: once a 500
        ("rfm", {"offset": "1.5"}, "offset"),
        ("rfm", {"segment": "gold"}, "segment"),
    ],
)
def test_report_endpoints_reject_bad_arguments(client, owner, endpoint, query, field):
    tenant, headers = owner
    response = client.get(
        f"/api/analytics/{tenant.id}/{endpoint}", query_string=query, headers=headers
    )
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "validation_error" and list(body["errors"]) == [field]


def test_rfm_endpoint_uses_the_tenant_threshold(
    client, clock, make_tenant, make_user, auth_headers, store_events
):
    tenant = make_tenant(vip_monetary_threshold=Decimal("20"))
    recent = NOW - timedelta(seconds=2)
    store_events(tenant, [buy("ana", recent - timedelta(seconds=1)), buy("ana", recent, "10.50")])
    body = client.get(
        f"/api/analytics/{tenant.id}/rfm", headers=auth_headers(make_user(tenant))
    ).get_json()
    assert body["rfm"] == [
        {
            "visitor_id": "ana",
            "recency": 0,
            "frequency": 2,
            "monetary": 20.5,  # 10 + 10.50 >= 20
            "segment": "VIP",
            "segmento": "VIP",
        }
    ]
    assert body["end_date"] == "2026-03-08T23:59:59"
    assert body["start_date"] == "2025-12-08T00:00:00"  # 90 days before 8 March


def test_rfm_endpoint_pages_and_filters(client, owner, store_events):
    tenant, headers = owner
    recent = utcnow() - timedelta(seconds=2)
    store_events(tenant, [buy(f"c{i}", recent, str(10 + i)) for i in range(5)])
    url = f"/api/analytics/{tenant.id}/rfm"

    body = client.get(url, query_string={"limit": 2, "offset": 1}, headers=headers).get_json()
    assert [row["visitor_id"] for row in body["rfm"]] == ["c3", "c2"]  # biggest first
    assert (body["total"], body["offset"], body["limit"], body["next_offset"]) == (5, 1, 2, 3)
    assert body["segments"] == {"VIP": 0, "Loyal": 5, "At Risk": 0, "Lost": 0}
    for name in ("loyal", "Leal", " LEAL "):
        body = client.get(url, query_string={"segment": name}, headers=headers).get_json()
        assert body["total"] == 5, name
    body = client.get(url, query_string={"segment": "en riesgo"}, headers=headers).get_json()
    assert (body["rfm"], body["total"]) == ([], 0)


def test_alerts_endpoint(client, owner, store_events):
    tenant, headers = owner
    body = client.get(f"/api/analytics/{tenant.id}/alerts", headers=headers).get_json()
    assert [alert["type"] for alert in body["alerts"]] == ["all_clear"]
    assert datetime.fromisoformat(body["alerts"][0]["timestamp"]).utcoffset() == timedelta(0)
    store_events(tenant, [ev("payment_error", utcnow() - timedelta(minutes=5), "p")])
    body = client.get(f"/api/analytics/{tenant.id}/alerts", headers=headers).get_json()
    assert [(a["type"], a["severity"]) for a in body["alerts"]] == [("payment_errors", "critical")]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_endpoints_need_a_token(client, make_tenant, endpoint):
    response = client.get(f"/api/analytics/{make_tenant().id}/{endpoint}")
    assert response.status_code == 401
    assert response.get_json()["success"] is False


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_owner_of_another_tenant_gets_404(client, make_tenant, make_user, auth_headers, endpoint):
    mine, theirs = make_tenant(), make_tenant()
    headers = auth_headers(make_user(mine))
    forbidden = client.get(f"/api/analytics/{theirs.id}/{endpoint}", headers=headers)
    missing = client.get(f"/api/analytics/987654/{endpoint}", headers=headers)
    assert forbidden.status_code == missing.status_code == 404
    assert forbidden.get_json() == missing.get_json()  # no hint that the tenant exists
    assert client.get(f"/api/analytics/{mine.id}/{endpoint}", headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("endpoint", "figure", "first", "second"),
    [
        ("dashboard-stats", lambda body: body["total_sales"], 1, 2),
        ("funnel", lambda body: body["funnel"][-1]["count"], 1, 2),  # sessions that bought
        (
            "rfm",
            lambda body: sorted(row["visitor_id"] for row in body["rfm"]),
            ["ana"],
            ["bo", "cy"],
        ),
        (
            "alerts",
            lambda body: [alert["type"] for alert in body["alerts"]],
            ["all_clear"],
            ["payment_errors"],
        ),
    ],
)
def test_admin_reads_any_tenant(
    client,
    clock,
    make_tenant,
    make_user,
    auth_headers,
    store_events,
    endpoint,
    figure,
    first,
    second,
):
    """Each id shows that tenant's own figures, not another's."""
    one, two = make_tenant(), make_tenant()
    recent = NOW - timedelta(minutes=5)
    store_events(one, [ev("purchase", recent, "s1", user_id="ana", revenue=Decimal("10"))])
    store_events(
        two,
        [
            ev("purchase", recent, "s2", user_id="bo", revenue=Decimal("10")),
            ev("purchase", recent, "s3", user_id="cy", revenue=Decimal("10")),
            ev("payment_error", recent, "s3"),
        ],
    )
    headers = auth_headers(make_user(admin=True))
    for tenant, expected in ((one, first), (two, second)):
        response = client.get(f"/api/analytics/{tenant.id}/{endpoint}", headers=headers)
        assert response.status_code == 200
        assert figure(response.get_json()) == expected


def test_alert_subqueries_stay_in_the_tenant(app, make_tenant, store_events):
    """A neighbour's purchases and checkouts by the same sessions do not settle ours."""
    tenant, neighbour = make_tenant(), make_tenant()
    store_events(tenant, [*checkouts(3, 0), *carts(5)])
    later = NOW - HOUR / 2
    store_events(
        neighbour,
        [ev("purchase", later, f"c{i}") for i in range(3)]
        + [ev("checkout_started", later, f"a{i}") for i in range(5)],
    )
    alerts = smart_alerts(db.session, tenant_id=tenant.id, zone=ZoneInfo("UTC"), now=NOW)
    assert [alert["type"] for alert in alerts] == ["high_abandonment", "carts_abandoned"]
