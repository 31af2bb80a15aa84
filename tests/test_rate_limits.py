"""Per-tenant limits: one tenant's flood never throttles another; shared across processes."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
import uuid

import pytest
import redis
from limits import parse
from limits.errors import StorageError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import event, func, select

from tenant_analytics.extensions import db, limiter
from tenant_analytics.models import Event
from tenant_analytics.ratelimits import StorageFailuresInOneLine

from .conftest import REDIS_URL, TEST_HASH_KEY
from .servers import free_port, gunicorn, post

# The recommended worker (README) and gunicorn's default: both count in the same Redis.
GEVENT_WORKERS = ["--worker-class", "gevent", "--workers", "2"]
SYNC_WORKERS = ["--workers", "2"]


def track(client, tenant_id):
    return client.post(
        "/api/analytics/track", json={"tenant_id": tenant_id, "event_type": "pageview"}
    )


def test_limit_is_per_tenant_with_retry_after(make_app, make_tenant):
    app = make_app(TRACK_RATE_LIMIT="5 per minute")
    client = app.test_client()
    with app.app_context():
        flooded, quiet = make_tenant(), make_tenant()
        flooded_id, quiet_id = flooded.id, quiet.id
    statuses = [track(client, flooded_id).status_code for _ in range(7)]
    assert statuses == [201] * 5 + [429] * 2
    limited = track(client, flooded_id)
    assert limited.get_json()["success"] is False
    assert int(limited.headers["Retry-After"]) > 0
    assert track(client, quiet_id).status_code == 201


def test_only_a_refusal_carries_retry_after(make_app, make_tenant):
    """A client's own bucket tells its state on every answer; only a 429 says to wait."""
    app = make_app(API_RATE_LIMIT="2 per minute")
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant(slug="bakery").id
    first = client.post(
        "/api/v1/analytics/track", json={"tenant_id": str(tenant_id), "type": "whatsapp_click"}
    )
    assert first.status_code == 202
    assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == (
        "2",
        "1",
    )
    assert int(first.headers["X-RateLimit-Reset"]) > 0
    assert "Retry-After" not in first.headers
    # A throttled conversion beacon (same "api" bucket) answers 200 "skipped": no wait.
    beacons = [
        client.post(
            "/api/v1/analytics/conversion",
            json={"tenant_slug": "bakery", "transaction_id": f"t{n}"},
        )
        for n in range(2)
    ]
    assert [beacon.get_json()["status"] for beacon in beacons] == ["ok", "skipped"]
    assert not [beacon for beacon in beacons if "Retry-After" in beacon.headers]


def test_a_tenants_bucket_is_not_shown_to_its_visitors(make_app, make_tenant):
    """What is left of a tenant's bucket is how many events it got this minute: anyone
    could read a competitor's traffic off it. Only a refusal says how long to wait."""
    app = make_app(TRACK_RATE_LIMIT="3 per minute")
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    answers = [track(client, tenant_id) for _ in range(3)]
    probe = client.post("/api/analytics/track", json={"tenant_id": tenant_id})  # a 422
    batch = client.post(
        "/api/analytics/batch", json={"tenant_id": tenant_id, "events": [{"event_type": "x"}]}
    )
    refused = track(client, tenant_id)
    assert [a.status_code for a in answers] + [refused.status_code] == [201, 201, 201, 429]
    for answer in [*answers, probe, batch, refused]:
        assert not any(name.startswith("X-RateLimit") for name, _value in answer.headers)
    assert "Retry-After" not in answers[0].headers
    assert 0 < int(refused.headers["Retry-After"]) <= 60


