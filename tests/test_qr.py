"""QR codes: the tracked redirect (GET /q/<slug>) and the owner's code image."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text, update

from tenant_analytics.api import qr as qr_api
from tenant_analytics.auth import access_token_for
from tenant_analytics.extensions import db
from tenant_analytics.group_commit import GroupCommitter
from tenant_analytics.models import Event, Tenant

LANDING = "https://panaderia.example/menu"
PHONE = (
    "Mozilla/5.0 (Linux; Android 13; SM-A135F) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36"
)


def scan(client, slug: str, user_agent: str = PHONE, **query: str):
    return client.get(f"/q/{slug}", query_string=query, headers={"User-Agent": user_agent})


def events_of(tenant_id: int) -> list[Event]:
    db.session.expire_all()
    return list(db.session.scalars(select(Event).where(Event.tenant_id == tenant_id)))


@pytest.fixture
def shop(make_tenant) -> Tenant:
    return make_tenant(landing_url=LANDING)


def test_scan_counts_and_leads_to_the_landing_page(client, shop, make_user, auth_headers):
    response = scan(client, shop.slug, c="mesa-3")
    assert response.status_code == 302
    assert response.headers["Location"] == LANDING
    assert response.headers["Cache-Control"] == "no-store"  # the next scan comes back here
    (event,) = events_of(shop.id)
    assert (event.event_type, event.metadata_) == ("qr_scan", {"campaign": "mesa-3"})
    assert event.visitor_hash and event.user_agent == PHONE
    # The owner's dashboards count it, from the rollups as from the raw events.
    headers = auth_headers(make_user(shop))
    assert (
        client.get(f"/api/analytics/{shop.id}", headers=headers).get_json()["data"]["qr_scans"] == 1
    )
    assert (
        client.get(f"/api/analytics/{shop.id}/today", headers=headers).get_json()["qr_scans"] == 1
    )


@pytest.mark.parametrize(
    "which", ["unknown", "inactive", "no landing page", "long slug", "NUL", "not ASCII"]
)
def test_scan_of_no_code_is_a_404(client, make_tenant, which):
    slug = {
        "unknown": "no-such-shop",
        "inactive": make_tenant(active=False, landing_url=LANDING).slug,
        "no landing page": make_tenant().slug,
        "long slug": "s" * 500,
        "NUL": "pan%00",  # no slug has one; PostgreSQL would refuse to compare it
        # The Kelvin sign lower-cases to "k": no slug, not another spelling of "kiosko".
        "not ASCII": make_tenant(slug="kiosko", landing_url=LANDING).slug.replace("k", "\u212a"),
    }[which]
    response = scan(client, slug)
    assert response.status_code == 404
    assert response.get_json() == {
        "success": False,
        "error": "not_found",
        "message": "No such QR code",
    }
    assert db.session.scalars(select(Event)).all() == []


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    "accept, html",
    [
        (BROWSER_ACCEPT, True),  # a phone's browser, straight from the camera
        ("*/*", False),  # curl
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        (None, False),
    ],
)
def test_no_such_code_is_a_page_for_a_browser(client, make_tenant, accept, html):
    tenant = make_tenant()  # no landing page: its printed codes lead nowhere
    headers = {"User-Agent": PHONE, **({"Accept": accept} if accept else {})}
    response = client.get(f"/q/{tenant.slug}", headers=headers)
    assert response.status_code == 404
    assert response.headers["Cache-Control"] == "no-store"
    assert "Accept" in response.vary  # a cache keeps the page and the JSON apart
    if html:
        assert response.mimetype == "text/html"
        assert "Este código QR ya no lleva a ninguna página" in response.get_data(as_text=True)
    else:
        assert response.get_json()["error"] == "not_found"


@pytest.mark.parametrize(
    "user_agent",
    [
        "WhatsApp/2.23.20.0 A",  # the preview of a shared link
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "TelegramBot (like TwitterBot)",
        "Mozilla/5.0 (compatible; Bluesky Cardyb/1.1; +mailto:support@bsky.app)",
        "kakaotalk-scrap/1.0 (+https://devtalk.kakao.com/)",
        "Google-Safety",
        "Googlebot/2.1 (+http://www.google.com/bot.html)",
        "",  # no browser sends none: a script
        "   ",
    ],
)
def test_a_crawler_is_led_on_but_not_counted(client, shop, user_agent):
    response = scan(client, shop.slug, user_agent)
    assert (response.status_code, response.headers["Location"]) == (302, LANDING)
    assert events_of(shop.id) == []


def test_a_scan_without_user_agent_is_led_on_but_not_counted(client, shop):
    response = client.get(f"/q/{shop.slug}")  # the test client sends a User-Agent...
    assert events_of(shop.id) != []  # ...of its own (Werkzeug/…), which counts
    environ = {"HTTP_USER_AGENT": None}
    response = client.get(f"/q/{shop.slug}", environ_overrides=environ)
    assert (response.status_code, response.headers["Location"]) == (302, LANDING)
    assert len(events_of(shop.id)) == 1


@pytest.mark.parametrize(
    "user_agent",
    [
        "a" * 8000,  # crawlerdetect alone took seconds over these
        "1" * 8000,
        "a-" * 4000,
        "a" * 65,
        PHONE + " " + "x" * 512,
    ],
)
def test_a_user_agent_no_browser_sends_is_led_on_at_once_uncounted(client, shop, user_agent):
    # Not handed to crawlerdetect (seconds of one worker's time): not counted either.
    response = scan(client, shop.slug, user_agent)
    assert (response.status_code, response.headers["Location"]) == (302, LANDING)
    assert events_of(shop.id) == []


def test_a_long_but_real_in_app_browser_is_counted(client, shop):
    facebook = (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBDV/iPhone14,5;FBMD/iPhone;"
        "FBSN/iOS;FBSV/17.1;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5;FBRV/537577562;IABMV/1]"
    )
    assert scan(client, shop.slug, facebook).status_code == 302
    assert [event.event_type for event in events_of(shop.id)] == ["qr_scan"]


@pytest.mark.parametrize(
    "user_agent",
    [
        # A code's link shared in a chat and opened in the app's own browser: a person,
        # though crawlerdetect knows the app's name as that of its link previews.
        "Mozilla/5.0 (Linux; Android 13; SM-A042M Build/TP1A.220624.014; wv) AppleWebKit/537.36"
        " (KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.43 Mobile Safari/537.36"
        " WhatsApp/2.23.25.83",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Slack/4.35.131 Chrome/118.0.5993.159 Electron/27.1.3 Safari/537.36",
    ],
)
def test_a_scan_in_an_apps_own_browser_is_counted(client, shop, user_agent):
    assert scan(client, shop.slug, user_agent).status_code == 302
    assert [event.event_type for event in events_of(shop.id)] == ["qr_scan"]


def test_a_visitors_scans_within_seconds_are_one_scan(client, shop, make_tenant):
    """A camera app opening the link twice, or a landing page that leads back to the code
    under another name of the service (a loop): each turn was a scan."""
    other_shop = make_tenant(landing_url=LANDING)
    answers = [scan(client, shop.slug) for _ in range(3)]
    answers.append(scan(client, other_shop.slug))  # another tenant's code: its own scan
    answers.append(scan(client, shop.slug, f"{PHONE} (another phone)"))
    assert [answer.status_code for answer in answers] == [302] * 5  # each led on
    assert [len(events_of(shop.id)), len(events_of(other_shop.id))] == [2, 1]
    # The window past (its keys last seen 11 s ago): the same phone's scan counts again.
    db.session.execute(
        text("UPDATE dedupe_keys SET seen_at = seen_at - interval '11 seconds'")
        if db.engine.dialect.name == "postgresql"
        else text("UPDATE dedupe_keys SET seen_at = datetime(seen_at, '-11 seconds')")
    )
    db.session.commit()
    assert scan(client, shop.slug).status_code == 302
    assert len(events_of(shop.id)) == 3


def test_a_slug_in_capitals_is_that_code(client, shop):
    """Typed from a flyer, or held by another generator's code in capitals."""
    response = scan(client, shop.slug.upper())
    assert (response.status_code, response.headers["Location"]) == (302, LANDING)
    assert [event.event_type for event in events_of(shop.id)] == ["qr_scan"]


