"""Products of a tenant: creation and lookup, always scoped by tenant."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Product, is_row_id
from .storage import allocate_ids


def product_of_tenant(session: Session, tenant_id: int, product_id: int) -> Product | None:
    """The tenant's product with this id; another tenant's product is None, like a missing one."""
    if not is_row_id(product_id):
        return None
    return session.scalar(
        select(Product).where(Product.tenant_id == tenant_id, Product.id == product_id)
    )


def list_products(session: Session, tenant_id: int) -> list[Product]:
    return list(
        session.scalars(select(Product).where(Product.tenant_id == tenant_id).order_by(Product.id))
    )


def create_product(session: Session, tenant_id: int, **fields: Any) -> Product:
    """Add a product; the caller commits (and handles a duplicate slug)."""
    product = Product(tenant_id=tenant_id, **fields)
    if session.get_bind().dialect.name == "sqlite":
        (product.id,) = allocate_ids(session, "products", 1)
    session.add(product)
    session.flush()
    return product
