"""Request bodies, validated with pydantic. One model per endpoint body."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    AnyUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    UrlConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_extra_types.currency_code import Currency as ISO4217Currency

from .catalogue import (
    MAX_TIME_ON_PAGE_SECONDS,
    PURCHASE,
    STORE_TYPES,
    TIME_ON_PAGE,
    TRACK_TYPES,
    V1_INTERACTION_TYPES,
    V1_TRACK_TYPES,
)
from .landing_urls import can_lead_to
from .models import LANDING_URL_LENGTH, MAX_ROW_ID, TENANT_SLUG_LENGTH, canonical_slug

TenantId = Annotated[int, Field(strict=True, gt=0, le=MAX_ROW_ID)]
MAX_METADATA_DEPTH = 8


def _storable_json(value: Any, depth: int = 0) -> Any:
    """Reject deep nesting and what JSONB cannot store: NUL, lone surrogates, NaN, Infinity."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
    if isinstance(value, str):
        _storable_text(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable_json(key, depth + 1)
            _storable_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _storable_json(item, depth + 1)
    return value


def _storable_text(value: str) -> str:
    """Text the database can store: no NUL character and no lone UTF-16 surrogate.

    JSON may escape either ("\\u0000", "\\ud800"); neither can be encoded for storage.
    """
    if "\x00" in value:
        raise ValueError("may not contain NUL characters")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("may not contain unpaired surrogates (invalid Unicode)") from None
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(_storable_json)]
# The v1 contract's clients are PHP's: json_encode([]) writes an empty map as [].
PhpMetadata = Annotated[
    Metadata,
    BeforeValidator(lambda value: {} if value == [] else value),
    WithJsonSchema(  # items and additionalProperties said: generators read none as "nothing"
        {
            "anyOf": [
                {"type": "object", "additionalProperties": True},
                {"type": "array", "maxItems": 0, "items": {}, "description": "none"},
            ]
        }
    ),
]
# Units of account and funds ISO 4217 lists, which no sale is paid in: the African
# Development Bank's (XUA), the SUCRE (XSU), US next-day dollars (USN), and the indexed
# units beside a currency (CLF, COU, BOV, UYI, UYW, MXV). Not the WIR francs and euros
# (CHW, CHE): Swiss businesses are paid in them.
NOT_PAID_IN = frozenset({"XUA", "XSU", "USN", "CLF", "COU", "BOV", "UYI", "UYW", "MXV"})
# A code of ISO 4217 in any case, upper-cased; not the codes of no money (XXX, XTS),
# metals (XAU) or funds (XDR), as the library has it, nor those above.
CURRENCY_CODES: list[str] = [
    code for code in TypeAdapter(ISO4217Currency).json_schema()["enum"] if code not in NOT_PAID_IN
]


def _paid_in(code: str) -> str:
    if code in NOT_PAID_IN:
        raise ValueError(f"{code} is a unit of account or a fund, not money a sale is paid in")
    return code


def _in_any_case(codes: list[str]) -> str:
    """A pattern for exactly these codes, each letter in either case (JSON Schema has no
    case-blind enum, and the upper-case one alone refuses the "usd" the API takes)."""
    return "^(" + "|".join("".join(f"[{c}{c.lower()}]" for c in code) for code in codes) + ")$"


Currency = Annotated[
    ISO4217Currency,
    AfterValidator(_paid_in),
    WithJsonSchema(
        {
            "anyOf": [
                {"enum": CURRENCY_CODES},
                {
                    "type": "string",
                    "pattern": _in_any_case(CURRENCY_CODES),
                    "description": "The same codes in any case, stored upper-cased",
                },
            ]
        }
    ),
]
MAX_MONEY = Decimal("999999999999.99")  # events.price and events.revenue: numeric(14, 2)
CENT = Decimal("0.01")
# What the schema says of an amount: a JSON number, or its decimal text (pydantic's
# Decimal takes both). No multipleOf 0.01: validators test it in binary floating point
# and refuse 0.07.
MONEY_NUMBER = {"type": "number", "minimum": 0, "maximum": float(MAX_MONEY)}


