"""a write checks, under the tenant's rollup lock, the zone its day keys are in

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 17:30:00.000000

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


# Another process may still hold a tenant's old time zone for a few seconds after it
# changed (and its rollups were rebuilt). A batch calls this after taking the tenants'
# rollup locks, so it sees the zone as of now; SQLSTATE TZ001 makes the writer roll back
# and count the batch again in the new zone (postgres_writer.ZONE_CHANGED).
CREATE_CHECK = """
CREATE FUNCTION rollup_zones_current(tenant_ids int[], zones text[]) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    changed int[];
BEGIN
    SELECT array_agg(tenants.id ORDER BY tenants.id) INTO changed
    FROM unnest(tenant_ids, zones) AS used (id, zone)
    JOIN tenants ON tenants.id = used.id
    WHERE tenants.timezone IS DISTINCT FROM used.zone;
    IF changed IS NOT NULL THEN
        RAISE EXCEPTION 'time zone of tenants % changed', changed USING ERRCODE = 'TZ001';
    END IF;
END
$$
"""


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE_CHECK)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION rollup_zones_current(int[], text[])")
