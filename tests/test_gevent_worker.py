"""gunicorn's gevent worker, the recommended server: cooperative database waits, shared commits."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading

import pytest
from sqlalchemy import text

from tenant_analytics import group_commit
from tenant_analytics.extensions import db

from .conftest import REDIS_URL, TEST_HASH_KEY, sessions_gone
from .servers import ROOT, gunicorn, post

WAIT_CALLBACK = """
import sys
if sys.argv[1] == "gevent":
    from gevent import monkey
    monkey.patch_all()
import psycopg2.extensions
from tenant_analytics import create_app
create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})
print(psycopg2.extensions.get_wait_callback() is not None)
"""


def wait_callback_set(mode: str) -> bool:
    result = subprocess.run(
        [sys.executable, "-c", WAIT_CALLBACK, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "VISITOR_HASH_KEY": TEST_HASH_KEY},
    )
    return result.stdout.strip() == "True"


def test_psycopg_waits_in_gevent_loop_only_under_gevent():
    assert wait_callback_set("gevent") is True
    assert wait_callback_set("threads") is False


HASH_WHILE_TICKING = """
from gevent import monkey
monkey.patch_all()
import gevent
from werkzeug.security import generate_password_hash
from tenant_analytics.auth import check_password
from tenant_analytics.models import User

user = User(email="owner@example.com", password_hash=generate_password_hash("secret"))
ticks = 0

def tick():
    global ticks
    while True:
        gevent.sleep(0.001)
        ticks += 1

gevent.spawn(tick)
gevent.sleep(0.01)
before = ticks
assert not check_password(user, "wrong")
print(ticks - before)
"""


def test_under_gevent_a_password_check_lets_the_other_greenlets_run():
    """A sign-in's scrypt (~100 ms of CPU) runs in a thread: the worker's other requests
    (events, QR scans) go on meanwhile, where they stood still until it was done."""
    result = subprocess.run(
        [sys.executable, "-c", HASH_WHILE_TICKING],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "VISITOR_HASH_KEY": TEST_HASH_KEY},
    )
    assert int(result.stdout) > 3


def test_gevent_worker_stores_every_event_and_shares_commits(
    migrated, make_tenant, is_postgres, tmp_path
):
    """Concurrent /track requests to one gevent worker: every 201 is stored, in fewer
    transactions than events on PostgreSQL (rows committed together share their xmin)."""
    tenant_id = make_tenant().id
    env = {
        **os.environ,
        "DATABASE_URL": migrated,
        "RATELIMIT_ENABLED": "false",
        "RATELIMIT_STORAGE_URI": REDIS_URL or "memory://",
        "VISITOR_HASH_KEY": TEST_HASH_KEY,
    }
    settings = ["--worker-class", "gevent", "--workers", "1", "--worker-connections", "100"]
    clients, per_client = 24, 5
    statuses: list[int] = []
    start = threading.Barrier(clients)

    def send() -> None:
        start.wait()
        for n in range(per_client):
            body = {"tenant_id": tenant_id, "event_type": "pageview", "metadata": {"n": n}}
            statuses.append(post(port, "/api/analytics/track", body))

    with gunicorn(settings, env, tmp_path / "gunicorn.log") as port:
        threads = [threading.Thread(target=send) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [201] * clients * per_client
    db.session.remove()
    stored = db.session.scalar(
        text("SELECT count(*) FROM events WHERE tenant_id = :t"), {"t": tenant_id}
    )
    assert stored == clients * per_client
    if is_postgres:
        transactions = db.session.scalar(
            text("SELECT count(DISTINCT xmin::text) FROM events WHERE tenant_id = :t"),
            {"t": tenant_id},
        )
        assert transactions < stored


def test_sessions_the_server_ended_between_batches_are_not_written_on(
    migrated, make_tenant, is_postgres, tmp_path
):
    """A restart or pg_terminate_backend ends the committer's idle sessions. A write a
    moment later (no pause long enough for the idle round trip) must go on new ones,
    not fail as "may have been stored" when nothing was sent."""
    if not is_postgres:
        pytest.skip("sessions ended by the server are PostgreSQL's")
    tenant_id = make_tenant().id
    name = "ta-test-ended-sessions"
    env = {
        **os.environ,
        "DATABASE_URL": f"{migrated}?application_name={name}",
        "RATELIMIT_ENABLED": "false",
        "VISITOR_HASH_KEY": TEST_HASH_KEY,
    }
    settings = ["--worker-class", "gevent", "--workers", "1"]
    body = {"tenant_id": tenant_id, "event_type": "pageview"}
    statuses = []
    with gunicorn(settings, env, tmp_path / "gunicorn.log") as port:
        for _ in range(5):
            assert post(port, "/api/analytics/track", body) == 201  # its sessions made
            ended = db.session.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": name},
            )
            db.session.commit()
            assert ended
            sessions_gone(db.session.connection(), "application_name = :n", n=name)
            db.session.commit()
            statuses.append(post(port, "/api/analytics/track", body))  # well within 1 s
    assert statuses == [201] * 5
    stored = db.session.scalar(
        text("SELECT count(*) FROM events WHERE tenant_id = :t"), {"t": tenant_id}
    )
    assert stored == 10


CONNECT_TO_BLACK_HOLE = """
import sys, time
from gevent import monkey
monkey.patch_all()
from tenant_analytics import create_app
app = create_app({"SQLALCHEMY_DATABASE_URI": sys.argv[1], "DATABASE_CONNECT_TIMEOUT": 1})
started = time.monotonic()
status = app.test_client().get("/api/health").status_code
print(status, round(time.monotonic() - started, 1))
"""


def test_under_gevent_a_database_that_never_answers_is_a_503_in_time():
    """libpq ignores connect_timeout when it connects asynchronously, as it does under
    gevent's wait callback: the app keeps the time there."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        url = f"postgresql://nobody@127.0.0.1:{black_hole.getsockname()[1]}/none"
        result = subprocess.run(
            [sys.executable, "-c", CONNECT_TO_BLACK_HOLE, url],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "VISITOR_HASH_KEY": TEST_HASH_KEY, "RATELIMIT_ENABLED": "false"},
        )
    status, waited = result.stdout.split()
    assert status == "503", result.stderr
    assert float(waited) < 5  # one second, twice at most (the pool's pre-ping retry)


def test_every_documented_way_to_serve_lets_a_request_wait_out_its_commit():
    """A stop or reload kills workers after gunicorn's graceful timeout: shorter than a
    request's longest commit wait, a request would be cut off while its batch commits."""
    longest_wait = group_commit.QUEUE_TIMEOUT_SECONDS + group_commit.WRITE_TIMEOUT_SECONDS
    for source in (ROOT / "Makefile", ROOT / "README.md"):
        # Each command, with the lines it continues on (a trailing backslash).
        commands = re.findall(r"gunicorn --worker-class gevent(?:.*\\\n)*.*", source.read_text())
        assert commands, source
        for command in commands:
            found = re.search(r"--graceful-timeout[ =](\d+)", command)
            assert found, (source, command)
            # A margin for what comes before the wait (a worker notices the signal within
            # a second; a tenant lookup, the rate limit's round trip).
            assert int(found.group(1)) >= longest_wait + 10, (source, command)
