"""The OpenAPI document: valid, complete, and built from the schemas the API validates with."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from typing import Any, get_args
from urllib.parse import urljoin
from zoneinfo import ZoneInfo

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate
from sqlalchemy import select
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from tenant_analytics import openapi
from tenant_analytics.catalogue import FUNNEL_STEPS
from tenant_analytics.demo import DEMO_EMAIL, DEMO_PASSWORD, DEMO_SLUG, load_demo
from tenant_analytics.extensions import db
from tenant_analytics.models import Tenant
from tenant_analytics.openapi import UNDOCUMENTED, build_document
from tenant_analytics.queries import store_funnel, store_rfm


@pytest.fixture
def document(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_the_document_is_valid_openapi(document):
    validate(document)  # raises on any violation of OpenAPI 3.1
    assert document["openapi"] == "3.1.0"


def test_the_servers_address_points_to_the_document_health_and_demo(client, make_app):
    index = client.get("/")
    assert index.status_code == 200
    links = index.get_json()
    assert [client.get(links[name]).status_code for name in ("openapi", "health")] == [200, 200]
    assert client.get(links["demo"]).status_code in (200, 404)  # 404 until `flask demo`
    production = make_app(APP_ENV="production").test_client().get("/").get_json()
    assert "demo" not in production  # no demo page there


def test_the_servers_address_is_the_apps_root_under_a_path_too(app):
    """A generated client joins each path to `servers` resolved against where it fetched
    the document: the app's root, here under /stats (not the host's, which has no API)."""
    client = Client(DispatcherMiddleware(NotFound(), {"/stats": app}))
    fetched = "http://localhost/stats/api/openapi.json"
    document = client.get(fetched).json
    root = urljoin(fetched, document["servers"][0]["url"]).rstrip("/")
    assert root == "http://localhost/stats"
    assert client.get(root + "/api/health").status_code == 200
    # At the host's root, the root; the document built once is not changed by either.
    assert app.test_client().get("/api/openapi.json").json["servers"] == [{"url": "/"}]


def test_every_route_and_method_is_documented(app, document):
    documented = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in UNDOCUMENTED:
            continue
        path = rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
        served |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served


def test_an_undocumented_route_fails_the_build(make_app):
    app = make_app()
    app.add_url_rule("/api/new-thing", "new_thing", lambda: "")
    with pytest.raises(KeyError, match="new_thing"):
        build_document(app)


def test_owner_endpoints_ask_for_a_token_and_tracking_does_not(document):
    paths = document["paths"]
    assert paths["/api/tenants/{tenant_id}"]["patch"]["security"] == [{"bearer": []}]
    assert paths["/api/analytics/{tenant_id}/rfm"]["get"]["security"] == [{"bearer": []}]
    # Public ones say so (no security at all reads as "not described" to linters).
    assert paths["/api/analytics/track"]["post"]["security"] == []
    assert paths["/q/{slug}"]["get"]["security"] == []


def test_body_schemas_are_what_the_api_accepts(client, make_tenant, document):
    schemas = document["components"]["schemas"]
    track = Draft202012Validator(schemas["TrackEvent"])
    tenant = make_tenant()
    good = {"tenant_id": tenant.id, "event_type": "click_whatsapp", "metadata": {"b": "hero"}}
    bad = {"tenant_id": tenant.id, "event_type": "click_everything"}
    assert track.is_valid(good) and not track.is_valid(bad)
    assert client.post("/api/analytics/track", json=good).status_code == 201
    assert client.post("/api/analytics/track", json=bad).status_code == 422
    body = document["paths"]["/api/analytics/track"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TrackEvent"
    }
    # The one error shape every 4xx has.
    error = Draft202012Validator(schemas["ApiError"])
    assert error.is_valid(client.post("/api/analytics/track", json=bad).get_json())


def _valid_for(document: dict[str, Any], model: str, body: dict[str, Any]) -> bool:
    root = {"$ref": f"#/components/schemas/{model}", "components": document["components"]}
    return Draft202012Validator(root).is_valid(body)


def test_what_a_body_schema_allows_the_api_takes_and_what_it_refuses_the_api_refuses(
    client, make_tenant, make_user, auth_headers, document
):
    """Money as decimal text, null for a beacon's defaults, PHP's [] for v1 metadata: a
    client generated from the document must neither send what is refused nor be kept
    from sending what is taken."""
    tenant = make_tenant()
    owner = auth_headers(make_user(tenant))
    unix_now = int(time.time())
    track = {"tenant_id": tenant.id, "event_type": "purchase"}
    beacon = {"tenant_slug": tenant.slug}
    v1 = {"tenant_id": str(tenant.id), "type": "call"}
    cases = [
        ("TrackEvent", "/api/analytics/track", {**track, "price": "12.50"}, 201),
        ("TrackEvent", "/api/analytics/track", {**track, "price": ""}, 422),
        ("TrackEvent", "/api/analytics/track", {**track, "price": "12.345"}, 422),
        ("ConversionBeacon", "/api/v1/analytics/conversion", {**beacon, "value": None}, 200),
        ("ConversionBeacon", "/api/v1/analytics/conversion", {**beacon, "event": None}, 200),
        ("ConversionBeacon", "/api/v1/analytics/conversion", {**beacon, "value": "9.99"}, 200),
        # A template's empty variable, JavaScript's float noise, a Unix time: all taken.
        ("ConversionBeacon", "/api/v1/analytics/conversion", {**beacon, "value": " "}, 200),
        ("ConversionBeacon", "/api/v1/analytics/conversion", {**beacon, "currency": ""}, 200),
        ("ConversionBeacon", "/api/v1/analytics/conversion", {**beacon, "event": ""}, 200),
        ("ConversionBeacon", "/api/v1/analytics/conversion", {**beacon, "value": -2.8e-17}, 200),
        (
            "ConversionBeacon",
            "/api/v1/analytics/conversion",
            {**beacon, "value": 999999999999.994},
            200,
        ),
        (
            "ConversionBeacon",
            "/api/v1/analytics/conversion",
            {**beacon, "timestamp": unix_now},
            200,
        ),
        (
            "ConversionBeacon",
            "/api/v1/analytics/conversion",
            {**beacon, "timestamp": unix_now * 1000},  # JavaScript's Date.now()
            200,
        ),
        # A currency code in any case: stored upper-cased. XXX is no money's code.
        ("ConversionBeacon", "/api/v1/analytics/conversion", {**beacon, "currency": "usd"}, 200),
        ("TrackEvent", "/api/analytics/track", {**track, "price": 5, "currency": "Usd"}, 201),
        ("TenantUpdate", f"/api/tenants/{tenant.id}", {"currency": "hnl"}, 200),
        ("TenantUpdate", f"/api/tenants/{tenant.id}", {"currency": "xxx"}, 422),
        ("TenantUpdate", f"/api/tenants/{tenant.id}", {"currency": "usdx"}, 422),
        ("V1TrackEvent", "/api/v1/analytics/track", {**v1, "metadata": []}, 202),
        ("TenantUpdate", f"/api/tenants/{tenant.id}", {"vip_monetary_threshold": "1.234"}, 422),
        ("TenantUpdate", f"/api/tenants/{tenant.id}", {"vip_monetary_threshold": "99"}, 200),
    ]
    for model, path, body, status in cases:
        send = client.patch if model == "TenantUpdate" else client.post
        answer = send(path, json=body, headers=owner if model == "TenantUpdate" else None)
        assert answer.status_code == status, (path, body, answer.get_json())
        if model == "ConversionBeacon":  # always a 200: whether it was taken is said inside
            assert answer.get_json()["status"] == "ok", body
        assert _valid_for(document, model, body) == (status < 400), (model, body)
    # The beacon takes no body at all too (skipped, with its 200).
    conversion = document["paths"]["/api/v1/analytics/conversion"]["post"]
    assert conversion["requestBody"]["required"] is False
    assert client.post("/api/v1/analytics/conversion").status_code == 200


def test_summaries_are_whole_first_paragraphs(document):
    patch = document["paths"]["/api/tenants/{tenant_id}"]["patch"]
    assert patch["summary"] == (
        "Change name, timezone (IANA), currency, active, the RFM VIP threshold or the "
        "landing page its QR codes lead to."
    )


def test_answers_every_endpoint_can_give_are_listed(document):
    paths = document["paths"]
    for path, method in [
        ("/api/tenants/{tenant_id}", "patch"),
        ("/api/v1/analytics/track", "post"),
    ]:
        assert {"413", "415", "503"} <= set(paths[path][method]["responses"]), path
    interactions = paths["/api/v1/interactions"]["post"]["responses"]
    assert {"413", "415", "429"} <= set(interactions)
    assert "503" not in interactions  # the database away is a 202 there (test_v1)
    assert "503" in paths["/api/analytics/{tenant_id}"]["get"]["responses"]
    # The beacon answers 200 to everything, as it says.
    assert set(paths["/api/v1/analytics/conversion"]["post"]["responses"]) == {"200"}


def test_a_beacons_time_without_an_offset_is_in_its_schema(client, make_tenant, document):
    """format: date-time requires an offset: checked with formats, as generated clients
    check, the schema refused the local times the beacon takes."""
    root = {"$ref": "#/components/schemas/ConversionBeacon", "components": document["components"]}
    beacon = Draft202012Validator(root, format_checker=FormatChecker())
    tenant = make_tenant(timezone="America/Tegucigalpa")
    today = datetime.now(ZoneInfo(tenant.timezone)).date().isoformat()
    local_times = [f"{today}T00:00:00", f"{today} 00:00", f"{today}T00:00:00.5", today]
    for n, timestamp in enumerate(local_times):
        body = {"tenant_slug": tenant.slug, "transaction_id": f"t-{n}", "timestamp": timestamp}
        assert beacon.is_valid(body), timestamp
        answer = client.post("/api/v1/analytics/conversion", json=body).get_json()
        assert answer["status"] == "ok", timestamp
    for refused in ("yesterday", f"{today}T00", "20261202"):
        assert not beacon.is_valid({"tenant_slug": tenant.slug, "timestamp": refused}), refused


def test_an_integer_transaction_id_is_in_the_beacons_schema(client, make_tenant, document):
    beacon = Draft202012Validator(document["components"]["schemas"]["ConversionBeacon"])
    sent = {"tenant_slug": make_tenant().slug, "transaction_id": 12345, "value": 10}
    assert beacon.is_valid(sent)
    assert beacon.is_valid({**sent, "transaction_id": " "})  # blank: a sale without one
    assert not beacon.is_valid({**sent, "transaction_id": "x" * 129})
    answer = client.post("/api/v1/analytics/conversion", json=sent).get_json()
    assert answer == {"status": "ok", "transaction_id": 12345}


def test_every_kind_of_answer_a_client_gets_is_in_the_document(
    client, make_tenant, make_user, auth_headers, document
):
    """What schemathesis found undocumented: the code as PNG, the scan's pages for a
    browser, and a compressed body refused on a route that takes none."""
    paths = document["paths"]
    tenant = make_tenant(landing_url="https://pan.example/")
    headers = auth_headers(make_user(tenant))
    served = [
        (
            "/api/tenants/{tenant_id}/qr",
            "get",
            "200",
            client.get(f"/api/tenants/{tenant.id}/qr?format=png", headers=headers),
        ),
        ("/q/{slug}", "get", "404", client.get("/q/nope", headers={"Accept": "text/html"})),
        (
            "/api/tenants",
            "get",
            "415",
            client.get("/api/tenants", headers={**headers, "Content-Encoding": "gzip"}, data=b"xx"),
        ),
    ]
    for path, method, status, answer in served:
        assert answer.status_code == int(status), path
        documented = paths[path][method]["responses"][status]["content"]
        assert answer.mimetype in documented, (path, answer.mimetype, documented)


@pytest.mark.parametrize(
    ("path", "name", "value"),
    [
        ("/api/analytics/{tenant_id}/rfm", "limit", "1000"),
        ("/api/analytics/{tenant_id}/rfm", "limit", "1001"),
        ("/api/analytics/{tenant_id}/dashboard-stats", "mode", "unique"),
        ("/api/analytics/{tenant_id}/dashboard-stats", "mode", "all"),
        ("/api/tenants/{tenant_id}/qr", "format", "png"),
        ("/api/tenants/{tenant_id}/qr", "format", "gif"),
        ("/api/tenants/{tenant_id}/qr", "c", "mesa-3"),
        ("/api/tenants/{tenant_id}/qr", "c", "mesa 3"),
        ("/api/analytics/{tenant_id}/funnel", "start", "1970-01-01"),
        ("/api/analytics/{tenant_id}/funnel", "start", "1969-12-31"),
        ("/api/analytics/{tenant_id}/funnel", "end", "9999-12-31"),
        ("/api/analytics/{tenant_id}/funnel", "end", "2026-02-30"),
        ("/api/analytics/{tenant_id}/funnel", "source", "a\x00b"),
        ("/api/analytics/{tenant_id}/rfm", "segment", " en RIESGO "),
        ("/api/analytics/{tenant_id}/rfm", "segment", "nope"),
    ],
)
def test_query_parameters_are_documented_as_the_handlers_hold_them(
    client, make_tenant, make_user, auth_headers, document, path, name, value
):
    """A client generated from the document sends what the API takes, and not what it
    refuses (schemathesis found every parameter documented as any string)."""
    tenant = make_tenant(landing_url="https://pan.example/")
    (parameter,) = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == name]
    schema = parameter["schema"]
    sent = int(value) if schema.get("type") == "integer" else value
    url = path.replace("{tenant_id}", str(tenant.id))
    answer = client.get(url, query_string={name: value}, headers=auth_headers(make_user(tenant)))
    documented = Draft202012Validator(schema, format_checker=FormatChecker())
    assert documented.is_valid(sent) == (answer.status_code != 422), answer.json


def _closed(schema: Any) -> Any:
    """``schema`` with every object of named properties admitting no others, so an
    answer's field the document does not name fails validation."""
    if isinstance(schema, dict):
        closed = {key: _closed(value) for key, value in schema.items()}
        if "properties" in closed and "additionalProperties" not in closed:
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


