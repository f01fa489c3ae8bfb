"""The transport to etcd's JSON gateway: endpoints, timeouts, TLS, auth, httpx.

Why the gateway and httpx: the maintained Python etcd clients speak gRPC and either
block (a thread per call from Trio) or need asyncio. The gateway is plain HTTP/1.1 JSON,
which httpx speaks on Trio through anyio: no thread, no gRPC stack.

Rules:

- Endpoints are tried in turn, starting with the last one that answered. An endpoint
  that refuses the connection, times out or answers "unavailable" passes the request to
  the next; when none answers, the call raises `EtcdUnavailable`. Each endpoint gets
  `timeout` seconds, so a call takes at most len(endpoints) * timeout.
- A write moves to the next endpoint only if it was never sent (the connection failed):
  once sent, etcd may have applied it, and a second copy on another member could apply
  it twice. Then the call raises `EtcdUnavailable`: outcome unknown. Reads and lease
  calls are safe to repeat and always move on.
- With a user and password the gateway authenticates on first use and sends the token
  in the `Authorization` header; when etcd calls the token invalid (it expired, or etcd
  restarted and forgot it), it authenticates again and repeats the request once (a
  refused request was not applied, so even a write may be repeated).
- etcd's refusals are `EtcdError`; httpx exceptions never leave this module. No message
  carries the password or the token.
"""

from __future__ import annotations

import contextlib
import json
import math
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from chatd.coordination import wire
from chatd.coordination.errors import EtcdError, EtcdUnavailable


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA that signed etcd's certificate, and a client certificate and
    key when etcd asks for one (`--client-cert-auth`)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext | None:
        if self.ca is None and self.cert is None:
            return None
        context = ssl.create_default_context(cafile=self.ca)
        if self.cert is not None:
            context.load_cert_chain(self.cert, self.key)
        return context


@dataclass
class _Tracker:
    """Learns from httpcore's trace whether the request's bytes started out: from then
    on a write may have landed."""

    sent: bool = False

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        if ".send_request_headers." in event:
            self.sent = True


class Stream:
    """An open streaming answer (a watch): JSON objects, one a line, as they come.

    `first` is the object that arrived while opening; `next_object` gives the rest and
    None when the stream ended, broke, or (with `idle_timeout`) stayed silent too long.
    """

    def __init__(self, response: httpx.Response, first: Mapping[str, Any],
                 lines: AsyncIterator[str], token: str | None) -> None:
        self.first = first
        self.token = token  # the token it was opened with, to renew if etcd refuses it
        self._response = response
        self._lines = lines

    async def next_object(self, idle_timeout: float | None = None) -> Mapping[str, Any] | None:
        with trio.move_on_after(math.inf if idle_timeout is None else idle_timeout):
            try:
                line = await _next_nonblank(self._lines)
            except (httpx.HTTPError, StopAsyncIteration):
                return None
            return _parse_object(line)
        return None

    async def aclose(self) -> None:
        await _close_quietly(self._response, self._lines)