@pytest.mark.parametrize(
    "header",
    [
        ("Sec-Purpose", "prefetch"),  # Chromium's speculation rules and link prefetch
        ("Sec-Purpose", "prefetch;prerender"),
        ("Purpose", "prefetch"),
        ("X-Purpose", "preview"),  # Safari's previews
        ("X-Moz", "prefetch"),  # Firefox
    ],
)
def test_a_prefetch_is_led_on_but_not_counted(client, shop, header):
    response = client.get(f"/q/{shop.slug}", headers={"User-Agent": PHONE, header[0]: header[1]})
    assert (response.status_code, response.headers["Location"]) == (302, LANDING)
    assert events_of(shop.id) == []


@pytest.mark.parametrize(
    "fetched_as",
    [
        {"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},  # <img src="/q/…">
        {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},  # a script's fetch()
        {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},  # <iframe src="/q/…">
    ],
)
def test_a_code_another_page_loads_is_led_on_but_not_counted(client, shop, fetched_as):
    """Any site could otherwise add scans to any tenant, one per visitor of its page."""
    headers = {"User-Agent": PHONE, "Sec-Fetch-Site": "cross-site", **fetched_as}
    response = client.get(f"/q/{shop.slug}", headers=headers)
    assert (response.status_code, response.headers["Location"]) == (302, LANDING)
    assert events_of(shop.id) == []
    opened = {"User-Agent": PHONE, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert (
        client.get(f"/q/{shop.slug}", headers={**opened, "Sec-Fetch-Site": "none"}).status_code
        == 302
    )
    assert [event.event_type for event in events_of(shop.id)] == ["qr_scan"]


def test_a_head_request_is_led_on_but_not_counted(client, shop):
    response = client.head(f"/q/{shop.slug}", headers={"User-Agent": PHONE})
    assert (response.status_code, response.headers["Location"]) == (302, LANDING)
    assert events_of(shop.id) == []


def test_scans_over_the_address_limit_still_lead_on(make_app, make_tenant):
    app = make_app(API_RATE_LIMIT="2 per minute")
    client = app.test_client()
    with app.app_context():
        tenant = make_tenant(landing_url=LANDING)
        # four phones behind one address (a visitor's repeat would be one scan anyway)
        answers = [scan(client, tenant.slug, f"{PHONE} #{phone}") for phone in range(4)]
        assert [(a.status_code, a.headers["Location"]) for a in answers] == [(302, LANDING)] * 4
        assert len(events_of(tenant.id)) == 2  # the flood is not counted


def test_a_scan_the_database_cannot_take_still_leads_on(client, shop, monkeypatch):
    def broken_write(*_args, **_kwargs):
        raise RuntimeError("disk on fire")

    # Both ways to the database: through the committer, and written in the request.
    monkeypatch.setattr(GroupCommitter, "_write", broken_write)
    monkeypatch.setattr("tenant_analytics.ingestion.write_jobs", broken_write)
    response = scan(client, shop.slug)
    assert (response.status_code, response.headers["Location"]) == (302, LANDING)
    monkeypatch.undo()
    assert events_of(shop.id) == []


def test_while_the_database_is_away_a_code_leads_where_it_led(make_app, make_tenant, monkeypatch):
    """A customer at the door with a printed code is not shown an error page: the
    scan goes on, uncounted, to the landing page this process last led the code to."""
    pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS=pool, GROUP_COMMIT=False)
    client = app.test_client()
    with app.app_context():
        tenant_id, slug = (tenant := make_tenant(landing_url=LANDING)).id, tenant.slug
        unscanned = make_tenant(landing_url="https://otra.example/").slug
        assert scan(client, slug).status_code == 302
        db.session.close()
        with db.engine.connect():  # the pool's only connection, held: no query gets one
            answer = scan(client, slug)
            browser = client.get(
                f"/q/{unscanned}", headers={"User-Agent": PHONE, "Accept": "text/html"}
            )
            script = scan(client, unscanned)
            # Not for ever: a code taken down meanwhile is only seen in the database.
            monkeypatch.setattr(qr_api, "REMEMBERED_SECONDS", 0)
            forgotten = scan(client, slug)
            monkeypatch.undo()
        assert (answer.status_code, answer.headers["Location"]) == (302, LANDING)
        assert answer.headers["Cache-Control"] == "no-store"
        # A code this process never led anywhere: a page that tries again by itself.
        assert (browser.status_code, browser.headers["Retry-After"]) == (503, "5")
        assert browser.mimetype == "text/html" and 'http-equiv="refresh"' in browser.text
        assert browser.headers["Cache-Control"] == "no-store"
        assert (script.status_code, script.get_json()["error"]) == (503, "unavailable")
        assert forgotten.status_code == 503
        assert len(events_of(tenant_id)) == 1  # the scan while away is not counted
        # Back, the database's answer wins again: a code taken down is a 404 at once.
        db.session.execute(update(Tenant).where(Tenant.id == tenant_id).values(landing_url=None))
        db.session.commit()
        assert scan(client, slug).status_code == 404


@pytest.mark.parametrize("campaign", ["", "<script>", "m" * 65, "mesa 3", "mesa\x00"])
def test_an_unusable_campaign_is_left_out(client, shop, campaign):
    assert scan(client, shop.slug, c=campaign).status_code == 302
    (event,) = events_of(shop.id)
    assert event.metadata_ is None


# -- the owner's code -----------------------------------------------------------------


@pytest.fixture
def owner(shop, make_user, auth_headers):
    return shop, auth_headers(make_user(shop))


def test_owner_gets_the_code_as_svg_or_png(client, owner):
    tenant, headers = owner
    svg = client.get(f"/api/tenants/{tenant.id}/qr", headers=headers)
    assert svg.status_code == 200
    assert svg.mimetype == "image/svg+xml"
    assert b"<svg" in svg.data
    assert svg.headers["X-QR-Target"] == f"http://localhost/q/{tenant.slug}"
    assert svg.cache_control.max_age in (None, 0)  # not the static files' hour

    png = client.get(f"/api/tenants/{tenant.id}/qr?format=png&c=mesa-3", headers=headers)
    assert png.status_code == 200
    assert png.mimetype == "image/png"
    assert png.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert png.headers["X-QR-Target"] == f"http://localhost/q/{tenant.slug}?c=mesa-3"
    assert f"qr-{tenant.slug}-mesa-3.png" in png.headers["Content-Disposition"]
    # The code leads where the redirect counts it.
    target = png.headers["X-QR-Target"].removeprefix("http://localhost")
    assert client.get(target, headers={"User-Agent": PHONE}).headers["Location"] == LANDING


def test_code_holds_the_public_url_when_set(make_app, make_tenant, make_user, auth_headers):
    app = make_app(PUBLIC_URL="https://stats.example.com/")
    with app.app_context():
        tenant = make_tenant(landing_url=LANDING)
        headers = auth_headers(make_user(tenant))
        response = app.test_client().get(f"/api/tenants/{tenant.id}/qr", headers=headers)
        assert response.headers["X-QR-Target"] == f"https://stats.example.com/q/{tenant.slug}"


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("?format=gif", 422, "validation_error"),
        ("?c=mesa%203", 422, "validation_error"),
        ("?c=" + "m" * 65, 422, "validation_error"),
    ],
)
def test_code_request_validation(client, owner, query, status, code):
    tenant, headers = owner
    response = client.get(f"/api/tenants/{tenant.id}/qr{query}", headers=headers)
    assert response.status_code == status
    assert response.get_json()["error"] == code


