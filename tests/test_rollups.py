"""Rollups agree with the raw events; partitions appear on demand; tenant-leading keys."""

from __future__ import annotations

import random
import threading
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from tenant_analytics.extensions import db
from tenant_analytics.models import Event
from tenant_analytics.partitions import create_ahead, ensure_partitions, purge_before
from tenant_analytics.queries import landing, landing_rollups
from tenant_analytics.rollups import ROLLUP_MODELS, rebuild_rollups

from .test_dashboards import NOW, TEGUCIGALPA, week  # noqa: F401 - the fixture is reused

TYPES = [
    "pageview",
    "click_whatsapp",
    "whatsapp_click",
    "click_call",
    "maps_click",
    "qr_scan",
    "product_click",
    "time_on_page",
    "click_toggle_currency",
    "purchase",
    "conversion",
]


def both(tenant, zone, now):
    args = {"tenant_id": tenant.id, "zone": zone, "now": now}
    return (
        (landing.landing_summary(db.session, **args), landing.today_summary(db.session, **args)),
        (
            landing_rollups.landing_summary(db.session, **args),
            landing_rollups.today_summary(db.session, **args),
        ),
    )


def test_rollups_match_the_hand_computed_week(app, week):  # noqa: F811
    raw, fast = both(week, TEGUCIGALPA, NOW)
    assert fast == raw
    assert fast[0].visitors_week == 4 and fast[0].avg_time_on_page == 18


def test_the_mean_time_on_page_is_of_exact_decimals_in_both(app, make_tenant, add_events):
    """1.017 + 4.648 + 1.835 is 7.5 exactly (a mean of 2.5, half-up: 3); as floats it
    is 7.499999999999999, whose mean would round to 2."""
    tenant = make_tenant()
    seconds = ["1.017", "4.648", "1.835"]
    at = NOW - timedelta(hours=1)
    add_events(tenant, [("time_on_page", at, "10.0.0.1", {"seconds": float(s)}) for s in seconds])
    raw, fast = both(tenant, ZoneInfo("UTC"), NOW)
    assert raw[0].avg_time_on_page == fast[0].avg_time_on_page == 3


def test_a_mean_of_a_half_second_rounds_up_as_people_round(app, make_tenant, add_events):
    """2 s and 3 s: 2.5 s is shown as 3 s (Python's round would say 2)."""
    tenant = make_tenant()
    at = NOW - timedelta(hours=1)
    add_events(tenant, [("time_on_page", at, "10.0.0.1", {"seconds": s}) for s in (2, 3)])
    raw, fast = both(tenant, ZoneInfo("UTC"), NOW)
    assert raw[0].avg_time_on_page == fast[0].avg_time_on_page == 3


@pytest.mark.parametrize("lookup_max", [100, 2])  # each looked up, or the sets counted
def test_visitors_also_seen_after_today_still_count_in_the_week(
    app, make_tenant, add_events, monkeypatch, lookup_max
):
    """A host whose clock runs ahead writes visits just past midnight: those visitors'
    latest day is tomorrow, and the week (which ends today) still counts each of them
    once; one seen only tomorrow is not this week's."""
    monkeypatch.setattr(landing_rollups, "LOOKUP_MAX", lookup_max)
    tenant = make_tenant(timezone="UTC")
    tomorrow = NOW.replace(hour=0, minute=0) + timedelta(days=1, seconds=5)
    add_events(
        tenant,
        [
            ("pageview", NOW - timedelta(days=2), "10.0.0.7", None),
            ("pageview", NOW - timedelta(days=1), "10.0.0.7", None),
            ("pageview", NOW - timedelta(hours=1), "10.0.0.8", None),
            ("pageview", NOW - timedelta(hours=1), "10.0.0.9", None),
            *[("pageview", tomorrow, visitor, None) for visitor in ("10.0.0.7", "10.0.0.8")],
            ("pageview", tomorrow, "10.0.0.10", None),
        ],
    )
    raw, fast = both(tenant, ZoneInfo("UTC"), NOW)
    assert raw[0].visitors_week == 3
    assert fast == raw


def random_events(rng, count, now):
    events = []
    for _ in range(count):
        event_type = rng.choice(TYPES)
        metadata = {"seconds": rng.randint(0, 600)} if event_type == "time_on_page" else None
        at = now - timedelta(seconds=rng.randint(0, 10 * 86400))
        events.append((event_type, at, f"10.9.{rng.randint(0, 3)}.{rng.randint(0, 40)}", metadata))
    return events


