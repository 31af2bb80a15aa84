"""The JavaScript snippet (static/ta.js) on a landing page in headless Chromium.

The page is on one origin and includes the snippet from the API's, as a tenant's
page does; what the snippet sends is checked where it lands, in the database. Only a
real browser shows that a beacon survives the page navigating away to WhatsApp, that
the capture-phase listener sees taps a page's handler stops, and that time on page
counts visible time only.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.select import Select
from sqlalchemy import select

from tenant_analytics.demo import DEMO_SLUG, load_demo
from tenant_analytics.extensions import db
from tenant_analytics.models import Tenant

from .browsers import (
    HEADLESS,
    VISITOR,
    api_server,
    chromium,
    events_when,
    landing_pages,
    needs_chromium,
    stored_events,
)
from .servers import ROOT

pytestmark = needs_chromium

# Collects the page's uncaught errors: the snippet must never throw into it; and what
# a Content-Security-Policy of the page refused.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Panadería</title>
<script>
  window.pageErrors = [];
  addEventListener("error", (event) => pageErrors.push(String(event.message)));
  addEventListener("unhandledrejection", (event) => pageErrors.push(String(event.reason)));
  window.refusedByPolicy = [];
  addEventListener("securitypolicyviolation", (event) =>
    refusedByPolicy.push(event.effectiveDirective + " " + event.blockedURI));
</script>
{head}
<body>{body}</body>
"""


@pytest.fixture(scope="module")
def pages_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("landing")


@pytest.fixture(scope="module")
def page_port(pages_root: Path) -> Iterator[int]:
    with landing_pages(pages_root) as port:
        yield port