def test_every_json_answer_has_the_shape_the_document_gives(make_app):
    app = make_app(INTERACTION_MIN_SECONDS=0)
    client = app.test_client()
    document = client.get("/api/openapi.json").get_json()
    components = _closed(document["components"])
    with app.app_context():
        load_demo(db.session, "http://127.0.0.1:5000")
        db.session.commit()
        tenant = db.session.scalars(select(Tenant).where(Tenant.slug == DEMO_SLUG)).one()
        tenant_id = tenant.id
    tokens = client.post(
        "/api/auth/login", json={"email": DEMO_EMAIL, "password": DEMO_PASSWORD}
    ).get_json()
    owner = {"Authorization": f"Bearer {tokens['access_token']}"}
    phone = {"User-Agent": "Mozilla/5.0 (Linux; Android 14) Mobile"}
    event = {"tenant_id": tenant_id, "event_type": "page_view", "idempotency_key": "k-1"}
    calls = [  # (documented path, method, what the client sends, the status it gets)
        (
            "/api/auth/login",
            "post",
            {"json": {"email": DEMO_EMAIL, "password": DEMO_PASSWORD}},
            200,
        ),
        (
            "/api/auth/refresh",
            "post",
            {"headers": {"Authorization": f"Bearer {tokens['refresh_token']}"}},
            200,
        ),
        ("/api/analytics/track", "post", {"json": event, "headers": phone}, 201),
        ("/api/analytics/track", "post", {"json": event, "headers": phone}, 200),
        (
            "/api/analytics/batch",
            "post",
            {
                "json": {
                    "tenant_id": tenant_id,
                    "events": [{"event_type": "pageview"}, {"event_type": "nope"}],
                },
                "headers": phone,
            },
            201,
        ),
        (
            "/api/v1/analytics/track",
            "post",
            {"json": {"tenant_id": str(tenant_id), "type": "whatsapp_click"}, "headers": phone},
            202,
        ),
        (
            "/api/v1/analytics/conversion",
            "post",
            {"json": {"tenant_slug": DEMO_SLUG, "transaction_id": 7, "amount": 12.5}},
            200,
        ),
        ("/api/v1/analytics/conversion", "post", {"json": {"transaction_id": "t-8"}}, 200),
        (
            "/api/v1/interactions",
            "post",
            {"json": {"tenant_id": tenant_id, "type": "whatsapp_click"}, "headers": phone},
            201,
        ),
        (
            "/api/v1/interactions",
            "post",
            {"json": {"tenant_id": 987_654, "type": "view"}, "headers": phone},
            202,
        ),
        ("/api/health", "get", {}, 200),
        ("/api/analytics/{tenant_id}", "get", {"headers": owner}, 200),
        ("/api/analytics/{tenant_id}/today", "get", {"headers": owner}, 200),
        ("/api/analytics/{tenant_id}/dashboard-stats", "get", {"headers": owner}, 200),
        (
            "/api/analytics/{tenant_id}/dashboard-stats",
            "get",
            {"headers": owner, "query_string": {"mode": "unique"}},
            200,
        ),
        ("/api/analytics/{tenant_id}/funnel", "get", {"headers": owner}, 200),
        (
            "/api/analytics/{tenant_id}/rfm",
            "get",
            {"headers": owner, "query_string": {"limit": 3}},
            200,
        ),
        (
            "/api/analytics/{tenant_id}/rfm",
            "get",
            {"headers": owner, "query_string": {"segment": "Lost"}},
            200,
        ),
        ("/api/analytics/{tenant_id}/alerts", "get", {"headers": owner}, 200),
        ("/api/tenants", "get", {"headers": owner}, 200),
        ("/api/tenants/{tenant_id}", "get", {"headers": owner}, 200),
        (
            "/api/tenants/{tenant_id}",
            "patch",
            {"headers": owner, "json": {"landing_url": None}},
            200,
        ),
        ("/api/tenants/{tenant_id}/products", "get", {"headers": owner}, 200),
        (
            "/api/tenants/{tenant_id}/products",
            "post",
            {"headers": owner, "json": {"name": "Pan"}},
            201,
        ),
        (
            "/api/tenants/{tenant_id}/products/{product_id}",
            "patch",
            {"headers": owner, "json": {"price": 9}},
            200,
        ),
        ("/api/tenants/{tenant_id}/products/{product_id}", "delete", {"headers": owner}, 200),
        (  # last: it ends the owner's token
            "/api/auth/password",
            "post",
            {
                "headers": owner,
                "json": {"current_password": DEMO_PASSWORD, "new_password": "a new passphrase"},
            },
            200,
        ),
    ]
    checked = set()
    product_id = None  # the one the calls create
    for path, method, request, status in calls:
        url = path.replace("{tenant_id}", str(tenant_id))
        url = url.replace("{product_id}", str(product_id))
        answer = client.open(url, method=method.upper(), **request)
        assert answer.status_code == status, (path, method, answer.get_json())
        if path.endswith("/products") and method == "post":
            product_id = answer.get_json()["product"]["id"]
        media = document["paths"][path][method]["responses"][str(status)]["content"]
        shape = Draft202012Validator(
            {**media["application/json"]["schema"], "components": components},
            format_checker=FormatChecker(),
        )
        errors = [f"{e.json_path}: {e.message}" for e in shape.iter_errors(answer.get_json())]
        assert errors == [], (path, method, status)
        checked.add((path, method))
    # Every operation answering JSON on success was called above.
    answering_json = {
        (path, method)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if any(
            "application/json" in answer.get("content", {})
            for status, answer in operation["responses"].items()
            if status.startswith("2")
        )
    }
    assert checked == answering_json


