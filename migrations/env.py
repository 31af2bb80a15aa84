import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from tenant_analytics.database_errors import (
    connection_failure,
    driver_first_line,
    is_outage,
    is_privilege_missing,
)
from tenant_analytics.ingestion import is_read_only
from tenant_analytics.models import MIGRATIONS_LOCK
from tenant_analytics.partitions import include_in_migrations
from tenant_analytics.postgres_writer import lock_timed_out

config = context.config

# Keep the app's loggers alive when migrations run inside it (tests, CLI).
fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")


def get_engine():
    return current_app.extensions["migrate"].db.engine


def get_engine_url():
    # "%" doubled: the .ini parser would read it as interpolation.
    return get_engine().url.render_as_string(hide_password=False).replace("%", "%%")


config.set_main_option("sqlalchemy.url", get_engine_url())
target_db = current_app.extensions["migrate"].db


def get_metadata():
    if hasattr(target_db, "metadatas"):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.

    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=get_metadata(),
        literal_binds=True,
        # Not psycopg2's pyformat, which writes each % of op.execute() text as %% (in the
        # script: format('%s') and RAISE '%' of the migrations would then fail).
        dialect_opts={"paramstyle": "named"},
    )

    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    # this callback is used to prevent an auto-migration from being generated
    # when there are no changes to the schema
    # reference: http://alembic.zzzcomputing.com/en/latest/cookbook.html
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, "autogenerate", False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info("No changes in schema detected.")

    conf_args = current_app.extensions["migrate"].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives

    try:
        connection = get_engine().connect()
    except OperationalError as exc:
        if not is_outage(exc):
            raise
        # As the app's own commands say it: one line, not SQLAlchemy's traceback.
        raise SystemExit(f"Error: {connection_failure(exc)}") from None

    with connection:
        on_sqlite = connection.dialect.name == "sqlite"
        if on_sqlite:
            # Batch mode rebuilds a table by copying it and dropping the original: with
            # foreign keys on, dropping tenants would delete every row that references it
            # (ON DELETE CASCADE). The pragma does nothing inside a transaction.
            set_sqlite_foreign_keys(connection, "OFF")
        on_postgres = connection.dialect.name == "postgresql"
        lock_wait_ms = current_app.config["MIGRATION_LOCK_TIMEOUT_MS"]
        lock_timeout_before = None
        try:
            if on_postgres:
                lock_timeout_before = connection.scalar(text("SHOW lock_timeout"))
                # Hosts that each run `db upgrade` as they deploy take turns: the second
                # finds the work done, not a half-made alembic_version. The session's lock,
                # as each revision commits on its own. A turn lasts the other host's whole
                # upgrade, and holds up no one else: waited for whatever the role's setting.
                set_lock_timeout(connection, "0")
                connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATIONS_LOCK})")
                # A step whose DDL waits behind a long query queues every read and write of
                # its table behind itself: better it gives up and says so.
                set_lock_timeout(connection, f"{lock_wait_ms}ms")
                connection.commit()
            context.configure(
                connection=connection,
                target_metadata=get_metadata(),
                include_name=include_in_migrations,
                # One transaction per revision: a long step (a rollup rebuild, a pass over
                # the events) no longer holds the table locks of the steps before it.
                transaction_per_migration=True,
                **conf_args,
            )

            with context.begin_transaction():
                context.run_migrations()
        except DBAPIError as exc:
            if lock_timed_out(exc):
                raise SystemExit(lock_wait_failure(connection, lock_wait_ms)) from None
            # A standby after a failover, or a role that does not own the database (a
            # restore): a deploy fault said in one line; the revisions before it stay done.
            if not (is_read_only(exc) or is_privilege_missing(exc)):
                raise
            raise SystemExit(
                f"Error: the database refused the migration: {driver_first_line(exc)}"
            ) from None
        finally:
            if on_sqlite:
                set_sqlite_foreign_keys(connection, "ON")
            if on_postgres:
                release_migrations_lock(connection, lock_timeout_before)


def lock_wait_failure(connection, lock_wait_ms):
    """The one line said when a revision's wait for a lock ran out (it changed nothing)."""
    try:
        connection.rollback()
        revision = connection.scalar(text("SELECT version_num FROM alembic_version"))
    except DBAPIError:
        revision = None
    where = f"stays at revision {revision}" if revision else "has no revision yet"
    return (
        f"Error: a migration waited {lock_wait_ms} ms for a lock that another session holds"
        f" on its tables (a long query or transaction) and gave up; the database {where}."
        " Run the command again once that session ends, or let it wait longer with"
        " MIGRATION_LOCK_TIMEOUT_MS (0: for as long as it takes)."
    )


def release_migrations_lock(connection, lock_timeout_before=None):
    """Unlock, and give the session back its lock_timeout, before the connection goes
    back to the app's pool, which keeps it open."""
    if connection.invalidated or connection.closed:
        return  # a lost connection took its locks with it
    try:
        connection.rollback()  # a failed revision's transaction
        if lock_timeout_before is not None:
            set_lock_timeout(connection, lock_timeout_before)
        connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATIONS_LOCK})")
        connection.commit()
    except DBAPIError:
        connection.invalidate()  # closed, not pooled: its lock goes with it


def set_lock_timeout(connection, value):
    """The session's lock_timeout, for its transactions to come."""
    connection.execute(text("SELECT set_config('lock_timeout', :value, false)"), {"value": value})


def set_sqlite_foreign_keys(connection, setting):
    connection.exec_driver_sql(f"PRAGMA foreign_keys={setting}")
    connection.commit()
    enforced = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
    connection.commit()
    if enforced != (setting == "ON"):  # before any migration runs, not after the harm
        raise RuntimeError(f"SQLite did not switch its foreign keys {setting}")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
