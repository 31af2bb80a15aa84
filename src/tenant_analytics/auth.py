"""Users, passwords and how JWTs map to users."""

from __future__ import annotations

from typing import Any

from flask_jwt_extended import JWTManager
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from .errors import error_response
from .extensions import db
from .models import Tenant, User

# Compared against when the email is unknown, so both paths cost one hash check.
_UNUSED_HASH = generate_password_hash("timing-equalizer")


def create_user(
    session: Session, email: str, password: str, *, tenants: list[Tenant], is_admin: bool
) -> User:
    user = User(
        email=email.strip().lower(),
        password_hash=generate_password_hash(password),
        is_admin=is_admin,
        tenants=tenants,
    )
    session.add(user)
    session.commit()
    return user


def authenticate(session: Session, email: str, password: str) -> User | None:
    """The user with these credentials, or None."""
    user = session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    if user is None:
        check_password_hash(_UNUSED_HASH, password)
        return None
    return user if check_password_hash(user.password_hash, password) else None


def register_jwt_callbacks(jwt: JWTManager) -> None:
    """Load the user behind a token; send every JWT error through the JSON error shape."""

    @jwt.user_lookup_loader
    def _load_user(_header: dict[str, Any], payload: dict[str, Any]) -> User | None:
        subject = str(payload.get("sub"))
        if not (subject.isascii() and subject.isdigit() and 0 < int(subject) < 2**31):
            return None
        return db.session.get(User, int(subject))

    @jwt.user_lookup_error_loader
    def _unknown_user(_header, _payload):
        return error_response(401, "The token's user no longer exists.", code="invalid_token")

    @jwt.unauthorized_loader
    def _missing(reason: str):
        return error_response(401, "Authentication required: " + reason, code="unauthorized")

    @jwt.invalid_token_loader
    def _invalid(reason: str):
        return error_response(401, "Invalid token: " + reason, code="invalid_token")

    @jwt.expired_token_loader
    def _expired(_header, _payload):
        return error_response(401, "The token has expired.", code="token_expired")

    @jwt.revoked_token_loader
    def _revoked(_header, _payload):
        return error_response(401, "The token has been revoked.", code="token_revoked")

    @jwt.needs_fresh_token_loader
    def _needs_fresh(_header, _payload):
        return error_response(401, "A fresh token is required.", code="fresh_token_required")

    @jwt.token_verification_failed_loader
    def _verification_failed(_header, _payload):
        return error_response(400, "Token verification failed.", code="invalid_token")
