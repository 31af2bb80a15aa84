"""Login, refresh, and the JSON shape of every JWT failure."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask_jwt_extended import decode_token

from tenant_analytics import auth
from tenant_analytics.extensions import db
from tenant_analytics.models import User


def login(client, email, password):
    return client.post("/api/auth/login", json={"email": email, "password": password})


def test_login_returns_tokens_that_open_the_dashboard(client, make_tenant, make_user):
    tenant = make_tenant()
    user = make_user(tenant, password="right-password")
    response = login(client, user.email.upper(), "right-password")
    assert response.status_code == 200
    tokens = response.get_json()
    dashboard = client.get(
        f"/api/analytics/{tenant.id}",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert dashboard.status_code == 200

    refreshed = client.post(
        "/api/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
    )
    assert refreshed.status_code == 200
    assert set(refreshed.get_json()) == {"access_token", "token_type", "expires_in"}

    with_access = client.post(
        "/api/auth/refresh", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert with_access.status_code == 401
    assert with_access.get_json()["success"] is False
    assert "Only refresh tokens" in with_access.get_json()["message"]
    with_refresh = client.get(
        f"/api/analytics/{tenant.id}",
        headers={"Authorization": f"Bearer {tokens['refresh_token']}"},
    )
    assert "Only non-refresh tokens" in with_refresh.get_json()["message"]


def test_an_unknown_email_costs_a_password_hash_as_a_wrong_password_does(
    client, make_tenant, make_user, monkeypatch
):
    """Otherwise the time a login takes tells which emails have an account."""
    user = make_user(make_tenant(), password="right-password")
    hashed = []
    real_check = auth.check_password_hash

    def check_counted(stored_hash, password):
        hashed.append(password)
        return real_check(stored_hash, password)

    monkeypatch.setattr(auth, "check_password_hash", check_counted)
    answers = [
        login(client, user.email, "wrong-password").status_code,
        login(client, "nobody@example.com", "wrong-password").status_code,
    ]
    assert answers == [401, 401]
    assert hashed == ["wrong-password", "wrong-password"]


def test_a_sign_in_holds_no_database_connection_while_its_password_is_checked(
    client, make_tenant, make_user, monkeypatch
):
    """The check is ~100 ms of CPU: a pooled connection held through it is one that the
    worker's events and QR scans wait for when sign-ins come in a burst."""
    email = make_user(make_tenant(), password="right-password").email
    connections_held = []
    real_check = auth.check_password_hash

    def check_watched(stored_hash, password):
        connections_held.append(db.engine.pool.checkedout())
        return real_check(stored_hash, password)

    monkeypatch.setattr(auth, "check_password_hash", check_watched)
    answers = [
        login(client, email, "right-password").status_code,
        login(client, email, "wrong-password").status_code,
        login(client, "nobody@example.com", "right-password").status_code,
    ]
    assert answers == [200, 401, 401]
    assert connections_held == [0, 0, 0]


@pytest.mark.parametrize("meanwhile", ["password changed", "user deleted"])
def test_a_password_checked_while_its_user_changed_does_not_sign_in(
    client, make_user, monkeypatch, meanwhile
):
    """The user is read again after the check: an operator's set-password or user delete
    that landed meanwhile wins (and a deleted user is a 401, not a 500)."""
    user = make_user(password="right-password")
    user_id, email = user.id, user.email
    real_check = auth.check_password_hash

    def check_then_change(stored_hash, password):
        with db.engine.begin() as connection:
            users = User.__table__
            if meanwhile == "user deleted":
                connection.execute(users.delete().where(users.c.id == user_id))
            else:
                new_hash = auth.generate_password_hash("operators-choice")
                connection.execute(
                    users.update().where(users.c.id == user_id).values(password_hash=new_hash)
                )
        return real_check(stored_hash, password)

    monkeypatch.setattr(auth, "check_password_hash", check_then_change)
    answer = login(client, email, "right-password")
    assert (answer.status_code, answer.get_json()["error"]) == (401, "invalid_credentials")