# A number a beacon's value rounds into the bounds from (half up: -0.004 is 0.00).
ROUNDED_MONEY_NUMBER = {
    "type": "number",
    "exclusiveMinimum": -0.005,
    "exclusiveMaximum": float(MAX_MONEY + CENT / 2),
}
# Blank text where a beacon takes it for the field left out (a template's empty variable).
BLANK = {"type": "string", "pattern": "^\\s*$", "description": "blank: the default"}


def _money_schema(
    decimals: str, about: str, *also: dict[str, Any], number: dict[str, Any] = MONEY_NUMBER
) -> WithJsonSchema:
    text = {"type": "string", "pattern": f"^{_money_text(decimals).pattern}$"}
    return WithJsonSchema({"anyOf": [number, text, *also], "description": about})


def _also_allowed(*schemas: dict[str, Any]) -> Any:
    """A field's JSON Schema with more alternatives in its anyOf."""

    def extend(schema: dict[str, Any]) -> None:
        schema["anyOf"] = [*schema.pop("anyOf", [dict(schema)]), *schemas]

    return extend


@cache
def _money_text(decimals: str) -> re.Pattern[str]:
    return re.compile(rf"[0-9]{{1,12}}(\.[0-9]{decimals})?")


def _as_money_text_shows(decimals: str, digits: str) -> BeforeValidator:
    """An amount in text only as the schema shows it: pydantic's Decimal also reads
    "1_000", "1e3", " 12 ", ".5" and other scripts' digits ("١٢")."""

    def plain_digits(value: Any) -> Any:
        if isinstance(value, str) and not _money_text(decimals).fullmatch(value):
            raise ValueError(f"must be a number, or its digits: {digits} (12.50)")
        return value

    return BeforeValidator(plain_digits)


# Quantized, "0e-1000000" (zero, so within the bounds) is 0.00, which numeric can hold.
Money = Annotated[
    Decimal,
    Field(ge=0, le=MAX_MONEY, decimal_places=2),
    AfterValidator(lambda v: v.quantize(CENT)),
    # "1.250" as 1.250 is: zeros past the cents are no more precision.
    _as_money_text_shows("{1,2}0*", "up to 12 before the point and 2 after"),
    _money_schema("{1,2}0*", "At most two decimal places (cents)."),
]


def _rounded_to_the_cent(value: Decimal) -> Decimal:
    """Rounded, then bounded: a free order's total computed in JavaScript may be
    -2.8e-17, which is 0.00, not a negative amount (and 999999999999.994 is the most)."""
    if not (value.is_finite() and -1 < value < MAX_MONEY + 1):  # quantize needs no more
        raise ValueError(f"must be from 0 to {MAX_MONEY}")
    cents = value.quantize(CENT, rounding=ROUND_HALF_UP)
    if not 0 <= cents <= MAX_MONEY:
        raise ValueError(f"must be from 0 to {MAX_MONEY}")
    return abs(cents)  # -0.00 is 0.00


# Beacon totals computed in JavaScript (35.400000000000006): rounded to the cent, not refused.
RoundedMoney = Annotated[
    Decimal,
    AfterValidator(_rounded_to_the_cent),
    _as_money_text_shows("+", "up to 12 before the point"),
    _money_schema("+", "Rounded to the cent.", number=ROUNDED_MONEY_NUMBER),
]
Text = Annotated[str, AfterValidator(_storable_text)]


def _exact_integer(value: float) -> bool:
    """A float that is an integer it holds exactly: past 2**53 it stands for several."""
    return value.is_integer() and abs(value) <= 2**53


