"""Users, passwords and how JWTs map to users."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, current_app, request
from flask_jwt_extended import JWTManager, create_access_token, create_refresh_token
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from .cooperative import off_the_event_loop
from .errors import error_response
from .extensions import db
from .logs import get_logger
from .models import SignOut, Tenant, User, dialect_insert, is_row_id, utcnow

log = get_logger(__name__)

STAMP = "stamp"  # the claim holding credential_stamp(user)
SIGN_IN = "sid"  # the claim naming the sign-in a token belongs to (logout ends it)
# A scheme name is case-insensitive (RFC 9110 11.1); flask-jwt-extended matches "Bearer" only.
_BEARER_SCHEME = re.compile(r"(^|,)(\s*)bearer(?=\s)", re.IGNORECASE)
# A refused token's reasons that quote nothing of the token (a refresh token sent for
# an access token, or the reverse).
_OWN_REASONS = ("Only non-refresh tokens are allowed", "Only refresh tokens are allowed")
# Compared against when the email is unknown, so both paths cost one hash check.
_UNUSED_HASH = generate_password_hash("timing-equalizer")


def create_user(
    session: Session, email: str, password: str, *, tenants: list[Tenant], is_admin: bool
) -> User:
    """A new user owning ``tenants``; the caller commits."""
    user = User(email=email.strip().lower(), is_admin=is_admin, tenants=tenants)
    set_password(user, password)
    session.add(user)
    session.flush()
    return user


def set_password(user: User, password: str) -> None:
    """Store a salted hash of ``password``; the tokens issued before stop working
    (their credential stamp no longer matches), the caller commits."""
    user.password_hash = off_the_event_loop(generate_password_hash, password)


def authenticate(session: Session, email: str, password: str) -> User | None:
    """The user with these credentials, or None.

    The read ends before the hash is checked (~100 ms): its pooled connection serves
    other requests meanwhile. The user is read again after, and refused if deleted or
    given another password in between."""
    user = session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    user_id, stored_hash = (None, _UNUSED_HASH) if user is None else (user.id, user.password_hash)
    session.rollback()
    if not off_the_event_loop(check_password_hash, stored_hash, password) or user_id is None:
        return None
    user = session.get(User, user_id, populate_existing=True)
    return user if user is not None and user.password_hash == stored_hash else None


def check_password(user: User, password: str) -> bool:
    """Whether ``password`` is the user's."""
    return off_the_event_loop(check_password_hash, user.password_hash, password)


def credential_stamp(user: User) -> str:
    """What a token carries of the user it was issued to, besides the id.

    It changes with the password (its salted hash), so a password change ends the
    tokens issued before, and a user who gets a deleted user's id (SQLite reuses
    it) does not inherit that user's tokens. Keyed with the JWT secret: the token's
    holder learns nothing of the hash.
    """
    key = current_app.config["JWT_SECRET_KEY"].encode()
    message = f"{user.id}\x1f{user.password_hash}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def new_sign_in() -> str:
    return uuid.uuid4().hex


def access_token_for(user: User, sign_in: str) -> str:
    """An access token of ``sign_in`` (new_sign_in() at a login, the refresh token's)."""
    return create_access_token(str(user.id), additional_claims=_claims(user, sign_in))


def refresh_token_for(user: User, sign_in: str) -> str:
    return create_refresh_token(str(user.id), additional_claims=_claims(user, sign_in))


def _claims(user: User, sign_in: str) -> dict[str, str]:
    return {STAMP: credential_stamp(user), SIGN_IN: sign_in}


def sign_out(session: Session, token: dict[str, Any]) -> None:
    """Refuse every token of the decoded ``token``'s sign-in from now on; forget the
    sign-outs whose tokens have all expired. The caller commits."""
    now = utcnow()
    session.execute(delete(SignOut).where(SignOut.expires_at < now))
    insert = dialect_insert(session)(SignOut).values(
        sign_in=token[SIGN_IN], expires_at=_last_expiry(now, token)
    )
    session.execute(insert.on_conflict_do_nothing(index_elements=[SignOut.sign_in]))


def is_signed_out(session: Session, token: dict[str, Any]) -> bool:
    """Whether the decoded ``token``'s sign-in has ended. A token without one (issued
    before sign-ins were named) has: it could not be logged out with the others."""
    sign_in = token.get(SIGN_IN)
    return not isinstance(sign_in, str) or session.get(SignOut, sign_in) is not None


def _last_expiry(now: datetime, token: dict[str, Any]) -> datetime | None:
    """The latest a token of the sign-in can expire: its refresh token (issued at the
    sign-in), or an access token that issued just before it expired. From the lifetimes
    set now, and from the token logged out with (issued under longer ones, perhaps)."""
    refresh = token_lifetime("JWT_REFRESH_TOKEN_EXPIRES")
    access = token_lifetime("JWT_ACCESS_TOKEN_EXPIRES")
    if refresh is None or access is None or "exp" not in token:
        return None
    expires = datetime.fromtimestamp(token["exp"], UTC)
    leeway = token_lifetime("JWT_DECODE_LEEWAY") or timedelta(0)  # taken past its exp
    return max(now + refresh, expires) + access + leeway