def test_no_code_in_production_until_the_public_url_is_set(make_app, make_tenant, make_user):
    """Behind a proxy the request's own address may be an internal one (10.0.0.5:8000)."""
    for public_url, status in ((None, 409), ("https://stats.example.com", 200)):
        app = make_app(APP_ENV="production", PUBLIC_URL=public_url)  # the suite's own keys
        with app.app_context():
            tenant = make_tenant(landing_url=LANDING)
            headers = {
                "Authorization": f"Bearer {access_token_for(make_user(tenant), 'a-sign-in')}"
            }
            response = app.test_client().get(f"/api/tenants/{tenant.id}/qr", headers=headers)
            assert response.status_code == status
            if status == 409:
                assert response.get_json()["error"] == "public_url_unset"


def test_no_code_without_a_landing_page(client, make_tenant, make_user, auth_headers):
    tenant = make_tenant()
    response = client.get(f"/api/tenants/{tenant.id}/qr", headers=auth_headers(make_user(tenant)))
    assert response.status_code == 409
    assert response.get_json()["error"] == "no_landing_url"


def test_no_code_for_a_switched_off_tenant(client, make_tenant, make_user, auth_headers):
    """Its code would lead to the "leads nowhere" page: the owner is told, not handed it."""
    tenant = make_tenant(landing_url=LANDING, active=False)
    response = client.get(f"/api/tenants/{tenant.id}/qr", headers=auth_headers(make_user(tenant)))
    assert response.status_code == 409
    assert response.get_json()["error"] == "tenant_inactive"


