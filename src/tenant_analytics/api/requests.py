"""Helpers shared by handlers: the request class that reads bodies whole, the refusal
of compressed bodies, the parsed body, the client's identity and the ingestion call."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TypeVar

from flask import Request, current_app, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge, RequestTimeout
from werkzeug.wsgi import LimitedStream

from ..config import BODY_MAX_BYTES
from ..crawlers import is_bot_browser
from ..errors import error_response, invalid_body, validation_errors
from ..extensions import db
from ..ingestion import ClientInfo, IngestResult, NewEvent, TenantRef, ingest
from ..privacy import referrer_origin
from ..tenancy import active_tenants, request_body

SchemaT = TypeVar("SchemaT", bound=BaseModel)


class WholeBodyRequest(Request):
    """Flask's request, except that a body sent without Content-Length (chunked) and
    longer than MAX_CONTENT_LENGTH is a 413.

    Werkzeug stops reading such a body at the limit and hands over what it read: a
    batch sent chunked lost its tail without a word, or came back "not valid JSON".
    """

    _over_limit: bool | None = None  # None until a read reached the limit and looked past it
    _unreadable = False  # a read of the body failed: every later one fails the same way
    _paused_too_long = False  # that way being a 408, not a 400

    def get_data(  # type: ignore[override]
        self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False
    ) -> bytes | str:
        if self._unreadable:
            raise _paused_too_long() if self._paused_too_long else _cut_short()
        try:
            with self._pauses_bounded():
                data = super().get_data(cache=cache, parse_form_data=parse_form_data)
        except RequestEntityTooLarge:
            raise
        except _BodyPausedTooLong:
            self._unreadable = self._paused_too_long = True
            raise _paused_too_long() from None
        except Exception:
            # A client gone (Werkzeug's ClientDisconnected), or the server's own error for
            # a body it could not frame: gunicorn raises InvalidChunkSize, which unnamed
            # was a 500, or, raised into a rate limit's key, a storage failure.
            self._unreadable = True
            raise _cut_short() from None
        read_whole = "form" not in self.__dict__  # a parsed form took the stream, not us
        if read_whole and self.content_length is not None and len(data) < self.content_length:
            # Ended before its Content-Length: gunicorn hands over what came (the
            # input is "terminated", so Werkzeug does not count it), as if whole.
            self._unreadable = True
            raise _cut_short()
        if self._over_limit is None and self._read_to_the_limit():
            self._over_limit = self._more_to_read()
        if self._over_limit:
            raise RequestEntityTooLarge()
        return data.decode(errors="replace") if as_text else data  # as Werkzeug decodes

    @contextmanager
    def _pauses_bounded(self) -> Iterator[None]:
        """Under gunicorn, a read of the body that waits BODY_READ_TIMEOUT_SECONDS for
        the next byte gives up (raising _BodyPausedTooLong), and so does whatever reads
        the connection after it: gunicorn reads out the rest of a body before closing."""
        connection = self.environ.get("gunicorn.socket")
        if connection is None:  # another server (Flask's own), or a test client
            yield
            return
        before = connection.gettimeout()
        connection.settimeout(current_app.config["BODY_READ_TIMEOUT_SECONDS"])
        try:
            yield
        except Exception as error:
            if not _timed_out(error):
                connection.settimeout(before)
                raise
            # The timeout stays: whatever reads on (gunicorn) gives up as soon. A TLS
            # socket (gunicorn's own --certfile) shut would send the 408 unencrypted.
            if not hasattr(connection, "getpeercert"):
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RD)
            raise _BodyPausedTooLong() from error
        else:
            connection.settimeout(before)

    def _read_to_the_limit(self) -> bool:
        stream = self.stream
        # A Content-Length over the limit is refused before any read; one within it is read
        # to its end, which is no limit.
        return (
            self.content_length is None
            and isinstance(stream, LimitedStream)
            and stream.is_exhausted
        )

    def _more_to_read(self) -> bool:
        """Whether the body goes on past the limit: the server ends a chunked body
        (wsgi.input_terminated), so one byte more is too many."""
        try:
            with self._pauses_bounded():
                return bool(self.environ["wsgi.input"].read(1))
        except _BodyPausedTooLong:
            self._unreadable = self._paused_too_long = True
            raise _paused_too_long() from None
        except Exception:  # a chunk the server could not read (see get_data)
            self._unreadable = True
            raise _cut_short() from None


class _BodyPausedTooLong(Exception):
    """No byte of the body came within BODY_READ_TIMEOUT_SECONDS."""


def _timed_out(error: BaseException) -> bool:
    """Whether a socket timeout is behind ``error`` (the server or Werkzeug may wrap it)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _paused_too_long() -> RequestTimeout:
    """A 408 for a body that stopped arriving."""
    seconds = current_app.config["BODY_READ_TIMEOUT_SECONDS"]
    return RequestTimeout(f"The body stopped arriving: nothing of it came for {seconds} s.")