@pytest.mark.parametrize("zone_name", ["UTC", "America/Tegucigalpa", "Asia/Kathmandu"])
def test_rollups_match_raw_events_at_random(app, make_tenant, add_events, zone_name):
    rng = random.Random(zone_name)
    tenant, neighbour = make_tenant(timezone=zone_name), make_tenant(timezone="UTC")
    add_events(tenant, random_events(rng, 400, NOW))
    add_events(neighbour, random_events(rng, 100, NOW))
    add_events(tenant, random_events(rng, 200, NOW))  # a second batch: counters must add up
    raw, fast = both(tenant, ZoneInfo(zone_name), NOW)
    assert fast == raw
    assert raw[0].visitors_week > 0 and raw[0].whatsapp_clicks > 0


def rollup_snapshot(tenant_id):
    snapshot = {}
    for model in ROLLUP_MODELS:
        table = model.__table__
        rows = db.session.execute(select(table).where(table.c.tenant_id == tenant_id)).all()
        snapshot[table.name] = sorted(tuple(map(str, row)) for row in rows)
    return snapshot


def test_rebuild_gives_the_incremental_rollups(app, make_tenant, add_events):
    tenant = make_tenant(timezone="America/Tegucigalpa")
    add_events(tenant, random_events(random.Random(3), 300, NOW))
    incremental = rollup_snapshot(tenant.id)
    rebuild_rollups(db.session, tenant.id)
    db.session.commit()
    assert rollup_snapshot(tenant.id) == incremental
    assert incremental["daily_visitors"]


def test_rebuilds_of_two_tenants_in_one_transaction(app, is_postgres, make_tenant, add_events):
    """As migration 0005 does: each rebuild leaves no temporary table behind for the next."""
    tenants = [make_tenant(timezone=zone) for zone in ("UTC", "Asia/Kathmandu")]
    for seed, tenant in enumerate(tenants):
        add_events(tenant, random_events(random.Random(seed), 200, NOW))
    incremental = [rollup_snapshot(tenant.id) for tenant in tenants]
    for tenant in tenants:
        rebuild_rollups(db.session, tenant.id)
    if is_postgres:
        assert db.session.scalar(text("SELECT to_regclass('rebuild_visits')")) is None
    db.session.commit()
    assert [rollup_snapshot(tenant.id) for tenant in tenants] == incremental


def test_every_tenant_table_leads_its_primary_key_with_tenant_id():
    """Distribution by tenant (Citus-style) needs tenant_id first in every tenant table's key."""
    checked = []
    for table in db.metadata.sorted_tables:
        if "tenant_id" not in table.c or table.name == "tenant_owners":
            continue
        key = [column.name for column in table.primary_key.columns]
        assert key[0] == "tenant_id", f"{table.name} primary key is {key}"
        checked.append(table.name)
    assert {"events", "products", "dedupe_keys", "daily_visitors"} <= set(checked)


def partitions():
    return set(
        db.session.scalars(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events'"
            )
        )
    )


def test_two_writers_making_the_same_months_partition_both_go_on(app, is_postgres):
    """The second waits for the first's transaction, then finds the partition made:
    not an error on its name, which would have failed its events."""
    if not is_postgres:
        pytest.skip("declarative partitioning is PostgreSQL's")
    month = date(2033, 7, 1)
    first, second = Session(db.engine), Session(db.engine)
    outcome: dict[str, object] = {}

    def make_it_too() -> None:
        try:
            outcome["created"] = ensure_partitions(second.connection(), [month])
            second.commit()
        except Exception as error:
            outcome["error"] = error

    try:
        assert ensure_partitions(first.connection(), [month]) == ["events_y2033m07"]
        racer = threading.Thread(target=make_it_too)
        racer.start()
        racer.join(0.5)
        assert racer.is_alive()  # waiting for the first transaction
        first.commit()
        racer.join(10)
    finally:
        first.close()
        second.close()
    assert outcome == {"created": []}
    assert "events_y2033m07" in partitions()


def test_partitions_on_demand_ahead_and_purge(app, is_postgres, make_tenant, add_events):
    if not is_postgres:
        pytest.skip("declarative partitioning is PostgreSQL's")
    tenant = make_tenant()
    far = datetime(2031, 5, 17, 12, tzinfo=UTC)
    add_events(tenant, [("pageview", far, "10.0.0.1", None)])
    assert "events_y2031m05" in partitions()
    created = create_ahead(
        db.session.connection(), now=datetime(2032, 1, 5, tzinfo=UTC), months_ahead=2
    )
    db.session.commit()
    assert created == ["events_y2032m01", "events_y2032m02", "events_y2032m03"]
    dropped, rows_deleted = purge_before(db.session.connection(), datetime(2031, 6, 1, tzinfo=UTC))
    db.session.commit()
    assert "events_y2031m05" in dropped and "events_y2032m01" not in dropped
    assert rows_deleted is None  # a dropped partition's rows are not counted
    assert "events_y2031m05" not in partitions()
    assert db.session.scalar(select(Event.id).where(Event.tenant_id == tenant.id)) is None


