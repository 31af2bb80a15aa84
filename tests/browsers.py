"""What the browser tests share: Debian's headless Chromium, a landing page on its own
origin, the app under gunicorn, and the events it stored.

Context managers rather than fixtures: each test module wraps them in its own
module-scoped fixtures (its own rate limit, its own pages), and fixtures imported
from here would be flagged by ruff as redefined by every test that takes them.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from tenant_analytics.extensions import db
from tenant_analytics.models import Event

from .conftest import REDIS_URL, TEST_HASH_KEY, TEST_JWT_KEY
from .servers import gunicorn

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if os.environ.get("REQUIRE_BROWSER") == "1":
    assert CHROMIUM and CHROMEDRIVER, "REQUIRE_BROWSER=1 but chromium/chromedriver is missing"
# A visitor's Chrome: headless Chromium names itself HeadlessChrome, a bot whose events
# are not stored (api/requests.sent_by_a_crawler). Tests of that use the real one.
VISITOR = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0.0.0 Safari/537.36"
)
HEADLESS = VISITOR.replace("Chrome/", "HeadlessChrome/")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


class QuietPage(SimpleHTTPRequestHandler):
    """A static page; ``?slow=SECONDS`` answers that late (a slow shop's server)."""

    def do_GET(self) -> None:
        slow = parse_qs(urlsplit(self.path).query).get("slow")
        if slow:
            time.sleep(float(slow[0]))
        super().do_GET()

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def landing_pages(root: Path) -> Iterator[int]:
    """Serve the files in ``root`` on their own origin; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietPage, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def api_server(database_url: str, log_dir: Path, **settings: str) -> Iterator[int]:
    """The app under gunicorn (one gevent worker), ``settings`` added to its environment."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "RATELIMIT_STORAGE_URI": REDIS_URL or "memory://",
        "RATELIMIT_KEY_PREFIX": f"browser-{uuid.uuid4().hex}",
        "TENANT_CACHE_SECONDS": "0",  # the suite empties its tables between tests
        "VISITOR_HASH_KEY": TEST_HASH_KEY,
        "JWT_SECRET_KEY": TEST_JWT_KEY,
        **settings,
    }
    workers = ["--worker-class", "gevent", "--workers", "1"]
    with gunicorn(workers, env, log_dir / "gunicorn.log") as port:
        yield port


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium driven by Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        # No test reaches past this machine: any other host (wa.me) fails at once.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
        f"--user-agent={VISITOR}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def stored_events(tenant_id: int | None = None) -> list[Event]:
    """The tenant's stored events (every tenant's without one), oldest first."""
    db.session.remove()
    query = select(Event).order_by(Event.id)
    if tenant_id is not None:
        query = query.where(Event.tenant_id == tenant_id)
    return list(db.session.scalars(query))


def events_when(
    tenant_id: int, ready: Callable[[list[Event]], bool], timeout: float = 10
) -> list[Event]:
    """The tenant's events once ``ready`` says so: beacons arrive when the browser sends
    them, not when the page returns. After ``timeout``, whatever is there."""
    deadline = time.monotonic() + timeout
    while not ready(events := stored_events(tenant_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return events
