"""Owners read and change their tenants and products; never another tenant's."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.pool import NullPool

from tenant_analytics import cli, tenant_data
from tenant_analytics.api import tenants as tenant_settings_api
from tenant_analytics.api.tenants import ExportCutShort
from tenant_analytics.errors import deleted_meanwhile
from tenant_analytics.extensions import db
from tenant_analytics.models import DailyEventCount, Product, Tenant, utcnow
from tenant_analytics.queries.store_dashboard import dashboard_stats
from tenant_analytics.rollups import ROLLUP_LOCK, rebuild_rollups

from .test_rollups import rollup_snapshot


@pytest.fixture
def owner(make_tenant, make_user, auth_headers):
    tenant = make_tenant(timezone="America/Tegucigalpa")
    return tenant, auth_headers(make_user(tenant))


def test_list_only_my_tenants(client, make_tenant, make_user, auth_headers):
    mine, _theirs = make_tenant(), make_tenant()
    body = client.get("/api/tenants", headers=auth_headers(make_user(mine))).get_json()
    assert [t["id"] for t in body["tenants"]] == [mine.id]
    admin = client.get("/api/tenants", headers=auth_headers(make_user(admin=True))).get_json()
    assert len(admin["tenants"]) == 2


def test_get_and_patch_tenant(client, owner):
    tenant, headers = owner
    got = client.get(f"/api/tenants/{tenant.id}", headers=headers).get_json()["tenant"]
    assert (got["currency"], got["timezone"]) == ("HNL", "America/Tegucigalpa")
    patched = client.patch(
        f"/api/tenants/{tenant.id}",
        headers=headers,
        json={
            "name": "Nuevo",
            "timezone": "Europe/Madrid",
            "currency": "eur",
            "vip_monetary_threshold": 650,
        },
    )
    assert patched.status_code == 200
    data = patched.get_json()["tenant"]
    assert (data["name"], data["timezone"], data["currency"], data["vip_monetary_threshold"]) == (
        "Nuevo",
        "Europe/Madrid",
        "EUR",
        650.0,
    )


def test_an_id_in_a_path_is_spelt_one_way(client, owner):
    """ASCII digits without leading zeros: an Arabic-Indic or a full-width one, or "01",
    were tenant 1 too, spellings a proxy's or a log's rule for its path would miss."""
    tenant, headers = owner
    arabic_indic = "".join(chr(0x660 + int(digit)) for digit in str(tenant.id))
    full_width = "".join(chr(0xFF10 + int(digit)) for digit in str(tenant.id))
    assert client.get(f"/api/tenants/{tenant.id}", headers=headers).status_code == 200
    for spelling in (f"0{tenant.id}", arabic_indic, full_width):
        assert client.get(f"/api/tenants/{spelling}", headers=headers).status_code == 404
        patched = client.patch(f"/api/tenants/{spelling}", headers=headers, json={"name": "X"})
        assert patched.status_code == 404
        assert patched.get_json()["error"] == "not_found"
        assert client.get(f"/api/analytics/{spelling}", headers=headers).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "America"}, "timezone"),  # a directory of the zone database, once a 500
        ({"timezone": "localtime"}, "timezone"),  # the host's zone, not an IANA one
        ({"timezone": "posixrules"}, "timezone"),
        ({"currency": "EURO"}, "currency"),
        ({"currency": "QQQ"}, "currency"),  # three letters, but no ISO 4217 currency
        # ISO 4217 codes that are no money a shop sells in: none, testing, gold, the SDR
        ({"currency": "XXX"}, "currency"),
        ({"currency": "XTS"}, "currency"),
        ({"currency": "XAU"}, "currency"),
        ({"currency": "XDR"}, "currency"),
        # units of account and funds: the SUCRE, the UF (a price in UF is paid in CLP)
        ({"currency": "XSU"}, "currency"),
        ({"currency": "clf"}, "currency"),
        ({"currency": "USN"}, "currency"),
        ({"name": None}, "name"),
        ({"active": "maybe"}, "active"),
        ({"active": "yes"}, "active"),  # only JSON true and false switch a tenant
        ({"vip_monetary_threshold": -1}, "vip_monetary_threshold"),
    ],
)
def test_patch_tenant_validation(client, owner, body, field):
    tenant, headers = owner
    response = client.patch(f"/api/tenants/{tenant.id}", headers=headers, json=body)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("", "patch", {"timezon": "America/Tegucigalpa"}),
        ("/products", "post", {"name": "Pan", "prize": 12}),
        ("/products/PRODUCT", "patch", {"actve": False}),
    ],
)
def test_a_misspelt_setting_is_refused_not_ignored(client, owner, path, method, body):
    """An owner's typo once answered 200 and changed nothing."""
    tenant, headers = owner
    url = f"/api/tenants/{tenant.id}"
    product = client.post(f"{url}/products", headers=headers, json={"name": "Pan"}).get_json()
    response = getattr(client, method)(
        url + path.replace("PRODUCT", str(product["product"]["id"])), headers=headers, json=body
    )
    assert response.status_code == 422
    (misspelt,) = body.keys() - {"name"}
    assert response.get_json()["errors"] == {misspelt: ["Not a field of this request"]}
    listed = client.get(f"{url}/products", headers=headers).get_json()["products"]
    assert [p["active"] for p in listed] == [True]  # nothing else was created or changed


