"""Flask extensions, created unbound and attached to an app in ``create_app``.

Nothing here opens a connection: each extension connects when first used
inside an application context.
"""

from flask_cors import CORS
from flask_jwt_extended import JWTManager
from flask_limiter import Limiter
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base shared by every model."""


def client_ip_key() -> str:
    """Default rate-limit key: the client address (after ProxyFix when configured)."""
    from flask import request

    return request.remote_addr or "unknown"


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
jwt = JWTManager()
limiter = Limiter(key_func=client_ip_key)
cors = CORS()
