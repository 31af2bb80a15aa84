"""Command line: ``flask --app tenant_analytics tenant|user|product|events|demo ...``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click
from email_validator import EmailNotValidError, validate_email
from flask import Flask, current_app
from flask.cli import AppGroup
from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from .auth import create_user, set_password
from .database_errors import (
    NOT_MIGRATED,
    connection_failure,
    is_not_migrated,
    is_outage,
    is_privilege_missing,
    role_refused,
)
from .errors import validation_errors
from .event_builders import IDEMPOTENCY_PREFIX, MAX_AGE, QR_SCAN_PREFIX, REPEAT_SCAN_WINDOW
from .extensions import db
from .landing_urls import is_own_qr_redirect
from .models import (
    DEFAULT_CURRENCY,
    MAX_ROW_ID,
    TENANT_SLUG_LENGTH,
    Tenant,
    User,
    is_tenant_slug,
    utcnow,
)
from .partitions import create_ahead, purge_before
from .postgres_writer import limit_lock_waits, lock_timed_out
from .products import create_product
from .rollups import (
    forget_purged_days,
    hold_rollups,
    mark_days_to_be_purged,
    rebuild_rollups,
    unmark_days,
)
from .schemas import (
    PASSWORD_MAX,
    PASSWORD_MIN,
    ForgottenCustomer,
    ProductCreate,
    TenantUpdate,
    iana_zone,
)
from .storage import delete_dedupe_keys
from .tenancy import active_tenants
from .tenant_data import delete_tenant_data, exported_text, forget_customer
from .tenant_settings import switch_tenant

# A tenant's id as the database can hold it (SQLite raised OverflowError past 2**63).
ROW_ID = click.IntRange(1, MAX_ROW_ID)


class SaysDatabaseFailuresInOneLine(click.Command):
    """A database that does not answer, is not migrated yet or refuses the role a
    privilege, said in one line (exit 1) rather than in a traceback of the driver's and
    SQLAlchemy's frames."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SQLAlchemyError as exc:
            db.session.rollback()  # the session outlives the command where it is embedded
            if is_not_migrated(exc):
                fail(NOT_MIGRATED)
            if is_outage(exc) and isinstance(exc, OperationalError):
                fail(connection_failure(exc))
            if is_privilege_missing(exc):
                fail(
                    role_refused(
                        exc, "run it as the role that owns the tables and the schema, or grant it"
                    )
                )
            raise


class DatabaseCommands(SaysDatabaseFailuresInOneLine, AppGroup):
    pass


tenant_cli = DatabaseCommands("tenant", help="Manage tenants.")
user_cli = DatabaseCommands("user", help="Manage owner and admin users.")
product_cli = DatabaseCommands("product", help="Manage a tenant's products.")
events_cli = DatabaseCommands(
    "events", help="Partitions, retention and rollups of the events table."
)

# Accepted events may be backdated (conversion beacons); never drop a month they reach.
MIN_RETENTION_DAYS = MAX_AGE.days + 32
MAX_RETENTION_DAYS = 36500  # a century: the cutoff stays a date Python can count days of


Schema = TypeVar("Schema", bound=BaseModel)


def echo_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data))


