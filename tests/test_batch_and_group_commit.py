"""POST /api/analytics/batch, and group commit: shared transactions, separate fates."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import psycopg2.errors
import pytest
from sqlalchemy import create_engine, event, func, make_url, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from tenant_analytics import postgres_writer
from tenant_analytics.config import MAX_CONTENT_LENGTH, normalize_database_url
from tenant_analytics.database_errors import outage_reason
from tenant_analytics.extensions import db
from tenant_analytics.group_commit import (
    CommitTimeout,
    CommitUncertain,
    GroupCommitter,
    _Pending,
)
from tenant_analytics.ingestion import (
    ClientInfo,
    IngestJob,
    NewEvent,
    TenantBusy,
    ingest,
    is_read_only,
    reported_by_live_database,
)
from tenant_analytics.models import DedupeKey, Event, Tenant, utcnow
from tenant_analytics.partitions import LIST_PARTITIONS, month_of, partition_name
from tenant_analytics.postgres_writer import STATEMENTS
from tenant_analytics.rollups import NEW_SESSION, ROLLUP_LOCK, TenantInfo, rebuild_rollups
from tenant_analytics.tenant_data import delete_tenant_data

from .conftest import TEST_HASH_KEY, TEST_JWT_KEY, read_only_url, sessions_gone
from .servers import gunicorn, post


def count_events(tenant_id: int) -> int:
    db.session.expire_all()
    return db.session.scalar(
        select(func.count()).select_from(Event).where(Event.tenant_id == tenant_id)
    )


def test_batch_stores_valid_items_and_reports_the_rest(client, make_tenant):
    tenant = make_tenant()
    response = client.post(
        "/api/analytics/batch",
        json={
            "tenant_id": tenant.id,
            "events": [
                {"event_type": "pageview", "metadata": {"path": "/"}},
                {"event_type": "nope"},
                {
                    "event_type": "purchase",
                    "session_id": "s1",
                    "product_slug": "pan",
                    "price": "10.50",
                    "metadata": {"quantity": 2},
                },
                "not an object",
                {"event_type": "time_on_page", "metadata": {"seconds": 30}},
            ],
        },
    )
    assert response.status_code == 201
    body = response.get_json()
    assert (body["stored"], body["duplicates"]) == (3, 0)
    assert [r["index"] for r in body["rejected"]] == [1, 3]
    assert "event_type" in body["rejected"][0]["errors"]
    # In the client's terms, not pydantic's ("a valid dictionary or instance of TrackedEvent").
    assert body["rejected"][1]["errors"] == {"body": ["Should be a JSON object"]}
    assert count_events(tenant.id) == 3


def test_batch_item_whose_revenue_cannot_be_stored_is_rejected_alone(client, make_tenant):
    tenant = make_tenant()
    too_much = {"price": "1000000", "metadata": {"quantity": 1000000}}
    response = client.post(
        "/api/analytics/batch",
        json={
            "tenant_id": tenant.id,
            "events": [
                {"event_type": "pageview"},
                {"event_type": "purchase", "session_id": "s", **too_much},
            ],
        },
    )
    assert response.status_code == 201  # once a 500 on PostgreSQL, and nothing stored
    body = response.get_json()
    assert body["stored"] == 1 and [r["index"] for r in body["rejected"]] == [1]
    assert "price" in body["rejected"][0]["errors"]
    assert count_events(tenant.id) == 1


def test_an_item_of_another_tenant_is_rejected_not_stored_for_the_batchs(client, make_tenant):
    """A queue of several shops' events flushed in one batch: an item naming another
    tenant was stored for the envelope's, in the wrong shop's figures."""
    ours, theirs = make_tenant(), make_tenant()
    items = [
        {"event_type": "pageview", "tenant_id": ours.id},  # a /track body as it was: fine
        {"event_type": "pageview", "tenant_id": theirs.id},
        {"event_type": "pageview", "tenant_id": "abc"},
        {"event_type": "pageview"},
    ]
    response = client.post("/api/analytics/batch", json={"tenant_id": ours.id, "events": items})
    assert response.status_code == 201
    body = response.get_json()
    assert body["stored"] == 2 and [r["index"] for r in body["rejected"]] == [1, 2]
    assert set(body["rejected"][0]["errors"]) == {"tenant_id"}
    assert (count_events(ours.id), count_events(theirs.id)) == (2, 0)


def test_batch_deduplicates_by_key_inside_the_batch(client, make_tenant):
    tenant = make_tenant()
    item = {"event_type": "add_to_cart", "idempotency_key": "same"}
    body = client.post(
        "/api/analytics/batch", json={"tenant_id": tenant.id, "events": [item, item, item]}
    ).get_json()
    assert (body["stored"], body["duplicates"]) == (1, 2)


def test_repeats_of_a_session_in_one_batch_are_stored_and_the_batch_resent_is_not(
    client, make_tenant, monkeypatch
):
    """Without a client key, a batch's items all arrive in the same second: the derived
    key (session, type, product, second) alone would take three page views of one
    session for one. The same batch sent again within the window stores nothing new."""
    tenant = make_tenant()
    arrived = utcnow()  # both sends in the same second, whatever the clock does
    monkeypatch.setattr("tenant_analytics.event_builders.utcnow", lambda: arrived)
    views = [{"event_type": "page_view", "session_id": "s1"}] * 3
    batch = {"tenant_id": tenant.id, "events": views}
    body = client.post("/api/analytics/batch", json=batch).get_json()
    assert (body["stored"], body["duplicates"]) == (3, 0)
    again = client.post("/api/analytics/batch", json=batch).get_json()
    assert (again["stored"], again["duplicates"]) == (0, 3)
    assert count_events(tenant.id) == 3
    # Another batch of that second, of other views: the "menu" view was lost as a duplicate.
    other = [{"event_type": "page_view", "session_id": "s1", "metadata": {"screen": "menu"}}]
    answer = client.post("/api/analytics/batch", json={**batch, "events": other}).get_json()
    assert (answer["stored"], answer["duplicates"]) == (1, 0)
    assert count_events(tenant.id) == 4


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"tenant_id": 1, "events": []}, 422),
        ({"tenant_id": 1, "events": {"a": 1}}, 422),
        ({"events": [{"event_type": "pageview"}]}, 422),
        ({"tenant_id": "TENANT", "events": [{"event_type": "pageview"}] * 501}, 422),
        ({"tenant_id": "TENANT", "events": [{"event_type": "x"}, {}]}, 422),
        ({"tenant_id": 999_999, "events": [{"event_type": "pageview"}]}, 404),
    ],
)
def test_batch_envelope_errors(make_app, make_tenant, body, status):
    app = make_app()  # the default limit: 501 items are a validation error, not a 413 or 429
    with app.app_context():
        tenant = make_tenant()
        if body.get("tenant_id") == "TENANT":
            body = {**body, "tenant_id": tenant.id}
        response = app.test_client().post("/api/analytics/batch", json=body)
        assert response.status_code == status
        assert response.get_json()["success"] is False
        assert count_events(tenant.id) == 0


@pytest.mark.parametrize(
    ("path", "items", "message"),
    [
        ("/api/analytics/batch", 260, "The body is over 500 KiB, more than any endpoint takes."),
        ("/api/analytics/track", 40, "The body may not exceed 64 KiB."),
        # The other single-event endpoints take what /track takes, not a batch's 500 KiB.
        ("/api/v1/analytics/track", 40, "The body may not exceed 64 KiB."),
        ("/api/v1/interactions", 40, "The body may not exceed 64 KiB."),
        ("/api/analytics/track", 260, "The body is over 500 KiB, more than any endpoint takes."),
    ],
)
def test_a_body_too_large_is_413_saying_the_limit(client, make_tenant, path, items, message):
    """Werkzeug's own words ("exceeds the capacity limit") once answered past Flask's limit."""
    tenant = make_tenant()
    pad = [{"event_type": "pageview", "metadata": {"pad": "x" * 2000}}] * items
    body = {"tenant_id": tenant.id, "event_type": "pageview", "events": pad}
    response = client.post(path, json=body)
    assert response.status_code == 413
    assert response.get_json()["message"] == message


def test_a_chunked_body_over_the_limit_is_413_not_cut(migrated, make_tenant, tmp_path):
    """Sent without Content-Length (chunked), through gunicorn: Werkzeug stops reading at
    MAX_CONTENT_LENGTH and once handed the app what it had read, so an oversized batch
    was stored cut. One byte over is a 413; exactly the limit is taken."""
    tenant_id = make_tenant().id
    env = {
        **os.environ,
        "DATABASE_URL": migrated,
        "RATELIMIT_ENABLED": "false",
        "TENANT_CACHE_SECONDS": "0",
        "VISITOR_HASH_KEY": TEST_HASH_KEY,
        "JWT_SECRET_KEY": TEST_JWT_KEY,
    }
    batch = json.dumps({"tenant_id": tenant_id, "events": [{"event_type": "pageview"}]})

    def post_chunked(port: int, size: int) -> int:
        body = batch.encode().ljust(size)  # JSON, then spaces up to ``size`` bytes
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            chunks = (body[i : i + 65_536] for i in range(0, len(body), 65_536))
            connection.request(
                "POST",
                "/api/analytics/batch",
                body=chunks,
                headers={"Content-Type": "application/json"},
                encode_chunked=True,
            )
            return connection.getresponse().status
        finally:
            connection.close()

    with gunicorn(["--workers", "1"], env, tmp_path / "gunicorn.log") as port:
        assert post_chunked(port, MAX_CONTENT_LENGTH + 1) == 413
        assert count_events(tenant_id) == 0
        assert post_chunked(port, MAX_CONTENT_LENGTH) == 201
        assert count_events(tenant_id) == 1


@pytest.mark.parametrize("worker", ["gevent", "sync"])
def test_a_body_that_stops_arriving_is_a_408_that_frees_the_worker(
    migrated, make_tenant, tmp_path, worker
):
    """A client that sends half a body and then nothing (a phone losing signal) held its
    worker until the client left: no answer, and a stop or reload waited the whole
    graceful timeout for it. It now hears 408 once the body pauses too long; the
    conversion beacon, never refused, its usual 200 "skipped"."""
    tenant_id = make_tenant().id
    env = {
        **os.environ,
        "DATABASE_URL": migrated,
        "RATELIMIT_STORAGE_URI": "memory://",
        "VISITOR_HASH_KEY": TEST_HASH_KEY,
        "JWT_SECRET_KEY": TEST_JWT_KEY,
        "BODY_READ_TIMEOUT_SECONDS": "1",
    }
    body = json.dumps({"tenant_id": tenant_id, "event_type": "pageview"}).encode()

    def half_sent(port: int, path: str) -> tuple[bytes, dict]:
        """Headers and ten bytes of the body, then nothing: the answer's head and JSON."""
        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            stalled.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:10]
            )
            answer = b""
            while chunk := stalled.recv(65_536):  # to the end: the server closes it
                answer += chunk
        finally:
            stalled.close()
        head, _, payload = answer.partition(b"\r\n\r\n")
        return head, json.loads(payload)

    settings = ["--workers", "1", "--worker-class", worker, "--graceful-timeout", "100"]
    with gunicorn(settings, env, tmp_path / "gunicorn.log") as port:
        head, answer = half_sent(port, "/api/analytics/track")
        assert head.startswith(b"HTTP/1.1 408") and answer["error"] == "request_timeout"
        assert b"\nX-RateLimit-Limit:" not in head  # refused before the bucket was counted
        head, answer = half_sent(port, "/api/v1/analytics/conversion")
        assert head.startswith(b"HTTP/1.1 200") and answer["status"] == "skipped"
        assert post(port, "/api/analytics/track", json.loads(body)) == 201
    assert count_events(tenant_id) == 1


