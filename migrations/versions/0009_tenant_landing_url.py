"""tenants.landing_url: where a tenant's QR codes lead (GET /q/<slug>)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 05:00:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    # Nullable, no default: adding it rewrites no rows, and a tenant without one has no QR.
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("landing_url", sa.String(length=2048), nullable=True))


def downgrade():
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("landing_url")
