"""The command-line contract: one line of JSON, exit code 1 on conflicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, event, func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tenant_analytics import rollups
from tenant_analytics.auth import access_token_for, authenticate, refresh_token_for
from tenant_analytics.event_builders import transaction_key
from tenant_analytics.extensions import db
from tenant_analytics.models import (
    DEFAULT_CURRENCY,
    DailyEventCount,
    DailyRevenue,
    DailyVisitor,
    DedupeKey,
    Event,
    LastSeenCount,
    SessionLastSeen,
    SessionLastSeenCount,
    Tenant,
    User,
    VisitorLastSeen,
    utcnow,
)
from tenant_analytics.partitions import month_of, next_month, partition_name
from tenant_analytics.postgres_writer import limit_lock_waits
from tenant_analytics.queries import store_funnel, store_rollups
from tenant_analytics.rollups import (
    FORGET_BATCH,
    ROLLUP_MODELS,
    SESSIONS_FORGOTTEN,
    rebuild_rollups,
)
from tenant_analytics.storage import claim_keys
from tenant_analytics.tenant_data import EXPORT_PAGE, delete_tenant_data, exported_lines

from .servers import ROOT
from .test_store_reports import ev

# The purge's mark of the day it cut through, among the session counts.
FORGOTTEN_MARK = SessionLastSeenCount.scope == SESSIONS_FORGOTTEN


def test_tenant_create_prints_json(runner):
    result = runner.invoke(
        args=[
            "tenant",
            "create",
            "--name",
            "Bakery",
            "--slug",
            "bakery",
            "--timezone",
            "America/Tegucigalpa",
        ]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["currency"] == "HNL"  # the default, as the API's tenants have
    fields = {"id", "public_id", "slug", "name", "active", "suspended", "timezone", "landing_url"}
    assert set(data) == fields | {"currency", "vip_monetary_threshold"}  # as the API says
    assert (data["slug"], data["active"], data["suspended"], data["timezone"]) == (
        "bakery",
        True,
        False,
        "America/Tegucigalpa",
    )
    uuid.UUID(data["public_id"])
    assert db.session.get(Tenant, data["id"]).name == "Bakery"


def test_tenant_create_takes_the_currency_it_sells_in(runner):
    result = runner.invoke(
        args=["tenant", "create", "--name", "Kiwi", "--slug", "kiwi", "--currency", "nzd"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["currency"] == "NZD"  # as the API stores it
    assert db.session.scalar(select(Tenant.currency).where(Tenant.slug == "kiwi")) == "NZD"


def test_tenant_create_inactive_and_duplicate(runner):
    first = runner.invoke(args=["tenant", "create", "--name", "A", "--slug", "dup", "--inactive"])
    assert json.loads(first.output)["active"] is False
    second = runner.invoke(args=["tenant", "create", "--name", "B", "--slug", "dup"])
    assert second.exit_code == 1
    assert "already exists" in second.output


def test_tenant_create_rejects_unknown_zone(runner):
    result = runner.invoke(
        args=["tenant", "create", "--name", "A", "--slug", "z", "--timezone", "Mars/Olympus"]
    )
    assert result.exit_code != 0
    assert db.session.scalar(select(func.count()).select_from(Tenant)) == 0


def test_user_create_with_several_tenants(runner, make_tenant):
    first, second = make_tenant(), make_tenant()
    result = runner.invoke(
        args=[
            "user",
            "create",
            "--email",
            "Owner@Example.com",
            "--password",
            "pass-word-1",
            "--tenant",
            str(first.id),
            "--tenant",
            str(second.id),
        ]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "id": json.loads(result.output)["id"],
        "email": "owner@example.com",
        "tenants": sorted([first.id, second.id]),
        "is_admin": False,
    }
    again = runner.invoke(
        args=["user", "create", "--email", "owner@example.com", "--password", "another-pass"]
    )
    assert again.exit_code == 1


def test_user_create_without_a_tenant_says_how_to_grant_one(runner):
    alone = runner.invoke(
        args=["user", "create", "--email", "a@example.com", "--password", "pw-123456"]
    )
    admin = runner.invoke(
        args=["user", "create", "--email", "b@example.com", "--password", "pw-123456", "--admin"]
    )
    assert (alone.exit_code, admin.exit_code) == (0, 0)
    assert json.loads(alone.stdout)["tenants"] == []
    assert alone.stderr.strip() == (
        "note: a@example.com owns no tenant yet: `user grant --email a@example.com --tenant ID`"
    )
    assert admin.stderr == ""  # an admin reads every tenant


def test_user_create_unknown_tenant_fails(runner):
    result = runner.invoke(
        args=[
            "user",
            "create",
            "--email",
            "a@b.c",
            "--password",
            "pass-word-1",
            "--tenant",
            "4242",
            "--admin",
        ]
    )
    assert result.exit_code == 1 and "4242" in result.output


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("not-an-address", "pass-word-1"),
        ("owner@localhost", "pass-word-1"),
        ("owner@exa mple.com", "pass-word-1"),
        ("owner@example.com", "short"),
        ("owner@example.com", "x" * 1025),  # more than sign-in takes
    ],
)
def test_user_create_refuses_a_malformed_email_or_a_short_password(runner, email, password):
    result = runner.invoke(args=["user", "create", "--email", email, "--password", password])
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output
    assert db.session.scalar(select(func.count()).select_from(User)) == 0


def test_user_create_asks_for_the_password_twice_when_left_out(runner):
    result = runner.invoke(
        args=["user", "create", "--email", " Owner@Example.COM "],
        input="pass-word-1\npass-word-1\n",
    )
    assert result.exit_code == 0, result.output
    assert "pass-word-1" not in result.output  # hidden input: not echoed
    created = json.loads(result.stdout.splitlines()[-1])
    assert created["email"] == "owner@example.com"
    user = db.session.get(User, created["id"])
    assert authenticate(db.session, "owner@example.com", "pass-word-1") == user


def test_user_create_checks_its_tenants_before_asking_for_a_password(runner):
    result = runner.invoke(args=["user", "create", "--email", "a@example.com", "--tenant", "999"])
    assert result.exit_code == 1 and "no tenant with id 999" in result.output
    assert "Password" not in result.output  # not asked for, twice, only to fail


def test_a_short_password_typed_at_the_prompt_is_asked_again(runner):
    result = runner.invoke(
        args=["user", "create", "--email", "b@example.com"],
        input="short\nshort\nlong-enough\nlong-enough\n",
    )
    assert result.exit_code == 0, result.output
    assert "8 to 1024 characters" in result.output
    assert authenticate(db.session, "b@example.com", "long-enough") is not None


def test_user_set_password_signs_in_with_the_new_one_and_ends_old_tokens(
    runner, client, make_tenant, make_user, auth_headers
):
    tenant = make_tenant()
    user = make_user(tenant, password="old-password")
    email, old_token = user.email, auth_headers(user)
    result = runner.invoke(
        args=["user", "set-password", "--email", email.upper()],
        input="new-password\nnew-password\n",
    )
    assert result.exit_code == 0, result.output
    assert "new-password" not in result.output
    assert authenticate(db.session, email, "new-password") is not None
    assert authenticate(db.session, email, "old-password") is None
    assert client.get(f"/api/analytics/{tenant.id}", headers=old_token).status_code == 401
    missing = runner.invoke(
        args=["user", "set-password", "--email", "nobody@example.com", "--password", "x" * 8]
    )
    assert missing.exit_code == 1 and "nobody@example.com" in missing.output


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_tenant_and_user_list_print_one_line_each(runner, make_tenant, make_user):
    first, second = make_tenant(slug="uno"), make_tenant(slug="dos", active=False)
    owner = make_user(first, second)
    admin = make_user(admin=True)
    tenants = runner.invoke(args=["tenant", "list"])
    assert tenants.exit_code == 0, tenants.output
    assert [(t["id"], t["slug"], t["active"]) for t in json_lines(tenants.output)] == [
        (first.id, "uno", True),
        (second.id, "dos", False),
    ]
    users = json_lines(runner.invoke(args=["user", "list"]).output)
    assert [(u["email"], u["tenants"], u["is_admin"]) for u in users] == [
        (owner.email, sorted([first.id, second.id]), False),
        (admin.email, [], True),
    ]


def test_tenant_deactivate_and_activate(runner, client, make_tenant, make_user, auth_headers):
    tenant = make_tenant()
    tenant_id, headers = tenant.id, auth_headers(make_user(tenant))
    event = {"tenant_id": tenant_id, "event_type": "pageview"}
    assert client.post("/api/analytics/track", json=event).status_code == 201
    off = runner.invoke(args=["tenant", "deactivate", "--id", str(tenant_id)])
    assert off.exit_code == 0 and json.loads(off.output)["active"] is False
    assert client.post("/api/analytics/track", json=event).status_code == 404
    # Its owner still reads what it has.
    data = client.get(f"/api/analytics/{tenant_id}", headers=headers).get_json()["data"]
    assert data["visitors_today"] == 1
    on = runner.invoke(args=["tenant", "activate", "--id", str(tenant_id)])
    assert on.exit_code == 0 and json.loads(on.output)["active"] is True
    assert client.post("/api/analytics/track", json=event).status_code == 201
    missing = runner.invoke(args=["tenant", "deactivate", "--id", "999999"])
    assert missing.exit_code == 1 and "no tenant with id 999999" in missing.output


def tenant_rows(tenant_id: int) -> dict[str, int]:
    """Rows of the tenant in every table that has a ``tenant_id`` column (tenants: its own)."""
    counts = {}
    for table in db.metadata.sorted_tables:
        column = table.c.id if table.name == "tenants" else table.c.get("tenant_id")
        if column is not None:
            counted = select(func.count()).select_from(table).where(column == tenant_id)
            counts[table.name] = db.session.scalar(counted)
    return counts


def test_tenant_delete_removes_everything_of_the_tenant_only(
    app, runner, client, make_tenant, make_user, add_events, store_events
):
    gone, kept = make_tenant(), make_tenant()
    owner = make_user(gone, kept)
    now = utcnow()
    for tenant in (gone, kept):
        add_events(
            tenant, [("pageview", now, "10.0.0.1", None), ("click_call", now, "10.0.0.2", None)]
        )
        sale = {"revenue": Decimal("10.00"), "product_slug": "pan"}
        store_events(tenant, [ev("purchase", now, "s1", **sale)])
        runner.invoke(args=["product", "create", "--tenant", str(tenant.id), "--name", "Pan"])
        claim_keys(db.session, [(tenant.id, "idem:a")], now=now, window=None)
        db.session.commit()
    gone_id, kept_id, email = gone.id, kept.id, owner.email
    kept_before = tenant_rows(kept_id)
    assert all(tenant_rows(gone_id).values())  # every table has something of it
    asked = runner.invoke(args=["tenant", "delete", "--id", str(gone_id)], input="n\n")
    assert asked.exit_code == 1 and "Aborted" in asked.output
    assert tenant_rows(gone_id)["events"] == 3

    app.config["TENANT_CACHE_SECONDS"] = 1  # as the servers have it: waited out first
    deleted = runner.invoke(args=["tenant", "delete", "--id", str(gone_id), "--yes"])
    assert deleted.exit_code == 0, deleted.output
    report = json.loads(deleted.stdout)
    assert report == {"id": gone_id, "deleted": True, "events_deleted": 3, "owners": [email]}
    assert "waiting 1 s" in deleted.stderr
    db.session.expire_all()
    assert set(tenant_rows(gone_id).values()) == {0}
    assert tenant_rows(kept_id) == kept_before
    assert db.session.scalar(select(User).where(User.email == email)).tenants == [kept]
    event = {"tenant_id": gone_id, "event_type": "pageview"}
    assert client.post("/api/analytics/track", json=event).status_code == 404
    missing = runner.invoke(args=["tenant", "delete", "--id", str(gone_id), "--yes"])
    assert missing.exit_code == 1 and f"no tenant with id {gone_id}" in missing.output


def test_an_event_for_a_tenant_deleted_while_cached_is_a_404(app, client, make_tenant, caplog):
    """`tenant delete` waits the servers' tenant caches out, but a request already under
    way may still name the tenant: its write breaks the foreign key, a 404, not a 500."""
    tenant_id = make_tenant().id
    event = {"tenant_id": tenant_id, "event_type": "pageview"}
    assert client.post("/api/analytics/track", json=event).status_code == 201  # cached now
    delete_tenant_data(db.session, tenant_id)
    db.session.commit()
    batch = {"tenant_id": tenant_id, "events": [{"event_type": "pageview"}]}
    for path, body in (("/api/analytics/track", event), ("/api/analytics/batch", batch)):
        answer = client.post(path, json=body)
        assert (answer.status_code, answer.get_json()["error"]) == (404, "tenant_not_found")
    assert "no longer exists" in caplog.text


def test_forget_customer_deletes_its_events_and_recounts_the_rollups(
    runner, make_tenant, store_events
):
    shop, other_shop = make_tenant(), make_tenant()
    now = utcnow()
    sale = {"revenue": Decimal("30.00"), "product_slug": "pan"}
    store_events(shop, [ev("purchase", now, "s7", user_id="c-7", **sale)])
    store_events(shop, [ev("purchase", now, "s8", user_id="c-8", **sale)])
    # Browsing before signing in: the customer's session, though not its name.
    store_events(shop, [ev("product_view", now, "s7"), ev("product_view", now, "s8")])
    store_events(other_shop, [ev("purchase", now, "s7", user_id="c-7", **sale)])

    def rows(model, *where) -> int:
        return db.session.scalar(select(func.count()).select_from(model).where(*where))

    def sessions_named(session_id: str) -> int:
        named = (SessionLastSeen.tenant_id == shop.id, SessionLastSeen.session_id == session_id)
        return rows(SessionLastSeen, *named)

    assert sessions_named("s7") > 0
    args = ["events", "forget-customer", "--tenant", str(shop.id), "--user-id", "c-7"]
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "tenant": shop.id,
        "events_deleted": 2,
        "rollups_rebuilt": True,
    }
    db.session.expire_all()
    assert rows(Event, Event.user_id == "c-7", Event.tenant_id == shop.id) == 0
    assert rows(Event, Event.session_id == "s7", Event.tenant_id == shop.id) == 0
    assert rows(Event, Event.session_id == "s8") == 2
    assert rows(Event, Event.user_id == "c-7", Event.tenant_id == other_shop.id) == 1
    assert rows(Event, Event.user_id == "c-8") == 1
    # Its session and its money are gone from the rollups too: recounted.
    assert sessions_named("s7") == 0 and sessions_named("s8") > 0
    revenue = select(func.sum(DailyRevenue.amount)).where(DailyRevenue.tenant_id == shop.id)
    assert db.session.scalar(revenue) == Decimal("30.00")
    again = runner.invoke(args=args)
    assert json.loads(again.output)["events_deleted"] == 0
    args[3] = "999999"
    missing = runner.invoke(args=args)
    assert missing.exit_code == 1 and "no tenant with id 999999" in missing.output


def test_forget_customer_takes_the_user_id_as_the_api_stored_it(runner, client, make_tenant):
    """The API strips the spaces around a user_id: an operator pasting the id as the shop
    sent it forgot nobody (exit 0, "events_deleted": 0). A blank id names no one."""
    shop = make_tenant()
    body = {"tenant_id": shop.id, "event_type": "page_view", "session_id": "s-77"}
    posted = client.post("/api/analytics/track", json={**body, "user_id": "  C-77 "})
    assert posted.status_code == 201
    args = ["events", "forget-customer", "--tenant", str(shop.id), "--user-id"]
    forgotten = runner.invoke(args=[*args, "  C-77 "])
    assert forgotten.exit_code == 0, forgotten.output
    assert json.loads(forgotten.output)["events_deleted"] == 1
    blank = runner.invoke(args=[*args, "   "])
    assert blank.exit_code == 2 and "'--user-id'" in blank.output


@pytest.mark.parametrize(
    "args",
    [
        ["tenant", "deactivate", "--id"],
        ["tenant", "export", "--id"],
        ["events", "rebuild-rollups", "--tenant"],
        ["user", "create", "--email", "a@example.com", "--password", "long-enough", "--tenant"],
    ],
)
def test_a_tenant_id_no_database_holds_is_refused_as_a_bad_option(runner, args):
    """SQLite raised OverflowError (a traceback) on 99999999999999999999."""
    result = runner.invoke(args=[*args, "99999999999999999999"])
    assert result.exit_code == 2 and "is not in the range" in result.output


def test_forget_customer_keeps_the_tenants_writers_out_from_its_deletion_on(
    app, runner, make_tenant, store_events, is_postgres
):
    """A sale of the customer's written while the deletion runs is refused (the app's
    writers wait for the rollup lock a while, then answer 503), not kept and counted by
    the rebuild: the command holds the tenant's rollups before it deletes."""
    if not is_postgres:
        pytest.skip("on SQLite the deletion takes the database's write lock")
    shop = make_tenant()
    sale = {"revenue": Decimal("30.00"), "product_slug": "pan", "user_id": "c-9"}
    store_events(shop, [ev("purchase", utcnow(), "s9", **sale)])
    outcome: list[str] = []

    def sell_again() -> None:
        with app.app_context():
            limit_lock_waits(db.session.connection(), 0.3)  # as the app's writers do
            try:
                store_events(shop, [ev("purchase", utcnow(), "s9b", **sale)])
                outcome.append("stored")
            except OperationalError:
                outcome.append("refused")
            finally:
                db.session.rollback()

    def once_deleted(_conn, _cursor, statement, *_args) -> None:
        if statement.startswith("DELETE FROM events") and not outcome:
            writer = threading.Thread(target=sell_again)
            writer.start()
            writer.join(10)

    event.listen(db.engine, "after_cursor_execute", once_deleted)
    try:
        args = ["events", "forget-customer", "--tenant", str(shop.id), "--user-id", "c-9"]
        result = runner.invoke(args=args)
    finally:
        event.remove(db.engine, "after_cursor_execute", once_deleted)
    assert result.exit_code == 0, result.output
    assert outcome == ["refused"]
    db.session.expire_all()
    left = select(func.count()).select_from(Event).where(Event.user_id == "c-9")
    assert db.session.scalar(left) == 0
    revenue = select(func.sum(DailyRevenue.amount)).where(DailyRevenue.tenant_id == shop.id)
    assert db.session.scalar(revenue) is None