# Around local midnight in summer and in winter, and a day on each side of both changes.
ZONE_PROBES = [
    datetime(2026, 7, 15, 21, 30, tzinfo=UTC),
    datetime(2026, 7, 15, 22, 30, tzinfo=UTC),
    datetime(2026, 7, 15, 23, 30, tzinfo=UTC),
    datetime(2026, 1, 15, 22, 30, tzinfo=UTC),
    datetime(2026, 1, 15, 23, 30, tzinfo=UTC),
    datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
    datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
    datetime(2026, 10, 4, 12, 30, tzinfo=UTC),
]


def test_postgres_counts_the_days_of_every_zone_a_tenant_may_have_as_we_do(app, is_postgres):
    """The rebuild counts days in SQL, the writes in Python: PostgreSQL reads CET, EET,
    MET and WET as fixed-offset abbreviations (no summer time) unless told otherwise."""
    if not is_postgres:
        pytest.skip("AT TIME ZONE is PostgreSQL's")
    from tenant_analytics.schemas import iana_zone_names
    from tenant_analytics.timewindows import postgres_zone

    names = sorted(iana_zone_names())
    rows = db.session.execute(
        text(
            "SELECT n, (t AT TIME ZONE z)::date FROM unnest(CAST(:names AS text[]),"
            " CAST(:zones AS text[])) AS zone(n, z), unnest(CAST(:probes AS timestamptz[])) t"
        ),
        {
            "names": names,
            "zones": [postgres_zone(ZoneInfo(name)) for name in names],
            "probes": ZONE_PROBES,
        },
    ).all()
    ours = {
        (name, probe.astimezone(ZoneInfo(name)).date()) for name in names for probe in ZONE_PROBES
    }
    assert set(rows) == ours
    assert len(rows) == len(names) * len(ZONE_PROBES) > 3000


def test_a_rebuild_reads_zone_names_as_the_default_abbreviations_do(
    app, is_postgres, make_tenant, add_events
):
    """PostgreSQL reads a zone name as an abbreviation first, in the set the server is
    configured with: in 'Australia', EST is +10:00, 15 hours from the IANA zone the
    tenant chose. The rebuild reads names in the set ``postgres_zone`` was written for."""
    if not is_postgres:
        pytest.skip("AT TIME ZONE is PostgreSQL's")
    tenant = make_tenant(timezone="EST")
    evening = datetime(2026, 3, 5, 20, 0, tzinfo=UTC)  # 15:00 on 5 March in EST (-05:00)
    add_events(tenant, [("pageview", evening, "10.0.0.1", None)])
    add_events(tenant, random_events(random.Random("EST"), 100, evening))
    incremental = rollup_snapshot(tenant.id)
    db.session.execute(text("SET timezone_abbreviations = 'Australia'"))
    try:
        rebuild_rollups(db.session, tenant.id)
        rebuilt = rollup_snapshot(tenant.id)
    finally:
        db.session.rollback()
        db.session.execute(text("RESET timezone_abbreviations"))
        db.session.commit()
    assert rebuilt == incremental


@pytest.mark.parametrize("zone_name", ["CET", "EET", "MET", "WET", "Europe/Madrid"])
def test_a_rebuild_keeps_summer_time_where_the_writes_do(app, make_tenant, add_events, zone_name):
    from tenant_analytics.models import DailyEventCount

    tenant = make_tenant(timezone=zone_name)
    summer = datetime(2026, 7, 16, 0, 0, tzinfo=ZoneInfo(zone_name))  # local midnight
    around = [summer + timedelta(minutes=m) for m in (-30, 0, 30, 90)]
    add_events(tenant, [("pageview", at, f"10.0.0.{n}", None) for n, at in enumerate(around)])
    add_events(tenant, random_events(random.Random(zone_name), 200, summer - timedelta(seconds=1)))
    incremental = rollup_snapshot(tenant.id)
    rebuild_rollups(db.session, tenant.id)
    db.session.commit()
    assert rollup_snapshot(tenant.id) == incremental
    pageviews = dict(
        db.session.execute(
            select(DailyEventCount.day, DailyEventCount.events).where(
                DailyEventCount.tenant_id == tenant.id,
                DailyEventCount.event_type == "pageview",
                DailyEventCount.day >= date(2026, 7, 16),
            )
        ).all()
    )
    assert pageviews == {date(2026, 7, 16): 3}  # random_events are all before summer


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25)])
def test_a_local_day_on_a_clock_change_is_23_or_25_hours(day, hours):
    """Madrid's spring and autumn days: a day of 24 hours took in an hour of the next,
    or lost its last, in every report's windows."""
    from tenant_analytics.timewindows import local_day

    window = local_day(day, ZoneInfo("Europe/Madrid"))
    assert window.end - window.start == timedelta(hours=hours)
    assert window.end == local_day(day + timedelta(days=1), ZoneInfo("Europe/Madrid")).start
