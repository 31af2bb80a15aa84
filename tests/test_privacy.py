"""The raw client IP never reaches the database or the app's logs."""

from __future__ import annotations

import glob
import hashlib
import hmac
import logging
import os
import time
import traceback

import pytest
import redis
from sqlalchemy import create_engine, insert, make_url, select, text
from sqlalchemy.exc import IntegrityError

from tenant_analytics.extensions import db
from tenant_analytics.logs import loggable_traceback
from tenant_analytics.models import Event, utcnow
from tenant_analytics.partitions import month_of, next_month, partition_name
from tenant_analytics.privacy import visitor_hash

from .conftest import REDIS_URL, TEST_HASH_KEY, release_connections

KNOWN_IP = "203.0.113.77"
OTHER_IP = "198.51.100.23"
KNOWN_EMAIL = "visitor.known@example.org"


def dump_database() -> str:
    """Every row of every table, as text."""
    db.session.expire_all()
    with db.engine.connect() as conn:
        return "\n".join(
            repr(tuple(row))
            for table in db.metadata.sorted_tables
            for row in conn.execute(select(table))
        )


def test_known_ip_leaves_no_trace(make_app, make_tenant, caplog):
    app = make_app(TRUSTED_PROXY_COUNT=1)
    client = app.test_client()
    caplog.set_level(logging.DEBUG)
    with app.app_context():
        tenant = make_tenant()
        for event_type in ("pageview", "click_whatsapp", "not-a-type"):
            client.post(
                "/api/analytics/track",
                json={"tenant_id": tenant.id, "event_type": event_type},
                headers={"X-Forwarded-For": KNOWN_IP, "User-Agent": "UA"},
            )
        dump = dump_database()
        assert "click_whatsapp" in dump  # the dump does see the stored events
        assert KNOWN_IP not in dump
        assert KNOWN_IP.replace(".", "") not in dump
        expected = visitor_hash(TEST_HASH_KEY, tenant.id, KNOWN_IP, "UA")
        assert set(db.session.scalars(select(Event.visitor_hash))) == {expected}
    assert KNOWN_IP not in caplog.text


def test_a_port_the_proxy_appends_is_not_part_of_the_visitor(make_app, make_tenant):
    app = make_app(TRUSTED_PROXY_COUNT=1)
    client = app.test_client()
    with app.app_context():
        tenant = make_tenant()
        for forwarded in (
            "203.0.113.9",
            "203.0.113.9:4444",
            "203.0.113.9:5555",
            "2001:db8::1",
            "[2001:db8::1]:443",
            # Other spellings of the same two: a dual-stack proxy's, another's zeros and case.
            "::ffff:203.0.113.9",
            "[::ffff:203.0.113.9]:1",
            "2001:DB8:0::1",
        ):
            client.post(
                "/api/analytics/track",
                json={"tenant_id": tenant.id, "event_type": "pageview"},
                headers={"X-Forwarded-For": forwarded, "User-Agent": "UA"},
            )
        hashes = list(db.session.scalars(select(Event.visitor_hash).order_by(Event.id)))
        ipv4 = visitor_hash(TEST_HASH_KEY, tenant.id, "203.0.113.9", "UA")
        ipv6 = visitor_hash(TEST_HASH_KEY, tenant.id, "2001:db8::1", "UA")
    assert hashes == [ipv4, ipv4, ipv4, ipv6, ipv6, ipv4, ipv4, ipv6]


def test_visitor_hash_is_keyed_hmac():
    plain = hashlib.sha256(f"1{KNOWN_IP}UA".encode()).hexdigest()[:45]
    keyed = visitor_hash("key-a", 1, KNOWN_IP, "UA")
    expected = hmac.new(b"key-a", f"1\x1f{KNOWN_IP}\x1fUA".encode(), hashlib.sha256)
    assert keyed == expected.hexdigest()[:45]
    assert keyed != plain and len(keyed) == 45
    assert visitor_hash("key-b", 1, KNOWN_IP, "UA") != keyed  # useless without the key
    assert visitor_hash("key-a", 2, KNOWN_IP, "UA") != keyed  # not linkable across tenants


def test_forwarded_for_is_ignored_without_trusted_proxies(client, make_tenant):
    tenant = make_tenant()
    for spoofed in ("198.51.100.1", "198.51.100.2"):
        client.post(
            "/api/analytics/track",
            json={"tenant_id": tenant.id, "event_type": "pageview"},
            headers={"X-Forwarded-For": spoofed, "User-Agent": "UA"},
        )
    hashes = set(db.session.scalars(select(Event.visitor_hash)))
    assert len(hashes) == 1  # both requests came from the same real address