def test_switched_off_limits_are_not_even_consulted(make_app, make_tenant, monkeypatch):
    """RATELIMIT_ENABLED=false (benchmarks) skips the limiter altogether: nothing is counted,
    and flask-limiter's per-request evaluation (tens of microseconds) is not run."""
    off = make_app(TRACK_RATE_LIMIT="2 per minute", RATELIMIT_ENABLED=False)
    with off.app_context():
        tenant_id = make_tenant().id

    def consulted(*_args, **_kwargs):
        raise AssertionError("the limiter was consulted")

    with monkeypatch.context() as patched:
        patched.setattr(limiter, "_check_request_limit", consulted)
        statuses = [track(off.test_client(), tenant_id).status_code for _ in range(5)]
    assert statuses == [201] * 5
    # Switched back on, the tenant's bucket is whole: the runs above drew nothing from it.
    on = make_app(TRACK_RATE_LIMIT="2 per minute", RATELIMIT_ENABLED=True)
    statuses = [track(on.test_client(), tenant_id).status_code for _ in range(3)]
    assert statuses == [201, 201, 429]


def test_limit_follows_the_tenant_not_the_address(make_app, make_tenant):
    app = make_app(TRACK_RATE_LIMIT="3 per minute", TRUSTED_PROXY_COUNT=1)
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    statuses = [
        client.post(
            "/api/analytics/track",
            json={"tenant_id": tenant_id, "event_type": "pageview"},
            headers={"X-Forwarded-For": f"198.51.100.{n}"},
        ).status_code
        for n in range(4)
    ]
    assert statuses == [201, 201, 201, 429]


def from_address(client, path: str, body: dict, address: str):
    return client.post(path, json=body, headers={"X-Forwarded-For": address})


def test_an_address_share_keeps_one_sender_from_spending_the_tenants_bucket(make_app, make_tenant):
    """TRACK_ADDRESS_RATE_LIMIT: a single sender is refused once it has spent its share,
    and what it was refused costs the tenant's bucket nothing, so other visitors still
    get through; a batch counts its items against both."""
    app = make_app(
        TRACK_RATE_LIMIT="10 per minute",
        TRACK_ADDRESS_RATE_LIMIT="4 per minute",
        TRUSTED_PROXY_COUNT=1,
    )
    client = app.test_client()
    with app.app_context():
        tenant_id, other_id = make_tenant().id, make_tenant().id
    event = {"tenant_id": tenant_id, "event_type": "pageview"}
    batch = {"tenant_id": tenant_id, "events": [{"event_type": "pageview"}] * 3}
    flood = "198.51.100.1"
    statuses = [from_address(client, "/api/analytics/track", event, flood) for _ in range(6)]
    assert [response.status_code for response in statuses] == [201] * 4 + [429] * 2
    refused = statuses[-1]
    assert int(refused.headers["Retry-After"]) > 0
    assert "per client address" in refused.get_json()["message"]
    # The same address may still post to another tenant: its share is per tenant.
    assert (
        from_address(
            client, "/api/analytics/track", {**event, "tenant_id": other_id}, flood
        ).status_code
        == 201
    )
    # 4 of the tenant's 10 spent: two other addresses get 3 + 3 in batches, then it is full.
    for address in ("198.51.100.2", "198.51.100.3"):
        assert from_address(client, "/api/analytics/batch", batch, address).status_code == 201
    assert from_address(client, "/api/analytics/track", event, "198.51.100.4").status_code == 429
    # A batch larger than the share itself could never pass: 413, saying the smaller limit.
    five = {**batch, "events": [{"event_type": "pageview"}] * 5}
    too_large = from_address(client, "/api/analytics/batch", five, "198.51.100.5")
    assert too_large.status_code == 413
    assert too_large.get_json()["max_events"] == 4


def test_tenants_not_found_share_one_address_share_and_are_told_so(make_app, make_tenant):
    """Requests naming unknown tenants spend one share per address, all of them together;
    its refusal says so, in the same words as a known tenant's (which it does not reveal)."""
    app = make_app(TRACK_ADDRESS_RATE_LIMIT="3 per minute", TRUSTED_PROXY_COUNT=1)
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    pageview = {"event_type": "pageview"}
    unknown = [
        from_address(
            client, "/api/analytics/track", {"tenant_id": 900_000 + n, **pageview}, "198.51.100.9"
        )
        for n in range(5)
    ]
    assert [response.status_code for response in unknown] == [404] * 3 + [429] * 2
    known = [
        from_address(
            client, "/api/analytics/track", {"tenant_id": tenant_id, **pageview}, "198.51.100.9"
        )
        for _ in range(4)
    ]
    assert [response.status_code for response in known] == [201] * 3 + [429]
    said = {response.get_json()["message"] for response in (unknown[-1], known[-1])}
    assert said == {
        "Rate limit exceeded: 3 per minute per client address for each tenant, and one such "
        "share for all the tenant ids not found"
    }


