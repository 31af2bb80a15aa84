"""Where a tenant's QR codes may lead: anywhere but back into one of this service's own
QR redirects, which would send every scan round again and count it each time."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, RequestRedirect
from werkzeug.urls import iri_to_uri

QR_SCAN_ENDPOINT = "qr.scan"


def _host(host: str | None) -> str:
    """A host name as DNS reads it: any case, with or without the root's final dot."""
    return (host or "").lower().rstrip(".")


def is_loopback(host: str | None) -> bool:
    """localhost in any of its spellings: to a phone, its own self, never a business."""
    host = _host(host)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1
    return address.is_loopback or address.is_unspecified


def can_lead_to(url: str) -> bool:
    """Whether a redirect's Location header can carry ``url``: werkzeug writes its host
    in IDNA, which has no form for an empty or over-long label (``http://a..b/``)."""
    try:
        iri_to_uri(url)
    except ValueError:  # UnicodeError among them; a port werkzeug cannot read
        return False
    return True


def _endpoint(url_map: Map, host: str, path: str) -> str | None:
    """The endpoint this app would serve ``path`` with, after its own redirects
    (``//q/x`` merged to ``/q/x``); None when it serves none."""
    adapter = url_map.bind(host or "localhost")
    for _ in range(3):
        try:
            endpoint, _args = adapter.match(path, method="GET")
        except RequestRedirect as moved:
            path = unquote(urlsplit(moved.new_url).path)
            continue
        except HTTPException:
            return None
        return str(endpoint)
    return None


def is_own_qr_redirect(url: str, own_bases: Iterable[str], url_map: Map) -> bool:
    """Whether ``url`` reaches a QR redirect of this service.

    ``own_bases`` are the addresses the service answers on (its ``PUBLIC_URL``, the
    one a request came in on); a loopback host counts as one of them whatever its
    port. The path is read as the server reads it: percent-decoded (``/%71/x`` is
    ``/q/x``) and routed by the app's own URL map, slashes merged as it merges them.
    """
    target = urlsplit(url)
    host = _host(target.hostname)
    # Merged before the prefix is looked for: a proxy in front (nginx's merge_slashes)
    # serves //stats/q/x as /stats/q/x.
    path = re.sub("/{2,}", "/", unquote(target.path)) or "/"
    prefixes = {""} if is_loopback(host) else set()
    for base in own_bases:
        ours = urlsplit(base)
        if host == _host(ours.hostname):
            prefixes.add(ours.path.rstrip("/"))
    for prefix in prefixes:
        if prefix and not (path == prefix or path.startswith(prefix + "/")):
            continue
        if _endpoint(url_map, host, path[len(prefix) :] or "/") == QR_SCAN_ENDPOINT:
            return True
    return False
