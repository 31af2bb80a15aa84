"""Per-tenant limits: one tenant's flood never throttles another; shared across processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from .conftest import REDIS_URL, TEST_HASH_KEY


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not start")


def _post(port: int, body: dict) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/analytics/track",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


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
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    ports, procs = [_free_port(), _free_port()], []
    root = Path(__file__).resolve().parents[1]
    logs = [tmp_path / f"gunicorn-{port}.log" for port in ports]
    try:
        for port, log in zip(ports, logs, strict=True):
            with log.open("wb") as log_file:
                procs.append(
                    subprocess.Popen(
                        [gunicorn, "--workers", "2", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
                        cwd=root,
                        env=env,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                    )
                )
        for port, proc, log in zip(ports, procs, logs, strict=True):
            _wait_until_up(port, proc, log)
        body = {"tenant_id": tenant_id, "event_type": "pageview"}
        statuses = [_post(ports[n % 2], body) for n in range(16)]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    assert statuses.count(201) == 10
    assert statuses.count(429) == 6
