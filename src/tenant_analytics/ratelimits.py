"""Rate-limit groups. Keys are tenant ids, or keyed hashes of client addresses and emails."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import lru_cache, wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, jsonify, request
from flask_jwt_extended import get_jwt_identity
from flask_limiter import RequestLimit
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.strategies import RateLimiter
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .database_errors import OnceAMinute
from .errors import ApiError, api_error_response, rate_limited, unavailable
from .extensions import client_ip_key, db, limiter
from .logs import get_logger
from .privacy import limited_client, rate_limit_key
from .schemas import MAX_BATCH_EVENTS, beacon_answer
from .tenancy import request_body, requested_tenant

View = TypeVar("View", bound=Callable[..., Any])
log = get_logger(__name__)


def unless_disabled(limit: Callable[[View], View]) -> Callable[[View], View]:
    """``limit`` as a view decorator that costs nothing while RATELIMIT_ENABLED is off.

    flask-limiter still identifies the request and walks its exemptions and meta
    limits on every call when switched off (tens of microseconds on the hottest
    endpoints); switched off, the view is called directly instead.
    """

    def decorate(view: View) -> View:
        limited = limit(view)

        @wraps(view)
        def dispatch(*args: Any, **kwargs: Any) -> Any:
            if current_app.config.get("RATELIMIT_ENABLED", True):
                return limited(*args, **kwargs)
            return view(*args, **kwargs)

        return dispatch  # type: ignore[return-value]

    return decorate


# The shared scope of every endpoint that writes a tenant's events.
TENANT_SCOPE = "tenant"


def _requested_tenant_id() -> int | None:
    """The active tenant the request names, or None (also with the database away: the view
    answers that, 503 or the contract's 202, not a limit's key, which flask-limiter would
    take for its own storage failing: a traceback per request, every limit in memory)."""
    try:
        tenant = requested_tenant()
    except SQLAlchemyError:
        return None
    return tenant.id if tenant is not None else None


def tenant_lookup_failed() -> bool:
    """The database did not answer the request's tenant lookup: the view answers 503 (or
    the contract's 202), and no tenant limit counts it. Counted as an unknown tenant's,
    a client retrying an outage as told found a 429 and a minute's wait at its end."""
    try:
        requested_tenant()
    except SQLAlchemyError:
        return True
    return False


def tenant_key() -> str:
    """One bucket per active tenant; requests naming no known tenant share their address's."""
    tenant_id = _requested_tenant_id()
    if tenant_id is not None:
        return f"tenant:{tenant_id}"
    return f"ip:{client_ip_key()}"


def login_key() -> str:
    """Login attempts are counted per client address and email, hashed together."""
    email = (request_body() or {}).get("email")
    email = email.strip().lower()[:254] if isinstance(email, str) else ""
    address = limited_client(request.remote_addr)
    return f"login:{rate_limit_key(current_app.config['VISITOR_HASH_KEY'], address, email)}"


def login_address_key() -> str:
    """And per client address across every email: one address spraying a password
    over many accounts gets no more tries than LOGIN_ADDRESS_RATE_LIMIT."""
    return f"login-address:{client_ip_key()}"


def _one_event() -> int:
    return 1