def test_forget_customer_keeps_another_customers_events_of_a_shared_session(
    runner, make_tenant, store_events
):
    """A kiosk, a shared phone: two customers signed in, one after the other, in one
    session. Forgetting one takes its events and the session's unnamed ones, not the
    other's sales."""
    shop = make_tenant()
    now = utcnow()
    sale = {"revenue": Decimal("30.00"), "product_slug": "pan"}
    store_events(
        shop,
        [
            ev("page_view", now, "kiosk"),
            ev("purchase", now, "kiosk", user_id="alice", **sale),
            ev("purchase", now, "kiosk", user_id="bob", **sale),
        ],
    )
    args = ["events", "forget-customer", "--tenant", str(shop.id), "--user-id", "alice"]
    result = runner.invoke(args=args)
    assert json.loads(result.output)["events_deleted"] == 2, result.output
    db.session.expire_all()
    kept = db.session.execute(select(Event.event_type, Event.user_id)).all()
    assert kept == [("purchase", "bob")]


def test_an_export_gives_times_in_utc_whatever_the_databases_time_zone(
    app, make_tenant, add_events, is_postgres
):
    """PostgreSQL answers a timestamptz in its session's TimeZone (the host's, often, as
    initdb found it): the export says UTC, as it promises."""
    if not is_postgres:
        pytest.skip("SQLite keeps no time zone")
    tenant = make_tenant()
    at = datetime(2026, 10, 9, 9, 32, 15, tzinfo=UTC)
    add_events(tenant, [("pageview", at, "10.0.0.1", None)])
    with db.engine.connect() as connection:
        connection.exec_driver_sql("SET TIME ZONE 'America/Tegucigalpa'")
        try:
            lines = list(exported_lines(Session(bind=connection), tenant))
        finally:
            connection.exec_driver_sql("RESET TIME ZONE")
    (event,) = [json.loads(line)["event"] for line in lines if line.startswith('{"event"')]
    assert event["created_at"] == "2026-10-09T09:32:15+00:00"