def test_an_owner_lists_its_own_products_only(client, owner, make_tenant, make_user, auth_headers):
    tenant, headers = owner
    other = make_tenant()
    other_headers = auth_headers(make_user(other))
    for shop, their_headers, name in ((tenant, headers, "Pan"), (other, other_headers, "Café")):
        created = client.post(
            f"/api/tenants/{shop.id}/products", headers=their_headers, json={"name": name}
        )
        assert created.status_code == 201
    listed = client.get(f"/api/tenants/{tenant.id}/products", headers=headers).get_json()
    assert [product["name"] for product in listed["products"]] == ["Pan"]


def test_product_lifecycle(client, owner):
    tenant, headers = owner
    url = f"/api/tenants/{tenant.id}/products"
    created = client.post(
        url, headers=headers, json={"name": "Pan dulce", "slug": "pan", "price": "12.50"}
    )
    assert created.status_code == 201
    product = created.get_json()["product"]
    assert (product["name"], product["price"], product["active"]) == ("Pan dulce", 12.5, True)
    duplicate = client.post(url, headers=headers, json={"name": "Otro", "slug": "pan"})
    assert duplicate.status_code == 409
    patched = client.patch(f"{url}/{product['id']}", headers=headers, json={"price": 14})
    assert patched.get_json()["product"]["price"] == 14.0
    for odd in ("1e3", "1_000", "\u0661\u0662"):  # no amount as the schema shows one
        refused = client.patch(f"{url}/{product['id']}", headers=headers, json={"price": odd})
        assert (refused.status_code, list(refused.get_json()["errors"])) == (422, ["price"])
    threshold = {"vip_monetary_threshold": "1e3"}
    refused = client.patch(f"/api/tenants/{tenant.id}", headers=headers, json=threshold)
    assert (refused.status_code, list(refused.get_json()["errors"])) == (
        422,
        ["vip_monetary_threshold"],
    )
    deleted = client.delete(f"{url}/{product['id']}", headers=headers)
    assert deleted.get_json()["product"]["active"] is False
    listed = client.get(url, headers=headers).get_json()["products"]
    assert [(p["id"], p["active"]) for p in listed] == [(product["id"], False)]
    assert db.session.get(Product, (tenant.id, product["id"])) is not None  # history stays


