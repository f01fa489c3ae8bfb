"""GET and HEAD of `/media/{id}` and `/media/{id}/thumbnail`, served on the socket itself.

Why not through quart: on this box a request through hypercorn and quart costs about a
millisecond of server CPU before the handler runs (docs/benchmarks.md), which caps ranged
reads near 500/s, and its body goes out in copies of 1 MiB chunks. Media downloads are
the one REST path where that cost is the whole cost, so `FrontServer` routes them here,
as it routes `/ws` to chatd's own WebSocket transport: a small HTTP/1.1 responder that
authenticates, checks access, plans the answer exactly as the quart route does
(`web/media_response.py`) and sends a local blob with `sendfile` (no copy through Python).

Only simple, well-formed requests are served here: HTTP/1.0 or 1.1, no body, headers in
plain `name: value` lines. Anything else on the connection (another route, an odd
request) is handed to hypercorn with the bytes read so far, which answers it as before;
so this path never decides what is an invalid request. Over TLS every request goes
through hypercorn (the front does not route TLS connections here).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import trio

from chatd.domain.media import content_disposition
from chatd.errors import ChatdError, RangeNotSatisfiable, Unauthorized
from chatd.services.media import Blob
from chatd.storage.blobs import LocalBlobStore
from chatd.web import media_response, models
from chatd.web.api import configured_limits
from chatd.web.auth import parse_bearer

if TYPE_CHECKING:
    from chatd.services.context import Services

log = logging.getLogger(__name__)

_MEDIA_PATH = re.compile(r"/media/([0-9]{1,19})(/thumbnail)?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: The most of a request head read here (hypercorn answers a longer one).
MAX_HEAD = 16 * 1024
#: Seconds a kept-alive connection may wait for its next request (hypercorn's default).
KEEP_ALIVE_TIMEOUT = 5.0
#: Seconds a client gets to send its first request's head.
FIRST_REQUEST_TIMEOUT = 10.0
_RECV = 65_536
_REASONS = {200: "OK", 206: "Partial Content", 302: "Found", 304: "Not Modified",
            400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            416: "Range Not Satisfiable", 451: "Unavailable For Legal Reasons",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class MediaRequest:
    method: str
    media_id_text: str
    thumbnail: bool
    query: dict[str, str]
    headers: dict[str, str]
    keep_alive: bool


def is_media_download(request_line: bytes) -> bool:
    """Whether a connection's first request line is one this path serves."""
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
        return False
    path = parts[1].split(b"?", 1)[0].decode("latin-1")
    return _MEDIA_PATH.fullmatch(path) is not None


