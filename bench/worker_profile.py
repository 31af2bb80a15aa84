"""Where a worker's CPU goes under load: py-spy's samples of the workers, by layer.

Only with ``BENCH_PROFILE_SECONDS`` set (bench/run.sh then installs py-spy in the
venv): after target 1, bare Flask and keyed /track are driven once more each, their
workers sampled all along, and the shares are written to
``bench/results/track-profile.md``. The CPU row says how much a request costs; this
says which code spends it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from settings import RESULTS_DIR, VENV_BIN

SAMPLES_PER_SECOND = 250
MIN_SHARE = 0.005  # rows below half a percent are left out of the tables
# py-spy's frame: "function (path/to/file.py:line)"
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*?):\d+\)$")

# Stages of a request, by a frame of the stack, the first that matches.
STAGES = (
    ("group committer (its Python)", "GroupCommitter._run"),
    ("the app: Flask, its extensions and our code", "Flask.wsgi_app"),
    ("gunicorn's HTTP: parse the request, send the answer", "GeventWorker.handle"),
)
OTHER_STAGE = "other (gevent's loop, timers)"
# Leaf frames of samples that are waits, not work: py-spy counts many samples whose
# innermost frame is SQLAlchemy's execute (16% of /track's) where perf finds psycopg2 and
# libpq at under 1% of the worker's CPU, the rest being the wait for PostgreSQL's answer
# (gevent's loop runs other requests meanwhile: strace shows it in epoll_wait, not poll).
WAITING = {("Hub.run", "gevent"), ("DefaultDialect.do_execute", "sqlalchemy")}


def profile_command(pid: int, seconds: int, output: Path) -> list[str]:
    return [
        str(VENV_BIN / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(SAMPLES_PER_SECOND),
        "--format",
        "raw",
        "--nonblocking",  # the worker is not paused to be read: it runs as it would
        "--output",
        str(output),
    ]


def start_profiles(pids: Iterable[int], seconds: int) -> list[tuple[subprocess.Popen, Path]]:
    """One py-spy per worker, recording for ``seconds`` in the background."""
    runs = []
    for pid in pids:
        output = RESULTS_DIR / f"track-profile-{pid}.txt"
        output.unlink(missing_ok=True)  # an earlier run's, of a worker with the same pid
        with (RESULTS_DIR / f"track-profile-{pid}.log").open("w") as log:
            process = subprocess.Popen(
                profile_command(pid, seconds, output), stdout=log, stderr=subprocess.STDOUT
            )
        runs.append((process, output))
    return runs


@dataclass
class Profile:
    """Busy samples by stage and by the package whose code ran (standard library code
    counted to the package that called it)."""

    busy: int = 0
    waiting: int = 0
    stages: Counter[str] = field(default_factory=Counter)
    packages: Counter[str] = field(default_factory=Counter)

    def add_raw(self, text: str) -> None:
        """Lines of py-spy's raw format: "frame;frame;...;leaf COUNT"."""
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [_frame(part) for part in stack.split(";")]
            if frames[-1] in WAITING:
                self.waiting += int(count)
                continue
            self.busy += int(count)
            names = [name for name, _ in frames]
            stage = next((s for s, marker in STAGES if marker in names), OTHER_STAGE)
            self.stages[stage] += int(count)
            self.packages[_owner(frames)] += int(count)

    def table(self, cpu_us_per_request: float | None) -> str:
        """Both views as Markdown, with µs per request where the CPU per request is known."""
        lines = []
        for title, counts in (("stage", self.stages), ("code that ran", self.packages)):
            lines += [f"| {title} | share of busy samples | µs per request |", "|---|---|---|"]
            for name, count in counts.most_common():
                share = count / self.busy if self.busy else 0.0
                if share < MIN_SHARE:
                    break
                us = f"{share * cpu_us_per_request:,.0f}" if cpu_us_per_request else "-"
                lines.append(f"| {name} | {share:.0%} | {us} |")
            lines.append("")
        return "\n".join(lines)


def _frame(text: str) -> tuple[str, str]:
    """(function, package) of one frame; package "python" for the standard library.

    py-spy names a file from the import path it was found on: "flask/app.py",
    "tenant_analytics/ingestion.py", "threading.py", "<frozen abc>".
    """
    match = FRAME.match(text)
    if not match:
        return text, "native"
    package = match["path"].split("/", 1)[0].removesuffix(".py")
    if package.startswith("<") or package in sys.stdlib_module_names:
        return match["function"], "python"
    return match["function"], package


def _owner(frames: list[tuple[str, str]]) -> str:
    """The innermost frame's package, or its nearest caller's outside the standard library."""
    for _, package in reversed(frames):
        if package not in ("python", "native"):
            return package
    return "python"
