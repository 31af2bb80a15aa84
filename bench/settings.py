"""Benchmark settings, each overridable by an environment variable.

The defaults are the full run of issue 5 (about 10 minutes on 2 cores, 5 of
them the memory soak). A quick smoke run (about 1.5 minutes), for example::

    BENCH_EVENTS=200000 BENCH_VISITORS=20000 BENCH_STORE_EVENTS=50000 \
    BENCH_WRK_SECONDS=6 BENCH_WARMUP_SECONDS=1 BENCH_SOAK_SECONDS=40 \
    BENCH_SOAK_WARMUP=10 BENCH_DASHBOARD_REQUESTS=20 bash bench/run.sh
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
RUN_DIR = RESULTS_DIR / "run"  # gunicorn pid files, for run.sh's trap
VENV_BIN = Path(os.environ.get("VENV", ROOT / ".venv")) / "bin"

# The one gunicorn configuration both the bare Flask app and ours are served with.
DEFAULT_GUNICORN = "--worker-class gevent --workers 2 --worker-connections 1000"


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw.replace("_", "")) if raw else default


@dataclass(frozen=True)
class Settings:
    database_url: str
    gunicorn_args: tuple[str, ...]
    bare_port: int
    app_port: int
    wrk_threads: int
    wrk_connections: int
    wrk_seconds: int  # targets 1 and 2, per measured run
    warmup_seconds: int  # a short unmeasured wrk run before each measured one
    track_rounds: int  # target 1: bare and ours in turn, wrk_seconds split between rounds
    batch_connections: int
    batch_size: int
    events: int  # target 3: landing events in the big tenant
    visitors: int
    store_events: int
    raw_runs: int
    raw_budget: int  # seconds: no raw run starts that would end after this (a slow host runs one)
    dashboard_requests: int
    store_runs: int
    http_budget: int  # seconds at most per timed endpoint
    soak_seconds: int  # target 4
    soak_warmup: int
    soak_interval: int
    profile_seconds: int  # 0: no profile; else target 1's workers sampled this long with py-spy

    @classmethod
    def from_env(cls) -> Settings:
        database_url = os.environ.get("BENCH_DATABASE_URL")
        if not database_url:
            raise SystemExit("BENCH_DATABASE_URL is not set: run the benchmark with bench/run.sh")
        return cls(
            database_url=database_url,
            gunicorn_args=tuple(shlex.split(os.environ.get("BENCH_GUNICORN", DEFAULT_GUNICORN))),
            bare_port=_int("BENCH_BARE_PORT", 8101),
            app_port=_int("BENCH_APP_PORT", 8102),
            wrk_threads=_int("BENCH_WRK_THREADS", 2),
            wrk_connections=_int("BENCH_CONNECTIONS", 32),
            wrk_seconds=_int("BENCH_WRK_SECONDS", 20),
            warmup_seconds=_int("BENCH_WARMUP_SECONDS", 3),
            track_rounds=_int("BENCH_TRACK_ROUNDS", 3),
            batch_connections=_int("BENCH_BATCH_CONNECTIONS", 8),
            batch_size=_int("BENCH_BATCH_SIZE", 500),
            events=_int("BENCH_EVENTS", 10_000_000),
            visitors=_int("BENCH_VISITORS", 400_000),
            store_events=_int("BENCH_STORE_EVENTS", 1_000_000),
            raw_runs=_int("BENCH_RAW_RUNS", 3),
            raw_budget=_int("BENCH_RAW_BUDGET", 60),
            dashboard_requests=_int("BENCH_DASHBOARD_REQUESTS", 50),
            store_runs=_int("BENCH_STORE_RUNS", 5),
            http_budget=_int("BENCH_HTTP_BUDGET", 60),
            soak_seconds=_int("BENCH_SOAK_SECONDS", 300),
            soak_warmup=_int("BENCH_SOAK_WARMUP", 30),
            soak_interval=_int("BENCH_SOAK_INTERVAL", 10),
            profile_seconds=_int("BENCH_PROFILE_SECONDS", 0),
        )

    @property
    def landing_visitors(self) -> int:
        """Distinct visitors actually generated (never more than events)."""
        return min(self.visitors, self.events)