def address_share(
    cost: Callable[[], int], tenant_bucket: Callable[[View], View]
) -> Callable[[View], View]:
    """TRACK_ADDRESS_RATE_LIMIT, when set: what one client address may post to one tenant,
    ``cost`` units a request, apart from the ``tenant_bucket`` the view is also under.

    A limit per tenant alone lets a single sender spend a tenant's whole allowance and
    have its visitors' events refused. So the share is spent first, in one step, and a
    request it refuses (429) costs the tenant's bucket nothing, however many arrive at
    once. Before it, the tenant's bucket is looked at (not spent): a request that bucket
    would refuse costs the share nothing either (but for one that another fills the
    bucket before). Off by default: a server that sends a tenant's events in batches
    from one address would need a share as large as the tenant's bucket.
    """

    def decorate(view: View) -> View:
        admitted = tenant_bucket(view)

        @wraps(view)
        def check(*args: Any, **kwargs: Any) -> Any:
            limit = current_app.config.get("TRACK_ADDRESS_RATE_LIMIT")
            if not limit or tenant_lookup_failed():
                return admitted(*args, **kwargs)
            units = cost()
            full = _tenant_bucket_refusal(units)
            if full is not None:
                return full
            retry_after = _address_share_spent(limit, units)
            if retry_after is None:
                return admitted(*args, **kwargs)
            # One text whether the tenant exists or not: /api/v1/interactions hides which.
            return api_error_response(
                rate_limited(
                    f"{limit} per client address for each tenant, and one such share for "
                    "all the tenant ids not found",
                    retry_after,
                )
            )

        return check  # type: ignore[return-value]

    return decorate


class StorageFailuresInOneLine(logging.Filter):
    """flask-limiter falls back quietly for the first request its storage fails, then
    logs a whole traceback for each other request that was already waiting on it (a
    Redis that went away under load: dozens, ~70 lines each). One line a minute says
    it instead; those requests went unchecked, the fallback counts the next ones."""

    QUIET_SECONDS = OnceAMinute.QUIET_SECONDS

    def __init__(self) -> None:
        super().__init__()
        self._last = -self.QUIET_SECONDS
        self._unsaid = 0

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return self._said_in_one_line(record)
        except Exception:  # a log filter that raises would fail the request it logs for
            return True

    def _said_in_one_line(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, RedisError | StorageError | OSError):
            return True
        now = time.monotonic()
        if now - self._last < self.QUIET_SECONDS:
            self._unsaid += 1
            return False
        more = f"; {self._unsaid} more since, unsaid" if self._unsaid else ""
        self._last, self._unsaid = now, 0
        cause = (str(error).splitlines() or [""])[0]
        said = record.getMessage()
        record.msg = "%s (the limiter's storage failed: %s%s)"
        record.args = (said, f"{type(error).__name__} {cause}".strip(), more)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_storage_failures() -> None:
    """Install ``StorageFailuresInOneLine`` on flask-limiter's logger (once)."""
    logger = logging.getLogger("flask-limiter")
    if not any(isinstance(f, StorageFailuresInOneLine) for f in logger.filters):
        logger.addFilter(StorageFailuresInOneLine())


def _storage_found_dead() -> None:
    """Counted in the process's memory from now on, as flask-limiter switches on its own
    limits (one warning for all), until flask-limiter finds the storage back."""
    log.warning("the limiter's storage did not answer: counting in memory meanwhile")
    limiter._storage_dead = True  # flask-limiter's own switch


def _counted(hit: Callable[[RateLimiter], Any]) -> Any:
    """``hit(strategy)`` with the limiter's counting strategy; in memory once its storage
    does not answer."""
    try:
        return hit(limiter.limiter)
    except Exception:
        if limiter._storage_dead or limiter._fallback_limiter is None:
            raise
        _storage_found_dead()
        return hit(limiter.limiter)


def say_when_the_storage_is_back(response: Response) -> Response:
    """After each request: the storage's outage was said, so is its end, whoever found
    the storage back (flask-limiter does on its own schedule, and says so at INFO only)."""
    counting_in_memory = bool(limiter._storage_dead)
    # The app's, as the limiter's state: init_app starts both afresh.
    if current_app.extensions.get("limiter_counted_in_memory") and not counting_in_memory:
        log.warning("the limiter's storage answers again: counting in it")
    current_app.extensions["limiter_counted_in_memory"] = counting_in_memory
    return response


# How often the health check asks a storage found dead whether it answers again.
STORAGE_RECHECK_SECONDS = 30.0
_storage_asked_at = -math.inf