def test_a_broken_or_cut_short_body_is_a_400_on_every_public_endpoint(
    migrated, make_tenant, tmp_path
):
    """gunicorn raises its own error (InvalidChunkSize, no OSError) for a chunk size that
    is no number: it was a 500 on the batch and v1 endpoints, and, raised into the rate
    limits' keys, taken for the limiter's storage failing (limits counted per process,
    a traceback logged per request). A body that ends before its Content-Length, its
    sender gone, was handed over as if whole: a valid start was stored."""
    tenant = make_tenant()
    env = {
        **os.environ,
        "DATABASE_URL": migrated,
        "VISITOR_HASH_KEY": TEST_HASH_KEY,
        "JWT_SECRET_KEY": TEST_JWT_KEY,
    }
    event = {"tenant_id": tenant.id, "event_type": "pageview", "type": "whatsapp_click"}
    bodies = {
        "/api/auth/login": {"email": "a@example.com", "password": "s3cret-pass"},
        "/api/analytics/track": event,
        "/api/analytics/batch": {"tenant_id": tenant.id, "events": [event]},
        "/api/v1/analytics/track": {**event, "tenant_id": str(tenant.id)},
        "/api/v1/analytics/conversion": {"tenant_slug": tenant.slug, "value": 5},
    }

    def post(port: int, path: str, framing: str, body: bytes) -> tuple[int, dict]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"{framing}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            sock.shutdown(socket.SHUT_WR)  # the sender is done: nothing more comes
            answer = b""
            while chunk := sock.recv(65_536):
                answer += chunk
        head, _, answered = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(answered)

    def broken_chunk(port: int, path: str) -> tuple[int, dict]:
        return post(port, path, "Transfer-Encoding: chunked", b"zz\r\n{}\r\n0\r\n\r\n")

    def cut_short(port: int, path: str) -> tuple[int, dict]:
        whole = json.dumps(bodies[path]).encode()
        return post(port, path, f"Content-Length: {len(whole) + 40}", whole)

    log = tmp_path / "gunicorn.log"
    with gunicorn(["--workers", "1"], env, log) as port:
        for path in (
            "/api/auth/login",
            "/api/analytics/track",
            "/api/analytics/batch",
            "/api/v1/analytics/track",
        ):
            for sent in (broken_chunk, cut_short):
                status, body = sent(port, path)
                assert (status, body["error"]) == (400, "bad_request"), (path, sent, body)
                assert "cut short" in body["message"]
        # The payment beacon answers 200 whatever it is sent, and records no cut sale.
        for sent in (broken_chunk, cut_short):
            assert sent(port, "/api/v1/analytics/conversion") == (
                200,
                {"status": "skipped", "transaction_id": None},
            )
    assert count_events(tenant.id) == 0
    written = log.read_text()
    assert "Traceback" not in written
    assert "falling back" not in written


class _CutAfter(io.RawIOBase):
    """A chunked body as the server hands it over: ``data``, then a broken chunk."""

    def __init__(self, data: bytes) -> None:
        self.rest = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self.rest:
            raise OSError("Invalid chunk size")
        size = min(len(buffer), len(self.rest))
        buffer[:size], self.rest = self.rest[:size], self.rest[size:]
        return size


def test_a_chunked_body_broken_past_the_limit_is_a_400(client, make_tenant):
    """Looking one byte past the limit met a broken chunk: the client's fault, not a 500."""
    body = json.dumps({"tenant_id": make_tenant().id, "events": [{"event_type": "pageview"}]})
    response = client.post(
        "/api/analytics/batch",
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={
            "wsgi.input": _CutAfter(body.encode().ljust(MAX_CONTENT_LENGTH)),
            "wsgi.input_terminated": True,
        },
    )
    assert response.status_code == 400
    assert response.get_json()["success"] is False


def test_each_batch_event_counts_against_the_tenant_limit(make_app, make_tenant):
    app = make_app(TRACK_RATE_LIMIT="10 per minute")
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    six = {"tenant_id": tenant_id, "events": [{"event_type": "pageview"}] * 6}
    assert client.post("/api/analytics/batch", json=six).status_code == 201
    assert client.post("/api/analytics/batch", json=six).status_code == 429  # 6 + 6 > 10
    single = {"tenant_id": tenant_id, "event_type": "pageview"}
    assert [client.post("/api/analytics/track", json=single).status_code for _ in range(5)] == [
        201,
        201,
        201,
        201,
        429,
    ]
    with app.app_context():
        assert count_events(tenant_id) == 10


def test_a_batch_over_500_items_is_a_validation_error_that_costs_at_most_one_unit(
    make_app, make_tenant
):
    app = make_app(TRACK_RATE_LIMIT="100 per minute")
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    too_many = {"tenant_id": tenant_id, "events": [{"event_type": "pageview"}] * 501}
    response = client.post("/api/analytics/batch", json=too_many)
    assert response.status_code == 422
    assert response.get_json()["error"] == "validation_error"
    assert "events" in response.get_json()["errors"]
    ninety_nine = {"tenant_id": tenant_id, "events": [{"event_type": "pageview"}] * 99}
    assert client.post("/api/analytics/batch", json=ninety_nine).status_code == 201
    with app.app_context():
        assert count_events(tenant_id) == 99


def test_a_batch_of_the_most_items_costs_all_of_them(make_app, make_tenant):
    app = make_app(TRACK_RATE_LIMIT="999 per minute")
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    five_hundred = {"tenant_id": tenant_id, "events": [{"event_type": "pageview"}] * 500}
    assert client.post("/api/analytics/batch", json=five_hundred).status_code == 201
    assert client.post("/api/analytics/batch", json=five_hundred).status_code == 429  # 1,000
    with app.app_context():
        assert count_events(tenant_id) == 500


def test_a_batch_larger_than_the_whole_limit_is_refused_free_with_advice(make_app, make_tenant):
    """It could never pass: 413 saying to split it, no Retry-After, and the bucket untouched."""
    app = make_app(TRACK_RATE_LIMIT="10 per minute")
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id

    def batch(size):
        body = {"tenant_id": tenant_id, "events": [{"event_type": "pageview"}] * size}
        return client.post("/api/analytics/batch", json=body)

    refused = batch(11)
    assert refused.status_code == 413
    body = refused.get_json()
    assert (body["success"], body["error"], body["max_events"]) == (False, "batch_too_large", 10)
    assert "Split it into batches of at most 10 events" in body["message"]
    assert "Retry-After" not in refused.headers
    assert batch(10).status_code == 201  # the refused batch drew nothing from the bucket
    later = batch(2)  # fits the limit, not what is left of it: a 429 worth retrying
    assert later.status_code == 429
    assert int(later.headers["Retry-After"]) > 0
    with app.app_context():
        assert count_events(tenant_id) == 10


