"""Owner dashboards: hand-computed figures, local days, and tenant isolation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event

from tenant_analytics.extensions import db
from tenant_analytics.queries.landing import landing_summary, today_summary

TEGUCIGALPA = ZoneInfo("America/Tegucigalpa")  # UTC-6, no daylight saving
NOW = datetime(2026, 3, 8, 15, 0, tzinfo=UTC)  # 09:00 on 8 March in Tegucigalpa


def local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=TEGUCIGALPA)


@pytest.fixture
def week(make_tenant, add_events):
    """A week in Tegucigalpa, figures worked out by hand in the tests below."""
    tenant = make_tenant(timezone="America/Tegucigalpa")
    add_events(
        tenant,
        [
            ("pageview", local(1, 23, 59), "10.0.0.9", None),  # 8 days ago: outside
            ("pageview", local(2, 0, 0), "10.0.0.1", None),  # first instant of the window
            ("click_whatsapp", local(2, 10), "10.0.0.1", None),
            ("pageview", local(5, 12), "10.0.0.2", None),
            ("time_on_page", local(5, 12), "10.0.0.2", {"seconds": 10}),
            ("time_on_page", local(6, 12), "10.0.0.1", {"seconds": 25}),
            ("click_call", local(6, 13), "10.0.0.1", None),
            # 20:30 on 7 March local is 02:30 on 8 March UTC: yesterday for this tenant.
            ("pageview", local(7, 20, 30), "10.0.0.3", None),
            ("click_toggle_currency", local(7, 20, 31), "10.0.0.3", None),
            ("pageview", local(8, 0, 5), "10.0.0.1", None),
            ("qr_scan", local(8, 8), "10.0.0.4", None),
            ("product_click", local(8, 8, 1), "10.0.0.4", {"product_id": 3}),
            ("product_click", local(8, 8, 2), "10.0.0.4", {"product_id": 4}),
            ("click_whatsapp", local(8, 8, 3), "10.0.0.4", None),
            ("pageview", local(9, 0, 0), "10.0.0.5", None),  # tomorrow: outside
        ],
    )
    return tenant


def test_landing_summary_in_local_days(app, week):
    summary = landing_summary(db.session, tenant_id=week.id, zone=TEGUCIGALPA, now=NOW)
    assert summary.visitors_today == 2  # .1 and .4
    assert summary.visitors_week == 4  # .1 .2 .3 .4, each once
    assert summary.whatsapp_clicks == 2
    assert summary.call_clicks == 1
    assert summary.currency_toggles == 1
    assert summary.qr_scans == 1
    assert summary.avg_time_on_page == 18  # (10 + 25) / 2 = 17.5, rounded half-up
    assert summary.page_views == 4  # 2, 5, 7 (20:30 local) and 8 March
    assert [(d.date, d.visitors) for d in summary.last_7_days] == [
        ("2026-03-02", 1),
        ("2026-03-03", 0),
        ("2026-03-04", 0),
        ("2026-03-05", 1),
        ("2026-03-06", 1),
        ("2026-03-07", 1),
        ("2026-03-08", 2),
    ]


def test_today_summary_in_local_day(app, week):
    summary = today_summary(db.session, tenant_id=week.id, zone=TEGUCIGALPA, now=NOW)
    assert summary.date == "2026-03-08"
    late = today_summary(  # 9 pm
        db.session, tenant_id=week.id, zone=TEGUCIGALPA, now=NOW + timedelta(hours=12)
    )
    assert late.date == "2026-03-08"  # already 9 March in UTC
    assert (
        summary.visitors_today,
        summary.whatsapp_clicks,
        summary.qr_scans,
        summary.products_viewed,
        summary.call_clicks,  # the call on 6 March is not today's
    ) == (2, 1, 1, 2, 0)


def test_utc_days_would_differ(app, week):
    """The same events read in UTC put the evening visitor on 8 March: zones matter."""
    summary = landing_summary(db.session, tenant_id=week.id, zone=ZoneInfo("UTC"), now=NOW)
    assert summary.last_7_days[-1].visitors == 3


def test_empty_tenant_is_all_zeros(app, make_tenant):
    tenant = make_tenant()
    summary = landing_summary(db.session, tenant_id=tenant.id, zone=TEGUCIGALPA, now=NOW)
    assert summary.visitors_week == 0 and summary.avg_time_on_page == 0
    assert [d.visitors for d in summary.last_7_days] == [0] * 7


@pytest.fixture
def clock(monkeypatch):
    """The endpoints read ``NOW``: an event a minute before it is today's, even at 00:00."""
    monkeypatch.setattr("tenant_analytics.api.dashboards.utcnow", lambda: NOW)


def test_dashboard_endpoint_shape(client, clock, make_tenant, make_user, auth_headers, add_events):
    tenant = make_tenant()  # UTC
    add_events(tenant, [("pageview", NOW - timedelta(minutes=1), "10.1.1.1", None)])
    response = client.get(f"/api/analytics/{tenant.id}", headers=auth_headers(make_user(tenant)))
    assert response.status_code == 200
    body = response.get_json()
    assert body["success"] is True
    data = body["data"]
    assert data["visitors_today"] == 1 and data["visitors_week"] == 1
    assert len(data["last_7_days"]) == 7
    assert data["last_7_days"][-1] == {"date": "2026-03-08", "visitors": 1}