def test_another_tenants_code_is_a_404(client, shop, make_tenant, make_user, auth_headers):
    headers = auth_headers(make_user(make_tenant()))
    assert client.get(f"/api/tenants/{shop.id}/qr", headers=headers).status_code == 404
    assert client.get(f"/api/tenants/{shop.id}/qr").status_code == 401


# -- setting the landing page ---------------------------------------------------------


def test_owner_sets_and_clears_the_landing_url(client, make_tenant, make_user, auth_headers):
    tenant = make_tenant()
    headers = auth_headers(make_user(tenant))
    url = f"/api/tenants/{tenant.id}"
    set_to = client.patch(url, headers=headers, json={"landing_url": "https://Pan.example/menú"})
    assert set_to.status_code == 200
    assert set_to.get_json()["tenant"]["landing_url"] == "https://pan.example/men%C3%BA"
    assert scan(client, tenant.slug).headers["Location"] == "https://pan.example/men%C3%BA"
    cleared = client.patch(url, headers=headers, json={"landing_url": None})
    assert cleared.get_json()["tenant"]["landing_url"] is None
    assert scan(client, tenant.slug).status_code == 404


@pytest.mark.parametrize(
    "landing_url",
    [
        "javascript:alert(1)",
        "javascript://pan.example/%0Aalert(1)",
        "ftp://pan.example/",
        "//pan.example/",
        "https://",
        "https://bank.example@evil.example/",  # credentials hide where a code leads
        "https://pan.example/" + "a" * 2048,
        42,
        # hosts a Location header cannot carry (IDNA has no form for them)
        "http://a..b/",
        "http://.../",
        "http://.a/",
        "http://" + "a" * 64 + ".example/",
        "http://" + ("a" * 62 + ".") * 4 + "com/",  # 255 characters: DNS takes 253
        "https://pan.example:0/",  # no browser opens port 0
    ],
)
def test_landing_url_validation(client, make_tenant, make_user, auth_headers, landing_url):
    tenant = make_tenant()
    response = client.patch(
        f"/api/tenants/{tenant.id}",
        headers=auth_headers(make_user(tenant)),
        json={"landing_url": landing_url},
    )
    assert response.status_code == 422
    assert "landing_url" in response.get_json()["errors"]
    db.session.expire_all()
    assert db.session.get(Tenant, tenant.id).landing_url is None