@pytest.mark.skipif(not REDIS_URL, reason="needs TEST_REDIS_URL (a real Redis)")
def test_two_gunicorn_processes_share_one_limit(migrated, make_tenant, tmp_path):
    tenant_id = make_tenant().id
    env = {
        **os.environ,
        "DATABASE_URL": migrated,
        "RATELIMIT_STORAGE_URI": REDIS_URL,
        "RATELIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        "TRACK_RATE_LIMIT": "10 per minute",
        "VISITOR_HASH_KEY": TEST_HASH_KEY,
    }
    logs = [tmp_path / "gunicorn-1.log", tmp_path / "gunicorn-2.log"]
    with (
        gunicorn(GEVENT_WORKERS, env, logs[0]) as first,
        gunicorn(SYNC_WORKERS, env, logs[1]) as second,
    ):
        body = {"tenant_id": tenant_id, "event_type": "pageview"}
        ports = (first, second)
        statuses = [post(ports[n % 2], "/api/analytics/track", body) for n in range(16)]
    assert statuses.count(201) == 10
    assert statuses.count(429) == 6


def test_a_storage_outage_counts_in_memory_and_says_so_once(make_app, make_tenant, caplog):
    """With the limiter's Redis away, events still flow and each process counts its limits in
    memory: not switched off, and not a logged traceback for every request."""
    app = make_app(RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0", TRACK_RATE_LIMIT="3 per minute")
    with app.app_context():
        tenant_id = make_tenant().id
    client = app.test_client()
    with caplog.at_level(logging.INFO):
        statuses = [track(client, tenant_id).status_code for _ in range(5)]
    assert statuses == [201, 201, 201, 429, 429]
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(problems) == 1, [r.getMessage() for r in problems]
    assert "in-memory" in problems[0].getMessage()
    make_app()  # the limiter (one per process) counts in a working storage again


def test_a_served_app_logs_a_storage_outage_with_time_level_and_source(
    migrated, make_tenant, tmp_path
):
    """Under gunicorn, which sets up only its own loggers, the outage is told at start-up
    and again when a request first falls back to memory, each line dated and sourced."""
    tenant_id = make_tenant().id
    env = {
        **os.environ,
        "DATABASE_URL": migrated,
        "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:1/0",
        "VISITOR_HASH_KEY": TEST_HASH_KEY,
    }
    log = tmp_path / "gunicorn.log"
    with gunicorn(["--workers", "1"], env, log) as port:
        body = {"tenant_id": tenant_id, "event_type": "pageview"}
        assert [post(port, "/api/analytics/track", body) for _ in range(3)] == [201] * 3
    stamp = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[WARNING\] "
    lines = log.read_text().splitlines()
    told = [
        line
        for line in lines
        if re.fullmatch(
            stamp + r"tenant_analytics\.ratelimits: "
            r"RATELIMIT_STORAGE_URI does not answer at 127\.0\.0\.1:1/0: .*",
            line,
        )
    ]
    # Said by whichever found it first: flask-limiter, or the health check gunicorn's wait
    # for the server asked.
    in_memory = (
        r"(flask-limiter: .*in-memory.*|tenant_analytics\.ratelimits: the limiter's storage"
        r" did not answer: counting in memory meanwhile)"
    )
    fallback = [line for line in lines if re.fullmatch(stamp + in_memory, line)]
    assert len(told) == 1, lines
    assert len(fallback) == 1, lines


def test_the_address_share_and_qr_scans_count_in_memory_through_an_outage(
    make_app, make_tenant, caplog
):
    """The limits this app counts itself (an address's share of a tenant, QR scans) fall
    back to memory with flask-limiter's own: still limited, and said once, not a warning
    per request with nothing counted."""
    app = make_app(
        RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0",
        TRACK_ADDRESS_RATE_LIMIT="2 per minute",
        API_RATE_LIMIT="2 per minute",
    )
    with app.app_context():
        tenant = make_tenant(landing_url="https://pan.example/")
        tenant_id, slug = tenant.id, tenant.slug
    client = app.test_client()
    phones = [{"User-Agent": f"Mozilla/5.0 (Linux; Android 14) Mobile #{n}"} for n in range(4)]
    with caplog.at_level(logging.WARNING):
        posts = [track(client, tenant_id).status_code for _ in range(3)]
        scans = [client.get(f"/q/{slug}", headers=phone).status_code for phone in phones]
    assert posts == [201, 201, 429]
    assert scans == [302] * 4  # led on, always
    with app.app_context():
        counted = db.session.scalar(
            select(func.count()).select_from(Event).where(Event.event_type == "qr_scan")
        )
    assert counted == 2  # the scans over the limit are not counted
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    make_app()  # the limiter (one per process) counts in a working storage again


def test_a_database_outage_is_not_taken_for_a_limiter_outage(app, make_app, caplog):
    """The tenant bucket's key reads the tenant from the database: with the database away
    each event is a 503 (logged in one line, once a minute), and the limits stay in their
    storage."""
    # (``app`` first: the fixtures' teardown empties the tables through the first app made.)
    away = make_app(SQLALCHEMY_DATABASE_URI="postgresql://nobody@127.0.0.1:1/none")
    client = away.test_client()
    attempts: list[object] = []
    with away.app_context():
        event.listen(db.engine, "do_connect", lambda *args: attempts.append(args))
    with caplog.at_level(logging.WARNING):
        assert [track(client, 1).status_code for _ in range(3)] == [503] * 3
    assert len(attempts) == 3  # one each: the view does not try again what the key's failed
    assert not limiter._storage_dead  # not counting in memory for a database outage
    assert [r.name for r in caplog.records] == ["tenant_analytics.database_errors"]  # once a minute
    assert not any(r.exc_info for r in caplog.records)


def test_a_client_retrying_through_a_database_outage_is_never_told_to_wait_a_minute(app, make_app):
    """Each answer says "again in a second" (503, Retry-After: 1) for as long as the
    outage lasts: a request whose tenant could not be looked up counts against no
    tenant's bucket, nor an unknown tenant's, nor an address's share."""
    # (``app`` first: the fixtures' teardown empties the tables through the first app made.)
    away = make_app(
        SQLALCHEMY_DATABASE_URI="postgresql://nobody@127.0.0.1:1/none",
        TRACK_RATE_LIMIT="2 per minute",
        TRACK_ADDRESS_RATE_LIMIT="1 per minute",
        API_RATE_LIMIT="2 per minute",
    )
    client = away.test_client()
    event = {"tenant_id": 1, "event_type": "pageview"}
    requests = [("/api/analytics/track", event)] * 3
    requests += [("/api/analytics/batch", {"tenant_id": 1, "events": [event]})] * 3
    requests += [("/api/v1/analytics/track", {"tenant_id": "1", "type": "call"})] * 3
    answers = [client.post(path, json=body) for path, body in requests]
    assert [(a.status_code, a.headers.get("Retry-After")) for a in answers] == [(503, "1")] * 9
    interactions = [
        client.post("/api/v1/interactions", json={"tenant_id": 1, "type": "view"}) for _ in range(3)
    ]
    assert [answer.status_code for answer in interactions] == [202] * 3


def test_sign_in_waits_while_the_limit_cannot_be_counted(make_app, make_tenant, make_user, caplog):
    """With the limiter's storage down, events still flow (counted in memory), but sign-in
    answers 503 instead of taking password guesses no other process sees; said in the
    log once a minute, not once a guess."""
    app = make_app(RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0", LOGIN_RATE_LIMIT="3 per minute")
    with app.app_context():
        tenant_id = make_tenant().id
        email = make_user(password="right-password").email
    client = app.test_client()
    assert track(client, tenant_id).status_code == 201
    guess = {"email": email, "password": "wrong-guess"}
    with caplog.at_level(logging.WARNING):
        answers = [client.post("/api/auth/login", json=guess) for _ in range(5)]
    assert {answer.status_code for answer in answers} == {503}
    refused = [r for r in caplog.records if r.getMessage().startswith("sign-in refused")]
    assert len(refused) == 1
    assert answers[0].headers["Retry-After"] == "5"
    assert answers[0].get_json()["error"] == "unavailable"
    make_app()  # the limiter (one per process) counts in a working storage again


def test_requests_caught_by_a_storage_failure_log_one_line_not_a_traceback_each(
    app, caplog, monkeypatch
):
    """flask-limiter logs a traceback for every request that was waiting on a storage
    that failed (all but the first, which falls back quietly)."""
    limiter_log = logging.getLogger("flask-limiter")
    (quiet,) = [f for f in limiter_log.filters if isinstance(f, StorageFailuresInOneLine)]
    monkeypatch.setattr(quiet, "_last", float("-inf"))  # whatever earlier tests logged
    monkeypatch.setattr(quiet, "_unsaid", 0)

    def swallowed(error: Exception) -> None:  # as flask-limiter's _check_request_limit does
        try:
            raise error
        except Exception:
            limiter_log.exception("Failed to rate limit. Swallowing error")

    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            swallowed(RedisConnectionError("Error while reading from 127.0.0.1:6379 : (104)"))
        monkeypatch.setattr(StorageFailuresInOneLine, "QUIET_SECONDS", 0.0)
        swallowed(RedisTimeoutError("Timeout reading from socket"))
        swallowed(StorageError(RedisConnectionError()))  # limits' wrapper: no text at all
        swallowed(KeyError("a bug, not an outage"))
    records = [r for r in caplog.records if r.name == "flask-limiter"]
    lines = [(r.levelname, r.getMessage()) for r in records]
    swallowing = "Failed to rate limit. Swallowing error"
    assert lines[:3] == [
        (
            "WARNING",
            f"{swallowing} (the limiter's storage failed: "
            "ConnectionError Error while reading from 127.0.0.1:6379 : (104))",
        ),
        (
            "WARNING",
            f"{swallowing} (the limiter's storage failed: "
            "TimeoutError Timeout reading from socket; 4 more since, unsaid)",
        ),
        ("WARNING", f"{swallowing} (the limiter's storage failed: StorageError)"),
    ]
    assert [r.exc_info is None for r in records] == [True, True, True, False]
    assert lines[3] == ("ERROR", swallowing)  # a bug keeps its traceback


def test_a_body_too_large_leaves_every_limit_in_its_storage(
    make_app, make_tenant, make_user, caplog
):
    """The limits' keys read the body: one too large is the view's 413, not a failure of
    the limiter's storage (which would count every limit in memory for a moment)."""
    app = make_app(LOGIN_RATE_LIMIT="3 per minute")
    with app.app_context():
        tenant_id = make_tenant().id
        email = make_user(password="right-password").email
    client = app.test_client()
    too_large = b"x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    guess = {"email": email, "password": "wrong-guess"}
    statuses = []
    with caplog.at_level(logging.WARNING):
        for round in range(4):
            # (an oversized sign-in is an attempt too, counted without an email: 3 fit)
            for path in ("/api/analytics/track", "/api/auth/login")[: 2 if round < 3 else 1]:
                refused = client.post(path, data=too_large, content_type="application/json")
                assert (refused.status_code, refused.get_json()["error"]) == (
                    413,
                    "request_entity_too_large",
                )
                assert not limiter._storage_dead
            statuses.append(client.post("/api/auth/login", json=guess).status_code)
    assert statuses == [401, 401, 401, 429]
    assert track(client, tenant_id).status_code == 201
    assert not any(r.exc_info for r in caplog.records)
    assert not any("storage" in r.getMessage() for r in caplog.records)


def test_a_request_the_tenants_bucket_refuses_costs_the_address_share_nothing(
    make_app, make_tenant
):
    """The share is looked at before the tenant's bucket and spent only once that admits:
    an address refused by a full tenant bucket had spent its share all the same, and was
    then refused as over its share though it had stored nothing."""
    app = make_app(
        TRACK_RATE_LIMIT="10 per minute",
        TRACK_ADDRESS_RATE_LIMIT="6 per minute",
        TRUSTED_PROXY_COUNT=1,
    )
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    batch = {"tenant_id": tenant_id, "events": [{"event_type": "pageview"}] * 3}
    for address, events in (("198.51.100.2", 6), ("198.51.100.3", 4)):  # the tenant's 10
        body = {**batch, "events": [{"event_type": "pageview"}] * events}
        assert from_address(client, "/api/analytics/batch", body, address).status_code == 201
    refused = [from_address(client, "/api/analytics/batch", batch, "198.51.100.1") for _ in "ab"]
    assert [answer.status_code for answer in refused] == [429, 429]
    assert "per client address" not in refused[0].get_json()["message"]  # the tenant's
    app.config["TRACK_RATE_LIMIT"] = "100 per minute"  # room in the tenant's bucket again
    six = {**batch, "events": [{"event_type": "pageview"}] * 6}
    assert from_address(client, "/api/analytics/batch", six, "198.51.100.1").status_code == 201


def test_a_refused_batch_is_told_to_wait_long_enough_for_all_its_events(make_app, make_tenant):
    """A batch of N needs N units free: the oldest unit leaving the window frees one, so
    Retry-After from it alone was too short; a single event's is when that unit leaves."""
    app = make_app(TRACK_RATE_LIMIT="10 per minute")
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    event = {"tenant_id": tenant_id, "event_type": "pageview"}
    assert client.post("/api/analytics/track", json=event).status_code == 201
    time.sleep(3)  # the oldest unit leaves the window 3 s before the batch's
    nine = {"tenant_id": tenant_id, "events": [{"event_type": "pageview"}] * 9}
    assert client.post("/api/analytics/batch", json=nine).status_code == 201
    five = {**nine, "events": [{"event_type": "pageview"}] * 5}
    refused = client.post("/api/analytics/batch", json=five)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) == 60  # a whole window, not 57
    one = client.post("/api/analytics/track", json=event)
    assert one.status_code == 429
    assert 50 <= int(one.headers["Retry-After"]) <= 58  # when the first unit leaves


def test_retry_after_names_the_part_of_a_limit_that_refused(make_app, make_tenant):
    """A limit in several parts ("2 per minute;100 per hour"): the minute's part refused,
    and the wait was the hour's."""
    app = make_app(TRACK_ADDRESS_RATE_LIMIT="2 per minute;100 per hour")
    client = app.test_client()
    with app.app_context():
        tenant_id = make_tenant().id
    event = {"tenant_id": tenant_id, "event_type": "pageview"}
    answers = [client.post("/api/analytics/track", json=event) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [201, 201, 429]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60


def test_interactions_answer_202_with_the_database_away_and_an_address_share(app, make_app):
    """The contract's "processing error" answer: the share's tenant lookup raised the
    database's error before the view, a 503."""
    # (``app`` first: the fixtures' teardown empties the tables through the first app made.)
    away = make_app(
        SQLALCHEMY_DATABASE_URI="postgresql://nobody@127.0.0.1:1/none",
        TRACK_ADDRESS_RATE_LIMIT="30 per minute",
    )
    answer = away.test_client().post("/api/v1/interactions", json={"tenant_id": 1, "type": "view"})
    assert (answer.status_code, answer.get_json()) == (202, {"status": "accepted"})
    assert not limiter._storage_dead


class OwnRedis:
    """A redis-server of the test's own, to stop and start again."""

    def __init__(self, directory) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port, socket_timeout=1)
        self.directory = directory
        self.server: subprocess.Popen | None = None

    def start(self) -> None:
        self.server = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.server.poll() is not None:
                    self.stop()  # not left running for the tests after this one
                    raise AssertionError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait()
            self.server = None


@pytest.fixture
def own_redis(tmp_path, make_app):
    if not shutil.which("redis-server"):
        pytest.skip("needs redis-server")
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        make_app()  # the limiter (one per process) counts in a working storage again


def test_sign_in_counts_in_redis_again_as_soon_as_it_answers(
    make_app, make_tenant, make_user, own_redis
):
    """After an outage flask-limiter looks for its storage again only after a backoff (1,
    2, 4… up to 32 s), and meanwhile counted sign-in guesses in each process's memory:
    sign-in, which asks the storage itself, goes back to it at once."""
    app = make_app(RATELIMIT_STORAGE_URI=own_redis.url, LOGIN_RATE_LIMIT="3 per minute")
    with app.app_context():
        tenant_id = make_tenant().id
        email = make_user(password="right-password").email
    client = app.test_client()
    own_redis.stop()
    assert [track(client, tenant_id).status_code for _ in range(3)] == [201] * 3
    assert limiter._storage_dead  # counting in memory, and just looked for Redis
    own_redis.start()
    guess = {"email": email, "password": "wrong-guess"}
    statuses = [client.post("/api/auth/login", json=guess).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert not limiter._storage_dead
    assert own_redis.client.keys("*login:*")  # where every process counts, not its memory


def test_the_storage_found_back_by_flask_limiter_is_said_once(
    make_app, make_tenant, own_redis, caplog
):
    """A process that said it counts in memory says when it counts in Redis again, also
    when flask-limiter, not the health check or sign-in, found Redis back."""
    app = make_app(RATELIMIT_STORAGE_URI=own_redis.url)
    with app.app_context():
        tenant_id = make_tenant().id
    client = app.test_client()
    own_redis.stop()
    with caplog.at_level(logging.WARNING):
        assert track(client, tenant_id).status_code == 201
        assert limiter._storage_dead
        own_redis.start()
        deadline = time.monotonic() + 10  # flask-limiter's backoff: 1 s, then 2 s
        while limiter._storage_dead:
            assert time.monotonic() < deadline, "flask-limiter did not find Redis back"
            assert track(client, tenant_id).status_code == 201
            time.sleep(0.2)
        for _ in range(3):
            assert track(client, tenant_id).status_code == 201
    back = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
    assert back == ["the limiter's storage answers again: counting in it"]


def test_a_flood_from_one_address_costs_the_tenants_bucket_only_its_share(make_app, make_tenant):
    """Many requests from one address at once: only the share's worth reach the tenant's
    bucket. (With the share looked at first and spent after the tenant's bucket, those
    that all looked at once each spent the tenant's bucket, and then most were refused.)"""
    app = make_app(
        TRACK_RATE_LIMIT="1000 per minute",
        TRACK_ADDRESS_RATE_LIMIT="5 per minute",
        TRUSTED_PROXY_COUNT=1,
    )
    with app.app_context():
        tenant_id = make_tenant().id
    event = {"tenant_id": tenant_id, "event_type": "pageview"}
    start = threading.Barrier(30)
    statuses: list[int] = []

    def flood() -> None:
        client = app.test_client()
        start.wait()
        statuses.append(
            from_address(client, "/api/analytics/track", event, "198.51.100.9").status_code
        )

    threads = [threading.Thread(target=flood) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] * 5 + [429] * 25
    bucket = (limiter._key_prefix, f"tenant:{tenant_id}", "tenant")
    with app.app_context():
        window = limiter.limiter.get_window_stats(parse("1000 per minute"), *bucket)
    assert window.remaining == 1000 - 5
