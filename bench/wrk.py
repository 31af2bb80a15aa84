"""Running wrk with the benchmark's Lua scripts and reading its summary line."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from settings import BENCH_DIR, RESULTS_DIR

RESULT_PREFIX = "BENCH_RESULT "
TIMEOUT = "10s"  # wrk's default (2 s) would count slow batch answers as socket errors


class WrkFailed(RuntimeError):
    """wrk could not run or printed no summary."""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run saw (see wrk_report.lua)."""

    requests: int
    seconds: float
    non_2xx: int  # wrk's "Non-2xx or 3xx responses"
    socket_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    stored: int  # sum of "stored" in 2xx bodies (batch script only)
    stored_responses: int

    @property
    def acknowledged(self) -> int:
        """Responses with a 2xx (or 3xx) status."""
        return self.requests - self.non_2xx

    @property
    def ack_per_second(self) -> float:
        return self.acknowledged / self.seconds if self.seconds else 0.0

    @classmethod
    def parse(cls, output: str) -> WrkResult:
        for line in output.splitlines():
            if line.startswith(RESULT_PREFIX):
                data = json.loads(line[len(RESULT_PREFIX) :])
                return cls(
                    requests=data["requests"],
                    seconds=data["duration_us"] / 1e6,
                    non_2xx=data["non_2xx"],
                    socket_errors=sum(
                        data[key]
                        for key in ("connect_errors", "read_errors", "write_errors", "timeouts")
                    ),
                    p50_ms=data["p50_us"] / 1000,
                    p99_ms=data["p99_us"] / 1000,
                    max_ms=data["max_us"] / 1000,
                    stored=data["stored"],
                    stored_responses=data["stored_responses"],
                )
        raise WrkFailed(f"no {RESULT_PREFIX.strip()} line in wrk output:\n{output[-2000:]}")


class WrkRun:
    """A wrk process running in the background; ``wait()`` gives its result."""

    def __init__(
        self,
        script: str,
        url: str,
        script_args: list[str],
        *,
        seconds: int,
        threads: int,
        connections: int,
        log_name: str,
    ):
        self.log_path: Path = RESULTS_DIR / f"wrk-{log_name}.txt"
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            TIMEOUT,
            "-s",
            str(BENCH_DIR / script),
            url,
            "--",
            *script_args,
        ]
        with self.log_path.open("w") as log:
            log.write(" ".join(command) + "\n")
            log.flush()
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def wait(self) -> WrkResult:
        if self.process.wait() != 0:
            raise WrkFailed(f"wrk exited with {self.process.returncode}: see {self.log_path}")
        return WrkResult.parse(self.log_path.read_text())

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_wrk(*args, **kwargs) -> WrkResult:
    """Run wrk in the foreground (arguments as :class:`WrkRun`)."""
    run = WrkRun(*args, **kwargs)
    try:
        return run.wait()
    finally:
        run.kill()
