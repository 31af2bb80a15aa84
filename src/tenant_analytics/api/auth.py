"""Sign-in for tenant owners: JWT access and refresh tokens."""

from __future__ import annotations

from flask import Blueprint
from flask_jwt_extended import current_user, jwt_required

from ..auth import access_token_for, authenticate, challenge, may_sign_in, refresh_token_for
from ..extensions import db
from ..ratelimits import login_attempts
from ..schemas import Login
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
    return {"access_token": access_token_for(user), "refresh_token": refresh_token_for(user)}


@bp.post("/refresh")
@jwt_required(refresh=True)
def refresh():
    """A new access token for a valid refresh token."""
    return {"access_token": access_token_for(current_user)}