def limiter_storage_answers() -> bool:
    """For the health check. A storage found dead is asked again only every
    STORAGE_RECHECK_SECONDS (flask-limiter also asks on its own schedule): a Redis that
    hangs held each probe a second or two, past a load balancer's timeout, and took
    the host out of rotation for the limiter's outage."""
    global _storage_asked_at
    now = time.monotonic()
    if limiter._storage_dead and now - _storage_asked_at < STORAGE_RECHECK_SECONDS:
        return False
    _storage_asked_at = now
    if limiter.storage.check():
        limiter._storage_dead = False  # said by say_when_the_storage_is_back
        return True
    if limiter._fallback_limiter is not None and not limiter._storage_dead:
        _storage_found_dead()
    return False


def _seconds_until_allowed(
    limit: str, key: tuple[str, ...], cost: int = 1, *, spend: bool = True
) -> int | None:
    """Seconds to wait before ``limit`` admits ``cost`` more units under ``key``, or None
    when they fit (and are counted, unless ``spend`` is False). Raises when the
    limiter's storage fails for good."""

    def spent(strategy: RateLimiter) -> int | None:
        for item in parse_many(limit):
            fits = strategy.hit if spend else strategy.test
            if not fits(item, *key, cost=cost):
                return retry_after(strategy, item, key, cost)
        return None

    return _counted(spent)


def retry_after(strategy: RateLimiter, item: RateLimitItem, key: tuple[str, ...], cost: int) -> int:
    """Seconds until ``item`` admits ``cost`` units: when its oldest unit leaves the window
    for one; for more, which unit must leave is unknown to the storage, so a whole window."""
    if cost > 1:
        return item.get_expiry()
    reset = strategy.get_window_stats(item, *key).reset_time
    return max(1, math.ceil(reset - time.time()))


def _address_share_spent(limit: str, cost: int) -> int | None:
    """Seconds until this address may post to the requested tenant again, or None when
    ``cost`` more units fit in its share (and are counted)."""
    tenant_id = _requested_tenant_id()
    key = (
        current_app.config["RATELIMIT_KEY_PREFIX"],
        "tenant-address",
        f"{tenant_id if tenant_id is not None else '-'}:{client_ip_key()}",
    )
    try:
        return _seconds_until_allowed(limit, key, cost)
    except Exception:  # no storage and no fallback: no share, as the tenant bucket does
        log.warning("address share not counted: the limiter's storage did not answer")
        return None


def spend_heavy_owner_work(tenant_id: int) -> None:
    """OWNER_HEAVY_RATE_LIMIT: exports and time zone changes of one tenant, each of which
    reads or recounts all of its events. Called once the caller is known to own the
    tenant, so another's attempts spend nothing; spent, a 429 with Retry-After."""
    config = current_app.config
    if not config.get("RATELIMIT_ENABLED", True):
        return
    limit = config["OWNER_HEAVY_RATE_LIMIT"]
    key = (config["RATELIMIT_KEY_PREFIX"], "owner-heavy", str(tenant_id))
    try:
        retry_after = _seconds_until_allowed(limit, key)
    except Exception:  # no storage and no fallback: allowed, as the other limits are
        log.warning("owner work not counted: the limiter's storage did not answer")
        return
    if retry_after is not None:
        raise rate_limited(f"{limit} exports and time zone changes per tenant", retry_after)


# pg_try_advisory_xact_lock(REPORT_SLOT_LOCKS + slot, tenant): a store report in flight.
REPORT_SLOT_LOCKS = 7_500
TRY_REPORT_SLOT = text("SELECT pg_try_advisory_xact_lock(:lock, :tenant)")


def take_a_report_slot(tenant_id: int) -> None:
    """OWNER_REPORTS_AT_ONCE: a store report reads up to all of the tenant's window, a
    second's work at a few million events. More at once for one tenant are refused (429,
    Retry-After 1) rather than queued for the pool's connections every tenant's events
    need too. A slot is a lock of the request's transaction: let go with it, on any host.
    SQLite (one writer, the quick start) has none."""
    if db.engine.dialect.name != "postgresql":
        return
    slots = current_app.config["OWNER_REPORTS_AT_ONCE"]
    for slot in range(slots):
        taken = TRY_REPORT_SLOT.bindparams(lock=REPORT_SLOT_LOCKS + slot, tenant=tenant_id)
        if db.session.scalar(taken):
            return
    raise rate_limited(f"{slots} store reports of one tenant at once", retry_after=1)