def test_a_json_answer_without_its_shape_fails_the_build(make_app, monkeypatch):
    app = make_app()
    today = openapi.OPERATIONS["dashboards.today"]
    monkeypatch.setitem(openapi.OPERATIONS, "dashboards.today", replace(today, returns=None))
    with pytest.raises(ValueError, match=r"dashboards\.today: the shape of its JSON answer"):
        build_document(app)


def test_no_schema_has_a_default_a_generator_would_act_on(document):
    """A generator filling defaults would send them (a null landing_url in a PATCH clears
    it), or make the field required."""

    def defaults(node: Any) -> list[Any]:
        if isinstance(node, dict):
            own = [node["default"]] if "default" in node else []
            return own + [d for value in node.values() for d in defaults(value)]
        if isinstance(node, list):
            return [d for item in node for d in defaults(item)]
        return []

    assert defaults(document["components"]["schemas"]) == []
    landing_url = document["components"]["schemas"]["TenantUpdate"]["properties"]["landing_url"]
    assert {"type": "null"} in landing_url["anyOf"]  # null is still a value one may send


def test_the_closed_sets_answers_hold_are_those_the_reports_use():
    assert get_args(store_funnel.FunnelStepName) == FUNNEL_STEPS
    assert get_args(store_rfm.Segment) == tuple(store_rfm.SEGMENT_LABELS)
    assert get_args(store_rfm.Segmento) == tuple(store_rfm.SEGMENT_LABELS.values())