def _cut_short() -> ClientDisconnected:
    """A 400 for a body the server could not read to its end."""
    return ClientDisconnected(
        "The body could not be read to its end: cut short, or its chunked encoding is broken."
    )


# The conversion beacon answers 200 whatever it is sent (see v1.conversion).
NEVER_REFUSED = {"v1.conversion"}


def refuse_encoded_bodies() -> ResponseReturnValue | None:
    """415 for a body in a content coding (gzip, br) this service does not decode: read
    as it stands it would be refused as bad JSON, or, were it valid, taken as sent."""
    if request.endpoint is None or request.endpoint in NEVER_REFUSED:
        return None  # no route: its 404 or 405 says more
    if not request.content_length and "chunked" not in request.headers.get("Transfer-Encoding", ""):
        return None  # no body to decode
    if request.headers.get("Content-Encoding", "").strip().lower() in ("", "identity"):
        return None
    response, status = error_response(
        415,
        "Send the body uncompressed: no Content-Encoding but identity is accepted.",
        code="unsupported_content_encoding",
    )
    response.headers["Accept-Encoding"] = "identity"  # RFC 7694
    return response, status


# The methods whose bodies are read (and so may be too large): a GET's is ignored.
BODY_METHODS = frozenset({"POST", "PATCH", "PUT"})


def read_the_body_first() -> None:
    """Read a request's body whole before its handler asks the database anything (a
    token's user, the tenant): a client trickling its body in held a pooled connection
    all the while, and a few dozen such clients took the database from everyone."""
    if request.method not in BODY_METHODS or request.endpoint in (None, *NEVER_REFUSED):
        return  # no body taken; no route; or the beacon, which reads its own (never refused)
    if request.content_length or "chunked" in request.headers.get("Transfer-Encoding", ""):
        request.get_data(cache=True)


def parse_body(schema: type[SchemaT], *, max_bytes: int = BODY_MAX_BYTES) -> SchemaT:
    """Validate the JSON body against ``schema``; raise 413 or 422 as ``ApiError``."""
    # The app-wide MAX_CONTENT_LENGTH (the batch's) already bounds the read.
    if len(request.get_data(cache=True)) > max_bytes:
        raise RequestEntityTooLarge(f"The body may not exceed {max_bytes // 1024} KiB.")
    body = request_body()
    if body is None:
        raise invalid_body({"body": [_why_not_an_object()]})
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(validation_errors(exc)) from None


def _why_not_an_object() -> str:
    """Why the body is no JSON object, for the client (parsed again: an error's path only)."""
    data = request.get_data(cache=True)
    if not data.strip():
        return "The body is empty: send a JSON object."
    try:
        json.loads(data)
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return "The body is not valid JSON."
    except RecursionError:
        return "The body is nested too deeply to read."
    return "The body must be a JSON object."


def client_info() -> ClientInfo:
    """Who sent the request; ``remote_addr`` is the proxy-corrected address when configured."""
    return ClientInfo(
        ip=request.remote_addr,
        user_agent=_header_text("User-Agent"),
        referrer=referrer_origin(_header_text("Referer")),
    )


def _header_text(name: str) -> str | None:
    """A header as its sender wrote it: WSGI hands its bytes over as Latin-1, which turns
    UTF-8 ("café") into mojibake ("cafÃ©"); bytes that are no UTF-8 stay Latin-1."""
    value = request.headers.get(name)
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def sent_by_a_crawler() -> bool:
    """Whether a bot's browser sent this from a page: the events of Googlebot rendering
    it, of Lighthouse or of a headless browser are no visitor's. Only a request from a
    page (it has an Origin header, as every browser's POST from a page has) is judged:
    a shop's server or script sends none, and HTTP libraries name themselves as bots."""
    return "Origin" in request.headers and is_bot_browser(_header_text("User-Agent"))


def ingest_from_request(tenant: TenantRef, events: Sequence[NewEvent]) -> IngestResult:
    """The one ingestion path, fed with this request's client: returns once committed."""
    return ingest(
        db.session,
        tenant,
        events,
        client_info(),
        hash_key=current_app.config["VISITOR_HASH_KEY"],
        committer=current_app.extensions.get("group_commit"),
        lock_timeout=current_app.config["WRITE_LOCK_TIMEOUT_SECONDS"],
        forget_tenants=active_tenants().forget,
    )