@pytest.mark.parametrize(
    ("public_url", "landing_url", "refused"),
    [
        (None, "http://localhost/q/another-shop", True),
        (None, "http://LOCALHOST/q/another-shop?c=1", True),
        (None, "http://localhost/demo/", False),
        (None, "https://stats.example.com/q/x", False),
        ("https://stats.example.com", "https://stats.example.com/q/x", True),
        ("https://stats.example.com/a", "https://stats.example.com/a/q/x", True),
        ("https://stats.example.com/a", "https://stats.example.com/q/x", False),
        ("https://stats.example.com/a", "https://stats.example.com/aq/x", False),  # not /a/
        # A proxy in front merges slashes (nginx's default) before it matches the prefix
        ("https://stats.example.com/a", "https://stats.example.com//a/q/x", True),
        ("https://stats.example.com/a", "https://stats.example.com/%2Fa/q/x", True),
        # Spelled as the server reads them: gunicorn decodes the path, werkzeug merges //
        (None, "http://localhost/%71/another-shop", True),
        (None, "http://localhost/q%2Fanother-shop", True),
        (None, "http://localhost//q/another-shop", True),
        (None, "http://localhost/q/another-shop/", True),  # werkzeug routes it to /q/<slug>
        ("https://stats.example.com", "https://stats.example.com/%71/x", True),
        ("https://stats.example.com", "https://STATS.example.com:8443/q/x", True),
        ("https://stats.example.com", "https://stats.example.com./q/x", True),  # root's dot
        ("https://stats.example.com.", "https://stats.example.com/q/x", True),
        # Loopback in any spelling is this machine, and never a business's page
        ("https://stats.example.com", "http://127.0.0.1:5077/q/x", True),
        ("https://stats.example.com", "http://[::1]:5077/q/x", True),
        ("https://stats.example.com", "http://[::ffff:127.0.0.1]:5077/q/x", True),
        ("https://stats.example.com", "http://app.localhost/q/x", True),
        ("https://stats.example.com", "http://0.0.0.0:5077/q/x", True),  # unspecified
        ("https://stats.example.com", "http://[::]:5077/q/x", True),
        ("https://stats.example.com", "http://127.0.0.1:5077/demo/", False),
    ],
)
def test_a_landing_url_may_not_loop_back_to_a_qr_redirect(
    make_app, make_tenant, make_user, auth_headers, public_url, landing_url, refused
):
    app = make_app(PUBLIC_URL=public_url)
    with app.app_context():
        tenant = make_tenant()
        response = app.test_client().patch(
            f"/api/tenants/{tenant.id}",
            headers=auth_headers(make_user(tenant)),
            json={"landing_url": landing_url},
        )
        assert response.status_code == (422 if refused else 200), response.get_json()
        if refused:
            assert "landing_url" in response.get_json()["errors"]