def test_tokens_say_their_type_and_how_long_the_access_token_lasts(make_app, make_user):
    app = make_app(JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=15))
    client = app.test_client()
    email = make_user(password="right-password").email
    tokens = login(client, email, "right-password").get_json()
    assert (tokens["token_type"], tokens["expires_in"]) == ("Bearer", 900)
    with app.app_context():
        access = decode_token(tokens["access_token"])
    assert access["exp"] - access["iat"] == 900
    refreshed = client.post(
        "/api/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
    ).get_json()
    assert (refreshed["token_type"], refreshed["expires_in"]) == ("Bearer", 900)


def test_tokens_and_owner_answers_are_not_for_caches(client, make_tenant, make_user):
    tenant = make_tenant(landing_url="https://shop.example/")
    email = make_user(tenant, password="right-password").email
    signed_in = login(client, email, "right-password")
    owner = {"Authorization": f"Bearer {signed_in.get_json()['access_token']}"}
    answers = [
        signed_in,
        client.get(f"/api/analytics/{tenant.id}", headers=owner),
        client.get(f"/api/tenants/{tenant.id}", headers=owner),
        client.get("/api/tenants/987654", headers=owner),  # a 404 too
        client.get(f"/api/tenants/{tenant.id}/qr", headers=owner),  # send_file's no-cache
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 200]
    assert [a.headers.get("Cache-Control") for a in answers] == ["no-store"] * 5
    assert "Cache-Control" not in client.post("/api/analytics/track", json={}).headers


def test_tokens_last_an_hour_and_thirty_days_unless_set(monkeypatch, make_app, make_user):
    """README: JWT_ACCESS_MINUTES defaults to 60 (expires_in 3600), JWT_REFRESH_DAYS to 30."""
    for name in ("JWT_ACCESS_MINUTES", "JWT_REFRESH_DAYS"):
        monkeypatch.delenv(name, raising=False)
    app = make_app()
    client = app.test_client()
    email = make_user(password="right-password").email
    tokens = login(client, email, "right-password").get_json()
    assert tokens["expires_in"] == 3600
    with app.app_context():
        access, refresh = (decode_token(tokens[kind]) for kind in ("access_token", "refresh_token"))
    assert access["exp"] - access["iat"] == 3600
    assert refresh["exp"] - refresh["iat"] == 30 * 24 * 3600


@pytest.mark.parametrize(("setting", "expires_in"), [(900, 900), (False, None)])
def test_expires_in_follows_the_lifetime_however_it_is_set(
    make_app, make_user, setting, expires_in
):
    """flask-jwt-extended takes seconds, a timedelta or False (never expires)."""
    client = make_app(JWT_ACCESS_TOKEN_EXPIRES=setting).test_client()
    email = make_user(password="right-password").email
    tokens = login(client, email, "right-password")
    assert tokens.status_code == 200
    assert tokens.get_json().get("expires_in") == expires_in


@pytest.mark.parametrize("which", ["password", "email"])
def test_wrong_credentials_are_401(client, make_user, which):
    user = make_user(password="right-password")
    email = user.email if which == "password" else "nobody@example.com"
    response = login(client, email, "wrong-password")
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_credentials"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tenant-analytics"'


def test_login_body_is_validated(client):
    response = client.post("/api/auth/login", json={"email": "x@y.z"})
    assert response.status_code == 422
    assert "password" in response.get_json()["errors"]