@dataclass
class Gateway:
    """Requests to an etcd cluster's gateway. Open with `async with`."""

    endpoints: list[str]
    timeout: float = 2.0
    tls: TlsFiles = field(default_factory=TlsFiles)
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("etcd needs at least one endpoint")
        for endpoint in self.endpoints:
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError(f"etcd endpoint {endpoint!r} is not an http:// or https:// URL")
        self.endpoints = [endpoint.rstrip("/") for endpoint in self.endpoints]
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, "
                             f"not {self.timeout!r}")
        if (self.user is None) != (self.password is None):
            raise ValueError("give etcd both a user and a password, or neither")
        if self.tls.key is not None and self.tls.cert is None:
            raise ValueError("a client key needs its certificate (cert=...)")
        self._context = self.tls.context()
        self._token: str | None = None
        self._auth_lock = trio.Lock()
        self._preferred = 0
        self._http: httpx.AsyncClient | None = None

    async def open(self) -> None:
        self._http = httpx.AsyncClient(
            verify=self._context if self._context is not None else True,
            # Bounds per phase; `timeout` also bounds each whole attempt (`_attempt`).
            timeout=httpx.Timeout(self.timeout),
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def call(self, path: str, body: Mapping[str, Any], *, write: bool = False,
                   ) -> Mapping[str, Any]:
        """A unary call: the answer's JSON object. `write`: not safe to repeat once sent."""
        objects = await self._with_auth(path, body, write=write, stream=False)
        return objects[0]

    async def call_stream(self, path: str, body: Mapping[str, Any],
                          ) -> list[Mapping[str, Any]]:
        """A streaming call with a one-message request (a keepalive): every object that
        came back before etcd ended the answer."""
        return await self._with_auth(path, body, write=False, stream=True)

    async def open_stream(self, path: str, body: Mapping[str, Any]) -> Stream:
        """A long streaming answer on the first endpoint whose first object comes within
        the timeout. The caller reads the rest and closes it."""
        token = await self.token()
        try:
            return await self._open_stream_somewhere(path, body, token)
        except EtcdError as error:
            if not self.is_auth_failure(error):
                raise
            token = await self.renew_token(stale=token)
            return await self._open_stream_somewhere(path, body, token)

    async def _open_stream_somewhere(self, path: str, body: Mapping[str, Any],
                                     token: str | None) -> Stream:
        failures = []
        for index, endpoint in self._in_turn():
            try:
                stream = await self._open_stream_at(endpoint + path, body, token)
            except _AttemptFailed as failure:
                failures.append(f"{endpoint}: {failure}")
                continue
            self._preferred = index
            return stream
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(failures))

    async def token(self) -> str | None:
        """The auth token to send (None without credentials), authenticating first if
        there is none yet."""
        if self.user is None or self._token is not None:
            return self._token
        return await self.renew_token(stale=None)

    async def renew_token(self, *, stale: str | None) -> str:
        """Authenticate again because etcd refused `stale`; the new token."""
        assert self.user is not None and self.password is not None
        async with self._auth_lock:
            # Another task may have renewed it while this one waited for the lock.
            if self._token is not None and self._token != stale:
                return self._token
            credentials = {"name": self.user, "password": self.password}
            try:
                objects = await self._on_some_endpoint(
                    "/v3/auth/authenticate", credentials, None, write=False, stream=False)
            except EtcdError as error:
                raise EtcdError(f"etcd refused to authenticate user {self.user!r}: {error}",
                                code=error.code) from None
            self._token = wire.text(objects[0].get("token"), "token")
            return self._token

    def is_auth_failure(self, error: EtcdError) -> bool:
        """Whether `error` means "authenticate again" (and we can)."""
        return self.user is not None and (
            error.code == wire.UNAUTHENTICATED or "invalid auth token" in str(error))

    async def _with_auth(self, path: str, body: Mapping[str, Any], *, write: bool,
                         stream: bool) -> list[Mapping[str, Any]]:
        token = await self.token()
        try:
            return await self._on_some_endpoint(path, body, token, write=write, stream=stream)
        except EtcdError as error:
            if not self.is_auth_failure(error):
                raise
            token = await self.renew_token(stale=token)
            return await self._on_some_endpoint(path, body, token, write=write, stream=stream)

    def _in_turn(self) -> list[tuple[int, str]]:
        count = len(self.endpoints)
        order = [(self._preferred + step) % count for step in range(count)]
        return [(index, self.endpoints[index]) for index in order]

    async def _on_some_endpoint(self, path: str, body: Mapping[str, Any], token: str | None,
                                *, write: bool, stream: bool) -> list[Mapping[str, Any]]:
        failures = []
        for index, endpoint in self._in_turn():
            tracker = _Tracker()
            try:
                objects = await self._attempt(endpoint + path, body, token, tracker, stream)
            except _AttemptFailed as failure:
                if write and tracker.sent:
                    raise EtcdUnavailable(
                        f"etcd at {endpoint} did not answer a write ({failure}); it may or "
                        "may not have been applied") from None
                failures.append(f"{endpoint}: {failure}")
                continue
            self._preferred = index
            return objects
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(failures))

    async def _attempt(self, url: str, body: Mapping[str, Any], token: str | None,
                       tracker: _Tracker, stream: bool) -> list[Mapping[str, Any]]:
        http = self._client()
        with trio.move_on_after(self.timeout) as scope:
            try:
                response = await http.post(
                    url, content=json.dumps(body).encode(), headers=_headers(token),
                    extensions={"trace": tracker.trace})
            except httpx.HTTPError as error:
                raise _AttemptFailed(_describe(error)) from None
        if scope.cancelled_caught:
            raise _AttemptFailed(f"no answer within {self.timeout} s")
        text = response.text
        chunks = [line for line in text.splitlines() if line.strip()] if stream else [text]
        if not chunks:
            raise EtcdError(f"etcd answered HTTP {response.status_code} with an empty body")
        objects = [_parse_object(chunk) for chunk in chunks]
        _raise_refusal(objects[0])
        if response.status_code != 200:
            raise EtcdError(f"etcd answered HTTP {response.status_code} to {url}")
        return objects

    async def _open_stream_at(self, url: str, body: Mapping[str, Any], token: str | None,
                              ) -> Stream:
        http = self._client()
        # No read timeout once open: a watch may rightly be quiet for hours (the caller
        # bounds silence with `next_object(idle_timeout)`); opening is bounded below.
        request = http.build_request("POST", url, content=json.dumps(body).encode(),
                                     headers=_headers(token),
                                     timeout=httpx.Timeout(self.timeout, read=None))
        response: httpx.Response | None = None
        lines: AsyncIterator[str] | None = None
        try:
            with trio.move_on_after(self.timeout) as scope:
                try:
                    response = await http.send(request, stream=True)
                    lines = response.aiter_lines()
                    first = _parse_object(await _next_nonblank(lines))
                except (httpx.HTTPError, StopAsyncIteration) as error:
                    raise _AttemptFailed(_describe(error)) from None
            if scope.cancelled_caught:
                raise _AttemptFailed(f"no answer within {self.timeout} s")
            _raise_refusal(first)
        except (_AttemptFailed, EtcdError):
            if response is not None:
                await _close_quietly(response, lines)
            raise
        assert response is not None and lines is not None
        return Stream(response, first, lines, token)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("the etcd client is used outside its `async with` block")
        return self._http


