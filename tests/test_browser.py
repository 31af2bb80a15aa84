"""The snippet and the dashboard as a browser sees them: Debian's headless Chromium.

A landing page served from one origin posts to the API on another, as a tenant's
page does. Only a browser enforces CORS, so only a browser proves the snippet can
post (preflight included), read the answer, back off on a 429 and send a beacon,
and that the owner API answers the configured dashboard origins only.

Without Chromium these tests skip, unless REQUIRE_BROWSER=1 (as CI sets) fails them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from .browsers import (
    VISITOR,
    api_server,
    chromium,
    events_when,
    landing_pages,
    needs_chromium,
    stored_events,
)

pytestmark = needs_chromium

PASSWORD = "s3cret-pass"  # conftest's make_user
TRACK_LIMIT = 3  # events per tenant per minute on this server

# Runs in the page: one fetch, and what a script there may read of the answer.
FETCH = """
const [url, init, done] = arguments;
fetch(url, init).then(
  async (answer) => done({
    status: answer.status,
    body: await answer.text(),
    retryAfter: answer.headers.get("Retry-After"),
    qrTarget: answer.headers.get("X-QR-Target"),
    download: answer.headers.get("Content-Disposition"),
  }),
  (error) => done({error: String(error)}),
);
"""


@pytest.fixture(scope="module")
def page_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A tenant's landing page: an empty HTML page on its own origin."""
    root = tmp_path_factory.mktemp("landing")
    (root / "index.html").write_text(
        '<!doctype html><meta charset="utf-8"><title>Panadería</title><h1>Pan</h1>'
    )
    with landing_pages(root) as port:
        yield port


@pytest.fixture(scope="module")
def api_port(migrated: str, page_port: int, tmp_path_factory: pytest.TempPathFactory):
    """The app under gunicorn; its dashboard origin is the page as http://localhost:<port>."""
    with api_server(
        migrated,
        tmp_path_factory.mktemp("gunicorn"),
        DASHBOARD_ORIGINS=f"http://localhost:{page_port}",
    ) as port:
        yield port


@pytest.fixture(scope="module")
def throttled_api_port(migrated: str, tmp_path_factory: pytest.TempPathFactory):
    """The app with a tight tracking limit, for one test: the suite resets a Redis
    limiter between tests but cannot reach this process's memory:// one, and SQLite
    gives the next test's tenant the same id, so a shared server would still count."""
    with api_server(
        migrated,
        tmp_path_factory.mktemp("gunicorn"),
        TRACK_RATE_LIMIT=f"{TRACK_LIMIT} per minute",
    ) as port:
        yield port


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


class Page:
    """The landing page open in Chromium; runs the snippet's calls to the API in it."""

    def __init__(self, driver: Any, api: str) -> None:
        self.driver, self.api = driver, api

    def fetch(self, path: str, init: dict[str, Any]) -> dict[str, Any]:
        return self.driver.execute_async_script(FETCH, self.api + path, init)

    def send_beacon(self, path: str, body: dict[str, Any]) -> bool:
        script = "return navigator.sendBeacon(arguments[0], JSON.stringify(arguments[1]));"
        return self.driver.execute_script(script, self.api + path, body)


@pytest.fixture
def open_page(api_port: int, page_port: int, browser, app):
    """Open the landing page at ``host`` (its origin); the API is on 127.0.0.1:``api``."""
    # The API first: the browser, set up after it, quits before it, and gunicorn need not
    # wait out the browser's keep-alive connections to stop.

    def _open(host: str = "127.0.0.1", api: int = api_port) -> Page:
        browser.get(f"http://{host}:{page_port}/")
        return Page(browser, f"http://127.0.0.1:{api}")

    return _open


def json_post(body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "method": "POST",
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": json.dumps(body),
    }


def bearer_get(token: str) -> dict[str, Any]:
    return {"method": "GET", "headers": {"Authorization": f"Bearer {token}"}}


def test_snippet_posts_an_event_from_another_origin(open_page, make_tenant, page_port):
    tenant = make_tenant()
    page = open_page()
    # application/json is not a "simple" type: Chromium sends a preflight OPTIONS first.
    answer = page.fetch(
        "/api/analytics/track", json_post({"tenant_id": tenant.id, "event_type": "click_whatsapp"})
    )
    assert answer.get("error") is None, answer
    assert (answer["status"], json.loads(answer["body"])) == (
        201,
        {"success": True, "status": "ok"},
    )
    (event,) = stored_events(tenant.id)
    assert event.event_type == "click_whatsapp"
    assert event.user_agent == VISITOR
    assert event.referrer == f"http://127.0.0.1:{page_port}/"  # the page, as Chromium sends it
    assert event.visitor_hash  # hashed; the address itself is stored nowhere


def test_snippet_can_read_retry_after_when_throttled(open_page, throttled_api_port, make_tenant):
    tenant = make_tenant()
    page = open_page(api=throttled_api_port)
    body = json_post({"tenant_id": tenant.id, "event_type": "pageview"})
    answers = [page.fetch("/api/analytics/track", body) for _ in range(TRACK_LIMIT + 1)]
    assert [answer.get("status") for answer in answers] == [201] * TRACK_LIMIT + [429]
    # The snippet can wait as told: Retry-After must be exposed to a cross-origin script.
    assert int(answers[-1]["retryAfter"] or 0) >= 1, answers[-1]
    assert json.loads(answers[-1]["body"])["success"] is False
    assert len(stored_events(tenant.id)) == TRACK_LIMIT