@pytest.mark.parametrize("page", [EXPORT_PAGE, 1])
def test_tenant_export_prints_all_of_the_tenants_data(
    runner, make_tenant, make_user, add_events, store_events, monkeypatch, page
):
    monkeypatch.setattr("tenant_analytics.tenant_data.EXPORT_PAGE", page)  # page after page
    mine, other = make_tenant(), make_tenant()
    owner = make_user(mine)
    now = utcnow()
    add_events(mine, [("pageview", now - timedelta(hours=1), "10.0.0.1", {"note": "ñ"})])
    store_events(mine, [ev("purchase", now, "s1", revenue=Decimal("12.50"), user_id="c-7")])
    add_events(mine, [("pageview", now, "10.0.0.2", None)])  # the same instant as the sale
    add_events(other, [("pageview", now, "10.0.0.1", None)])
    claim_keys(db.session, [(mine.id, "idem:order-9")], now=now, window=None)
    claim_keys(db.session, [(other.id, "idem:theirs")], now=now, window=None)
    db.session.commit()
    runner.invoke(args=["product", "create", "--tenant", str(mine.id), "--name", "Pan"])
    runner.invoke(args=["product", "create", "--tenant", str(other.id), "--name", "Café"])
    exported = runner.invoke(args=["tenant", "export", "--id", str(mine.id)])
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in exported.output.splitlines()]
    tenant = lines[0]["tenant"]
    assert (tenant["id"], tenant["slug"], tenant["owners"]) == (mine.id, mine.slug, [owner.email])
    assert tenant["currency"] == mine.currency  # every column, not only the API's view
    assert [line["product"]["name"] for line in lines if "product" in line] == ["Pan"]
    assert [line["key"]["key"] for line in lines if "key" in line] == ["idem:order-9"]
    events = [line["event"] for line in lines if "event" in line]
    assert [e["event_type"] for e in events[:1]] == ["pageview"]  # oldest first
    assert sorted(e["event_type"] for e in events[1:]) == ["pageview", "purchase"]
    assert {e["tenant_id"] for e in events} == {mine.id}
    # Not the row id: one sequence for every tenant, whose gaps would count the others'.
    assert not any("id" in e for e in events) and all("visitor_hash" in e for e in events)
    assert events[0]["metadata"] == {"note": "ñ"} and events[0]["visitor_hash"]
    (sale,) = [e for e in events if e["event_type"] == "purchase"]
    assert sale["revenue"] == "12.50" and sale["user_id"] == "c-7"
    assert datetime.fromisoformat(sale["created_at"]) == now
    assert lines[-1] == {"end": {"events": 3}}
    missing = runner.invoke(args=["tenant", "export", "--id", "999999"])
    assert missing.exit_code == 1 and "no tenant with id 999999" in missing.output


