"""Cooperative I/O under gevent: gunicorn's ``gevent`` worker is the recommended server.

Under that worker a request waiting for its group commit costs a greenlet
switch, not an operating-system thread hand-off under the GIL. gunicorn's
worker patches the standard library's sockets and threads; psycopg2 talks to
PostgreSQL through libpq, in C, so it must be told to wait in gevent's loop
too, or every query would stall the whole worker.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine

T = TypeVar("T")

# Password hashes (scrypt, ~100 ms of CPU and 32 MB each) computed at once per process
# under gevent; more wait their turn, and only sign-ins wait with them.
HASHES_AT_ONCE = 2
_hashing_threads: Any = None
_hashing_pid = 0


def gevent_patched() -> bool:
    """True when gevent has monkey-patched this process's sockets (a gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def cooperate_with_gevent() -> bool:
    """Make psycopg2 yield to gevent while it waits, when gevent runs the process.

    Returns whether it did. Harmless to call more than once.
    """
    if not gevent_patched():
        return False
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    if not event.contains(Engine, "do_connect", _connect_in_time):
        event.listen(Engine, "do_connect", _connect_in_time)
    return True


def _connect_in_time(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
    """Connect to PostgreSQL within its ``connect_timeout``, which libpq ignores when it
    connects asynchronously, as it does for a wait callback: gevent keeps the time."""
    seconds = cparams.get("connect_timeout")
    if dialect.name != "postgresql" or not seconds or not gevent_patched():
        return None  # SQLAlchemy connects as it would have
    import gevent
    import psycopg2

    timer = gevent.Timeout(float(seconds))
    timer.start()
    try:
        return dialect.connect(*cargs, **cparams)
    except gevent.Timeout as timeout:
        if timeout is not timer:
            raise
        # libpq's own words for it, as a connection error the app tells as an outage
        raise psycopg2.OperationalError("timeout expired") from None
    finally:
        timer.close()


def off_the_event_loop(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``, under gevent in a thread of a small pool of its own.

    For CPU-bound work that releases the GIL (hashlib's scrypt): run in the
    greenlet, it would stop the worker's every other request (events, QR scans)
    until done; in a thread, they go on meanwhile. Without gevent, it runs here.
    """
    if not gevent_patched():
        return function(*args)
    global _hashing_threads, _hashing_pid
    if _hashing_threads is None or _hashing_pid != os.getpid():  # a forked worker starts anew
        from gevent.threadpool import ThreadPool

        _hashing_threads, _hashing_pid = ThreadPool(HASHES_AT_ONCE), os.getpid()
    return _hashing_threads.apply(function, args)