@pytest.mark.parametrize("group_commit", [True, False])
def test_concurrent_single_events_are_all_stored(make_app, make_tenant, group_commit):
    app = make_app(GROUP_COMMIT=group_commit)
    with app.app_context():
        tenant_id = make_tenant().id
    statuses, barrier = [], threading.Barrier(12)

    def send(n):
        client = app.test_client()
        barrier.wait()
        for i in range(5):
            statuses.append(
                client.post(
                    "/api/analytics/track",
                    json={
                        "tenant_id": tenant_id,
                        "event_type": "pageview",
                        "metadata": {"n": n, "i": i},
                    },
                ).status_code
            )

    threads = [threading.Thread(target=send, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 60
    with app.app_context():
        assert count_events(tenant_id) == 60
        assert ("group_commit" in app.extensions) is group_commit


def run_concurrently(app, bodies):
    statuses = {}

    def send(index, body):
        statuses[index] = app.test_client().post("/api/analytics/track", json=body).status_code

    threads = [threading.Thread(target=send, args=item) for item in enumerate(bodies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [statuses[i] for i in range(len(bodies))]


def test_requests_in_flight_share_a_transaction(make_app, make_tenant, monkeypatch):
    app = make_app()
    with app.app_context():
        tenant_id = make_tenant().id
    batch_sizes, real_write = [], GroupCommitter._write

    def slow_write(committer, jobs):
        batch_sizes.append(len(jobs))
        time.sleep(0.2)  # the first commit is slow, so the others queue behind it
        return real_write(committer, jobs)

    monkeypatch.setattr(GroupCommitter, "_write", slow_write)
    body = {"tenant_id": tenant_id, "event_type": "pageview"}
    assert run_concurrently(app, [body] * 10) == [201] * 10
    assert sum(batch_sizes) == 10 and max(batch_sizes) > 1
    with app.app_context():
        assert count_events(tenant_id) == 10


def test_a_failing_job_fails_alone(make_app, make_tenant, monkeypatch):
    app = make_app()
    with app.app_context():
        tenant_id = make_tenant().id
    real_write = GroupCommitter._write

    def picky_write(committer, jobs):
        time.sleep(0.05)
        if any(event.event_type == "qr_scan" for job in jobs for event in job.events):
            raise RuntimeError("this batch holds a poisoned event")
        return real_write(committer, jobs)

    monkeypatch.setattr(GroupCommitter, "_write", picky_write)
    bodies = [
        {"tenant_id": tenant_id, "event_type": t}
        for t in ["pageview"] * 4 + ["qr_scan"] + ["pageview"] * 4
    ]
    statuses = run_concurrently(app, bodies)
    assert statuses[4] == 500
    assert statuses[:4] + statuses[5:] == [201] * 8
    with app.app_context():
        assert count_events(tenant_id) == 8


def test_waiting_requests_do_not_starve_the_committer_of_connections(make_app, make_tenant):
    """Requests that used the database give their connection back before they wait."""
    app = make_app(
        TENANT_CACHE_SECONDS=0,  # every request queries its tenant first
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 2, "max_overflow": 0, "pool_timeout": 5},
    )
    with app.app_context():
        tenant_id = make_tenant().id
    body = {"tenant_id": tenant_id, "event_type": "pageview"}
    assert run_concurrently(app, [body] * 12) == [201] * 12


def test_a_job_that_waits_too_long_is_withdrawn_unwritten(
    make_app, make_tenant, monkeypatch, caplog
):
    app = make_app()
    app.extensions["group_commit"].timeout = 0.3
    with app.app_context():
        tenant_id = make_tenant().id
    writing, real_write = threading.Event(), GroupCommitter._write

    def slow_write(committer, jobs):
        writing.set()
        time.sleep(0.6)  # longer than the timeout: the job already claimed must still settle
        return real_write(committer, jobs)

    monkeypatch.setattr(GroupCommitter, "_write", slow_write)
    statuses = {}

    def send(name):
        body = {"tenant_id": tenant_id, "event_type": "pageview", "metadata": {"who": name}}
        response = app.test_client().post("/api/analytics/track", json=body)
        statuses[name] = response.status_code
        if response.status_code == 503:
            assert response.get_json()["error"] == "unavailable"
            assert response.headers["Retry-After"] == "1"  # its own, not the rate limit's reset

    first = threading.Thread(target=send, args=("first",))
    first.start()
    writing.wait(5)
    send("second")  # queued behind the slow batch, gives up after 0.3 s
    first.join()
    assert statuses == {"first": 201, "second": 503}
    assert "events not stored, the client is told to send them again" in caplog.text
    time.sleep(0.7)  # let the committer reach the withdrawn job
    with app.app_context():
        assert count_events(tenant_id) == 1  # the withdrawn event was never written


def test_a_write_the_database_never_finishes_answers_503_in_time(
    make_app, make_tenant, monkeypatch, caplog
):
    """A database that stops answering mid-write (frozen, packets dropped) must not hold
    the request for ever: after write_timeout it is told the events may be stored."""
    app = make_app()
    committer = app.extensions["group_commit"]
    committer.timeout, committer.write_timeout = 2.0, 0.3  # taken long before 2 s
    with app.app_context():
        tenant_id = make_tenant().id
    answering, real_write = threading.Event(), GroupCommitter._write

    def stalled_write(committer, jobs):
        answering.wait(10)
        return real_write(committer, jobs)

    monkeypatch.setattr(GroupCommitter, "_write", stalled_write)
    body = {"tenant_id": tenant_id, "event_type": "pageview"}
    started = time.monotonic()
    response = app.test_client().post("/api/analytics/track", json=body)
    waited = time.monotonic() - started
    answering.set()
    assert response.status_code == 503
    assert "may have been stored" in response.get_json()["message"]
    assert waited < 5  # not the ten seconds the write stalled for
    assert "commit outcome unknown: the database had not finished the write" in caplog.text
    for _ in range(50):  # the write goes on once the database answers: it was stored
        with app.app_context():
            if count_events(tenant_id) == 1:
                break
        time.sleep(0.1)
    with app.app_context():
        assert count_events(tenant_id) == 1


def test_a_batch_the_database_rejects_fails_only_its_bad_job(make_app, make_tenant):
    """A real database error (no such tenant: a foreign key) fails its own job alone.

    The committer then keeps writing: on PostgreSQL its one-round-trip connection,
    whose transaction the error aborted, is replaced rather than reused or pooled.
    """
    app = make_app()
    with app.app_context():
        tenant = TenantInfo.of(make_tenant())
    committer = app.extensions["group_commit"]
    client = ClientInfo(ip="203.0.113.9", user_agent="pytest", referrer=None)

    def job(tenant: TenantInfo, path: str) -> IngestJob:
        return IngestJob(tenant, [NewEvent("pageview", {"path": path})], client, "key")

    ghost = TenantInfo(id=2**31 - 1, timezone="UTC", currency="USD")
    assert committer.submit(job(tenant, "/before")).stored == 1  # the month's partition is known
    outcomes: dict[str, object] = {}

    def submit(name: str, job: IngestJob) -> None:
        try:
            outcomes[name] = committer.submit(job).stored
        except Exception as error:  # the database's own error, as the request would see it
            outcomes[name] = type(error).__name__

    jobs = {"good-1": job(tenant, "/a"), "ghost": job(ghost, "/b"), "good-2": job(tenant, "/c")}
    threads = [threading.Thread(target=submit, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == {"good-1": 1, "ghost": "IntegrityError", "good-2": 1}
    assert committer.submit(job(tenant, "/after")).stored == 1  # still writing
    with app.app_context():
        assert count_events(tenant.id) == 4
        db.session.remove()
        with db.engine.connect() as pooled:  # nobody was handed an aborted transaction
            assert pooled.scalar(select(func.count()).select_from(Event)) == 4


def test_a_month_whose_first_batch_failed_is_still_written(make_app, make_tenant, is_postgres):
    """A new month's first batch fails (a foreign-key violation): the next batch of the
    month is written. (Its partition, made before the batch in a transaction of its own,
    stays; made in the batch's, it was rolled back with it, and the month taken as known
    then failed every later batch of it until the process restarted.)"""
    app = make_app()
    with app.app_context():
        tenant = TenantInfo.of(make_tenant())
        if is_postgres:  # else the test would prove nothing
            assert "events_y2041m07" not in db.session.scalars(LIST_PARTITIONS).all()
            db.session.rollback()
    committer = app.extensions["group_commit"]
    client = ClientInfo(ip="203.0.113.9", user_agent="pytest", referrer=None)
    ghost = TenantInfo(id=2**31 - 1, timezone="UTC", currency="USD")  # a foreign-key violation
    moment = datetime(2041, 7, 9, 12, tzinfo=UTC)

    def job(tenant: TenantInfo) -> IngestJob:
        return IngestJob(tenant, [NewEvent("pageview", created_at=moment)], client, "key")

    with pytest.raises(IntegrityError):
        committer.submit(job(ghost))
    assert committer.submit(job(tenant)).stored == 1
    with app.app_context():
        assert count_events(tenant.id) == 1


def commit_as_one_batch(committer: GroupCommitter, jobs: list[IngestJob]) -> list[object]:
    """Hand ``jobs`` to the committer as one batch, as its thread does; each one's outcome."""
    batch = [_Pending(job) for job in jobs]
    committer._commit(batch)
    return [p.error if p.error is not None else p.result.stored for p in batch]  # type: ignore


def pageview_job(tenant: TenantInfo, path: str) -> IngestJob:
    client = ClientInfo(ip="203.0.113.9", user_agent="pytest", referrer=None)
    return IngestJob(tenant, [NewEvent("pageview", {"path": path})], client, "key")


@pytest.mark.parametrize("keyed", [False, True])  # one round trip, or two (keys claimed first)
def test_a_batch_that_may_have_committed_is_not_written_again(
    app, make_tenant, add_events, is_postgres, monkeypatch, keyed
):
    """The session ends right after COMMIT reached the server: the batch is stored, but the
    committer cannot know. Writing its jobs again one by one would store them twice; they
    fail instead, and a client hears 503."""
    if not is_postgres:
        pytest.skip("a batch's BEGIN to COMMIT in one round trip is PostgreSQL's")
    tenant = make_tenant()
    add_events(tenant, [("pageview", utcnow(), "10.0.0.1", None)])  # the month is known
    real_executes = postgres_writer._executes

    def committed_then_cut_off(params) -> str:
        # A real lost connection: the server commits, then its session ends before the reply.
        return real_executes(params) + ";\nCOMMIT;\nSELECT pg_terminate_backend(pg_backend_pid())"

    monkeypatch.setattr(postgres_writer, "_executes", committed_then_cut_off)
    committer = app.extensions["group_commit"]
    info = TenantInfo.of(tenant)
    job = keyed_pageview_job if keyed else pageview_job
    outcomes = commit_as_one_batch(committer, [job(info, "/a"), job(info, "/b")])
    assert [type(outcome) for outcome in outcomes] == [CommitUncertain] * 2
    assert count_events(tenant.id) == 3  # the batch's two, once
    response = app.test_client().post(
        "/api/analytics/track", json={"tenant_id": tenant.id, "event_type": "pageview"}
    )
    assert response.status_code == 503
    assert response.get_json()["error"] == "unavailable"
    assert count_events(tenant.id) == 4


def test_jobs_of_a_batch_whose_commit_is_uncertain_are_not_each_written_again(
    app, make_tenant, monkeypatch
):
    """Whatever made the outcome unknown, the batch may be stored: writing its jobs again
    one by one, as after a sure rollback, would store them twice."""
    tenant = make_tenant()
    committer = app.extensions["group_commit"]
    real_write = committer._write
    writes = []

    def written_then_unknown(jobs):
        writes.append(len(jobs))
        results = real_write(jobs)
        if len(writes) == 1:
            raise CommitUncertain("the commit's outcome is unknown")
        return results

    monkeypatch.setattr(committer, "_write", written_then_unknown)
    info = TenantInfo.of(tenant)
    outcomes = commit_as_one_batch(committer, [pageview_job(info, "/a"), pageview_job(info, "/b")])
    assert [type(outcome) for outcome in outcomes] == [CommitUncertain] * 2
    assert writes == [2]
    assert count_events(tenant.id) == 2


def test_a_read_only_refusal_fails_a_batch_without_each_job_asking_again(
    make_app, make_tenant, migrated, is_postgres, monkeypatch
):
    """A standby after a failover refuses every job alike, and its refusal drops the pool:
    written again one by one, each job would open a connection to hear it once more."""
    if not is_postgres:
        pytest.skip("a read-only server is PostgreSQL's")
    info = TenantInfo.of(make_tenant())
    app = make_app(SQLALCHEMY_DATABASE_URI=read_only_url(migrated))
    committer = app.extensions["group_commit"]
    real_write = committer._write
    writes = []

    def counted(jobs):
        writes.append(len(jobs))
        return real_write(jobs)

    monkeypatch.setattr(committer, "_write", counted)
    with app.app_context():
        outcomes = commit_as_one_batch(committer, [pageview_job(info, f"/{n}") for n in range(5)])
    assert writes == [5]
    assert all(is_read_only(outcome) for outcome in outcomes)  # type: ignore[arg-type]
    assert len({id(outcome) for outcome in outcomes}) == 5  # each waiter raises its own


def submit_within(committer: GroupCommitter, job: IngestJob, seconds: float = 10) -> object:
    """``committer.submit(job)``'s result or error; a hang fails the test, not the suite."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(committer.submit(job))
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"submit did not return within {seconds} s"
    return outcome[0]


def test_a_committer_cut_off_mid_batch_writes_the_batches_after_a_pause(
    app, make_tenant, add_events, is_postgres, monkeypatch
):
    """The connection lost during a batch stays invalidated until the next batch; the idle
    check after a pause once met it there, raised, and ended the committer: every later
    request waited its 30 s and answered 503, until the worker was restarted."""
    if not is_postgres:
        pytest.skip("a batch's BEGIN to COMMIT in one round trip is PostgreSQL's")
    monkeypatch.setattr("tenant_analytics.group_commit.IDLE_CHECK_SECONDS", 0.2)
    tenant = make_tenant()
    add_events(tenant, [("pageview", utcnow(), "10.0.0.1", None)])  # the month is known
    info = TenantInfo.of(tenant)
    committer = app.extensions["group_commit"]
    real_executes = postgres_writer._executes
    monkeypatch.setattr(
        postgres_writer,
        "_executes",
        lambda params: real_executes(params) + ";\nSELECT pg_terminate_backend(pg_backend_pid())",
    )
    assert isinstance(submit_within(committer, pageview_job(info, "/cut-off")), CommitUncertain)
    monkeypatch.setattr(postgres_writer, "_executes", real_executes)
    thread = committer._thread
    time.sleep(0.4)
    outcome = submit_within(committer, pageview_job(info, "/after-a-pause"))
    assert getattr(outcome, "stored", outcome) == 1
    assert committer._thread is thread  # the same committer: nothing escaped its batch
    assert count_events(tenant.id) == 2  # the first row, and the one after the pause


def test_connections_the_server_ended_between_busy_batches_are_not_written_on(
    app, make_tenant, add_events, is_postgres, database_url
):
    """A restart or pg_terminate_backend ends the committer's idle sessions; under steady
    traffic (no pause for the round-trip check) the next batch must not be sent on them
    and fail as "may have been stored" when nothing was."""
    if not is_postgres:
        pytest.skip("sessions ended by the server are PostgreSQL's")
    tenant = make_tenant()
    add_events(tenant, [("pageview", utcnow(), "10.0.0.1", None)])  # the month is known
    info = TenantInfo.of(tenant)
    committer = app.extensions["group_commit"]
    # The kept connection made: keyed and unkeyed jobs alike are written on it.
    assert submit_within(committer, keyed_pageview_job(info, "k-first")).stored == 1  # type: ignore
    assert submit_within(committer, pageview_job(info, "/first")).stored == 1  # type: ignore
    assert committer._connection is None  # (the other is for new months' partitions)
    pids = [committer._autocommit.connection.dbapi_connection.get_backend_pid()]  # type: ignore
    admin = create_engine(normalize_database_url(database_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for pid in pids:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        sessions_gone(connection, "pid = ANY(:pids)", pids=pids)
    admin.dispose()
    for job in (keyed_pageview_job(info, "k-next"), pageview_job(info, "/next")):
        committer._idle_since = time.monotonic()  # busy: no idle round trip to catch it
        outcome = submit_within(committer, job)
        assert getattr(outcome, "stored", outcome) == 1
    assert count_events(tenant.id) == 5


# SystemExit ends the committer's thread, as it should: pytest reports that as a warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("escape", [RuntimeError, SystemExit])
def test_the_committer_outlives_what_escapes_a_batch(app, make_tenant, monkeypatch, escape):
    """An error no batch should raise settles that batch's waiters (503, may be stored)
    instead of leaving them to wait for good; the next job is written, by a new committer
    if the old one was stopped."""
    tenant = make_tenant()
    info = TenantInfo.of(tenant)
    committer = app.extensions["group_commit"]
    assert submit_within(committer, pageview_job(info, "/first")).stored == 1  # type: ignore

    def broken(batch):
        raise escape("not an error a batch can raise")

    monkeypatch.setattr(committer, "_without_busy_tenants", broken)
    assert isinstance(submit_within(committer, pageview_job(info, "/lost")), CommitUncertain)
    monkeypatch.undo()
    outcome = submit_within(committer, pageview_job(info, "/next"))
    assert getattr(outcome, "stored", outcome) == 1
    assert count_events(tenant.id) == 2


def test_a_table_lock_holds_a_new_connections_prepare_no_longer_than_the_timeout(
    app, make_tenant, add_events, is_postgres, database_url
):
    """The write statements are prepared on a new connection before its first batch; the
    PREPARE locks the tables it names and once waited out any lock on them (an ALTER, a
    non-concurrent index build) however long it lasted, holding up every tenant."""
    if not is_postgres:
        pytest.skip("prepared statements are PostgreSQL's")
    tenant = make_tenant()
    add_events(tenant, [("pageview", utcnow(), "10.0.0.1", None)])  # the month is known
    info = TenantInfo.of(tenant)
    committer = app.extensions["group_commit"]
    committer.lock_timeout = 0.2
    other = create_engine(normalize_database_url(database_url), poolclass=NullPool)
    locked = threading.Event()

    def hold_the_table_for(seconds: float) -> None:
        with other.connect() as connection:
            connection.exec_driver_sql("LOCK TABLE events IN SHARE MODE")
            locked.set()
            connection.exec_driver_sql(f"SELECT pg_sleep({seconds})")
            connection.rollback()

    holder = threading.Thread(target=hold_the_table_for, args=(4,))
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        outcome = submit_within(committer, pageview_job(info, "/while-locked"))
        waited = time.monotonic() - started
    finally:
        holder.join()
        other.dispose()
    assert isinstance(outcome, CommitTimeout), outcome
    assert waited < 3  # the lock timeout's, twice over and more, not the lock's 4 s
    assert submit_within(committer, pageview_job(info, "/after")).stored == 1  # type: ignore


@contextmanager
def commit_replies_lost(database_url: str):
    """Within: every COMMIT of the app's engine takes effect on the server, whose session
    then ends before the client hears back, as when the reply is lost on the network."""
    admin = create_engine(normalize_database_url(database_url), isolation_level="AUTOCOMMIT")

    def commit_then_cut_off(connection) -> None:
        raw = connection.connection.dbapi_connection
        with raw.cursor() as cursor:
            cursor.execute("COMMIT")
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        with admin.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    event.listen(db.engine, "commit", commit_then_cut_off)
    try:
        yield
    finally:
        event.remove(db.engine, "commit", commit_then_cut_off)
        admin.dispose()


def keyed_pageview_job(tenant: TenantInfo, key: str) -> IngestJob:
    """A job whose key the committer claims first: in a round trip of its own on
    PostgreSQL, in an ordinary transaction on SQLite."""
    client = ClientInfo(ip="203.0.113.9", user_agent="pytest", referrer=None)
    return IngestJob(tenant, [NewEvent("pageview", dedupe_key=key)], client, "key")


def test_a_batch_claims_every_requests_keys_in_one_statement(app, make_tenant):
    """Keyed events (every snippet event is) take the transaction that claims their keys
    first: one statement for the batch, not one per request, whatever the tenants; a key
    sent twice in one batch is stored once, the same key at another tenant is its own."""
    first, second = TenantInfo.of(make_tenant()), TenantInfo.of(make_tenant())
    committer = app.extensions["group_commit"]
    jobs = [
        keyed_pageview_job(first, "idem:a"),
        keyed_pageview_job(second, "idem:a"),
        keyed_pageview_job(first, "idem:b"),
        keyed_pageview_job(first, "idem:a"),  # the snippet's resend, in the same batch
    ]
    claims: list[str] = []

    def listener(_connection, _cursor, statement, *_rest) -> None:
        if statement.startswith("DEALLOCATE"):
            return  # a new connection's PREPAREs, which name every table
        if "dedupe_keys" in statement or postgres_writer.CLAIM.execute in statement:
            claims.append(statement)

    event.listen(db.engine, "before_cursor_execute", listener)
    try:
        assert commit_as_one_batch(committer, jobs) == [1, 1, 1, 0]
    finally:
        event.remove(db.engine, "before_cursor_execute", listener)
    assert len(claims) == 1
    assert [count_events(first.id), count_events(second.id)] == [2, 1]


def test_each_key_of_a_batch_is_held_to_its_own_window(app, make_tenant):
    """One batch resends keys of two tenants, some spelled alike, each with its window:
    only those whose window has passed are stored again ("never" keys never are)."""
    first, second = TenantInfo.of(make_tenant()), TenantInfo.of(make_tenant())
    committer = app.extensions["group_commit"]
    client = ClientInfo(ip="203.0.113.9", user_agent="pytest", referrer=None)

    def job(tenant: TenantInfo, key: str, window: timedelta | None) -> IngestJob:
        event = NewEvent("pageview", dedupe_key=key, dedupe_window=window)
        return IngestJob(tenant, [event], client, "key")

    minute, hour = timedelta(minutes=1), timedelta(hours=1)
    jobs = [
        job(first, "k:a", minute),
        job(first, 'k:"b\\', hour),
        job(second, "k:a", hour),
        job(second, "k:c", None),
        job(first, "k:c", minute),
    ]
    assert commit_as_one_batch(committer, jobs) == [1, 1, 1, 1, 1]
    db.session.execute(update(DedupeKey).values(seen_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    assert commit_as_one_batch(committer, jobs) == [1, 0, 0, 0, 1]
    assert [count_events(first.id), count_events(second.id)] == [5, 2]


def test_a_keyed_batch_is_written_in_two_round_trips(app, make_tenant, add_events, is_postgres):
    """On PostgreSQL the keys are claimed in the string that begins the transaction, and
    the rows of the events claimed go with COMMIT: two round trips for a keyed batch (the
    snippet's every event), against four in an ordinary transaction."""
    if not is_postgres:
        pytest.skip("the batch's strings of statements are PostgreSQL's")
    tenant = make_tenant()
    add_events(tenant, [("pageview", utcnow(), "10.0.0.1", None)])  # the month is known
    info = TenantInfo.of(tenant)
    committer = app.extensions["group_commit"]
    assert commit_as_one_batch(committer, [keyed_pageview_job(info, "k0")]) == [1]  # prepared
    sent: list[str] = []

    def listener(_connection, _cursor, statement, *_rest) -> None:
        sent.append(statement)

    jobs = [keyed_pageview_job(info, "k0"), keyed_pageview_job(info, "k1"), pageview_job(info, "/")]
    event.listen(db.engine, "before_cursor_execute", listener)
    try:
        assert commit_as_one_batch(committer, jobs) == [0, 1, 1]
    finally:
        event.remove(db.engine, "before_cursor_execute", listener)
    assert len(sent) == 2
    assert sent[0].startswith("BEGIN;") and postgres_writer.CLAIM.execute in sent[0]
    assert sent[1].endswith("COMMIT") and "BEGIN" not in sent[1]
    assert count_events(tenant.id) == 4


def test_a_write_alone_whose_commit_reply_was_lost_is_a_503_saying_it_may_be_stored(
    make_app, make_tenant, is_postgres, database_url
):
    """Without group commit the same lost reply must not read as "nothing stored,
    retry": the event is there."""
    if not is_postgres:
        pytest.skip("a lost reply needs a server")
    app = make_app(GROUP_COMMIT=False)
    with app.app_context():
        tenant_id = make_tenant().id
        with commit_replies_lost(database_url):
            response = app.test_client().post(
                "/api/analytics/track", json={"tenant_id": tenant_id, "event_type": "pageview"}
            )
        assert response.status_code == 503
        assert "may have been stored" in response.get_json()["message"]
        assert count_events(tenant_id) == 1


def lose_track_of_the_transaction(connection) -> None:
    """Leave ``connection`` as a statement timeout or a DBA's cancel landing just as COMMIT
    starts leaves it: the server still in the transaction, aborted, while psycopg2 takes a
    failed COMMIT as rolled back, so its own rollback afterwards sends nothing."""
    raw = connection.connection.dbapi_connection
    autocommit, raw.autocommit = raw.autocommit, True  # the driver keeps no transaction
    with raw.cursor() as cursor:
        cursor.execute("BEGIN")
        with pytest.raises(psycopg2.errors.DivisionByZero):
            cursor.execute("SELECT 1 / 0")
    raw.autocommit = autocommit


def test_a_committer_connection_left_in_an_aborted_transaction_is_replaced(
    app, make_tenant, is_postgres, monkeypatch
):
    """Keyed events go through the committer's kept connection: left in an aborted
    transaction, every later batch on it was refused (a 500 for each keyed event) until
    traffic paused. The first refusal now drops it; as it surely wrote nothing, a batch's
    jobs are written again one by one on a new connection, and a job alone is a 503."""
    if not is_postgres:
        pytest.skip("the lost transaction is psycopg2's and PostgreSQL's")
    # No idle check between the batches (a loaded machine's second would replace the
    # connection before the first request finds it aborted).
    monkeypatch.setattr("tenant_analytics.group_commit.IDLE_CHECK_SECONDS", 3600.0)
    tenant = make_tenant()
    info = TenantInfo.of(tenant)
    committer = app.extensions["group_commit"]
    assert commit_as_one_batch(committer, [keyed_pageview_job(info, "k0")]) == [1]
    lose_track_of_the_transaction(committer._autocommit)
    jobs = [keyed_pageview_job(info, "a"), keyed_pageview_job(info, "b")]
    assert commit_as_one_batch(committer, jobs) == [1, 1]
    lose_track_of_the_transaction(committer._autocommit)
    client = app.test_client()
    answers = [
        client.post(
            "/api/analytics/track",
            json={"tenant_id": tenant.id, "event_type": "pageview", "idempotency_key": key},
        )
        for key in ("k1", "k2", "k3")
    ]
    assert [answer.status_code for answer in answers] == [503, 201, 201]
    assert answers[0].get_json()["error"] == "unavailable"
    assert "retry shortly" in answers[0].get_json()["message"]  # surely not stored
    assert count_events(tenant.id) == 5


def test_a_pooled_connection_left_in_an_aborted_transaction_is_replaced(
    make_app, make_tenant, is_postgres
):
    """The same state on a connection back in the pool: its check-out ping is refused, which
    now reads as a dead connection, so the request gets a new one instead of a 500."""
    if not is_postgres:
        pytest.skip("the lost transaction is psycopg2's and PostgreSQL's")
    app = make_app(GROUP_COMMIT=False)
    with app.app_context():
        tenant_id = make_tenant().id
        db.session.remove()
        db.engine.dispose()  # the one pooled connection is the one left aborted
        with db.engine.connect() as connection:
            lose_track_of_the_transaction(connection)
        response = app.test_client().post(
            "/api/analytics/track",
            json={"tenant_id": tenant_id, "event_type": "pageview", "idempotency_key": "k"},
        )
        assert response.status_code == 201
        assert count_events(tenant_id) == 1


def test_a_failed_commit_drops_its_connection(app, is_postgres):
    """After COMMIT raised, psycopg2 holds the transaction ended, whatever the server did
    with it: the connection is not used again."""
    if not is_postgres:
        pytest.skip("the lost transaction is psycopg2's and PostgreSQL's")
    with db.engine.connect() as connection:
        connection.exec_driver_sql(
            "CREATE TEMP TABLE once (n int UNIQUE DEFERRABLE INITIALLY DEFERRED)"
        )
        connection.exec_driver_sql("INSERT INTO once VALUES (1), (1)")  # refused at COMMIT
        with pytest.raises(IntegrityError) as refused:
            connection.commit()
    assert refused.value.connection_invalidated
    assert reported_by_live_database(refused.value)  # the server's ERROR: nothing committed


def test_a_batch_whose_commit_the_server_refused_is_written_again_job_by_job(
    app, make_tenant, is_postgres, monkeypatch
):
    """An ERROR in reply to COMMIT (a cancel, a deferred constraint) means nothing was
    committed, the keys claimed first included, though the connection is dropped: the jobs
    are each written again, not failed as may-have-been-stored."""
    if not is_postgres:
        pytest.skip("a batch's COMMIT in the string that writes it is PostgreSQL's")
    info = TenantInfo.of(make_tenant())
    committer = app.extensions["group_commit"]
    assert commit_as_one_batch(committer, [keyed_pageview_job(info, "k0")]) == [1]
    real_executes = postgres_writer._executes
    refusals = []

    def refused_at_commit_once(params) -> str:
        if refusals:
            return real_executes(params)
        refusals.append(committer._autocommit)
        return real_executes(params) + (
            ";\nCREATE TEMP TABLE once (n int UNIQUE DEFERRABLE INITIALLY DEFERRED)"
            ";\nINSERT INTO once VALUES (1), (1)"  # refused at COMMIT
        )

    monkeypatch.setattr(postgres_writer, "_executes", refused_at_commit_once)
    jobs = [keyed_pageview_job(info, "a"), keyed_pageview_job(info, "b")]
    assert commit_as_one_batch(committer, jobs) == [1, 1]
    assert refusals[0].closed and committer._autocommit is not refusals[0]  # dropped
    assert count_events(info.id) == 3


def test_writes_resume_once_the_database_takes_connections_again(
    app, make_tenant, add_events, is_postgres, database_url
):
    """A restart as the committer sees it: its connections are cut off while idle, then
    a new one is refused for a while. The ended sessions are noticed before a batch is
    sent on them, so nothing is in doubt; once the database is back, the next batch is
    written."""
    if not is_postgres:
        pytest.skip("a server that refuses connections is PostgreSQL's here")
    tenant = make_tenant()
    add_events(tenant, [("pageview", utcnow(), "10.0.0.1", None)])  # the month is known
    committer = app.extensions["group_commit"]
    info = TenantInfo.of(tenant)
    assert committer.submit(pageview_job(info, "/before")).stored == 1
    name = db.engine.url.database
    db.session.remove()
    # Connected to another database: PostgreSQL will not shut out the one it is in.
    admin_url = make_url(normalize_database_url(database_url)).set(database="postgres")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            sessions_gone(connection, "datname = :n", n=name)
        for path in ("/cut-off", "/refused"):  # no new connection: surely not written
            with pytest.raises(OperationalError):
                committer.submit(pageview_job(info, path))
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.dispose()
    assert committer.submit(pageview_job(info, "/after")).stored == 1


@pytest.fixture
def rebuilding(app, is_postgres):
    """``rebuilding(tenant)``: a rollup rebuild of ``tenant`` on a second connection, left
    uncommitted (its lock held) until the test ends, or 8 s pass."""
    if not is_postgres:
        pytest.skip("the rollup lock is PostgreSQL's")
    sessions: list[Session] = []

    def _rebuild(tenant: Tenant) -> None:
        session = Session(db.engine)
        sessions.append(session)
        rebuild_rollups(session, tenant.id)

    timer = threading.Timer(8, lambda: [session.rollback() for session in sessions])
    timer.start()
    yield _rebuild
    timer.cancel()
    for session in sessions:
        session.close()


@pytest.mark.parametrize("keyed", [False, True])  # one round trip, or two (keys claimed first)
@pytest.mark.parametrize("busy_id", ["lowest", "highest"])
def test_a_tenant_being_rebuilt_fails_alone_and_promptly(
    app, make_tenant, add_events, rebuilding, keyed, busy_id
):
    """A rebuild holds its tenant's rollup lock to the end of its transaction. The committer
    waits for it no longer than its lock timeout, once per batch, not once per job: then that
    tenant's jobs fail (not written, so they may be sent again) and the others are written.

    Locks are taken in tenant order: with the busy tenant's id highest, the failed batch
    already held the others' locks, and must have let them go before looking for the busy."""
    committer = app.extensions["group_commit"]
    committer.lock_timeout = 0.5
    tenants = [make_tenant() for _ in range(3)]
    busy, other, third = tenants if busy_id == "lowest" else tenants[::-1]
    add_events(other, [("pageview", utcnow(), "10.0.0.1", None)])  # the month is known
    rebuilding(busy)

    def job(tenant: Tenant, path: str) -> IngestJob:
        event = NewEvent("pageview", {"path": path}, dedupe_key=path if keyed else None)
        return IngestJob(TenantInfo.of(tenant), [event], ClientInfo(None, None, None), "key")

    jobs = [job(busy, "/1"), job(other, "/2"), job(busy, "/3"), job(third, "/4"), job(busy, "/5")]
    started = time.monotonic()
    outcomes = commit_as_one_batch(committer, jobs)
    assert time.monotonic() - started < 1.5  # one job after another would take 2 s
    assert [type(outcome) for outcome in outcomes[::2]] == [TenantBusy] * 3
    assert outcomes[1::2] == [1, 1]
    assert [count_events(t.id) for t in (busy, other, third)] == [0, 2, 1]


def test_a_zone_changed_twice_during_a_batch_refuses_only_that_tenants_jobs(
    app, make_tenant, add_events, is_postgres, monkeypatch
):
    """A batch refused for a zone changed meanwhile is written again once in the zones as
    they are; changed again by then (an owner changing zones in a row), each tenant's jobs
    go apart: only that tenant's are refused, not another business's sharing the batch."""
    if not is_postgres:
        pytest.skip("SQLite's writes read the zones under its write lock")
    committer = app.extensions["group_commit"]
    churning, steady = make_tenant(), make_tenant()
    add_events(steady, [("pageview", utcnow(), "10.0.0.1", None)])  # the month is known
    db.session.execute(update(Tenant).where(Tenant.id == churning.id).values(timezone="Asia/Tokyo"))
    db.session.commit()
    # Each look at the zones finds the one before the last change: it changed again.
    monkeypatch.setattr(
        "tenant_analytics.group_commit.current_tenants",
        lambda _connection, ids: {
            id_: TenantInfo(id_, "UTC" if id_ == churning.id else steady.timezone, "USD")
            for id_ in ids
        },
    )
    stale = TenantInfo(churning.id, "UTC", "USD")
    jobs = [pageview_job(stale, "/a"), pageview_job(TenantInfo.of(steady), "/b")]
    outcomes = commit_as_one_batch(committer, jobs)
    assert type(outcomes[0]) is CommitTimeout
    assert outcomes[1] == 1
    assert [count_events(churning.id), count_events(steady.id)] == [0, 2]


def test_a_tenant_found_locked_holds_up_no_later_batch(
    app, make_tenant, add_events, is_postgres, monkeypatch
):
    """Once a tenant is found locked, its jobs are refused without going to the database
    until a try of the lock finds it free: each batch would otherwise wait out the lock
    timeout, every other tenant's events with it, for the whole rebuild."""
    if not is_postgres:
        pytest.skip("the rollup lock is PostgreSQL's")
    committer = app.extensions["group_commit"]
    committer.lock_timeout, committer.busy_recheck = 0.3, 60.0
    busy, other = make_tenant(), make_tenant()
    add_events(other, [("pageview", utcnow(), "10.0.0.1", None)])  # the month is known
    busy_info, other_info = TenantInfo.of(busy), TenantInfo.of(other)
    written: list[set[int]] = []
    real_write = GroupCommitter._write

    def recording_write(self, jobs):
        written.append({job.tenant.id for job in jobs})
        return real_write(self, jobs)

    monkeypatch.setattr(GroupCommitter, "_write", recording_write)
    lock = (ROLLUP_LOCK, busy.id)
    with db.engine.connect() as holder:  # a rebuild's lock, held as long as this block
        holder.exec_driver_sql("SELECT pg_advisory_lock(%s, %s)", lock)
        batches = [
            [pageview_job(busy_info, f"/{n}"), pageview_job(other_info, f"/o{n}")] for n in range(3)
        ]
        first = commit_as_one_batch(committer, batches[0])  # finds the lock (one wait)
        del written[:]
        second = commit_as_one_batch(committer, batches[1])
        assert written == [{other.id}]  # the busy tenant's job never reached the database
        assert [type(first[0]), type(second[0])] == [TenantBusy, TenantBusy]
        assert first[1] == second[1] == 1
        holder.exec_driver_sql("SELECT pg_advisory_unlock(%s, %s)", lock)
    committer.busy_recheck = 0.0  # due now: a try finds the rebuild over
    assert commit_as_one_batch(committer, batches[2]) == [1, 1]
    assert [count_events(busy.id), count_events(other.id)] == [1, 4]


WRITE_PATHS = ["batched", "keyed", "alone"]  # the committer's one or two round trips, none


class MonthAfterMonth:
    """A clock whose every reading is a month after the last: a month begun between two
    readings of one write."""

    def __init__(self, first: datetime) -> None:
        self.next = first

    def __call__(self) -> datetime:
        now, self.next = self.next, self.next + timedelta(days=31)
        return now


@pytest.mark.parametrize("how", WRITE_PATHS)
@pytest.mark.parametrize("holder", ["rollup lock", "tenant row"])
def test_a_new_months_first_write_and_a_rebuild_do_not_deadlock(
    make_app, make_tenant, is_postgres, monkeypatch, how, holder
):
    """A write that needs a month's partition makes it in a transaction of its own, the
    month its rows get, then waits for the tenant's rollup lock. Made in the write's
    transaction, the partition's lock on events was held through that wait, and a rebuild
    holding the rollup lock and reading events waited for the write: PostgreSQL ended the
    deadlock by failing it. So with a zone change (the tenant's row written, then its
    events read), unless tenants is locked before events, as the partition's key needs."""
    if not is_postgres:
        pytest.skip("partitions and the rollup lock are PostgreSQL's")
    # Waits longer than deadlock_timeout (1 s), the deadlock check's delay.
    app = make_app(GROUP_COMMIT=how != "alone", WRITE_LOCK_TIMEOUT_SECONDS=5.0)
    tenant = make_tenant()
    year = 2043 + ["rollup lock", "tenant row"].index(holder)  # new months for each
    clock = MonthAfterMonth(datetime(year, 1 + 3 * WRITE_PATHS.index(how), 9, 12, tzinfo=UTC))
    made = {partition_name(month_of(clock.next + timedelta(days=31 * n))) for n in range(3)}
    assert not made & set(db.session.scalars(LIST_PARTITIONS))
    db.session.rollback()
    monkeypatch.setattr("tenant_analytics.ingestion.utcnow", clock)
    monkeypatch.setattr("tenant_analytics.group_commit.utcnow", clock, raising=False)
    event = NewEvent("pageview", dedupe_key="k" if how == "keyed" else None)
    client = ClientInfo(None, None, None)
    outcome: list[object] = []

    def write() -> None:
        with app.app_context():
            try:
                outcome.append(ingest_from_request_alike(app, tenant, event, client))
            except Exception as error:
                outcome.append(error)

    waiting = text("SELECT count(*) FROM pg_locks WHERE NOT granted")
    with db.engine.connect() as rebuild:
        if holder == "rollup lock":
            rebuild.execute(
                text("SELECT pg_advisory_xact_lock(:lock, :tenant)"),
                {"lock": ROLLUP_LOCK, "tenant": tenant.id},
            )
        else:  # as a zone change does before its rebuild
            rebuild.execute(update(Tenant).where(Tenant.id == tenant.id).values(name="Otra"))
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        for _ in range(100):  # until the writer waits
            with db.engine.connect() as look:
                if look.scalar(waiting):
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the writer never waited for the rebuild")
        counted = rebuild.scalar(  # as the rebuild reads the tenant's events
            select(func.count()).select_from(Event).where(Event.tenant_id == tenant.id)
        )
        rebuild.commit()
    writer.join(15)
    assert counted == 0
    assert [getattr(result, "stored", result) for result in outcome] == [1]
    assert count_events(tenant.id) == 1


@pytest.mark.parametrize("how", ["batched", "alone"])
def test_a_new_months_first_write_and_a_tenants_deletion_do_not_deadlock(
    make_app, make_tenant, is_postgres, how
):
    """`tenant delete` counts the tenant's events, then deletes its row: it takes tenants'
    lock first, in the partition's order (tenants, then events). Otherwise a partition
    made between the two held tenants and waited for events, the count's, while the
    delete waited for tenants: PostgreSQL failed one of them."""
    if not is_postgres:
        pytest.skip("partitions are PostgreSQL's")
    app = make_app(GROUP_COMMIT=how == "batched", WRITE_LOCK_TIMEOUT_SECONDS=5.0)
    doomed, writer_tenant = make_tenant(), make_tenant()
    doomed_id = doomed.id
    month = datetime(2047, 1 + (how == "alone"), 9, 12, tzinfo=UTC)  # a new month for each
    pageview = NewEvent("pageview", created_at=month)
    client = ClientInfo(None, None, None)
    outcome: list[object] = []
    waiting = text("SELECT count(*) FROM pg_locks WHERE NOT granted")

    def write() -> None:
        outcome.append(refused_or_stored(app, writer_tenant, pageview, client))

    def write_meanwhile(_connection, _cursor, sql: str, *_args) -> None:
        if sql.startswith("DELETE FROM tenants") and not outcome:
            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            for _ in range(40):  # until the partition waits (or is made, with nothing held)
                with db.engine.connect() as look:
                    if look.scalar(waiting) or not writer.is_alive():
                        break
                time.sleep(0.05)

    deleting = Session(db.engine)
    event.listen(db.engine, "before_cursor_execute", write_meanwhile)
    try:
        assert delete_tenant_data(deleting, doomed_id) == 0
        deleting.commit()
    finally:
        event.remove(db.engine, "before_cursor_execute", write_meanwhile)
        deleting.close()
    for _ in range(100):
        if outcome:
            break
        time.sleep(0.1)
    assert outcome == [1]
    db.session.expire_all()
    assert db.session.scalar(select(func.count()).where(Tenant.id == doomed_id)) == 0


@pytest.mark.parametrize("how", ["batched", "alone"])
def test_a_new_months_first_write_behind_a_long_read_waits_only_its_lock_timeout(
    make_app, make_tenant, is_postgres, how
):
    """Its partition waits for the lock a long read of events holds (a report, pg_dump)
    no longer than a write waits for any lock: then the write is refused, to be sent again,
    rather than holding its request (and a pooled connection) until the read ends."""
    if not is_postgres:
        pytest.skip("partitions are PostgreSQL's")
    app = make_app(GROUP_COMMIT=how == "batched", WRITE_LOCK_TIMEOUT_SECONDS=0.3)
    tenant = make_tenant()
    month = datetime(2046, 1 + (how == "alone"), 9, 12, tzinfo=UTC)  # a new month for each
    event = NewEvent("pageview", created_at=month)
    client = ClientInfo(None, None, None)
    with db.engine.connect() as report:
        report.scalar(select(func.count()).select_from(Event))  # holds events till it ends
        outcome: list[object] = []
        waiter = threading.Thread(
            target=lambda: outcome.append(refused_or_stored(app, tenant, event, client)),
            daemon=True,
        )
        waiter.start()
        waiter.join(10)
        report.rollback()
    assert [type(result) for result in outcome] == [
        CommitTimeout if how == "batched" else TenantBusy
    ]
    assert refused_or_stored(app, tenant, event, client) == 1  # once the read is over


def refused_or_stored(app, tenant: Tenant, event: NewEvent, client: ClientInfo) -> object:
    with app.app_context():
        try:
            return ingest_from_request_alike(app, tenant, event, client).stored
        except Exception as error:
            return error


def ingest_from_request_alike(app, tenant: Tenant, event: NewEvent, client: ClientInfo):
    """``ingest`` as a request calls it, with the app's committer if it has one."""
    return ingest(
        db.session,
        TenantInfo.of(tenant),
        [event],
        client,
        hash_key=TEST_HASH_KEY,
        lock_timeout=app.config["WRITE_LOCK_TIMEOUT_SECONDS"],
        committer=app.extensions.get("group_commit"),
    )


@pytest.mark.parametrize("group_commit", [True, False])
def test_events_of_a_tenant_being_rebuilt_answer_503(
    make_app, make_tenant, rebuilding, group_commit
):
    """Through HTTP: the tenant being rebuilt gets 503 (send again) once the lock wait runs
    out, another tenant 201. Without group commit too: each request waiting out the whole
    rebuild would hold a pooled connection, and a busy tenant would take them all."""
    app = make_app(GROUP_COMMIT=group_commit, WRITE_LOCK_TIMEOUT_SECONDS=0.3)
    busy, other = make_tenant(), make_tenant()
    rebuilding(busy)
    started = time.monotonic()
    statuses = run_concurrently(
        app, [{"tenant_id": tenant.id, "event_type": "pageview"} for tenant in (busy, other)]
    )
    assert statuses == [503, 201]
    assert time.monotonic() - started < 1.5  # the 0.3 s wait, not the rebuild (8 s)
    assert [count_events(busy.id), count_events(other.id)] == [0, 1]


def test_postgresql_batches_commit_in_one_round_trip(make_app, make_tenant, is_postgres):
    """Once its month's partition is known, a batch is one statement string: BEGIN to COMMIT."""
    if not is_postgres:
        pytest.skip("the one-round-trip write is PostgreSQL's")
    app = make_app()
    with app.app_context():
        tenant = TenantInfo.of(make_tenant())
        engine = db.engine
    committer = app.extensions["group_commit"]
    client = ClientInfo(ip="203.0.113.9", user_agent="pytest", referrer=None)
    events = [NewEvent("pageview", {"path": "/"}), NewEvent("whatsapp_click")]
    committer.submit(IngestJob(tenant, events, client, "key"))  # may create the partition
    sent: list[str] = []

    def listener(_connection, _cursor, statement, *_rest) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", listener)
    try:
        assert committer.submit(IngestJob(tenant, events, client, "key")).stored == 2
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert len(sent) == 1
    assert sent[0].startswith("BEGIN;") and sent[0].endswith("COMMIT")
    with app.app_context():
        assert count_events(tenant.id) == 4


def test_postgresql_batches_leave_out_the_rollups_they_do_not_touch(
    make_app, make_tenant, is_postgres
):
    """Landing events have no product, revenue or returning session: those statements are not
    sent. With a purchase in a client's session the batch needs them all."""
    if not is_postgres:
        pytest.skip("the one-round-trip write is PostgreSQL's")
    app = make_app()
    with app.app_context():
        tenant = TenantInfo.of(make_tenant())
        engine = db.engine
    committer = app.extensions["group_commit"]
    client = ClientInfo(ip="203.0.113.9", user_agent="pytest", referrer=None)
    landing = [NewEvent("pageview", {"path": "/"}, extra={"session_id": "x", NEW_SESSION: True})]
    purchase = NewEvent(
        "purchase",
        extra={"session_id": "s1", "product_slug": "pan", "revenue": 20, "currency": "HNL"},
    )
    committer.submit(IngestJob(tenant, landing, client, "key"))  # may create the partition
    sent: list[str] = []

    def listener(_connection, _cursor, statement, *_rest) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", listener)
    try:
        committer.submit(IngestJob(tenant, landing, client, "key"))
        committer.submit(IngestJob(tenant, [*landing, purchase], client, "key"))
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    by_gate = {statement.gate: statement.execute.split("(")[0] for statement in STATEMENTS}
    skipped_for_landing = {"products", "revenue", "sessions"}
    for gate, execute in by_gate.items():
        assert (execute in sent[0]) is (gate not in skipped_for_landing), gate
        assert execute in sent[1], gate


def test_metadata_numbers_beyond_64_bits_are_stored_exactly(client, make_tenant):
    """JSON allows any integer and so does PostgreSQL's jsonb; the batch text must carry it."""
    tenant_id = make_tenant().id
    sent = [{"path": "/"}, {"order": 2**70 + 1, "path": "/ñandú"}]
    for metadata in sent:  # the first one makes sure the month's partition is known
        body = {"tenant_id": tenant_id, "event_type": "pageview", "metadata": metadata}
        assert client.post("/api/analytics/track", json=body).status_code == 201
    db.session.expire_all()
    stored = db.session.scalars(
        select(Event.metadata_).where(Event.tenant_id == tenant_id).order_by(Event.id)
    ).all()
    assert stored == sent


def test_a_batch_goes_to_postgresql_as_orjson_writes_it(
    client, make_tenant, add_events, is_postgres, monkeypatch
):
    """The fast JSON writer, not the standard library's: a column name orjson refuses as a
    key (SQLAlchemy's quoted_name for "metadata") once sent every batch the slow way."""
    if not is_postgres:
        pytest.skip("the one-round-trip batch is PostgreSQL's")
    tenant = make_tenant()
    add_events(tenant, [("pageview", utcnow(), "10.0.0.1", None)])  # the month is known
    slow_way: list[object] = []
    real_dumps = postgres_writer.json.dumps

    def standard_library(value, **options):
        slow_way.append(value)
        return real_dumps(value, **options)

    monkeypatch.setattr(postgres_writer, "json", SimpleNamespace(dumps=standard_library))
    body = {"tenant_id": tenant.id, "event_type": "pageview", "metadata": {"path": "/"}}
    assert client.post("/api/analytics/track", json=body).status_code == 201
    assert count_events(tenant.id) == 2
    assert slow_way == []


def test_only_a_lost_connection_leaves_a_batch_in_doubt(app, is_postgres, database_url):
    """What the committer writes again: anything the database refused on a live connection
    (its transaction aborted there), or a connection never made; not a connection lost."""
    if not is_postgres:
        pytest.skip("statement timeouts and refused connections are PostgreSQL's here")
    from tenant_analytics.group_commit import _rolled_back

    with db.engine.connect() as connection:
        connection.exec_driver_sql("SET statement_timeout = '10ms'")
        with pytest.raises(OperationalError) as cancelled:  # not a data error, yet refused
            connection.exec_driver_sql("SELECT pg_sleep(1)")
        connection.rollback()
    assert _rolled_back(cancelled.value)
    url = make_url(normalize_database_url(database_url)).set(port=1)  # nothing listens there
    with pytest.raises(OperationalError) as refused:
        create_engine(url, poolclass=NullPool).connect()
    assert _rolled_back(refused.value)
    with db.engine.connect() as connection, pytest.raises(OperationalError) as lost:
        connection.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
    assert lost.value.connection_invalidated and not _rolled_back(lost.value)


def test_closing_the_committer_writes_what_is_queued_and_lets_go_of_its_connections(
    make_app, make_tenant
):
    app = make_app()
    with app.app_context():
        tenant = TenantInfo.of(make_tenant())
    committer = app.extensions["group_commit"]
    client = ClientInfo(ip="203.0.113.9", user_agent="pytest", referrer=None)

    def job(path: str) -> IngestJob:
        return IngestJob(tenant, [NewEvent("pageview", {"path": path})], client, "key")

    assert committer.submit(job("/first")).stored == 1  # the committer holds a connection now
    held = [c for c in (committer._connection, committer._autocommit) if c is not None]
    assert held and not any(connection.closed for connection in held)
    thread = committer._thread
    queued = [_Pending(job(f"/queued-{n}")) for n in range(5)]
    for pending in queued:
        committer._queue.put(pending)
    committer.close()

    assert not thread.is_alive()
    assert all(connection.closed for connection in held)
    assert [pending.result.stored for pending in queued] == [1] * 5  # written before it stopped
    assert committer.submit(job("/after")).stored == 1  # a new committer starts on demand
    assert committer._thread is not thread
    committer.close()
    with app.app_context():
        assert count_events(tenant.id) == 7


def test_a_job_submitted_while_the_committer_closes_waits_for_a_new_one(
    make_app, make_tenant, monkeypatch
):
    """close() meets a submit while the old committer is still writing: a second committer
    started at once would write on the same connections (a rollback of one undoing the
    other's acknowledged events). The submit waits; never two committers write at once."""
    app = make_app()
    with app.app_context():
        tenant = TenantInfo.of(make_tenant())
    committer = app.extensions["group_commit"]
    assert committer.submit(pageview_job(tenant, "/first")).stored == 1
    real_write, writing, most = GroupCommitter._write, [0], [0]
    guard, slow_started = threading.Lock(), threading.Event()

    def counted_write(self, jobs):
        with guard:
            writing[0] += 1
            most[0] = max(most[0], writing[0])
        try:
            if any(job.events[0].metadata["path"] == "/slow" for job in jobs):
                slow_started.set()
                time.sleep(0.5)
            return real_write(self, jobs)
        finally:
            with guard:
                writing[0] -= 1

    monkeypatch.setattr(GroupCommitter, "_write", counted_write)
    stored = {}

    def submit(path: str) -> None:
        stored[path] = committer.submit(pageview_job(tenant, path)).stored

    slow = threading.Thread(target=submit, args=("/slow",))
    slow.start()
    assert slow_started.wait(5)
    closer = threading.Thread(target=committer.close)
    closer.start()
    time.sleep(0.1)  # close() is waiting for the old committer
    after = threading.Thread(target=submit, args=("/after",))
    after.start()
    for thread in (slow, closer, after):
        thread.join(10)
    assert stored == {"/slow": 1, "/after": 1}
    assert most[0] == 1
    with app.app_context():
        assert count_events(tenant.id) == 3


@pytest.mark.parametrize("group_commit", [True, False])
def test_a_prepare_cut_short_by_a_lock_leaves_the_connection_usable(
    make_app, make_tenant, is_postgres, database_url, group_commit
):
    """The write statements are prepared once per connection, in one string. A lock wait
    running out half-way (here daily_revenue's, as CREATE INDEX holds it) leaves those
    before it prepared, which no rollback undoes: the next attempt must still work."""
    if not is_postgres:
        pytest.skip("prepared statements are PostgreSQL's")
    app = make_app(
        GROUP_COMMIT=group_commit,
        WRITE_LOCK_TIMEOUT_SECONDS=0.2,
        # Without group commit, one pooled connection, so the next request gets it again;
        # the committer keeps its two for good, and a request needs one besides.
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 3 if group_commit else 1, "max_overflow": 0},
    )
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    keyed = {"tenant_id": tenant_id, "event_type": "pageview", "idempotency_key": "k1"}
    other = create_engine(normalize_database_url(database_url), poolclass=NullPool)
    try:
        with other.connect() as connection:
            connection.exec_driver_sql("LOCK TABLE daily_revenue IN SHARE MODE")
            assert client.post("/api/analytics/track", json=keyed).status_code == 503
            connection.rollback()
    finally:
        other.dispose()
    for body in ({**keyed, "idempotency_key": "k2"}, {**keyed, "idempotency_key": None}):
        response = client.post("/api/analytics/track", json=body)
        assert response.status_code == 201, response.get_json()
    with app.app_context():
        assert count_events(tenant_id) == 2


@pytest.mark.parametrize("keyed", [False, True])  # one round trip, or two (keys claimed first)
def test_a_connection_closed_while_idle_is_replaced_before_the_next_batch(
    app, make_tenant, is_postgres, database_url, monkeypatch, keyed
):
    """A server that closed the committer's idle connections (a restart, a proxy's idle
    timeout) must cost no event: nothing was sent on them, so nothing may be uncertain."""
    if not is_postgres:
        pytest.skip("a server that closes connections is PostgreSQL's here")
    monkeypatch.setattr("tenant_analytics.group_commit.IDLE_CHECK_SECONDS", 0.2)
    tenant = make_tenant()
    info = TenantInfo.of(tenant)
    committer = app.extensions["group_commit"]
    assert committer.submit(keyed_pageview_job(info, "first")).stored == 1
    assert committer.submit(pageview_job(info, "/first")).stored == 1
    db.session.remove()
    admin = create_engine(normalize_database_url(database_url), poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    finally:
        admin.dispose()
    time.sleep(0.4)
    job = keyed_pageview_job(info, "after") if keyed else pageview_job(info, "/after")
    assert committer.submit(job).stored == 1
    assert count_events(tenant.id) == 3


def test_an_unknown_outcome_is_logged_by_the_error_under_the_committers():
    batch = CommitUncertain("the batch may or may not have been committed")
    batch.__cause__ = ConnectionResetError("reset by peer")
    request = CommitUncertain("re-raised for a request")
    request.__cause__ = batch
    assert outage_reason(request) == "commit outcome unknown: ConnectionResetError: reset by peer"
    assert outage_reason(CommitUncertain("no answer in 60 s")) == (
        "commit outcome unknown: no answer in 60 s"
    )


def test_unknown_outcomes_are_logged_once_a_minute_with_the_drivers_words(app, caplog):
    """Each request of a commit whose connection broke said "commit outcome unknown:
    OperationalError", naming nothing: 26 lines in 2 s of one outage."""
    lost = OperationalError("COMMIT", {}, Exception("server closed the connection"))
    for _ in range(3):
        uncertain = CommitUncertain("the batch may or may not have been committed")
        uncertain.__cause__ = lost
        with app.test_request_context("/api/analytics/track", method="POST"):
            response = app.handle_user_exception(uncertain)
        assert response.status_code == 503
    assert [r.getMessage() for r in caplog.records if "outcome" in r.getMessage()] == [
        "commit outcome unknown: OperationalError: server closed the connection"
    ]


def test_a_locked_tenants_refusals_are_logged_by_the_batch_not_per_request(app, caplog):
    """The committer says once per batch that a tenant's rollups are locked (a rebuild):
    its requests' 503s add no line each; another timeout's do."""
    with app.test_request_context("/api/analytics/track", method="POST"):
        busy = app.handle_user_exception(TenantBusy("the tenant's rollups are locked"))
        late = app.handle_user_exception(CommitTimeout("the database did not take them"))
    assert busy.status_code == late.status_code == 503
    said = [r.getMessage() for r in caplog.records if "events not stored" in r.getMessage()]
    assert said == [
        "events not stored, the client is told to send them again: the database did not take them"
    ]