def test_a_stored_landing_url_no_header_can_carry_is_no_code_not_a_500(client, make_tenant):
    """Stored before such hosts were refused: the scan is a 404 page, not a bare 500."""
    tenant = make_tenant(landing_url="https://pan.example/")
    db.session.execute(
        Tenant.__table__.update().where(Tenant.id == tenant.id).values(landing_url="http://a..b/")
    )
    db.session.commit()
    answer = scan(client, tenant.slug)
    assert answer.status_code == 404
    assert "Location" not in answer.headers


def test_cli_sets_the_landing_url(runner):
    args = ["tenant", "create", "--name", "Pan", "--slug", "pan"]
    created = runner.invoke(args=[*args, "--landing-url", "https://pan.example/"])
    assert created.exit_code == 0, created.output
    assert '"landing_url": "https://pan.example/"' in created.output
    refused = runner.invoke(args=[*args[:-1], "pan-2", "--landing-url", "javascript:alert(1)"])
    assert refused.exit_code == 2 and "--landing-url" in refused.output


@pytest.mark.parametrize(
    "landing_url",
    [
        "http://127.0.0.1:5000/q/pan-2",
        "http://localhost:5000/%71/pan",
        "https://stats.example.com//q/x",
    ],
)
def test_cli_refuses_a_landing_url_that_loops(make_app, landing_url):
    app = make_app(PUBLIC_URL="https://stats.example.com")
    args = ["tenant", "create", "--name", "Pan", "--slug", "pan-2", "--landing-url", landing_url]
    refused = app.test_cli_runner().invoke(args=args)
    assert refused.exit_code == 2, refused.output
    assert "'--landing-url': may not be a QR redirect" in refused.output
    with app.app_context():
        assert db.session.scalars(select(Tenant)).all() == []


