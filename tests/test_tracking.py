"""POST /api/analytics/track: what is stored, and every way a body can be wrong."""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from tenant_analytics import tenancy
from tenant_analytics.catalogue import LANDING_TYPES
from tenant_analytics.extensions import db
from tenant_analytics.models import Event, Tenant


def stored(tenant_id: int) -> list[Event]:
    db.session.expire_all()
    return list(db.session.scalars(select(Event).where(Event.tenant_id == tenant_id)))


def test_stores_event_with_enrichment(client, make_tenant):
    tenant = make_tenant()
    response = client.post(
        "/api/analytics/track",
        json={
            "tenant_id": tenant.id,
            "event_type": "click_whatsapp",
            "metadata": {"button_location": "hero"},
        },
        headers={"User-Agent": "Mozilla/5.0 test", "Referer": "https://ig.example/p/1"},
    )
    assert response.status_code == 201
    assert response.get_json() == {"success": True, "status": "ok"}
    (event,) = stored(tenant.id)
    assert event.event_type == "click_whatsapp"
    assert event.metadata_ == {"button_location": "hero"}
    assert event.user_agent == "Mozilla/5.0 test"
    assert event.referrer == "https://ig.example/"  # where from, not which page
    assert len(event.visitor_hash) == 45
    assert event.created_at.tzinfo is not None


@pytest.mark.parametrize("event_type", LANDING_TYPES)
def test_every_landing_type_is_accepted(client, make_tenant, event_type):
    tenant = make_tenant()
    body = {"tenant_id": tenant.id, "event_type": event_type, "metadata": {"seconds": 12}}
    assert client.post("/api/analytics/track", json=body).status_code == 201
    assert [e.event_type for e in stored(tenant.id)] == [event_type]


def test_long_headers_are_truncated(client, make_tenant):
    tenant = make_tenant()
    client.post(
        "/api/analytics/track",
        json={"tenant_id": tenant.id, "event_type": "pageview"},
        headers={"User-Agent": "u" * 5000, "Referer": "https://" + "r" * 5000 + ".example/"},
    )
    (event,) = stored(tenant.id)
    assert len(event.user_agent) == 512
    assert len(event.referrer) == 1024


@pytest.mark.parametrize(
    "sent, kept",
    [
        # Referrer-Policy: unsafe-url sends the whole page, query and all
        ("https://shop.example/gracias?email=ana%40example.com&t=1", "https://shop.example/"),
        ("http://127.0.0.1:5079/p.html#top", "http://127.0.0.1:5079/"),
        ("https://user:pw@Shop.Example:8443/x", "https://shop.example:8443/"),
        ("http://[2001:db8::1]:8080/a", "http://[2001:db8::1]:8080/"),
        ("android-app://com.google.android.gm/", "android-app://com.google.android.gm/"),
        ("not a url", None),
        ("javascript://%0aalert(1)/", None),
        ("data://x.example/", None),
        ("http://[::1/", None),
        ("https://shop.example:99999/", None),
    ],
)
def test_only_the_referrers_origin_is_stored(client, make_tenant, sent, kept):
    tenant = make_tenant()
    client.post(
        "/api/analytics/track",
        json={"tenant_id": tenant.id, "event_type": "pageview"},
        headers={"Referer": sent},
    )
    (event,) = stored(tenant.id)
    assert event.referrer == kept


def test_beacon_with_text_plain_body_is_accepted(client, make_tenant):
    tenant = make_tenant()
    response = client.post(
        "/api/analytics/track",
        data=json.dumps({"tenant_id": tenant.id, "event_type": "pageview"}),
        content_type="text/plain;charset=UTF-8",
    )
    assert response.status_code == 201
    assert len(stored(tenant.id)) == 1