class _AttemptFailed(Exception):
    """One endpoint did not answer; the caller may try the next."""


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": token} if token is not None else {}


def _raise_refusal(first: Mapping[str, Any]) -> None:
    refusal = wire.error_of(first)
    if refusal is None:
        return
    if refusal.code == wire.UNAVAILABLE:  # this member cannot serve now; another may
        raise _AttemptFailed(str(refusal))
    raise refusal


async def _next_nonblank(lines: AsyncIterator[str]) -> str:
    while True:
        line = await lines.__anext__()
        if line.strip():
            return line


async def _close_quietly(response: httpx.Response,
                         lines: AsyncIterator[str] | None = None) -> None:
    """Drop the connection; nothing to report if it was broken already."""
    with trio.CancelScope(shield=True):
        if lines is not None:
            await _unwind(lines)
        with contextlib.suppress(httpx.HTTPError):
            await response.aclose()


async def _unwind(lines: AsyncIterator[str]) -> None:
    """Finish httpx's chain of async generators under `aiter_lines` (lines, text, raw
    bytes, the transport's stream). Closing the outer one leaves the inner ones suspended,
    and the garbage collector then warns about each. A read in a cancelled scope raises
    Cancelled at the socket, and that exception ends every generator on its way out."""
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            while True:  # lines already buffered come out without reaching the socket
                await lines.__anext__()
        except (StopAsyncIteration, httpx.HTTPError):
            pass  # finished already, or broken: either way every generator is done


def _parse_object(text: str) -> Mapping[str, Any]:
    try:
        parsed = json.loads(text)
    except ValueError:
        raise EtcdError(f"etcd answered with something that is not JSON: {text[:200]!r}",
                        ) from None
    return wire.mapping(parsed, "an answer")


def _describe(error: BaseException) -> str:
    # The class name says what failed (ConnectError, ReadTimeout, …); httpx's messages
    # hold no headers, so no token, but are often empty.
    detail = str(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__