@pytest.mark.skipif(not REDIS_URL, reason="needs TEST_REDIS_URL (a real Redis)")
def test_rate_limit_keys_hold_no_address_or_email(make_app, make_tenant, caplog):
    """Every bucket keyed on the client (unknown tenant, v1 "api" group, login) is a keyed hash,
    in Redis and in flask-limiter's breach log, and still one bucket per address and email."""
    app = make_app(
        TRUSTED_PROXY_COUNT=1, API_RATE_LIMIT="2 per minute", LOGIN_RATE_LIMIT="2 per minute"
    )
    client = app.test_client()
    caplog.set_level(logging.DEBUG)
    with app.app_context():
        tenant_ref = str(make_tenant().id)

    def post(path, body, ip):
        return client.post(path, json=body, headers={"X-Forwarded-For": ip}).status_code

    def v1_track(ip):
        return post("/api/v1/analytics/track", {"tenant_id": tenant_ref, "type": "call"}, ip)

    def log_in(ip, email):
        return post("/api/auth/login", {"email": email, "password": "wrong"}, ip)

    unknown_tenant = {"tenant_id": 999_999, "event_type": "pageview"}
    assert post("/api/analytics/track", unknown_tenant, KNOWN_IP) == 404
    assert [v1_track(KNOWN_IP) for _ in range(3)] == [202, 202, 429]
    assert v1_track(OTHER_IP) == 202  # another address, another bucket
    assert [log_in(KNOWN_IP, KNOWN_EMAIL) for _ in range(3)] == [401, 401, 429]
    assert log_in(KNOWN_IP, "someone.else@example.org") == 401  # another email
    assert log_in(OTHER_IP, KNOWN_EMAIL) == 401  # the same email from another address

    # The whole test database, not only the limiter's prefix: no key anywhere may hold them.
    keys = [key.decode() for key in redis.Redis.from_url(REDIS_URL).scan_iter(count=1000)]
    # The scan sees the buckets: unknown tenant, "api" for each address, login x3.
    assert len([key for key in keys if "LIMITER/" in key]) >= 6
    for secret in (KNOWN_IP, OTHER_IP, KNOWN_IP.replace(".", ""), KNOWN_EMAIL, "example.org"):
        assert not [key for key in keys if secret in key], secret
    assert "exceeded" in caplog.text  # flask-limiter logs the bucket of each breach
    assert KNOWN_IP not in caplog.text and KNOWN_EMAIL not in caplog.text


# A trigger that refuses the row: a database error the app has no answer for (a 500).
REFUSING_TRIGGER = {
    "sqlite": [
        "CREATE TRIGGER refuse_notes BEFORE INSERT ON events WHEN NEW.metadata LIKE '%meta-%'"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_notes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.metadata::text LIKE '%meta-%' THEN"
        " RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END IF;"
        " RETURN NEW; END $$",
        "CREATE TRIGGER refuse_notes BEFORE INSERT ON events FOR EACH ROW"
        " EXECUTE FUNCTION refuse_notes()",
    ],
}
DROP_REFUSING_TRIGGER = {
    "sqlite": ["DROP TRIGGER refuse_notes"],
    "postgresql": ["DROP TRIGGER refuse_notes ON events", "DROP FUNCTION refuse_notes()"],
}


def test_a_logged_database_error_carries_no_parameter_values(make_app, make_tenant, caplog):
    """SQLAlchemy's error message lists the bound values (user agents, metadata, customer ids):
    the engine hides them, and the app's log of a failed write holds none of them."""
    app = make_app()
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
        dialect = db.engine.dialect.name
        with db.engine.begin() as conn:
            for statement in REFUSING_TRIGGER[dialect]:
                conn.execute(text(statement))
        refused = insert(Event).values(
            tenant_id=tenant_id, id=1, event_type="pageview", metadata_={"n": "meta-7f3a"}
        )
        with pytest.raises(IntegrityError) as error, db.engine.begin() as conn:
            conn.execute(refused)
        assert "refused" in str(error.value) and "meta-7f3a" not in str(error.value)
    caplog.set_level(logging.DEBUG)
    try:
        response = client.post(
            "/api/analytics/track",
            json={"tenant_id": tenant_id, "event_type": "pageview", "metadata": {"n": "meta-7f3a"}},
            headers={"User-Agent": "agent-9c1e"},
        )
    finally:
        with app.app_context(), db.engine.begin() as conn:
            for statement in DROP_REFUSING_TRIGGER[dialect]:
                conn.execute(text(statement))
    assert response.status_code == 500
    assert "IntegrityError" in caplog.text  # the error was logged, with its traceback
    assert "error in POST '/api/analytics/track'" in caplog.text  # and what it answered
    assert "meta-7f3a" not in caplog.text and "agent-9c1e" not in caplog.text
    assert "meta-7f3a" not in response.get_data(as_text=True)