def test_error_answers_name_no_field_the_error_schema_lacks(make_app, make_tenant):
    app = make_app(TRACK_RATE_LIMIT="2 per minute")
    client = app.test_client()
    document = client.get("/api/openapi.json").get_json()
    components = _closed(document["components"])
    error = {"$ref": "#/components/schemas/ApiError"}
    shape = Draft202012Validator({**error, "components": components})
    tenant_id = make_tenant().id
    nothing_valid = {"tenant_id": tenant_id, "events": [{"event_type": "nope"}]}
    too_many = {"tenant_id": tenant_id, "events": [{"event_type": "pageview"}] * 3}
    away = make_app(SQLALCHEMY_DATABASE_URI="postgresql://nobody@127.0.0.1:1/none")
    answers = {
        "rejected": client.post("/api/analytics/batch", json=nothing_valid),
        "max_events": client.post("/api/analytics/batch", json=too_many),
        "database": away.test_client().get("/api/health"),
        "errors": client.post("/api/analytics/track", json={"tenant_id": tenant_id}),
    }
    assert [answer.status_code for answer in answers.values()] == [422, 413, 503, 422]
    for field, answer in answers.items():
        body = answer.get_json()
        assert field in body
        assert [e.message for e in shape.iter_errors(body)] == [], field


