"""gunicorn servers started by the benchmark, their workers and those workers' memory."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from settings import RESULTS_DIR, ROOT, RUN_DIR, VENV_BIN

START_TIMEOUT = 60
# The last line of a logged traceback: "TimeoutError: ...", "sqlalchemy.exc.X: ..."
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b(:|$)")
STOP_TIMEOUT = 20


class ServerFailed(RuntimeError):
    """A server did not come up (the app failed to import, the port was taken, ...)."""


class Gunicorn:
    """One gunicorn master serving ``app`` on 127.0.0.1:``port``; a context manager."""

    def __init__(
        self,
        name: str,
        app: str,
        port: int,
        settings: tuple[str, ...],
        *,
        env: dict[str, str] | None = None,
        pythonpath: Path | None = None,
    ):
        self.name, self.app, self.port, self.settings = name, app, port, settings
        self.env = {**os.environ, **(env or {})}
        self.pythonpath = pythonpath
        self.log_path = RESULTS_DIR / f"gunicorn-{name}.log"
        self.pid_path = RUN_DIR / f"gunicorn-{name}.pid"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        extra = ["--pythonpath", str(self.pythonpath)] if self.pythonpath else []
        return [
            str(VENV_BIN / "gunicorn"),
            *self.settings,
            "--bind",
            f"127.0.0.1:{self.port}",
            "--pid",
            str(self.pid_path),
            "--no-control-socket",  # its default path is per user, shared with any gunicorn here
            *extra,
            self.app,
        ]

    def start(self) -> Gunicorn:
        """Start the master and wait until every worker is up and HTTP answers."""
        if port_answers(self.port):
            raise ServerFailed(f"port {self.port} is already in use (set BENCH_*_PORT)")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our own process group: stopped as a whole
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        expected = _workers_setting(self.settings)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerFailed(f"gunicorn {self.name} exited:\n{self.log_tail()}")
            if port_answers(self.port) and len(self.worker_pids()) >= expected:
                return
            time.sleep(0.2)
        raise ServerFailed(
            f"gunicorn {self.name} not ready in {START_TIMEOUT}s:\n{self.log_tail()}"
        )

    def worker_pids(self) -> list[int]:
        """The master's worker processes (its children), sorted."""
        return children_of(self.process.pid) if self.process else []

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then SIGKILL to the whole group if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.pid_path.unlink(missing_ok=True)

    def error_summary(self) -> str | None:
        """The exceptions the server logged, most frequent first; None when there were none."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return None
        errors = Counter(line[:140] for line in lines if EXCEPTION_LINE.match(line))
        if not errors:
            return None
        listed = "; ".join(f"{count}x {line}" for line, count in errors.most_common(5))
        return f"gunicorn {self.name} logged {sum(errors.values())} exceptions: {listed}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _workers_setting(settings: tuple[str, ...]) -> int:
    """The ``--workers``/``-w`` value among gunicorn arguments (gunicorn's default: 1)."""
    for index, arg in enumerate(settings):
        if arg in ("--workers", "-w") and index + 1 < len(settings):
            return int(settings[index + 1])
        if arg.startswith("--workers="):
            return int(arg.split("=", 1)[1])
    return 1


def port_answers(port: int) -> bool:
    """True when an HTTP server answers on 127.0.0.1:``port`` (any status)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def children_of(parent: int) -> list[int]:
    """Pids whose parent is ``parent``, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue  # the process ended meanwhile
        if _status_field(status, "PPid") == str(parent):
            children.append(int(entry.name))
    return sorted(children)


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (VmRSS), None when the process is gone."""
    try:
        value = _status_field((Path("/proc") / str(pid) / "status").read_text(), "VmRSS")
    except OSError:
        return None
    return int(value.split()[0]) if value else None


def _status_field(status: str, name: str) -> str | None:
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None
