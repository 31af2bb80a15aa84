"""Talking to the app the way an operator and a client do: its CLI and its HTTP API."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from settings import ROOT, VENV_BIN

CLI_TIMEOUT = 900


class NotAvailable(RuntimeError):
    """The app does not have this yet (a 404 route, a missing CLI command): report n/a."""


class AppProblem(RuntimeError):
    """The app misbehaved (an error status, a failed command): the target fails."""


def flask_cli(*args: str) -> str:
    """Run ``flask --app tenant_analytics ARGS`` and return its standard output."""
    command = [str(VENV_BIN / "flask"), "--app", "tenant_analytics", *args]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
    )
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        if "No such command" in message:
            raise NotAvailable(f"`flask {' '.join(args[:2])}` does not exist yet")
        raise AppProblem(f"`flask {' '.join(args)}` failed: {message[-800:]}")
    return result.stdout


def last_json_line(output: str) -> dict[str, Any]:
    """The last line of ``output`` that is a JSON object (the CLI prints one)."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AppProblem(f"no JSON in command output: {output[-400:]!r}")


def create_tenant(name: str, slug: str, timezone: str) -> int:
    output = flask_cli("tenant", "create", "--name", name, "--slug", slug, "--timezone", timezone)
    return int(last_json_line(output)["id"])


def create_admin(email: str, password: str) -> None:
    flask_cli("user", "create", "--email", email, "--password", password, "--admin")


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    seconds: float


class HttpClient:
    """A small JSON client for one server; a fresh connection per request."""

    def __init__(self, port: int, token: str | None = None):
        self.port, self.token = port, token

    def request(self, method: str, path: str, body: Any = None) -> Response:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = json.dumps(body) if body is not None else None
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            started = time.perf_counter()
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            seconds = time.perf_counter() - started
        finally:
            connection.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Response(response.status, parsed, seconds)

    def get_ok(self, path: str) -> Response:
        """GET ``path``; n/a on 404, :class:`AppProblem` on any other non-2xx answer."""
        response = self.request("GET", path)
        check_status(response, path)
        return response

    def login(self, email: str, password: str) -> HttpClient:
        """A client carrying the access token of ``email``."""
        response = self.request("POST", "/api/auth/login", {"email": email, "password": password})
        check_status(response, "/api/auth/login")
        return HttpClient(self.port, response.body["access_token"])


def check_status(response: Response, path: str) -> None:
    if response.status == 404:
        raise NotAvailable(f"{path} answered 404")
    if not 200 <= response.status < 300:
        raise AppProblem(f"{path} answered {response.status}: {str(response.body)[:300]}")