def token_lifetime(setting: str) -> timedelta | None:
    """A JWT lifetime (or leeway) setting as flask-jwt-extended takes it (a timedelta or
    seconds); None for ``False``, tokens that never expire."""
    lifetime = current_app.config[setting]
    if lifetime is False:
        return None
    return lifetime if isinstance(lifetime, timedelta) else timedelta(seconds=lifetime)


def canonical_bearer_scheme() -> None:
    """Spell the Authorization scheme "Bearer" however the client cased it (before a
    request's handler reads the header)."""
    value = request.environ.get("HTTP_AUTHORIZATION")
    if value and "Bearer" not in value:
        request.environ["HTTP_AUTHORIZATION"] = _BEARER_SCHEME.sub(r"\1\2Bearer", value)


def uncached_private_answers(response: Response) -> Response:
    """Answers to a token, and the tokens themselves, are no cache's to keep (a shared
    browser, a proxy); RFC 6749 asks it of token answers."""
    if "Authorization" in request.headers or request.blueprint == "auth":
        # over what a view set: send_file's "no-cache" still lets a cache keep a copy
        response.headers["Cache-Control"] = "no-store"
    return response


def challenge(message: str, *, code: str, token_refused: bool = True) -> tuple[Response, int]:
    """A 401 with the challenge HTTP asks of one (RFC 6750): without a token (or at
    sign-in) it names only the scheme; a token that was sent and refused is
    ``invalid_token``."""
    response, status = error_response(401, message, code=code)
    refused = ', error="invalid_token"' if token_refused else ""
    response.headers["WWW-Authenticate"] = f'Bearer realm="tenant-analytics"{refused}'
    return response, status


def user_gone() -> tuple[Response, int]:
    """The 401 of a token whose user was deleted or changed password since."""
    return challenge(
        "The token's user no longer exists or changed password; sign in again.",
        code="invalid_token",
    )


def may_sign_in(user: User) -> bool:
    """False for the demo's owner on a production server: its password is in the README,
    and `flask demo` may have been run on that database without APP_ENV by mistake."""
    from .demo import is_demo_owner  # which builds on this module

    if current_app.config["APP_ENV"] == "production" and is_demo_owner(user):
        log.warning("the demo's owner refused in production: `user delete` it")
        return False
    return True


def register_jwt_callbacks(jwt: JWTManager) -> None:
    """Load the user behind a token; send every JWT error through the JSON error shape."""

    @jwt.user_lookup_loader
    def _load_user(_header: dict[str, Any], payload: dict[str, Any]) -> User | None:
        subject = str(payload.get("sub"))
        if not (subject.isascii() and subject.isdigit() and is_row_id(int(subject))):
            return None
        user = db.session.get(User, int(subject))
        stamp = payload.get(STAMP)
        if user is None or not isinstance(stamp, str):
            return None
        if not hmac.compare_digest(stamp, credential_stamp(user)):
            return None
        return user if may_sign_in(user) else None

    @jwt.token_in_blocklist_loader
    def _signed_out(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
        return is_signed_out(db.session, payload)

    @jwt.user_lookup_error_loader
    def _unknown_user(_header, _payload):
        return user_gone()

    @jwt.unauthorized_loader
    def _missing(reason: str):
        return challenge(
            "Authentication required: " + reason, code="unauthorized", token_refused=False
        )

    @jwt.invalid_token_loader
    def _invalid(reason: str):
        # PyJWT's reason can quote what the sender wrote in the token (or a codec's
        # internals): the log keeps it, the answer says only what was wrong.
        log.debug("token refused: %s", reason)
        if reason in _OWN_REASONS:  # flask-jwt-extended's fixed words: worth saying
            return challenge(f"Invalid token: {reason}", code="invalid_token")
        return challenge(
            "Invalid token: not signed by this service, or malformed.", code="invalid_token"
        )

    @jwt.expired_token_loader
    def _expired(_header, _payload):
        return challenge("The token has expired.", code="token_expired")

    @jwt.revoked_token_loader
    def _revoked(_header, _payload):
        return challenge(
            "The token's sign-in has ended (a logout, or the server's upgrade); sign in again.",
            code="token_revoked",
        )

    # No route asks for a fresh token (nor verifies claims) yet: these keep a route that
    # will in the one error shape, not flask-jwt-extended's {"msg": ...}.
    @jwt.needs_fresh_token_loader
    def _needs_fresh(_header, _payload):
        return challenge("A fresh token is required.", code="fresh_token_required")

    @jwt.token_verification_failed_loader
    def _verification_failed(_header, _payload):
        return error_response(400, "Token verification failed.", code="invalid_token")
