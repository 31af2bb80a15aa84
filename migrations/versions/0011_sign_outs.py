"""sign_outs: sign-ins ended by POST /api/auth/logout, whose tokens are refused

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 17:30:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "sign_outs",
        sa.Column("sign_in", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("sign_in"),
    )
    op.create_index("ix_sign_outs_expires_at", "sign_outs", ["expires_at"])


def downgrade():
    op.drop_index("ix_sign_outs_expires_at", table_name="sign_outs")
    op.drop_table("sign_outs")