def test_time_on_page_is_capped(client, make_tenant):
    tenant = make_tenant()
    body = {
        "tenant_id": tenant.id,
        "event_type": "time_on_page",
        "metadata": {"seconds": 10**9, "page": "/"},
    }
    assert client.post("/api/analytics/track", json=body).status_code == 201
    (event,) = stored(tenant.id)
    assert event.metadata_ == {"seconds": 14400, "page": "/"}  # the README's 4 hours


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("event_type", "metadata", "status"),
    [
        ("time_on_page", {"seconds": 0}, 201),  # the README's "a number >= 0"
        ("pageview", nested(8), 201),  # the README's "at most 8 levels deep"
        ("pageview", nested(9), 422),
    ],
)
def test_metadata_at_its_limits(client, make_tenant, event_type, metadata, status):
    tenant = make_tenant()
    body = {"tenant_id": tenant.id, "event_type": event_type, "metadata": metadata}
    response = client.post("/api/analytics/track", json=body)
    assert response.status_code == status, response.get_json()
    assert [event.metadata_ for event in stored(tenant.id)] == ([metadata] if status == 201 else [])


def test_another_process_stops_taking_a_deactivated_tenants_events_within_the_cache_time(
    make_app, make_tenant, monkeypatch
):
    """A server process reuses its lookup of an active tenant for TENANT_CACHE_SECONDS:
    switched off elsewhere (another worker, the CLI), the tenant's events stop then."""
    clock = [1000.0]
    monkeypatch.setattr(tenancy, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    tenant = make_tenant()
    other = make_app(TENANT_CACHE_SECONDS=10).test_client()
    body = {"tenant_id": tenant.id, "event_type": "pageview"}
    assert other.post("/api/analytics/track", json=body).status_code == 201
    db.session.execute(update(Tenant).where(Tenant.id == tenant.id).values(active=False))
    db.session.commit()
    clock[0] += 9
    assert other.post("/api/analytics/track", json=body).status_code == 201  # still cached
    clock[0] += 2
    gone = other.post("/api/analytics/track", json=body)
    assert (gone.status_code, gone.get_json()["error"]) == (404, "tenant_not_found")
    assert len(stored(tenant.id)) == 2


@pytest.mark.parametrize("active", [None, False])
def test_unknown_or_inactive_tenant_is_404(client, make_tenant, active):
    tenant_id = make_tenant(active=False).id if active is False else 999_999
    response = client.post(
        "/api/analytics/track", json={"tenant_id": tenant_id, "event_type": "pageview"}
    )
    assert response.status_code == 404
    body = response.get_json()
    assert body["success"] is False
    assert body["message"] == "Tenant not found or not available"
    assert stored(tenant_id) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event_type": "pageview"}, "tenant_id"),
        ({"tenant_id": "1", "event_type": "pageview"}, "tenant_id"),
        ({"tenant_id": True, "event_type": "pageview"}, "tenant_id"),
        ({"tenant_id": 1.5, "event_type": "pageview"}, "tenant_id"),
        ({"tenant_id": 2**40, "event_type": "pageview"}, "tenant_id"),
        ({"tenant_id": -3, "event_type": "pageview"}, "tenant_id"),
        ({"tenant_id": "TENANT"}, "event_type"),
        ({"tenant_id": "TENANT", "event_type": "hack"}, "event_type"),
        ({"tenant_id": "TENANT", "event_type": 7}, "event_type"),
        ({"tenant_id": "TENANT", "event_type": "pageview", "metadata": [1]}, "metadata"),
        ({"tenant_id": "TENANT", "event_type": "pageview", "metadata": "x"}, "metadata"),
        (
            {"tenant_id": "TENANT", "event_type": "pageview", "metadata": {"a": "\u0000"}},
            "metadata",
        ),
        (  # a lone surrogate: valid JSON, but no UTF-8 text the database could store
            {"tenant_id": "TENANT", "event_type": "pageview", "metadata": {"a": ["\ud800"]}},
            "metadata",
        ),
        ({"tenant_id": "TENANT", "event_type": "pageview", "session_id": "s\udfff"}, "session_id"),
        ({"tenant_id": "TENANT", "event_type": "time_on_page"}, "metadata"),
        (
            {"tenant_id": "TENANT", "event_type": "time_on_page", "metadata": {"seconds": -1}},
            "metadata",
        ),
        (
            {"tenant_id": "TENANT", "event_type": "time_on_page", "metadata": {"seconds": "9"}},
            "metadata",
        ),
    ],
)
def test_invalid_bodies_are_422_with_field_errors(client, make_tenant, body, field):
    tenant = make_tenant()
    if body.get("tenant_id") == "TENANT":
        body = {**body, "tenant_id": tenant.id}
    response = client.post("/api/analytics/track", json=body)
    assert response.status_code == 422
    payload = response.get_json()
    assert payload["success"] is False
    assert field in payload["errors"], payload
    assert stored(tenant.id) == []