def test_a_scan_whose_connection_is_lost_after_it_was_counted_still_leads_on(
    make_app, make_tenant, is_postgres, monkeypatch
):
    """The database dropped the request's connection once the scan was written (a
    restart, pg_terminate_backend): closing the session's read fails after the answer
    is made. The answer stands, the redirect, not the server's bare HTML 500."""
    if not is_postgres:
        pytest.skip("a connection terminated by the server is PostgreSQL's")
    real_ingest = qr_api.ingest_from_request

    def ingest_then_lose_the_connection(*args):
        stored = real_ingest(*args)
        pid = db.session.scalar(text("SELECT pg_backend_pid()"))
        with db.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return stored

    monkeypatch.setattr(qr_api, "ingest_from_request", ingest_then_lose_the_connection)
    app = make_app()
    with app.app_context():
        tenant_id, slug = (tenant := make_tenant(landing_url=LANDING)).id, tenant.slug
    # Outside any app context, as served: each request's own ends with it.
    answer = scan(app.test_client(), slug)
    assert (answer.status_code, answer.headers["Location"]) == (302, LANDING)
    monkeypatch.undo()
    # the pool recovered (another phone: the first's repeat within seconds is one scan)
    assert scan(app.test_client(), slug, f"{PHONE} (another phone)").status_code == 302
    with app.app_context():
        assert len(events_of(tenant_id)) == 2


def test_a_scan_the_database_fails_under_leads_on_without_asking_it_again(
    make_app, make_tenant, monkeypatch, caplog
):
    """The write failed as the database went away: its rollback expired the tenant, and
    reading its landing page again needed the database (a JSON 503 to a phone)."""
    pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS=pool, GROUP_COMMIT=False)
    held = []

    def database_gone(*_args):
        db.session.rollback()  # as a failed write's does: the tenant expired
        held.append(db.engine.connect())  # the pool's only connection: no query gets one
        raise RuntimeError("the database went away")

    monkeypatch.setattr(qr_api, "ingest_from_request", database_gone)
    with app.app_context():
        slug = make_tenant(landing_url=LANDING).slug
        db.session.close()
        answers = [scan(app.test_client(), slug) for _ in range(2)]
        for connection in held:
            connection.close()
    assert [(a.status_code, a.headers.get("Location")) for a in answers] == [(302, LANDING)] * 2


def test_scans_led_on_uncounted_in_an_outage_are_logged_once_a_minute(
    make_app, make_tenant, caplog
):
    pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS=pool, GROUP_COMMIT=False)
    client = app.test_client()
    with app.app_context():
        slug = make_tenant(landing_url=LANDING).slug
        assert scan(client, slug).status_code == 302  # its destination now known here
        db.session.close()
        with db.engine.connect():  # the pool's only connection, held
            answers = [scan(client, slug) for _ in range(3)]
    assert [a.status_code for a in answers] == [302] * 3
    lines = [r.getMessage() for r in caplog.records if "QR scan led on" in r.getMessage()]
    assert lines == ["QR scan led on uncounted: no database connection free in time"]
