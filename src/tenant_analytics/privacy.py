"""Visitor identity without storing who the visitor is.

A plain SHA-256 of an IPv4 address can be reversed by hashing all 2^32
addresses; an HMAC keyed with ``VISITOR_HASH_KEY`` cannot, as long as the key
stays outside the database.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Any
from urllib.parse import urlsplit

VISITOR_HASH_LENGTH = 45
RATE_LIMIT_KEY_LENGTH = 32
USER_AGENT_MAX = 512
REFERRER_MAX = 1024


def without_port(address: str) -> str:
    """The client address alone where a proxy appended its port ("203.0.113.9:4444",
    "[2001:db8::1]:443", as Azure's does): one visitor's connections stay one visitor."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host if not rest or rest.startswith(":") else address
    if address.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has several
        return address.partition(":")[0]
    return address


class ClientPortStripped:
    """WSGI middleware, under ProxyFix: REMOTE_ADDR without a port the proxy added."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        address = environ.get("REMOTE_ADDR")
        if address:
            environ["REMOTE_ADDR"] = without_port(address)
        return self.app(environ, start_response)


def canonical_address(address: str | None) -> str | None:
    """One spelling per address: ``::ffff:203.0.113.5`` (a dual-stack proxy's) is that
    IPv4 address, and IPv6 is written short and in lower case; else as given."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def limited_client(address: str | None) -> str:
    """Who a per-client rate limit counts: the IPv4 address, or the IPv6 /64 around it.

    One IPv6 host usually holds a whole /64 and could take a fresh address for every
    try; the /64 is what a single client can be told apart by.
    """
    address = canonical_address(address)
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "unknown"
    if isinstance(ip, ipaddress.IPv4Address):
        return address
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def visitor_hash(key: str, tenant_id: int, client_ip: str | None, user_agent: str | None) -> str:
    """First 45 hex characters of HMAC-SHA256(key, tenant id + IP + user agent)."""
    client_ip = canonical_address(client_ip)
    message = f"{tenant_id}\x1f{client_ip or ''}\x1f{user_agent or ''}".encode()
    digest = hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
    return digest[:VISITOR_HASH_LENGTH]


def rate_limit_key(key: str, *parts: str) -> str:
    """A rate-limit bucket name for client-identifying values (address, email), not the values.

    The limiter's storage keeps bucket names in the clear; 32 hex characters of an HMAC
    keyed with ``VISITOR_HASH_KEY`` still tell clients apart. The label keeps these hashes
    apart from visitor hashes of the same address.
    """
    # "surrogatepass": an email that is no text ("\ud800@x") is a key all the same; its
    # error inside a key function was taken for the limiter's storage failing.
    message = "\x1f".join(("rate-limit", *parts)).encode("utf-8", "surrogatepass")
    digest = hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
    return digest[:RATE_LIMIT_KEY_LENGTH]


def truncate(value: str | None, limit: int) -> str | None:
    """Cut a client-supplied header to a storable length; empty becomes None."""
    if not value:
        return None
    return value[:limit]


# Web pages, and the apps Android and iOS name as referrers (a link tapped in Gmail).
REFERRER_SCHEMES = ("http", "https", "android-app", "ios-app")


def referrer_origin(referrer: str | None) -> str | None:
    """Where the visitor came from, without the page: the Referer's scheme and host.

    A page that sets ``Referrer-Policy: unsafe-url`` sends its whole address, whose
    path and query may say who the visitor is (``?email=…``, a reset token): only
    ``https://host[:port]/`` is kept, whatever the policy. None when it names no host,
    or neither a web page nor an app (``javascript://…``: a report may show it as a link).
    """
    if not referrer:
        return None
    try:
        parts = urlsplit(referrer.strip())
        host, port = parts.hostname, parts.port
    except ValueError:  # an unclosed IPv6 bracket, a port out of range
        return None
    if parts.scheme.lower() not in REFERRER_SCHEMES or not host:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{parts.scheme.lower()}://{netloc}/"
