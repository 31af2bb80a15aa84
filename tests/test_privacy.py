"""The raw client IP never reaches the database or the app's logs."""

from __future__ import annotations

import hashlib
import hmac
import logging

from sqlalchemy import select

from tenant_analytics.extensions import db
from tenant_analytics.models import Event
from tenant_analytics.privacy import visitor_hash

from .conftest import TEST_HASH_KEY

KNOWN_IP = "203.0.113.77"


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
