"""The app served by a real gunicorn, for tests that need it over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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


class TcpForwarder:
    """A port that forwards to ``target`` while open, and refuses (cutting every
    connection through it) while shut: a database that goes away and comes back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._pipes: list[socket.socket] = []

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def shut(self) -> None:
        if self._listener is not None:
            with suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes its accept()
            self._listener.close()
            self._listener = None
        for pipe in self._pipes:
            with suppress(OSError):
                pipe.shutdown(socket.SHUT_RDWR)
            pipe.close()
        self._pipes.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # shut
                return
            server = socket.create_connection(self.target)
            self._pipes += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