def test_login_attempts_are_limited_per_ip_and_email(make_app, make_user):
    app = make_app(LOGIN_RATE_LIMIT="3 per minute")
    client = app.test_client()
    with app.app_context():
        user = make_user(password="right-password")
        email = user.email
    statuses = [login(client, email, "wrong").status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    other = login(client, "someone-else@example.com", "wrong")
    assert other.status_code == 401  # another email from the same IP has its own bucket


def test_an_email_that_is_no_text_is_counted_not_taken_for_a_storage_failure(make_app, caplog):
    """A lone surrogate ("\\ud800") failed the bucket's hashing: flask-limiter took it for
    its storage failing (a traceback, its in-memory fallback for the whole process, a
    limit each worker counted afresh), and the attempt was not counted."""
    app = make_app(LOGIN_RATE_LIMIT="2 per minute")
    client = app.test_client()
    answers = [login(client, "\ud800@x.example", "guess") for _ in range(3)]
    assert [a.status_code for a in answers] == [422, 422, 429]
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


def test_login_limit_per_email_counts_every_spelling_of_it(make_app, make_user):
    """Sign-in finds the account whatever the case and surrounding spaces of its email:
    another spelling of a spent email must not open a fresh bucket of guesses."""
    app = make_app(LOGIN_RATE_LIMIT="3 per minute")
    client = app.test_client()
    with app.app_context():
        email = make_user(password="right-password").email
    assert [login(client, email, "wrong").status_code for _ in range(3)] == [401] * 3
    spellings = [email.upper(), f"  {email}  ", f" {email.title()} "]
    # The right password even: each spelling signs in to the account once the limit passes.
    statuses = [login(client, spelling, "right-password").status_code for spelling in spellings]
    assert statuses == [429, 429, 429]


def test_login_headers_tell_of_the_limit_closest_to_refusing(make_app):
    app = make_app(LOGIN_RATE_LIMIT="10 per minute", LOGIN_ADDRESS_RATE_LIMIT="4 per minute")
    client = app.test_client()
    answers = [login(client, f"user{n}@example.com", "guess") for n in range(5)]
    assert [a.status_code for a in answers] == [401] * 4 + [429]
    told = [(a.headers["X-RateLimit-Limit"], a.headers["X-RateLimit-Remaining"]) for a in answers]
    assert told == [("4", "3"), ("4", "2"), ("4", "1"), ("4", "0"), ("4", "0")]


def test_login_limit_per_address_counts_an_ipv6_client_by_its_64(make_app):
    """An IPv6 host holds a whole /64: a fresh address per try must not buy more tries."""
    app = make_app(LOGIN_ADDRESS_RATE_LIMIT="2 per minute")
    client = app.test_client()

    def from_address(address, n):
        return client.post(
            "/api/auth/login",
            json={"email": f"user{n}@example.com", "password": "guess"},
            environ_base={"REMOTE_ADDR": address},
        ).status_code

    same_64 = [from_address(f"2001:db8:1:2::{n}", n) for n in range(1, 4)]
    assert same_64 == [401, 401, 429]
    assert from_address("2001:db8:1:3::1", 9) == 401  # the next /64 is another client


def test_login_attempts_are_limited_per_ip_across_emails(make_app, make_user):
    app = make_app(LOGIN_RATE_LIMIT="3 per minute", LOGIN_ADDRESS_RATE_LIMIT="5 per minute")
    client = app.test_client()
    with app.app_context():
        email = make_user(password="right-password").email
    # Password spraying: one guess at each of many accounts from one address.
    sprayed = [login(client, f"user{n}@example.com", "Summer2026!").status_code for n in range(6)]
    assert sprayed == [401] * 5 + [429]
    assert login(client, email, "right-password").status_code == 429  # the address waits
    elsewhere = app.test_client()
    response = elsewhere.post(
        "/api/auth/login",
        json={"email": email, "password": "right-password"},
        environ_base={"REMOTE_ADDR": "198.51.100.9"},
    )
    assert response.status_code == 200  # the account itself is not locked


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic abc"}],
)
def test_owner_endpoints_need_a_valid_token(client, make_tenant, headers):
    tenant = make_tenant()
    response = client.get(f"/api/analytics/{tenant.id}", headers=headers)
    assert response.status_code == 401
    body = response.get_json()
    assert body["success"] is False and body["message"]
    # HTTP's challenge (RFC 6750): a token that was sent and refused is invalid_token.
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert ('error="invalid_token"' in challenge) == ("Bearer" in headers.get("Authorization", ""))


