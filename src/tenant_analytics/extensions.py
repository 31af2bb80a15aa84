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

from .privacy import limited_client, rate_limit_key


class Base(DeclarativeBase):
    """Declarative base shared by every model."""


def client_ip_key() -> str:
    """Default rate-limit key: a keyed hash of the client address (after ProxyFix when configured).

    Bucket names are stored in Redis and logged on a breach; the raw address never is.
    """
    from flask import current_app, request

    address = limited_client(request.remote_addr)
    return rate_limit_key(current_app.config["VISITOR_HASH_KEY"], address)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
jwt = JWTManager()
limiter = Limiter(key_func=client_ip_key)
cors = CORS()
