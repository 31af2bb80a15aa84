"""WSGI entry point: ``gunicorn wsgi:app``."""

import gc
import logging
import sys

from gunicorn.arbiter import Arbiter

from tenant_analytics import create_app
from tenant_analytics.config import ConfigError, warn_about_database
from tenant_analytics.ratelimits import warn_about_limits

# gunicorn sets up its own loggers only: the app's warnings and its libraries' (the
# database or Redis away) would print bare, with no time, level or source, or not at all.
if not logging.getLogger().handlers:
    logging.basicConfig(
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S %z",
        level=logging.WARNING,
    )

try:
    app = create_app()
except ConfigError as error:
    # What to fix, on one line, rather than a traceback from every worker. With gunicorn's
    # "app failed to load" status its master stops, instead of respawning workers that
    # fail the same way, forever, while holding the port.
    print(f"tenant-analytics: {error}", file=sys.stderr)
    sys.exit(Arbiter.APP_LOAD_ERROR)
warn_about_limits(app)
warn_about_database(app.config)

# What the process built so far (modules, models, schemas: over 100,000 objects) lives
# as long as it does. Frozen, it is left out of the collector's full passes, which
# otherwise walk it all and stall the worker's every request for tens of milliseconds.
# Collected first: garbage cycles left from startup would otherwise be kept for good.
gc.collect()
gc.freeze()