def test_a_logged_database_error_quotes_no_row_values(make_app, make_tenant, caplog, is_postgres):
    """PostgreSQL's own messages quote rows and values (``DETAIL: Failing row contains …``,
    ``invalid input syntax …: "…"``): what the app logs of a database error keeps the
    error's kind and names (SQLSTATE, table, constraint) and leaves the message out."""
    if not is_postgres:
        pytest.skip("SQLite's messages name columns and constraints, never values")
    app = make_app()
    client = app.test_client()
    server_log = PostgresLog()
    with app.app_context():
        tenant_id = make_tenant().id
        with db.engine.begin() as conn:  # a constraint the write breaks, quoting the row
            conn.execute(
                text(
                    "ALTER TABLE events ADD CONSTRAINT no_notes"
                    " CHECK (metadata::text NOT LIKE '%note%')"
                )
            )
    try:
        caplog.set_level(logging.DEBUG)
        response = client.post(
            "/api/analytics/track",
            json={"tenant_id": tenant_id, "event_type": "pageview", "metadata": {"note": "m-5d2b"}},
            headers={"User-Agent": "agent-4e8f"},
        )
    finally:
        with app.app_context(), db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE events DROP CONSTRAINT no_notes"))
    assert response.status_code == 500
    assert "IntegrityError" in caplog.text and "23514" in caplog.text  # check_violation
    assert "no_notes" in caplog.text  # the constraint's name tells what broke
    assert "m-5d2b" not in caplog.text and "agent-4e8f" not in caplog.text
    assert "m-5d2b" not in response.get_data(as_text=True)
    # Nor does PostgreSQL's own log, where this machine lets the tests read it.
    logged = server_log.written_since()
    if logged is not None:
        assert "no_notes" in logged  # the error itself is logged
        assert "m-5d2b" not in logged and "agent-4e8f" not in logged


def drop_role(connection, role: str) -> None:
    if connection.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}):
        connection.exec_driver_sql(f'DROP OWNED BY "{role}"')  # its grants
        connection.exec_driver_sql(f'DROP ROLE "{role}"')


