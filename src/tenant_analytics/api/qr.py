"""QR codes: the tracked redirect a printed code leads to, and the code itself for owners."""

from __future__ import annotations

import io
import re
import time

import segno
from flask import Blueprint, current_app, redirect, render_template, request, send_file, url_for
from flask_jwt_extended import jwt_required
from sqlalchemy.exc import SQLAlchemyError

from .. import landing_urls
from ..catalogue import QR_SCAN
from ..crawlers import is_bot_browser
from ..database_errors import is_outage, log_not_recorded
from ..errors import ApiError, error_response, invalid_field
from ..event_builders import QR_SCAN_PREFIX, REPEAT_SCAN_WINDOW
from ..extensions import db
from ..ingestion import NewEvent
from ..logs import get_logger
from ..models import canonical_slug, is_tenant_slug
from ..privacy import visitor_hash
from ..ratelimits import qr_scan_counted
from ..tenancy import owned_tenant_or_404, public_tenant_by_slug
from .requests import client_info, ingest_from_request

bp = Blueprint("qr", __name__)
log = get_logger(__name__)

# ?c= names where a code hangs ("mesa-3", "flyer-nov"): short, so the code stays scannable.
CAMPAIGN = re.compile(r"[A-Za-z0-9._-]{1,64}")
IMAGE_TYPES = {"svg": "image/svg+xml", "png": "image/png"}
NO_SUCH_CODE = "No such QR code"
RETRY_SECONDS = 5  # the page that says "a moment" reloads itself after as long
# How long a code's last destination may be followed while the database is away: a
# code taken down (a tenant deactivated) in the meantime is only seen in the database.
REMEMBERED_SECONDS = 3600


def _no_such_code():
    """A 404 a person with a phone can read; JSON, as everywhere, for any other client."""
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        response, status = current_app.make_response(render_template("qr_not_found.html")), 404
    else:
        response, status = error_response(404, NO_SUCH_CODE, code="not_found")
    # Not kept by a cache: the code may lead somewhere tomorrow; one answer per Accept.
    response.headers["Cache-Control"] = "no-store"
    response.vary.add("Accept")
    return response, status


def _campaign_arg() -> str | None:
    campaign = request.args.get("c")
    return campaign if campaign and CAMPAIGN.fullmatch(campaign) else None


@bp.get("/q/<slug>")
def scan(slug: str):
    """Count a scan of the tenant's QR code and send the visitor on to its landing page.

    Not counted, but still redirected: a HEAD (a link checker, not a person), a crawler,
    a request another site's page makes (an image, a frame, a script's fetch: any page
    could add scans so), the visitor's scan again within REPEAT_SCAN_WINDOW, a scan over
    the address's limit, or one the database could not
    take (the customer is never stopped at the door). While the database is away, a code
    goes to the page this process led it to within the last hour.
    """
    slug = canonical_slug(slug)  # a code typed from a flyer may be in capitals
    if not is_tenant_slug(slug):
        return _no_such_code()
    destinations = _known_destinations()
    try:
        tenant = public_tenant_by_slug(db.session, slug)
    except SQLAlchemyError as exc:
        db.session.rollback()
        if not is_outage(exc):
            raise
        led, seen = destinations.get(slug, (None, 0.0))
        if led is None or time.monotonic() - seen > REMEMBERED_SECONDS:
            return _unavailable(exc)
        # A printed code in a customer's hand: on to where it led a moment ago, uncounted.
        log_not_recorded(log, "QR scan led on uncounted", exc)
        return _led_on(led)
    # (a landing_url stored before it was checked can have no Location header)
    if tenant is None or not tenant.landing_url or not landing_urls.can_lead_to(tenant.landing_url):
        destinations.pop(slug, None)
        return _no_such_code()
    # Read now: a failed write below expires the tenant, and reading it again then
    # would need the database that just failed.
    landing_url = tenant.landing_url
    destinations[slug] = (landing_url, time.monotonic())
    # The address's limit first: it also bounds the crawler check each address can ask for.
    counted = (
        request.method == "GET" and not _prefetch() and _opened_as_a_page() and qr_scan_counted()
    )
    if counted and not is_bot_browser(request.headers.get("User-Agent")):
        try:
            ingest_from_request(tenant, [_scan_event(tenant.id)])
        except Exception as exc:
            db.session.rollback()
            log_not_recorded(log, "QR scan not recorded", exc)
    return _led_on(landing_url)