# Shared scope: every endpoint that writes a tenant's events draws on the same bucket.
_tenant_bucket = limiter.shared_limit(
    lambda: current_app.config["TRACK_RATE_LIMIT"],
    scope=TENANT_SCOPE,
    key_func=tenant_key,
    exempt_when=tenant_lookup_failed,
)
per_tenant = unless_disabled(address_share(_one_event, _tenant_bucket))


def batch_items() -> int | None:
    """How many items the batch body carries; None when it carries no list."""
    events = (request_body() or {}).get("events")
    return len(events) if isinstance(events, list) else None


def batch_cost() -> int:
    """One unit per item; one unit for a batch that validation will refuse (empty, > 500).
    Kept for the request's Retry-After (see rate_limit_headers)."""
    items = batch_items()
    g.rate_limit_cost = items if items and items <= MAX_BATCH_EVENTS else 1
    return g.rate_limit_cost


@lru_cache(maxsize=8)
def largest_admissible(limit: str) -> int:
    """The most units ``limit`` ("100 per minute", or several) can ever admit at once."""
    return min(item.amount for item in parse_many(limit))


# The limits a batch's every item counts against (the second only when set).
BATCH_LIMITS = ("TRACK_RATE_LIMIT", "TRACK_ADDRESS_RATE_LIMIT")


def refuse_batches_over_the_limit(view: View) -> View:
    """A batch with more items than the whole limit admits can never pass: a 413, free.

    A 429 would send the client a Retry-After that it could obey forever.
    """

    @wraps(view)
    def check(*args: Any, **kwargs: Any) -> Any:
        items = batch_items()
        limit = min(
            filter(None, (current_app.config.get(name) for name in BATCH_LIMITS)),
            key=largest_admissible,
        )
        admissible = largest_admissible(limit)
        if items is not None and admissible < items <= MAX_BATCH_EVENTS:
            raise ApiError(
                413,
                f"The batch carries {items} events; the rate limit ({limit}) admits at most "
                f"{admissible} at once. Split it into batches of at most {admissible} events.",
                code="batch_too_large",
                extra={"max_events": admissible},
            )
        return view(*args, **kwargs)

    return check  # type: ignore[return-value]


def _per_tenant_events(view: View) -> View:
    """The per-tenant bucket charged per item, after the address's share and after refusing
    batches that neither could ever admit."""
    tenant_bucket = limiter.shared_limit(
        lambda: current_app.config["TRACK_RATE_LIMIT"],
        scope=TENANT_SCOPE,
        key_func=tenant_key,
        cost=batch_cost,
        exempt_when=tenant_lookup_failed,
    )
    return refuse_batches_over_the_limit(address_share(batch_cost, tenant_bucket)(view))


per_tenant_events = unless_disabled(_per_tenant_events)


def warn_about_limits(app: Flask) -> None:
    """At a server's start (not each command's): limits that production runs without,
    or counts per process, and a limiter Redis that does not answer (down, or a typo in
    RATELIMIT_STORAGE_URI), said at once rather than at the first refused sign-in."""
    config = app.config
    production = config["APP_ENV"] == "production"
    if not config["RATELIMIT_ENABLED"]:
        if production:
            log.warning("RATELIMIT_ENABLED is false: no limit on events, sign-in or scans")
        return
    if production and config["RATELIMIT_STORAGE_URI"].startswith("memory://"):
        log.warning("RATELIMIT_STORAGE_URI is memory://: run one worker, or each allows it all")
    with app.app_context():
        if not limiter.storage.check():
            log.warning(
                "RATELIMIT_STORAGE_URI does not answer at %s: until it does, each process"
                " counts the limits in memory and sign-in answers 503",
                _storage_address(config["RATELIMIT_STORAGE_URI"]),
            )


