"""Migrations walked down and up again on a database of their own, with data in it.

An operator rolling a deploy back runs ``flask db downgrade``; rolling forward again
must work and give back the same events and the same dashboard numbers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, event, inspect, select, text
from sqlalchemy.pool import NullPool

from tenant_analytics import create_app
from tenant_analytics.config import normalize_database_url
from tenant_analytics.demo import DEMO_SLUG, load_demo
from tenant_analytics.extensions import db
from tenant_analytics.models import (
    MIGRATIONS_LOCK,
    SCHEMA_REVISION,
    DailyEventCount,
    DedupeKey,
    Event,
    Tenant,
    utcnow,
)
from tenant_analytics.partitions import (
    ensure_partitions,
    include_in_migrations,
    month_of,
    partition_name,
)
from tenant_analytics.rollups import ROLLUP_MODELS, rebuild_rollups

from .conftest import app_config, release_connections
from .servers import ROOT

FLASK = str(Path(sys.executable).with_name("flask"))

# Columns every revision from 0002 on has: what a downgrade to 0002 must keep.
EVENT_COLUMNS = ("tenant_id", "id", "created_at", "event_type", "visitor_hash", "session_id")
EVENT_COLUMNS += ("product_slug", "product_name", "price", "quantity", "source", "revenue")


@pytest.fixture
def scratch_url(database_url: str, tmp_path) -> Iterator[Callable[[], str]]:
    """Databases no other test uses: schemas of their own on PostgreSQL, files on SQLite."""
    schemas: list[str] = []

    def _make() -> str:
        if not database_url.startswith("postgresql"):
            return f"sqlite:///{tmp_path / f'migrations-{uuid.uuid4().hex}.db'}"
        schemas.append(f"ta_migrations_{uuid.uuid4().hex[:12]}")
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schemas[-1]}"))
        separator = "&" if "?" in database_url else "?"
        return f"{database_url}{separator}options=-csearch_path%3D{schemas[-1]}"

    engine = create_engine(normalize_database_url(database_url))
    yield _make
    with engine.begin() as conn:
        for schema in schemas:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


@contextmanager
def app_on(url: str) -> Iterator[Flask]:
    app = create_app(app_config(url, RATELIMIT_ENABLED=False))
    try:
        with app.app_context():
            yield app
            db.session.remove()
    finally:
        release_connections(app)  # its group committer and pool: other tests need them


@pytest.fixture
def scratch_app(scratch_url: Callable[[], str]) -> Iterator[Flask]:
    with app_on(scratch_url()) as app:
        yield app


def revisions_newest_first(app: Flask) -> list[Any]:
    config = app.extensions["migrate"].migrate.get_config()
    return list(ScriptDirectory.from_config(config).walk_revisions())


def schema_fingerprint() -> dict[str, Any]:
    """Tables with their columns, keys, indexes and foreign keys, as the database has them."""
    inspector = inspect(db.engine)
    names = inspector.get_table_names()
    tables = [name for name in names if include_in_migrations(name, "table", {})]
    return {
        table: (
            [
                (column["name"], str(column["type"]), column["nullable"], column["default"])
                for column in inspector.get_columns(table)
            ],
            inspector.get_pk_constraint(table)["constrained_columns"],
            sorted(
                (index["name"], index["column_names"], bool(index["unique"]))
                for index in inspector.get_indexes(table)
            ),
            sorted(
                (key["constrained_columns"], key["referred_table"], key["referred_columns"])
                for key in inspector.get_foreign_keys(table)
            ),
        )
        for table in sorted(tables)
    }


def event_rows() -> list[tuple]:
    columns = [Event.__table__.c[name] for name in EVENT_COLUMNS]
    with db.engine.connect() as conn:
        return conn.execute(select(*columns).order_by(Event.tenant_id, Event.id)).all()


def rollup_rows() -> dict[str, list[tuple]]:
    with db.engine.connect() as conn:
        return {
            model.__tablename__: conn.execute(
                select(model.__table__).order_by(*model.__table__.primary_key.columns)
            ).all()
            for model in ROLLUP_MODELS
        }


def schema_differences() -> list[Any]:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": include_in_migrations})
        return compare_metadata(context, db.metadata)


def test_each_downgrade_gives_its_revisions_schema_and_keeps_the_events(
    scratch_url: Callable[[], str],
) -> None:
    with app_on(scratch_url()) as app:
        revisions = revisions_newest_first(app)
        schemas = {}
        for revision in reversed(revisions):
            upgrade(revision=revision.revision)
            schemas[revision.revision] = schema_fingerprint()

    with app_on(scratch_url()) as app:
        upgrade()
        load_demo(db.session, "http://127.0.0.1:5000")
        db.session.commit()
        events, rollups = event_rows(), rollup_rows()
        assert len(events) > 100 and all(rollups.values())

        for revision in revisions:
            if revision.down_revision == "0001":
                break  # 0002 added the store columns: below it, they are gone
            downgrade(revision=revision.down_revision)
            assert schema_fingerprint() == schemas[revision.down_revision], revision.down_revision
            assert event_rows() == events, f"downgrade to {revision.down_revision}"
        db.session.remove()

        upgrade()
        assert event_rows() == events
        assert rollup_rows() == rollups  # 0005 counted the events again
        assert schema_differences() == []

        # The id sequence and the monthly partitions still serve new events.
        tenant = db.session.scalars(select(Tenant)).one()
        answer = app.test_client().post(
            "/api/analytics/track",
            json={"tenant_id": tenant.id, "event_type": "page_view"},
            headers={"User-Agent": "Mozilla/5.0 (Linux; Android 14) Mobile"},
        )
        assert answer.status_code in (200, 201), answer.get_json()
        assert len(event_rows()) == len(events) + 1
        assert max(row.id for row in event_rows()) > max(row.id for row in events)


def test_downgrade_to_nothing_and_upgrade_again_gives_the_models_schema(
    scratch_app: Flask,
) -> None:
    upgrade()
    load_demo(db.session, "http://127.0.0.1:5000")
    db.session.commit()
    db.session.remove()

    downgrade(revision="base")
    assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}

    upgrade()
    assert schema_differences() == []
    load_demo(db.session, "http://127.0.0.1:5000")  # a new database's first tenant
    db.session.commit()
    assert event_rows()


def test_an_upgrade_script_gives_the_schema_an_upgrade_gives(
    scratch_url: Callable[[], str], is_postgres: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """`flask db upgrade --sql` writes the script for a DBA to run: run on an empty
    database, it builds the schema `db upgrade` builds, its partitions included."""
    if not is_postgres:
        pytest.skip("a script of SQLite's table rebuilds needs the tables to read")
    with app_on(scratch_url()):
        upgrade()
        partitions = sorted(inspect(db.engine).get_table_names())
    with app_on(scratch_url()):
        capsys.readouterr()
        upgrade(sql=True)
        script = capsys.readouterr().out
        assert inspect(db.engine).get_table_names() == []  # written, not run
        connection = db.engine.raw_connection()
        try:
            connection.autocommit = True  # the script has its own BEGIN and COMMIT
            connection.cursor().execute(script)  # as psql runs it: no parameters
        finally:
            connection.close()
        assert schema_differences() == []
        assert sorted(inspect(db.engine).get_table_names()) == partitions


def test_each_revision_commits_on_its_own_and_the_upgrade_lets_its_lock_go(
    scratch_app: Flask, is_postgres: bool
) -> None:
    """A long revision (a rollup rebuild, a pass over the events) no longer holds the
    table locks of the revisions before it (on PostgreSQL the whole upgrade was one
    transaction: reads of events waited minutes); the pooled connection keeps no lock."""
    commits: list[object] = []

    def count(connection: object) -> None:
        commits.append(connection)

    event.listen(db.engine, "commit", count)
    upgrade()
    event.remove(db.engine, "commit", count)
    assert len(commits) >= len(revisions_newest_first(scratch_app))
    if is_postgres:
        held = text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND (classid::bigint << 32 | objid::bigint) = :lock"
        )
        with db.engine.connect() as conn:
            assert conn.execute(held, {"lock": MIGRATIONS_LOCK}).scalar() == 0


def test_a_migration_waiting_for_a_lock_gives_up_in_one_line_and_changes_nothing(
    scratch_app: Flask, is_postgres: bool
) -> None:
    """A step's DDL behind a long query (a report, a psql session left open) queued every
    read and write of its table behind itself for as long as that query lasted."""
    if not is_postgres:
        pytest.skip("lock_timeout is PostgreSQL's; SQLite's migration takes its write lock")
    upgrade()
    downgrade(revision="0013")  # 0014 adds a column to tenants
    scratch_app.config["MIGRATION_LOCK_TIMEOUT_MS"] = 200
    reader = db.engine.connect()
    # Should the migration wait all the same, the server ends the reader after a while.
    reader.exec_driver_sql("SET idle_in_transaction_session_timeout = '20s'")
    reader.exec_driver_sql("SELECT count(*) FROM tenants")  # holds its lock until it ends
    try:
        with pytest.raises(SystemExit) as gave_up:
            upgrade()
    finally:
        reader.close()
    said = str(gave_up.value)
    assert said.startswith("Error: a migration waited 200 ms for a lock"), said
    assert "stays at revision 0013" in said and "\n" not in said
    pooled = [db.engine.connect() for _ in range(db.engine.pool.checkedin())]
    try:
        assert pooled and pooled[0].scalar(text("SELECT version_num FROM alembic_version")) == (
            "0013"
        )
        # The app's connections wait for locks as they did: the migration's setting ended.
        assert [conn.scalar(text("SHOW lock_timeout")) for conn in pooled].count("200ms") == 0
    finally:
        for conn in pooled:
            conn.close()
    upgrade()
    assert schema_differences() == []


def test_a_host_waits_its_turn_to_upgrade_whatever_lock_timeout_its_role_has(
    scratch_url: Callable[[], str], is_postgres: bool
) -> None:
    """The turn lasts the other host's whole upgrade: a role's own lock_timeout (a DBA's
    ALTER ROLE … SET) made the second host give up, blaming a long query."""
    if not is_postgres:
        pytest.skip("hosts take turns under a PostgreSQL advisory lock")
    url = scratch_url() + "%20-clock_timeout%3D200ms"  # as a role's setting would
    other_host = create_engine(normalize_database_url(url), poolclass=NullPool)
    upgrading = other_host.connect()
    try:
        # Its upgrade ends (the server ends the idle session) a second and a half on.
        upgrading.exec_driver_sql("SET idle_session_timeout = '1500ms'")
        upgrading.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATIONS_LOCK})")
        upgrading.commit()
        with app_on(url):
            upgrade()
            assert schema_differences() == []
            with db.engine.connect() as conn:  # the migration's, given back as it came
                assert conn.scalar(text("SHOW lock_timeout")) == "200ms"
    finally:
        upgrading.invalidate()
        other_host.dispose()


def test_hosts_upgrading_an_empty_database_at_once_both_succeed(
    scratch_url: Callable[[], str], is_postgres: bool, tmp_path
) -> None:
    """Each host running `db upgrade` as it deploys: the second waits for the first and
    finds the work done, not a UniqueViolation on a half-made alembic_version."""
    if not is_postgres:
        pytest.skip("SQLite takes one writer at a time by itself")
    url = scratch_url()
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    command = [FLASK, "--app", "tenant_analytics", "db", "upgrade"]
    hosts = [  # from a folder of the test's own: development keys are made in ./instance
        subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    logs = [host.communicate(timeout=120)[1] for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0, 0], logs
    with app_on(url):
        assert schema_differences() == []


def test_partitions_are_those_of_the_events_table_on_the_search_path(
    migrated: str, scratch_url: Callable[[], str]
) -> None:
    if not migrated.startswith("postgresql"):
        pytest.skip("declarative partitioning is PostgreSQL's")
    month = date(2031, 5, 1)
    with app_on(migrated), db.engine.begin() as conn:  # the suite's schema
        created_elsewhere = ensure_partitions(conn, [month])
    try:
        with app_on(scratch_url()):
            upgrade()
            with db.engine.begin() as conn:
                assert ensure_partitions(conn, [month]) == [partition_name(month)]
                scratch_partition = conn.scalar(
                    text("SELECT to_regclass(:name)::text"), {"name": partition_name(month)}
                )
                assert scratch_partition == partition_name(month)
    finally:
        if created_elsewhere:
            with app_on(migrated), db.engine.begin() as conn:
                conn.execute(text(f"DROP TABLE {partition_name(month)}"))


def test_0012_counts_again_the_rollups_of_tenants_in_cet_eet_met_and_wet(
    scratch_app: Flask, is_postgres: bool
) -> None:
    """Their rebuilds counted without summer time on PostgreSQL: 0012 rebuilds them."""
    if not is_postgres:
        pytest.skip("SQLite's rebuild counted days in Python")
    tenant_id = demo_then_downgrade_to("0011")
    summer_night = datetime(2026, 7, 15, 22, 30, tzinfo=UTC)  # 00:30 on 16 July in CET
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE tenants SET timezone = 'CET'"))
        ensure_partitions(conn, [month_of(summer_night)])
        conn.execute(
            text(
                "INSERT INTO events (tenant_id, id, created_at, event_type)"
                " VALUES (:tenant, 999999, :at, 'click_whatsapp')"
            ),
            {"tenant": tenant_id, "at": summer_night},
        )
    rebuild_rollups(db.session, tenant_id)
    db.session.commit()
    right = rollup_rows()
    counted = DailyEventCount.__table__.c
    summer = counted.day.between(date(2026, 7, 1), date(2026, 7, 31))
    with db.engine.begin() as conn:  # as a rebuild without summer time left them
        assert conn.execute(select(counted.day).where(summer)).scalars().all() == [
            date(2026, 7, 16)
        ]
        conn.execute(DailyEventCount.__table__.update().where(summer).values(day=date(2026, 7, 15)))
    assert rollup_rows() != right
    upgrade(revision="0012")
    assert rollup_rows() == right


def demo_then_downgrade_to(revision: str) -> int:
    """The demo's tenant id, its data loaded at head and the schema taken down to
    ``revision`` (the models are head's: they cannot load the demo below it)."""
    upgrade()
    load_demo(db.session, "http://127.0.0.1:5000")
    db.session.commit()
    tenant_id = db.session.scalars(select(Tenant.id)).one()
    db.session.remove()
    downgrade(revision=revision)
    return tenant_id


def test_0013_gives_the_sales_recorded_before_their_key_with_the_amount(
    scratch_app: Flask,
) -> None:
    """A beacon replayed after the upgrade finds its sale (still recorded once), and one
    recorded after it is found by the older code after a downgrade."""
    tenant_id = demo_then_downgrade_to("0012")
    client = scratch_app.test_client()
    sales = [("A-7", "99.50", '{"transaction_id": "A-7"}'), ("B:8", "123456789012.30", None)]
    with db.engine.begin() as conn:  # the sales as 0012's server recorded them
        for n, (transaction, value, _) in enumerate(sales):
            conn.execute(
                text(
                    "INSERT INTO events (tenant_id, id, created_at, event_type, metadata,"
                    " revenue, currency) VALUES (:tenant, :id, :now, 'purchase', :metadata,"
                    " :value, 'HNL')"
                ),
                {
                    "tenant": tenant_id,
                    "id": 999_990 + n,
                    "now": utcnow(),
                    "metadata": json.dumps({"transaction_id": transaction}),
                    "value": value,
                },
            )
            conn.execute(
                text("INSERT INTO dedupe_keys VALUES (:tenant, :key, :now)"),
                {"tenant": tenant_id, "key": f"txn:{transaction}", "now": utcnow()},
            )
    events = len(event_rows())
    upgrade()
    for transaction, value, _ in sales:
        beacon = {"tenant_slug": DEMO_SLUG, "transaction_id": transaction, "value": value}
        assert client.post("/api/v1/analytics/conversion", json=beacon).status_code == 200
    assert len(event_rows()) == events  # not again
    keys = set(db.session.scalars(select(DedupeKey.key).where(DedupeKey.key.like("txn:%"))))
    assert keys == {
        "txn:A-7",
        "txn:B:8",
        "txn:A-7:99.50:HNL",
        "txn:B:8:123456789012.30:HNL",
    }
    # A sale recorded now, then the code rolled back: its replay is still one sale.
    new_sale = {"tenant_slug": DEMO_SLUG, "transaction_id": "C-9", "value": 5}
    client.post("/api/v1/analytics/conversion", json=new_sale)
    db.session.remove()
    downgrade(revision="0012")
    with db.engine.connect() as conn:
        old_form = conn.scalars(text("SELECT key FROM dedupe_keys WHERE key = 'txn:C-9'")).all()
    assert old_form == ["txn:C-9"]


def test_0016_keys_the_tap_beacons_recorded_before_apart_from_the_sales(
    scratch_app: Flask,
) -> None:
    """A tap sent with an order's number and amount was keyed as that order's sale and
    hid it: after the upgrade the sale is recorded, the tap sent again is not."""
    tenant_id = demo_then_downgrade_to("0015")
    client = scratch_app.test_client()
    beacons = [  # as 0015's server recorded them: (type, order, amount, its key)
        ("whatsapp_click", "order-78", "300.00"),
        ("social_share", "order-9", "50.00"),
        ("purchase", "order-9", "50.00"),  # a sale that has the share's key too
    ]
    loaded = ("legacy_tap", "order-5", "20.00")  # by COPY, of a type the app does not know
    with db.engine.begin() as conn:
        for n, (event_type, order, amount) in enumerate([*beacons, loaded]):
            conn.execute(
                text(
                    "INSERT INTO events (tenant_id, id, created_at, event_type, metadata,"
                    " revenue, currency) VALUES (:tenant, :id, :now, :type, :metadata,"
                    " :amount, 'HNL')"
                ),
                {
                    "tenant": tenant_id,
                    "id": 999_980 + n,
                    "now": utcnow(),
                    "type": event_type,
                    "metadata": json.dumps({"transaction_id": order}),
                    "amount": amount,
                },
            )
            conn.execute(
                text("INSERT INTO dedupe_keys VALUES (:tenant, :key, :now) ON CONFLICT DO NOTHING"),
                {"tenant": tenant_id, "key": f"txn:{order}:{amount}:HNL", "now": utcnow()},
            )
    before = event_rows()
    upgrade()
    sent = [("purchase", "order-78", "300.00"), *beacons]  # the sale, then every one again
    for event_type, order, amount in sent:
        beacon = {"tenant_slug": DEMO_SLUG, "transaction_id": order, "value": amount}
        answer = client.post("/api/v1/analytics/conversion", json={**beacon, "event": event_type})
        assert answer.get_json()["status"] == "ok"
    (recorded,) = set(event_rows()) - set(before)  # order-78's sale, and nothing sent again
    assert (recorded.event_type, recorded.revenue) == ("purchase", 300)


def test_0017_clears_the_sessions_made_up_for_landing_events(scratch_app: Flask) -> None:
    """Each landing event sent without a session got one of its own before 1 December
    2026, and counted as a store visit: after the upgrade those are gone and the rollups
    counted again; a session sent by a client, or holding a store event, stays."""
    tenant_id = demo_then_downgrade_to("0016")
    made_up, shared, named, store = (str(uuid.uuid4()) for _ in range(4))
    events = [  # type, session: as 0016's server stored them
        ("pageview", made_up),
        ("click_whatsapp", shared),  # a tap in a store visit
        ("product_view", shared),
        ("pageview", "visit-7"),  # the client's own name for it
        ("click_call", named.upper()),  # a client's UUID in capitals: not made up here
        ("product_view", store),  # a store event's session, made up as the store says
    ]
    with db.engine.begin() as conn:
        for n, (event_type, session_id) in enumerate(events):
            conn.execute(
                text(
                    "INSERT INTO events (tenant_id, id, created_at, event_type, session_id)"
                    " VALUES (:tenant, :id, :now, :type, :session)"
                ),
                {
                    "tenant": tenant_id,
                    "id": 999_970 + n,
                    "now": utcnow(),
                    "type": event_type,
                    "session": session_id,
                },
            )
    rebuild_rollups(db.session, tenant_id)
    db.session.commit()
    counted_before = rollup_rows()
    upgrade()
    with db.engine.connect() as conn:
        sessions = conn.execute(
            text("SELECT session_id FROM events WHERE id >= 999970 ORDER BY id")
        ).scalars()
        assert list(sessions) == [None, *[session for _, session in events[1:]]]
    counted_after = rollup_rows()
    assert counted_after != counted_before
    rebuild_rollups(db.session, tenant_id)
    db.session.commit()
    assert rollup_rows() == counted_after


def test_the_models_revision_is_the_migrations_head_and_revisions_number_in_order(
    scratch_app: Flask,
) -> None:
    """Health compares revisions as text: "0009" < "0010" holds only while every
    revision is numbered, one after another."""
    revisions = [script.revision for script in reversed(revisions_newest_first(scratch_app))]
    assert revisions == [f"{n:04d}" for n in range(1, len(revisions) + 1)]
    assert revisions[-1] == SCHEMA_REVISION


def test_new_code_on_a_database_not_yet_upgraded_is_not_ready_and_says_so(
    scratch_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """A host started with the new code before `db upgrade` (a rolling deploy, a failed
    upgrade): out of the load balancer's rotation, and its events a 503 to retry, not a
    500 with a traceback. 0014 added the column every write reads (tenants.suspended)."""
    tenant_id = demo_then_downgrade_to("0013")
    logging.getLogger().addHandler(caplog.handler)  # alembic.ini's logging took it away
    client = scratch_app.test_client()
    pageview = {"tenant_id": tenant_id, "event_type": "pageview"}
    health = client.get("/api/health")
    assert (health.status_code, health.get_json()["message"]) == (
        503,
        "The database is not migrated.",
    )
    assert client.post("/api/analytics/track", json=pageview).status_code == 503
    probed, wrote = [line for line in caplog.text.splitlines() if "db upgrade" in line]
    assert probed.endswith(f"(the database is at 0013, this code needs {SCHEMA_REVISION})")
    assert "suspended" in wrote  # the driver's words: which column is missing
    listed = scratch_app.test_cli_runner().invoke(args=["tenant", "list"])
    assert listed.exit_code == 1 and "Traceback" not in listed.output
    assert listed.output.startswith("Error: the database lacks a table or column: run `flask")
    upgrade()
    assert client.get("/api/health").status_code == 200
    assert client.post("/api/analytics/track", json=pageview).status_code == 201
    # A later revision than the code's (a rolling deploy's newer hosts migrated first).
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    assert client.get("/api/health").status_code == 200