def test_same_slug_in_two_tenants_is_fine(client, make_tenant, make_user, auth_headers):
    """Each tenant's "pan" is its own product, stored under that tenant."""
    first, second = make_tenant(), make_tenant()
    headers = auth_headers(make_user(first, second))
    names = {first.id: "Pan blanco", second.id: "Pan dulce"}
    for tenant_id, name in names.items():
        response = client.post(
            f"/api/tenants/{tenant_id}/products",
            headers=headers,
            json={"name": name, "slug": "pan"},
        )
        assert response.status_code == 201
        assert response.get_json()["product"]["tenant_id"] == tenant_id
    db.session.expire_all()
    stored = db.session.execute(select(Product.tenant_id, Product.slug, Product.name)).all()
    assert sorted(stored) == [
        (first.id, "pan", "Pan blanco"),
        (second.id, "pan", "Pan dulce"),
    ]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/tenants/{t}"),
        ("patch", "/api/tenants/{t}"),
        ("get", "/api/tenants/{t}/qr"),
        ("get", "/api/tenants/{t}/products"),
        ("post", "/api/tenants/{t}/products"),
        ("patch", "/api/tenants/{t}/products/{p}"),
        ("delete", "/api/tenants/{t}/products/{p}"),
    ],
)
def test_another_tenants_resources_are_404(
    client, make_tenant, make_user, auth_headers, method, path
):
    mine, theirs = make_tenant(), make_tenant()
    theirs_headers = auth_headers(make_user(theirs))
    product = client.post(
        f"/api/tenants/{theirs.id}/products", headers=theirs_headers, json={"name": "Secreto"}
    ).get_json()["product"]
    headers = auth_headers(make_user(mine))
    url = path.format(t=theirs.id, p=product["id"])
    response = getattr(client, method)(url, headers=headers, json={"name": "Hacked"})
    assert response.status_code == 404
    # and my own tenant cannot reach their product either
    own_url = f"/api/tenants/{mine.id}/products/{product['id']}"
    assert client.patch(own_url, headers=headers, json={"name": "Hacked"}).status_code == 404
    assert db.session.get(Product, (theirs.id, product["id"])).name == "Secreto"


def test_cli_product_create(runner, make_tenant):
    tenant = make_tenant()
    result = runner.invoke(
        args=[
            "product",
            "create",
            "--tenant",
            str(tenant.id),
            "--name",
            "Torta",
            "--slug",
            "torta",
            "--price",
            "35.5",
        ]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["tenant_id"], data["name"], data["price"]) == (tenant.id, "Torta", 35.5)
    again = runner.invoke(
        args=["product", "create", "--tenant", str(tenant.id), "--name", "T", "--slug", "torta"]
    )
    assert again.exit_code == 1
    missing = runner.invoke(args=["product", "create", "--tenant", "999", "--name", "T"])
    assert missing.exit_code == 1


def test_new_timezone_recounts_the_dashboards_days(client, owner, store_events):
    """The rollups key events by local day: a new zone moves them to other days."""
    tenant, headers = owner
    now = utcnow()
    # A purchase at 03:00 UTC today: yesterday in Tegucigalpa, today in UTC.
    at = now.replace(hour=3, minute=0, second=0, microsecond=0)
    if at > now:
        at -= timedelta(days=1)
    store_events(tenant, [("purchase", at, {"session_id": "s1", "source": "google"})])
    url = f"/api/analytics/{tenant.id}/dashboard-stats"
    before = client.get(url, headers=headers).get_json()["sales_by_day"]
    assert client.patch(f"/api/tenants/{tenant.id}", headers=headers, json={"timezone": "UTC"})
    after = client.get(url, headers=headers).get_json()["sales_by_day"]
    # The sale is on 3:00 UTC's day in UTC, the local day before in Tegucigalpa (UTC-6).
    assert [d["date"] for d in after if d["count"]] == [at.date().isoformat()]
    local_day = (at - timedelta(hours=6)).date().isoformat()
    assert [d["date"] for d in before if d["count"]] == [local_day]
    raw = dashboard_stats(
        db.session, tenant_id=tenant.id, zone=ZoneInfo("UTC"), now=utcnow(), use_rollups=False
    )
    assert after == raw["sales_by_day"]