def test_user_grant_and_revoke_change_what_the_token_reads(
    runner, client, make_tenant, make_user, auth_headers
):
    mine, other = make_tenant(), make_tenant()
    user = make_user(mine)
    email, headers, other_id = user.email, auth_headers(user), other.id
    assert client.get(f"/api/analytics/{other_id}", headers=headers).status_code == 404
    granted = runner.invoke(args=["user", "grant", "--email", email, "--tenant", str(other_id)])
    assert granted.exit_code == 0, granted.output
    assert json.loads(granted.output)["tenants"] == sorted([mine.id, other_id])
    assert client.get(f"/api/analytics/{other_id}", headers=headers).status_code == 200
    again = runner.invoke(args=["user", "grant", "--email", email, "--tenant", str(other_id)])
    assert json.loads(again.output)["tenants"] == sorted([mine.id, other_id])  # no twice
    revoked = runner.invoke(args=["user", "revoke", "--email", email, "--tenant", str(other_id)])
    assert json.loads(revoked.output)["tenants"] == [mine.id]
    assert client.get(f"/api/analytics/{other_id}", headers=headers).status_code == 404
    assert client.get(f"/api/analytics/{mine.id}", headers=headers).status_code == 200
    for command in ("grant", "revoke"):
        unknown = runner.invoke(args=["user", command, "--email", email, "--tenant", "999999"])
        assert unknown.exit_code == 1 and "no tenant with id 999999" in unknown.output


def test_user_delete_ends_its_tokens_and_keeps_its_tenants(
    runner, client, make_tenant, make_user, auth_headers
):
    tenant = make_tenant()
    user = make_user(tenant)
    email, headers, tenant_id = user.email, auth_headers(user), tenant.id
    assert client.get(f"/api/analytics/{tenant_id}", headers=headers).status_code == 200
    deleted = runner.invoke(args=["user", "delete", "--email", email])
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(deleted.output)["deleted"] is True
    assert client.get(f"/api/analytics/{tenant_id}", headers=headers).status_code == 401
    db.session.expire_all()
    assert db.session.get(Tenant, tenant_id) is not None
    assert db.session.scalar(select(User).where(User.email == email)) is None
    again = runner.invoke(args=["user", "delete", "--email", email])
    assert again.exit_code == 1 and email in again.output


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--slug", "bad slug!"),
        ("--slug", "Upper"),
        ("--slug", "a" * 81),
        ("--timezone", "localtime"),  # the host's zone, not an IANA one
        ("--timezone", "America"),  # a directory of the zone database
    ],
)
def test_tenant_create_refuses_bad_slugs_and_zones(runner, option, value):
    args = {"--name": "A", "--slug": "fine-slug-1", "--timezone": "UTC", option: value}
    result = runner.invoke(args=["tenant", "create", *[x for pair in args.items() for x in pair]])
    assert result.exit_code == 2 and option in result.output
    assert db.session.scalar(select(func.count()).select_from(Tenant)) == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--name", ""),
        ("--name", "   "),
        ("--name", "n" * 201),
        ("--currency", "XXX"),  # the code of no currency
        ("--currency", "ZZZ"),
    ],
)
def test_tenant_create_refuses_what_the_api_refuses(runner, option, value):
    args = {"--name": "A", "--slug": "fine-slug-1", option: value}
    result = runner.invoke(args=["tenant", "create", *[x for pair in args.items() for x in pair]])
    assert result.exit_code == 2 and option in result.output, result.output
    assert db.session.scalar(select(func.count()).select_from(Tenant)) == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--price", "nan"),  # stored as NaN, the products list became invalid JSON
        ("--price", "inf"),
        ("--price", "-1"),
        ("--price", "1e30"),  # more than numeric(14, 2) holds
        ("--price", "12.345"),  # stored as given on SQLite, shown as 12.35
        ("--name", ""),
        ("--name", "n" * 201),
        ("--slug", "s" * 201),
    ],
)
def test_product_create_refuses_what_the_api_refuses(runner, client, make_tenant, option, value):
    from tenant_analytics.models import Product

    tenant_id = make_tenant().id
    args = {"--tenant": str(tenant_id), "--name": "Pan", "--price": "12.50", option: value}
    result = runner.invoke(args=["product", "create", *[x for pair in args.items() for x in pair]])
    assert result.exit_code == 2 and option in result.output, result.output
    assert "Traceback" not in result.output
    assert db.session.scalar(select(func.count()).select_from(Product)) == 0


def test_product_create_stores_the_price_as_given(runner, make_tenant):
    tenant_id = make_tenant().id
    args = ["product", "create", "--tenant", str(tenant_id), "--name", "Pan", "--price", "0.1"]
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["price"] == 0.1


def test_demo_runs_once_and_logs_in(runner, client):
    first = runner.invoke(args=["demo", "--url", "http://127.0.0.1:5055"])
    assert first.exit_code == 0, first.output
    events = db.session.scalar(select(func.count()).select_from(Event))
    second = runner.invoke(args=["demo"])
    assert second.exit_code == 0
    assert db.session.scalar(select(func.count()).select_from(Event)) == events > 100
    assert "curl" in first.output and "http://127.0.0.1:5055/api/auth/login" in first.output
    assert "5000" not in first.output
    purchases = select(func.count()).select_from(Event).where(Event.event_type == "purchase")
    assert db.session.scalar(purchases) > 0  # the store reports have something to show
    login = client.post(
        "/api/auth/login", json={"email": "owner@demo.example", "password": "demo-password"}
    )
    assert login.status_code == 200
    # The README's v1 example names product 1 of tenant 1: the demo's catalogue has it.
    tenant = db.session.scalar(select(Tenant).where(Tenant.slug == "demo-bakery"))
    products = client.get(
        f"/api/tenants/{tenant.id}/products",
        headers={"Authorization": f"Bearer {login.get_json()['access_token']}"},
    ).get_json()
    first_product = products["products"][0]["id"]
    tracked = client.post(
        "/api/v1/analytics/track",
        json={"tenant_id": str(tenant.id), "type": "whatsapp_click", "product_id": first_product},
    )
    assert tracked.status_code == 202, tracked.get_json()


@pytest.mark.parametrize("url", ["not a url", "", "https://evil.example/x?", "http://h:99x"])
def test_demo_url_must_be_the_servers_address(runner, url):
    """It becomes the demo's landing page, which the QR code leads to ("not a url/demo/")."""
    result = runner.invoke(args=["demo", "--url", url])
    assert result.exit_code == 2 and "'--url'" in result.output
    assert db.session.scalar(select(func.count()).select_from(Tenant)) == 0