def test_defaults_are_said_in_words_not_left_for_generators_to_require(document):
    """openapi-typescript makes a field with a ``default`` required in the request type."""
    schemas = document["components"]["schemas"]
    assert schemas["ProductCreate"]["properties"]["active"]["description"] == "Default: true."
    value = schemas["ConversionBeacon"]["properties"]["value"]
    assert value["description"].endswith(" Default: 0.")  # a number, as the field is
    assert "ProductCreate" in schemas and "active" not in schemas["ProductCreate"]["required"]


def test_a_batch_documents_its_items_shape(client, make_tenant, document):
    """Items are validated one by one (a bad one is reported, not the whole batch refused);
    the document still gives their shape: a tracked event without the tenant."""
    schemas = document["components"]["schemas"]
    items = schemas["EventBatch"]["properties"]["events"]["items"]
    assert items == {"$ref": "#/components/schemas/TrackedEvent"}
    assert "tenant_id" not in schemas["TrackedEvent"]["properties"]
    item = Draft202012Validator({**items, "components": document["components"]})
    good, bad = {"event_type": "product_view", "product_slug": "pan"}, {"event_type": "nope"}
    assert item.is_valid(good) and not item.is_valid(bad)
    answer = client.post(
        "/api/analytics/batch", json={"tenant_id": make_tenant().id, "events": [good, bad]}
    )
    assert (answer.status_code, answer.get_json()["stored"]) == (201, 1)
    assert [r["index"] for r in answer.get_json()["rejected"]] == [1]