def parse_head(head: bytes) -> MediaRequest | None:
    """A request head (without its final blank line) this path serves, or None: hand the
    connection to hypercorn from this request on."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] not in ("GET", "HEAD") or \
            parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    path, _, query = parts[1].partition("?")
    matched = _MEDIA_PATH.fullmatch(path)
    if matched is None:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            return None  # folded, malformed: hypercorn's to refuse
        name = name.lower()
        if name in headers or name in ("content-length", "transfer-encoding", "upgrade"):
            return None  # a body, an upgrade or a repeated header: not a simple GET
        headers[name] = value.strip(" \t")
    connection = headers.get("connection", "").lower()
    keep_alive = ("close" not in connection) if parts[2] == "HTTP/1.1" \
        else ("keep-alive" in connection)
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    return MediaRequest(parts[0], matched.group(1), matched.group(2) is not None,
                        dict(reversed(pairs)), headers, keep_alive)


class _Closed(Exception):
    """The client is gone, or stopped reading for longer than the send timeout."""


class MediaDownloads:
    def __init__(self, services: Services, *, send_timeout: float) -> None:
        self._services = services
        self._send_timeout = send_timeout
        self._limits = configured_limits(services.config)
        self._closing = False
        self._idle: set[trio.CancelScope] = set()

    def begin_shutdown(self) -> None:
        """Idle kept-alive connections end now; a response being sent finishes."""
        self._closing = True
        for scope in self._idle:
            scope.cancel()

    async def serve(self, sock: socket.socket, received: bytes) -> bytes | None:
        """Serve media requests on `sock`. Returns the bytes of a request this path does
        not serve (hypercorn takes the connection from there, those bytes first), or None
        when the connection is done."""
        buffer = received
        first = True
        try:
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                while head_end < 0:
                    if len(buffer) > MAX_HEAD:
                        return buffer
                    data = await self._receive(sock, first=first, idle=not buffer)
                    if data is None:
                        return buffer if buffer else None
                    buffer += data
                    head_end = buffer.find(b"\r\n\r\n")
                request = parse_head(buffer[:head_end])
                if request is None:
                    return buffer
                buffer = buffer[head_end + 4:]
                first = False
                if not await self._answer(sock, request) or self._closing:
                    return None
        except _Closed:
            return None

    async def _receive(self, sock: socket.socket, *, first: bool, idle: bool) -> bytes | None:
        """More bytes of the next request; None at the end of the stream, on a timeout,
        or (between requests) at shutdown."""
        timeout = FIRST_REQUEST_TIMEOUT if first else KEEP_ALIVE_TIMEOUT
        with trio.move_on_after(timeout) as scope:
            if idle:
                self._idle.add(scope)
                if self._closing:
                    return None
            try:
                while True:
                    try:
                        data = sock.recv(_RECV)
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(sock)
                        continue
                    except OSError:
                        return None
                    return data or None
            finally:
                self._idle.discard(scope)
        return None

    async def _answer(self, sock: socket.socket, request: MediaRequest) -> bool:
        """Answer one request; whether the connection stays open."""
        media = self._services.media
        try:
            planned, blob = await self._plan(request)
        except ChatdError as exc:
            await self._send_error(sock, exc, request.keep_alive)
            return request.keep_alive
        except Exception:
            log.exception("media download failed")
            await self._send_error(sock, ChatdError("an internal error occurred; it has been "
                                                    "logged"), keep_alive=False)
            return False
        head = [f"HTTP/1.1 {planned.status} {_REASONS.get(planned.status, '')}"]
        head += [f"{name}: {value}" for name, value in planned.headers]
        if planned.status in (200, 206):
            head.append(f"Content-Length: {planned.content_length}")
        else:
            head.append("Content-Length: 0")
        if not request.keep_alive:
            head.append("Connection: close")
        await self._send_all(sock, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if planned.length:
            blobs = media.blobs
            if media.is_local_file(blob) and isinstance(blobs, LocalBlobStore):
                await self._send_file(sock, blobs.path_of(blob.sha256), planned.start,
                                      planned.length)
            else:
                # Closed here, not by the garbage collector outside any task, when the
                # client goes away mid-body (the send raises with the reader suspended).
                async with aclosing(media.read(blob, planned.start, planned.length)) as chunks:
                    async for chunk in chunks:
                        await self._send_all(sock, chunk)
        return request.keep_alive

    async def _plan(self, request: MediaRequest) -> tuple[media_response.Planned, Blob]:

        media = self._services.media
        media_id = models.PATH_PARAMETERS["media_id"].parse_text(
            request.media_id_text, "media_id", self._limits)
        model = models.ThumbnailQuery if request.thumbnail else models.DownloadQuery
        query = model.parse_query(request.query, self._limits)
        if query.sig is not None:
            user_id = media.link_user(media_id, query.u or "", query.e or "", query.sig)
        else:
            token = parse_bearer(request.headers.get("authorization", ""))
            if token is None:
                raise Unauthorized("send 'Authorization: Bearer <token>' (from POST /login), "
                                   "or use a signed link", code="missing_token")
            user_id = (await self._services.users.authenticate(token)).user_id
        size = query.size if isinstance(query, models.ThumbnailQuery) else None
        blob = await media.open_download(media_id, user_id, size)
        config = self._services.config.media
        redirect = None
        if config.backend == "s3" and config.s3_download == "redirect":
            redirect = media.blobs.presigned_url(
                blob.sha256, config.s3_presign_ttl, content_type=blob.content_type,
                disposition=content_disposition(blob.content_type, blob.filename))
        planned = media_response.plan(
            blob, method=request.method, range_header=request.headers.get("range"),
            if_none_match=request.headers.get("if-none-match"), redirect_to=redirect)
        return planned, blob

    async def _send_error(self, sock: socket.socket, error: ChatdError,
                          keep_alive: bool) -> None:
        # As quart writes it: compact, with a newline.
        body = json.dumps(error.to_json(), separators=(",", ":")).encode() + b"\n"
        head = [f"HTTP/1.1 {error.status} {_REASONS.get(error.status, '')}",
                "Content-Type: application/json", f"Content-Length: {len(body)}"]
        if isinstance(error, Unauthorized):
            head.append('WWW-Authenticate: Bearer realm="chatd"')
        if isinstance(error, RangeNotSatisfiable):
            head.append(f"Content-Range: bytes */{error.size}")
        if not keep_alive:
            head.append("Connection: close")
        await self._send_all(sock, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    async def _send_all(self, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await self._writable(sock)
                continue
            except OSError:
                raise _Closed from None
            view = view[sent:]

    async def _send_file(self, sock: socket.socket, path: os.PathLike[str], start: int,
                         length: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            offset, remaining = start, length
            while remaining:
                try:
                    sent = os.sendfile(sock.fileno(), fd, offset, remaining)
                except BlockingIOError:
                    await self._writable(sock)
                    continue
                except OSError:
                    raise _Closed from None
                if sent == 0:
                    raise _Closed  # the file ended early (truncated underneath us)
                offset += sent
                remaining -= sent
        finally:
            os.close(fd)

    async def _writable(self, sock: socket.socket) -> None:
        # The deadline is on progress: a slow but steady reader is never cut off.
        with trio.move_on_after(self._send_timeout) as scope:
            await trio.lowlevel.wait_writable(sock)
        if scope.cancelled_caught:
            raise _Closed