def test_demo_again_after_its_owner_changed_the_password(runner, client):
    """The demo run again (make run) does not print a password that no longer works."""
    assert runner.invoke(args=["demo"]).exit_code == 0
    login = {"email": "owner@demo.example", "password": "demo-password"}
    tokens = client.post("/api/auth/login", json=login).get_json()
    changed = client.post(
        "/api/auth/password",
        json={"current_password": "demo-password", "new_password": "a-better-one"},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert changed.status_code == 200, changed.get_json()
    again = runner.invoke(args=["demo"])
    assert again.exit_code == 0, again.output
    assert "owner@demo.example / demo-password" not in again.output
    assert '"password": "demo-password"' not in again.output
    assert "with the password you gave it" in again.output


def test_demo_landing_page_carries_the_snippet_and_its_qr_code_leads_there(runner, client):
    assert client.get("/demo/").status_code == 404  # no demo loaded yet
    result = runner.invoke(args=["demo", "--url", "http://127.0.0.1:5055"])
    assert "http://127.0.0.1:5055/demo/" in result.output
    tenant = db.session.scalar(select(Tenant).where(Tenant.slug == "demo-bakery"))
    page = client.get("/demo/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert f'src="/static/ta.js" data-tenant="{tenant.id}"' in html
    assert "Torta de chocolate" in html and 'data-ta-event="product_click"' in html
    phone = {"User-Agent": "Mozilla/5.0 (Android) Mobile"}
    scan = client.get("/q/demo-bakery", headers=phone)
    assert scan.headers["Location"] == "http://127.0.0.1:5055/demo/"
    # Served elsewhere next time (make run PORT=8080): the code leads to that page.
    assert runner.invoke(args=["demo", "--url", "http://127.0.0.1:8080"]).exit_code == 0
    scan = client.get("/q/demo-bakery", headers=phone)
    assert scan.headers["Location"] == "http://127.0.0.1:8080/demo/"


def test_no_demo_page_in_production(make_app):
    app = make_app(APP_ENV="production")
    assert app.test_client().get("/demo/").status_code == 404


def test_demo_never_gives_its_known_login_to_a_tenant_it_did_not_make(runner, make_tenant, client):
    make_tenant(slug="demo-bakery", name="A Real Bakery")
    result = runner.invoke(args=["demo"])
    assert result.exit_code == 1 and "did not make" in result.output
    assert db.session.scalar(select(func.count()).select_from(User)) == 0
    login = client.post(
        "/api/auth/login", json={"email": "owner@demo.example", "password": "demo-password"}
    )
    assert login.status_code == 401


def test_demo_is_refused_in_production(make_app):
    app = make_app(APP_ENV="production")
    with app.app_context():
        result = app.test_cli_runner().invoke(args=["demo"])
        assert result.exit_code == 1 and "production" in result.output
        assert db.session.scalar(select(func.count()).select_from(Tenant)) == 0


def test_a_production_server_refuses_the_demo_login(runner, client, make_app, caplog):
    """`flask demo` run on the production database without APP_ENV (from a shell, a cron)
    must not leave a sign-in whose password the README publishes."""
    assert runner.invoke(args=["demo"]).exit_code == 0
    demo_login = {"email": "Owner@Demo.example", "password": "demo-password"}
    assert client.post("/api/auth/login", json=demo_login).status_code == 200  # development
    production = make_app(APP_ENV="production")
    refused = production.test_client().post("/api/auth/login", json=demo_login)
    assert (refused.status_code, refused.get_json()["error"]) == (401, "invalid_credentials")
    assert "demo's owner refused in production" in caplog.text
    # Nor a token signed with the production key (`flask demo` run with its environment
    # but APP_ENV): an access token reads nothing, a refresh token mints nothing.
    with production.app_context():
        owner = db.session.scalar(select(User).where(User.email == "owner@demo.example"))
        access, refresh = access_token_for(owner, "cli"), refresh_token_for(owner, "cli")
    served = production.test_client()
    read = served.get("/api/tenants", headers={"Authorization": f"Bearer {access}"})
    renewed = served.post("/api/auth/refresh", headers={"Authorization": f"Bearer {refresh}"})
    assert (read.status_code, renewed.status_code) == (401, 401)


def test_demo_purchases_are_stored_as_track_stores_them(runner, client):
    assert runner.invoke(args=["demo"]).exit_code == 0
    tenant = db.session.scalar(select(Tenant).where(Tenant.slug == "demo-bakery"))
    demo = db.session.scalars(
        select(Event).where(Event.event_type == "purchase").order_by(Event.id).limit(1)
    ).one()
    body = {
        "tenant_id": tenant.id,
        "event_type": "purchase",
        "session_id": "posted-session",
        "product_slug": demo.product_slug,
        "product_name": demo.product_name,
        "price": float(demo.price),
        "metadata": {"quantity": demo.quantity},
        "user_id": demo.user_id,
    }
    assert client.post("/api/analytics/track", json=body).status_code == 201
    posted = db.session.scalars(select(Event).where(Event.session_id == "posted-session")).one()
    stored = ("price", "quantity", "revenue", "currency", "metadata_", "product_name")
    assert [getattr(demo, name) for name in stored] == [getattr(posted, name) for name in stored]


def test_partitions_ahead_is_bounded(runner):
    result = runner.invoke(args=["events", "partitions", "--ahead", "1000"])  # a typo
    assert result.exit_code == 2 and "--ahead" in result.output


def test_events_commands(runner, make_tenant, add_events, is_postgres):
    from datetime import timedelta

    from tenant_analytics.models import DailyVisitorCount, utcnow

    tenant = make_tenant()
    add_events(
        tenant,
        [
            ("pageview", utcnow() - timedelta(days=400), "10.0.0.1", None),
            ("pageview", utcnow(), "10.0.0.2", None),
        ],
    )
    ahead = runner.invoke(args=["events", "partitions", "--ahead", "1"])
    assert ahead.exit_code == 0, ahead.output
    assert isinstance(json.loads(ahead.output)["created"], list)
    too_soon = runner.invoke(args=["events", "purge", "--older-than", "7"])
    assert too_soon.exit_code != 0  # would drop months that backdated beacons still reach
    for past_any_calendar in ("36501", "740000", str(10**20)):  # once a traceback
        refused = runner.invoke(args=["events", "purge", "--older-than", past_any_calendar])
        assert refused.exit_code == 2 and "Traceback" not in refused.output
        assert "is not in the range 62<=x<=36500" in refused.output
    purged = runner.invoke(args=["events", "purge", "--older-than", "90"])
    assert purged.exit_code == 0, purged.output
    assert db.session.scalar(select(func.count()).select_from(Event)) == 1
    report = json.loads(purged.output)
    if is_postgres:  # whole months go: the partition of the old event, named
        assert any(name.startswith("events_y") for name in report["dropped"])
        assert "events_deleted" not in report
    else:  # no partitions: rows are deleted and counted
        assert (report["dropped"], report["events_deleted"]) == ([], 1)
    db.session.execute(DailyVisitorCount.__table__.delete())
    db.session.commit()
    rebuilt = runner.invoke(args=["events", "rebuild-rollups", "--tenant", str(tenant.id)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert db.session.scalar(select(func.sum(DailyVisitorCount.visitors))) == 1
    missing = runner.invoke(args=["events", "rebuild-rollups", "--tenant", "9999"])
    assert missing.exit_code == 1


@pytest.mark.parametrize("batch", [FORGET_BATCH, 1])
def test_purge_takes_the_days_it_emptied_out_of_the_rollups(
    runner, make_tenant, store_events, add_events, monkeypatch, batch
):
    """The reports read rollups and fall back to the raw events: after a purge both must
    say the same of its months, and no visitor hash outlives its events there. (Deleted
    in batches, each a short hold of the tenant's rollup lock.)"""
    monkeypatch.setattr("tenant_analytics.rollups.FORGET_BATCH", batch)
    tenant = make_tenant(timezone="America/Tegucigalpa")
    zone = ZoneInfo(tenant.timezone)
    now = utcnow()
    old = now - timedelta(days=120)
    store_events(
        tenant,
        [
            ev("page_view", old, "left"),
            ev("product_view", old, "left"),
            ev("page_view", old, "came-back"),
            ev("page_view", now, "came-back"),
        ],
    )
    add_events(tenant, [("pageview", old, "10.0.0.1", None), ("pageview", now, "10.0.0.2", None)])

    def funnels(first, last):
        window = {"tenant_id": tenant.id, "zone": zone, "start": first, "end": last}
        return [
            store_funnel.conversion_funnel(db.session, **window, use_rollups=rollups)
            for rollups in (True, False)
        ]

    old_day, today = old.astimezone(zone).date(), now.astimezone(zone).date()
    before = funnels(old_day - timedelta(days=1), old_day + timedelta(days=1))
    assert before[0] == before[1] and before[0]["funnel"][1]["count"] == 1  # "left"

    def rollup_rows() -> int:
        """Rows of counts: not the purge's mark of the day it cut through."""
        rows = sum(db.session.scalar(select(func.count()).select_from(m)) for m in ROLLUP_MODELS)
        return rows - db.session.scalar(select(func.count()).where(FORGOTTEN_MARK))

    kept_before = rollup_rows()
    purged = runner.invoke(args=["events", "purge", "--older-than", "90"])
    assert purged.exit_code == 0, purged.output
    deleted = json.loads(purged.output)["rollup_rows_deleted"]
    assert deleted == kept_before - rollup_rows() and deleted > 1  # with batch 1: several
    db.session.expire_all()
    rolled_up, raw = funnels(old_day - timedelta(days=1), old_day + timedelta(days=1))
    assert rolled_up == raw and all(step["count"] == 0 for step in raw["funnel"])
    recent, recent_raw = funnels(today - timedelta(days=6), today)
    assert recent == recent_raw and recent["funnel"][0]["count"] == 1  # "came-back", kept
    # Nothing of the purged days is left in any rollup, per-visitor rows included.
    for model in ROLLUP_MODELS:
        day = model.last_day if hasattr(model, "last_day") else model.day
        counts = select(func.min(day))
        if model is SessionLastSeenCount:
            counts = counts.where(~FORGOTTEN_MARK)
        oldest = db.session.scalar(counts)
        assert oldest is None or oldest >= today - timedelta(days=6), model


def test_purge_forgets_the_visitors_of_the_day_it_cut_through(
    runner, make_tenant, add_events, is_postgres, monkeypatch
):
    """The local day at the cutoff lost its first hours: its visitor and session rows go
    (a hash seen only then would outlive its event), its counts stay until a rebuild."""
    now = datetime.combine((utcnow() - timedelta(days=90)).date(), dt_time(12), UTC)
    now += timedelta(days=90)  # the cutoff at noon UTC, 6:00 in Honduras
    monkeypatch.setattr("tenant_analytics.cli.utcnow", lambda: now)
    cutoff = now - timedelta(days=90)
    # Purge's first instant kept: the cutoff's month on PostgreSQL, the cutoff on SQLite.
    gone = cutoff.replace(day=1, hour=0) if is_postgres else cutoff
    honduras, utc = make_tenant(timezone="America/Tegucigalpa"), make_tenant(timezone="UTC")
    for tenant in (honduras, utc):
        add_events(
            tenant,
            [
                ("pageview", gone - timedelta(hours=1), "10.0.0.1", None),  # purged
                ("pageview", gone + timedelta(hours=1), "10.0.0.2", None),  # kept
            ],
        )

    def day_rows(tenant: Tenant, model) -> int:
        day = gone.astimezone(ZoneInfo(tenant.timezone)).date()
        column = model.last_day if hasattr(model, "last_day") else model.day
        counted = select(func.count()).where(model.tenant_id == tenant.id, column == day)
        return db.session.scalar(counted.select_from(model))

    assert day_rows(honduras, DailyVisitor) == 2  # 18:00 and 20:00 or 5:00 and 7:00: one day
    purged = runner.invoke(args=["events", "purge", "--older-than", "90"])
    assert purged.exit_code == 0, purged.output
    db.session.expire_all()
    for model in (DailyVisitor, VisitorLastSeen, LastSeenCount):
        assert day_rows(honduras, model) == 0, model
    page_views = select(DailyEventCount.events).where(DailyEventCount.tenant_id == honduras.id)
    assert db.session.scalars(page_views).all() == [2]  # the day's count stays
    # In UTC a PostgreSQL purge ends at midnight: the day after is whole, and kept.
    assert day_rows(utc, DailyVisitor) == (1 if is_postgres else 0)
    assert day_rows(utc, VisitorLastSeen) == (1 if is_postgres else 0)
    rebuilt = runner.invoke(args=["events", "rebuild-rollups", "--tenant", str(honduras.id)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert day_rows(honduras, DailyVisitor) == 1  # the visitor whose event is kept


def test_a_funnel_reaching_the_day_a_purge_cut_through_counts_its_kept_sessions(
    runner, make_tenant, store_events, add_events, is_postgres, monkeypatch
):
    """The purge forgets the session ids of the day it cut through, kept hours included:
    a funnel reaching that day counted none of its sessions from the rollups. It counts
    them from the events: after the purge, after a rebuild, and after the next purge
    forgets them again."""
    now = datetime.combine((utcnow() - timedelta(days=90)).date(), dt_time(12), UTC)
    now += timedelta(days=90)
    monkeypatch.setattr("tenant_analytics.cli.utcnow", lambda: now)
    cutoff = now - timedelta(days=90)
    gone = cutoff.replace(day=1, hour=0) if is_postgres else cutoff
    tenant = make_tenant(timezone="America/Tegucigalpa")  # the cut day: 17:00 and 19:00
    zone = ZoneInfo(tenant.timezone)
    store_events(
        tenant,
        [
            ev("page_view", gone - timedelta(hours=1), "purged"),
            ev("page_view", gone + timedelta(hours=1), "kept"),
            ev("product_view", gone + timedelta(hours=1), "kept"),
        ],
    )
    # A landing page's view, with no session, the day before: a first day naming no session.
    add_events(tenant, [("pageview", gone - timedelta(days=1), "10.0.0.1", None)])
    cut_day = gone.astimezone(zone).date()
    window = {"tenant_id": tenant.id, "zone": zone, "start": cut_day, "end": now.date()}

    def sessions_per_step(use_rollups: bool) -> list[int]:
        funnel = store_funnel.conversion_funnel(db.session, **window, use_rollups=use_rollups)
        return [step["count"] for step in funnel["funnel"]]

    assert sessions_per_step(True) == sessions_per_step(False) == [2, 1, 0, 0, 0]
    # Before any purge the rollups answer, though the first day names no session.
    assert store_rollups.sessions_forgotten_on(db.session, tenant_id=tenant.id) is None
    for command in (
        ["events", "purge", "--older-than", "90"],
        ["events", "rebuild-rollups", "--tenant", str(tenant.id)],
        ["events", "purge", "--older-than", "90"],
    ):
        result = runner.invoke(args=command)
        assert result.exit_code == 0, result.output
        db.session.expire_all()
        assert sessions_per_step(True) == sessions_per_step(False) == [1, 1, 0, 0, 0], command


def test_a_purge_stopped_halfway_has_marked_the_day_it_cut_through(
    runner, make_tenant, store_events, is_postgres, monkeypatch
):
    """The mark goes first: a purge stopped after forgetting some of the day's sessions
    (a lost connection, a killed cron job) left them forgotten and the day unmarked, and
    the funnel counted too few until the next purge."""
    now = datetime.combine((utcnow() - timedelta(days=90)).date(), dt_time(12), UTC)
    now += timedelta(days=90)
    monkeypatch.setattr("tenant_analytics.cli.utcnow", lambda: now)
    cutoff = now - timedelta(days=90)
    gone = cutoff.replace(day=1, hour=0) if is_postgres else cutoff
    tenant = make_tenant(timezone="America/Tegucigalpa")
    store_events(tenant, [ev("page_view", gone + timedelta(hours=1), "kept")])

    def stop_at_the_first_deletion(_conn, _cursor, statement, *_args):
        if statement.startswith("DELETE FROM") and "LIMIT" in statement:
            raise RuntimeError("the purge is stopped here")

    event.listen(db.engine, "before_cursor_execute", stop_at_the_first_deletion)
    try:
        stopped = runner.invoke(args=["events", "purge", "--older-than", "90"])
    finally:
        event.remove(db.engine, "before_cursor_execute", stop_at_the_first_deletion)
    assert stopped.exit_code != 0
    db.session.rollback()
    forgotten = store_rollups.sessions_forgotten_on(db.session, tenant_id=tenant.id)
    assert forgotten == gone.astimezone(ZoneInfo(tenant.timezone)).date()


def test_a_report_while_a_purge_runs_counts_the_events_left(
    runner, make_tenant, store_events, monkeypatch
):
    """The purge forgets each tenant's rollups after the events are gone, one tenant after
    another, each waiting for its rollup lock: meanwhile a funnel reaching the purged
    days counted the sessions the rollups still named there (a helper saw 160 page
    views against the 101 left)."""
    now = datetime.combine(utcnow().date(), dt_time(12), UTC)
    monkeypatch.setattr("tenant_analytics.cli.utcnow", lambda: now)
    tenant = make_tenant(timezone="Asia/Tokyo")
    old, recent = now - timedelta(days=130), now - timedelta(days=10)
    store_events(
        tenant,
        [
            ev("page_view", old, "gone"),
            ev("product_view", old, "gone"),
            ev("page_view", recent, "kept"),
        ],
    )
    window = {
        "tenant_id": tenant.id,
        "zone": ZoneInfo(tenant.timezone),
        "start": (now - timedelta(days=140)).date(),
        "end": now.date(),
    }
    seen = []
    forget = rollups.forget_purged_days

    def report_then_forget(session, gone):
        seen.append(
            [
                [
                    step["count"]
                    for step in store_funnel.conversion_funnel(
                        db.session, **window, use_rollups=use_rollups
                    )["funnel"]
                ]
                for use_rollups in (True, False)
            ]
        )
        return forget(session, gone)

    monkeypatch.setattr("tenant_analytics.cli.forget_purged_days", report_then_forget)
    purged = runner.invoke(args=["events", "purge", "--older-than", "90"])
    assert purged.exit_code == 0, purged.output
    assert seen == [[[1, 0, 0, 0, 0]] * 2]


def test_a_purge_that_drops_nothing_takes_its_marks_away(
    make_app, make_tenant, add_events, is_postgres, monkeypatch
):
    """Events held by a long read through every try: the purge gives up, nothing dropped,
    and the marks it made first go again (the reports of windows reaching that day read
    the rollups again, not the events until the next purge)."""
    if not is_postgres:
        pytest.skip("dropping partitions is PostgreSQL's")
    monkeypatch.setattr("tenant_analytics.cli.EVENTS_LOCK_ATTEMPTS", 1)
    app = make_app()
    with app.app_context():
        tenants = [make_tenant(timezone=zone) for zone in ("UTC", "America/Tegucigalpa")]
        for tenant in tenants:
            add_events(tenant, [("pageview", utcnow() - timedelta(days=400), "10.0.0.1", None)])
        reader = Session(db.engine)
        reader.execute(select(func.count()).select_from(Event))  # holds events until it ends
        try:
            args = ["events", "purge", "--older-than", "90"]
            given_up = app.test_cli_runner().invoke(args=args)
        finally:
            reader.rollback()
            reader.close()
        assert given_up.exit_code == 1 and "nothing was dropped" in given_up.output
        marks = select(func.count()).select_from(SessionLastSeenCount).where(FORGOTTEN_MARK)
        assert db.session.scalar(marks) == 0


def test_a_tenant_deleted_while_a_purge_marks_its_day_is_passed_over(app, make_tenant):
    """Listed, then deleted before its mark: the mark's foreign key failed and stopped
    the purge before it dropped anything."""
    tenant_id, other_id = make_tenant().id, make_tenant().id
    deleted: list[int] = []

    def delete_once_listed(_conn, _cursor, statement, *_args) -> None:
        if "FROM tenants ORDER BY" in statement and not deleted:
            deleted.append(tenant_id)
            with db.engine.begin() as elsewhere:
                elsewhere.execute(delete(Tenant).where(Tenant.id == tenant_id))

    gone = datetime(2026, 1, 1, tzinfo=UTC)
    event.listen(db.engine, "after_cursor_execute", delete_once_listed)
    try:
        marked = rollups.mark_days_to_be_purged(db.session, gone)
    finally:
        event.remove(db.engine, "after_cursor_execute", delete_once_listed)
    assert deleted == [tenant_id]
    assert marked == [(other_id, gone.date())]


def test_a_rebuild_run_between_a_purges_batches_keeps_its_mark(
    runner, make_tenant, store_events, is_postgres, monkeypatch
):
    """A rebuild (the command, a zone change, forget-customer) that gets the tenant's
    rollups between the purge's mark and its deletions recounts the cut day's sessions,
    which the purge then forgets: without the mark the funnel counted them as none."""
    now = datetime.combine((utcnow() - timedelta(days=90)).date(), dt_time(12), UTC)
    now += timedelta(days=90)
    monkeypatch.setattr("tenant_analytics.cli.utcnow", lambda: now)
    cutoff = now - timedelta(days=90)
    gone = cutoff.replace(day=1, hour=0) if is_postgres else cutoff
    tenant = make_tenant(timezone="America/Tegucigalpa")
    zone = ZoneInfo(tenant.timezone)
    kept = gone + timedelta(hours=1)
    store_events(tenant, [ev("page_view", kept, "kept"), ev("product_view", kept, "kept")])
    mark = rollups._mark_sessions_forgotten

    def mark_then_rebuild(session, tenant_id, day, *, postgres):
        mark(session, tenant_id, day, postgres=postgres)
        rebuild_rollups(session, tenant_id)
        session.commit()

    monkeypatch.setattr("tenant_analytics.rollups._mark_sessions_forgotten", mark_then_rebuild)
    purged = runner.invoke(args=["events", "purge", "--older-than", "90"])
    assert purged.exit_code == 0, purged.output
    db.session.expire_all()
    window = {"tenant_id": tenant.id, "zone": zone, "start": kept.astimezone(zone).date()}
    counts = [
        [
            step["count"]
            for step in store_funnel.conversion_funnel(
                db.session, **window, end=now.date(), use_rollups=use_rollups
            )["funnel"]
        ]
        for use_rollups in (True, False)
    ]
    assert counts == [[1, 1, 0, 0, 0]] * 2


SALE_KEY = transaction_key("old", Decimal(10), DEFAULT_CURRENCY, "purchase")


@pytest.mark.parametrize(
    ("window_seconds", "kept"),
    [
        (60, {"idem:now", SALE_KEY}),
        # A window longer than the retention still holds the keys it covers.
        (120 * 86400, {"idem:old", "idem:recent", "idem:now", SALE_KEY}),
    ],
)
def test_purge_deletes_the_keys_past_their_window(make_app, make_tenant, window_seconds, kept):
    """Idempotency keys block repeats only within their window (a repeat after it claims
    the key anew): purge deletes those past it, whatever its cutoff, as the snippet keys
    every event; so the keys of visitors' last QR scans (their visitor hashes) past
    theirs. Transaction ids are remembered for good (a replayed beacon must not add its
    revenue twice), so they stay."""
    app = make_app(IDEMPOTENCY_WINDOW_SECONDS=window_seconds)
    with app.app_context():
        tenant = make_tenant()
        now = utcnow()
        keys = [("idem:old", 100), ("idem:recent", 10), ("idem:now", 0)]
        keys += [("qr:old", 100), ("qr:recent", 10), (SALE_KEY, 100)]
        for key, days_ago in keys:
            claim_keys(
                db.session, [(tenant.id, key)], now=now - timedelta(days=days_ago), window=None
            )
        db.session.commit()
        purged = app.test_cli_runner().invoke(args=["events", "purge", "--older-than", "90"])
        assert purged.exit_code == 0, purged.output
        assert json.loads(purged.output)["dedupe_keys_deleted"] == 6 - len(kept)
        assert set(db.session.scalars(select(DedupeKey.key))) == kept
        replay = {"tenant_slug": tenant.slug, "transaction_id": "old", "value": 10}
        response = app.test_client().post("/api/v1/analytics/conversion", json=replay)
        assert response.get_json()["status"] == "ok"
        assert db.session.scalar(select(func.count()).select_from(Event)) == 0  # not again


def until_a_lock_is_awaited(watcher, statement: str) -> None:
    """Wait until a session waits for a lock in a statement ``LIKE statement``."""
    for _ in range(200):
        waiting = watcher.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE :statement"
            ),
            {"statement": statement},
        ).scalar()
        watcher.rollback()  # the view holds still for a transaction once read
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError(f"no session waited for a lock in {statement!r}")


def test_purge_lets_the_events_table_go_before_it_deletes_keys(
    make_app, make_tenant, add_events, is_postgres
):
    """Dropping a month locks the whole events table until commit: the key cleanup after it,
    however long, must not keep writers and reports waiting."""
    if not is_postgres:
        pytest.skip("dropping partitions is PostgreSQL's")
    app = make_app()
    with app.app_context():
        tenant = make_tenant()
        now = utcnow()
        add_events(tenant, [("pageview", now - timedelta(days=400), "10.0.0.1", None)])
        old = now - timedelta(days=100)
        claim_keys(db.session, [(tenant.id, "idem:old")], now=old, window=None)
        db.session.commit()
        holder = Session(db.engine)  # holds the key's row: the cleanup waits for it
        holder.execute(update(DedupeKey).where(DedupeKey.key == "idem:old").values(seen_at=now))
        runner = app.test_cli_runner()
        outcome: list = []
        args = ["events", "purge", "--older-than", "90"]
        purge = threading.Thread(target=lambda: outcome.append(runner.invoke(args=args)))
        purge.start()
        try:
            with db.engine.connect() as watcher:
                until_a_lock_is_awaited(watcher, "DELETE FROM dedupe_keys%")  # the held row
                watcher.exec_driver_sql("SET lock_timeout = '1s'")
                assert watcher.exec_driver_sql("SELECT count(*) FROM events").scalar() == 0
        finally:
            holder.rollback()
            holder.close()
            purge.join(10)
        assert outcome and outcome[0].exit_code == 0, outcome


def test_purge_behind_a_long_read_of_events_does_not_hold_up_writers(
    make_app, make_tenant, add_events, is_postgres
):
    """A DROP waiting for its lock on events (behind a long report or a rebuild) queues
    every later write behind it. Purge waits only briefly each time, then tries again:
    writers go on meanwhile, and the month is dropped once the read ends."""
    if not is_postgres:
        pytest.skip("dropping partitions is PostgreSQL's")
    app = make_app()
    with app.app_context():
        tenant = make_tenant()
        add_events(tenant, [("pageview", utcnow() - timedelta(days=400), "10.0.0.1", None)])
        db.session.commit()
        reader = Session(db.engine)
        reader.execute(select(func.count()).select_from(Event))  # holds events until it ends
        runner = app.test_cli_runner()
        outcome: list = []
        args = ["events", "purge", "--older-than", "90"]
        purge = threading.Thread(target=lambda: outcome.append(runner.invoke(args=args)))
        purge.start()
        try:
            with db.engine.connect() as watcher:
                until_a_lock_is_awaited(watcher, "DROP TABLE%")
            started = time.monotonic()
            body = {"tenant_id": tenant.id, "event_type": "pageview"}
            response = app.test_client().post("/api/analytics/track", json=body)
            assert response.status_code == 201, response.get_json()
            assert time.monotonic() - started < 1.5  # not the 2 s of a write's lock timeout
        finally:
            reader.rollback()
            reader.close()
            purge.join(10)
        assert outcome and outcome[0].exit_code == 0, outcome
        assert json.loads(outcome[0].stdout)["dropped"], outcome[0].output


def test_partitions_behind_a_long_read_of_events_do_not_hold_up_writers(
    make_app, make_tenant, is_postgres
):
    """A new month's partition locks the whole of events, as a DROP does: made behind a
    long read (a report, a rebuild, pg_dump), it waits briefly at a time, as purge does,
    and every tenant's writes go on meanwhile (they waited out their lock timeout: 503s)."""
    if not is_postgres:
        pytest.skip("partitions are PostgreSQL's")
    app = make_app()
    with app.app_context():
        tenant = make_tenant()
        month = month_of(utcnow())
        for _ in range(36):
            month = next_month(month)
        db.session.execute(text(f"DROP TABLE IF EXISTS {partition_name(month)}"))
        db.session.commit()
        reader = Session(db.engine)
        reader.execute(select(func.count()).select_from(Event))  # holds events until it ends
        runner = app.test_cli_runner()
        outcome: list = []
        args = ["events", "partitions", "--ahead", "36"]
        partitions = threading.Thread(target=lambda: outcome.append(runner.invoke(args=args)))
        partitions.start()
        try:
            with db.engine.connect() as watcher:
                until_a_lock_is_awaited(watcher, "CREATE TABLE%")
            started = time.monotonic()
            body = {"tenant_id": tenant.id, "event_type": "pageview"}
            response = app.test_client().post("/api/analytics/track", json=body)
            assert response.status_code == 201, response.get_json()
            assert time.monotonic() - started < 1.5  # not the 2 s of a write's lock timeout
        finally:
            reader.rollback()
            reader.close()
            partitions.join(10)
        assert outcome and outcome[0].exit_code == 0, outcome
        assert partition_name(month) in json.loads(outcome[0].stdout)["created"]


def test_a_setting_the_command_line_cannot_run_with_is_one_line(tmp_path):
    """As gunicorn's workers say it: what to fix, not a traceback through Flask's CLI."""
    env = {**os.environ, "APP_ENV": "production", "PYTHONPATH": str(ROOT / "src")}
    for secret in ("JWT_SECRET_KEY", "VISITOR_HASH_KEY"):
        env.pop(secret, None)
    flask = [sys.executable, "-m", "flask", "--app", "tenant_analytics", "tenant", "list"]
    result = subprocess.run(flask, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: refusing to start in production without secrets (unset or published):"
        " JWT_SECRET_KEY, VISITOR_HASH_KEY"
    ]