def test_rules_the_schema_cannot_hold_are_said_where_a_client_author_reads(
    client, make_tenant, document
):
    """Bodies a generated client builds from the schema alone, and the API refuses: each
    rule is said in its field's description (a typed client finds them only at run time)."""
    schemas = document["components"]["schemas"]
    tenant_id = make_tenant().id
    refused = [
        ("metadata", "`seconds`", {"event_type": "time_on_page", "metadata": {}}),
        ("metadata", "`quantity`", {"event_type": "add_to_cart", "metadata": {"quantity": 0}}),
        ("currency", "only with a price", {"event_type": "product_view", "currency": "USD"}),
    ]
    for field, said, body in refused:
        for model in ("TrackEvent", "TrackedEvent"):  # /track and a batch's items
            assert said in schemas[model]["properties"][field]["description"], (model, field)
        assert _valid_for(document, "TrackEvent", {"tenant_id": tenant_id, **body})
        answer = client.post("/api/analytics/track", json={"tenant_id": tenant_id, **body})
        assert answer.status_code == 422, body


def downloaded(client, tenant_id: int, owner: dict[str, str]):
    """The tenant's export, read to its end: a stream left unread keeps its request's
    context open."""
    answer = client.get(f"/api/tenants/{tenant_id}/export", headers=owner)
    answer.get_data()
    answer.close()
    return answer