def _scan_event(tenant_id: int) -> NewEvent:
    campaign = _campaign_arg()
    client = client_info()
    visitor = visitor_hash(
        current_app.config["VISITOR_HASH_KEY"], tenant_id, client.ip, client.user_agent
    )
    return NewEvent(
        QR_SCAN,
        {"campaign": campaign} if campaign else None,
        dedupe_key=f"{QR_SCAN_PREFIX}{visitor}",
        dedupe_window=REPEAT_SCAN_WINDOW,
    )


def _prefetch() -> bool:
    """A browser fetching the link ahead of a tap that may never come (speculation rules,
    link prefetch, Safari's preview): led on, not a scan."""
    names = ("Sec-Purpose", "Purpose", "X-Purpose", "X-Moz")
    purpose = " ".join(request.headers.get(name, "") for name in names).lower()
    return "prefetch" in purpose or "preview" in purpose


def _opened_as_a_page() -> bool:
    """The code opened in the browser's own window, as a camera or a tapped link opens
    it; not an image, a frame or a fetch some page asks for, which a browser's Sec-Fetch
    headers say. A browser too old to send them is taken as opening a page."""
    mode = request.headers.get("Sec-Fetch-Mode", "navigate")
    destination = request.headers.get("Sec-Fetch-Dest", "document")
    return mode == "navigate" and destination == "document"


def _led_on(landing_url: str):
    response = redirect(landing_url, 302)
    response.headers["Cache-Control"] = "no-store"  # every scan comes back here
    return response


def _known_destinations() -> dict[str, tuple[str, float]]:
    """Each scanned slug's landing page as this process last read it, and when (one per
    tenant with a code)."""
    return current_app.extensions.setdefault("qr_destinations", {})


def _unavailable(exc: SQLAlchemyError):
    """The database away and the code's destination unknown here: a page that retries
    itself for a phone; the JSON API's 503 for any other client."""
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) != "text/html":
        raise exc
    log_not_recorded(log, "QR scan not led on", exc)
    page = render_template("qr_unavailable.html", retry_seconds=RETRY_SECONDS)
    response = current_app.make_response((page, 503))
    response.headers["Retry-After"] = str(RETRY_SECONDS)
    response.headers["Cache-Control"] = "no-store"
    response.vary.add("Accept")
    return response


@bp.get("/api/tenants/<int:tenant_id>/qr")
@jwt_required()
def qr_code(tenant_id: int):
    """The tenant's QR code as SVG (default) or PNG: ``?format=png&c=mesa-3``."""
    tenant = owned_tenant_or_404(tenant_id)
    if not tenant.active:
        raise ApiError(
            409,
            "The tenant is switched off: its codes lead nowhere until it is on again.",
            code="tenant_inactive",
        )
    if not tenant.landing_url:
        raise ApiError(
            409,
            "Set the tenant's landing_url first: the code leads there.",
            code="no_landing_url",
        )
    if current_app.config["APP_ENV"] == "production" and not current_app.config["PUBLIC_URL"]:
        # Behind a proxy the request's own address may be an internal one: a printed code
        # cannot be corrected later.
        raise ApiError(
            409,
            "Set PUBLIC_URL to the service's public address before printing QR codes.",
            code="public_url_unset",
        )
    kind = request.args.get("format", "svg")
    if kind not in IMAGE_TYPES:
        raise invalid_field("format", "format must be 'svg' or 'png'.")
    campaign = request.args.get("c")
    if campaign is not None and not CAMPAIGN.fullmatch(campaign):
        raise invalid_field("c", "c must be 1 to 64 letters, digits, '.', '_' or '-'.")
    target = _scan_url(tenant.slug, campaign)
    image = io.BytesIO()
    segno.make_qr(target, error="m").save(
        image, kind=kind, scale=10 if kind == "png" else 4, border=4
    )
    image.seek(0)
    name = f"qr-{tenant.slug}{'-' + campaign if campaign else ''}.{kind}"
    # Not the static files' hour in any cache: the code follows the tenant's slug.
    response = send_file(image, mimetype=IMAGE_TYPES[kind], download_name=name, max_age=0)
    response.headers["X-QR-Target"] = target
    return response


def is_own_qr_redirect(url: str) -> bool:
    """Whether ``url`` leads back into one of this service's QR redirects (see
    ``landing_urls``), judged by PUBLIC_URL and the address this request came in on."""
    bases = [current_app.config["PUBLIC_URL"] or request.host_url, request.host_url]
    return landing_urls.is_own_qr_redirect(url, bases, current_app.url_map)


def _scan_url(slug: str, campaign: str | None) -> str:
    """The address the code holds: PUBLIC_URL's, else the one this request came in on."""
    path = url_for("qr.scan", slug=slug, c=campaign)
    base = current_app.config["PUBLIC_URL"] or request.host_url
    return base.rstrip("/") + path
