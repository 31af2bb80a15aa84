"""The four targets of issue 5, each measured next to its reference in the same run."""

from __future__ import annotations

import csv
import math
import secrets
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import appdb
from app_client import AppProblem, HttpClient, NotAvailable, create_admin, create_tenant, flask_cli
from cpu import CpuUse, cpu_use
from load_events import copy_reference, load_landing, load_store
from report import ERROR, FAIL, NA, Report, Row, verdict
from servers import Gunicorn, ServerFailed, rss_kib
from settings import BENCH_DIR, RESULTS_DIR, Settings
from worker_profile import Profile, start_profiles
from wrk import WrkResult, WrkRun, run_wrk

from tenant_analytics.timewindows import last_days

ZONE = "America/Tegucigalpa"
ADMIN_EMAIL = "bench@example.com"

# Goals from the issue.
MIN_THROUGHPUT_RATIO = 0.60
MAX_P99_MS = 25.0
MIN_BATCH_EVENTS_PER_S = 30_000
MAX_DASHBOARD_P95_MS = 50.0
MIN_DASHBOARD_SPEEDUP = 100.0
MAX_STORE_REPORT_MS = 500.0
MAX_RSS_DRIFT = 0.10

TRACK_ROWS = [
    "1 /track throughput",
    "1 /track keyed (snippet)",
    "1 /track p99 @32 conns",
    "1 /track durability",
    "1 CPU per request",
]
BATCH_ROWS = ["2 /batch events/s", "2 /batch durability"]
DASHBOARD_ROWS = [
    "3 landing dashboard p95",
    "3 today summary p95",
    "3 landing = raw query",
    "3 today = raw query",
]
STORE_REPORTS = ("dashboard-stats", "funnel", "alerts")
STORE_ROWS = [f"3 {name} median" for name in STORE_REPORTS]
MEMORY_ROWS = ["4 worker RSS drift", "4 soak durability"]

TENANTS = ("ingest", "batch", "big", "store", "soak", "profile")


def p95(values: list[float]) -> float:
    """95th percentile, nearest rank."""
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def duration(seconds: float) -> str:
    """Seconds under one as milliseconds."""
    return ms(seconds) if seconds < 1 else f"{seconds:.2f} s"


def acknowledged(*results: WrkResult) -> int:
    return sum(result.acknowledged for result in results)


def wrk_note(name: str, result: WrkResult) -> str | None:
    """A note when wrk saw failed responses or socket errors."""
    if result.non_2xx or result.socket_errors:
        return (
            f"{name}: {result.non_2xx:,} non-2xx responses, {result.socket_errors:,} "
            f"socket errors of {result.requests:,} requests"
        )
    return None