def _storage_address(uri: str) -> str:
    """Where the limiter's storage is, without the URI's password (a host typo must not
    look like an outage)."""
    split = urlsplit(uri)
    hosts = split.netloc.rpartition("@")[2]  # one host:port, or several (sentinels)
    return (hosts + split.path) or "?"


def counted_or_503(limited: View) -> View:
    """Refuse (503) while the limiter's storage does not answer, rather than let every
    attempt through: RATELIMIT_SWALLOW_ERRORS keeps events flowing in a Redis outage,
    but unlimited password guesses are worse than a sign-in that waits."""

    @wraps(limited)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if not limiter.storage.check():
            # Once a minute, as the outages of the database are told: not once a guess.
            current_app.extensions["outage_lines"].say(
                "sign-in refused: the limiter's storage did not answer", log, logging.WARNING
            )
            return unavailable("Sign-in is unavailable for a moment; retry shortly.", retry_after=5)
        # flask-limiter looks for its storage again only after a backoff (up to 32 s):
        # until then this process would count guesses in its own memory.
        limiter._storage_dead = False  # said by say_when_the_storage_is_back
        return limited(*args, **kwargs)

    return checked  # type: ignore[return-value]


def _password_guesses_per_address() -> Callable[[View], View]:
    """LOGIN_ADDRESS_RATE_LIMIT, one bucket per address for every endpoint that checks a
    password (sign-in, password change): spreading guesses over the two gains none."""
    return limiter.shared_limit(
        lambda: current_app.config["LOGIN_ADDRESS_RATE_LIMIT"],
        scope="password-guesses",
        key_func=login_address_key,
        methods=["POST"],
    )


def _login_limits(view: View) -> View:
    per_email = limiter.limit(
        lambda: current_app.config["LOGIN_RATE_LIMIT"], key_func=login_key, methods=["POST"]
    )
    return counted_or_503(_password_guesses_per_address()(per_email(view)))


login_attempts = unless_disabled(_login_limits)


def password_change_key() -> str:
    """Per user (the token's), or per address where no token was verified yet."""
    try:
        identity = get_jwt_identity()
    except RuntimeError:  # outside a verified token: never with @jwt_required() first
        identity = None
    return f"password-change:{identity}" if identity else login_address_key()


def _password_change_limits(view: View) -> View:
    """A password change checks the current one: guesses with a stolen token are limited
    per user as sign-ins are per email, and share the address's bucket with sign-ins."""
    per_user = limiter.limit(
        lambda: current_app.config["LOGIN_RATE_LIMIT"],
        key_func=password_change_key,
        methods=["POST"],
    )
    return counted_or_503(_password_guesses_per_address()(per_user(view)))


password_change_attempts = unless_disabled(_password_change_limits)


def _skip_beacon(_limit: RequestLimit) -> Response:
    """A throttled conversion beacon is skipped, never an error the page could see."""
    body = request_body() or {}  # none for a body over every limit: still a 200
    return jsonify(beacon_answer("skipped", body.get("transaction_id")))


# The v1 "api" throttle group: per client address, shared by its endpoints.
_api_limit = limiter.shared_limit(
    lambda: current_app.config["API_RATE_LIMIT"],
    scope="api",
    key_func=client_ip_key,
    exempt_when=tenant_lookup_failed,
)


def _tenant_bucket_key() -> tuple[str, ...]:
    """The key flask-limiter gives the tenant's shared scope, under the prefix it took when
    first bound (an app's config may say another; an empty one it leaves out)."""
    prefix = (limiter._key_prefix,) if limiter._key_prefix else ()
    return (*prefix, tenant_key(), TENANT_SCOPE)