def test_a_zone_change_while_a_rebuild_runs_is_a_409_not_a_wait(client, owner, is_postgres):
    """Each zone change rebuilds the rollups in its request: queued behind a running one,
    every PATCH would hold a pooled connection (and the tenant's row) for its length.
    It waits WRITE_LOCK_TIMEOUT_MS at most, as a write would."""
    if not is_postgres:
        pytest.skip("the rollup lock is PostgreSQL's")
    tenant, headers = owner
    rebuild = Session(db.engine)
    try:
        rebuild.execute(
            text("SELECT pg_advisory_xact_lock(:lock, :tenant)"),
            {"lock": ROLLUP_LOCK, "tenant": tenant.id},
        )
        url = f"/api/tenants/{tenant.id}"
        answers: list = []
        patch = threading.Thread(
            target=lambda: answers.append(
                client.patch(url, headers=headers, json={"timezone": "Asia/Tokyo"})
            )
        )
        patch.start()
        patch.join(10)
        assert answers, "the PATCH waited for the running rebuild"
        (refused,) = answers
        assert refused.status_code == 409
        assert refused.get_json()["error"] == "rebuild_in_progress"
        renamed = client.patch(url, headers=headers, json={"name": "Still Renamable"})
        assert renamed.status_code == 200  # no new zone, no rebuild, no wait
    finally:
        rebuild.rollback()
        rebuild.close()
        patch.join(10)
    db.session.expire_all()
    assert db.session.get(Tenant, tenant.id).timezone != "Asia/Tokyo"
    changed = client.patch(url, headers=headers, json={"timezone": "Asia/Tokyo"})
    assert changed.status_code == 200 and changed.get_json()["tenant"]["timezone"] == "Asia/Tokyo"


def test_a_zone_change_waits_out_a_write_holding_the_rollup_lock(client, owner, is_postgres):
    """Every write holds the tenant's rollup lock for the moment of its commit: a busy
    tenant's zone change waits that moment out, not told that a rebuild is running."""
    if not is_postgres:
        pytest.skip("the rollup lock is PostgreSQL's")
    tenant, headers = owner
    writer = Session(db.engine)
    writer.execute(
        text("SELECT pg_advisory_xact_lock(:lock, :tenant)"),
        {"lock": ROLLUP_LOCK, "tenant": tenant.id},
    )
    commit = threading.Timer(0.3, writer.commit)  # a write's transaction, a little long
    commit.start()
    try:
        url = f"/api/tenants/{tenant.id}"
        changed = client.patch(url, headers=headers, json={"timezone": "Asia/Tokyo"})
    finally:
        commit.join(10)
        writer.close()
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["tenant"]["timezone"] == "Asia/Tokyo"


@pytest.mark.parametrize("group_commit", [True, False])
def test_events_a_stale_worker_writes_after_a_zone_change_count_in_the_new_zone(
    make_app, client, owner, group_commit, is_postgres, monkeypatch
):
    """Another worker keeps a tenant cached for TENANT_CACHE_SECONDS: the events it writes
    after the zone changed still land on the new zone's days, as a rebuild would count them."""
    tenant, headers = owner
    # One instant for the writes and the read: all three on one Kiritimati day, even at midnight.
    now = utcnow()
    monkeypatch.setattr("tenant_analytics.ingestion.utcnow", lambda: now)
    monkeypatch.setattr("tenant_analytics.api.dashboards.utcnow", lambda: now)
    assert (
        client.patch(
            f"/api/tenants/{tenant.id}", headers=headers, json={"timezone": "Pacific/Pago_Pago"}
        ).status_code
        == 200
    )  # UTC-11
    other_app = make_app(GROUP_COMMIT=group_commit)
    other_worker = other_app.test_client()
    track = {"tenant_id": tenant.id, "event_type": "qr_scan"}
    assert other_worker.post("/api/analytics/track", json=track).status_code == 201  # cached
    patched = client.patch(
        f"/api/tenants/{tenant.id}", headers=headers, json={"timezone": "Pacific/Kiritimati"}
    )  # UTC+14: always another date than Pago Pago's
    assert patched.status_code == 200
    for _ in range(2):
        assert other_worker.post("/api/analytics/track", json=track).status_code == 201
    if is_postgres:  # the refused write dropped the stale cache rather than keep it 10 s
        cached = other_app.extensions["active_tenants"]._entries
        assert {info.timezone for _, info in cached.values()} == {"Pacific/Kiritimati"}
    db.session.expire_all()
    counts = db.session.execute(
        select(DailyEventCount.day, DailyEventCount.events).where(
            DailyEventCount.tenant_id == tenant.id
        )
    ).all()
    assert counts == [(now.astimezone(ZoneInfo("Pacific/Kiritimati")).date(), 3)]
    today = client.get(f"/api/analytics/{tenant.id}/today", headers=headers).get_json()
    assert today["qr_scans"] == 3
    written = rollup_snapshot(tenant.id)
    rebuild_rollups(db.session, tenant.id)
    db.session.commit()
    rebuilt = rollup_snapshot(tenant.id)
    # Written, a generated session is counted with no row of its own (rollups.NEW_SESSION).
    del rebuilt["session_last_seen"], written["session_last_seen"]
    assert rebuilt == written


