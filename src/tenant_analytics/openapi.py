"""The OpenAPI 3.1 document, built from the app's own routes and request schemas.

Paths and methods come from the URL map, summaries from the views' docstrings,
request bodies from the pydantic models the views validate with, and the answers'
shapes from the types of what the views return (queries' TypedDicts, ``responses``);
what a route cannot tell (its body model, its answers and their shape, whether it
needs a token) is in OPERATIONS, one entry per endpoint. A route without an entry, or
a JSON answer without a shape, fails the build, so the document cannot silently fall
behind the API.
"""

from __future__ import annotations

import inspect
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from pydantic import BaseModel, TypeAdapter

from . import responses, schemas
from .api import qr, store_reports
from .api.requests import BODY_METHODS, NEVER_REFUSED
from .queries import store_dashboard, store_funnel, store_rfm

REF = "#/components/schemas/{model}"
UNDOCUMENTED = {"static", "demo_site.landing_page", "openapi.document", "openapi.index"}
ERRORS = {
    400: "A body cut short of its Content-Length, or its chunked encoding broken",
    401: "No valid token (WWW-Authenticate says why)",
    404: "No such resource, or another tenant's",
    409: "Conflict",
    408: "The body stopped arriving (BODY_READ_TIMEOUT_SECONDS without a byte, under gunicorn)",
    413: "Body too large",
    415: "A compressed body (Content-Encoding): send it as it is",
    422: "Invalid body or parameters; errors names each field",
    429: "Rate limited; Retry-After says how long",
    503: "The database or the limiter is away for a moment; Retry-After",
}


@dataclass(frozen=True)
class Operation:
    """What the route itself cannot tell of an endpoint."""

    answers: dict[int, str]
    returns: Any = None  # the type of a 2xx JSON answer's body
    body: type[BaseModel] | None = None
    body_required: bool = True  # False where a request without one is answered too
    owner: bool = False  # needs an owner's (or admin's) bearer token
    refresh: bool = False  # needs a refresh token
    # name -> description, or (description, the JSON Schema the handler holds it to)
    query: dict[str, str | tuple[str, dict[str, Any]]] = field(default_factory=dict)
    produces: tuple[str, ...] = ("application/json",)  # what a 2xx answers in
    # headers a 2xx carries: name -> (description, schema)
    headers: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    pages: frozenset[int] = frozenset()  # statuses whose body is an HTML page for a browser
    unavailable: bool = True  # may answer 503 (the database away); False: handled inside
    # Counted in a bucket of the client's own (its address, email or user; not a tenant's,
    # whose figures would tell of its visitors): X-RateLimit-* on its answers.
    client_limited: bool = False


OWNER_READ = {200: "The figures", 401: ERRORS[401], 404: ERRORS[404]}
STORE_REPORT = {
    **OWNER_READ,
    429: "OWNER_REPORTS_AT_ONCE of the tenant's store reports are running; Retry-After: 1",
}
OWNER_GET = {**OWNER_READ, 200: "Found"}
CAMPAIGN = {"type": "string", "pattern": f"^{qr.CAMPAIGN.pattern}$"}
# store_reports' dates: 1970-01-01 to 9999-12-30, as the handler takes them.
LOCAL_DAY = {
    "type": "string",
    "format": "date",
    "pattern": "^(19[7-9][0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}$",
    "not": {"const": "9999-12-31"},
}