def test_our_validators_speak_without_pydantics_prefix(client, make_tenant):
    body = {"tenant_id": make_tenant().id, "event_type": "time_on_page", "metadata": {}}
    errors = client.post("/api/analytics/track", json=body).get_json()["errors"]
    assert errors == {"metadata": ["time_on_page needs metadata.seconds, a number >= 0"]}


def test_text_too_short_or_long_is_counted_in_characters(client, make_tenant):
    """Pydantic measures text checked after a validator in "items"; clients read characters."""
    tenant = make_tenant()
    response = client.post(
        "/api/analytics/track",
        json={
            "tenant_id": tenant.id,
            "event_type": "pageview",
            "idempotency_key": "   ",  # stripped to nothing
            "product_slug": "x" * 201,
        },
    )
    assert response.status_code == 422
    assert response.get_json()["errors"] == {
        "idempotency_key": ["Text should have at least 1 character"],
        "product_slug": ["Text should have at most 200 characters"],
    }


EMPTY = "The body is empty: send a JSON object."
NOT_JSON = "The body is not valid JSON."
NOT_AN_OBJECT = "The body must be a JSON object."
TOO_DEEP = "The body is nested too deeply to read."


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", EMPTY),
        (b"  \n", EMPTY),
        (b"not json", NOT_JSON),
        (b'{"tenant_id": 1,', NOT_JSON),  # cut short
        (b'{"tenant_id": 1} trailing', NOT_JSON),
        (b'{"name": "\xff"}', NOT_JSON),  # not UTF-8
        (b"[" * 50_000, TOO_DEEP),  # deeper than the parser goes, before any end
        (b"[1, 2]", NOT_AN_OBJECT),
        (b'"text"', NOT_AN_OBJECT),
        (b"null", NOT_AN_OBJECT),
        (b"NaN", NOT_AN_OBJECT),
    ],
)
def test_non_object_bodies_are_422_saying_why(client, raw, reason):
    response = client.post("/api/analytics/track", data=raw, content_type="application/json")
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"body": [reason]}


DEEP = "[" * 5000 + "]" * 5000  # 10 KB, and deeper than the JSON parser can recurse


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/analytics/track", 422),
        ("/api/analytics/batch", 422),
        ("/api/auth/login", 422),
        ("/api/v1/analytics/track", 422),
        ("/api/v1/interactions", 422),
        ("/api/v1/analytics/conversion", 200),  # the beacon always answers 200
    ],
)
def test_deeply_nested_json_is_refused_not_a_500(client, make_tenant, path, status):
    tenant = make_tenant()
    wrapped = f'{{"tenant_id": {tenant.id}, "event_type": "pageview", "metadata": {DEEP}}}'
    for raw in (DEEP, wrapped):
        response = client.post(path, data=raw, content_type="text/plain")
        assert response.status_code == status, raw[:40]
        if status == 422:  # valid JSON, if deep: not called invalid
            assert response.get_json()["errors"] == {"body": [TOO_DEEP]}
        assert response.is_json
    assert stored(tenant.id) == []