def test_documented_headers_come_with_their_answers(make_app, make_tenant, make_user):
    app = make_app(TRACK_RATE_LIMIT="1 per minute")
    client = app.test_client()
    document = client.get("/api/openapi.json").get_json()
    tenant = make_tenant(landing_url="https://shop.example/")
    email = make_user(tenant, password="s3cret-pass").email
    token = client.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
    owner = {"Authorization": f"Bearer {token.get_json()['access_token']}"}
    away = make_app(SQLALCHEMY_DATABASE_URI="postgresql://nobody@127.0.0.1:1/none").test_client()
    event = {"tenant_id": tenant.id, "event_type": "pageview"}
    phone = {"User-Agent": "Mozilla/5.0 (Linux; Android 14) Mobile"}
    client.post("/api/analytics/track", json=event)  # the minute's one
    answers = [  # (documented path, method, the real answer)
        ("/q/{slug}", "get", client.get(f"/q/{tenant.slug}", headers=phone)),
        ("/api/analytics/{tenant_id}", "get", client.get(f"/api/analytics/{tenant.id}")),
        ("/api/analytics/track", "post", client.post("/api/analytics/track", json=event)),
        ("/api/analytics/track", "post", away.post("/api/analytics/track", json=event)),
        ("/api/health", "get", away.get("/api/health")),
        (
            "/api/tenants/{tenant_id}/qr",
            "get",
            client.get(f"/api/tenants/{tenant.id}/qr", headers=owner),
        ),
        ("/api/tenants/{tenant_id}/export", "get", downloaded(client, tenant.id, owner)),
    ]
    assert [a.status_code for _, _, a in answers] == [302, 401, 429, 503, 503, 200, 200]
    for path, method, answer in answers:
        documented = document["paths"][path][method]["responses"][str(answer.status_code)]
        assert documented["headers"], (path, answer.status_code)
        # Each has a body, the 302 too (a short "Redirecting…" page): its type is declared.
        assert answer.mimetype in documented.get("content", {}), (path, answer.status_code)
        for name in documented["headers"]:
            assert answer.headers.get(name), (path, answer.status_code, name)