def test_a_password_is_checked_as_typed_spaces_and_all(client, make_tenant, make_user):
    user = make_user(make_tenant(), password="  spaced pass  ")
    login = "/api/auth/login"
    for wrong in ("spaced pass", " spaced pass "):
        response = client.post(login, json={"email": user.email, "password": wrong})
        assert response.status_code == 401
    response = client.post(login, json={"email": user.email, "password": "  spaced pass  "})
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(client, make_tenant, make_user, scheme):
    from tenant_analytics.auth import access_token_for

    tenant = make_tenant()
    token = access_token_for(make_user(tenant), "a-sign-in")
    response = client.get(
        f"/api/analytics/{tenant.id}", headers={"Authorization": f"{scheme} {token}"}
    )
    assert response.status_code == 200, response.get_json()


def test_token_of_a_deleted_user_is_401(client, make_tenant, make_user, auth_headers):
    from tenant_analytics.extensions import db

    tenant = make_tenant()
    user = make_user(tenant)
    headers = auth_headers(user)
    db.session.delete(user)
    db.session.commit()
    response = client.get(f"/api/analytics/{tenant.id}", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["success"] is False


def test_a_new_user_given_a_deleted_users_id_does_not_inherit_its_tokens(
    client, make_tenant, make_user, auth_headers
):
    """SQLite hands the highest id out again once its row is deleted: the deleted owner's
    token would have signed in as the new user (here an admin)."""
    from tenant_analytics.extensions import db

    tenant = make_tenant()
    owner = make_user(tenant)
    owner_id, headers = owner.id, auth_headers(owner)
    db.session.delete(owner)
    db.session.commit()
    admin = make_user(admin=True)
    admin.id = owner_id  # as SQLite would choose it; PostgreSQL's sequence never does
    db.session.commit()
    assert client.get("/api/tenants", headers=auth_headers(admin)).status_code == 200
    response = client.get("/api/tenants", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_token"


def test_a_password_change_ends_the_tokens_issued_before(client, make_tenant, make_user):
    from werkzeug.security import generate_password_hash

    from tenant_analytics.extensions import db

    tenant = make_tenant()
    user = make_user(tenant, password="old-password")
    login = {"email": user.email, "password": "old-password"}
    tokens = client.post("/api/auth/login", json=login).get_json()
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    assert client.get(f"/api/analytics/{tenant.id}", headers=access).status_code == 200
    assert client.post("/api/auth/refresh", headers=refresh).status_code == 200
    user.password_hash = generate_password_hash("new-password")
    db.session.commit()
    assert client.get(f"/api/analytics/{tenant.id}", headers=access).status_code == 401
    assert client.post("/api/auth/refresh", headers=refresh).status_code == 401
    login["password"] = "new-password"
    fresh = client.post("/api/auth/login", json=login).get_json()["access_token"]
    answer = client.get(f"/api/analytics/{tenant.id}", headers={"Authorization": f"Bearer {fresh}"})
    assert answer.status_code == 200


def test_a_token_without_the_credential_stamp_is_401(client, make_tenant, make_user):
    """Signed with the right key and naming a real user, but not issued by sign-in."""
    from flask_jwt_extended import create_access_token

    tenant = make_tenant()
    user = make_user(tenant)
    token = create_access_token(identity=str(user.id))
    response = client.get(
        f"/api/analytics/{tenant.id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401


@pytest.mark.parametrize("subject", ["99999999999999999999999", "\u0661", "-1", "0"])
def test_token_naming_no_possible_user_is_401(client, make_tenant, subject):
    from flask_jwt_extended import create_access_token

    tenant = make_tenant()
    token = create_access_token(identity=subject)
    response = client.get(
        f"/api/analytics/{tenant.id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401  # not a 500 from an id the database cannot hold
    assert response.get_json()["success"] is False


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("with_token", ["access_token", "refresh_token"])
def test_logout_ends_the_sign_ins_tokens_and_no_other(client, make_tenant, make_user, with_token):
    tenant = make_tenant()
    email = make_user(tenant, password="right-password").email
    phone = login(client, email, "right-password").get_json()
    laptop = login(client, email, "right-password").get_json()
    refreshed = client.post("/api/auth/refresh", headers=_bearer(phone["refresh_token"]))
    phone_later = refreshed.get_json()["access_token"]

    out = client.post("/api/auth/logout", headers=_bearer(phone[with_token]))
    assert (out.status_code, out.data) == (204, b"")
    assert "Content-Type" not in out.headers  # no body, so no type (it said text/html)
    assert out.headers["Cache-Control"] == "no-store"

    dashboard = f"/api/analytics/{tenant.id}"
    for token in (phone["access_token"], phone_later):
        refused = client.get(dashboard, headers=_bearer(token))
        assert refused.status_code == 401
        assert refused.get_json()["error"] == "token_revoked"
        assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    again = client.post("/api/auth/refresh", headers=_bearer(phone["refresh_token"]))
    assert (again.status_code, again.get_json()["error"]) == (401, "token_revoked")
    assert client.post("/api/auth/logout", headers=_bearer(phone[with_token])).status_code == 401

    assert client.get(dashboard, headers=_bearer(laptop["access_token"])).status_code == 200
    other = client.post("/api/auth/refresh", headers=_bearer(laptop["refresh_token"]))
    assert other.status_code == 200
    # Signing in again after logging out works.
    back = login(client, email, "right-password").get_json()["access_token"]
    assert client.get(dashboard, headers=_bearer(back)).status_code == 200


def test_logout_needs_a_token(client):
    answer = client.post("/api/auth/logout")
    assert (answer.status_code, answer.get_json()["error"]) == (401, "unauthorized")


def test_tokens_issued_before_sign_ins_were_named_are_refused(client, make_tenant, make_user):
    """Such a token could not be logged out with the rest of its sign-in (its refresh
    token would go on): after the upgrade its holder signs in again, once."""
    from flask_jwt_extended import create_access_token, create_refresh_token

    from tenant_analytics.auth import STAMP, credential_stamp

    tenant = make_tenant()
    user = make_user(tenant, password="right-password")
    claims = {STAMP: credential_stamp(user)}
    old_access = create_access_token(str(user.id), additional_claims=claims)
    old_refresh = create_refresh_token(str(user.id), additional_claims=claims)
    dashboard = f"/api/analytics/{tenant.id}"
    refused = client.get(dashboard, headers=_bearer(old_access))
    assert (refused.status_code, refused.get_json()["error"]) == (401, "token_revoked")
    assert "sign in again" in refused.get_json()["message"]
    assert client.post("/api/auth/refresh", headers=_bearer(old_refresh)).status_code == 401
    again = login(client, user.email, "right-password").get_json()["access_token"]
    assert client.get(dashboard, headers=_bearer(again)).status_code == 200


def test_sign_outs_are_kept_until_their_tokens_expire_then_forgotten(
    make_app, make_tenant, make_user
):
    from datetime import UTC, datetime

    from sqlalchemy import select

    from tenant_analytics.extensions import db
    from tenant_analytics.models import SignOut

    app = make_app(
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=15), JWT_REFRESH_TOKEN_EXPIRES=timedelta(days=2)
    )
    client = app.test_client()
    email = make_user(make_tenant(), password="right-password").email
    first = login(client, email, "right-password").get_json()
    before = datetime.now(UTC)
    assert (
        client.post("/api/auth/logout", headers=_bearer(first["access_token"])).status_code == 204
    )
    with app.app_context():
        (kept,) = db.session.scalars(select(SignOut)).all()
        lasts = kept.expires_at - before
        assert timedelta(days=2, minutes=15) <= lasts < timedelta(days=2, minutes=16)
        kept.expires_at = before - timedelta(seconds=1)  # its tokens have all expired
        db.session.commit()
    second = login(client, email, "right-password").get_json()
    assert (
        client.post("/api/auth/logout", headers=_bearer(second["refresh_token"])).status_code == 204
    )
    with app.app_context():
        signed_out = db.session.scalars(select(SignOut.sign_in)).all()
    assert signed_out == [decode_sign_in(app, second["refresh_token"])]


def test_with_tokens_that_never_expire_a_sign_out_is_kept_for_good(make_app, make_user):
    from sqlalchemy import select

    from tenant_analytics.extensions import db
    from tenant_analytics.models import SignOut

    app = make_app(JWT_REFRESH_TOKEN_EXPIRES=False)
    client = app.test_client()
    email = make_user(password="right-password").email
    tokens = login(client, email, "right-password").get_json()
    assert (
        client.post("/api/auth/logout", headers=_bearer(tokens["access_token"])).status_code == 204
    )
    with app.app_context():
        assert db.session.scalars(select(SignOut.expires_at)).all() == [None]


def decode_sign_in(app, token: str) -> str:
    from tenant_analytics.auth import SIGN_IN

    with app.app_context():
        return decode_token(token)[SIGN_IN]


def test_a_sign_out_outlives_a_refresh_token_issued_under_a_longer_lifetime(make_app, make_user):
    """JWT_REFRESH_DAYS lowered after a sign-in: its refresh token still runs to its own
    expiry, and the sign-out is kept as long."""
    from datetime import UTC, datetime

    from flask_jwt_extended import create_refresh_token
    from sqlalchemy import select

    from tenant_analytics.auth import SIGN_IN, STAMP, credential_stamp
    from tenant_analytics.extensions import db
    from tenant_analytics.models import SignOut

    app = make_app(
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=15), JWT_REFRESH_TOKEN_EXPIRES=timedelta(days=2)
    )
    user = make_user()
    before = datetime.now(UTC).replace(microsecond=0)  # whole seconds, as a token's exp
    with app.app_context():
        claims = {STAMP: credential_stamp(user), SIGN_IN: "issued-under-30-days"}
        token = create_refresh_token(
            str(user.id), additional_claims=claims, expires_delta=timedelta(days=30)
        )
    answer = app.test_client().post("/api/auth/logout", headers=_bearer(token))
    assert answer.status_code == 204
    with app.app_context():
        kept = db.session.scalars(select(SignOut.expires_at)).one()
    assert timedelta(days=30, minutes=15) <= kept - before < timedelta(days=30, minutes=16)


def change_password(client, headers, current, new, address="127.0.0.1"):
    body = {"current_password": current, "new_password": new}
    return client.post(
        "/api/auth/password", json=body, headers=headers, environ_base={"REMOTE_ADDR": address}
    )


def test_an_owner_changes_its_own_password_and_every_earlier_token_ends(
    client, make_tenant, make_user
):
    tenant = make_tenant()
    user = make_user(tenant, password="old-password")
    email = user.email
    tokens = login(client, email, "old-password").get_json()
    old = {"Authorization": f"Bearer {tokens['access_token']}"}
    other_device = login(client, email, "old-password").get_json()
    changed = change_password(client, old, "old-password", "a new passphrase")
    assert changed.status_code == 200
    fresh = changed.get_json()
    assert set(fresh) == {"access_token", "refresh_token", "token_type", "expires_in"}
    # This device goes on with the new tokens; every earlier one, any device's, is refused.
    new = {"Authorization": f"Bearer {fresh['access_token']}"}
    assert client.get(f"/api/analytics/{tenant.id}", headers=new).status_code == 200
    for token in (tokens["access_token"], other_device["access_token"]):
        answer = client.get(
            f"/api/analytics/{tenant.id}", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 401
    refresh = {"Authorization": f"Bearer {other_device['refresh_token']}"}
    assert client.post("/api/auth/refresh", headers=refresh).status_code == 401
    assert login(client, email, "old-password").status_code == 401
    assert login(client, email, "a new passphrase").status_code == 200


@pytest.mark.parametrize(
    ("current", "new", "status", "field"),
    [
        ("wrong-password", "a new passphrase", 403, None),  # a stolen token is not enough
        ("old-password", "short", 422, "new_password"),
        ("old-password", "old-password", 422, "new_password"),
        ("old-password", "", 422, "new_password"),
    ],
)
def test_a_password_change_needs_the_current_one_and_a_new_one_fit_to_use(
    client, make_user, auth_headers, current, new, status, field
):
    user = make_user(password="old-password")
    email, headers = user.email, auth_headers(user)
    answer = change_password(client, headers, current, new)
    assert answer.status_code == status
    if field:
        assert field in answer.get_json()["errors"]
    assert login(client, email, "old-password").status_code == 200  # unchanged


def test_a_password_change_needs_a_token_and_counts_as_a_sign_in_attempt(make_app, make_user):
    app = make_app(LOGIN_RATE_LIMIT="3 per minute")
    client = app.test_client()
    assert change_password(client, {}, "old-password", "a new passphrase").status_code == 401
    with app.app_context():
        user = make_user(password="old-password")
        token = login(client, user.email, "old-password").get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    statuses = [
        change_password(client, headers, "guess", "a new passphrase").status_code for _ in range(4)
    ]
    assert statuses == [403, 403, 403, 429]


def test_password_change_guesses_are_limited_per_user_from_any_address(make_app, make_user):
    """A stolen token's guesses count against its user (TRUSTED_PROXY_COUNT is 0: the
    client address is REMOTE_ADDR): another address buys it no more, and another user
    changing a password from the same address is not held up by them."""
    app = make_app(LOGIN_RATE_LIMIT="3 per minute")
    client = app.test_client()
    with app.app_context():
        stolen, other = make_user(password="old-password"), make_user(password="old-password")
        tokens = [login(client, user.email, "old-password").get_json() for user in (stolen, other)]
    stolen_headers, other_headers = (
        {"Authorization": f"Bearer {token['access_token']}"} for token in tokens
    )

    def guess(headers, address):
        return change_password(client, headers, "guess", "a new passphrase", address).status_code

    first, second = "198.51.100.7", "203.0.113.8"
    assert [guess(stolen_headers, first) for _ in range(3)] == [403, 403, 403]
    assert guess(stolen_headers, second) == 429  # the same user, from elsewhere
    assert guess(other_headers, first) == 403  # the same address, for another user


def test_password_guesses_from_one_address_share_one_bucket_across_endpoints(make_app, make_user):
    """Sign-in and password change both check a password: an address gets no more
    guesses by spreading them over the two."""
    app = make_app(LOGIN_ADDRESS_RATE_LIMIT="3 per minute", LOGIN_RATE_LIMIT="100 per minute")
    client = app.test_client()
    with app.app_context():
        user = make_user(password="old-password")
        email = user.email
    token = login(client, email, "old-password").get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    guesses = [change_password(client, headers, "guess", "a new passphrase").status_code]
    guesses.append(login(client, email, "guess").status_code)
    guesses.append(change_password(client, headers, "guess", "a new passphrase").status_code)
    assert guesses == [403, 401, 429]


def test_a_password_change_checks_the_password_an_operator_just_set(
    app, make_user, auth_headers, is_postgres
):
    """An operator's `user set-password` under way when an owner's change arrives: the
    change waits for it and checks the password it set, rather than overwrite it."""
    if not is_postgres:
        pytest.skip("row locks are PostgreSQL's (SQLite writes one at a time)")
    import threading

    from sqlalchemy.orm import Session
    from werkzeug.security import generate_password_hash

    from tenant_analytics.extensions import db
    from tenant_analytics.models import User

    user = make_user(password="old-password")
    user_id, email, headers = user.id, user.email, auth_headers(user)
    answers = []
    operator = Session(db.engine)
    try:
        held = operator.get(User, user_id, with_for_update=True)
        held.password_hash = generate_password_hash("operator-set")
        operator.flush()

        def owner_changes() -> None:
            with app.test_client() as client:
                answers.append(change_password(client, headers, "old-password", "owner's choice"))

        owner = threading.Thread(target=owner_changes)
        owner.start()
        owner.join(1.0)  # it waits for the operator's transaction
        operator.commit()
        owner.join(10)
    finally:
        operator.close()
    assert [answer.status_code for answer in answers] == [403]  # "old-password" no more
    db.session.remove()  # the test's own session still holds the user as first read
    with app.test_client() as client:
        assert login(client, email, "operator-set").status_code == 200


def test_a_password_change_whose_user_is_deleted_meanwhile_is_refused_as_a_gone_user(
    app, make_user, auth_headers, is_postgres
):
    """`user delete` under way when the owner's change arrives: the change waits for it,
    then answers as to a token whose user is gone, not "wrong password"."""
    if not is_postgres:
        pytest.skip("row locks are PostgreSQL's (SQLite writes one at a time)")
    import threading

    from sqlalchemy.orm import Session

    from tenant_analytics.extensions import db
    from tenant_analytics.models import User

    user = make_user(password="old-password")
    user_id, headers = user.id, auth_headers(user)
    answers = []
    operator = Session(db.engine)
    try:
        operator.delete(operator.get(User, user_id, with_for_update=True))
        operator.flush()

        def owner_changes() -> None:
            with app.test_client() as client:
                answers.append(change_password(client, headers, "old-password", "owner's choice"))

        owner = threading.Thread(target=owner_changes)
        owner.start()
        owner.join(1.0)  # it waits for the operator's transaction
        operator.commit()
        owner.join(10)
    finally:
        operator.close()
    assert [(a.status_code, a.get_json()["error"]) for a in answers] == [(401, "invalid_token")]


def test_a_password_change_answers_its_tokens_though_the_user_is_deleted_right_after(
    app, client, make_user, auth_headers
):
    """The change committed, then `user delete` ran before the answer was made: the
    answer is the new tokens (they are refused from then on), not a 500."""
    from sqlalchemy import delete, event
    from sqlalchemy.orm import Session

    from tenant_analytics.extensions import db
    from tenant_analytics.models import User

    user = make_user(password="old-password")
    user_id, headers = user.id, auth_headers(user)

    def operator_deletes(_session) -> None:
        with db.engine.begin() as connection:
            connection.execute(delete(User).where(User.id == user_id))

    event.listen(Session, "after_commit", operator_deletes, once=True)
    try:
        answer = change_password(client, headers, "old-password", "owner's choice")
    finally:
        if event.contains(Session, "after_commit", operator_deletes):
            event.remove(Session, "after_commit", operator_deletes)
    assert answer.status_code == 200
    new_headers = {"Authorization": f"Bearer {answer.get_json()['access_token']}"}
    assert client.get("/api/tenants", headers=new_headers).status_code == 401


def _shifted(app, token: str, seconds: int) -> str:
    """The token as a host whose clock runs ``seconds`` ahead would have issued it."""
    import jwt

    key = app.config["JWT_SECRET_KEY"]
    claims = jwt.decode(token, key, algorithms=["HS256"])
    for name in ("iat", "nbf", "exp"):
        claims[name] += seconds
    return jwt.encode(claims, key, algorithm="HS256")


def test_a_token_from_a_host_a_few_seconds_ahead_is_taken_one_far_ahead_is_not(
    app, client, make_tenant, make_user
):
    tenant = make_tenant()
    token = login(client, make_user(tenant, password="pw-123456").email, "pw-123456")
    token = token.get_json()["access_token"]
    answers = [
        client.get(f"/api/analytics/{tenant.id}", headers=_bearer(_shifted(app, token, ahead)))
        for ahead in (5, 60)
    ]
    assert [answer.status_code for answer in answers] == [200, 401]
    assert answers[1].get_json()["error"] == "invalid_token"


def test_a_refused_token_is_not_quoted_back(client, make_tenant, make_user):
    """PyJWT's reason quotes the token's own header; the answer keeps to the one shape."""
    import base64
    import json

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    header = part({"alg": "HS256", "typ": "JWT", "crit": ["<script>alert(1)</script>"]})
    forged = f"{header}.{part({'sub': '1'})}.c2lnbmF0dXJl"
    answer = client.get("/api/tenants", headers=_bearer(forged))
    assert (answer.status_code, answer.get_json()["error"]) == (401, "invalid_token")
    assert "script" not in answer.get_data(as_text=True)