def _any_case(name: str) -> str:
    """A pattern matching ``name`` in any case (ECMA-262 patterns have no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in name)


SEGMENT = {
    "type": "string",
    "pattern": rf"^\s*({'|'.join(_any_case(name) for name in store_reports.SEGMENT_NAMES)})\s*$",
}
OPERATIONS: dict[str, Operation] = {
    "tracking.track": Operation(
        {
            201: "Stored",
            200: "Not stored: a repeat of an idempotency key (duplicate_ignored), or a bot's"
            " browser sent it from a page (bot_ignored)",
            404: "Unknown or inactive tenant",
            413: ERRORS[413],
            422: ERRORS[422],
            429: ERRORS[429],
            503: ERRORS[503],
        },
        returns=responses.Tracked,
        body=schemas.TrackEvent,
    ),
    "tracking.batch": Operation(
        {
            201: "The valid events stored; rejected lists the others and why",
            200: "None stored: a bot's browser sent them from a page (bot_ignored)",
            404: "Unknown or inactive tenant",
            413: "Over 500 KiB, or more events than the rate limit ever admits",
            422: "No valid event, or not a batch",
            429: ERRORS[429],
            503: ERRORS[503],
        },
        returns=responses.BatchStored,
        body=schemas.EventBatch,
    ),
    "v1.track": Operation(
        {202: "Accepted", 404: "Unknown or inactive tenant", 422: ERRORS[422], 429: ERRORS[429]},
        returns=responses.V1Accepted,
        body=schemas.V1TrackEvent,
        client_limited=True,
    ),
    "v1.conversion": Operation(
        {200: "ok when recorded (once per transaction_id), else skipped; never an error"},
        returns=responses.ConversionAnswer,
        body=schemas.ConversionBeacon,
        body_required=False,  # a beacon without a body is skipped, with its 200
        client_limited=True,
    ),
    "v1.interactions": Operation(
        {
            201: "Recorded",
            202: "Unknown tenant or not recorded",
            422: ERRORS[422],
            429: ERRORS[429],
        },
        returns=responses.InteractionAnswer,
        body=schemas.Interaction,
        unavailable=False,  # the contract's "processing error" is a 202
    ),
    "qr.scan": Operation(
        {
            302: "To the tenant's landing_url; the scan counted",
            404: "No such QR code: a page for a browser (Accept: text/html), else JSON",
            503: "The database away, and the code's destination unknown to this process",
        },
        query={"c": ("Which code was scanned: 1 to 64 letters, digits, '.', '_' or '-'", CAMPAIGN)},
        pages=frozenset({302, 404, 503}),
    ),
    "health.health": Operation(
        {
            200: "The database answers; rate_limit_storage says whether Redis does",
            503: "The database does not answer (or is not migrated)",
        },
        returns=responses.Health,
    ),
    "qr.qr_code": Operation(
        {
            200: "The code (X-QR-Target: the address it holds)",
            401: ERRORS[401],
            404: ERRORS[404],
            409: "No landing_url yet, the tenant switched off, or PUBLIC_URL unset in production",
            422: ERRORS[422],
        },
        owner=True,
        query={
            "format": ("svg (default) or png", {"type": "string", "enum": list(qr.IMAGE_TYPES)}),
            "c": ("The campaign the code names", CAMPAIGN),
        },
        produces=("image/svg+xml", "image/png"),
        headers={
            "X-QR-Target": ("The address the code holds", {"type": "string"}),
            "Content-Disposition": ("inline, with a file name to save it as", {"type": "string"}),
        },
    ),
    "auth.login": Operation(
        {
            200: "access_token and refresh_token",
            401: "Invalid email or password",
            422: ERRORS[422],
            429: ERRORS[429],
            503: ERRORS[503],
        },
        returns=responses.Tokens,
        body=schemas.Login,
        client_limited=True,
    ),
    "auth.refresh": Operation(
        {200: "A new access_token", 401: ERRORS[401]},
        returns=responses.AccessToken,
        refresh=True,
    ),
    "auth.change_password": Operation(
        {
            200: "Changed: this device's new access_token and refresh_token",
            401: ERRORS[401],
            403: "The current password is wrong",
            422: ERRORS[422],
            429: ERRORS[429],
            503: ERRORS[503],
        },
        returns=responses.Tokens,
        body=schemas.PasswordChange,
        owner=True,
        client_limited=True,
    ),
    "auth.logout": Operation(
        {204: "Signed out: the sign-in's tokens are refused from now on", 401: ERRORS[401]},
        produces=(),
        owner=True,
    ),
    "dashboards.landing_dashboard": Operation(
        OWNER_READ, returns=responses.LandingDashboard, owner=True
    ),
    "dashboards.today": Operation(OWNER_READ, returns=responses.Today, owner=True),
    "store_reports.dashboard_stats": Operation(
        {**STORE_REPORT, 422: ERRORS[422]},
        returns=store_dashboard.DashboardStats,
        owner=True,
        query={
            "mode": (
                "total (default) or unique",
                {"type": "string", "enum": list(store_dashboard.MODES)},
            )
        },
    ),
    "store_reports.funnel": Operation(
        {**STORE_REPORT, 422: ERRORS[422]},
        returns=store_funnel.Funnel,
        owner=True,
        query={
            "start": ("First local day, YYYY-MM-DD (default: 30 days before end)", LOCAL_DAY),
            "end": ("Last local day, YYYY-MM-DD (default: today)", LOCAL_DAY),
            "source": (
                "Only events sent with this traffic source: a session counts at a step "
                "when that step's event carries it",
                {
                    "type": "string",
                    "maxLength": store_reports.SOURCE_MAX,
                    "pattern": "^[^\u0000]*$",
                },
            ),
        },
    ),
    "store_reports.rfm": Operation(
        {**STORE_REPORT, 422: ERRORS[422]},
        returns=store_rfm.RfmReport,
        owner=True,
        query={
            "segment": (
                "Only this segment: VIP, Loyal, At Risk or Lost (or the Spanish label), any case",
                SEGMENT,
            ),
            "limit": (
                "Customers per page, 0 to 1000 (default 1000)",
                {"type": "integer", "minimum": 0, "maximum": store_rfm.RFM_PAGE_MAX},
            ),
            "offset": (
                "Customers to skip (default 0); next_offset gives the next page",
                {"type": "integer", "minimum": 0, "maximum": store_reports.OFFSET_MAX},
            ),
        },
    ),
    "store_reports.alerts": Operation(STORE_REPORT, returns=responses.Alerts, owner=True),
    "tenants.list_tenants": Operation(
        {200: "The caller's tenants", 401: ERRORS[401]}, returns=responses.TenantList, owner=True
    ),
    "tenants.get_tenant": Operation(OWNER_GET, returns=responses.OneTenant, owner=True),
    "tenants.export_tenant": Operation(
        {
            200: "JSON lines: the tenant, its products and keys, every event, then"
            ' {"end": {"events": N}} (a download cut short lacks it)',
            401: ERRORS[401],
            404: ERRORS[404],
            429: "OWNER_HEAVY_RATE_LIMIT spent (exports and zone changes); Retry-After",
        },
        owner=True,
        produces=("application/x-ndjson",),
        headers={
            "Content-Disposition": (
                "attachment, with a file name to save it as",
                {"type": "string"},
            ),
        },
    ),
    "tenants.update_tenant": Operation(
        {
            200: "The tenant as changed",
            401: ERRORS[401],
            403: "An owner switching on a tenant an operator switched off",
            404: ERRORS[404],
            409: "A rebuild of its rollups is running",
            422: ERRORS[422],
            429: "A zone change over OWNER_HEAVY_RATE_LIMIT (exports and zone changes)",
        },
        returns=responses.OneTenant,
        body=schemas.TenantUpdate,
        owner=True,
    ),
    "tenants.get_products": Operation(OWNER_GET, returns=responses.ProductList, owner=True),
    "tenants.add_product": Operation(
        {201: "Created", 401: ERRORS[401], 404: ERRORS[404], 409: "Slug taken", 422: ERRORS[422]},
        returns=responses.OneProduct,
        body=schemas.ProductCreate,
        owner=True,
    ),
    "tenants.update_product": Operation(
        {200: "Changed", 401: ERRORS[401], 404: ERRORS[404], 409: "Slug taken", 422: ERRORS[422]},
        returns=responses.OneProduct,
        body=schemas.ProductUpdate,
        owner=True,
    ),
    "tenants.delete_product": Operation(
        {200: "Deactivated", 401: ERRORS[401], 404: ERRORS[404]},
        returns=responses.OneProduct,
        owner=True,
    ),
}
CONVERTER = re.compile(r"<(?:(\w+):)?(\w+)>")


def _schemas() -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    """Each answer type's schema (a $ref) and the definitions, request bodies' included.

    Raises ValueError for an operation answering JSON without saying its shape.
    """
    for endpoint, operation in OPERATIONS.items():
        answers_json = "application/json" in operation.produces
        if (
            answers_json
            and operation.returns is None
            and any(200 <= s < 300 for s in operation.answers)
        ):
            raise ValueError(f"{endpoint}: the shape of its JSON answer (returns=) is missing")
    bodies = {op.body for op in OPERATIONS.values() if op.body} | {schemas.TrackedEvent}
    answers = {op.returns for op in OPERATIONS.values() if op.returns is not None}
    keys = [(body, "validation", TypeAdapter(body)) for body in sorted(bodies, key=_name)]
    keys += [
        (answer, "serialization", TypeAdapter(answer)) for answer in sorted(answers, key=_name)
    ]
    schemas_by_key, definitions = TypeAdapter.json_schemas(keys, ref_template=REF)
    return {key: schema for (key, _mode), schema in schemas_by_key.items()}, definitions


def _name(kind: Any) -> str:
    return kind.__name__


def _path_and_parameters(rule: str) -> tuple[str, list[dict[str, Any]]]:
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "integer"} if converter == "int" else {"type": "string"},
        }
        for converter, name in CONVERTER.findall(rule)
    ]
    return CONVERTER.sub(r"{\2}", rule), parameters


def _query_parameter(name: str, about: str | tuple[str, dict[str, Any]]) -> dict[str, Any]:
    text, schema = (about, {"type": "string"}) if isinstance(about, str) else about
    return {"name": name, "in": "query", "required": False, "description": text, "schema": schema}


def _summary(docstring: str | None) -> str:
    """The docstring's first paragraph, on one line."""
    first = inspect.cleandoc(docstring or "").split("\n\n")[0]
    return " ".join(first.split())


