"""Cooperative I/O under gevent: gunicorn's ``gevent`` worker is the recommended server.

Under that worker a request waiting for its group commit costs a greenlet
switch, not an operating-system thread hand-off under the GIL. gunicorn's
worker patches the standard library's sockets and threads; psycopg2 talks to
PostgreSQL through libpq, in C, so it must be told to wait in gevent's loop
too, or every query would stall the whole worker.
"""

from __future__ import annotations

import sys


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
    return True