class Bench:
    """One benchmark run: the servers it started, the tenants it made, the report it fills."""

    def __init__(self, settings: Settings, report: Report):
        self.settings, self.report = settings, report
        self.dsn = settings.database_url
        self.tenants: dict[str, int] = {}
        self.admin_password = secrets.token_urlsafe(24)
        self._app: Gunicorn | None = None
        self._app_error: Exception | None = None
        self._admin: HttpClient | None = None

    # -- running ---------------------------------------------------------------------

    def run(self) -> None:
        all_rows = TRACK_ROWS + BATCH_ROWS + DASHBOARD_ROWS + STORE_ROWS + MEMORY_ROWS
        if not self.attempt(all_rows, self.setup):
            return
        self.attempt(TRACK_ROWS, self.target_ingestion)
        self.attempt(BATCH_ROWS, self.target_batch)
        self.attempt(DASHBOARD_ROWS, self.target_dashboards)
        self.attempt(STORE_ROWS, self.target_store_reports)
        self.attempt(MEMORY_ROWS, self.target_memory)

    def attempt(self, rows: list[str], target: Callable[[], None]) -> bool:
        """Run ``target``; on failure give its unreported ``rows`` the reason. True if it ran."""
        try:
            target()
            return True
        except NotAvailable as exc:
            self.report.fill(rows, NA, f"n/a: {exc}")
        except (AppProblem, ServerFailed) as exc:
            first_line = str(exc).splitlines()[0]
            self.report.fill(rows, FAIL, first_line[:160])
            self.report.note(str(exc)[:1500])
        except Exception as exc:
            traceback.print_exc()
            self.report.harness_broken = True
            self.report.fill(rows, ERROR, f"harness error: {exc!r}"[:160])
        return False

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            yield
        finally:
            self.report.phases.append((name, time.monotonic() - started))

    def close(self) -> None:
        """Stop our server and note the exceptions it logged."""
        if self._app is not None:
            self._app.stop()
            self.note_server_errors(self._app)

    def note_server_errors(self, server: Gunicorn) -> None:
        summary = server.error_summary()
        if summary:
            self.report.note(f"{summary} (see {server.log_path})")

    # -- shared pieces -----------------------------------------------------------------

    def setup(self) -> None:
        """The tenants (one per target, so counts do not mix) and an admin user."""
        with self.phase("setup"):
            for slug in TENANTS:
                self.tenants[slug] = create_tenant(slug.capitalize(), slug, ZONE)
            create_admin(ADMIN_EMAIL, self.admin_password)

    def app_server(self) -> Gunicorn:
        """Our app under gunicorn, started once and kept up for every target."""
        if self._app_error is not None:
            raise AppProblem(f"the app server could not start: {self._app_error}")
        if self._app is None:
            server = Gunicorn(
                "app", "wsgi:app", self.settings.app_port, self.settings.gunicorn_args
            )
            try:
                self._app = server.start()
            except ServerFailed as exc:
                server.stop()
                self._app_error = exc
                raise
        return self._app

    def admin(self) -> HttpClient:
        """An HTTP client carrying the admin's access token."""
        if self._admin is None:
            client = HttpClient(self.app_server().port)
            self._admin = client.login(ADMIN_EMAIL, self.admin_password)
        return self._admin

    def drive(
        self,
        script: str,
        url: str,
        args: list[str],
        name: str,
        connections: int,
        *,
        seconds: int | None = None,
        cpu: tuple[Gunicorn, CpuUse] | None = None,
    ) -> tuple[WrkResult | None, WrkResult]:
        """A short unmeasured warm-up wrk run, then the measured one (``wrk_seconds`` long).

        With ``cpu`` (a server and a tally), the measured run's CPU time is added to the tally.
        """
        common = {"threads": self.settings.wrk_threads, "connections": connections}
        warm = None
        if self.settings.warmup_seconds > 0:
            warm = run_wrk(
                script,
                url,
                args,
                seconds=self.settings.warmup_seconds,
                log_name=f"{name}-warmup",
                **common,
            )
        with cpu_use(cpu[0].worker_pids() if cpu else []) as used:
            measured = run_wrk(
                script,
                url,
                args,
                seconds=seconds or self.settings.wrk_seconds,
                log_name=name,
                **common,
            )
        if cpu:
            cpu[1].add(used)
        for result in (warm, measured):
            note = result and wrk_note(name, result)
            if note:
                self.report.note(note)
        return warm, measured

    def rebuild_rollups(self, tenant: int) -> None:
        """``flask events rebuild-rollups --tenant ID``; a note when it is not there yet."""
        try:
            flask_cli("events", "rebuild-rollups", "--tenant", str(tenant))
        except NotAvailable as exc:
            self.report.note(f"rollups not rebuilt for tenant {tenant}: {exc}")

    def window(self) -> tuple[datetime, datetime]:
        """[first instant of the tenant's 7-local-day window, now]."""
        now = datetime.now(UTC)
        return last_days(ZoneInfo(ZONE), now, 7)[0].start, now

    # -- target 1 ------------------------------------------------------------------

    def target_ingestion(self) -> None:
        """Single events: ours vs a bare Flask endpoint, p99, every 2xx stored.

        Both servers stay up and are driven in turn, ``track_rounds`` times: the
        machine's speed drifts within minutes, so each round's ratio compares runs
        a few seconds apart, and the table shows the median round.
        """
        tenant = self.tenants["ingest"]
        args, conns = [str(tenant)], self.settings.wrk_connections
        rounds = max(1, self.settings.track_rounds)
        seconds = max(1, self.settings.wrk_seconds // rounds)
        bare_server = Gunicorn(
            "bare",
            "bare_app:app",
            self.settings.bare_port,
            self.settings.gunicorn_args,
            pythonpath=BENCH_DIR,
        )
        bares: list[WrkResult] = []
        ours: list[WrkResult] = []
        keyed: list[WrkResult] = []
        bare_cpu, our_cpu = CpuUse(), CpuUse()
        acked = 0
        with self.phase(f"target 1: bare Flask and /api/analytics/track, {rounds} rounds each"):
            server = self.app_server()
            with bare_server:
                for round_number in range(1, rounds + 1):
                    _, bare = self.drive(
                        "track.lua",
                        self.track_url(bare_server),
                        args,
                        f"bare-{round_number}",
                        conns,
                        seconds=seconds,
                        cpu=(bare_server, bare_cpu),
                    )
                    warm, mine = self.drive(
                        "track.lua",
                        self.track_url(server),
                        args,
                        f"track-{round_number}",
                        conns,
                        seconds=seconds,
                        cpu=(server, our_cpu),
                    )
                    # The snippet keys every event: the batch claims the keys first.
                    warm_keyed, mine_keyed = self.drive(
                        "track.lua",
                        self.track_url(server),
                        [*args, "keyed"],
                        f"track-keyed-{round_number}",
                        conns,
                        seconds=seconds,
                    )
                    bares.append(bare)
                    ours.append(mine)
                    keyed.append(mine_keyed)
                    acked += acknowledged(mine, *filter(None, [warm]))
                    acked += acknowledged(mine_keyed, *filter(None, [warm_keyed]))
                if self.settings.profile_seconds > 0:
                    self.profile_track(bare_server, server)
            self.note_server_errors(bare_server)
            stored = appdb.count_events(self.dsn, tenant)
        ratios = [
            mine.ack_per_second / bare.ack_per_second if bare.ack_per_second else 0.0
            for mine, bare in zip(ours, bares, strict=True)
        ]
        ratio = statistics.median(ratios)
        median_round = ratios.index(ratio) if ratio in ratios else 0
        failures = sum(mine.non_2xx for mine in ours)
        failed = f", {failures:,} non-2xx" if failures else ""
        each = ", ".join(f"{r:.2f}" for r in ratios)
        self.report.add(
            Row(
                TRACK_ROWS[0],
                f"{statistics.median(m.ack_per_second for m in ours):,.0f} req/s 2xx{failed}",
                f"bare Flask {statistics.median(b.ack_per_second for b in bares):,.0f} req/s",
                f"{ratio:.2f} (rounds {each}; goal >= {MIN_THROUGHPUT_RATIO:.2f})",
                verdict(ratio >= MIN_THROUGHPUT_RATIO),
            )
        )
        keyed_failures = sum(mine.non_2xx for mine in keyed)
        keyed_failed = f", {keyed_failures:,} non-2xx" if keyed_failures else ""
        keyed_ratios = [
            mine.ack_per_second / bare.ack_per_second if bare.ack_per_second else 0.0
            for mine, bare in zip(keyed, bares, strict=True)
        ]
        self.report.add(
            Row(
                TRACK_ROWS[1],
                f"{statistics.median(m.ack_per_second for m in keyed):,.0f} req/s 2xx, "
                f"p99 {statistics.median(m.p99_ms for m in keyed):.1f} ms{keyed_failed}",
                "bare Flask, as above",
                f"{statistics.median(keyed_ratios):.2f} (each with an idempotency key)",
                "info",
            )
        )
        p99 = statistics.median(mine.p99_ms for mine in ours)
        self.report.add(
            Row(
                TRACK_ROWS[2],
                f"p99 {p99:.1f} ms (p50 {ours[median_round].p50_ms:.1f})",
                f"bare p99 {statistics.median(bare.p99_ms for bare in bares):.1f} ms",
                f"goal <= {MAX_P99_MS:.0f} ms",
                verdict(p99 <= MAX_P99_MS and acked > 0),
            )
        )
        self.add_durability(TRACK_ROWS[3], stored, acked)
        self.add_cpu_row(cpu_per_request(our_cpu, ours), cpu_per_request(bare_cpu, bares))

    def profile_track(self, bare_server: Gunicorn, server: Gunicorn) -> None:
        """Bare Flask and keyed /track once more each, their workers sampled by py-spy:
        which code spends each request's CPU, in bench/results/track-profile.md. A
        profile that fails is a note: the rows measured without it stand."""
        args = [str(self.tenants["profile"])]
        runs = (
            ("bare", "bare Flask", bare_server, args),
            ("track-keyed", "/track, each event keyed", server, [*args, "keyed"]),
        )
        try:
            sections = [self.profile_one(*run) for run in runs]
        except Exception as exc:
            traceback.print_exc()
            self.report.note(f"no profile of target 1's workers: {exc!r}")
            return
        path = RESULTS_DIR / "track-profile.md"
        path.write_text("# Where the workers' CPU goes (py-spy)\n\n" + "\n".join(sections))
        self.report.note(f"target 1's workers profiled with py-spy: see {path}")

    def profile_one(self, name: str, title: str, server: Gunicorn, args: list[str]) -> str:
        """One wrk run at ``server`` with its workers sampled; the Markdown section."""
        seconds = self.settings.profile_seconds
        with cpu_use(server.worker_pids()) as used:
            load = WrkRun(
                "track.lua",
                self.track_url(server),
                args,
                seconds=seconds + 2,
                threads=self.settings.wrk_threads,
                connections=self.settings.wrk_connections,
                log_name=f"profile-{name}",
            )
            try:
                time.sleep(1)  # sampled under full load, not while wrk connects
                profiles = start_profiles(server.worker_pids(), seconds)
                for process, _ in profiles:
                    process.wait()
                result = load.wait()
            finally:
                load.kill()
        profile = Profile()
        for _, output in profiles:
            if output.exists():
                profile.add_raw(output.read_text())
        if not profile.busy:
            raise RuntimeError(f"py-spy recorded nothing (see {RESULTS_DIR}/track-profile-*.log)")
        per_request = used.workers / result.acknowledged * 1e6 if result.acknowledged else None
        return (
            f"## {title}: {result.ack_per_second:,.0f} req/s 2xx while sampled, workers "
            f"{per_request or 0:,.0f} µs of CPU per request\n\n"
            f"{profile.busy:,} busy samples ({profile.waiting:,} waiting, left out)\n\n"
            + profile.table(per_request)
        )

    def add_cpu_row(self, ours: dict[str, float], bare: dict[str, float]) -> None:
        """Where target 1's time goes: CPU per 2xx answer, by process group (information)."""

        def spent(parts: dict[str, float]) -> str:
            listed = " + ".join(f"{name} {us:,.0f}" for name, us in parts.items())
            return f"{listed} = {sum(parts.values()):,.0f} µs"

        total_bare = sum(bare.values())
        self.report.add(
            Row(
                TRACK_ROWS[4],
                f"/track: {spent(ours)}",
                f"bare: {spent(bare)}",
                f"{sum(ours.values()) / total_bare:.2f}x bare's" if total_bare else "-",
                "info",
            )
        )

    def track_url(self, server: Gunicorn) -> str:
        return f"{server.url}/api/analytics/track"

    def add_durability(self, target: str, stored: int, acked: int, unit: str = "2xx answers"):
        """Every acknowledged event must be in the table: stored >= acknowledged."""
        self.report.add(
            Row(
                target,
                f"{stored:,} rows in events",
                f"{acked:,} {unit}",
                f"{stored / acked:.4f}" if acked else "-",
                verdict(acked > 0 and stored >= acked),
            )
        )

    # -- target 2 ------------------------------------------------------------------

    def target_batch(self) -> None:
        """Batches of 500 events: events/s vs plain COPY of as many rows."""
        tenant, size = self.tenants["batch"], self.settings.batch_size
        server = self.app_server()
        with self.phase("target 2: /api/analytics/batch"):
            probe = HttpClient(server.port).request(
                "POST",
                "/api/analytics/batch",
                {"tenant_id": tenant, "events": [{"event_type": "pageview", "metadata": {}}]},
            )
            if probe.status in (404, 405):
                raise NotAvailable(f"/api/analytics/batch answered {probe.status}")
            if not 200 <= probe.status < 300:
                raise AppProblem(f"a 1-event /batch answered {probe.status}: {probe.body}")
            url = f"{server.url}/api/analytics/batch"
            runs = self.drive(
                "batch.lua", url, [str(tenant), str(size)], "batch", self.settings.batch_connections
            )
            stored_rows = appdb.count_events(self.dsn, tenant)
        measured = runs[1]
        events = self.batch_events(measured, size)
        rate = events / measured.seconds if measured.seconds else 0.0
        with self.phase("target 2: COPY reference"):
            copy = copy_reference(self.dsn, tenant_id=tenant, rows=max(events, 10_000))
        self.report.add(
            Row(
                BATCH_ROWS[0],
                f"{rate:,.0f} events/s ({measured.ack_per_second:,.1f} req/s x {size})",
                f"COPY {copy.rows_per_second:,.0f} rows/s ({copy.rows:,} rows)",
                f"{rate / copy.rows_per_second:.2f} of COPY",
                verdict(rate >= MIN_BATCH_EVENTS_PER_S),
            )
        )
        probe_events = probe_stored(probe)
        acked = probe_events + sum(self.batch_events(r, size) for r in runs if r)
        self.add_durability(BATCH_ROWS[1], stored_rows, acked, "events acknowledged")

    def batch_events(self, result: WrkResult, size: int) -> int:
        """Events acknowledged by a batch run: the bodies' "stored", else 2xx x size."""
        if result.stored_responses:
            return result.stored
        if result.acknowledged:
            self.report.note(f'/batch answers carry no "stored": counted {size} per 2xx')
        return result.acknowledged * size

    # -- target 3 ------------------------------------------------------------------

    def target_dashboards(self) -> None:
        """Landing dashboard and today summary at scale: latency and exact equality."""
        tenant, settings = self.tenants["big"], self.settings
        self.load_landing_tenant(tenant)
        with self.phase("target 3: rebuild rollups (landing)"):
            self.rebuild_rollups(tenant)
        with self.phase("target 3: raw queries"):
            now = datetime.now(UTC)
            raw_s, raw, raw_today_s, raw_today, raw_runs = appdb.raw_summaries(
                tenant, now=now, runs=settings.raw_runs, budget=settings.raw_budget
            )
        # The reference for both: the obvious 7-day query over the raw events.
        reference = f"raw 7-day query {duration(raw_s)} (median of {raw_runs})"
        with self.phase("target 3: dashboards over HTTP"):
            path, count = f"/api/analytics/{tenant}", settings.dashboard_requests
            times, landing_body = self.timed_gets(path, count, warmup=2)
            self.add_speed(DASHBOARD_ROWS[0], p95(times), reference, raw_s)
            times, today_body = self.timed_gets(f"{path}/today", count, warmup=2)
            today_reference = f"{reference}; raw today query {duration(raw_today_s)}"
            self.add_speed(DASHBOARD_ROWS[1], p95(times), today_reference, raw_s)
            after = datetime.now(UTC)
        zone = ZoneInfo(ZONE)
        if now.astimezone(zone).date() != after.astimezone(zone).date():
            reason = "n/a: ran across midnight in the tenant's zone; run again"
            self.report.fill(DASHBOARD_ROWS[2:], NA, reason)
            return
        self.add_equality(DASHBOARD_ROWS[2], "landing_summary", raw, landing_body.get("data"))
        today = {key: value for key, value in today_body.items() if key != "success"}
        self.add_equality(DASHBOARD_ROWS[3], "today_summary", raw_today, today)

    def load_landing_tenant(self, tenant: int) -> None:
        """COPY the landing events over the tenant's last 7 local days, then VACUUM ANALYZE."""
        settings = self.settings
        with self.phase(f"target 3: load {settings.events:,} landing events"):
            start, end = self.window()
            appdb.ensure_event_partitions(start, end)
            loaded = load_landing(
                self.dsn,
                tenant_id=tenant,
                start=start,
                end=end,
                events=settings.events,
                visitors=settings.landing_visitors,
            )
            self.report.note(
                f"loaded {loaded.rows:,} landing events ({settings.landing_visitors:,} visitors) "
                f"in {loaded.seconds:.0f}s, {loaded.rows_per_second:,.0f} rows/s"
            )
            appdb.vacuum_analyze(self.dsn)

    def timed_gets(self, path: str, count: int, *, warmup: int = 0) -> tuple[list[float], Any]:
        """Seconds of up to ``count`` sequential GETs (after ``warmup`` unmeasured), last body.

        Stops early, with a note, once BENCH_HTTP_BUDGET seconds are spent: a
        slow endpoint must not stretch the run past its 15 minutes.
        """
        client, count = self.admin(), max(count, 1)
        for _ in range(warmup):
            client.get_ok(path)
        deadline = time.monotonic() + self.settings.http_budget
        times, body = [], None
        while len(times) < count and (not times or time.monotonic() < deadline):
            response = client.get_ok(path)
            times.append(response.seconds)
            body = response.body
        if len(times) < count:
            self.report.note(
                f"{path}: only {len(times)} of {count} requests within the "
                f"{self.settings.http_budget}s budget"
            )
        return times, body

    def add_speed(self, target: str, seconds: float, reference: str, raw_seconds: float) -> None:
        speedup = raw_seconds / seconds if seconds else 0.0
        self.report.add(
            Row(
                target,
                f"p95 {ms(seconds)}",
                reference,
                f"{speedup:,.0f}x faster (goal >= {MIN_DASHBOARD_SPEEDUP:.0f}x)",
                verdict(
                    seconds * 1000 <= MAX_DASHBOARD_P95_MS and speedup >= MIN_DASHBOARD_SPEEDUP
                ),
            )
        )

    def add_equality(self, target: str, query: str, raw: dict[str, Any], served: Any) -> None:
        """Field by field: the served figures must be exactly the raw ``query``'s."""
        served = served if isinstance(served, dict) else {}
        differences = [
            f"{key}: served {served.get(key)!r} != raw {raw.get(key)!r}"
            for key in sorted(set(raw) | set(served))
            if served.get(key) != raw.get(key)
        ]
        if differences:
            self.report.note(f"{target} differences: " + "; ".join(differences)[:1500])
        measured = (
            f"{len(differences)} of {len(raw)} fields differ (see notes)"
            if differences
            else f"equal ({len(raw)} fields)"
        )
        reference = f"raw queries.landing.{query}"
        self.report.add(Row(target, measured, reference, "-", verdict(not differences)))

    def target_store_reports(self) -> None:
        """Store reports at 1 million events in the window: median of a few requests each."""
        tenant, settings = self.tenants["store"], self.settings
        with self.phase(f"target 3: load {settings.store_events:,} store events"):
            start, end = self.window()
            appdb.ensure_event_partitions(start, end)
            loaded = load_store(
                self.dsn, tenant_id=tenant, start=start, end=end, events=settings.store_events
            )
            appdb.vacuum_analyze(self.dsn)
        with self.phase("target 3: rebuild rollups (store)"):
            self.rebuild_rollups(tenant)
        with self.phase("target 3: store reports over HTTP"):
            for name, target in zip(STORE_REPORTS, STORE_ROWS, strict=True):
                self.report_timing(target, f"/api/analytics/{tenant}/{name}", loaded.rows)

    def report_timing(self, target: str, path: str, events: int) -> None:
        """One store report's median latency; n/a or FAIL for this report alone."""
        try:
            times, _ = self.timed_gets(path, self.settings.store_runs)
        except NotAvailable as exc:
            self.report.add(Row(target, f"n/a: {exc}", verdict=NA))
            return
        except AppProblem as exc:
            self.report.add(Row(target, str(exc)[:160], verdict=FAIL))
            return
        median = statistics.median(times)
        self.report.add(
            Row(
                target,
                f"{duration(median)} (max {duration(max(times))}, {len(times)} runs)",
                f"{events:,} store events in the window",
                f"goal <= {MAX_STORE_REPORT_MS:.0f} ms",
                verdict(median * 1000 <= MAX_STORE_REPORT_MS),
            )
        )

    # -- target 4 ------------------------------------------------------------------

    def target_memory(self) -> None:
        """Worker RSS over a long ingestion run: first sample after warm-up vs the last."""
        settings, tenant = self.settings, self.tenants["soak"]
        server = self.app_server()
        with self.phase(f"target 4: {settings.soak_seconds}s ingestion soak"):
            run = WrkRun(
                "track.lua",
                self.track_url(server),
                [str(tenant)],
                seconds=settings.soak_seconds,
                threads=settings.wrk_threads,
                connections=settings.wrk_connections,
                log_name="soak",
            )
            try:
                samples = self.sample_rss(server)
                result = run.wait()
            finally:
                run.kill()
            stored = appdb.count_events(self.dsn, tenant)
        write_samples(samples)
        self.add_rss_row(samples)
        note = wrk_note("soak", result)
        if note:
            self.report.note(note)
        self.add_durability(MEMORY_ROWS[1], stored, result.acknowledged)

    def sample_rss(self, server: Gunicorn) -> list[tuple[float, dict[int, int | None]]]:
        """(seconds since start, {worker pid: RSS KiB}) every interval during the soak."""
        settings = self.settings
        started, samples, tick = time.monotonic(), [], settings.soak_interval
        while tick < settings.soak_seconds - 1:
            time.sleep(max(started + tick - time.monotonic(), 0))
            rss = {pid: rss_kib(pid) for pid in server.worker_pids()}
            samples.append((time.monotonic() - started, rss))
            print(f"    {tick:>4}s  " + "  ".join(f"{p}: {kib_mb(v)}" for p, v in rss.items()))
            tick += settings.soak_interval
        return samples

    def add_rss_row(self, samples: list[tuple[float, dict[int, int | None]]]) -> None:
        warm = [sample for sample in samples if sample[0] >= self.settings.soak_warmup]
        if len(warm) < 2:
            self.report.add(Row(MEMORY_ROWS[0], "n/a: soak too short to compare", verdict=NA))
            return
        (first_at, first), (last_at, last) = warm[0], warm[-1]
        if set(first) != set(last) or None in first.values() or None in last.values():
            measured = f"workers changed during the soak: {sorted(first)} -> {sorted(last)}"
            self.report.add(Row(MEMORY_ROWS[0], measured, verdict=FAIL))
            return
        drifts = {pid: last[pid] / first[pid] - 1 for pid in first}
        measured = ", ".join(
            f"{kib_mb(first[pid])} -> {kib_mb(last[pid])} ({drifts[pid]:+.1%})" for pid in first
        )
        worst = max(drifts.values(), key=abs)
        self.report.add(
            Row(
                MEMORY_ROWS[0],
                measured,
                f"first sample after {first_at:.0f}s vs {last_at:.0f}s",
                f"worst {worst:+.1%} (goal +/-{MAX_RSS_DRIFT:.0%})",
                verdict(abs(worst) <= MAX_RSS_DRIFT),
            )
        )


def cpu_per_request(used: CpuUse, results: list[WrkResult]) -> dict[str, float]:
    """Microseconds of CPU per acknowledged request: workers, PostgreSQL, wrk."""
    answers = acknowledged(*results) or 1
    parts = {"workers": used.workers, "PostgreSQL": used.postgres, "wrk": used.wrk}
    return {name: seconds / answers * 1e6 for name, seconds in parts.items()}


def probe_stored(response) -> int:
    """Events a single /batch answer acknowledged."""
    if not 200 <= response.status < 300:
        return 0
    body = response.body if isinstance(response.body, dict) else {}
    return int(body.get("stored", 1))


def kib_mb(kib: int | None) -> str:
    return "gone" if kib is None else f"{kib / 1024:.1f} MB"


def write_samples(samples: list[tuple[float, dict[int, int | None]]]) -> None:
    """The RSS samples as CSV (seconds, pid, KiB) for a closer look."""
    with (RESULTS_DIR / "rss-samples.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seconds", "pid", "rss_kib"])
        for seconds, rss in samples:
            for pid, kib in rss.items():
                writer.writerow([f"{seconds:.1f}", pid, kib])