def _answers(endpoint: str, method: str, operation: Operation) -> dict[int, str]:
    """The operation's own answers and those every endpoint of its kind can give: a
    compressed body (refused on every route, body or not), a body too large, cut short
    or stalled (read on every POST, PATCH and PUT before its handler), and the database away
    (the beacon answers 200 to all)."""
    if endpoint in NEVER_REFUSED:
        return operation.answers
    common = {415: ERRORS[415]}
    if operation.unavailable:
        common |= {503: ERRORS[503]}
    if operation.body is not None or method in BODY_METHODS:
        common |= {400: ERRORS[400], 408: ERRORS[408], 413: ERRORS[413]}
    return common | operation.answers


# A 2xx that is no JSON (an image, NDJSON lines): bytes, as generators read this.
BYTES = {"type": "string", "format": "binary"}
# The public endpoints a page posts to: a text/plain body (sendBeacon's, which needs no
# CORS preflight) is read as JSON too.
PLAIN_TEXT_TOO = {"tracking", "v1"}
# Headers every answer of a status carries, whatever the route.
SECONDS = {"type": "integer", "minimum": 0}
STATUS_HEADERS: dict[int, dict[str, tuple[str, dict[str, Any]]]] = {
    302: {"Location": ("Where the scan is led", {"type": "string"})},
    401: {"WWW-Authenticate": ("The bearer challenge (RFC 6750)", {"type": "string"})},
    429: {"Retry-After": ("Seconds to wait", SECONDS)},
    503: {"Retry-After": ("Seconds to wait", SECONDS)},
}
# Where the client's own bucket stands (left out while the limiter's storage is away).
COUNT = {"type": "integer", "minimum": 0}
CLIENT_LIMIT_HEADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "X-RateLimit-Limit": ("Requests the client's bucket holds per window", COUNT),
    "X-RateLimit-Remaining": ("Requests left in the window", COUNT),
    "X-RateLimit-Reset": ("When the window resets, in Unix seconds", SECONDS),
}


