"""The one results table: target | measured | reference | ratio | pass/fail."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PASS, FAIL, NA, ERROR = "pass", "FAIL", "n/a", "ERROR"
HEADER = ("target", "measured", "reference (same run)", "ratio", "pass/fail")


@dataclass(frozen=True)
class Row:
    target: str
    measured: str
    reference: str = "-"
    ratio: str = "-"
    verdict: str = PASS

    def cells(self) -> tuple[str, ...]:
        return (self.target, self.measured, self.reference, self.ratio, self.verdict)


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL


class Report:
    """Rows in the order targets produce them, notes, and the phase timings."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.phases: list[tuple[str, float]] = []
        self.started = datetime.now(UTC)
        self.harness_broken = False

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  -> {row.target}: {row.measured} | {row.reference} | {row.ratio} | {row.verdict}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}")

    def fill(self, targets: list[str], verdict_: str, reason: str) -> None:
        """Add a row for each of ``targets`` not reported yet, all with ``reason``."""
        done = {row.target for row in self.rows}
        for target in targets:
            if target not in done:
                self.add(Row(target, reason, verdict=verdict_))

    def table(self) -> str:
        """The rows as a Markdown table."""
        rows = [HEADER, *(row.cells() for row in self.rows)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]

        def line(cells: tuple[str, ...]) -> str:
            padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            return "| " + " | ".join(padded) + " |"

        separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
        return "\n".join([line(rows[0]), separator, *(line(row) for row in rows[1:])])

    def markdown(self, settings_summary: str) -> str:
        elapsed = (datetime.now(UTC) - self.started).total_seconds()
        parts = [
            f"# make bench — {self.started:%Y-%m-%d %H:%M} UTC",
            "",
            f"Machine: {machine()}",
            f"Settings: {settings_summary}",
            f"Total time: {elapsed / 60:.1f} min",
            "",
            self.table(),
        ]
        if self.notes:
            parts += ["", "Notes:", *(f"- {note}" for note in self.notes)]
        if self.phases:
            timings = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in self.phases)
            parts += ["", f"Phases: {timings}"]
        return "\n".join(parts) + "\n"

    def write(self, path: Path, settings_summary: str) -> str:
        text = self.markdown(settings_summary)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return text


def machine() -> str:
    """CPU model and count, memory, OS and PostgreSQL server version."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, {postgres_version()}, {wrk_version()}"
    )


def postgres_version() -> str:
    from appdb import scalar  # imported late: report.py stays importable without the app

    try:
        dsn = os.environ["BENCH_DATABASE_URL"]
        return "PostgreSQL " + str(scalar(dsn, "SHOW server_version")).split()[0]
    except Exception:
        return "PostgreSQL ?"


def wrk_version() -> str:
    try:
        output = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
        return output.split("Copyright")[0].strip() or "wrk"
    except OSError:
        return "wrk ?"