@pytest.mark.parametrize(
    ("method", "path", "body", "statement"),
    [
        ("patch", "", {"name": "Otro"}, "^UPDATE tenants"),  # its row gone: StaleDataError
        ("patch", "", {"active": False}, "FOR NO KEY UPDATE"),  # read again, its row locked
        ("post", "/products", {"name": "Pan", "price": "1.00"}, "^INSERT INTO products"),
        # Read again as the export begins (not the owner's check, which names its owners).
        ("get", "/export", None, "^SELECT tenants.id, (?!.*EXISTS)"),
    ],
)
def test_an_owner_request_whose_tenant_is_deleted_meanwhile_is_a_404(
    client, owner, migrated, is_postgres, method, path, body, statement
):
    """An operator's `tenant delete` while an owner's write runs: the tenant is not found,
    as it would be a moment later (was a 500, and a new product's a 409 "slug taken")."""
    if not is_postgres:
        pytest.skip("on SQLite the request's transaction holds off the deletion")
    tenant, headers = owner
    tenant_id = tenant.id  # the row is gone by the time the answer is read
    operator = create_engine(migrated, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    deleted: list[str] = []

    def delete_first(_connection, _cursor, sql: str, *_args) -> None:
        if re.search(statement, sql, re.DOTALL) and not deleted:
            deleted.append(sql)
            with operator.connect() as connection:
                connection.execute(text("DELETE FROM tenants WHERE id = :id"), {"id": tenant_id})

    event.listen(db.engine, "before_cursor_execute", delete_first)
    try:
        answer = getattr(client, method)(
            f"/api/tenants/{tenant_id}{path}", headers=headers, json=body
        )
    finally:
        event.remove(db.engine, "before_cursor_execute", delete_first)
        operator.dispose()
    assert deleted
    assert answer.status_code == 404, answer.get_json()
    assert answer.get_json()["message"] == "Tenant not found"


@pytest.mark.parametrize(
    ("table", "said"),
    [("tenants", "Tenant not found"), ("products", "Product not found"), ("users", None)],
)
def test_only_a_tenants_or_a_products_row_gone_is_taken_for_a_deletion_meanwhile(table, said):
    """Another row gone (a user's, a sign-out's) is no owner's 404: a fault, logged whole."""
    gone = deleted_meanwhile(
        StaleDataError(f"UPDATE statement on table '{table}' expected to update 1 row(s)")
    )
    assert (gone.message if gone else None) == said


def _switch(client, tenant, headers, active):
    return client.patch(f"/api/tenants/{tenant.id}", headers=headers, json={"active": active})


def test_an_owner_switches_its_tenant_off_and_on_again(client, owner):
    tenant, headers = owner
    off = _switch(client, tenant, headers, False).get_json()["tenant"]
    assert (off["active"], off["suspended"]) == (False, False)
    on = _switch(client, tenant, headers, True).get_json()["tenant"]
    assert (on["active"], on["suspended"]) == (True, False)


def test_an_owner_cannot_switch_on_a_tenant_the_operator_switched_off(client, runner, owner):
    tenant, headers = owner
    off = runner.invoke(args=["tenant", "deactivate", "--id", str(tenant.id)])
    assert json.loads(off.output)["suspended"] is True
    refused = _switch(client, tenant, headers, True)
    assert (refused.status_code, refused.get_json()["error"]) == (403, "tenant_suspended")
    db.session.expire_all()
    assert db.session.get(Tenant, tenant.id).active is False
    # Other changes, and switching it off, are still the owner's.
    renamed = client.patch(f"/api/tenants/{tenant.id}", headers=headers, json={"name": "Pan"})
    assert renamed.status_code == 200
    assert _switch(client, tenant, headers, False).status_code == 200
    runner.invoke(args=["tenant", "activate", "--id", str(tenant.id)])
    assert _switch(client, tenant, headers, False).status_code == 200
    assert _switch(client, tenant, headers, True).get_json()["tenant"]["active"] is True


def test_an_admins_switch_is_an_operators(client, make_user, auth_headers, owner):
    tenant, headers = owner
    admin = auth_headers(make_user(admin=True))
    assert _switch(client, tenant, admin, False).get_json()["tenant"]["suspended"] is True
    assert _switch(client, tenant, headers, True).status_code == 403
    on = _switch(client, tenant, admin, True).get_json()["tenant"]
    assert (on["active"], on["suspended"]) == (True, False)


def test_exports_and_zone_changes_share_a_small_allowance_per_tenant(
    make_app, make_tenant, make_user, auth_headers
):
    """Each reads or recounts all of a tenant's events: an owner's script (or a stolen
    token) must not keep the database busy with them. Others' attempts spend nothing."""
    app = make_app(OWNER_HEAVY_RATE_LIMIT="3 per hour")
    client = app.test_client()
    with app.app_context():
        mine, other = make_tenant(), make_tenant()
        owner, stranger = auth_headers(make_user(mine)), auth_headers(make_user(other))
        mine_id, other_id = mine.id, other.id

    def export(tenant_id, headers):
        answer = client.get(f"/api/tenants/{tenant_id}/export", headers=headers)
        answer.get_data()
        answer.close()  # a stream left unread keeps its request's context open
        return answer.status_code

    def change_zone(zone, headers=owner):
        path = f"/api/tenants/{mine_id}"
        return client.patch(path, json={"timezone": zone}, headers=headers).status_code

    assert [export(mine_id, stranger) for _ in range(4)] == [404] * 4
    # A download manager's look first: the headers alone, nothing read or spent.
    for _ in range(4):
        look = client.head(f"/api/tenants/{mine_id}/export", headers=owner)
        assert (look.status_code, look.mimetype) == (200, "application/x-ndjson")
        assert look.headers["Content-Disposition"].startswith("attachment;")
        assert "Content-Length" not in look.headers  # streamed, as the GET: no size known
    assert change_zone("America/Tegucigalpa", stranger) == 404
    # Nor does a change refused for what else it asks.
    with app.app_context():
        db.session.get(Tenant, mine_id).suspended = True
        db.session.commit()
    path = f"/api/tenants/{mine_id}"
    for _ in range(4):
        switch_on = {"active": True, "timezone": "Asia/Tokyo"}
        assert client.patch(path, json=switch_on, headers=owner).status_code == 403
    with app.app_context():
        db.session.get(Tenant, mine_id).suspended = False
        db.session.commit()
    assert [export(mine_id, owner), change_zone("Europe/Madrid"), export(mine_id, owner)] == [
        200,
        200,
        200,
    ]
    refused = client.patch(f"/api/tenants/{mine_id}", json={"timezone": "UTC"}, headers=owner)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.get_json()["error"] == "rate_limited"
    assert export(mine_id, owner) == 429
    # Other settings, and the same zone again, recount nothing: not counted.
    patch = client.patch(
        f"/api/tenants/{mine_id}",
        json={"name": "Nueva", "timezone": "Europe/Madrid"},
        headers=owner,
    )
    assert patch.status_code == 200
    assert export(other_id, stranger) == 200  # another tenant's allowance


def test_an_owner_downloads_all_of_its_tenants_data_and_no_other(
    client, make_tenant, make_user, auth_headers, add_events
):
    mine, other = make_tenant(), make_tenant()
    headers = auth_headers(make_user(mine))
    now = utcnow()
    add_events(
        mine, [("pageview", now, "10.0.0.1", {"n": 1}), ("click_call", now, "10.0.0.2", None)]
    )
    add_events(other, [("pageview", now, "10.0.0.1", None)])
    answer = client.get(f"/api/tenants/{mine.id}/export", headers=headers)
    assert answer.status_code == 200 and answer.mimetype == "application/x-ndjson"
    assert answer.headers["Content-Disposition"] == f'attachment; filename="{mine.slug}.jsonl"'
    assert answer.headers["Cache-Control"] == "no-store"
    lines = [json.loads(line) for line in answer.get_data(as_text=True).splitlines()]
    assert lines[0]["tenant"]["id"] == mine.id
    events = [line["event"] for line in lines if "event" in line]
    assert sorted(e["event_type"] for e in events) == ["click_call", "pageview"]
    assert {e["tenant_id"] for e in events} == {mine.id}
    assert lines[-1] == {"end": {"events": 2}}  # all there: a cut download lacks it
    # Another tenant's data, or none without a token: as every owner endpoint.
    assert client.get(f"/api/tenants/{other.id}/export", headers=headers).status_code == 404
    assert client.get(f"/api/tenants/{mine.id}/export").status_code == 401


def test_an_export_that_fails_midway_ends_cut_short_and_logged(
    client, make_tenant, make_user, auth_headers, add_events, monkeypatch, caplog
):
    """Once the 200 is sent a failure can only cut the download off: the server is handed
    an error, so that it cuts the connection (a client sees a failed download, not a
    complete one), without PostgreSQL's message, which gunicorn logged with the SQL;
    the app logs the cause, that message left out."""
    tenant = make_tenant()
    headers = auth_headers(make_user(tenant))
    now = utcnow()
    add_events(
        tenant, [("pageview", now + timedelta(seconds=n), "10.0.0.1", None) for n in range(3)]
    )
    monkeypatch.setattr(tenant_data, "EXPORT_PAGE", 1)
    pages = []

    def second_page_fails(_conn, _cursor, statement, parameters, _context, _many):
        if "FROM events" in statement and "ORDER BY events.created_at" in statement:
            pages.append(statement)
            if len(pages) == 2:  # a real error from the database, on the page after the first
                return statement.replace("SELECT ", "SELECT no_such_column, ", 1), parameters
        return statement, parameters

    event.listen(db.engine, "before_cursor_execute", second_page_fails, retval=True)
    answer = client.get(f"/api/tenants/{tenant.id}/export", headers=headers, buffered=False)
    received = []
    try:
        assert answer.status_code == 200
        with pytest.raises(ExportCutShort) as cut:
            for piece in answer.response:
                received.extend(json.loads(line) for line in piece.splitlines())
    finally:
        event.remove(db.engine, "before_cursor_execute", second_page_fails)
    assert [list(line) for line in received] == [["tenant"], ["event"]]  # no {"end": ...}
    assert cut.value.__cause__ is None and cut.value.__suppress_context__
    failures = [r for r in caplog.records if r.getMessage().startswith("export cut short")]
    assert len(failures) == 1 and failures[0].levelname == "ERROR"
    assert "does not exist" not in caplog.text  # PostgreSQL's message, naming the column


def test_an_owners_switch_on_racing_an_operators_suspension_is_refused(client, owner, is_postgres):
    """The operator's suspension commits while the owner's PATCH is on its way: the
    owner's switch must not write `active` back over it (active and suspended at once)."""
    if not is_postgres:
        pytest.skip("SQLite has one writer at a time: no such interleaving")
    tenant, headers = owner
    assert _switch(client, tenant, headers, False).status_code == 200
    operator = Session(db.engine)
    operator.execute(
        text("UPDATE tenants SET active = false, suspended = true WHERE id = :id"),
        {"id": tenant.id},
    )
    answers: list = []
    patch = threading.Thread(target=lambda: answers.append(_switch(client, tenant, headers, True)))
    patch.start()
    try:
        patch.join(0.5)  # the PATCH has read the tenant and waits on the operator's row
        operator.commit()
        patch.join(10)
    finally:
        operator.close()
    (answer,) = answers
    assert (answer.status_code, answer.get_json()["error"]) == (403, "tenant_suspended")
    db.session.expire_all()
    stored = db.session.get(Tenant, tenant.id)
    assert (stored.active, stored.suspended) == (False, True)


def test_a_switch_and_zone_change_beside_another_zone_change_waits_its_turn(
    client, owner, is_postgres, monkeypatch
):
    """A PATCH of `active` and `timezone` takes the tenant's rollup lock before its row,
    as a zone change does: in the other order the two deadlocked, and PostgreSQL's
    victim answered 503 as if the database were down."""
    if not is_postgres:
        pytest.skip("the rollup lock is PostgreSQL's")
    tenant, headers = owner
    spend = tenant_settings_api.spend_heavy_owner_work
    first_call = threading.Event()

    def spend_slowly(tenant_id):
        if not first_call.is_set():
            first_call.set()
            time.sleep(0.5)  # the first zone change holds the rollup lock, not yet its row
        spend(tenant_id)

    monkeypatch.setattr(tenant_settings_api, "spend_heavy_owner_work", spend_slowly)
    url = f"/api/tenants/{tenant.id}"
    answers: dict[str, Any] = {}

    def patch(name, body):
        answers[name] = client.patch(url, headers=headers, json=body)

    zone = threading.Thread(target=patch, args=("zone", {"timezone": "Europe/Madrid"}))
    zone.start()
    assert first_call.wait(5)
    both = {"active": True, "timezone": "Asia/Tokyo"}
    switch = threading.Thread(target=patch, args=("both", both))
    switch.start()
    zone.join(15)
    switch.join(15)
    assert answers["zone"].status_code == 200
    assert answers["both"].status_code == 200, answers["both"].get_json()
    db.session.expire_all()
    assert db.session.get(Tenant, tenant.id).timezone == "Asia/Tokyo"


def test_an_operators_suspension_racing_an_owners_switch_on_is_kept(
    client, runner, owner, is_postgres, monkeypatch
):
    """The owner's switch-on commits between the operator's read of the tenant and its
    write: the suspension must still switch the tenant off (not active and suspended)."""
    if not is_postgres:
        pytest.skip("SQLite has one writer at a time: no such interleaving")
    tenant, headers = owner
    assert _switch(client, tenant, headers, False).status_code == 200
    answers: list = []
    owner_patch = threading.Thread(
        target=lambda: answers.append(_switch(client, tenant, headers, True))
    )
    suspend = cli.switch_tenant

    def owner_switches_on_meanwhile(*args, **kwargs):
        owner_patch.start()
        owner_patch.join(1)  # it waits on the operator's row lock, or is done
        suspend(*args, **kwargs)

    monkeypatch.setattr(cli, "switch_tenant", owner_switches_on_meanwhile)
    result = runner.invoke(args=["tenant", "deactivate", "--id", str(tenant.id)])
    assert result.exit_code == 0, result.output
    owner_patch.join(10)
    (answer,) = answers
    assert (answer.status_code, answer.get_json()["error"]) == (403, "tenant_suspended")
    db.session.expire_all()
    stored = db.session.get(Tenant, tenant.id)
    assert (stored.active, stored.suspended) == (False, True)


class WatchedBody(io.BytesIO):
    """A request body that notes, at each read, whether the request's session holds a
    transaction (a pooled connection) meanwhile."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(json.dumps(body).encode())
        self.read_holding_a_connection: list[bool] = []

    def read(self, size: int | None = -1) -> bytes:
        self.read_holding_a_connection.append(db.session().in_transaction())
        return super().read(size)

    def readinto(self, buffer: Any) -> int:
        self.read_holding_a_connection.append(db.session().in_transaction())
        return super().readinto(buffer)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/api/tenants/{t}", {"name": "Pan"}),
        ("POST", "/api/tenants/{t}/products", {"name": "Concha"}),
        ("POST", "/api/auth/password", {"current_password": "x", "new_password": "y" * 8}),
    ],
)
def test_an_owners_body_is_read_before_the_database_is_asked(client, owner, method, path, body):
    """A client sending its body a byte a second held the connection of its token's
    lookup all the while: some 26 of them took the database from every tenant."""
    tenant, headers = owner
    url, stream = path.format(t=tenant.id), WatchedBody(body)
    headers |= {"Content-Type": "application/json", "Content-Length": str(len(stream.getvalue()))}
    db.session.close()
    response = client.open(url, method=method, input_stream=stream, headers=headers)
    assert response.status_code < 500, response.get_json()
    assert stream.read_holding_a_connection and not any(stream.read_holding_a_connection)
