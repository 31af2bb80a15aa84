"""Sign-in for tenant owners: JWT access and refresh tokens."""

from __future__ import annotations

from flask import Blueprint, Response
from flask_jwt_extended import current_user, get_jwt, jwt_required

from ..auth import (
    SIGN_IN,
    access_token_for,
    authenticate,
    challenge,
    check_password,
    may_sign_in,
    new_sign_in,
    refresh_token_for,
    set_password,
    sign_out,
    token_lifetime,
    user_gone,
)
from ..errors import ApiError
from ..extensions import db
from ..models import User
from ..ratelimits import login_attempts, password_change_attempts
from ..schemas import Login, PasswordChange
from .requests import parse_body

bp = Blueprint("auth", __name__, url_prefix="/api/auth")


@bp.post("/login")
@login_attempts
def login():
    """Exchange email and password for an access and a refresh token."""
    body = parse_body(Login)
    user = authenticate(db.session, body.email, body.password)
    if user is None or not may_sign_in(user):
        return challenge(
            "Invalid email or password.", code="invalid_credentials", token_refused=False
        )
    sign_in = new_sign_in()
    return {**_access(user, sign_in), "refresh_token": refresh_token_for(user, sign_in)}


@bp.post("/refresh")
@jwt_required(refresh=True)
def refresh():
    """A new access token for a valid refresh token."""
    return _access(current_user, get_jwt()[SIGN_IN])  # the blocklist check saw it there


@bp.post("/password")
@jwt_required()
@password_change_attempts
def change_password():
    """Change the caller's password, given the current one: every token issued before,
    on any device, stops working; the answer carries this device's new tokens."""
    body = parse_body(PasswordChange)
    # Locked, and read again: an operator's set-password under way is waited for and
    # checked against, not overwritten.
    user = db.session.get(User, current_user.id, with_for_update=True, populate_existing=True)
    if user is None:  # `user delete` ran while this waited for the row
        return user_gone()
    if not check_password(user, body.current_password):
        raise ApiError(403, "The current password is wrong.", code="wrong_password")
    set_password(user, body.new_password)
    sign_in = new_sign_in()
    # Made before the commit: the row may be deleted as soon as it is released.
    tokens = {**_access(user, sign_in), "refresh_token": refresh_token_for(user, sign_in)}
    db.session.commit()
    return tokens


@bp.post("/logout")
@jwt_required(verify_type=False)
def logout():
    """End this sign-in: its access and refresh tokens are refused from now on.

    Either token of the sign-in will do. Other sign-ins (another device) keep theirs;
    a new password ends them all.
    """
    sign_out(db.session, get_jwt())
    db.session.commit()
    return Response(status=204)


def _access(user: User, sign_in: str) -> dict[str, str | int]:
    """The access token, its scheme and how many seconds it lasts (as OAuth 2 answers;
    nothing said of a token that never expires, ``JWT_ACCESS_TOKEN_EXPIRES=False``)."""
    answer: dict[str, str | int] = {
        "access_token": access_token_for(user, sign_in),
        "token_type": "Bearer",
    }
    lifetime = token_lifetime("JWT_ACCESS_TOKEN_EXPIRES")
    if lifetime is not None:
        answer["expires_in"] = int(lifetime.total_seconds())
    return answer
