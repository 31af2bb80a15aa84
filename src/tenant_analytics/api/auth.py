"""Sign-in for tenant owners: JWT access and refresh tokens."""

from __future__ import annotations

from flask import Blueprint
from flask_jwt_extended import (
    create_access_token,
    create_refresh_token,
    get_jwt_identity,
    jwt_required,
)

from ..auth import authenticate
from ..errors import ApiError
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
    if user is None:
        raise ApiError(401, "Invalid email or password.", code="invalid_credentials")
    identity = str(user.id)
    return {
        "access_token": create_access_token(identity=identity),
        "refresh_token": create_refresh_token(identity=identity),
    }


@bp.post("/refresh")
@jwt_required(refresh=True)
def refresh():
    """A new access token for a valid refresh token."""
    return {"access_token": create_access_token(identity=get_jwt_identity())}