def _tenant_bucket_refusal(cost: int = 1, *, spend: bool = False) -> Any:
    """The 429 the tenant's bucket answers when ``cost`` more units do not fit in it, or
    None when they do (spent only when ``spend``). Unlimited when the limiter's storage
    and its fallback both fail, as flask-limiter is."""
    if tenant_lookup_failed():
        return None
    limit = current_app.config["TRACK_RATE_LIMIT"]
    try:
        retry_after = _seconds_until_allowed(limit, _tenant_bucket_key(), cost, spend=spend)
    except Exception:
        log.warning("tenant bucket not counted: the limiter's storage did not answer")
        return None
    if retry_after is None:
        return None
    return api_error_response(rate_limited(str(limit), retry_after))


def _tenant_bucket_after(view: View) -> View:
    """The tenant's bucket, one unit a request, charged by hand inside another limit's
    check: flask-limiter checks limits stacked on one view shortest window first, so a
    request its own limit refuses could have spent the tenant's bucket already."""

    @wraps(view)
    def check(*args: Any, **kwargs: Any) -> Any:
        return _tenant_bucket_refusal(spend=True) or view(*args, **kwargs)

    return check  # type: ignore[return-value]


# /api/v1/analytics/track: its contract's "api" group, and beyond it the address's share
# and the tenant's bucket, as it writes the tenant's events too; those only once the
# api group has let the request through.
api_group_and_tenant = unless_disabled(
    lambda view: _api_limit(address_share(_one_event, _tenant_bucket_after)(view))
)
conversion_group = unless_disabled(
    limiter.shared_limit(
        lambda: current_app.config["API_RATE_LIMIT"],
        scope="api",
        key_func=client_ip_key,
        on_breach=_skip_beacon,
    )
)


def qr_scan_counted() -> bool:
    """Whether this QR scan may be recorded: API_RATE_LIMIT per client address, in a scope
    of its own. A scan over it still redirects (a customer is never stopped at the door);
    it is only not counted, as a scripted flood would only inflate the tenant's scans."""
    if not current_app.config.get("RATELIMIT_ENABLED", True):
        return True
    key = (current_app.config["RATELIMIT_KEY_PREFIX"], "qr", client_ip_key())
    items = parse_many(current_app.config["API_RATE_LIMIT"])
    try:
        return _counted(lambda strategy: all(strategy.hit(item, *key) for item in items))
    except Exception:  # no storage and no fallback: count, as the other endpoints do
        log.warning("QR scan counted unlimited: the limiter's storage did not answer")
        return True


def rate_limit_headers(response: Response) -> Response:
    """X-RateLimit-* on every answer of a client's own bucket, Retry-After only on a 429.

    Stands in for flask-limiter's RATELIMIT_HEADERS_ENABLED, which puts Retry-After on
    every answer (a 201 included) and stretches a 503's own; its maintainer suggests
    an after_request hook over the request's limits instead. A tenant's bucket is
    filled by all its visitors: what is left of it would tell anyone who asks how many
    events the tenant received this minute, so the tenant scope's answers carry only
    Retry-After; that includes the address buckets of requests naming no known tenant,
    whose headers would otherwise tell which tenants exist. Where several of a client's
    limits apply (sign-in), the headers tell of the one that refused, else of the one
    closest to refusing.
    """
    limits = limiter.current_limits
    if not limits:
        return response
    own = [limit for limit in limits if limit.request_args[-1] != TENANT_SCOPE]
    breached = next((limit for limit in limits if limit.breached), None)
    try:
        if response.status_code == 429 and breached is not None:
            cost = g.get("rate_limit_cost", 1)
            strategy = limiter.limiter
            seconds = retry_after(strategy, breached.limit, tuple(breached.request_args), cost)
            response.headers["Retry-After"] = str(seconds)
        if not own:
            return response
        shown = breached if breached in own else min(own, key=lambda limit: limit.remaining)
        response.headers["X-RateLimit-Limit"] = str(shown.limit.amount)
        response.headers["X-RateLimit-Remaining"] = str(shown.remaining)
        response.headers["X-RateLimit-Reset"] = str(shown.reset_at)
    except Exception:  # the storage is down; RATELIMIT_SWALLOW_ERRORS lets the answer go
        log.warning("rate-limit headers left out: the limiter's storage did not answer")
    return response