def test_send_beacon_records_a_sale(open_page, make_tenant):
    tenant = make_tenant()
    page = open_page()
    beacon = {"tenant_slug": tenant.slug, "transaction_id": "txn-42", "value": 150.5}
    # sendBeacon posts text/plain, a "simple" request: no preflight, no answer to read.
    assert page.send_beacon("/api/v1/analytics/conversion", beacon) is True
    (event,) = events_when(tenant.id, bool)
    assert (event.event_type, event.revenue, event.currency) == (
        "purchase",
        Decimal("150.50"),
        "HNL",
    )


def test_owner_api_answers_the_dashboard_origin_only(open_page, api_port, make_tenant, make_user):
    tenant = make_tenant(landing_url="https://panaderia.example/")
    user = make_user(tenant)
    login = json_post({"email": user.email, "password": PASSWORD})

    dashboard = open_page("localhost")  # the DASHBOARD_ORIGINS origin
    answer = dashboard.fetch("/api/auth/login", login)
    assert answer.get("status") == 200, answer
    token = json.loads(answer["body"])["access_token"]
    listed = dashboard.fetch("/api/tenants", bearer_get(token))
    assert listed.get("status") == 200, listed
    assert [t["id"] for t in json.loads(listed["body"])["tenants"]] == [tenant.id]
    # The QR code's answer: the dashboard may read where the code leads and its file name.
    code = dashboard.fetch(f"/api/tenants/{tenant.id}/qr", bearer_get(token))
    assert code.get("status") == 200, code
    assert code["qrTarget"] == f"http://127.0.0.1:{api_port}/q/{tenant.slug}"
    assert code["download"] == f"inline; filename=qr-{tenant.slug}.svg"

    # Any other origin: the browser keeps the answer from the script, token or not.
    landing = open_page("127.0.0.1")
    assert "TypeError" in landing.fetch("/api/tenants", bearer_get(token)).get("error", "")
    assert "TypeError" in landing.fetch("/api/auth/login", login).get("error", "")


PHONE = (
    "Mozilla/5.0 (Linux; Android 13; SM-A135F) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36"
)


# Runs in a page: loads the URL as an image, in a frame and with fetch; calls back with
# the kinds once each has finished (the scan, were it counted, committed before).
LOAD_AS_SUBRESOURCES = """
const [url, done] = arguments;
const finished = [];
const settle = (kind) => { finished.push(kind); if (finished.length === 3) done(finished); };
const image = new Image();
image.onload = image.onerror = () => settle("image");
image.src = url + "?via=img";
const frame = document.createElement("iframe");
frame.onload = () => settle("iframe");
frame.src = url + "?via=frame";
document.body.appendChild(frame);
fetch(url + "?via=fetch", {mode: "no-cors"}).then(() => settle("fetch"), () => settle("fetch"));
"""


@pytest.fixture
def phone(browser) -> Iterator[Any]:
    """Chromium as a phone, which QR codes are scanned with."""
    browser.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": PHONE})
    try:
        yield browser
    finally:
        browser.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": ""})  # no override
        assert browser.execute_script("return navigator.userAgent") == VISITOR


def test_qr_scan_takes_a_phone_to_the_landing_page(api_port, page_port, phone, make_tenant):
    landing = f"http://localhost:{page_port}/"
    shop, retired = make_tenant(landing_url=landing), make_tenant()
    flyer = make_tenant(landing_url=landing)
    retired_slug, retired_id = retired.slug, retired.id  # stored_events ends the session
    flyer_slug, flyer_id = flyer.slug, flyer.id
    phone.get(f"http://127.0.0.1:{api_port}/q/{shop.slug}?c=mesa-3")
    assert (phone.current_url, phone.title) == (landing, "Panadería")
    (scan,) = stored_events(shop.id)  # committed before the redirect was sent
    assert (scan.event_type, scan.metadata_, scan.user_agent) == (
        "qr_scan",
        {"campaign": "mesa-3"},
        PHONE,
    )
    # Another site's page loading a code (an image, a frame, a fetch) adds no scan; the
    # same phone opening it does.
    phone.get(f"http://localhost:{page_port}/")
    loaded = phone.execute_async_script(
        LOAD_AS_SUBRESOURCES, f"http://127.0.0.1:{api_port}/q/{flyer_slug}"
    )
    assert sorted(loaded) == ["fetch", "iframe", "image"]
    assert stored_events(flyer_id) == []
    phone.get(f"http://127.0.0.1:{api_port}/q/{flyer_slug}")
    assert len(stored_events(flyer_id)) == 1
    # A code whose tenant has no landing page: a page the customer can read, not JSON.
    phone.get(f"http://127.0.0.1:{api_port}/q/{retired_slug}")
    heading = phone.find_element("tag name", "h1").text
    assert heading == "Este código QR ya no lleva a ninguna página"
    assert stored_events(retired_id) == []
