"""Local calendar days of a tenant, as UTC instants for indexed range queries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Day:
    """One local calendar day: [start, end) in UTC."""

    date: date
    start: datetime
    end: datetime


def tenant_zone(name: str | None) -> ZoneInfo:
    """The tenant's zone; UTC when unset or unknown (said once per process and name: a
    zone taken when set and unknown now means this host's tz data is older)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America", a directory
        if name not in _UNKNOWN_ZONES_SAID:
            _UNKNOWN_ZONES_SAID.add(name)
            log.warning("time zone %r is unknown to this host's tz data: days counted in UTC", name)
        return ZoneInfo("UTC")


_UNKNOWN_ZONES_SAID: set[str] = set()


# Zones that PostgreSQL's AT TIME ZONE reads as abbreviations first, of a fixed offset,
# where the IANA database gives them summer time: names it keeps them by (the IANA
# database's own links since 2024b). UTC, GMT, EST and the like mean the same in both.
_POSTGRES_ABBREVIATIONS = {
    "CET": "Europe/Brussels",
    "MET": "Europe/Brussels",
    "EET": "Europe/Athens",
    "WET": "Europe/Lisbon",
}


def postgres_zone(zone: ZoneInfo) -> str:
    """The name under which PostgreSQL's AT TIME ZONE counts ``zone``'s days as we do."""
    return _POSTGRES_ABBREVIATIONS.get(zone.key, zone.key)


def local_day(day: date, zone: ZoneInfo) -> Day:
    """``day`` in ``zone`` as UTC bounds (DST-aware: a day may be 23 or 25 hours)."""
    start = datetime.combine(day, time.min, tzinfo=zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=zone).astimezone(UTC)
    return Day(day, start, end)


def last_days(zone: ZoneInfo, now: datetime, count: int) -> list[Day]:
    """The ``count`` local days ending today, oldest first."""
    today = now.astimezone(zone).date()
    return [local_day(today - timedelta(days=offset), zone) for offset in range(count - 1, -1, -1)]


def lookback_days(zone: ZoneInfo, now: datetime, days: int) -> list[Day]:
    """Today and the ``days`` local days before it, oldest first: the contract's "last 90
    days" (its example runs from 2 March to 31 May)."""
    return last_days(zone, now, days + 1)


def days_overlapping(zone: ZoneInfo, start: datetime, end: datetime) -> list[Day]:
    """The local days that share an instant with [start, end), oldest first."""
    first = start.astimezone(zone).date()
    last = (end - timedelta(microseconds=1)).astimezone(zone).date()
    return [
        local_day(first + timedelta(days=offset), zone) for offset in range((last - first).days + 1)
    ]
