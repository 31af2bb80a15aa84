"""The one catalogue of event types: what each accepted type means.

Every endpoint stores the type it was sent (so nothing is lost). The landing
dashboards count by *kind*, so a WhatsApp tap counts the same whether it came
from the landing snippet (``click_whatsapp``) or the v1 API (``whatsapp_click``);
the store reports count the store's own types, as their documents name them
(a v1 ``cart_add`` is no ``add_to_cart`` there).
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """What an event means, independent of the name a client used for it."""

    VIEW = "view"
    WHATSAPP_TAP = "whatsapp_tap"
    CALL = "call"
    MAPS = "maps"
    CART_ADD = "cart_add"
    SHARE = "share"
    CONVERSION = "conversion"
    PURCHASE = "purchase"
    QR_SCAN = "qr_scan"
    CURRENCY_TOGGLE = "currency_toggle"
    TIME_ON_PAGE = "time_on_page"
    PRODUCT_CLICK = "product_click"
    PRODUCT_VIEW = "product_view"
    CHECKOUT = "checkout"
    PAYMENT_INFO = "payment_info"
    ORDER_COMPLETED = "order_completed"
    ERROR = "error"
    WHATSAPP_PURCHASE = "whatsapp_purchase"


EVENT_KINDS: dict[str, Kind] = {
    # Landing-page snippet (POST /api/analytics/track)
    "pageview": Kind.VIEW,
    "click_whatsapp": Kind.WHATSAPP_TAP,
    "click_call": Kind.CALL,
    "click_toggle_currency": Kind.CURRENCY_TOGGLE,
    "time_on_page": Kind.TIME_ON_PAGE,
    "qr_scan": Kind.QR_SCAN,
    "product_click": Kind.PRODUCT_CLICK,
    # v1 API (/api/v1/analytics/track, /api/v1/analytics/conversion, /api/v1/interactions)
    "view": Kind.VIEW,
    "whatsapp_click": Kind.WHATSAPP_TAP,
    "call": Kind.CALL,
    "call_click": Kind.CALL,
    "location_view": Kind.MAPS,
    "maps_click": Kind.MAPS,
    "cart_add": Kind.CART_ADD,
    "social_share": Kind.SHARE,
    "conversion": Kind.CONVERSION,
    "purchase": Kind.PURCHASE,
    # Store analytics (POST /api/analytics/track with store fields)
    "page_view": Kind.VIEW,
    "product_view": Kind.PRODUCT_VIEW,
    "add_to_cart": Kind.CART_ADD,
    "begin_checkout": Kind.CHECKOUT,
    "checkout_started": Kind.CHECKOUT,
    "payment_info_entered": Kind.PAYMENT_INFO,
    "order_completed": Kind.ORDER_COMPLETED,
    "payment_error": Kind.ERROR,
    "checkout_error": Kind.ERROR,
    "payment_confirmation_error": Kind.ERROR,
    "address_error": Kind.ERROR,
    "whatsapp_cart_click": Kind.WHATSAPP_TAP,
    "whatsapp_purchase": Kind.WHATSAPP_PURCHASE,
}

# The landing snippet's types, named where code refers to one of them.
PAGEVIEW = "pageview"
CLICK_WHATSAPP = "click_whatsapp"
CLICK_CALL = "click_call"
CLICK_TOGGLE_CURRENCY = "click_toggle_currency"
TIME_ON_PAGE = "time_on_page"  # its metadata carries seconds
QR_SCAN = "qr_scan"  # also what the QR redirect (GET /q/<slug>) records
PRODUCT_CLICK = "product_click"
LANDING_TYPES = (
    PAGEVIEW,
    CLICK_WHATSAPP,
    CLICK_CALL,
    CLICK_TOGGLE_CURRENCY,
    TIME_ON_PAGE,
    QR_SCAN,
    PRODUCT_CLICK,
)
# The store's types, named where code refers to one of them.
PAGE_VIEW = "page_view"
PRODUCT_VIEW = "product_view"
ADD_TO_CART = "add_to_cart"
BEGIN_CHECKOUT = "begin_checkout"
PURCHASE = "purchase"
CHECKOUT_STARTED = "checkout_started"
PAYMENT_INFO_ENTERED = "payment_info_entered"
ORDER_COMPLETED = "order_completed"
PAYMENT_ERROR = "payment_error"
CHECKOUT_ERROR = "checkout_error"
PAYMENT_CONFIRMATION_ERROR = "payment_confirmation_error"
ADDRESS_ERROR = "address_error"
WHATSAPP_CART_CLICK = "whatsapp_cart_click"
WHATSAPP_PURCHASE = "whatsapp_purchase"
STORE_TYPES = (
    PAGE_VIEW,
    PRODUCT_VIEW,
    ADD_TO_CART,
    BEGIN_CHECKOUT,
    PURCHASE,
    CHECKOUT_STARTED,
    PAYMENT_INFO_ENTERED,
    ORDER_COMPLETED,
    PAYMENT_ERROR,
    CHECKOUT_ERROR,
    PAYMENT_CONFIRMATION_ERROR,
    ADDRESS_ERROR,
    WHATSAPP_CART_CLICK,
    WHATSAPP_PURCHASE,
)
# A store visit's way to a sale, as the funnel report counts it.
FUNNEL_STEPS = (PAGE_VIEW, PRODUCT_VIEW, ADD_TO_CART, BEGIN_CHECKOUT, PURCHASE)
# What POST /api/analytics/track accepts: the landing snippet's and the store's types.
TRACK_TYPES = LANDING_TYPES + STORE_TYPES
V1_TRACK_TYPES = (
    "whatsapp_click",
    "call",
    "location_view",
    "cart_add",
    "social_share",
    "conversion",
    "purchase",
)
V1_INTERACTION_TYPES = ("view", "whatsapp_click", "call_click", "maps_click")
# Events that close a sale: the landing dashboard's conversions, their revenue summed; a
# beacon's transaction id is one sale of either.
REVENUE_KINDS = (Kind.CONVERSION, Kind.PURCHASE)

# time_on_page durations above this are clamped: a tab left open overnight is not a visit.
MAX_TIME_ON_PAGE_SECONDS = 4 * 60 * 60


def types_of(*kinds: Kind) -> tuple[str, ...]:
    """Every accepted event type that means one of ``kinds``."""
    return tuple(name for name, kind in EVENT_KINDS.items() if kind in kinds)