def test_nan_in_metadata_is_422(client, make_tenant):
    tenant = make_tenant()
    raw = f'{{"tenant_id": {tenant.id}, "event_type": "pageview", "metadata": {{"x": NaN}}}}'
    response = client.post("/api/analytics/track", data=raw, content_type="application/json")
    assert response.status_code == 422
    assert "metadata" in response.get_json()["errors"]


def test_body_over_64_kib_is_413_json(client, make_tenant):
    tenant = make_tenant()
    body = {"tenant_id": tenant.id, "event_type": "pageview", "metadata": {"x": "a" * 70_000}}
    response = client.post("/api/analytics/track", json=body)
    assert response.status_code == 413
    assert response.get_json()["success"] is False
    assert stored(tenant.id) == []


def preflight(client, path, origin, method="POST", headers=None):
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    return client.options(path, headers=request_headers)


@pytest.mark.parametrize(
    "path, coding",
    [
        ("/api/analytics/track", "gzip"),
        ("/api/analytics/batch", "gzip"),
        ("/api/analytics/track", "br"),  # a plain body that claims br was stored as sent
        ("/api/v1/interactions", "deflate, gzip"),
    ],
)
def test_a_compressed_body_is_415_not_read_as_json(client, make_tenant, path, coding):
    tenant = make_tenant()
    event = {"tenant_id": tenant.id, "event_type": "pageview", "type": "view"}
    body = {"tenant_id": tenant.id, "events": [event]} if path.endswith("batch") else event
    raw = json.dumps(body).encode()
    response = client.post(
        path,
        data=gzip.compress(raw) if "gzip" in coding else raw,
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
    )
    assert response.status_code == 415
    assert response.headers["Accept-Encoding"] == "identity"
    assert response.get_json()["error"] == "unsupported_content_encoding"
    assert db.session.scalars(select(Event)).all() == []
    plain = client.post(
        path, data=raw, headers={"Content-Type": "application/json", "Content-Encoding": "identity"}
    )
    assert plain.status_code in (201, 202)


def test_content_encoding_without_a_body_or_a_route_is_not_a_415(client):
    gzipped = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    assert (
        client.post("/api/no-such-thing", data=gzip.compress(b"{}"), headers=gzipped).status_code
        == 404
    )
    assert client.get("/api/openapi.json", headers=gzipped).status_code == 200
    assert client.post("/api/auth/refresh", headers=gzipped).status_code == 401  # no token