def test_rate_limit_headers_are_documented_where_they_are_sent(make_app, make_tenant, make_user):
    """X-RateLimit-* come with the answers of a client's own bucket (sign-in, a password
    change, the v1 "api" group), never with a tenant's; the document says which."""
    app = make_app(API_RATE_LIMIT="2 per minute", LOGIN_RATE_LIMIT="2 per minute")
    client = app.test_client()
    document = client.get("/api/openapi.json").get_json()
    tenant = make_tenant()
    email = make_user(tenant, password="s3cret-pass").email
    token = client.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
    owner = {"Authorization": f"Bearer {token.get_json()['access_token']}"}
    wrong = {"email": email, "password": "wrong-pass"}
    change = {"current_password": "wrong-pass", "new_password": "a new passphrase"}
    v1 = {"tenant_id": str(tenant.id), "type": "call"}
    beacon = {"tenant_slug": tenant.slug, "transaction_id": "t-1", "value": 5}
    event = {"tenant_id": tenant.id, "event_type": "pageview"}
    gzip = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    answers = [  # (documented path, method, the real answer)
        ("/api/auth/login", "post", client.post("/api/auth/login", json=wrong)),
        ("/api/auth/login", "post", client.post("/api/auth/login", json=wrong)),
        ("/api/auth/login", "post", client.post("/api/auth/login", json=wrong)),
        ("/api/auth/login", "post", client.post("/api/auth/login", json={"email": 1})),
        ("/api/auth/login", "post", client.post("/api/auth/login", data=b"x" * 70_000)),
        ("/api/auth/login", "post", client.post("/api/auth/login", data=b"{}", headers=gzip)),
        ("/api/auth/password", "post", client.post("/api/auth/password", json=change)),
        ("/api/auth/password", "post", client.post("/api/auth/password", json={}, headers=owner)),
        ("/api/v1/analytics/track", "post", client.post("/api/v1/analytics/track", json=v1)),
        (
            "/api/v1/analytics/conversion",
            "post",
            client.post("/api/v1/analytics/conversion", json=beacon),
        ),
        ("/api/v1/analytics/track", "post", client.post("/api/v1/analytics/track", json={})),
        ("/api/v1/analytics/track", "post", client.post("/api/v1/analytics/track", json=v1)),
        ("/api/analytics/track", "post", client.post("/api/analytics/track", json=event)),
        ("/api/auth/refresh", "post", client.post("/api/auth/refresh", headers=owner)),
        ("/api/tenants", "get", client.get("/api/tenants", headers=owner)),
    ]
    assert [a.status_code for _, _, a in answers] == [
        *(401, 429, 429, 422, 413, 415),  # 422: another email, another bucket
        *(401, 422, 202, 200, 429, 429),
        *(201, 401, 200),
    ]
    for path, method, answer in answers:
        documented = document["paths"][path][method]["responses"][str(answer.status_code)]
        sent = {name for name, _ in answer.headers if name.startswith("X-RateLimit-")}
        said = {name for name in documented.get("headers", {}) if name.startswith("X-RateLimit-")}
        assert sent == said, (path, answer.status_code, sent, said)
    # Both kinds are in the run: a client's bucket, and answers without one.
    assert any("X-RateLimit-Limit" in a.headers for _, _, a in answers)
    assert not all("X-RateLimit-Limit" in a.headers for _, _, a in answers)


def test_operation_ids_are_the_views_names_and_unique(document):
    """What client generators name their methods after: ``dashboard_stats``, not
    ``store_reports_dashboard_stats``; blueprint and view only where views share a name."""
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert {"dashboard_stats", "health", "qr_code", "login"} <= set(ids)
    assert {"tracking_track", "v1_track"} <= set(ids)  # two views named track


def test_a_body_is_read_first_only_where_one_is_taken(
    client, make_tenant, make_user, auth_headers, document
):
    """A GET or DELETE ignores a body, as before: no 413 for one it never reads. Every
    POST, PATCH and PUT reads its body first, so each documents the 413."""
    tenant = make_tenant()
    url, headers = f"/api/tenants/{tenant.id}", auth_headers(make_user(tenant))
    huge = b"x" * (600 * 1024)
    assert client.get(url, data=huge, headers=headers).status_code == 200
    assert client.get("/api/health", data=huge).status_code == 200
    for path, operations in document["paths"].items():
        for method in {"post", "patch", "put"} & set(operations):
            responses = operations[method]["responses"]
            assert path == "/api/v1/analytics/conversion" or {"400", "413"} <= set(responses)


def test_generators_read_every_body_and_answer_as_what_is_sent(document):
    """openapi-python-client dropped the v1 endpoints (an array with no items), and
    openapi-typescript typed their metadata as an object of no keys; a 200 of an image
    or NDJSON without a schema came back as None; a beacon's text/plain body was unsaid."""
    schemas, paths = document["components"]["schemas"], document["paths"]
    for model in ("V1TrackEvent", "Interaction"):
        options = schemas[model]["properties"]["metadata"]["anyOf"]
        assert {"type": "object", "additionalProperties": True} in options
        assert all("items" in option for option in options if option.get("type") == "array")
    qr_code = paths["/api/tenants/{tenant_id}/qr"]["get"]["responses"]["200"]["content"]
    export = paths["/api/tenants/{tenant_id}/export"]["get"]["responses"]["200"]["content"]
    binary = {"schema": {"type": "string", "format": "binary"}}
    assert qr_code == {"image/svg+xml": binary, "image/png": binary}
    assert export == {"application/x-ndjson": binary}
    for path in ("/api/analytics/track", "/api/analytics/batch", "/api/v1/analytics/conversion"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert content["text/plain"] == content["application/json"], path
    assert set(paths["/api/auth/login"]["post"]["requestBody"]["content"]) == {"application/json"}
