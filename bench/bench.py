"""``make bench``: the targets of issue 5, each next to its reference, in one table.

Run through ``bench/run.sh`` (it installs wrk, recreates the database and
migrates it). Settings come from the environment: see settings.py.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys

from report import Report
from settings import RESULTS_DIR, Settings
from targets import Bench

from tenant_analytics.config import SECRET_SETTINGS


def configure_app_environment(settings: Settings) -> None:
    """What the app (server and CLI) reads: the bench database, fresh secrets, no rate limit."""
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ["APP_ENV"] = "production"
    os.environ["RATELIMIT_ENABLED"] = "false"
    for name in SECRET_SETTINGS:
        os.environ[name] = secrets.token_urlsafe(48)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the servers are stopped on the way out."""

    def handler(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, handler)


def describe(settings: Settings) -> str:
    s = settings
    return (
        f"{s.events:,} landing events / {s.landing_visitors:,} visitors, "
        f"{s.store_events:,} store events; wrk -t{s.wrk_threads} -c{s.wrk_connections}, "
        f"bare and /track in turn for {max(1, s.track_rounds)} rounds of "
        f"{max(1, s.wrk_seconds // max(1, s.track_rounds))}s, batch {s.wrk_seconds}s "
        f"(each after {s.warmup_seconds}s warm-up) -c{s.batch_connections} "
        f"x {s.batch_size} events; soak {s.soak_seconds}s sampled every {s.soak_interval}s "
        f"after {s.soak_warmup}s; gunicorn {' '.join(s.gunicorn_args)}"
    )


def main() -> int:
    settings = Settings.from_env()
    configure_app_environment(settings)
    exit_on_sigterm()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report = Report()
    bench = Bench(settings, report)
    try:
        bench.run()
    finally:
        bench.close()
    text = report.write(RESULTS_DIR / "latest.md", describe(settings))
    print("\n" + text)
    print(f"(written to {RESULTS_DIR / 'latest.md'})")
    return 1 if report.harness_broken else 0


if __name__ == "__main__":
    sys.exit(main())