def validated(schema: type[Schema], **options: Any) -> Schema:
    """The options checked by the API's own request schema: the command line stores
    nothing the API would refuse (a NaN price, an empty name)."""
    try:
        return schema.model_validate({k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        field, messages = next(iter(validation_errors(exc).items()))
        raise click.BadParameter(
            "; ".join(messages), param_hint=f"'--{field.replace('_', '-')}'"
        ) from None


def fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise SystemExit(1)


def user_by_email(email: str) -> User:
    user = db.session.scalar(select(User).where(User.email == email))
    if user is None:
        fail(f"no user with email {email!r}")
    return user


def tenants_by_id(tenant_ids: tuple[int, ...]) -> list[Tenant]:
    tenants = list(db.session.scalars(select(Tenant).where(Tenant.id.in_(tenant_ids))))
    missing = sorted(set(tenant_ids) - {t.id for t in tenants})
    if missing:
        fail(f"no tenant with id {', '.join(map(str, missing))}")
    return tenants


def valid_timezone(_ctx: Any, _param: Any, value: str) -> str:
    try:
        return iana_zone(value)
    except ValueError:
        raise click.BadParameter(f"unknown IANA time zone {value!r}") from None


def valid_slug(_ctx: Any, _param: Any, value: str) -> str:
    if not is_tenant_slug(value):
        raise click.BadParameter(
            "lower-case letters, digits and single hyphens, "
            f"at most {TENANT_SLUG_LENGTH} characters"
        )
    return value


def valid_base_url(_ctx: Any, _param: Any, value: str) -> str:
    """A server's own address, which the demo tenant's landing page is under."""
    base = value.strip().rstrip("/")
    try:
        parts = urlsplit(base)
        _ = parts.port  # raises on a port that is no number
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a bad port or [host]
        usable = False
    if not usable or "?" in base or "#" in base:
        raise click.BadParameter("the server's address, like http://127.0.0.1:5000")
    return base


def valid_email(_ctx: Any, _param: Any, value: str) -> str:
    """The address, normalized and lower-cased as login compares it; only its form is
    checked (no DNS: the host may have no network)."""
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as error:
        raise click.BadParameter(str(error)) from None


def valid_password(_ctx: Any, _param: Any, value: str | None) -> str | None:
    if value is not None and not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        raise click.BadParameter(f"{PASSWORD_MIN} to {PASSWORD_MAX} characters")
    return value


def password_or_prompt(password: str | None, prompt: str = "Password") -> str:
    """The --password given, else asked for twice, hidden (once the other options are
    known good: nobody should type a password twice only to learn of a typo elsewhere)."""
    while password is None:
        typed = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
        try:
            password = valid_password(None, None, typed)
        except click.BadParameter as error:
            click.echo(f"Error: {error.message}", err=True)
    return password


@tenant_cli.command("create")
@click.option("--name", required=True, help="The business's name, as its owners see it.")
@click.option(
    "--slug",
    required=True,
    callback=valid_slug,
    help="Its public name in /q/<slug> and beacons: lower-case letters, digits, single hyphens.",
)
@click.option("--inactive", is_flag=True, help="Create the tenant switched off.")
@click.option(
    "--timezone",
    default="UTC",
    callback=valid_timezone,
    show_default=True,
    help="An IANA zone (America/Tegucigalpa): its dashboards' days are local days.",
)
@click.option("--landing-url", help="The landing page its QR codes lead to (http or https).")
@click.option(
    "--currency",
    default=DEFAULT_CURRENCY,
    show_default=True,
    help="What it sells in, an ISO 4217 code (USD): its revenue and priced events' default.",
)
def create_tenant(
    name: str, slug: str, inactive: bool, timezone: str, landing_url: str | None, currency: str
) -> None:
    """Create a tenant and print it as one line of JSON."""
    settings = validated(TenantUpdate, name=name, landing_url=landing_url, currency=currency)
    own = [current_app.config["PUBLIC_URL"]] if current_app.config["PUBLIC_URL"] else []
    if settings.landing_url and is_own_qr_redirect(settings.landing_url, own, current_app.url_map):
        raise click.BadParameter(
            "may not be a QR redirect of this service (a loop)", param_hint="'--landing-url'"
        )
    tenant = Tenant(
        name=settings.name,
        slug=slug,
        active=not inactive,
        timezone=timezone,
        landing_url=settings.landing_url,
        currency=settings.currency,
    )
    db.session.add(tenant)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        fail(f"a tenant with slug {slug!r} already exists")
    echo_json(tenant.to_dict())


@tenant_cli.command("list")
def list_tenants() -> None:
    """Every tenant, one line of JSON each, by id."""
    for tenant in db.session.scalars(select(Tenant).order_by(Tenant.id)):
        echo_json(tenant.to_dict())


def _switch_tenant(tenant_id: int, active: bool) -> None:
    # Under the row's lock: an owner's switch-on waits, then finds the tenant suspended.
    tenant = db.session.get(Tenant, tenant_id, with_for_update={"key_share": True})
    if tenant is None:
        fail(f"no tenant with id {tenant_id}")
    switch_tenant(tenant, active, by_operator=True)  # owners cannot undo it
    db.session.commit()
    active_tenants().forget()  # this process; servers within TENANT_CACHE_SECONDS
    echo_json(tenant.to_dict())


@tenant_cli.command("deactivate")
@click.option("--id", "tenant_id", type=ROW_ID, required=True)
def deactivate_tenant(tenant_id: int) -> None:
    """Stop taking the tenant's events and QR scans (its data and dashboards stay)."""
    _switch_tenant(tenant_id, False)


@tenant_cli.command("activate")
@click.option("--id", "tenant_id", type=ROW_ID, required=True)
def activate_tenant(tenant_id: int) -> None:
    """Take the tenant's events and QR scans again."""
    _switch_tenant(tenant_id, True)


@tenant_cli.command("export")
@click.option("--id", "tenant_id", type=ROW_ID, required=True)
def export_tenant(tenant_id: int) -> None:
    """Print all of the tenant's data, one JSON object a line: {"tenant": …} with its
    owners, {"product": …} and {"key": …} each, {"event": …} each, oldest first, and
    {"end": {"events": N}}."""
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        fail(f"no tenant with id {tenant_id}")
    for text in exported_text(db.session, tenant):
        click.echo(text, nl=False)


@tenant_cli.command("delete")
@click.option("--id", "tenant_id", type=ROW_ID, required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete_tenant(tenant_id: int, yes: bool) -> None:
    """Delete the tenant and everything of it for good: events, rollups, products,
    dedupe keys. Its owners' accounts stay (`user delete` removes one)."""
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        fail(f"no tenant with id {tenant_id}")
    if not yes:
        click.confirm(
            f"Delete tenant {tenant_id} ({tenant.slug}) and all its data, for good?", abort=True
        )
    # The servers stop taking its events first: one naming a tenant that is gone would
    # fail its batch.
    owners = [owner.email for owner in tenant.owners]
    switch_tenant(tenant, False, by_operator=True)
    db.session.commit()
    active_tenants().forget()
    cached = current_app.config["TENANT_CACHE_SECONDS"]
    if cached > 0:
        click.echo(
            f"switched off; waiting {cached} s for the servers to see it"
            " (interrupted, it stays switched off: run delete again)",
            err=True,
        )
        time.sleep(cached + 1)
    events = delete_tenant_data(db.session, tenant_id)
    db.session.commit()
    echo_json({"id": tenant_id, "deleted": True, "events_deleted": events, "owners": owners})


@user_cli.command("create")
@click.option("--email", required=True, callback=valid_email)
@click.option(
    "--password",
    callback=valid_password,
    help="Asked for when left out, which keeps it out of shell history and ps.",
)
@click.option(
    "--tenant", "tenant_ids", type=ROW_ID, multiple=True, help="Tenant id it owns (repeatable)."
)
@click.option("--admin", is_flag=True, help="May read every tenant.")
def create_user_command(
    email: str, password: str | None, tenant_ids: tuple[int, ...], admin: bool
) -> None:
    """Create a user owning the given tenants and print it as one line of JSON."""
    tenants = tenants_by_id(tenant_ids)
    if db.session.scalar(select(User).where(User.email == email)):
        fail(f"a user with email {email!r} already exists")
    password = password_or_prompt(password)
    user = create_user(db.session, email, password, tenants=tenants, is_admin=admin)
    db.session.commit()
    echo_json(user.to_dict())
    if not tenants and not admin:  # signs in, then every dashboard answers 404
        click.echo(
            f"note: {email} owns no tenant yet: `user grant --email {email} --tenant ID`",
            err=True,
        )


@user_cli.command("set-password")
@click.option("--email", required=True, callback=valid_email)
@click.option(
    "--password",
    callback=valid_password,
    help="Asked for when left out, which keeps it out of shell history and ps.",
)
def set_password_command(email: str, password: str | None) -> None:
    """Change a user's password, which also ends every token issued to it before."""
    user = user_by_email(email)
    set_password(user, password_or_prompt(password, "New password"))
    db.session.commit()
    echo_json(user.to_dict())


@user_cli.command("list")
def list_users() -> None:
    """Every user, one line of JSON each, by id."""
    for user in db.session.scalars(select(User).order_by(User.id)):
        echo_json(user.to_dict())


@user_cli.command("grant")
@click.option("--email", required=True, callback=valid_email)
@click.option("--tenant", "tenant_ids", type=ROW_ID, multiple=True, required=True)
def grant_tenants(email: str, tenant_ids: tuple[int, ...]) -> None:
    """Let the user own these tenants too; print the user."""
    user = user_by_email(email)
    for tenant in tenants_by_id(tenant_ids):
        if tenant not in user.tenants:
            user.tenants.append(tenant)
    db.session.commit()
    echo_json(user.to_dict())


@user_cli.command("revoke")
@click.option("--email", required=True, callback=valid_email)
@click.option("--tenant", "tenant_ids", type=ROW_ID, multiple=True, required=True)
def revoke_tenants(email: str, tenant_ids: tuple[int, ...]) -> None:
    """Take these tenants from the user, from its very next request; print the user."""
    user = user_by_email(email)
    revoked = {tenant.id for tenant in tenants_by_id(tenant_ids)}
    user.tenants = [tenant for tenant in user.tenants if tenant.id not in revoked]
    db.session.commit()
    echo_json(user.to_dict())


@user_cli.command("delete")
@click.option("--email", required=True, callback=valid_email)
def delete_user(email: str) -> None:
    """Delete the user: every token issued to it stops working (401). Its tenants and
    their data stay."""
    user = user_by_email(email)
    echo_json({**user.to_dict(), "deleted": True})
    db.session.delete(user)
    db.session.commit()


@product_cli.command("create")
@click.option("--tenant", "tenant_id", type=ROW_ID, required=True, help="Tenant id.")
@click.option("--name", required=True)
@click.option("--slug")
@click.option("--price", help="In the tenant's currency, at most 2 decimals (12.50).")
def create_product_command(tenant_id: int, name: str, slug: str | None, price: str | None) -> None:
    """Create a product and print it as one line of JSON."""
    product_fields = validated(ProductCreate, name=name, slug=slug, price=price)
    if db.session.get(Tenant, tenant_id) is None:
        fail(f"no tenant with id {tenant_id}")
    try:
        product = create_product(
            db.session,
            tenant_id,
            name=product_fields.name,
            slug=product_fields.slug,
            price=product_fields.price,
        )
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        fail(f"tenant {tenant_id} already has a product with slug {slug!r}")
    echo_json(product.to_dict())


@events_cli.command("partitions")
@click.option(
    "--ahead",
    type=click.IntRange(0, 36),
    default=3,
    show_default=True,
    help="Months to create ahead (at most 36: a typo must not create a century).",
)
def create_partitions_command(ahead: int) -> None:
    """Create this month's and the next months' partitions (PostgreSQL)."""
    created = _when_events_free(
        lambda connection: create_ahead(connection, now=utcnow(), months_ahead=ahead),
        undone="no partition was made",
    )
    echo_json({"created": created})


EVENTS_LOCK_WAIT = 0.5  # seconds: every write to events waits behind such a lock request
EVENTS_LOCK_ATTEMPTS = 60
Done = TypeVar("Done")


def _when_events_free(work: Callable[[Connection], Done], *, undone: str) -> Done:
    """``work``, which locks the whole events table (a partition made or dropped), in a
    transaction that waits briefly for that lock, tried again while a long query or a
    rollup rebuild reads the table: queued behind it, the lock request would hold up
    every write to events (all tenants') for as long as it waited."""
    for attempt in range(EVENTS_LOCK_ATTEMPTS):
        try:
            connection = db.session.connection()
            limit_lock_waits(connection, EVENTS_LOCK_WAIT)
            done = work(connection)
            db.session.commit()  # the lock on events held no longer than it takes
            return done
        except OperationalError as error:
            db.session.rollback()
            if not lock_timed_out(error):
                raise
            if attempt == 0:
                click.echo("events is in use (a long query or a rebuild); waiting", err=True)
            time.sleep(1)
    raise click.ClickException(
        f"events stayed in use through {EVENTS_LOCK_ATTEMPTS} tries; {undone}, try again"
    )


@events_cli.command("purge")
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(MIN_RETENTION_DAYS, MAX_RETENTION_DAYS),
    metavar="DAYS",
    required=True,
)
def purge_command(days: int) -> None:
    """Drop whole monthly partitions older than DAYS (SQLite: delete the rows), the
    idempotency keys past their window, and the rollups of the days emptied."""
    now = utcnow()
    cutoff = now - timedelta(days=days)
    # Every event before `gone` goes: whole months on PostgreSQL, rows on SQLite.
    gone = cutoff
    if db.session.get_bind().dialect.name == "postgresql":
        gone = cutoff.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    marked = mark_days_to_be_purged(db.session, gone)
    try:
        dropped, rows_deleted = _when_events_free(
            lambda connection: purge_before(connection, cutoff), undone="nothing was dropped"
        )
    except click.ClickException:  # nothing dropped: the reports may read the rollups again
        unmark_days(db.session, marked)
        raise
    # A key past its window blocks nothing (a repeat then claims it anew): gone whatever
    # the cutoff, as the snippet keys every event. One inside it stays, however long.
    windows = {
        IDEMPOTENCY_PREFIX: timedelta(seconds=current_app.config["IDEMPOTENCY_WINDOW_SECONDS"]),
        QR_SCAN_PREFIX: REPEAT_SCAN_WINDOW,
    }
    keys = sum(
        delete_dedupe_keys(db.session, prefix=prefix, seen_before=now - window)
        for prefix, window in windows.items()
    )
    rollup_rows = forget_purged_days(db.session, gone)
    counted = {} if rows_deleted is None else {"events_deleted": rows_deleted}
    echo_json(
        {
            "dropped": dropped,
            **counted,
            "dedupe_keys_deleted": keys,
            "rollup_rows_deleted": rollup_rows,
        }
    )


@events_cli.command("rebuild-rollups")
@click.option("--tenant", "tenant_id", type=ROW_ID, required=True)
def rebuild_rollups_command(tenant_id: int) -> None:
    """Recompute a tenant's rollups from its events (after a bulk load, a change made in
    the database, or a tzdata update; a zone changed through the API rebuilds them)."""
    if db.session.get(Tenant, tenant_id) is None:
        fail(f"no tenant with id {tenant_id}")
    rebuild_rollups(db.session, tenant_id)
    db.session.commit()
    echo_json({"tenant": tenant_id, "rebuilt": True})


@events_cli.command("forget-customer")
@click.option("--tenant", "tenant_id", type=ROW_ID, required=True)
@click.option(
    "--user-id",
    required=True,
    help="The customer's user_id, as the tenant sent it (spaces around it, as the API, left out).",
)
def forget_customer_command(tenant_id: int, user_id: str) -> None:
    """Delete every event of the tenant that names the customer (a request to be
    forgotten), then recount the tenant's rollups from the events left."""
    user_id = validated(ForgottenCustomer, user_id=user_id).user_id
    if db.session.get(Tenant, tenant_id) is None:
        fail(f"no tenant with id {tenant_id}")
    # Before the deletion: an event of the customer's committed while it ran would be
    # missed by it and counted by the rebuild.
    hold_rollups(db.session, tenant_id)
    deleted = forget_customer(db.session, tenant_id, user_id)
    if deleted:
        rebuild_rollups(db.session, tenant_id)  # in the same transaction: never half-counted
    db.session.commit()
    echo_json({"tenant": tenant_id, "events_deleted": deleted, "rollups_rebuilt": bool(deleted)})


@click.command("demo", cls=SaysDatabaseFailuresInOneLine)
@click.option(
    "--url",
    "base_url",
    default="http://127.0.0.1:5000",
    show_default=True,
    callback=valid_base_url,
    help="Where the server answers, for the printed curl lines and the demo's landing page.",
)
def demo_command(base_url: str) -> None:
    """Create (once) a demo tenant, owner and products with a week of events."""
    from .demo import DemoUnavailable, load_demo

    if current_app.config["APP_ENV"] == "production":  # a login everyone knows
        raise click.ClickException("the demo is not loaded in production (APP_ENV=production)")
    try:
        echo = load_demo(db.session, base_url)
    except DemoUnavailable as error:
        raise click.ClickException(f"the demo is not loaded: {error}") from None
    db.session.commit()
    click.echo(echo)


def register_commands(app: Flask) -> None:
    app.cli.add_command(tenant_cli)
    app.cli.add_command(user_cli)
    app.cli.add_command(product_cli)
    app.cli.add_command(events_cli)
    app.cli.add_command(demo_command)
