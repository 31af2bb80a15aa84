"""Bulk-load synthetic events with PostgreSQL COPY, streamed from generators.

Rows are produced in time order (an append-only event log grows that way), as
COPY text lines built from precomputed strings, so plain Python keeps up with
the server. Two data sets: landing-page events for the dashboard target and
store events for the store reports.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg2

LANDING_COLUMNS = (
    "tenant_id",
    "created_at",
    "event_type",
    "metadata",
    "visitor_hash",
    "session_id",
)
STORE_COLUMNS = (
    "tenant_id",
    "created_at",
    "event_type",
    "metadata",
    "visitor_hash",
    "session_id",
    "user_id",
    "product_slug",
    "product_name",
    "price",
    "quantity",
    "source",
    "revenue",
    "currency",
)
NULL = r"\N"

# Landing mix: (event type, share in percent). time_on_page carries metadata.seconds.
LANDING_MIX = (
    ("pageview", 60),
    ("time_on_page", 14),
    ("click_whatsapp", 8),
    ("product_click", 8),
    ("click_call", 4),
    ("click_toggle_currency", 3),
    ("qr_scan", 3),
)
PAGES = ("/", "/menu", "/contacto", "/productos", "/promos")
STORE_SOURCES = (None, "google", "facebook", "instagram", "whatsapp")
STORE_PRODUCTS = 200
STORE_USERS = 20_000
ROWS_PER_BLOCK = 2_000
# Loading the data sets: two COPY streams, one server process per core. The COPY
# reference of target 2 stays one stream, as the issue measured it.
LOAD_STREAMS = 2


@dataclass(frozen=True)
class LoadResult:
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


class BlockReader:
    """A read-only file over an iterator of text blocks, for ``copy_expert``."""

    def __init__(self, blocks: Iterable[str]):
        self._blocks = iter(blocks)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            block = next(self._blocks, None)
            if block is None:
                break
            self._buffer += block.encode()
        if size < 0:
            size = len(self._buffer)
        chunk, self._buffer = self._buffer[:size], self._buffer[size:]
        return chunk

    def readline(self, size: int = -1) -> bytes:  # pragma: no cover - unused by COPY FROM
        raise NotImplementedError


class SharedBlocks:
    """One iterator of blocks that several COPY streams draw from, a block at a time."""

    def __init__(self, blocks: Iterable[str]):
        self._blocks = iter(blocks)
        self._lock = threading.Lock()

    def __iter__(self) -> SharedBlocks:
        return self

    def __next__(self) -> str:
        with self._lock:
            return next(self._blocks)


def copy_rows(
    dsn: str, table: str, columns: tuple[str, ...], blocks: Iterable[str], *, streams: int = 1
) -> float:
    """COPY the text ``blocks`` into ``table``; return the seconds taken.

    With ``streams`` > 1, that many connections COPY at once (one transaction each),
    taking turns at the blocks: one COPY keeps one server process busy, and the
    generator feeds two with time to spare.
    """
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    shared = SharedBlocks(blocks)

    def stream() -> None:
        with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
            cursor.copy_expert(sql, BlockReader(shared), size=1 << 20)
        connection.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="copy") as pool:
        for running in [pool.submit(stream) for _ in range(max(streams, 1))]:
            running.result()
    return time.perf_counter() - started


def timestamp_text(moment: datetime) -> str:
    """A UTC instant as PostgreSQL timestamptz input."""
    return moment.strftime("%Y-%m-%d %H:%M:%S+00")


def ordered_seconds(start: datetime, end: datetime, count: int) -> Iterator[str]:
    """``count`` timestamps spread evenly over [start, end), oldest first, as text.

    The text of each second is formatted once and reused for every row in it.
    """
    span = max(int((end - start).total_seconds()), 1)
    last_offset, text = -1, ""
    for index in range(count):
        offset = index * span // count
        if offset != last_offset:
            last_offset, text = offset, timestamp_text(start + timedelta(seconds=offset))
        yield text


def visitor_hashes(count: int, seed: int) -> list[str]:
    """``count`` distinct 45-character hex strings standing in for visitor hashes."""
    rng = random.Random(seed)
    return [f"{index:08x}{rng.getrandbits(148):037x}"[:45] for index in range(count)]


def weighted_table(mix: tuple[tuple[str, int], ...]) -> list[str]:
    """A list in which each item appears its share (percent) of 100 times."""
    table = [name for name, share in mix for _ in range(share)]
    if len(table) != 100:
        raise ValueError("shares must add up to 100")
    return table


def landing_metadata(event_type: str, variant: int) -> str:
    """Realistic metadata JSON for a landing event type (``variant`` picks the values)."""
    if event_type == "time_on_page":
        return json.dumps({"seconds": 5 + variant % 600})
    if event_type == "product_click":
        return json.dumps({"product_id": 1 + variant % 40})
    if event_type in ("click_whatsapp", "click_call"):
        return json.dumps({"button_location": ("hero", "footer", "floating")[variant % 3]})
    return json.dumps({"path": PAGES[variant % len(PAGES)]})


def landing_blocks(
    *, tenant_id: int, start: datetime, end: datetime, events: int, visitors: int, seed: int = 7
) -> Iterator[str]:
    """COPY text for ``events`` landing events of ``visitors`` distinct visitors in [start, end).

    Visitors come and go: at any moment the events are drawn from a moving
    slice of the visitors (each one active over about two days), and the
    slice's first visitor always gets one event, so every visitor appears.
    """
    rng = random.Random(seed)
    hashes = visitor_hashes(visitors, seed)
    types = weighted_table(LANDING_MIX)
    # Precomputed "type\tmetadata" pieces: 600 variants per type is plenty of variety.
    pieces = {name: [f"{name}\t{landing_metadata(name, v)}" for v in range(600)] for name in types}
    prefix = f"{tenant_id}\t"
    lines: list[str] = []
    randrange = rng.randrange
    active = max(visitors * 2 // 7, 1)  # about two days' worth of the week's visitors
    first = -1
    for index, stamp in enumerate(ordered_seconds(start, end, events)):
        base = index * visitors // events
        if base != first:
            visitor = first = base
        else:
            visitor = (base + randrange(active)) % visitors
        kind = pieces[types[randrange(100)]][randrange(600)]
        lines.append(f"{prefix}{stamp}\t{kind}\t{hashes[visitor]}\ts{visitor:x}.{stamp[8:10]}\n")
        if len(lines) == ROWS_PER_BLOCK:
            yield "".join(lines)
            lines.clear()
    if lines:
        yield "".join(lines)


def _text(value: object) -> str:
    return NULL if value is None else str(value)


def store_session(rng: random.Random, prices: list[Decimal]) -> list[tuple]:
    """One browsing session's events, in order, as (type, metadata, slug, price, qty) tuples.

    A funnel: every session views pages; some view products, fewer add to
    cart, fewer begin checkout, fewer purchase.
    """
    events: list[tuple] = [("page_view", None, None, None, None)] * rng.randint(1, 3)
    product = rng.randrange(STORE_PRODUCTS)
    if rng.random() < 0.7:
        for _ in range(rng.randint(1, 4)):
            product = rng.randrange(STORE_PRODUCTS) if rng.random() < 0.5 else product
            events.append(("product_view", None, product, prices[product], None))
        if rng.random() < 0.35:
            quantity = rng.randint(1, 3)
            metadata = json.dumps({"quantity": quantity})
            events.append(("add_to_cart", metadata, product, prices[product], quantity))
            if rng.random() < 0.5:
                events.append(("begin_checkout", None, None, None, None))
                if rng.random() < 0.6:
                    events.append(("purchase", metadata, product, prices[product], quantity))
    return events


def store_blocks(
    *, tenant_id: int, start: datetime, end: datetime, events: int, currency: str = "HNL", seed=11
) -> Iterator[str]:
    """COPY text for about ``events`` store events (whole sessions) in [start, end)."""
    rng = random.Random(seed)
    prices = [Decimal(rng.randrange(500, 50_000)) / 100 for _ in range(STORE_PRODUCTS)]
    average_session = 4.2  # measured mean of store_session's length
    sessions = max(int(events / average_session), 1)
    span = (end - start).total_seconds() - 600  # room for a session's last events
    lines: list[str] = []
    produced = 0
    for number in range(sessions):
        if produced >= events:
            break
        session = f"sess-{number:07d}"
        user = f"user-{rng.randrange(STORE_USERS)}@example.com" if rng.random() < 0.5 else None
        source = STORE_SOURCES[rng.randrange(len(STORE_SOURCES))]
        begin = start + timedelta(seconds=span * number / sessions)
        visitor = f"{number:045x}"
        for step, (kind, metadata, product, price, quantity) in enumerate(
            store_session(rng, prices)
        ):
            revenue = price * quantity if kind == "purchase" else None
            row = (
                tenant_id,
                timestamp_text(begin + timedelta(seconds=20 * step)),
                kind,
                metadata,
                visitor,
                session,
                user,
                None if product is None else f"product-{product}",
                None if product is None else f"Product {product}",
                price,
                quantity,
                source,
                revenue,
                currency if revenue is not None else None,
            )
            lines.append("\t".join(map(_text, row)) + "\n")
            produced += 1
        if len(lines) >= ROWS_PER_BLOCK:
            yield "".join(lines)
            lines.clear()
    if lines:
        yield "".join(lines)


class Progress:
    """Counts the rows passing through a block iterator and prints a line now and then."""

    def __init__(self, label: str, every: int = 1_000_000):
        self.label, self.every, self.rows = label, every, 0
        self.started = time.perf_counter()

    def through(self, blocks: Iterable[str]) -> Iterator[str]:
        for block in blocks:
            before = self.rows
            self.rows += block.count("\n")
            if self.rows // self.every != before // self.every:
                rate = self.rows / (time.perf_counter() - self.started)
                print(f"    {self.label}: {self.rows:,} rows ({rate:,.0f} rows/s)", flush=True)
            yield block


def load_events(dsn: str, columns: tuple[str, ...], blocks: Iterable[str], label: str):
    """COPY ``blocks`` into ``events`` in LOAD_STREAMS streams, printing progress; count
    what was loaded."""
    progress = Progress(label)
    seconds = copy_rows(dsn, "events", columns, progress.through(blocks), streams=LOAD_STREAMS)
    return LoadResult(progress.rows, seconds)


def load_landing(dsn: str, **spec) -> LoadResult:
    """COPY landing events (see :func:`landing_blocks`) into ``events``."""
    return load_events(dsn, LANDING_COLUMNS, landing_blocks(**spec), "landing events")


def load_store(dsn: str, **spec) -> LoadResult:
    """COPY store events (see :func:`store_blocks`) into ``events``."""
    return load_events(dsn, STORE_COLUMNS, store_blocks(**spec), "store events")


def copy_reference(dsn: str, *, tenant_id: int, rows: int) -> LoadResult:
    """Rows/s of a plain COPY of ``rows`` landing events into a scratch copy of ``events``.

    The scratch table has the same columns, defaults and indexes as ``events``
    and is dropped afterwards.
    """
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_copy_scratch")
        cursor.execute(
            "CREATE TABLE bench_copy_scratch (LIKE events INCLUDING DEFAULTS INCLUDING INDEXES)"
        )
    connection.close()
    now = datetime.now(UTC)
    blocks = landing_blocks(
        tenant_id=tenant_id,
        start=now - timedelta(hours=1),
        end=now,
        events=rows,
        visitors=max(rows // 25, 1),
    )
    try:
        seconds = copy_rows(dsn, "bench_copy_scratch", LANDING_COLUMNS, blocks)
    finally:
        with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS bench_copy_scratch")
        connection.close()
    return LoadResult(rows, seconds)
