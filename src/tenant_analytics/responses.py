"""What each endpoint answers with when it succeeds, for the OpenAPI document.

The reports' shapes are their query functions' own return types; the envelopes the
views put around them, and the small answers, are here. The suite checks real
answers against the document built from these (tests/test_openapi.py).
"""

from __future__ import annotations

from typing import Literal, NotRequired

from typing_extensions import TypedDict  # pydantic reads no typing.TypedDict on 3.11

from .queries.landing import LandingSummary
from .queries.store_alerts import Alert


class Tracked(TypedDict):
    """Stored (201), or not (200): a repeat of an idempotency key already stored, or
    an event a bot's browser sent from a page."""

    success: Literal[True]
    status: Literal["ok", "duplicate_ignored", "bot_ignored"]


class BatchRejection(TypedDict):
    """An item not stored: its index in ``events`` and each field's messages."""

    index: int
    errors: dict[str, list[str]]


class BatchStored(TypedDict):
    """``stored`` new events, ``duplicates`` repeats of stored idempotency keys; with a
    200, ``bot_ignored`` valid events not stored, a bot's browser sent them from a page."""

    success: Literal[True]
    stored: int
    duplicates: int
    rejected: list[BatchRejection]
    bot_ignored: NotRequired[int]


class V1Accepted(TypedDict):
    success: Literal[True]
    message: str


class ConversionAnswer(TypedDict):
    """``transaction_id`` as sent (null when JSON could not carry it back)."""

    status: Literal["ok", "skipped"]
    transaction_id: str | int | None


class InteractionAnswer(TypedDict):
    status: Literal["success", "accepted"]


class Health(TypedDict):
    status: Literal["ok"]
    database: Literal["ok"]
    rate_limit_storage: Literal["ok", "unavailable"]


class AccessToken(TypedDict):
    """A bearer token (JWT) for the API, good for ``expires_in`` seconds (left out when
    the server's tokens never expire)."""

    access_token: str
    token_type: Literal["Bearer"]
    expires_in: NotRequired[int]


class Tokens(AccessToken):
    """With the refresh token, which asks ``POST /api/auth/refresh`` for a new access token."""

    refresh_token: str


class LandingDashboard(TypedDict):
    """Days are local to the tenant's ``timezone`` (``GET /api/tenants/{tenant_id}``)."""

    success: Literal[True]
    data: LandingSummary


class Today(TypedDict):
    """Today, the local day in the tenant's time zone: ``date`` says which (ISO 8601)."""

    success: Literal[True]
    date: str
    visitors_today: int
    whatsapp_clicks: int
    qr_scans: int
    products_viewed: int
    call_clicks: int


class Alerts(TypedDict):
    """What needs the owner's attention now; a single ``all_clear`` when nothing does."""

    alerts: list[Alert]


class TenantView(TypedDict):
    """A tenant's settings. ``timezone`` is the one every report's local days are in."""

    id: int
    public_id: str
    slug: str
    name: str
    active: bool
    suspended: bool  # switched off by an operator: only an operator switches it on
    timezone: str
    landing_url: str | None
    currency: str
    vip_monetary_threshold: float


class TenantList(TypedDict):
    success: Literal[True]
    tenants: list[TenantView]


class OneTenant(TypedDict):
    success: Literal[True]
    tenant: TenantView


class ProductView(TypedDict):
    """A product; ``price`` in the tenant's currency, ``slug`` null when none was given."""

    id: int
    tenant_id: int
    name: str
    slug: str | None
    price: float | None
    active: bool


class ProductList(TypedDict):
    success: Literal[True]
    products: list[ProductView]


class OneProduct(TypedDict):
    success: Literal[True]
    product: ProductView