def _integer_as_text(value: Any) -> Any:
    """A shop's order or customer number is often a JSON integer: the same as its text.
    ``12345.0`` is that integer too (JSON Schema's, and Python's json.dumps of a float)."""
    if isinstance(value, float) and _exact_integer(value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _blank_is_none(value: str) -> str | None:
    """Blank optional text is the field left out: a shop template's empty variable
    (a guest's ``"{{ customer.id }}"``) is no reason to lose the event."""
    return value or None


# Optional text where blank (after stripping) is the field left out.
BlankIsNone = AfterValidator(_blank_is_none)
INTEGER = {"type": "integer"}


class Body(BaseModel):
    """Base for request bodies: unknown fields are ignored, as clients evolve."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class OwnerSettings(Body):
    """Base for what an owner changes by hand: a misspelt field is an error, not a no-op."""

    model_config = ConfigDict(extra="forbid")


def _cut_to(limit: int) -> AfterValidator:
    return AfterValidator(lambda value: value[:limit])


_QUANTITY_TEXT = re.compile(r"[0-9]{1,7}")
MAX_QUANTITY = 10**6
# What the schema cannot say, said to client authors (the validators below enforce it).
_TRACKED_METADATA = (
    f"Any JSON object, nested at most {MAX_METADATA_DEPTH} levels deep, without NUL "
    f"characters. time_on_page requires `seconds`, a number >= 0, stored to the "
    f"millisecond (more than {MAX_TIME_ON_PAGE_SECONDS} is taken as "
    f"{MAX_TIME_ON_PAGE_SECONDS}); a store event's "
    f"`quantity` is a whole number from 1 to {MAX_QUANTITY}, and price x quantity at most "
    f"{MAX_MONEY}."
)
_PRICE_CURRENCY = (
    "The price's ISO 4217 code, only with a price (alone it is refused: a 422, or the "
    "item rejected in a batch); the tenant's currency when left out."
)


CustomerId = Annotated[Text, Field(max_length=254)]


class ForgottenCustomer(Body):
    """Whom ``events forget-customer`` deletes: a ``user_id`` as the API stores it."""

    user_id: Annotated[CustomerId, Field(min_length=1)]


class TrackedEvent(Body):
    """One event from a landing page or store (the tenant is named around it)."""

    event_type: Literal[TRACK_TYPES]  # type: ignore[valid-type]
    metadata: Metadata | None = Field(
        default=None, validate_default=True, description=_TRACKED_METADATA
    )
    # Store fields (see the store-analytics documents)
    session_id: Annotated[Text, Field(max_length=64), BlankIsNone] | None = None
    # A customer number sent as a JSON integer is the customer of that text.
    user_id: Annotated[CustomerId, BlankIsNone, BeforeValidator(_integer_as_text)] | None = Field(
        default=None, json_schema_extra=_also_allowed(INTEGER)
    )
    product_slug: Annotated[Text, Field(max_length=200), BlankIsNone] | None = None
    product_name: Annotated[Text, Field(max_length=200), BlankIsNone] | None = None
    price: Money | None = None
    # The price's (a shop that shows two, lempiras and dollars); the tenant's when none.
    currency: Currency | None = Field(default=None, description=_PRICE_CURRENCY)
    # An empty source is no source: "direct", as a missing one (reports group by it).
    source: Annotated[Text, Field(max_length=100), AfterValidator(lambda v: v or None)] | None = (
        None
    )
    error_message: Annotated[Text, _cut_to(1000)] | None = None
    # Blank is an error: a broken key generator, whose retries would count twice.
    idempotency_key: Annotated[Text, Field(min_length=1, max_length=128)] | None = None

    def quantity(self) -> int | None:
        """A store event's ``metadata.quantity`` (validated as a positive integer)."""
        if self.event_type not in STORE_TYPES:
            return None
        return (self.metadata or {}).get("quantity")

    @field_validator("metadata")
    @classmethod
    def _check_quantity_and_seconds(
        cls, metadata: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        # A store field: a landing page's metadata is its own ("quantity": "2 kg").
        is_store_event = info.data.get("event_type") in STORE_TYPES
        quantity = (metadata or {}).get("quantity") if is_store_event else None
        if isinstance(quantity, float) and quantity.is_integer():
            # 2.0 is the number 2 in JSON (a Python client sends it so): taken as 2.
            quantity = int(quantity)
            metadata = {**(metadata or {}), "quantity": quantity}
        elif isinstance(quantity, str) and _QUANTITY_TEXT.fullmatch(quantity):
            # Its digits, as a price's are taken ("12.50"): a template's "{{ qty }}".
            quantity = int(quantity)
            metadata = {**(metadata or {}), "quantity": quantity}
        if quantity is not None and (
            isinstance(quantity, bool)
            or not isinstance(quantity, int)
            or not 0 < quantity <= MAX_QUANTITY
        ):
            raise ValueError(f"metadata.quantity must be a whole number from 1 to {MAX_QUANTITY}")
        if info.data.get("event_type") != TIME_ON_PAGE:
            return metadata
        seconds = (metadata or {}).get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError("time_on_page needs metadata.seconds, a number >= 0")
        # The rollups sum seconds to the millisecond (numeric(20, 3)): kept the same here,
        # the raw events and the rollups average the same values.
        seconds = round(seconds, 3) if isinstance(seconds, float) else seconds
        return {**(metadata or {}), "seconds": min(seconds, MAX_TIME_ON_PAGE_SECONDS)}

    @field_validator("currency")
    @classmethod
    def _currency_of_a_price(cls, currency: str | None, info: ValidationInfo) -> str | None:
        if currency is not None and "price" in info.data and info.data["price"] is None:
            raise ValueError("currency is that of the price: send the price with it")
        return currency

    @field_validator("price")
    @classmethod
    def _check_revenue(cls, price: Decimal | None, info: ValidationInfo) -> Decimal | None:
        """A purchase's revenue is price x quantity; it must fit where it is stored."""
        quantity = (info.data.get("metadata") or {}).get("quantity")
        if info.data.get("event_type") not in STORE_TYPES:
            quantity = None
        if price is not None and isinstance(quantity, int) and price * quantity > MAX_MONEY:
            raise ValueError(f"price x metadata.quantity may not exceed {MAX_MONEY}")
        return price


class TrackEvent(TrackedEvent):
    """``POST /api/analytics/track``."""

    tenant_id: TenantId


MAX_BATCH_EVENTS = 500


# Each item is validated on its own (event_builders.batch_events), so that one bad item
# is reported rather than refusing the batch; the OpenAPI document gives their shape.
BATCH_ITEM_SCHEMA = {"$ref": "#/components/schemas/TrackedEvent"}
BatchItem = Annotated[Any, WithJsonSchema(BATCH_ITEM_SCHEMA)]


class EventBatch(Body):
    """``POST /api/analytics/batch``: the envelope; each item is checked on its own."""

    tenant_id: TenantId
    events: Annotated[list[BatchItem], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


PASSWORD_MAX = 1024
PASSWORD_MIN = 8  # NIST SP 800-63B's floor for a password a person chooses
# Checked as typed: a password may begin or end with spaces.
TypedPassword = Annotated[
    str, StringConstraints(strip_whitespace=False), Field(min_length=1, max_length=PASSWORD_MAX)
]


class Login(Body):
    """``POST /api/auth/login``."""

    email: Annotated[Text, Field(min_length=3, max_length=254)]
    password: TypedPassword


class PasswordChange(Body):
    """``POST /api/auth/password``: the password now, and the one to use from now on."""

    current_password: TypedPassword
    new_password: Annotated[
        str,
        StringConstraints(strip_whitespace=False),
        Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX),
    ]

    @field_validator("new_password")
    @classmethod
    def _not_the_current_one(cls, new: str, info: ValidationInfo) -> str:
        if new == info.data.get("current_password"):
            raise ValueError("must differ from the current password")
        return new


ProductId = Annotated[int, Field(strict=True, gt=0, le=MAX_ROW_ID)]


@cache
def iana_zone_names() -> frozenset[str]:
    """The IANA zones, without the names that follow the host (``localtime``) or mean none."""
    return frozenset(available_timezones() - {"localtime", "posixrules", "Factory"})


def iana_zone(value: str) -> str:
    if value not in iana_zone_names():
        raise ValueError("not a time zone of the IANA database, e.g. America/Tegucigalpa")
    return value


TimeZoneName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(iana_zone)]


class V1TrackEvent(Body):
    """``POST /api/v1/analytics/track``."""

    tenant_id: Annotated[str, Field(strict=True, min_length=1, max_length=64)]
    type: Literal[V1_TRACK_TYPES]  # type: ignore[valid-type]
    product_id: ProductId | None = None
    metadata: PhpMetadata | None = None


class Interaction(Body):
    """``POST /api/v1/interactions``."""

    # Any integer: one that can name no tenant (0, -1, 2**63) is an unknown tenant, a 202.
    tenant_id: StrictInt
    type: Literal[V1_INTERACTION_TYPES]  # type: ignore[valid-type]
    product_id: ProductId | None = None
    metadata: PhpMetadata | None = None


def _in_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; one whose UTC date falls outside years 1 to 9999 is invalid.

    A time without an offset is left so: it is the tenant's (event_builders.beacon_time).
    """
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # "0001-01-01T00:00:00+14:00": no such UTC date
        raise ValueError("the time in UTC falls outside the years 1 to 9999") from None


# A date-time without an offset, or a date alone (format: date-time requires the offset).
LOCAL_TIME_PATTERN = r"^\d{4}-\d\d-\d\d([Tt ]\d\d:\d\d(:\d\d([.,]\d+)?)?)?$"


class ConversionBeacon(Body):
    """``POST /api/v1/analytics/conversion``: anything unusable is skipped, never an error."""

    # In any case, as a QR code's (a slug typed by hand from a flyer).
    tenant_slug: Annotated[
        Text, Field(min_length=1, max_length=TENANT_SLUG_LENGTH), AfterValidator(canonical_slug)
    ]
    # An integer order number is taken as its text: the schema says both.
    transaction_id: Annotated[
        Annotated[Text, Field(min_length=1, max_length=128)] | None,
        BeforeValidator(_integer_as_text),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": 128},
                    INTEGER,
                    {"type": "null"},
                    BLANK,
                ]
            }
        ),
    ] = None
    # The schema's default is the number 0, not pydantic's "0" (its JSON for a Decimal);
    # null is the default too (below), as the schema says.
    value: Annotated[
        RoundedMoney,
        _money_schema(
            "+",
            "Rounded to the cent; null or blank is 0.",
            {"type": "null"},
            BLANK,
            number=ROUNDED_MONEY_NUMBER,
        ),
    ] = Field(default=Decimal(0), json_schema_extra={"default": 0})
    currency: Currency | None = Field(default=None, json_schema_extra=_also_allowed(BLANK))
    event: Annotated[
        Literal[V1_TRACK_TYPES],  # type: ignore[valid-type]
        WithJsonSchema({"anyOf": [{"enum": list(V1_TRACK_TYPES)}, {"type": "null"}, BLANK]}),
    ] = PURCHASE
    # In UTC: PostgreSQL's timestamptz refuses offsets beyond 15:59, which ISO 8601 allows.
    timestamp: Annotated[datetime, AfterValidator(_in_utc)] | None = Field(
        default=None,
        description=(
            "ISO 8601; without an offset (2026-12-02T10:00:00), the tenant's local time;"
            " a date alone, the start of that day there"
        ),
        json_schema_extra=_also_allowed(
            {"type": "string", "pattern": LOCAL_TIME_PATTERN, "description": "no offset"},
            {"type": "number", "description": "Unix time: seconds, or milliseconds"},
        ),
    )

    @field_validator("transaction_id", "value", "currency", "event", mode="before")
    @classmethod
    def _empty_is_the_default(cls, value: Any, info: ValidationInfo) -> Any:
        """``null`` or blank text (a shop template's empty variable, ``"{{ currency }}"``)
        is the field left out: the sale is still a sale, of the documented default,
        rather than skipped."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return cls.model_fields[info.field_name].default
        return value


def echoed_transaction_id(raw: object) -> str | int | None:
    """A beacon's ``transaction_id`` as sent, when JSON can carry it back as it is."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, float):
        return raw if _exact_integer(raw) else None
    if isinstance(raw, str) and len(raw) <= 128:
        try:
            raw.encode()  # a lone surrogate has no UTF-8
        except UnicodeEncodeError:
            return None
        return raw
    return None  # NaN, for one, is no JSON at all


def beacon_answer(status: str, raw_transaction_id: object) -> dict[str, object]:
    """A conversion beacon's 200 body: ``ok`` or ``skipped``, and the transaction id as
    sent."""
    return {"status": status, "transaction_id": echoed_transaction_id(raw_transaction_id)}


class ProductCreate(OwnerSettings):
    """``POST /api/tenants/<id>/products``."""

    name: Annotated[Text, Field(min_length=1, max_length=200)]
    slug: Annotated[Text, Field(min_length=1, max_length=200)] | None = None
    price: Money | None = None
    active: StrictBool = True


class ProductUpdate(OwnerSettings):
    """``PATCH /api/tenants/<id>/products/<id>``: only the fields sent change.

    Fields typed without ``| None`` refuse an explicit null.
    """

    name: Annotated[Text, Field(min_length=1, max_length=200)] = None  # type: ignore[assignment]
    slug: Annotated[Text, Field(min_length=1, max_length=200)] | None = None
    price: Money | None = None
    active: StrictBool = None  # type: ignore[assignment]


_HTTP_URL = TypeAdapter(
    Annotated[
        AnyUrl,
        UrlConstraints(
            max_length=LANDING_URL_LENGTH, allowed_schemes=["http", "https"], host_required=True
        ),
    ]
)


def _landing_url(value: str) -> str:
    """An http(s) URL as stored and redirected to; no credentials in it (a QR code's users
    see only where it leads, and ``https://bank.example@evil.example`` is a known disguise)."""
    try:
        url = _HTTP_URL.validate_python(value)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"]) from None
    if url.username is not None or url.password is not None:
        raise ValueError("may not contain a user name or password")
    if url.port == 0:
        raise ValueError("has port 0, which no browser opens")
    text = str(url)  # normalised: lower-case host, non-ASCII percent-encoded
    if len(text) > LANDING_URL_LENGTH:
        raise ValueError(f"may not exceed {LANDING_URL_LENGTH} characters once encoded")
    if not can_lead_to(text) or len(url.host or "") > MAX_HOST_NAME:
        raise ValueError("has a host name no browser can look up (an empty or over-long part)")
    return text


MAX_HOST_NAME = 253  # DNS's limit, dots included
LandingUrl = Annotated[str, AfterValidator(_landing_url)]


class TenantUpdate(OwnerSettings):
    """``PATCH /api/tenants/<id>``: only the fields sent change; none may be null, except
    ``landing_url`` (null takes the QR redirect away)."""

    name: Annotated[Text, Field(min_length=1, max_length=200)] = None  # type: ignore[assignment]
    timezone: TimeZoneName = None  # type: ignore[assignment]
    currency: Currency = None  # type: ignore[assignment]
    active: StrictBool = None  # type: ignore[assignment]
    vip_monetary_threshold: Money = None  # type: ignore[assignment]
    landing_url: LandingUrl | None = None