@pytest.mark.parametrize("group_commit", [True, False])
def test_a_privilege_the_role_lacks_is_a_503_logged_with_the_object_it_names(
    make_app, make_tenant, migrated, is_postgres, caplog, group_commit
):
    """A grant forgotten in production (or tables a DBA's script made as a superuser): the
    client hears 503, as for a database not migrated, and the log says in one line which
    table, which PostgreSQL reports in its message only, never a value."""
    if not is_postgres:
        pytest.skip("SQLite has no privileges")
    tenant_id = make_tenant().id
    url = make_url(migrated)
    role = f"{url.database}_no_events"  # roles are the cluster's: one per suite database
    admin = create_engine(migrated, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        drop_role(connection, role)  # left by a run cut short
        connection.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        connection.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        connection.exec_driver_sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    try:
        as_role = url.set(username=role).render_as_string(hide_password=False)
        app = make_app(SQLALCHEMY_DATABASE_URI=as_role, GROUP_COMMIT=group_commit)
        caplog.set_level(logging.DEBUG)
        response = app.test_client().post(
            "/api/analytics/track",
            json={"tenant_id": tenant_id, "event_type": "pageview", "metadata": {"n": "m-81c0"}},
        )
        release_connections(app)
    finally:
        with admin.connect() as connection:
            drop_role(connection, role)
        admin.dispose()
    assert response.status_code == 503
    said = response.get_json()["message"]
    assert said == "The service is temporarily unavailable; retry shortly."
    assert "permission" not in response.get_data(as_text=True)
    assert "the database refused this role: permission denied for table" in caplog.text
    assert "Traceback" not in caplog.text and "m-81c0" not in caplog.text


def test_health_says_the_database_refuses_the_role_not_that_it_does_not_answer(
    app, make_app, migrated, is_postgres
):
    """An operator who sees "does not answer" looks for a server that is up. (``app``
    first: the suite's own app empties the tables afterwards.)"""
    if not is_postgres:
        pytest.skip("SQLite has no privileges")
    url = make_url(migrated)
    role = f"{url.database}_no_tables"
    admin = create_engine(migrated, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        drop_role(connection, role)  # left by a run cut short
        connection.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        connection.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{role}"')  # no table
    try:
        as_role = url.set(username=role).render_as_string(hide_password=False)
        app = make_app(SQLALCHEMY_DATABASE_URI=as_role)
        response = app.test_client().get("/api/health")
        release_connections(app)
    finally:
        with admin.connect() as connection:
            drop_role(connection, role)
        admin.dispose()
    assert response.status_code == 503
    answer = response.get_json()
    assert answer["message"] == "The database refuses this service's role access to its tables."
    assert answer["database"] == "unavailable"


def test_a_command_the_role_may_not_run_says_so_in_one_line(app, make_app, migrated, is_postgres):
    """A restore into a database the app's role does not own (PostgreSQL 15's public
    schema is the database owner's): a monthly `events partitions` printed a traceback.
    (``app`` first: the suite's own app empties the tables afterwards.)"""
    if not is_postgres:
        pytest.skip("SQLite has no privileges")
    url = make_url(migrated)
    role = f"{url.database}_reader"
    admin = create_engine(migrated, isolation_level="AUTOCOMMIT")
    # The last month `--ahead 36` makes: gone, so the command must create it (an
    # earlier test may have; no event reaches three years ahead).
    month = month_of(utcnow())
    for _ in range(36):
        month = next_month(month)
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {partition_name(month)}")
        drop_role(connection, role)  # left by a run cut short
        connection.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        connection.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        connection.exec_driver_sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    commands = [
        # (Its first refusal: the lock on tenants a partition takes before events.)
        (["events", "partitions", "--ahead", "36"], "permission denied for table tenants"),
        (["tenant", "create", "--name", "Nueva", "--slug", "nueva"], "permission denied for table"),
    ]
    try:
        as_role = url.set(username=role).render_as_string(hide_password=False)
        app = make_app(SQLALCHEMY_DATABASE_URI=as_role)
        results = []
        for args, _ in commands:
            with app.app_context():
                results.append(app.test_cli_runner().invoke(args=args))
        release_connections(app)
    finally:
        with admin.connect() as connection:
            drop_role(connection, role)
        admin.dispose()
    for result, (args, said) in zip(results, commands, strict=True):
        assert result.exit_code == 1, (args, result.output, result.exception)
        assert result.output.startswith("Error: the database refused this role: "), args
        assert said in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.splitlines()) == 1


def test_sessions_keep_values_out_of_the_server_log(app, is_postgres):
    """The settings behind the server log check above, which a superuser's sessions set
    themselves (the README has an administrator set them for any other role)."""
    if not is_postgres:
        pytest.skip("SQLite has no server log")
    with db.engine.connect() as conn:
        settings = conn.execute(
            text(
                "SELECT current_setting('log_min_error_statement'),"
                " current_setting('log_error_verbosity')"
            )
        ).one()
    assert tuple(settings) == ("panic", "terse")


class PostgresLog:
    """What the local PostgreSQL server writes to its log file (Debian's place for it),
    from now on; nothing where that file is not there or not readable."""

    def __init__(self) -> None:
        readable = [
            p for p in glob.glob("/var/log/postgresql/postgresql-*.log") if os.access(p, os.R_OK)
        ]
        self.sizes = {path: os.path.getsize(path) for path in readable}

    def written_since(self) -> str | None:
        if not self.sizes:
            return None
        time.sleep(0.2)  # the server's write of the error
        written = []
        for path, size in self.sizes.items():
            with open(path, "rb") as log:
                log.seek(size)
                written.append(log.read().decode("utf-8", "replace"))
        return "".join(written)


def test_other_errors_are_logged_as_python_formats_them():
    """Only database messages are left out: any other traceback, chained ones included, reads
    as it always did."""

    def fail() -> None:
        try:
            try:
                {}["missing"]
            except KeyError as error:
                raise ValueError("bad value") from error
        except ValueError:
            raise RuntimeError("while handling")  # noqa: B904 - an implicit chain on purpose

    with pytest.raises(RuntimeError) as caught:
        fail()
    expected = "".join(traceback.format_exception(caught.value)).rstrip("\n")
    assert loggable_traceback(caught.value) == expected
    assert "direct cause" in expected and "During handling" in expected


def test_an_error_repeating_an_earlier_one_leaves_its_message_out():
    """A session used again after a failed flush raises PendingRollbackError, whose message
    repeats the first error's: PostgreSQL's DETAIL with the row's key included."""
    from sqlalchemy.exc import PendingRollbackError

    first = (
        "(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint"
        ' "dedupe_keys_pkey"\nDETAIL:  Key (tenant_id, key)=(1, txn:order-5d2b) already exists.'
    )
    error = PendingRollbackError(
        "This Session's transaction has been rolled back due to a previous exception during"
        f" flush. Original exception was: {first}"
    )
    logged = loggable_traceback(error)
    assert "order-5d2b" not in logged
    assert "PendingRollbackError" in logged and "rolled back" in logged
