"""The app served by a real gunicorn, for tests that need it over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Until the app answers, not only the port: gunicorn listens before its workers have
    loaded the app, which takes seconds on a busy machine (a test's first request with a
    short timeout of its own would wait them out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5):
                return
        except urllib.error.HTTPError:
            return  # an answer all the same (503: the database or Redis away on purpose)
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer in {timeout:.0f} s: {log.read_text()[-2000:]}")


@contextmanager
def gunicorn(settings: list[str], env: dict[str, str], log: Path) -> Iterator[int]:
    """``wsgi:app`` under gunicorn with ``settings`` on a free port; yields the port."""
    port = free_port()
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            # No control socket: its default path is per user, shared with any other gunicorn
            # here (a `make serve` beside the tests would lose its own).
            [GUNICORN, *settings, "--bind", f"127.0.0.1:{port}", "--no-control-socket", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(port, proc, log)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def post(port: int, path: str, body: dict) -> int:
    """POST ``body`` as JSON; the status code."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