def _answer(
    status: int, description: str, operation: Operation, shape: dict[str, Any] | None
) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    headers = STATUS_HEADERS.get(status, operation.headers if status < 300 else {})
    # Answers given before the bucket is counted have none: a body cut short (400),
    # stalled (408) or encoded (415), refused before any view; an owner's missing or bad
    # token (401).
    counted = status not in (400, 408, 415) and not (operation.owner and status == 401)
    if operation.client_limited and counted:
        headers = {**headers, **CLIENT_LIMIT_HEADERS}
    if headers:
        answer["headers"] = {
            name: {"description": text, "schema": schema}
            for name, (text, schema) in headers.items()
        }
    if status >= 400:
        media: dict[str, Any] = {
            "application/json": {"schema": {"$ref": REF.format(model="ApiError")}}
        }
        if status in operation.pages:
            media["text/html"] = {}
        answer["content"] = media
    elif status < 300:
        media = {kind: {"schema": BYTES} for kind in operation.produces}
        if shape is not None:
            media["application/json"] = {"schema": shape}
        if media:  # a 204 has none
            answer["content"] = media
    elif status in operation.pages:  # a redirect's short page, for a client that stops there
        answer["content"] = {"text/html": {}}
    return answer


def _defaults_in_words(schema: Any) -> Any:
    """The schema with each ``default`` said in its description instead: generators
    (openapi-typescript) make a field with a default required in the request type, and
    a ``"default": null`` invites sending the null (in a PATCH a null ``landing_url``
    takes the QR redirect away; leaving it out keeps it)."""
    if isinstance(schema, dict):
        cleaned = {key: _defaults_in_words(value) for key, value in schema.items()}
        if "default" in cleaned and not isinstance(cleaned["default"], dict):
            default = cleaned.pop("default")
            if default is not None:
                said = f"Default: {json.dumps(default)}."
                cleaned["description"] = " ".join(filter(None, [cleaned.get("description"), said]))
        return cleaned
    if isinstance(schema, list):
        return [_defaults_in_words(item) for item in schema]
    return schema