@pytest.fixture(scope="module")
def api_port(migrated: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    # A limit no test reaches: a page sends several events per tenant.
    with api_server(
        migrated, tmp_path_factory.mktemp("gunicorn"), TRACK_RATE_LIMIT="1000 per minute"
    ) as port:
        yield port


@pytest.fixture(scope="module")
def api_under_a_path(migrated: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app served under /stats (gunicorn's SCRIPT_NAME), as behind a proxy that gives
    it a path of a shared host; yields the address the snippet is loaded from."""
    with api_server(migrated, tmp_path_factory.mktemp("gunicorn"), SCRIPT_NAME="/stats") as port:
        yield f"http://127.0.0.1:{port}/stats/static/ta.js?v=3"  # a version, as sites pin


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def test_the_snippet_is_served_as_javascript(client):
    """A page embeds it from the API's own origin; behind a proxy that adds
    X-Content-Type-Options: nosniff, a browser runs it only if typed as JavaScript."""
    with client.get("/static/ta.js", headers={"Origin": "https://pan.example"}) as answer:
        assert answer.status_code == 200
        assert answer.mimetype in ("text/javascript", "application/javascript")
        assert b"window.tenantAnalytics" in answer.data
        # Every page view loads it: cached an hour, not revalidated each time; and
        # loadable with crossorigin (subresource integrity).
        assert answer.cache_control.max_age == 3600
        assert answer.headers["Access-Control-Allow-Origin"] in ("*", "https://pan.example")


class Landing:
    """Writes a page into the landing origin and opens it in Chromium."""

    def __init__(self, driver: Any, root: Path, page_port: int, api_port: int) -> None:
        self.driver, self.root = driver, root
        self.origin = f"http://127.0.0.1:{page_port}"
        self.script = f"http://127.0.0.1:{api_port}/static/ta.js"
        self.tracked: set[int] = set()  # tenants whose snippet may still send

    def snippet(self, tenant: int | str | None) -> str:
        """The tag a tenant pastes; ``tenant`` is its data-tenant (None: no attribute)."""
        if isinstance(tenant, int):
            self.tracked.add(tenant)
        attribute = "" if tenant is None else f' data-tenant="{tenant}"'
        return f'<script src="{self.script}"{attribute} defer></script>'

    def write(self, body: str, head: str = "") -> str:
        name = f"{uuid.uuid4().hex}.html"
        (self.root / name).write_text(PAGE.format(head=head, body=body), encoding="utf-8")
        return f"{self.origin}/{name}"

    def open(
        self, tenant: int | str | None, body: str = "<h1>Pan dulce</h1>", before: str = ""
    ) -> str:
        """Open a page that includes the snippet for ``tenant``; ``before`` runs first."""
        url = self.write(body, head=before + self.snippet(tenant))
        self.driver.get(url)
        return url

    def errors(self) -> list[str]:
        return self.driver.execute_script("return window.pageErrors")

    def click(self, element_id: str) -> None:
        self.driver.find_element("id", element_id).click()


@pytest.fixture
def landing(
    api_port: int, page_port: int, pages_root: Path, browser, app: Flask
) -> Iterator[Landing]:
    # The API before the browser: Chromium quits first, and gunicorn stops at once.
    page = Landing(browser, pages_root, page_port, api_port)
    yield page
    # Leaving the page sends its time_on_page. Waited for here, before the tables are
    # emptied: on SQLite the next test's tenant may get the same id, and a late beacon
    # would be counted as its event.
    browser.get("about:blank")
    for tenant_id in page.tracked:
        events_when(tenant_id, lambda events: any_of(events, "time_on_page"), timeout=5)


def any_of(events: list[Any], event_type: str) -> bool:
    return any(event.event_type == event_type for event in events)


def types(events: list[Any]) -> Counter[str]:
    return Counter(event.event_type for event in events)


def test_loading_the_page_records_one_pageview(landing, make_tenant, page_port):
    tenant = make_tenant()
    landing.open(tenant.id)
    events_when(tenant.id, bool)
    time.sleep(0.5)  # a second pageview (on load as well as on run) would be here by now
    (event,) = stored_events(tenant.id)
    assert (event.event_type, event.metadata_) == ("pageview", None)
    assert event.user_agent == VISITOR
    # Chromium's default policy sends another origin the page's origin only.
    assert event.referrer == f"http://127.0.0.1:{page_port}/"
    assert landing.errors() == []


def test_a_whatsapp_tap_is_recorded_although_the_page_navigates_away(landing, make_tenant):
    tenant = make_tenant()
    landing.open(
        tenant.id,
        '<a id="wa" href="https://wa.me/50499998888" data-ta-location="hero">Escríbenos</a>',
    )
    landing.click("wa")
    # The page is gone: Chromium shows its error page (the tests' browser resolves no
    # outside host, see browsers.chromium).
    deadline = time.monotonic() + 10
    while not landing.driver.current_url.startswith("https://wa.me/"):
        assert time.monotonic() < deadline, landing.driver.current_url
        time.sleep(0.1)
    events = events_when(tenant.id, lambda events: any_of(events, "click_whatsapp"))
    (tap,) = [event for event in events if event.event_type == "click_whatsapp"]
    assert tap.metadata_ == {"button_location": "hero"}


TAPS = """
<section data-ta-location="pricing">
  <button id="toggle" data-ta-event="click_toggle_currency">USD</button>
</section>
<div data-ta-event="product_click" data-ta-product-id="7">
  <span id="product">Conchas</span>
  <a id="order" href="HTTPS://api.whatsapp.com/send?phone=50499998888">Pedir</a>
</div>
<a id="call" href="tel:+50422223333" data-ta-location="footer">Llamar</a>
<button id="other" data-ta-event="pageview">Not a tap type</button>
<a id="plain" href="#menu">Menú</a>
<script>
  // The page's own handlers: the currency toggle stops the event where it starts, and
  // the order button stays on the page (preventDefault, as a chat widget would).
  document.getElementById("toggle").addEventListener("click", (event) => {
    event.stopPropagation();
    event.preventDefault();
    event.target.textContent = "HNL";
  });
  document.getElementById("order").addEventListener("click", (event) => event.preventDefault());
</script>
"""


def test_taps_are_recorded_by_type(landing, make_tenant):
    tenant = make_tenant()
    landing.open(tenant.id, TAPS)
    for element_id in ("other", "plain", "toggle", "product", "order", "call"):
        landing.click(element_id)
    events = events_when(tenant.id, lambda events: len(events) >= 5)
    assert landing.errors() == []
    taps = sorted(
        (event.event_type, event.metadata_) for event in events if event.event_type != "pageview"
    )
    assert taps == [
        ("click_call", {"button_location": "footer"}),
        ("click_toggle_currency", {"button_location": "pricing"}),
        ("click_whatsapp", None),  # the order link inside the product card: the nearer wins
        ("product_click", {"product_id": 7}),
    ]
    assert types(events)["pageview"] == 1  # data-ta-event="pageview" is no tap


def test_a_long_location_is_cut_to_100_characters_never_inside_one(landing, make_tenant):
    """An emoji is two UTF-16 units: cut between them, the label would be invalid Unicode
    and the API would refuse the tap (422)."""
    tenant = make_tenant()
    label = "x" * 99 + "\U0001f35e" + "y" * 20  # the bread emoji is the 100th character
    landing.open(
        tenant.id,
        f'<section data-ta-location="{label}">'
        '<button id="toggle" data-ta-event="click_toggle_currency">USD</button></section>',
    )
    events_when(tenant.id, lambda events: any_of(events, "pageview"))
    # The element's own click(): in 1 run of 6 headless Chromium dropped every WebDriver
    # click on this page, with no error and no beacon sent.
    landing.driver.execute_script("document.getElementById('toggle').click()")
    events = events_when(tenant.id, lambda events: any_of(events, "click_toggle_currency"))
    taps = [event.metadata_ for event in events if event.event_type == "click_toggle_currency"]
    assert taps == [{"button_location": label[:100]}]
    assert landing.errors() == []


def test_time_on_page_is_the_visible_time(landing, make_tenant):
    tenant = make_tenant()
    landing.open(tenant.id)
    events_when(tenant.id, bool)  # the pageview: the snippet runs
    time.sleep(1.5)
    landing.driver.get(landing.write("<h1>Otra página</h1>"))  # no snippet here
    events = events_when(tenant.id, lambda events: any_of(events, "time_on_page"))
    (stay,) = [event for event in events if event.event_type == "time_on_page"]
    assert 1.0 <= stay.metadata_["seconds"] <= 30, stay.metadata_


def test_time_on_page_counts_from_when_the_page_was_shown_not_when_the_snippet_ran(
    landing, make_tenant
):
    """An async snippet from a slow API host runs seconds after the page is on screen:
    the visit began when it was shown."""
    tenant = make_tenant()
    landing.tracked.add(tenant.id)
    late = (
        "<h1>Pan</h1><script>setTimeout(function () {"
        " const tag = document.createElement('script');"
        f" tag.src = '{landing.script}'; tag.dataset.tenant = '{tenant.id}';"
        " document.head.appendChild(tag); }, 2000);</script>"
    )
    landing.driver.get(landing.write(late))
    events_when(tenant.id, bool)  # the pageview: the snippet ran, 2 s after the page
    time.sleep(0.5)
    landing.driver.get(landing.write("<h1>Otra página</h1>"))
    events = events_when(tenant.id, lambda events: any_of(events, "time_on_page"))
    (stay,) = [event for event in events if event.event_type == "time_on_page"]
    assert 2.3 <= stay.metadata_["seconds"] <= 30, stay.metadata_


def test_time_on_page_leaves_out_the_wait_for_the_page_itself(landing, make_tenant):
    """Until a slow page's response comes, the page before it is on screen, and sends
    that wait as its own time: the new page counts from its response."""
    before, slow = make_tenant().id, make_tenant().id
    landing.open(before)
    events_when(before, bool)
    page = landing.write("<h1>Pan</h1>", head=landing.snippet(slow))
    landing.driver.get(f"{page}?slow=2")
    loaded = time.monotonic()  # the response came at most this long ago
    events_when(slow, bool)  # the pageview: 2 s after the click
    time.sleep(0.5)
    landing.driver.get(landing.write("<h1>Otra página</h1>"))
    on_screen = time.monotonic() - loaded  # as measured here, however slow the machine
    events = events_when(slow, lambda events: any_of(events, "time_on_page"))
    (stay,) = [event for event in events if event.event_type == "time_on_page"]
    # Not the 2 s wait: with it, the stay would be some 2 s longer than the page was shown.
    assert 0.3 <= stay.metadata_["seconds"] <= on_screen + 0.3, (stay.metadata_, on_screen)
    waited = events_when(before, lambda events: any_of(events, "time_on_page"))
    (shown,) = [event for event in waited if event.event_type == "time_on_page"]
    assert shown.metadata_["seconds"] >= 2, shown.metadata_  # the page on screen meanwhile


def test_a_hidden_tab_sends_its_time_and_counts_only_the_time_after(landing, make_tenant):
    tenant = make_tenant()
    opened = time.monotonic()
    landing.open(tenant.id)
    driver = landing.driver
    first = driver.current_window_handle
    time.sleep(1.5)
    driver.switch_to.new_window("tab")  # the landing page's tab is hidden now
    shown_first = time.monotonic() - opened
    events_when(tenant.id, lambda events: any_of(events, "time_on_page"))
    time.sleep(2)  # hidden: not time on the page
    back = time.monotonic()
    driver.close()
    driver.switch_to.window(first)
    time.sleep(0.5)
    driver.get("about:blank")
    shown_again = time.monotonic() - back  # the bounds as measured: a slow run widens them
    events = events_when(tenant.id, lambda events: types(events)["time_on_page"] == 2)
    stays = [event.metadata_["seconds"] for event in events if event.event_type == "time_on_page"]
    assert len(stays) == 2, stays
    assert 1.3 <= stays[0] <= shown_first + 0.3, (stays, shown_first)
    # Not the first 1.5 s again, nor the hidden 2 s: either would exceed the time shown.
    assert 0.3 <= stays[1] <= shown_again + 0.3, (stays, shown_again)


def test_the_js_api_and_a_second_copy_of_the_snippet(landing, make_tenant):
    tenant = make_tenant()
    # Pasted twice (a theme and a plugin both add it): the page is viewed once.
    landing.open(tenant.id, body=landing.snippet(tenant.id))
    landing.driver.execute_script('window.tenantAnalytics.track("click_call", {"x": 1});')
    events = events_when(tenant.id, lambda events: any_of(events, "click_call"))
    assert sorted((event.event_type, event.metadata_) for event in events) == [
        ("click_call", {"x": 1}),
        ("pageview", None),
    ]
    assert landing.errors() == []


@pytest.mark.parametrize("kind", ["defer", 'type="module"'])
def test_a_second_tag_for_another_tenant_is_ignored_and_says_so(landing, make_tenant, kind):
    """track() is one global: the page's sales would go to whichever tag ran first."""
    tenant, other = make_tenant(), make_tenant()
    warnings = "<script>window.warned = []; console.warn = (m) => window.warned.push(m);</script>"
    # (a module of the same address is the same module, run once: another query string)
    second = f'<script src="{landing.script}?v=2" data-tenant="{other.id}" {kind}></script>'
    landing.open(tenant.id, body=second, before=warnings)
    landing.driver.execute_script('window.tenantAnalytics.track("click_call");')
    events = events_when(tenant.id, lambda events: any_of(events, "click_call"))
    assert types(events) == Counter({"pageview": 1, "click_call": 1})
    assert landing.driver.execute_script("return window.warned") == [
        f"tenant-analytics: this page counts for tenant {tenant.id}; the tag for tenant"
        f" {other.id} is ignored (one tenant per page)"
    ]
    assert events_when(other.id, bool, timeout=0.5) == []
    assert landing.errors() == []


def test_an_element_named_like_the_api_does_not_silence_the_snippet(landing, make_tenant):
    """id="tenantAnalytics" makes window.tenantAnalytics that element: not a first copy."""
    tenant = make_tenant()
    landing.open(tenant.id, before='<div id="tenantAnalytics"></div>')
    (event,) = events_when(tenant.id, bool)
    assert event.event_type == "pageview"
    assert landing.errors() == []


def test_without_a_valid_tenant_the_snippet_does_nothing(landing, make_tenant):
    tenant = make_tenant()
    # "12abc" is tenant 12 to parseInt: only digits name a tenant.
    for bad in (None, "", "0", "-1", f"{tenant.id}abc", f"{tenant.id}.5"):
        landing.open(bad, body='<a id="call" href="tel:+50422223333">Llamar</a>')
        assert landing.driver.execute_script("return typeof window.tenantAnalytics") == "undefined"
        landing.click("call")
        assert landing.errors() == []
    # A valid page last: its pageview arrives after anything the others sent.
    landing.open(tenant.id)
    events_when(tenant.id, bool)
    time.sleep(0.3)
    assert [event.event_type for event in stored_events()] == ["pageview"]


@pytest.mark.parametrize(
    "no_beacon",
    ["delete Navigator.prototype.sendBeacon;", "Navigator.prototype.sendBeacon = () => false;"],
    ids=["missing", "refused"],
)
def test_without_send_beacon_a_keepalive_fetch_sends(landing, make_tenant, no_beacon):
    tenant = make_tenant()
    landing.open(tenant.id, before=f"<script>{no_beacon}</script>")
    (event,) = events_when(tenant.id, bool)
    assert event.event_type == "pageview"
    assert landing.errors() == []


def test_served_under_a_path_the_snippet_posts_under_it(api_under_a_path, landing, make_tenant):
    """Loaded from https://host/stats/static/ta.js, the snippet posts to /stats/api/…, where
    the API is, not to the host's own /api/… (lost, and the error swallowed)."""
    tenant = make_tenant()
    landing.script = api_under_a_path
    landing.open(tenant.id)
    (event,) = events_when(tenant.id, bool)
    assert event.event_type == "pageview"
    assert landing.errors() == []


PHONE = (
    "Mozilla/5.0 (Linux; Android 13; SM-A135F) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36"
)


def test_a_qr_scan_lands_on_the_page_and_both_are_counted(landing, make_tenant, api_port):
    """The whole loop a printed code starts: the tracked redirect counts the scan, the
    phone lands on the tenant's page, and the snippet there counts the page view."""
    tenant = make_tenant()
    tenant.landing_url = landing.write("<h1>Menú</h1>", head=landing.snippet(tenant.id))
    db.session.commit()
    driver = landing.driver
    # As a phone, which QR codes are scanned with.
    own_agent = driver.execute_script("return navigator.userAgent")
    driver.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": PHONE})
    try:
        driver.get(f"http://127.0.0.1:{api_port}/q/{tenant.slug}?c=mesa-3")
        assert driver.current_url == tenant.landing_url
        events = events_when(tenant.id, lambda events: len(events) >= 2)
    finally:
        driver.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": own_agent})
    assert [(event.event_type, event.metadata_) for event in events] == [
        ("qr_scan", {"campaign": "mesa-3"}),
        ("pageview", None),
    ]
    assert {event.user_agent for event in events} == {PHONE}


def test_the_demo_page_sends_what_is_tapped_on_it(landing, api_port):
    """`make run`'s page to tap around in: served by the app (outside production) with the
    snippet for the demo bakery, its taps reach the dashboards' events."""
    load_demo(db.session, f"http://127.0.0.1:{api_port}")
    db.session.commit()
    tenant = db.session.scalar(select(Tenant).where(Tenant.slug == DEMO_SLUG))
    before = len(stored_events(tenant.id))
    landing.tracked.add(tenant.id)
    landing.driver.get(f"http://127.0.0.1:{api_port}/demo/")
    landing.click("currency")
    assert landing.driver.find_element("id", "currency").text == "Ver en HNL"
    landing.driver.find_element("css selector", ".product").click()
    landing.click("whatsapp")
    events = events_when(tenant.id, lambda events: any_of(events[before:], "click_whatsapp"))
    new = {event.event_type: event.metadata_ for event in events[before:]}
    assert new["pageview"] is None
    assert new["click_toggle_currency"] is None
    assert new["product_click"]["button_location"] == "catalogo"
    assert isinstance(new["product_click"]["product_id"], int)
    assert new["click_whatsapp"] == {"button_location": "contacto"}


STAY = "<script>document.addEventListener('click', (event) => event.preventDefault());</script>"


def taps_of(tenant_id: int, count: int) -> list[tuple[str, Any]]:
    """The tenant's events other than page views, once ``count`` of them are in, sorted:
    beacons sent one after another may arrive in either order."""
    events = events_when(
        tenant_id, lambda events: sum(e.event_type != "pageview" for e in events) >= count
    )
    time.sleep(0.3)  # one more would be here by now
    events = stored_events(tenant_id)
    taps = [(e.event_type, e.metadata_) for e in events if e.event_type != "pageview"]
    return sorted(taps, key=repr)


def test_calls_queued_by_a_stub_before_the_snippet_runs_are_sent(landing, make_tenant):
    tenant = make_tenant()
    stub = (
        "<script>window.tenantAnalytics = window.tenantAnalytics ||"
        " {q: [], track: function () { this.q.push(arguments); }};"
        ' tenantAnalytics.track("click_call", {"from": "inline"});</script>'
    )
    landing.open(tenant.id, before=stub)  # the snippet is deferred: it runs after
    assert taps_of(tenant.id, 1) == [("click_call", {"from": "inline"})]
    assert types(stored_events(tenant.id))["pageview"] == 1  # the stub is no first copy
    landing.driver.execute_script('tenantAnalytics.track("click_whatsapp");')
    assert ("click_whatsapp", None) in taps_of(tenant.id, 2)
    assert landing.errors() == []


def test_one_tap_on_a_label_counts_once(landing, make_tenant):
    tenant = make_tenant()
    body = (
        '<label id="switch" data-ta-event="click_toggle_currency">'
        '<input type="checkbox" id="box"> HNL</label>'
        '<div data-ta-event="product_click" data-ta-product-id="3">'
        '<input type="radio" id="size" name="s"><label for="size" id="size-label">M</label></div>'
        # Both tagged: the label's tap, and the browser's click on the box it names
        '<label id="both" for="gift" data-ta-event="product_click" data-ta-product-id="4">'
        'Regalo</label><input type="checkbox" id="gift" data-ta-event="product_click"'
        ' data-ta-product-id="5">'
    )
    landing.open(tenant.id, body)
    landing.click("switch")
    landing.click("size-label")
    landing.click("both")
    assert taps_of(tenant.id, 3) == [
        ("click_toggle_currency", None),
        ("product_click", {"product_id": 3}),
        ("product_click", {"product_id": 4}),
    ]
    assert landing.driver.find_element("id", "gift").is_selected()
    assert landing.driver.find_element("id", "box").is_selected()  # the page still works


WHATSAPP_LINKS = """
<a id="l1" href="http://wa.me/50411">1</a>
<a id="l2" href="//wa.me/50422">2</a>
<a id="l3" href="https://www.wa.me/50433">3</a>
<a id="l4" href="https://web.whatsapp.com/send?phone=50444">4</a>
<a id="l5" href="https://www.whatsapp.com/send?phone=50455">5</a>
<a id="l6" href="https://chat.whatsapp.com/AbCdEf">6</a>
<a id="l7" href="https://wa.me/50477" data-ta-event="">7</a>
<a id="l8" href="tel:+50488"><span id="l8-icon" data-ta-event="phone_icon">8</span></a>
<a id="l9" href="https://wa.link/pan123">9</a>
<a id="l10" href="intent://send/50410#Intent;scheme=whatsapp;package=com.whatsapp;end">10</a>
<a id="l11" href="intent://send?phone=50411#Intent;package=com.whatsapp.w4b;end">11</a>
<svg width="60" height="20"><a xlink:href="https://wa.me/50412"><text id="l12" y="15">12</text>
</a></svg>
<a id="n1" href="https://whatsapp.com/blog">not a chat</a>
<a id="n2" href="https://shop.example/wa.me/1">not WhatsApp</a>
<a id="n3" href="intent://scan/#Intent;scheme=zxing;package=com.google.zxing.client.android;end">
not WhatsApp</a>
"""


def test_every_form_of_whatsapp_link_is_a_tap(landing, make_tenant):
    tenant = make_tenant()
    landing.open(tenant.id, WHATSAPP_LINKS, before=STAY)
    links = ("l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8-icon", "l9", "l10", "l11", "l12")
    for element_id in ("n1", "n2", "n3", *links):
        landing.click(element_id)
    # A data-ta-event that is empty or no tap type leaves the link what it is.
    assert Counter(event_type for event_type, _ in taps_of(tenant.id, 12)) == {
        "click_whatsapp": 11,
        "click_call": 1,
    }


def test_taps_repeated_within_a_second_count_once(landing, make_tenant):
    tenant = make_tenant()
    body = (
        '<a id="wa" href="https://wa.me/50499">Chat</a>'
        '<button id="toggle" data-ta-event="click_toggle_currency">USD</button>'
    )
    landing.open(tenant.id, body, before=STAY)
    # Taps 50 ms apart, each in a task of its own as a person's are, timed in the page:
    # well within the second however slow the machine.
    landing.driver.execute_async_script(
        "const done = arguments[0];"
        "const ids = ['wa', 'wa', 'wa', 'toggle', 'wa'];"  # the last follows another tap
        "const next = () => ids.length ? (document.getElementById(ids.shift()).click(),"
        " setTimeout(next, 50)) : done();"
        "next();"
    )
    taps_of(tenant.id, 3)
    time.sleep(1.1)
    landing.click("wa")
    assert Counter(event_type for event_type, _ in taps_of(tenant.id, 4)) == {
        "click_whatsapp": 3,
        "click_toggle_currency": 1,
    }


RECORD_SENDS = (
    "<script>window.sent = []; const realFetch = window.fetch;"
    " window.fetch = function (url, options) {"
    " if (options && options.body) sent.push(JSON.parse(options.body));"
    " return realFetch.apply(this, arguments); };</script>"
)
OFFLINE = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}


def test_taps_made_offline_are_sent_once_the_phone_is_back_online(landing, make_tenant):
    """A phone losing signal for a moment: the sends that failed are tried again (they
    were lost, though sendBeacon had said queued), each with a key of its own."""
    tenant = make_tenant()
    body = '<a id="wa" href="https://wa.me/50499">Chat</a><a id="call" href="tel:+504">Call</a>'
    landing.open(tenant.id, body, before=STAY + RECORD_SENDS)
    events_when(tenant.id, bool)  # the page view
    driver = landing.driver
    driver.execute_cdp_cmd("Network.enable", {})  # DevTools' emulation applies from then on
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", OFFLINE)
    try:
        landing.click("wa")
        landing.click("call")
        time.sleep(2)  # no timer resends them: they wait for the browser to be online
        assert stored_events(tenant.id)[1:] == []
    finally:
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {**OFFLINE, "offline": False})
        driver.execute_cdp_cmd("Network.disable", {})
    assert sorted(event_type for event_type, _ in taps_of(tenant.id, 2)) == [
        "click_call",
        "click_whatsapp",
    ]
    keys = {event["idempotency_key"] for event in driver.execute_script("return window.sent")}
    assert len(keys) == 3 and all(re.fullmatch("ta-[0-9a-f]{32}", key) for key in keys)
    assert landing.errors() == []


# A phone whose signal goes just as its tap's request reached the server (stored): the
# answer is lost on the way back, or was a 503 from a proxy, and the browser is offline
# from then on until the test brings it back.
SIGNAL_LOST_AFTER_THE_TAP = (
    "<script>window.online = true;"
    " Object.defineProperty(Navigator.prototype, 'onLine', {get: () => window.online});"
    " const realFetch = window.fetch; let tapsSent = 0;"
    " window.fetch = function (url, options) {"
    "  if (!window.online) return Promise.reject(new TypeError('offline'));"
    "  const event = JSON.parse(options.body);"
    "  if (event.event_type !== 'click_whatsapp' || tapsSent++) {"
    "   return realFetch.apply(this, arguments); }"
    "  return realFetch.apply(this, arguments).then(() => { window.online = false;"
    "   return ANSWER; }); };</script>"
)


@pytest.mark.parametrize(
    "answer",
    ["Promise.reject(new TypeError('the signal went'))", "new Response('', {status: 503})"],
    ids=["answer lost", "503"],
)
def test_a_tap_stored_as_the_signal_went_is_not_sent_again_once_back_online(
    landing, make_tenant, answer
):
    """Back online past the server's window for its key, a resend would be a second
    tap: only what the browser never sent (made offline) waits for the signal."""
    tenant = make_tenant()
    body = '<a id="wa" href="https://wa.me/50499">Chat</a><a id="call" href="tel:+504">Call</a>'
    landing.open(tenant.id, body, before=STAY + SIGNAL_LOST_AFTER_THE_TAP.replace("ANSWER", answer))
    events_when(tenant.id, bool)  # the page view
    landing.click("wa")
    events_when(tenant.id, lambda events: len(events) == 2)  # the tap, stored
    landing.click("call")  # made offline: never left
    time.sleep(6)  # past IDEMPOTENCY_WINDOW_SECONDS (5)
    landing.driver.execute_script("window.online = true; dispatchEvent(new Event('online'))")
    assert taps_of(tenant.id, 2) == [("click_call", None), ("click_whatsapp", None)]
    time.sleep(1)  # a resend would be in by now
    assert len(stored_events(tenant.id)) == 3
    assert landing.errors() == []


@pytest.fixture(scope="module")
def tight_api_port(migrated: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with api_server(
        migrated, tmp_path_factory.mktemp("gunicorn"), TRACK_RATE_LIMIT="2 per 3 seconds"
    ) as port:
        yield port


def test_events_over_the_tenants_limit_are_sent_again_after_retry_after(
    tight_api_port, page_port, pages_root, browser, app, make_tenant
):
    """A 429 says when to come back: the taps refused (a busy minute) are counted then."""
    tenant = make_tenant()
    page = Landing(browser, pages_root, page_port, tight_api_port)
    body = '<a id="wa" href="https://wa.me/50499">Chat</a><a id="call" href="tel:+504">Call</a>'
    page.open(tenant.id, body, before=STAY)
    events_when(tenant.id, bool)
    for element_id in ("wa", "call", "wa"):
        page.click(element_id)
        time.sleep(1.1)  # a tap each, not one impatient tap
    taps = taps_of(tenant.id, 3)
    assert Counter(event_type for event_type, _ in taps) == {"click_whatsapp": 2, "click_call": 1}
    browser.get("about:blank")
    time.sleep(1)  # its time_on_page, or its 429, before the tables are emptied


def test_a_tagged_select_counts_the_choice_not_the_clicks_on_it(landing, make_tenant):
    tenant = make_tenant()
    body = (
        '<section data-ta-location="precios"><select id="currency"'
        ' data-ta-event="click_toggle_currency"><option value="USD">USD</option>'
        '<option value="HNL">HNL</option></select></section>'
        '<div data-ta-event="product_click" data-ta-product-id="4">'
        '<select id="size"><option>S</option><option>M</option></select></div>'
        '<select id="plain"><option>a</option><option>b</option></select>'
        # A widget's own picker, in an open shadow root
        "<money-widget id='widget'></money-widget><script>"
        "document.getElementById('widget').attachShadow({mode: 'open'}).innerHTML ="
        ' \'<select data-ta-event="click_toggle_currency" data-ta-location="widget">'
        "<option>USD</option><option>EUR</option></select>';</script>"
    )
    landing.open(tenant.id, body)
    landing.click("currency")  # opens the list: no choice yet
    landing.click("size")
    for element_id in ("currency", "plain"):
        Select(landing.driver.find_element("id", element_id)).select_by_index(1)
    # Chosen with a key, as a browser does it: input, then change, for one choice.
    landing.driver.find_element("id", "size").send_keys(Keys.ARROW_DOWN)
    widget = landing.driver.find_element("id", "widget").shadow_root
    widget.find_element("css selector", "select").send_keys(Keys.ARROW_DOWN)
    assert taps_of(tenant.id, 3) == [
        ("click_toggle_currency", {"button_location": "precios"}),
        ("click_toggle_currency", {"button_location": "widget"}),
        ("product_click", {"product_id": 4}),
    ]
    assert landing.errors() == []


def test_a_tagged_label_of_a_select_counts_the_choice_once(landing, make_tenant):
    tenant = make_tenant()
    body = (
        # Tagged labels: one around its select, one naming it by id.
        '<label id="around" data-ta-event="click_toggle_currency" data-ta-location="top">'
        '<span id="around-text">Moneda</span> <select id="wrapped">'
        "<option>USD</option><option>HNL</option></select></label>"
        '<label id="naming" for="named" data-ta-event="click_toggle_currency"'
        ' data-ta-location="pie">Moneda</label>'
        '<select id="named"><option>USD</option><option>HNL</option></select>'
    )
    landing.open(tenant.id, body)
    for label_id, select_id in (("around-text", "wrapped"), ("naming", "named")):
        landing.click(label_id)  # focuses the select: no choice yet
        time.sleep(1.1)  # a slow pick: past the repeat window
        Select(landing.driver.find_element("id", select_id)).select_by_index(1)
    assert taps_of(tenant.id, 2) == [
        ("click_toggle_currency", {"button_location": "pie"}),
        ("click_toggle_currency", {"button_location": "top"}),
    ]
    assert landing.errors() == []


def test_the_label_tapped_names_the_choice_even_in_a_shadow_root(landing, make_tenant):
    tenant = make_tenant()
    body = (
        # Two tagged labels for one select: the choice is the tapped one's.
        '<label id="top" for="cur" data-ta-event="click_toggle_currency"'
        ' data-ta-location="top">Moneda</label>'
        '<select id="cur"><option>USD</option><option>HNL</option></select>'
        '<label id="pie" for="cur" data-ta-event="click_toggle_currency"'
        ' data-ta-location="pie">Moneda</label>'
        # A widget's label and select in its own shadow root, placed by the page.
        '<section data-ta-location="header"><cur-picker id="picker"></cur-picker></section>'
        "<script>document.getElementById('picker').attachShadow({mode: 'open'}).innerHTML ="
        ' \'<label for="c" data-ta-event="click_toggle_currency">Moneda</label>'
        '<select id="c"><option>USD</option><option>EUR</option></select>\';</script>'
    )
    landing.open(tenant.id, body)
    landing.click("pie")
    Select(landing.driver.find_element("id", "cur")).select_by_index(1)
    picker = landing.driver.find_element("id", "picker").shadow_root
    picker.find_element("css selector", "label").click()
    time.sleep(1.1)  # past the repeat window of the label tapped first
    picker.find_element("css selector", "select").send_keys(Keys.ARROW_DOWN)
    assert taps_of(tenant.id, 2) == [
        ("click_toggle_currency", {"button_location": "header"}),
        ("click_toggle_currency", {"button_location": "pie"}),
    ]
    assert landing.errors() == []


def test_a_label_of_a_select_counts_its_tap_where_a_browser_has_no_select_labels(
    landing, make_tenant
):
    """Without select.labels the choice cannot find a label that names it by id: the
    tap on that label is what is counted, once."""
    tenant = make_tenant()
    no_labels = (
        "<script>Object.defineProperty(HTMLSelectElement.prototype, 'labels',"
        " {get: () => undefined});</script>"
    )
    body = (
        '<label id="naming" for="named" data-ta-event="click_toggle_currency">Moneda</label>'
        '<select id="named"><option>USD</option><option>HNL</option></select>'
    )
    landing.open(tenant.id, body, before=no_labels)
    landing.click("naming")
    time.sleep(1.1)
    Select(landing.driver.find_element("id", "named")).select_by_index(1)
    assert taps_of(tenant.id, 1) == [("click_toggle_currency", None)]
    assert landing.errors() == []


def test_taps_inside_an_open_shadow_root_and_middle_clicks_count(landing, make_tenant):
    tenant = make_tenant()
    widget = (
        "<chat-widget></chat-widget><script>"
        "const root = document.querySelector('chat-widget').attachShadow({mode: 'open'});"
        'root.innerHTML = \'<a href="https://wa.me/50499" data-ta-location="widget">'
        "<b>Chat</b></a>';"
        "root.querySelector('a').addEventListener('click', (e) => e.preventDefault());"
        "</script><a id='call' href='tel:+50411'>Llamar</a>"
        "<button id='toggle' data-ta-event='click_toggle_currency'>USD</button>"
        "<a id='order' href='https://wa.me/50422' data-ta-event='product_click'"
        " data-ta-product-id='3'>Pedir</a>"
    )
    landing.open(tenant.id, widget)
    landing.driver.execute_script(
        "document.querySelector('chat-widget').shadowRoot.querySelector('b').click();"
    )
    # The middle button opens a link in a new tab; on a button it does nothing, and the
    # right one opens a menu (some browsers send these as clicks).
    for element_id, kind, button in [
        ("call", "auxclick", 1),
        ("call", "auxclick", 2),
        ("toggle", "auxclick", 1),
        ("call", "click", 2),
        ("order", "auxclick", 1),  # a tagged link: both its taps
    ]:
        landing.driver.execute_script(
            "document.getElementById(arguments[0]).dispatchEvent(new MouseEvent(arguments[1],"
            " {button: arguments[2], bubbles: true, composed: true}));",
            element_id,
            kind,
            button,
        )
    assert taps_of(tenant.id, 4) == [
        ("click_call", None),
        ("click_whatsapp", None),
        ("click_whatsapp", {"button_location": "widget"}),
        ("product_click", {"product_id": 3}),
    ]


def test_a_prerendered_page_counts_its_view_when_shown(landing, make_tenant):
    tenant = make_tenant()
    # Chromium prerenders only from speculation rules; its document says so as here.
    prerendering = (
        "<script>window.shown = false; Object.defineProperty(document, 'prerendering',"
        " {get: () => !window.shown});</script>"
    )
    landing.open(tenant.id, before=prerendering)
    landing.driver.execute_script("return 1")  # the deferred snippet has run
    time.sleep(0.5)
    assert stored_events(tenant.id) == []  # nobody has seen it yet
    landing.driver.execute_script(
        "window.shown = true; document.dispatchEvent(new Event('prerenderingchange'));"
    )
    (event,) = events_when(tenant.id, bool)
    assert event.event_type == "pageview"


def test_a_prerendered_page_sends_its_queued_calls_only_when_shown(landing, make_tenant):
    tenant = make_tenant()
    before = (
        "<script>window.shown = false; Object.defineProperty(document, 'prerendering',"
        " {get: () => !window.shown});"
        " window.tenantAnalytics = {q: [['click_call']], track: function () {}};</script>"
    )
    landing.open(tenant.id, before=before)
    time.sleep(0.5)
    assert stored_events(tenant.id) == []
    landing.driver.execute_script(
        "window.shown = true; document.dispatchEvent(new Event('prerenderingchange'));"
    )
    events = events_when(tenant.id, lambda events: len(events) == 2)
    assert types(events) == {"pageview": 1, "click_call": 1}  # two beacons: either first


def test_a_prerendered_pages_own_calls_wait_until_it_is_shown(landing, make_tenant):
    """Calls the page makes after the snippet ran (its load handler, say) wait as the
    stub's queued ones do: a page prerendered and never shown was seen by nobody."""
    tenant = make_tenant()
    prerendering = (
        "<script>window.shown = false; Object.defineProperty(document, 'prerendering',"
        " {get: () => !window.shown});</script>"
    )
    landing.open(tenant.id, before=prerendering)
    landing.driver.execute_script('window.tenantAnalytics.track("product_view");')
    time.sleep(0.5)
    assert stored_events(tenant.id) == []
    landing.driver.execute_script(
        "window.shown = true; document.dispatchEvent(new Event('prerenderingchange'));"
    )
    events = events_when(tenant.id, lambda events: len(events) == 2)
    assert types(events) == {"pageview": 1, "product_view": 1}


def test_a_page_back_from_the_back_forward_cache_is_viewed_again(landing, make_tenant):
    tenant = make_tenant()
    landing.open(tenant.id)
    events_when(tenant.id, bool)
    landing.driver.execute_script(
        "dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}));"
        "dispatchEvent(new PageTransitionEvent('pageshow', {persisted: false}));"
    )
    events = events_when(tenant.id, lambda events: types(events)["pageview"] == 2)
    time.sleep(0.3)
    assert types(stored_events(tenant.id))["pageview"] == 2, events


def test_the_snippet_as_a_module_script(landing, make_tenant):
    """A module has no document.currentScript: the tag is found by its data-tenant."""
    tenant = make_tenant()
    landing.tracked.add(tenant.id)
    tag = f'<script type="module" src="{landing.script}" data-tenant="{tenant.id}"></script>'
    landing.driver.get(landing.write("<h1>Pan</h1>", head=tag))
    (event,) = events_when(tenant.id, bool)
    assert event.event_type == "pageview"


def test_a_page_that_sends_its_whole_address_as_referrer_has_only_its_origin_kept(
    landing, make_tenant, page_port
):
    tenant = make_tenant()
    url = landing.write(
        "<h1>Gracias</h1>",
        head='<meta name="referrer" content="unsafe-url">' + landing.snippet(tenant.id),
    )
    landing.driver.get(url + "?email=ana%40example.com")
    (event,) = events_when(tenant.id, bool)
    assert event.referrer == f"http://127.0.0.1:{page_port}/"


def test_track_takes_an_events_own_fields_as_its_third_argument(landing, make_tenant):
    """A sale sent from a thank-you page: its price and product are the event's fields
    (revenue, reports), not metadata the store never reads; a repeat of its key is one.
    The second argument stays metadata whatever its names (pages written before)."""
    tenant = make_tenant()
    landing.open(tenant.id)
    sale = (
        '"purchase", {"quantity": 2, "note": "x"},'
        ' {"price": 75.25 * 2, "product_slug": "pan", "idempotency_key": "order-1", "x": 1}'
    )
    landing.driver.execute_script(
        f"tenantAnalytics.track({sale}); tenantAnalytics.track({sale});"
        'tenantAnalytics.track("click_call", {"source": "menu"});'
        'tenantAnalytics.track("purchase", null, {"price": 0.1 + 0.2, "idempotency_key": "o-2"});'
        'tenantAnalytics.track("purchase", null, {"price": 6.1, "currency": "USD"});'
        'tenantAnalytics.track("purchase", null, {"price": 1.005, "currency": "KWD"});'
        'tenantAnalytics.track("purchase", null, {"price": 0.155 * 3, "currency": "BHD"});'
        # A total the page failed to compute: the sale, without a price (it was a 422)
        'tenantAnalytics.track("purchase", null, {"price": 0 / 0, "currency": "USD"});'
    )
    events = events_when(tenant.id, lambda events: types(events)["purchase"] >= 6)
    time.sleep(0.5)  # a repeat would be here by now
    events = stored_events(tenant.id)
    purchases = sorted(
        (e.price, e.revenue, e.currency, e.quantity, e.product_slug, e.metadata_)
        for e in events
        if e.event_type == "purchase" and e.price is not None
    )
    sales = [e for e in events if e.event_type == "purchase"]
    assert [e.currency for e in sales if e.price is None] == [None]
    assert purchases == [
        # 0.30000000000000004 sent as 0.3
        (Decimal("0.30"), Decimal("0.30"), "HNL", None, None, None),
        # 0.46499999999999997 as the beacon would round it, not 0.47 (46.5 cents)
        (Decimal("0.46"), Decimal("0.46"), "BHD", None, None, None),
        # 1.005 as the beacon would round it, not 1.00 (100.49999999999999 cents)
        (Decimal("1.01"), Decimal("1.01"), "KWD", None, None, None),
        (Decimal("6.10"), Decimal("6.10"), "USD", None, None, None),  # paid in dollars
        (Decimal("150.50"), Decimal("301.00"), "HNL", 2, "pan", {"quantity": 2, "note": "x"}),
    ]
    (call,) = [e for e in events if e.event_type == "click_call"]
    assert (call.source, call.metadata_) == (None, {"source": "menu"})
    assert landing.errors() == []


def test_a_reference_to_the_stub_kept_by_the_page_sends_once_the_snippet_runs(landing, make_tenant):
    tenant = make_tenant()
    stub = (
        "<script>window.tenantAnalytics = window.tenantAnalytics ||"
        " {q: [], track: function () { this.q.push(arguments); }};"
        " window.kept = window.tenantAnalytics;</script>"
    )
    landing.open(tenant.id, before=stub)
    events_when(tenant.id, bool)  # the snippet has run
    landing.driver.execute_script('kept.track("click_call", {"from": "kept"});')
    assert taps_of(tenant.id, 1) == [("click_call", {"from": "kept"})]
    assert landing.driver.execute_script("return kept === window.tenantAnalytics")


def test_a_tagged_whatsapp_link_is_both_taps_and_a_cards_product_id_is_found(landing, make_tenant):
    tenant = make_tenant()
    body = (
        '<a id="order" href="https://wa.me/50499998888" data-ta-event="product_click"'
        ' data-ta-product-id="7" data-ta-location="catalogo"><span id="name">Conchas</span></a>'
        '<div data-ta-product-id="9"><button id="see" data-ta-event="product_click">Ver</button>'
        "</div>"
    )
    landing.open(tenant.id, body, before=STAY)
    landing.click("name")
    landing.click("see")
    assert taps_of(tenant.id, 3) == [
        ("click_whatsapp", {"button_location": "catalogo"}),
        ("product_click", {"button_location": "catalogo", "product_id": 7}),
        ("product_click", {"product_id": 9}),
    ]


def test_with_data_spa_a_single_page_apps_new_path_is_a_page_view(landing, make_tenant):
    tenant, plain = make_tenant().id, make_tenant().id
    spa = landing.snippet(tenant).replace("<script ", "<script data-spa ")
    landing.driver.get(landing.write("<h1>Inicio</h1>", head=spa))
    events_when(tenant, bool)
    time.sleep(1.1)  # time on the first route
    landing.driver.execute_script(
        'history.pushState({}, "", "/menu");'  # a new route: a view
        'history.pushState({}, "", "/menu#pan");'  # the same page
        'history.pushState({}, "", "/menu?c=1");'  # the same page
        'history.replaceState({}, "", "/menu/");'  # a redirect: the same page
    )
    landing.driver.back()  # popstate to /menu: a new path again
    events_when(tenant, lambda events: types(events)["pageview"] >= 3)
    time.sleep(0.5)  # another would be here by now
    events = stored_events(tenant)
    assert types(events)["pageview"] == 3, types(events)
    stays = [e.metadata_["seconds"] for e in events if e.event_type == "time_on_page"]
    assert stays and stays[0] >= 1, stays  # the first route's time, sent as it was left
    assert landing.errors() == []
    # Without the attribute, route changes are not page views (the README's default).
    landing.open(plain)
    events_when(plain, bool)
    landing.driver.execute_script('history.pushState({}, "", "/otra");')
    time.sleep(0.5)
    assert types(stored_events(plain))["pageview"] == 1


def test_the_readmes_content_security_policy_lets_the_stub_snippet_and_events_through(
    landing, make_tenant, api_port
):
    """The policy the README gives, on a page with its stub and a queued call in a script
    file of the page's own: everything runs and is sent, nothing is refused. (The
    README once gave one without the stub's hash, which refused the stub.)"""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    stub = re.search(r"^<script>(window\.tenantAnalytics = .*)</script>$", readme, re.M)[1]
    policy = re.search(r"^Content-Security-Policy: (.*)$", readme, re.M)[1]
    digest = base64.b64encode(hashlib.sha256(stub.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in policy  # the hash is the stub's
    policy = policy.replace("https://API-HOST", f"http://127.0.0.1:{api_port}")
    (landing.root / "queued.js").write_text(
        'tenantAnalytics.track("click_call", {"from": "file"});'
    )
    tenant = make_tenant()
    landing.open(
        tenant.id,
        before=f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        f'<script>{stub}</script><script src="queued.js"></script>',
    )
    assert taps_of(tenant.id, 1) == [("click_call", {"from": "file"})]
    assert types(stored_events(tenant.id))["pageview"] == 1
    assert landing.driver.execute_script("return window.refusedByPolicy") == []
    assert landing.errors() == []


def test_the_readmes_conversion_beacon_from_a_thank_you_page_is_recorded(
    landing, make_tenant, api_port
):
    """The README's browser example of the payment beacon, as written, cross-origin."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    beacon = re.search(r"<script>\n(  navigator\.sendBeacon\(.*?)</script>", readme, re.S)[1]
    tenant = make_tenant(slug="demo-bakery")
    api = f"http://127.0.0.1:{api_port}"
    landing.driver.get(landing.write(f"<script>{beacon.replace('https://API-HOST', api)}</script>"))
    (sale,) = events_when(tenant.id, bool)
    assert (sale.event_type, sale.revenue, sale.currency) == ("purchase", Decimal("6.10"), "USD")


def test_a_headless_browsers_visit_is_not_counted(landing, make_tenant):
    """Headless Chromium as it names itself (a scraper, an SEO tool running the page):
    the snippet sends, the server stores nothing of it; the same page in a visitor's
    browser counts."""
    tenant = make_tenant()
    driver = landing.driver
    # (Chromium sends a page's last beacons, on leaving it, with its own User-Agent, not
    # the override's: this page is not left while it is overridden.)
    driver.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": HEADLESS})
    try:
        landing.open(tenant.id)
        driver.execute_script('tenantAnalytics.track("click_call");')
        time.sleep(1)  # what it sent has arrived by now
        assert stored_events(tenant.id) == []
    finally:
        driver.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": VISITOR})
    landing.open(tenant.id)
    events = events_when(tenant.id, lambda events: any_of(events, "pageview"))
    (view,) = [event for event in events if event.event_type == "pageview"]
    assert view.user_agent == VISITOR
    assert not any_of(stored_events(tenant.id), "click_call")