def test_today_endpoint_shape(client, clock, make_tenant, make_user, auth_headers, add_events):
    tenant = make_tenant()
    a_minute_ago = NOW - timedelta(minutes=1)
    add_events(
        tenant,
        [
            ("qr_scan", a_minute_ago, "10.1.1.1", None),
            ("click_call", a_minute_ago, "10.1.1.1", None),
            ("click_call", a_minute_ago, "10.1.1.2", None),
        ],
    )
    response = client.get(
        f"/api/analytics/{tenant.id}/today", headers=auth_headers(make_user(tenant))
    )
    assert response.get_json() == {
        "success": True,
        "date": "2026-03-08",
        "visitors_today": 2,
        "whatsapp_clicks": 0,
        "qr_scans": 1,
        "products_viewed": 0,
        "call_clicks": 2,
    }


@pytest.mark.parametrize("path", ["/api/analytics/{id}", "/api/analytics/{id}/today"])
def test_owner_of_another_tenant_gets_404(client, make_tenant, make_user, auth_headers, path):
    mine, theirs = make_tenant(), make_tenant()
    headers = auth_headers(make_user(mine))
    forbidden = client.get(path.format(id=theirs.id), headers=headers)
    missing = client.get(path.format(id=987_654), headers=headers)
    huge = client.get(path.format(id=2**40), headers=headers)
    assert forbidden.status_code == missing.status_code == huge.status_code == 404
    assert forbidden.get_json() == missing.get_json()  # no hint that the tenant exists


@pytest.mark.parametrize("path", ["/api/tenants/{id}", "/api/analytics/{id}/dashboard-stats"])
def test_another_tenants_id_costs_the_same_queries_as_a_free_one(
    client, make_tenant, make_user, auth_headers, path
):
    mine, theirs = make_tenant(), make_tenant()
    headers = auth_headers(make_user(mine))
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement)

    def queries_for(tenant_id: int) -> list[str]:
        statements.clear()
        assert client.get(path.format(id=tenant_id), headers=headers).status_code == 404
        return list(statements)

    queries_for(987_654)  # anything a first request loads once
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        assert queries_for(theirs.id) == queries_for(987_654)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


@pytest.fixture
def two_tenants(clock, make_tenant, add_events):
    """Two tenants with different figures today: one visitor and no scan, two and a scan."""
    one, two = make_tenant(), make_tenant()
    a_minute_ago = NOW - timedelta(minutes=1)
    add_events(one, [("pageview", a_minute_ago, "10.1.1.1", None)])
    add_events(
        two,
        [
            ("pageview", a_minute_ago, "10.2.2.1", None),
            ("pageview", a_minute_ago, "10.2.2.2", None),
            ("qr_scan", a_minute_ago, "10.2.2.2", None),
        ],
    )
    return one, two


def figures(client, tenant, headers) -> tuple[int, int]:
    """Today's visitors and QR scans as the tenant's dashboard shows them."""
    response = client.get(f"/api/analytics/{tenant.id}", headers=headers)
    assert response.status_code == 200
    data = response.get_json()["data"]
    return data["visitors_today"], data["qr_scans"]


def test_admin_reads_any_tenant(client, two_tenants, make_user, auth_headers):
    """Each id shows that tenant's own figures, not another's."""
    one, two = two_tenants
    headers = auth_headers(make_user(admin=True))
    assert figures(client, one, headers) == (1, 0)
    assert figures(client, two, headers) == (2, 1)


def test_user_owning_two_tenants_reads_both(client, two_tenants, make_user, auth_headers):
    one, two = two_tenants
    headers = auth_headers(make_user(one, two))
    assert figures(client, one, headers) == (1, 0)
    assert figures(client, two, headers) == (2, 1)


def test_other_tenants_events_are_not_counted(app, make_tenant, add_events):
    quiet, busy = make_tenant(), make_tenant()
    add_events(busy, [("pageview", NOW - timedelta(hours=1), "10.0.0.1", None)])
    summary = landing_summary(db.session, tenant_id=quiet.id, zone=ZoneInfo("UTC"), now=NOW)
    assert summary.visitors_week == 0


def test_a_stored_zone_this_hosts_tz_data_lacks_is_utc_and_said_once(
    client, make_tenant, make_user, auth_headers, caplog
):
    """Taken when set, unknown now: this host's tz data is older than the one that took it."""
    zone = f"America/Nowhere_{uuid.uuid4().hex[:8]}"  # said once per process and name
    tenant = make_tenant(timezone=zone)
    headers = auth_headers(make_user(tenant))
    for _ in range(2):
        answer = client.get(f"/api/analytics/{tenant.id}/today", headers=headers)
        assert answer.status_code == 200
    said = [r.getMessage() for r in caplog.records if r.name == "tenant_analytics.timewindows"]
    assert said == [f"time zone '{zone}' is unknown to this host's tz data: days counted in UTC"]