def _operation_ids(endpoints: Iterable[str]) -> dict[str, str]:
    """The view's own name (``dashboard_stats``), which client generators turn into a
    method name; blueprint and view (``v1_track``) where two views share a name."""
    views = Counter(endpoint.split(".")[-1] for endpoint in endpoints)
    return {
        endpoint: view if views[view] == 1 else endpoint.replace(".", "_")
        for endpoint in endpoints
        for view in [endpoint.split(".")[-1]]
    }


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes (KeyError for an undocumented one)."""
    shapes, definitions = _schemas()
    components: dict[str, Any] = {
        "schemas": {
            **_defaults_in_words(definitions.get("$defs", {})),
            "ApiError": ERROR_SCHEMA,
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
    }
    paths: dict[str, dict[str, Any]] = {}
    operation_ids = _operation_ids(OPERATIONS)
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        if rule.endpoint in UNDOCUMENTED:
            continue
        operation = OPERATIONS[rule.endpoint]
        path, parameters = _path_and_parameters(rule.rule)
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            entry: dict[str, Any] = {
                "operationId": operation_ids[rule.endpoint],
                "summary": _summary(view.__doc__),
                "tags": [rule.endpoint.split(".")[0]],
                "parameters": parameters
                + [_query_parameter(name, about) for name, about in operation.query.items()],
                "responses": {
                    str(status): _answer(status, text, operation, shapes.get(operation.returns))
                    for status, text in sorted(_answers(rule.endpoint, method, operation).items())
                },
            }
            if operation.body is not None:
                schema = {"$ref": REF.format(model=operation.body.__name__)}
                kinds = ["application/json"]
                if rule.endpoint.split(".")[0] in PLAIN_TEXT_TOO:
                    kinds.append("text/plain")
                entry["requestBody"] = {
                    "required": operation.body_required,
                    "content": {kind: {"schema": schema} for kind in kinds},
                }
            # Public ones say so: no security at all reads as "not described".
            entry["security"] = [{"bearer": []}] if operation.owner or operation.refresh else []
            paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tenant-analytics",
            "version": "1",
            "description": "Multi-tenant, privacy-first analytics for small businesses. "
            "Every error has one shape (ApiError).",
        },
        # The host's root; the served document says where the app is (api/openapi.py).
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": components,
    }


# ApiError, not Error: generated clients would shadow JavaScript's own Error with it.
ERROR_SCHEMA: dict[str, Any] = {
    "title": "ApiError",
    "type": "object",
    "required": ["success", "error", "message"],
    "properties": {
        "success": {"type": "boolean", "const": False},
        "error": {"type": "string", "description": "A code: validation_error, not_found, …"},
        "message": {"type": "string"},
        "errors": {
            "type": "object",
            "description": "Validation failures: each field's messages",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "rejected": {
            "type": "array",
            "description": "POST /api/analytics/batch's 422: every item, and why",
            "items": {"$ref": REF.format(model="BatchRejection")},
        },
        "max_events": {
            "type": "integer",
            "description": "POST /api/analytics/batch's 413: the most events one batch may hold",
        },
        "database": {"const": "unavailable", "description": "GET /api/health's 503"},
        "rate_limit_storage": {
            "enum": ["ok", "unavailable"],
            "description": "GET /api/health's 503",
        },
    },
}