def test_the_conversion_beacon_skips_a_compressed_body_with_200(client, make_tenant):
    beacon = json.dumps({"tenant_slug": make_tenant().slug, "transaction_id": "t1", "value": 5})
    response = client.post(
        "/api/v1/analytics/conversion",
        data=gzip.compress(beacon.encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert (response.status_code, response.get_json()["status"]) == (200, "skipped")


def test_cors_allows_any_origin_on_tracking(client):
    response = preflight(client, "/api/analytics/track", "https://bakery.example")
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://bakery.example")
    assert response.headers["Access-Control-Allow-Methods"] == "POST"  # not every method
    assert response.headers["Access-Control-Max-Age"] == "7200"  # not one preflight per event


@pytest.mark.parametrize("path", ["/api/analytics/track", "/api/health", "/api/auth/login"])
def test_an_options_answer_has_no_body_and_names_no_type(client, path):
    """Flask's answer to OPTIONS is empty and said it was HTML."""
    response = preflight(client, path, "https://bakery.example")
    assert (response.status_code, response.data) == (200, b"")
    assert "Content-Type" not in response.headers


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/api/analytics/7", "GET"),
        ("/api/analytics/7/dashboard-stats", "GET"),
        ("/api/auth/login", "POST"),
        ("/api/tenants", "GET"),
        ("/api/tenants/7/products/3", "PATCH"),
    ],
)
def test_owner_api_answers_only_the_configured_dashboard_origins(make_app, path, method):
    """A dashboard served from its own origin calls the owner API with a bearer token; by
    default, and from any other origin, browsers are not let in."""
    dashboard, other = "https://dash.bakery.example", "https://evil.example"
    configured = make_app(DASHBOARD_ORIGINS=[dashboard]).test_client()
    allowed = preflight(configured, path, dashboard, method, "authorization,content-type")
    assert allowed.headers["Access-Control-Allow-Origin"] == dashboard
    assert method in allowed.headers["Access-Control-Allow-Methods"]
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    refused = preflight(configured, path, other, method, "authorization")
    assert "Access-Control-Allow-Origin" not in refused.headers
    default = preflight(make_app().test_client(), path, dashboard, method, "authorization")
    assert "Access-Control-Allow-Origin" not in default.headers


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("get", "/nope", 404), ("get", "/api/analytics/track", 405), ("put", "/api/auth/login", 405)],
)
def test_unknown_routes_and_methods_are_json(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    body = response.get_json()
    assert body["success"] is False and body["message"]


def test_a_trailing_slash_is_the_same_route_and_a_double_one_no_redirect(client, make_tenant):
    """The store documents post to "/api/analytics/track/". A merged "//" used to answer
    a 308 whose Location was built from the request's Host header."""
    tenant = make_tenant()
    body = {"tenant_id": tenant.id, "event_type": "page_view"}
    assert client.post("/api/analytics/track/", json=body).status_code == 201
    doubled = client.post("/api//analytics/track", json=body, headers={"Host": "elsewhere.example"})
    assert doubled.status_code == 404 and "Location" not in doubled.headers
    assert doubled.get_json()["error"] == "not_found"


def as_wsgi_gives_it(text: str) -> str:
    """A header's UTF-8 bytes as a WSGI server hands them to the app: read as Latin-1."""
    return text.encode("utf-8").decode("latin-1")


def test_headers_in_utf8_are_stored_as_sent(client, make_tenant):
    tenant = make_tenant()
    response = client.post(
        "/api/analytics/track",
        json={"tenant_id": tenant.id, "event_type": "pageview"},
        headers={
            "User-Agent": as_wsgi_gives_it("Navegador Café/1.0"),
            "Referer": as_wsgi_gives_it("https://panadería.hn/menú"),
        },
    )
    assert response.status_code == 201
    (event,) = stored(tenant.id)
    assert (event.user_agent, event.referrer) == (
        "Navegador Café/1.0",
        "https://panadería.hn/",
    )


def test_header_bytes_that_are_not_utf8_are_kept_as_latin1(client, make_tenant):
    tenant = make_tenant()
    client.post(
        "/api/analytics/track",
        json={"tenant_id": tenant.id, "event_type": "pageview"},
        headers={"User-Agent": "Caf\xe9 1.0"},  # the byte 0xE9 alone: not UTF-8
    )
    (event,) = stored(tenant.id)
    assert event.user_agent == "Caf\xe9 1.0"


GOOGLEBOT = (
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1;"
    " +http://www.google.com/bot.html) Chrome/120.0.6099.216 Safari/537.36"
)
PHONE = (
    "Mozilla/5.0 (Linux; Android 14; SM-A155M) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/156.0.0.0 Mobile Safari/537.36"
)
PAGE = "https://panaderia.example"


def test_a_bots_browser_on_the_page_is_no_visitor(client, make_tenant):
    """Googlebot renders the page and runs the snippet: its events were counted as a
    visitor's. Sent from a page (an Origin) by a bot, nothing is stored, and every
    endpoint answers as it does for an event it does not store. A shop's server or
    script (no Origin) is taken whatever its User-Agent: curl names itself a bot too."""
    tenant = make_tenant(slug="pan-bot")
    bot = {"Origin": PAGE, "User-Agent": GOOGLEBOT}
    one = {"tenant_id": tenant.id, "event_type": "pageview"}
    answer = client.post("/api/analytics/track", json=one, headers=bot)
    assert (answer.status_code, answer.get_json()) == (
        200,
        {"success": True, "status": "bot_ignored"},
    )
    two = {"tenant_id": tenant.id, "events": [{"event_type": "pageview"}, {"event_type": "x"}]}
    answer = client.post("/api/analytics/batch", json=two, headers=bot)
    assert answer.status_code == 200
    assert (answer.get_json()["stored"], answer.get_json()["bot_ignored"]) == (0, 1)
    assert [item["index"] for item in answer.get_json()["rejected"]] == [1]  # still said
    v1 = {"tenant_id": str(tenant.id), "type": "whatsapp_click"}
    assert client.post("/api/v1/analytics/track", json=v1, headers=bot).status_code == 202
    tap = {"tenant_id": tenant.id, "type": "call_click"}
    answer = client.post("/api/v1/interactions", json=tap, headers=bot)
    assert (answer.status_code, answer.get_json()) == (202, {"status": "accepted"})
    sale = {"tenant_slug": "pan-bot", "transaction_id": "t-1", "value": 10}
    answer = client.post("/api/v1/analytics/conversion", json=sale, headers=bot)
    assert answer.get_json()["status"] == "skipped"
    assert stored(tenant.id) == []
    # A person's browser on the page, and a server with a bot's name: both stored.
    visitor = {"Origin": PAGE, "User-Agent": PHONE}
    assert client.post("/api/analytics/track", json=one, headers=visitor).status_code == 201
    server = {"User-Agent": "python-requests/2.32.3"}
    assert client.post("/api/analytics/batch", json=two, headers=server).status_code == 201
    assert [event.user_agent for event in stored(tenant.id)] == [PHONE, "python-requests/2.32.3"]


@pytest.mark.parametrize(
    "user_agent",
    [
        # In-app browsers, where a small shop's visitors come from, and phones' own.
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Mobile/15E148 Instagram 307.0.0.34.111 (iPhone14,5; iOS 17_1; es_US;"
        " es; scale=3.00; 1170x2532; 532277268)",
        "Mozilla/5.0 (Linux; Android 13; SM-A135F Build/TP1A.220624.014; wv) AppleWebKit/537.36"
        " (KHTML, like Gecko) Version/4.0 Chrome/119.0.6045.163 Mobile Safari/537.36"
        " [FB_IAB/FB4A;FBAV/442.0.0.33.113;]",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Mobile/15E148 musical_ly_31.5.0 JsSdk/2.0 NetType/WIFI Channel/App Store"
        " ByteLocale/es Region/HN BytedanceWebview/d8a21c6",
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S911B) AppleWebKit/537.36 (KHTML, like"
        " Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
        "Opera/9.80 (Android; Opera Mini/7.6.40234/191.303; U; es) Presto/2.12.423 Version/12.16",
        # Named after apps whose link previews crawlerdetect knows by the same name.
        "Mozilla/5.0 (Linux; Android 13; SM-A042M Build/TP1A.220624.014; wv) AppleWebKit/537.36"
        " (KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.43 Mobile Safari/537.36"
        " WhatsApp/2.23.25.83",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Slack/4.35.131 Chrome/118.0.5993.159 Electron/27.1.3 Safari/537.36",
    ],
)
def test_visitors_in_apps_and_phones_browsers_are_no_bots(client, make_tenant, user_agent):
    tenant = make_tenant()
    one = {"tenant_id": tenant.id, "event_type": "pageview"}
    headers = {"Origin": PAGE, "User-Agent": user_agent}
    assert client.post("/api/analytics/track", json=one, headers=headers).status_code == 201
    assert [event.user_agent for event in stored(tenant.id)] == [user_agent]
