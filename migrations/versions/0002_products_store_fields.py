"""products, currency, store fields, dedupe keys

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 11:20:08.756236

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "dedupe_keys",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=160), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "key"),
    )
    op.create_table(
        "products",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("slug", sa.String(length=200), nullable=True),
        sa.Column("price", sa.Numeric(precision=14, scale=2), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "id"),
        sa.UniqueConstraint("tenant_id", "slug", name="uq_products_tenant_slug"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("user_id", sa.String(length=254), nullable=True))
        batch_op.add_column(sa.Column("product_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("product_slug", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("product_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("price", sa.Numeric(precision=14, scale=2), nullable=True))
        batch_op.add_column(sa.Column("quantity", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("source", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("error_message", sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column("revenue", sa.Numeric(precision=14, scale=2), nullable=True))
        batch_op.add_column(sa.Column("currency", sa.String(length=3), nullable=True))

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("currency", sa.String(length=3), server_default="HNL", nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "vip_monetary_threshold",
                sa.Numeric(precision=14, scale=2),
                server_default="100000",
                nullable=False,
            )
        )

    if op.get_bind().dialect.name == "postgresql":
        # Product ids are global: clients name a product by its id alone.
        op.execute("CREATE SEQUENCE products_id_seq AS integer OWNED BY products.id")
        op.execute("ALTER TABLE products ALTER COLUMN id SET DEFAULT nextval('products_id_seq')")


def downgrade():
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("vip_monetary_threshold")
        batch_op.drop_column("currency")

    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("currency")
        batch_op.drop_column("revenue")
        batch_op.drop_column("error_message")
        batch_op.drop_column("source")
        batch_op.drop_column("quantity")
        batch_op.drop_column("price")
        batch_op.drop_column("product_name")
        batch_op.drop_column("product_slug")
        batch_op.drop_column("product_id")
        batch_op.drop_column("user_id")
        batch_op.drop_column("session_id")

    op.drop_table("products")
    op.drop_table("dedupe_keys")
